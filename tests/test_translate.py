"""Tests for course_utils.translate and the translated editions that course_utils.build writes."""

import re
from pathlib import Path

import nbformat
import pytest

from course_utils import build, translate
from course_utils.build import BuildError
from course_utils.translate import TranslationError


def _notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Chapter 1 · Modules\n\nA **module** holds parameters."),
        nbformat.v4.new_code_cell("import course_utils\n\ncourse_utils.setup()", execution_count=1),
        nbformat.v4.new_markdown_cell("## 1. Layers\nA layer is a module."),
        nbformat.v4.new_code_cell("print('module')  # a comment stays English", execution_count=2),
        nbformat.v4.new_markdown_cell("   "),
    ]
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="module\n")]
    for cell, cell_id in zip(nb.cells, ["title", "setup", "s1", "s1-code", "blank"], strict=True):
        cell.id = cell_id
    return nb


def _catalog(nb: nbformat.NotebookNode, translations: dict[str, str] | None = None):
    catalog = translate.read_catalog(Path("/nonexistent/catalog.po"))
    translate.update_catalog(nb, catalog, "zh", "solutions/01_x.ipynb")
    for entry in catalog:
        entry.msgstr = (translations or {}).get(entry.msgctxt, _stand_in(entry))
    return catalog


def _stand_in(entry) -> str:
    """A translation that keeps the English headings' levels, as a real one must."""
    headings = [line.split(" ", 1)[0] + f" 【{entry.msgctxt}】" for line in entry.msgid.splitlines() if line[:1] == "#"]
    return "\n".join([*headings, f"【{entry.msgctxt}】"])


def test_update_makes_one_unit_per_prose_cell_keyed_by_its_id_with_the_english_as_msgid():
    nb = _notebook()
    catalog = translate.read_catalog(Path("/nonexistent/catalog.po"))
    assert translate.update_catalog(nb, catalog, "zh", "solutions/01_x.ipynb") == 2
    assert [(e.msgctxt, e.msgid, e.msgstr) for e in catalog] == [
        ("title", nb.cells[0].source, ""),
        ("s1", nb.cells[2].source, ""),
    ]
    assert catalog.metadata["Language"] == "zh_CN"
    assert translate.update_catalog(nb, catalog, "zh", "solutions/01_x.ipynb") == 0


def test_a_catalog_survives_a_round_trip_through_its_file(tmp_path):
    nb = _notebook()
    path = tmp_path / "zh" / "01_x.po"
    path.parent.mkdir()
    _catalog(nb, {"title": "# 第 1 章 · 模块\n\n**模块**保存参数。", "s1": "## 1. 层\n层是模块。"}).save(str(path))
    again = translate.read_catalog(path)
    assert translate.status(nb, again).translated == ["title", "s1"]
    assert (
        translate.translated_notebook(nb, again, "zh", "x").cells[0].source == "# 第 1 章 · 模块\n\n**模块**保存参数。"
    )


def test_translated_notebook_changes_only_the_prose():
    nb = _notebook()
    zh = translate.translated_notebook(nb, _catalog(nb), "zh", "solutions/01_x.ipynb")
    assert [c.source for c in zh.cells if c.cell_type == "markdown"] == [
        "# 【title】\n【title】",
        "## 【s1】\n【s1】",
        "   ",
    ]
    assert [c.id for c in zh.cells] == [c.id for c in nb.cells]
    code = [(c.source, c.outputs, c.execution_count) for c in zh.cells if c.cell_type == "code"]
    assert code == [(c.source, c.outputs, c.execution_count) for c in nb.cells if c.cell_type == "code"]
    assert zh.metadata["language"] == "zh" and "language" not in nb.metadata


def test_an_untranslated_cell_is_an_error_that_names_it():
    nb = _notebook()
    catalog = _catalog(nb, {"title": "# 第 1 章", "s1": ""})
    with pytest.raises(TranslationError, match=r"cell s1: not translated yet"):
        translate.translated_notebook(nb, catalog, "zh", "solutions/01_x.ipynb")


def test_an_english_change_after_translation_is_stale_until_update_and_then_fuzzy():
    nb = _notebook()
    catalog = _catalog(nb)
    nb.cells[2].source = "## 1. Layers\nA layer is a module with parameters."
    with pytest.raises(TranslationError, match=r"cell s1: English changed since the catalog was updated"):
        translate.translated_notebook(nb, catalog, "zh", "x")
    assert translate.update_catalog(nb, catalog, "zh", "x") == 1
    (entry,) = [e for e in catalog if e.msgctxt == "s1"]
    assert entry.fuzzy and entry.previous_msgid == "## 1. Layers\nA layer is a module."
    assert entry.msgstr == "## 【s1】\n【s1】", "the old translation is kept for the translator to revise"
    with pytest.raises(TranslationError, match=r"cell s1: English changed since translation: review the fuzzy"):
        translate.translated_notebook(nb, catalog, "zh", "x")


def test_a_new_cell_has_no_unit_and_a_removed_cell_becomes_obsolete():
    nb = _notebook()
    catalog = _catalog(nb)
    new = nbformat.v4.new_markdown_cell("A new paragraph.")
    new.id = "s1-new"
    nb.cells.append(new)
    with pytest.raises(TranslationError, match=r"cell s1-new: no unit in the catalog"):
        translate.translated_notebook(nb, catalog, "zh", "x")
    del nb.cells[2]
    translate.update_catalog(nb, catalog, "zh", "x")
    assert {e.msgctxt: e.obsolete for e in catalog} == {"title": False, "s1": True, "s1-new": False}


def test_prose_cells_need_unique_ids():
    nb = _notebook()
    nb.cells[2].id = "title"
    with pytest.raises(TranslationError, match="unique id"):
        translate.update_catalog(nb, translate.read_catalog(Path("/nonexistent.po")), "zh", "x")


def test_an_unknown_language_is_a_clear_error():
    with pytest.raises(TranslationError, match=r"language must be one of \['zh'\] \(got 'fr'\)"):
        translate.catalog_path("fr", Path("01_x.ipynb"))


@pytest.mark.parametrize(
    "content",
    [
        b"garbage here\n",
        b"\xff\xfe not utf-8",
        b'msgctxt "s1"\nmsgid "a"\nmsgstr "b"\n\nmsgctxt "s1"\nmsgid "a"\nmsgstr "c"\n',
    ],
    ids=["syntax", "encoding", "duplicate unit"],
)
def test_a_broken_catalog_is_a_clear_error(tmp_path, content):
    broken = tmp_path / "broken.po"
    broken.write_bytes(content)
    with pytest.raises(TranslationError, match="broken.po: not a readable gettext catalog"):
        translate.read_catalog(broken)


@pytest.fixture
def book(tmp_path):
    """A course with one chapter: source edition, student folder and a zh catalog folder."""
    source, out, translations = tmp_path / "solutions", tmp_path / "notebooks", tmp_path / "translations"
    for folder in (source, out, translations / "zh"):
        folder.mkdir(parents=True)
    nb = _notebook()
    (source / "01_model_definition.ipynb").write_text(nbformat.writes(nb), encoding="utf-8")
    return source, out, translations, nb


def test_build_writes_both_chinese_editions_from_a_complete_catalog(book):
    source, out, translations, nb = book
    _catalog(nb).save(str(translations / "zh" / "01_model_definition.po"))
    changes = build.build(source_dir=source, out_dir=out, translations_dir=translations)
    assert "notebooks/zh/solutions/01_model_definition.ipynb: is missing" in changes
    zh_source = nbformat.read(out / "zh" / "solutions" / "01_model_definition.ipynb", as_version=4)
    zh_student = nbformat.read(out / "zh" / "01_model_definition.ipynb", as_version=4)
    zh_cells = {cell.id: cell for cell in zh_source.cells}
    assert zh_cells["setup"].source == 'import course_utils\n\ncourse_utils.setup(language="zh")'
    assert zh_cells["s1-code"].outputs == nb.cells[3].outputs, "outputs are copied, not re-executed"
    student_cells = {cell.id: cell for cell in zh_student.cells}
    assert student_cells["s1"].source == "## 【s1】\n【s1】" and student_cells["s1-code"].outputs == []
    assert build.build(check=True, source_dir=source, out_dir=out, translations_dir=translations) == []


def test_build_refuses_to_ship_english_prose_and_check_names_the_cell(book):
    source, out, translations, nb = book
    _catalog(nb, {"title": "# 第 1 章", "s1": ""}).save(str(translations / "zh" / "01_model_definition.po"))
    with pytest.raises(BuildError, match=r"solutions/01_model_definition.ipynb \[zh\]: cell s1: not translated"):
        build.build(source_dir=source, out_dir=out, translations_dir=translations)
    assert not (out / "zh").exists()
    drift = build.build(check=True, source_dir=source, out_dir=out, translations_dir=translations)
    assert any("cell s1: not translated yet" in line for line in drift)


def test_a_language_without_a_catalog_folder_gets_no_edition(book):
    source, out, translations, _ = book
    (translations / "zh").rmdir()
    build.build(source_dir=source, out_dir=out, translations_dir=translations)
    assert not (out / "zh").exists()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("course_utils.setup()", 'course_utils.setup(language="zh")'),
        ("course_utils.setup(seed=3)", 'course_utils.setup(language="zh", seed=3)'),
        ("x = 1", "x = 1"),
    ],
)
def test_the_chinese_edition_calls_setup_with_the_language(call, expected):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(call)]
    build._set_setup_language(nb, "zh")
    assert nb.cells[0].source == expected


def test_the_command_line_updates_catalogs_and_reports_status(book, monkeypatch, capsys):
    source, _, translations, _ = book
    monkeypatch.setattr("course_utils.paths.SOLUTIONS_NOTEBOOKS_DIR", source)
    monkeypatch.setattr(translate, "TRANSLATIONS_DIR", translations)
    assert translate.main(["update", "zh"]) == 0
    assert "zh/01_model_definition.po: 2 unit(s) changed" in capsys.readouterr().out
    assert translate.main(["status"]) == 0
    assert "0/2 translated; cells title, s1: not translated yet" in capsys.readouterr().out
    (translations / "zh" / "01_model_definition.po").write_text("garbage\n", encoding="utf-8")
    assert translate.main(["status", "zh"]) == 2
    assert "translate failed:" in capsys.readouterr().err


def test_the_message_catalog_follows_the_templates_in_the_source():
    catalog = translate.read_catalog(Path("/nonexistent.po"))
    templates = {"{what} must be a tensor (got {got}).": ["course_utils/compare.py:97"], "Multiply by 3.": ["x.py:1"]}
    assert translate.update_messages(templates, catalog, "zh") == 2
    assert translate.untranslated_messages(templates, catalog) == list(templates)
    catalog[0].msgstr = "{what} 必须是张量（得到 {got}）。"
    assert translate.untranslated_messages(templates, catalog) == ["Multiply by 3."]
    catalog[0].flags.append("fuzzy")
    assert len(translate.untranslated_messages(templates, catalog)) == 2, "a fuzzy translation is not a translation"
    del templates["Multiply by 3."]
    assert translate.update_messages(templates, catalog, "zh") == 1
    assert [e.obsolete for e in catalog] == [False, True]


@pytest.mark.parametrize("language", translate.languages())
def test_every_checker_message_has_a_translation(language):
    catalog = translate.read_catalog(translate.TRANSLATIONS_DIR / language / translate.CHECKS_CATALOG)
    missing = translate.untranslated_messages(translate.extract_templates(), catalog)
    assert not missing, f"{len(missing)} checker messages have no {language} translation, e.g. {missing[:3]}"


@pytest.mark.parametrize(
    ("translation", "problem"),
    [
        ("用 `nn.Linear` 构建。", r"loses code span 'nn.Sequential'"),
        ("用 `nn.Sequential` 和 `nn.ReLU` 构建，`nn.Linear`。", r"adds code span 'nn.ReLU'"),
        ("用 `nn.Sequential` 构建 `nn.Linear`。\n\n```python\nnet = nn.Sequential() # 网络\n```", r"fenced code"),
        ("用 `nn.Sequential` 构建 `nn.Linear`，$y = Wx$。\n\n```python\nnet = nn.Sequential()\n```", r"loses math"),
        ("## 用 `nn.Sequential` 构建 `nn.Linear`，$y = Wx + b$。\n\n```python\nnet = nn.Sequential()\n```", "headings"),
    ],
)
def test_a_translation_that_changes_code_math_or_structure_is_broken(translation, problem):
    english = "Build `nn.Linear` with `nn.Sequential`, $y = Wx + b$.\n\n```python\nnet = nn.Sequential()\n```"
    problems = translate.markup_problems(english, translation)
    assert any(re.search(problem, p) for p in problems), problems


def test_inline_math_may_wrap_once_and_a_translation_must_keep_it():
    english = "The gradient $\\partial L / \\partial x =\n\\sum_i w_i$ sums over $i$."
    assert translate.markup_problems(english, "梯度 $\\partial L / \\partial x =\n\\sum_i w_i$ 对 $i$ 求和。") == []
    assert translate.markup_problems(english, "梯度 $\\partial L$ 对 $i$ 求和。") != []


def test_a_translation_may_move_code_spans_and_keep_the_fence_verbatim():
    english = "Build `nn.Linear` with `nn.Sequential`, $y = Wx + b$.\n\n```python\nnet = nn.Sequential()\n```"
    chinese = "用 `nn.Sequential` 构建 `nn.Linear`，$y = Wx + b$。\n\n```python\nnet = nn.Sequential()\n```"
    assert translate.markup_problems(english, chinese) == []


def test_a_broken_translation_stops_the_build_and_names_the_cell():
    nb = _notebook()
    nb.cells[2].source = "## 1. Layers\nA layer holds `nn.Parameter` objects."
    catalog = _catalog(nb, {"title": "# 第 1 章 · 模块", "s1": "## 1. 层\n层保存参数对象。"})
    with pytest.raises(TranslationError, match=r"cell s1: the translation loses code span 'nn.Parameter'"):
        translate.translated_notebook(nb, catalog, "zh", "x")


@pytest.mark.parametrize(
    ("translation", "usable"),
    [
        ("{what} 必须是张量（得到 {got}）。", True),
        ("{what} 必须是张量。", False),  # the value the learner passed is lost
        ("{what} 必须是张量（得到 {got}，{got}）。", False),
        ("{waht} 必须是张量（得到 {got}）。", False),
    ],
)
def test_a_message_translation_must_keep_every_placeholder(translation, usable):
    catalog = translate.read_catalog(Path("/nonexistent.po"))
    templates = {"{what} must be a tensor (got {got}).": ["course_utils/compare.py:97"]}
    translate.update_messages(templates, catalog, "zh")
    catalog[0].msgstr = translation
    assert translate.usable_message(catalog[0]) is usable
    assert (translate.untranslated_messages(templates, catalog) == []) is usable


def test_code_is_not_a_message_and_short_labels_are_marked(tmp_path):
    package = tmp_path / "course_utils"
    package.mkdir()
    (package / "checking.py").write_text(
        "from course_utils import i18n\n"
        "LABEL = i18n.N_('PASS')\n"
        "A = f'{call} returned {n} tensors.'\n"
        "B = 'nn.Linear(4, 8)'\n"
        "C = f'self.up = {expected}'\n"
        "D = 'x'\n"
        "E = 'not finite' if bad else 'text/plain'\n"
        "F = f'{doing} raised {error}'\n"
        "G = f', stride={stride}'\n",
        encoding="utf-8",
    )
    found = sorted(translate.extract_templates(package))
    assert found == ["PASS", "not finite", "{call} returned {n} tensors.", "{doing} raised {error}"]


@pytest.mark.parametrize("language", translate.languages())
def test_every_translated_cell_keeps_the_code_and_markup_of_its_english(language):
    import nbformat

    from course_utils.paths import SOLUTIONS_NOTEBOOKS_DIR

    broken = {}
    for path in sorted(SOLUTIONS_NOTEBOOKS_DIR.glob("*.ipynb")):
        catalog = translate.read_catalog(translate.catalog_path(language, path))
        found = translate.status(nbformat.read(path, as_version=4), catalog)
        broken |= {f"{path.stem}:{cell}": why for cell, why in found.broken.items()}
        assert not (found.missing or found.untranslated or found.fuzzy or found.stale), found.problems()
    assert not broken, broken


_SWITCH = re.compile(r"^.*\[(English|简体中文)\]\(README(\.zh-CN)?\.md\).*$", re.M)  # the language switch line


@pytest.mark.parametrize(
    ("english", "twin"),
    [
        ("README.md", "README.zh-CN.md"),
        ("book/intro.md", "book/zh/intro.md"),
        ("book/instructors.md", "book/zh/instructors.md"),
    ],
)
def test_a_hand_translated_page_keeps_the_code_links_and_headings_of_its_english(english, twin):
    from course_utils.paths import REPO_DIR

    if not (REPO_DIR / twin).exists() and not translate.languages():
        pytest.skip("no Chinese edition")
    texts = [_SWITCH.sub("", (REPO_DIR / name).read_text(encoding="utf-8")) for name in (english, twin)]
    assert translate.markup_problems(*texts) == [], f"{twin} has drifted from {english}: update it"
