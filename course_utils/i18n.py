"""The language of checker messages: ``course_utils.set_language("zh")`` and the lookup checkers use.

Checker messages are English templates; :func:`gettext` returns a template's translation from the catalog
``course_utils/translations/<language>/checks.po`` (the same gettext machinery as the notebooks' prose, see
:mod:`course_utils.translate`), or the English when the language is English or the template is not in it.
"""

from __future__ import annotations

import os
from functools import cache

from course_utils.translate import LANGUAGES, TRANSLATIONS_DIR, read_catalog

ENGLISH = "en"
CHECKS_CATALOG = "checks.po"
_state = {"language": os.environ.get("COURSE_UTILS_LANGUAGE", ENGLISH)}


def available_languages() -> list[str]:
    """English and every language the course can be translated into."""
    return [ENGLISH, *LANGUAGES]


def set_language(language: str) -> None:
    """Choose the language of every checker message and hint from now on.

    Args:
        language: ``"en"`` or a translated language such as ``"zh"``.

    Raises:
        ValueError: the language is not one the course knows.
    """
    if language not in available_languages():
        raise ValueError(f"language must be one of {available_languages()} (got {language!r})")
    _state["language"] = language


def get_language() -> str:
    """The language checker messages are shown in."""
    return _state["language"] if _state["language"] in available_languages() else ENGLISH


@cache
def _messages(language: str) -> dict[str, str]:
    path = TRANSLATIONS_DIR / language / CHECKS_CATALOG
    if not path.exists():
        return {}
    catalog = read_catalog(path)
    return {e.msgid: e.msgstr for e in catalog if e.msgstr and not e.fuzzy and not e.obsolete}


def gettext(message: str) -> str:
    """The translation of an English message template in the current language (the English if there is none)."""
    language = get_language()
    if language == ENGLISH:
        return message
    return _messages(language).get(message, message)
