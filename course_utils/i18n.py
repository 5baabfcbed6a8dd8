"""The language of checker messages: ``course_utils.set_language("zh")`` and the translation of finished messages.

Checker messages are English f-strings; :func:`translate_message` renders a finished message in the current
language from the catalog ``course_utils/translations/<language>/checks.po`` (the same gettext machinery as the
notebooks' prose, see :mod:`course_utils.translate`). What the catalog does not cover stays English, and a
missing or broken catalog never breaks a check: the message is then shown in English.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

ENGLISH = "en"
__all__ = ["ENGLISH", "N_", "available_languages", "get_language", "set_language", "tidy", "translate_message"]
_state = {"language": os.environ.get("COURSE_UTILS_LANGUAGE", ENGLISH)}


def N_(text: str) -> str:  # noqa: N802 - the name gettext tools know
    """Mark a short string (a one-word label) for the catalog; it is translated where it is shown."""
    return text


def available_languages() -> list[str]:
    """English and every language the course can be translated into."""
    # Imported here, not at the top: `python -m course_utils.translate` must not find it imported already.
    from course_utils.translate import LANGUAGES

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


def _catalog_path(language: str) -> Path:
    from course_utils import translate

    return translate.TRANSLATIONS_DIR / language / translate.CHECKS_CATALOG


@cache
def _messages(path: Path) -> dict[str, str]:
    """The usable units of the catalog at ``path`` (cached by path, so another catalog folder is read afresh)."""
    from course_utils.translate import TranslationError, read_catalog, usable_message

    if not path.exists():
        return {}
    try:
        catalog = read_catalog(path)
    except TranslationError:  # a learner's check must still report, in English (tests/test_translate.py catches it)
        return {}
    return {e.msgid: e.msgstr for e in catalog if usable_message(e)}


# --- checker messages: English templates found in the source, matched at run time ----------------------
#
# Checkers build their messages with f-strings, in English, where the code is. Rather than wrapping each one,
# the catalog's units are those f-strings themselves, extracted from the source by
# ``course_utils.translate.extract_templates``: ``f"{what} must be a tensor (got {describe(actual)})."`` becomes
# the template ``{what} must be a tensor (got {describe(actual)}).``, which a translator renders with the same
# placeholders. At run time a finished English message is matched against the templates, and each
# placeholder's value is translated in turn (it may itself be a message).

_EMBEDS_ERROR = re.compile(r"first_line\(|str\(error\)")  # a placeholder that holds an exception's own text
_STEP = re.compile(r"^\{(doing|failure\.message)\}$")  # "{doing} raised ...", "{doing} did not finish ..."


def _wraps(placeholder: str) -> bool:
    return bool(_STEP.search(placeholder) or _EMBEDS_ERROR.search(placeholder))


def _nested(depth: int) -> str:
    """A regex for one unit of text whose brackets are balanced up to ``depth`` levels deep."""
    plain = r"[^()\[\]{}]"
    if depth == 0:
        return plain
    inner = _nested(depth - 1)
    return rf"(?:{plain}|\({inner}*\)|\[{inner}*\]|\{{{inner}*\}})"


# A value (a call, a list, a shape) never splits inside its own brackets: "After {call}, ..." must take all of
# "freeze_until(resnet, 'layer3')", not stop at its first comma. An exception's text can hold anything.
_BALANCED = _nested(4)
_ANY = "(?:.)"
_PIECE = re.compile(r"(\{\{|\}\}|\{[^{}]+\})")


def _pieces(template: str) -> list[str]:
    return [piece for piece in _PIECE.split(template) if piece]


def _is_placeholder(piece: str) -> bool:
    return piece.startswith("{") and piece not in ("{{", "}}")


def _unescape(piece: str) -> str:
    return {"{{": "{", "}}": "}"}.get(piece, piece)


@dataclass(frozen=True)
class _Compiled:
    regex: str
    names: tuple[str, ...]
    translation: list[str]
    literal_length: int
    literals: tuple[str, ...]  # the template's own text, in order: a message without all of it cannot match

    @cached_property
    def pattern(self) -> re.Pattern[str]:  # compiled on first use: most templates never get that far
        return re.compile(self.regex, re.S)

    def match(self, message: str) -> re.Match[str] | None:
        position = 0
        for literal in self.literals:
            position = message.find(literal, position)
            if position < 0:
                return None
            position += len(literal)
        return self.pattern.fullmatch(message)


def _compile(template: str, translation: str) -> _Compiled:
    pieces = _pieces(template)
    regex, names = "", []
    for piece in pieces:
        if _is_placeholder(piece):
            if piece in names:  # the same value twice: it must be the same text twice
                regex += f"(?P={_group(names.index(piece))})"
                continue
            value = _ANY if _EMBEDS_ERROR.search(piece) else _BALANCED
            regex += f"(?P<{_group(len(names))}>{value}*?)"
            names.append(piece)
        else:
            regex += re.escape(_unescape(piece))
    literals = tuple(_unescape(p) for p in pieces if not _is_placeholder(p))
    return _Compiled(regex, tuple(names), _pieces(translation), sum(map(len, literals)), literals)


def _group(index: int) -> str:
    return f"v{index}"


@cache
def _compiled(path: Path) -> tuple[dict[str, str], list[_Compiled]]:
    exact, templates = {}, []
    for english, translation in _messages(path).items():
        if any(_is_placeholder(p) for p in _pieces(english)):
            templates.append(_compile(english, translation))
        else:
            exact["".join(_unescape(p) for p in _pieces(english))] = "".join(_unescape(p) for p in _pieces(translation))
    # A template that wraps a step ("{doing} raised {type}: {first_line(error)}", "{doing} did not finish ...") is the
    # outermost of any message it matches: an exception's text can hold anything. Otherwise the most specific wins.
    templates.sort(key=lambda t: (not any(_wraps(name) for name in t.names), -t.literal_length))
    return exact, templates


def translate_message(message: str | None, language: str | None = None, _depth: int = 0) -> str | None:
    """A finished English checker message in ``language`` (default: the current one).

    Parts that no template covers (a learner's own exception text, names, numbers) stay as they are.
    """
    language = language or get_language()
    if message is None or language == ENGLISH or _depth > 4:
        return message
    exact, templates = _compiled(_catalog_path(language))
    if message in exact:
        return exact[message]
    for template in templates:
        match = template.match(message)
        if match is None:
            continue
        values = {name: match.group(_group(i)) for i, name in enumerate(template.names)}
        out = []
        for piece in template.translation:
            if piece in values:
                out.append(translate_message(values[piece], language, _depth + 1))
            else:
                out.append(_unescape(piece))
        joined = "".join(out)
        return tidy(joined, language) if _depth == 0 else joined
    return message


# Values are put into templates with a space on each side, which Chinese wants next to Latin text and code
# ("调用 build_mlp([]) 时") but not between two Chinese characters ("读取状态字典 时" -> "读取状态字典时").
_CJK = "\u3000-\u303f\u4e00-\u9fff\uff00-\uffef"  # CJK punctuation, ideographs, full-width forms
_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}]) +(?=[{_CJK}])")
_SPACING = {"zh": lambda text: _BETWEEN_CJK.sub("", text)}


def tidy(text: str, language: str | None = None) -> str:
    """Text put together from translated parts, with the spacing ``language`` wants (see ``_SPACING``)."""
    language = language or get_language()
    return _SPACING[language](text) if language in _SPACING else text
