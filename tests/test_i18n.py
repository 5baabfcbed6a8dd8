"""Tests for course_utils.i18n: the language of checker messages."""

import polib
import pytest

import course_utils
from course_utils import checking, i18n, translate


@pytest.fixture(autouse=True)
def english_afterwards():
    i18n._messages.cache_clear()
    i18n._compiled.cache_clear()
    yield
    course_utils.set_language("en")
    i18n._messages.cache_clear()
    i18n._compiled.cache_clear()


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    (tmp_path / "zh").mkdir()
    po = polib.POFile()
    po.append(polib.POEntry(msgid="{what} must be a tensor (got {got}).", msgstr="{what} 必须是张量（得到 {got}）。"))
    po.append(polib.POEntry(msgid="Fuzzy one.", msgstr="不可用。", flags=["fuzzy"]))
    po.save(str(tmp_path / "zh" / translate.CHECKS_CATALOG))
    monkeypatch.setattr(translate, "TRANSLATIONS_DIR", tmp_path)
    i18n._messages.cache_clear()


def test_english_is_the_default_and_returns_the_template_unchanged():
    assert course_utils.get_language() == "en"
    assert i18n.translate_message("out must be a tensor (got None).") == "out must be a tensor (got None)."


def test_set_language_switches_messages_to_the_catalog_translation(catalog):
    course_utils.set_language("zh")
    assert i18n.translate_message("out must be a tensor (got None).") == "out 必须是张量（得到 None）。"


def test_fuzzy_or_unknown_messages_fall_back_to_english(catalog):
    course_utils.set_language("zh")
    assert i18n.translate_message("Fuzzy one.") == "Fuzzy one."
    assert i18n.translate_message("Not in the catalog.") == "Not in the catalog."


def test_a_broken_catalog_leaves_messages_in_english_instead_of_breaking_the_check(tmp_path, monkeypatch):
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / translate.CHECKS_CATALOG).write_text("garbage\n", encoding="utf-8")
    monkeypatch.setattr(translate, "TRANSLATIONS_DIR", tmp_path)
    i18n._messages.cache_clear()
    i18n._compiled.cache_clear()
    course_utils.set_language("zh")
    result = checking.run("ch98.triple", {"triple": lambda x: 5})
    i18n._compiled.cache_clear()
    assert result.message == "triple(2) returned int 5; expected 6."


def test_setup_chooses_the_language(catalog):
    course_utils.setup(show_versions=False, language="zh")
    assert course_utils.get_language() == "zh"
    course_utils.setup(show_versions=False)
    assert course_utils.get_language() == "zh", "language=None keeps the current language"


@pytest.mark.parametrize("bad", ["fr", "ZH", "", None])
def test_an_unknown_language_is_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match=r"language must be one of \['en', 'zh'\]"):
        course_utils.set_language(bad)
    assert course_utils.get_language() == "en"


# --- checker messages -------------------------------------------------------------------------------------


@checking.exercise("ch98.triple", title="Triple a number", names=["triple"])
def _check_triple(triple):
    checking.expect(callable(triple), f"triple must be a function (got {checking.describe(triple)}).")
    with checking.step("calling triple(2)"):
        value = triple(2)
    checking.expect(value == 6, f"triple(2) returned {checking.describe(value)}; expected 6.", "Multiply by 3.")
    return "triple(2) == 6."


_ZH = {
    "Triple a number": "把数乘以三",
    "triple must be a function (got {checking.describe(triple)}).": (
        "triple 必须是函数（得到 {checking.describe(triple)}）。"
    ),
    "triple(2) returned {checking.describe(value)}; expected 6.": (
        "triple(2) 返回了 {checking.describe(value)}；应为 6。"
    ),
    "Multiply by 3.": "乘以 3。",
    "the string {value[:40]}": "字符串 {value[:40]}",
    "{doing} raised {type(error).__name__}: {first_line(error)}": (
        "{doing} 时抛出 {type(error).__name__}：{first_line(error)}"
    ),
    "calling triple(2)": "调用 triple(2)",
    "FAIL": "未通过",
    "PASS": "通过",
    "Hint: ": "提示：",
}


def _catalog_of(tmp_path, monkeypatch, units: dict[str, str]) -> None:
    (tmp_path / "zh").mkdir()
    po = polib.POFile()
    for english, chinese in units.items():
        po.append(polib.POEntry(msgid=english, msgstr=chinese))
    po.save(str(tmp_path / "zh" / translate.CHECKS_CATALOG))
    monkeypatch.setattr(translate, "TRANSLATIONS_DIR", tmp_path)
    i18n._messages.cache_clear()
    i18n._compiled.cache_clear()


@pytest.fixture
def checks_catalog(tmp_path, monkeypatch):
    _catalog_of(tmp_path, monkeypatch, _ZH)
    yield
    i18n._compiled.cache_clear()


def test_templates_are_extracted_from_the_checkers_f_strings_without_docstrings():
    templates = translate.extract_templates()
    assert "{what} must be a tensor (got {describe(actual)})." in templates
    assert any(
        where.startswith("course_utils/compare.py:")
        for where in templates["{what} must be a tensor (got {describe(actual)})."]
    )
    assert not any(t.startswith("Comparisons that checkers share") for t in templates), (
        "module docstrings are not messages"
    )
    assert "weight" not in templates, "single words (keys, attribute names) are not messages"


def test_literal_braces_are_escaped_in_templates(tmp_path):
    (tmp_path / "checks").mkdir()
    (tmp_path / "checking.py").write_text('X = f"a dict {{k: v}} for {name} here"\n', encoding="utf-8")
    (tmp_path / "compare.py").write_text("", encoding="utf-8")
    assert list(translate.extract_templates(tmp_path)) == ["a dict {{k: v}} for {name} here"]


def test_a_failing_check_speaks_chinese_with_its_values_and_nested_phrases(checks_catalog):
    course_utils.set_language("zh")
    result = checking.run("ch98.triple", {"triple": lambda x: str(x)})
    assert (result.title, result.message, result.hint) == (
        "把数乘以三",
        "triple(2) 返回了字符串 '2'；应为 6。",
        "乘以 3。",
    )


def test_a_learners_exception_keeps_its_own_text_inside_the_translated_sentence(checks_catalog):
    course_utils.set_language("zh")
    result = checking.run("ch98.triple", {"triple": lambda x: 1 / 0})
    assert result.message == "调用 triple(2) 时抛出 ZeroDivisionError：division by zero"


def test_the_status_label_and_the_word_hint_are_in_the_language_of_the_result(checks_catalog):
    english = checking.run("ch98.triple", {"triple": lambda x: 5})
    course_utils.set_language("zh")
    failed = checking.run("ch98.triple", {"triple": lambda x: 5})
    assert str(english).startswith("[FAIL] ch98.triple (Triple a number): ") and "\n    Hint: Multiply" in str(english)
    assert str(failed) == "[未通过] ch98.triple (把数乘以三): triple(2) 返回了 int 5；应为 6。\n    提示：乘以 3。"
    assert "<b>✘ 未通过</b>" in failed._repr_html_() and "<i>提示：</i> 乘以 3。" in failed._repr_html_()
    assert str(checking.run("ch98.triple", {"triple": lambda x: 3 * x})).startswith("[通过] ch98.triple (把数乘以三)")
    course_utils.set_language("en")
    assert str(english).startswith("[FAIL]"), "a result keeps the language it was made in"


def test_english_results_are_untouched_and_unknown_messages_stay_english(checks_catalog):
    assert checking.run("ch98.triple", {"triple": lambda x: 5}).message == "triple(2) returned int 5; expected 6."
    course_utils.set_language("zh")
    assert i18n.translate_message("Something no template covers.") == "Something no template covers."


def test_the_most_specific_template_wins(tmp_path, monkeypatch):
    (tmp_path / "zh").mkdir()
    po = polib.POFile()
    po.append(polib.POEntry(msgid="{a} failed.", msgstr="{a} 失败。"))
    po.append(polib.POEntry(msgid="{a} failed to load {b}.", msgstr="{a} 无法加载 {b}。"))
    po.save(str(tmp_path / "zh" / translate.CHECKS_CATALOG))
    monkeypatch.setattr(translate, "TRANSLATIONS_DIR", tmp_path)
    i18n._messages.cache_clear()
    i18n._compiled.cache_clear()
    assert i18n.translate_message("Net failed to load x.pt.", "zh") == "Net 无法加载 x.pt。"
    assert i18n.translate_message("Net failed.", "zh") == "Net 失败。"
    i18n._compiled.cache_clear()


def test_a_value_with_commas_inside_brackets_is_never_split(tmp_path, monkeypatch):
    _catalog_of(
        tmp_path, monkeypatch, {"After {call}, {names} do not require grad.": "调用 {call} 后，{names} 都不需要梯度。"}
    )
    message = "After freeze_until(resnet, 'layer3'), layer3.0.conv1.weight, layer3.0.bn1.weight do not require grad."
    assert i18n.translate_message(message, "zh") == (
        "调用 freeze_until(resnet, 'layer3') 后，layer3.0.conv1.weight, layer3.0.bn1.weight 都不需要梯度。"
    )


def test_a_step_wrapper_is_the_outermost_template_even_when_another_has_more_text(tmp_path, monkeypatch):
    units = {
        "{doing} raised {type(error).__name__}: {first_line(error)}": (
            "{doing} 时抛出 {type(error).__name__}：{first_line(error)}"
        ),
        "calling {call} on a model {what}": "在模型{what}上调用 {call}",
        "calling {call}": "调用 {call}",
        "without residual blocks": "（没有残差块）",
    }
    _catalog_of(tmp_path, monkeypatch, units)
    message = "calling zero_init(model) on a model without residual blocks raised TypeError: on a model: bad"
    assert (
        i18n.translate_message(message, "zh")
        == "在模型（没有残差块）上调用 zero_init(model) 时抛出 TypeError：on a model: bad"
    )


def test_chinese_keeps_the_space_next_to_code_and_drops_it_between_chinese_words(tmp_path, monkeypatch):
    units = {"{doing} failed.": "{doing} 时失败。", "calling {call}": "调用 {call}", "reading the file": "读取文件"}
    _catalog_of(tmp_path, monkeypatch, units)
    assert i18n.translate_message("calling f(x) failed.", "zh") == "调用 f(x) 时失败。"
    assert i18n.translate_message("reading the file failed.", "zh") == "读取文件时失败。"


def test_another_catalog_folder_never_leaves_its_messages_behind(tmp_path, monkeypatch):
    if "zh" not in translate.languages():
        pytest.skip("no Chinese catalog")
    real = i18n.translate_message("NOT ATTEMPTED", "zh")
    with monkeypatch.context() as patched:
        _catalog_of(tmp_path, patched, {"NOT ATTEMPTED": "假的"})
        assert i18n.translate_message("NOT ATTEMPTED", "zh") == "假的"
    assert i18n.translate_message("NOT ATTEMPTED", "zh") == real != "假的", "the caches are keyed by the catalog's path"
