"""Tests for course_utils.i18n: the language of checker messages."""

import polib
import pytest

import course_utils
from course_utils import i18n


@pytest.fixture(autouse=True)
def english_afterwards():
    yield
    course_utils.set_language("en")
    i18n._messages.cache_clear()


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    (tmp_path / "zh").mkdir()
    po = polib.POFile()
    po.append(polib.POEntry(msgid="{what} must be a tensor (got {got}).", msgstr="{what} 必须是张量（得到 {got}）。"))
    po.append(polib.POEntry(msgid="Fuzzy one.", msgstr="不可用。", flags=["fuzzy"]))
    po.save(str(tmp_path / "zh" / i18n.CHECKS_CATALOG))
    monkeypatch.setattr(i18n, "TRANSLATIONS_DIR", tmp_path)
    i18n._messages.cache_clear()


def test_english_is_the_default_and_returns_the_template_unchanged():
    assert course_utils.get_language() == "en"
    assert i18n.gettext("{what} must be a tensor (got {got}).") == "{what} must be a tensor (got {got})."


def test_set_language_switches_messages_to_the_catalog_translation(catalog):
    course_utils.set_language("zh")
    message = i18n.gettext("{what} must be a tensor (got {got}).").format(what="out", got="None")
    assert message == "out 必须是张量（得到 None）。"


def test_fuzzy_or_unknown_messages_fall_back_to_english(catalog):
    course_utils.set_language("zh")
    assert i18n.gettext("Fuzzy one.") == "Fuzzy one."
    assert i18n.gettext("Not in the catalog.") == "Not in the catalog."


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
