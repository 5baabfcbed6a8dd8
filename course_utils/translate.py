"""Translated editions of the notebooks, from gettext catalogs: one unit per prose cell, keyed by its cell id.

    python -m course_utils.translate update zh     # sync the catalogs with the English source and checkers
    python -m course_utils.translate status        # per catalog: translated, fuzzy, untranslated units

Catalogs live in ``course_utils/translations/<language>/<notebook stem>.po``, the format translators' tools
(Poedit, Weblate, Lokalize, ``msgmerge``) read. Each Markdown cell of the English source edition is one unit:
the cell id is its message context, the English text its message id, the translation its message string.
``update`` works like ``msgmerge``: a new cell becomes an empty unit; a cell whose English changed keeps its old
translation marked *fuzzy*, with the previous English kept for the translator to compare; a removed cell's unit
becomes obsolete. A translated edition is built only from units that are translated, not fuzzy and whose
English still matches: anything else is a :class:`TranslationError` naming the cells, so a build never ships an
English paragraph in another language's edition. Code cells, identifiers and outputs are never translated.

Checker messages have one more catalog per language, ``checks.po``, whose units are the message templates found
in the checkers' source (see :mod:`course_utils.i18n`).
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from course_utils.paths import PACKAGE_DIR

if TYPE_CHECKING:  # importing course_utils (set_language) must stay light: nbformat is loaded where it is used
    import nbformat

TRANSLATIONS_DIR = PACKAGE_DIR / "translations"
CHECKS_CATALOG = "checks.po"  # per language: the checkers' message templates (see course_utils.i18n)
# Languages the course can be built in, with the locale code that goes into each catalog's header.
LANGUAGES = {"zh": "zh_CN"}
_HEADER = {
    "Project-Id-Version": "pytorch-models-course",
    "MIME-Version": "1.0",
    "Content-Type": "text/plain; charset=UTF-8",
    "Content-Transfer-Encoding": "8bit",
    "Plural-Forms": "nplurals=1; plural=0;",
}


class TranslationError(Exception):
    """A translated edition cannot be built: the message names the catalog and the cells."""


@dataclass
class Status:
    """How far one catalog is from the notebook it translates."""

    translated: list[str] = field(default_factory=list)
    fuzzy: list[str] = field(default_factory=list)
    untranslated: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # the English changed and `update` has not been run
    missing: list[str] = field(default_factory=list)  # the cell has no unit at all
    broken: dict[str, list[str]] = field(default_factory=dict)  # translated, but code or markup differs

    @property
    def complete(self) -> bool:
        return not (self.fuzzy or self.untranslated or self.stale or self.missing or self.broken)

    def problems(self) -> list[str]:
        """One phrase per kind of problem, naming the cells."""
        kinds = [
            (self.missing, "no unit in the catalog (run `python -m course_utils.translate update`)"),
            (self.stale, "English changed since the catalog was updated (run `update`)"),
            (self.fuzzy, "English changed since translation: review the fuzzy units"),
            (self.untranslated, "not translated yet"),
        ]
        found = [f"{_cells(cells)}: {why}" for cells, why in kinds if cells]
        found += [f"cell {cell}: the translation {'; '.join(why)}" for cell, why in self.broken.items()]
        return found


def _cells(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"cell{'s' if len(ids) > 1 else ''} {shown}{more}"


def _polib():
    try:
        import polib
    except ImportError:  # pragma: no cover - polib is a pinned dependency of the course
        raise TranslationError("polib is not installed: run `make install`") from None
    return polib


def catalog_path(language: str, notebook: Path, translations_dir: Path | None = None) -> Path:
    """``course_utils/translations/zh/01_model_definition.po`` for ``01_model_definition.ipynb``."""
    if language not in LANGUAGES:
        raise TranslationError(f"language must be one of {sorted(LANGUAGES)} (got {language!r})")
    return (translations_dir or TRANSLATIONS_DIR) / language / f"{notebook.stem}.po"


def prose_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The cells that are translated: every Markdown cell with text."""
    return [cell for cell in nb.cells if cell.cell_type == "markdown" and cell.source.strip()]


def _checked_ids(nb: nbformat.NotebookNode, label: str) -> None:
    ids = [cell.get("id") for cell in prose_cells(nb)]
    if None in ids or len(set(ids)) != len(ids):
        raise TranslationError(f"{label}: every Markdown cell needs a unique id (the catalogs are keyed by it)")


def read_catalog(path: Path):
    """The catalog at ``path`` (a ``polib.POFile``); an empty one when the file does not exist yet."""
    polib = _polib()
    if not path.exists():
        catalog = polib.POFile(wrapwidth=0)
        catalog.metadata = dict(_HEADER)
        return catalog
    try:
        return polib.pofile(str(path), wrapwidth=0, check_for_duplicates=True)
    except (OSError, ValueError) as error:
        raise TranslationError(f"{path}: not a readable gettext catalog ({error})") from None


def status(nb: nbformat.NotebookNode, catalog) -> Status:
    """Compare a catalog with the prose cells of a notebook."""
    result = Status()
    units = {entry.msgctxt: entry for entry in catalog if not entry.obsolete}
    for cell in prose_cells(nb):
        entry = units.get(cell.id)
        if entry is None:
            result.missing.append(cell.id)
        elif entry.msgid != cell.source:
            result.stale.append(cell.id)
        elif entry.fuzzy:
            result.fuzzy.append(cell.id)
        elif not entry.msgstr.strip():
            result.untranslated.append(cell.id)
        elif problems := markup_problems(entry.msgid, entry.msgstr):
            result.broken[cell.id] = problems
        else:
            result.translated.append(cell.id)
    return result


# --- what a translation must keep: code, math, links, structure --------------------------------------------

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[ \t]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
_MATH = re.compile(r"\$\$.+?\$\$|(?<![\\$])\$(?:[^$\n]|\n(?!\n))+?\$", re.S)  # inline math may wrap once
_LINK_TARGET = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s", re.M)
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{[^{}]+\}")


def _differs(what: str, english: list[str], translation: list[str]) -> str | None:
    lost = [item for item in dict.fromkeys(english) if english.count(item) > translation.count(item)]
    added = [item for item in dict.fromkeys(translation) if translation.count(item) > english.count(item)]
    parts = [
        f"{verb} {what} {', '.join(map(repr, items[:3]))}"
        for verb, items in (("loses", lost), ("adds", added))
        if items
    ]
    return " and ".join(parts) or None


def markup_problems(english: str, translation: str) -> list[str]:
    """What a prose translation changed that it must keep: code blocks and spans, math, link targets, headings.

    Returns one phrase per kind of difference (empty when the translation keeps them all). Code and identifiers
    are never translated, so each code span of the English must appear in the translation as often.
    """
    problems = []
    if [m.group(0) for m in _FENCE.finditer(english)] != [m.group(0) for m in _FENCE.finditer(translation)]:
        problems.append("changes a fenced code block")
    rest_en, rest_tr = _FENCE.sub("", english), _FENCE.sub("", translation)
    checks = [
        (
            "code span",
            [m.group(2) for m in _CODE_SPAN.finditer(rest_en)],
            [m.group(2) for m in _CODE_SPAN.finditer(rest_tr)],
        ),
        ("math", _MATH.findall(_CODE_SPAN.sub("", rest_en)), _MATH.findall(_CODE_SPAN.sub("", rest_tr))),
        ("link target", _LINK_TARGET.findall(rest_en), _LINK_TARGET.findall(rest_tr)),
    ]
    problems += [found for what, en, tr in checks if (found := _differs(what, en, tr))]
    if _HEADING.findall(rest_en) != _HEADING.findall(rest_tr):
        problems.append(f"has headings {_HEADING.findall(rest_tr)} where the English has {_HEADING.findall(rest_en)}")
    return problems


def placeholder_problems(template: str, translation: str) -> list[str]:
    """What a checker-message translation changed that it must keep: its placeholders and code spans."""
    problems = []
    found = _differs("placeholder", _PLACEHOLDER.findall(template), _PLACEHOLDER.findall(translation))
    if found:
        problems.append(found)
    spans_en = [m.group(2) for m in _CODE_SPAN.finditer(template)]
    spans_tr = [m.group(2) for m in _CODE_SPAN.finditer(translation)]
    if found := _differs("code span", spans_en, spans_tr):
        problems.append(found)
    return problems


def update_catalog(nb: nbformat.NotebookNode, catalog, language: str, label: str) -> int:
    """Bring a catalog in line with a notebook, as ``msgmerge`` would. Returns how many units changed."""
    polib = _polib()
    _checked_ids(nb, label)
    catalog.metadata.setdefault("Language", LANGUAGES[language])
    units = {entry.msgctxt: entry for entry in catalog}
    wanted = set()
    changed = 0
    for cell in prose_cells(nb):
        wanted.add(cell.id)
        entry = units.get(cell.id)
        if entry is None:
            catalog.append(polib.POEntry(msgctxt=cell.id, msgid=cell.source, msgstr="", occurrences=[(label, "")]))
            changed += 1
            continue
        if entry.obsolete:
            entry.obsolete = False
            changed += 1
        if entry.msgid != cell.source:
            entry.previous_msgid = entry.msgid
            entry.msgid = cell.source
            if entry.msgstr and not entry.fuzzy:
                entry.flags.append("fuzzy")
            changed += 1
    for entry in catalog:
        if entry.msgctxt not in wanted and not entry.obsolete:
            entry.obsolete = True
            changed += 1
    return changed


def translated_notebook(nb: nbformat.NotebookNode, catalog, language: str, label: str) -> nbformat.NotebookNode:
    """The notebook with every prose cell in ``language``; code, ids and outputs unchanged.

    Raises:
        TranslationError: a prose cell has no current, reviewed translation (the message names it).
    """
    found = status(nb, catalog)
    if not found.complete:
        raise TranslationError(f"{label} [{language}]: " + "; ".join(found.problems()))
    units = {entry.msgctxt: entry.msgstr for entry in catalog if not entry.obsolete}
    translated = copy.deepcopy(nb)
    for cell in prose_cells(translated):
        cell.source = units[cell.id]
    translated.metadata["language"] = language
    return translated


# --- checker messages: the templates in the checkers' source ----------------------------------------------

MESSAGE_SOURCES = ("checking.py", "compare.py", "checks", "grade.py")
_WORDS = re.compile(r"[A-Za-z]{2,}\W+[A-Za-z]{2,}")
_SPACED = re.compile(r"(?=.*[A-Za-z]{3})\b[A-Za-z][A-Za-z0-9]*\s+[A-Za-z][A-Za-z0-9]*\b")  # "halves H and W"
_TAG = re.compile(r"<[^<>]*>|&[a-z]+;")  # HTML tags and entities are not words


def _message_files(package_dir: Path) -> list[Path]:
    files = []
    for name in MESSAGE_SOURCES:
        path = package_dir / name
        files += sorted(path.glob("*.py")) if path.is_dir() else [path] if path.exists() else []
    return files


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _is_concatenation(node: ast.AST) -> bool:
    """``"text " + f"more {x}"`` or ``f"{a} went wrong: " + why``: one message written in parts."""
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Add)
        and (_is_text(node.left) or _is_text(node.right) or _is_concatenation(node.left))
    )


def _parts(node: ast.AST) -> list[tuple[str, str]]:
    """A message's parts in order: ``("text", literal)`` or ``("value", source)``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [("text", node.value)]
    if isinstance(node, ast.JoinedStr):
        return [part for value in node.values for part in _parts(value)]
    if isinstance(node, ast.FormattedValue):
        return [("value", ast.unparse(node.value))]
    if _is_concatenation(node):
        return _parts(node.left) + _parts(node.right)
    return [("value", ast.unparse(node))]


def _template(node: ast.AST) -> str | None:
    """The template of a string literal, f-string or concatenation of them: literal braces doubled, each value as
    ``{its source}`` (``{value}``, ``{value2}`` ... where the source has braces of its own)."""
    if not (_is_text(node) or _is_concatenation(node)):
        return None
    pieces, literal, unnamed = [], "", 0
    for kind, text in _parts(node):
        if kind == "text":
            pieces.append(text.replace("{", "{{").replace("}", "}}"))
            literal += text
        elif "{" in text or "}" in text:
            unnamed += 1
            pieces.append("{value}" if unnamed == 1 else f"{{value{unnamed}}}")
        else:
            pieces.append("{" + text + "}")
    template = "".join(pieces)
    # A message has two words, or one word and a value ("{doing} raised {error}"), not counting HTML tags and
    # keyword arguments (", stride={stride}"); code is not a message.
    text = _TAG.sub(" ", literal)
    one_word = (
        len(pieces) > 1
        and re.search(r"[A-Za-z]{2,}", text)
        and not re.search(r"[A-Za-z_]=", text)
        and not re.fullmatch(r"[\w{}\[\]().']+", template)  # a key or a name: "fc{i}", "{prefix}scale"
    )
    return template if (_WORDS.search(text) or _SPACED.search(text) or one_word) and not _is_code(template) else None


def _is_code(template: str) -> bool:
    """Python code (a call, a statement) is shown as it is in every language: it is not a message to translate."""
    text = _PLACEHOLDER.sub("_", template).replace("{{", "{").replace("}}", "}")
    # "not finite", "Hint: {hint}" and "# Feedback on {file}" parse too, but words without code signs are a phrase.
    if text.lstrip().startswith("#") or not re.search(r"[()\[\]=._/,-]", _PLACEHOLDER.sub("", template)):
        return False
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


def _marks(node: ast.AST) -> bool:
    """``N_("PASS")`` or ``i18n.N_("PASS")``: a short string marked for the catalog (see ``i18n.N_``)."""
    if not (isinstance(node, ast.Call) and len(node.args) == 1 and isinstance(node.args[0], ast.Constant)):
        return False
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    return name == "N_" and isinstance(node.args[0].value, str)


def _is_pattern(node: ast.AST) -> bool:
    """``re.compile(r"...")`` and friends: a regular expression, not a message."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "re"
        and bool(node.args)
    )


def extract_templates(package_dir: Path | None = None) -> dict[str, list[str]]:
    """Every message template in the checkers' source, with where it occurs (``file:line``)."""
    package_dir = package_dir or PACKAGE_DIR
    found: dict[str, list[str]] = {}
    for path in _message_files(package_dir):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        inner = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        inner |= {id(part) for node in ast.walk(tree) if _is_concatenation(node) for part in (node.left, node.right)}
        marked = {id(node.args[0]) for node in ast.walk(tree) if _marks(node)}
        skip |= {id(node.args[0]) for node in ast.walk(tree) if _is_pattern(node)}
        for node in ast.walk(tree):
            if id(node) in skip or id(node) in inner:
                continue
            template = node.value.replace("{", "{{").replace("}", "}}") if id(node) in marked else _template(node)
            if template is not None:
                where = f"{path.relative_to(package_dir.parent)}:{node.lineno}"
                found.setdefault(template, []).append(where)
    return found


def update_messages(templates: dict[str, list[str]], catalog, language: str) -> int:
    """Bring the checker-message catalog in line with the templates found in the source. Returns the changes."""
    polib = _polib()
    catalog.metadata.setdefault("Language", LANGUAGES[language])
    units = {entry.msgid: entry for entry in catalog}
    changed = 0
    for template, occurrences in templates.items():
        where = [tuple(place.rsplit(":", 1)) for place in occurrences]
        entry = units.get(template)
        if entry is None:
            catalog.append(polib.POEntry(msgid=template, msgstr="", occurrences=where))
            changed += 1
        elif entry.obsolete or entry.occurrences != where:
            entry.obsolete, entry.occurrences = False, where
            changed += 1
    for entry in catalog:
        if entry.msgid not in templates and not entry.obsolete:
            entry.obsolete = True
            changed += 1
    return changed


def usable_message(entry) -> bool:
    """A checker-message unit that may be shown: translated, reviewed, current and with every placeholder."""
    return (
        bool(entry.msgstr.strip())
        and not entry.fuzzy
        and not entry.obsolete
        and not placeholder_problems(entry.msgid, entry.msgstr)
    )


def untranslated_messages(templates: dict[str, list[str]], catalog) -> list[str]:
    """The templates that have no usable translation in the catalog (see :func:`usable_message`)."""
    done = {entry.msgid for entry in catalog if usable_message(entry)}
    return [template for template in templates if template not in done]


def languages(translations_dir: Path | None = None) -> list[str]:
    """The languages that have a catalog folder, i.e. that the build makes editions for."""
    root = translations_dir or TRANSLATIONS_DIR
    return [language for language in LANGUAGES if (root / language).is_dir()]


def main(argv: list[str] | None = None) -> int:
    import nbformat

    from course_utils.paths import SOLUTIONS_NOTEBOOKS_DIR

    parser = argparse.ArgumentParser(prog="python -m course_utils.translate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    update = commands.add_parser("update", help="add new cells, mark changed ones fuzzy, retire removed ones")
    update.add_argument("language", choices=sorted(LANGUAGES))
    report = commands.add_parser("status", help="how much of each chapter is translated")
    report.add_argument("language", nargs="?", choices=sorted(LANGUAGES))
    args = parser.parse_args(argv)
    sources = sorted(SOLUTIONS_NOTEBOOKS_DIR.glob("*.ipynb"))
    templates = extract_templates()
    try:
        for language in [args.language] if args.language else languages():
            target = TRANSLATIONS_DIR / language / CHECKS_CATALOG
            catalog = read_catalog(target)
            if args.command == "update":
                changed = update_messages(templates, catalog, language)
                target.parent.mkdir(parents=True, exist_ok=True)
                catalog.save(str(target))
                print(f"{language}/{target.name}: {changed} unit(s) changed")
            else:
                missing = untranslated_messages(templates, catalog)
                print(f"{language}/{target.name}: {len(templates) - len(missing)}/{len(templates)} messages translated")
            for path in sources:
                nb = nbformat.read(path, as_version=4)
                target = catalog_path(language, path)
                catalog = read_catalog(target)
                if args.command == "update":
                    changed = update_catalog(nb, catalog, language, f"{path.parent.name}/{path.name}")
                    if changed or not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        catalog.save(str(target))
                    print(f"{language}/{target.name}: {changed} unit(s) changed")
                else:
                    found = status(nb, catalog)
                    total = len(prose_cells(nb))
                    problems = "; ".join(found.problems()) or "complete"
                    print(f"{language}/{target.name}: {len(found.translated)}/{total} translated; {problems}")
    except TranslationError as error:
        print(f"translate failed: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
