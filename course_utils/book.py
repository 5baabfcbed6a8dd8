"""Build the course website from the executed source edition, offline and without running anything.

    python -m course_utils.book                    # -> _build/html/index.html (fails on any build warning)
    python -m course_utils.book --allow-warnings   # print the warnings, keep the site

For each language whose source edition exists (English: ``notebooks/solutions/``; Chinese, once it exists:
``notebooks/zh/solutions/``), the pages are staged into ``_build/src/<lang>/`` and Sphinx (myst-nb,
sphinx-book-theme; configuration in ``book/conf.py``) renders them with their stored outputs:

- ``index.md``: the intro (``book/intro.md``), with a generated table of the chapters;
- one page per chapter: a copy of ``notebooks/solutions/NN_*.ipynb`` without the Colab install cell, with links to
  download its student and solved notebooks under the title, an anchor on its glossary, and progress bars drawn
  from the stored widget state as static HTML;
- ``instructors.md`` (``book/instructors.md``), with a generated table of every exercise and its points;
- ``glossary.md``: every chapter's EN/中文 glossary in one table. A chapter without a glossary fails the build.

English goes to ``_build/html/``, Chinese to ``_build/html/zh/``; with both, every page links its twin. Files are
staged only when they change, so a second build re-renders only what changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import nbformat

from course_utils.build import COLAB_CELL_ID
from course_utils.paths import NOTEBOOKS_DIR, REPO_DIR, SOLUTIONS_NOTEBOOKS_DIR

BOOK_DIR = REPO_DIR / "book"
"""Sphinx configuration, templates, static files, and the hand-written pages (``intro.md``, ``instructors.md``)."""
BUILD_DIR = REPO_DIR / "_build"
CHAPTERS_MARKER = "<!-- course:chapters -->"
EXERCISES_MARKER = "<!-- course:exercises -->"
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t#]*$")
_GLOSSARY_HEADING = re.compile(r"glossary|术语表", re.I)
_DELIMITER_ROW = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_CHAPTER_STEM = re.compile(r"^(\d\d)([a-z]?)_")


class BookError(Exception):
    """The website cannot be built as it stands: the message says which file and what to fix."""


@dataclasses.dataclass(frozen=True)
class Language:
    """One language of the site: where its notebooks and hand-written pages are, where its pages go."""

    code: str
    label: str
    solutions_dir: Path
    students_dir: Path
    pages_dir: Path
    out_subdir: str  # "" for the site's root language

    def exists(self) -> bool:
        return any(self.solutions_dir.glob("*.ipynb"))


LANGUAGES = (
    Language("en", "English", SOLUTIONS_NOTEBOOKS_DIR, NOTEBOOKS_DIR, BOOK_DIR, ""),
    Language("zh", "中文", NOTEBOOKS_DIR / "zh" / "solutions", NOTEBOOKS_DIR / "zh", BOOK_DIR / "zh", "zh"),
)

_TEXT = {  # the few words the generated pages add, per language
    "en": {
        "downloads": "Download: {student} (the exercises to do, no outputs) · {solved} (this page, with outputs)",
        "student": "student notebook",
        "solved": "solved notebook",
        "chapter": "Ch. {n}",
        "chapters_header": "| Chapter | Exercises |",
        "glossary_title": "Glossary · 术语表",
        "glossary_intro": "Every chapter's key terms in English and Chinese, with the chapters that use them.",
        "glossary_header": "| English | 中文 | Where |",
        "exercises_header": "| Exercise | Title | Reads | Points |",
        "chapter_heading": "Chapter {n}",
        "total": "**{count} exercises, {points} points in all.**",
        "reference": "Reference",
    },
    "zh": {
        "downloads": "下载：{student}（待完成的练习，无输出）· {solved}（本页，含输出）",
        "student": "学生版笔记本",
        "solved": "答案版笔记本",
        "chapter": "第 {n} 章",
        "chapters_header": "| 章节 | 练习 |",
        "glossary_title": "术语表 · Glossary",
        "glossary_intro": "各章关键术语的中英文对照，以及使用它们的章节。",
        "glossary_header": "| English | 中文 | 章节 |",
        "exercises_header": "| 练习 | 标题 | 读取的名称 | 分数 |",
        "chapter_heading": "第 {n} 章",
        "total": "**共 {count} 个练习，{points} 分。**",
        "reference": "参考",
    },
}


# --- glossaries -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GlossaryEntry:
    """One row of a chapter's glossary table."""

    english: str
    chinese: str
    note: str
    chapter: str  # the notebook's stem, e.g. "04_save_and_load"


def _split_row(line: str) -> list[str]:
    """The cells of one Markdown table row (GFM: split at every unescaped ``|``)."""
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)]


def _glossary_lines(nb: nbformat.NotebookNode) -> list[str] | None:
    """The Markdown lines under the glossary heading, up to the next heading of the same or a higher level."""
    lines: list[str] | None = None
    level = 0
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            heading = _HEADING.match(line)
            if lines is None:
                if heading and _GLOSSARY_HEADING.search(heading.group(2)):
                    lines, level = [], len(heading.group(1))
                continue
            if heading and len(heading.group(1)) <= level:
                return lines
            lines.append(line)
    return lines


def parse_glossary(nb: nbformat.NotebookNode, chapter: str) -> list[GlossaryEntry]:
    """The entries of a chapter's glossary: the first table under its "Glossary" (or "术语表") heading.

    The English term is the column headed "English" (else the first), the Chinese one the column headed "中文"
    or "Chinese" (else the second); the first other column, if any, is kept as a note.

    Raises:
        BookError: the chapter has no glossary heading, no table under it, or a row without both terms.
    """
    lines = _glossary_lines(nb)
    if lines is None:
        raise BookError(f"{chapter}: no glossary: add a '## Glossary · 术语表' section with an English | 中文 table")
    start = next(
        (i for i in range(len(lines) - 1) if "|" in lines[i] and _DELIMITER_ROW.match(lines[i + 1])),
        None,
    )
    if start is None:
        raise BookError(f"{chapter}: the glossary section has no Markdown table (| English | 中文 | ...)")
    header = [cell.casefold() for cell in _split_row(lines[start])]
    if len(header) < 2:
        raise BookError(f"{chapter}: the glossary table needs an English and a Chinese column (got {header})")
    english = next((i for i, h in enumerate(header) if "english" in h), 0)
    chinese = next((i for i, h in enumerate(header) if "中文" in h or "chinese" in h), 1 if english == 0 else 0)
    note = next((i for i in range(len(header)) if i not in (english, chinese)), None)
    entries = []
    for line in lines[start + 2 :]:
        if "|" not in line or not line.strip():
            break
        cells = _split_row(line)
        cells += [""] * (len(header) - len(cells))
        if not cells[english] or not cells[chinese]:
            raise BookError(f"{chapter}: glossary row without both an English and a Chinese term: {line.strip()}")
        entries.append(GlossaryEntry(cells[english], cells[chinese], cells[note] if note is not None else "", chapter))
    if not entries:
        raise BookError(f"{chapter}: the glossary table has no rows")
    return entries


def _sort_key(term: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", term.casefold()).strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def glossary_page(entries: Iterable[GlossaryEntry], lang: str = "en") -> str:
    """The combined glossary: one row per English term, its Chinese terms, and where each chapter uses it."""
    text = _TEXT[lang]
    terms: dict[str, list[GlossaryEntry]] = {}
    for entry in entries:
        terms.setdefault(_sort_key(entry.english), []).append(entry)
    rows = []
    for key in sorted(terms):
        group = terms[key]
        chinese = list(dict.fromkeys(e.chinese for e in group))
        where = []
        for e in group:
            link = f"{{ref}}`{chapter_label(e.chapter, lang)} <{glossary_label(e.chapter)}>`"
            where.append(f"{link}: {e.note}" if e.note else link)
        rows.append(f"| {_cell(group[0].english)} | {_cell('；'.join(chinese))} | {_cell('; '.join(where))} |")
    header = text["glossary_header"]
    return "\n".join(
        [f"# {text['glossary_title']}", "", text["glossary_intro"], "", header, "|---|---|---|", *rows, ""]
    )


# --- chapters ---------------------------------------------------------------------------------------------------


def chapter_label(stem: str, lang: str = "en") -> str:
    """``"04_save_and_load"`` -> ``"Ch. 4"`` (a part ``"02a_..."`` -> ``"Ch. 2a"``)."""
    match = _CHAPTER_STEM.match(stem)
    number = f"{int(match.group(1))}{match.group(2)}" if match else stem
    return _TEXT[lang]["chapter"].format(n=number)


def glossary_label(stem: str) -> str:
    """The Sphinx label put on a chapter's glossary heading."""
    return f"glossary-{stem}"


def chapter_title(nb: nbformat.NotebookNode, chapter: str) -> str:
    """The text of the notebook's ``#`` title.

    Raises:
        BookError: the notebook has no ``#`` title.
    """
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                heading = _HEADING.match(line)
                if heading and len(heading.group(1)) == 1:
                    return heading.group(2)
    raise BookError(f"{chapter}: no '# ' title: every chapter starts with one")


def _widget_html(model_id: str, state: dict) -> str | None:
    """Static HTML for a stored widget made of boxes, HTML, labels and progress bars (tqdm's), else None."""
    model = state.get(model_id)
    if model is None:
        return None
    name, values = model.get("model_name", ""), model.get("state", {})
    if name in ("HBoxModel", "VBoxModel"):
        parts = [_widget_html(child.removeprefix("IPY_MODEL_"), state) for child in values.get("children", [])]
        if any(part is None for part in parts):
            return None
        return f'<div class="course-progress">{"".join(parts)}</div>'
    if name == "HTMLModel":
        return f"<span>{values.get('value', '')}</span>"  # widget HTML is HTML already (tqdm escapes it)
    if name == "LabelModel":
        return f"<span>{html.escape(str(values.get('value', '')))}</span>"
    if name in ("FloatProgressModel", "IntProgressModel"):
        value, maximum = values.get("value", 0), values.get("max", 100)
        style = values.get("bar_style") or "info"
        return f'<progress class="course-progress-{style}" value="{value}" max="{maximum}"></progress>'
    return None


def _static_widgets(nb: nbformat.NotebookNode) -> None:
    """Replace widget outputs with static HTML from the stored widget state (or their text), in place."""
    state = nb.metadata.pop("widgets", {}).get(_WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).pop(_WIDGET_VIEW, None)
            if view is not None:
                rendered = _widget_html(view.get("model_id", ""), state)
                if rendered is not None:
                    output.data["text/html"] = rendered


def _downloads_block(stem: str, lang: str) -> str:
    text = _TEXT[lang]
    student = f"{{download}}`{text['student']} <downloads/{stem}.ipynb>`"
    solved = f"{{download}}`{text['solved']} <downloads/{stem}_solved.ipynb>`"
    return f"\n:::{{container}} course-downloads\n{text['downloads'].format(student=student, solved=solved)}\n:::\n"


def chapter_page(nb: nbformat.NotebookNode, stem: str, lang: str = "en") -> nbformat.NotebookNode:
    """The notebook as the website shows it (a changed copy; ``nb`` is not touched).

    Raises:
        BookError: the notebook has no ``#`` title or no glossary.
    """
    page = nbformat.from_dict(json.loads(json.dumps(nb)))
    chapter_title(page, stem)
    parse_glossary(page, stem)
    page.cells = [cell for cell in page.cells if cell.get("id") != COLAB_CELL_ID]
    _static_widgets(page)
    title_done = glossary_done = False
    for cell in page.cells:
        if cell.cell_type != "markdown":
            continue
        lines = []
        for line in cell.source.splitlines():
            heading = _HEADING.match(line)
            if heading and not glossary_done and _GLOSSARY_HEADING.search(heading.group(2)):
                lines += [f"({glossary_label(stem)})=", line]
                glossary_done = True
            elif heading and not title_done and len(heading.group(1)) == 1:
                lines += [line, _downloads_block(stem, lang)]
                title_done = True
            else:
                lines.append(line)
        cell.source = "\n".join(lines)
    return page


# --- generated pages -------------------------------------------------------------------------------------------


def _chapter_number(stem: str) -> int | None:
    match = _CHAPTER_STEM.match(stem)
    return int(match.group(1)) if match else None


def _replace_marker(source: str, marker: str, block: str, where: Path) -> str:
    if marker not in source:
        raise BookError(f"{where}: the line {marker} (where the generated table goes) is missing")
    return source.replace(marker, block)


def intro_page(source: str, chapters: Sequence[tuple[str, str]], lang: str = "en") -> str:
    """The intro: ``source`` with the chapters' table at its marker and the site's table of contents."""
    from course_utils.checking import registry

    text = _TEXT[lang]
    exercises = registry().values()
    rows = [text["chapters_header"], "|---|---|"]
    for stem, title in chapters:
        ids = [f"`{ex.id}`" for ex in exercises if ex.chapter == _chapter_number(stem)]
        rows.append(f"| [{_cell(title)}]({stem}.ipynb) | {', '.join(ids) or '-'} |")
    body = _replace_marker(source, CHAPTERS_MARKER, "\n".join(rows), BOOK_DIR / "intro.md")
    toc = ["", "```{toctree}", ":hidden:", ":maxdepth: 2", "", *(stem for stem, _ in chapters), "```", ""]
    toc += ["```{toctree}", ":hidden:", f":caption: {text['reference']}", "", "instructors", "glossary", "```", ""]
    return body.rstrip("\n") + "\n" + "\n".join(toc)


def instructors_page(source: str, lang: str = "en") -> str:
    """The instructors' page: ``source`` with every registered exercise and its points at its marker."""
    from course_utils.checking import registry

    text = _TEXT[lang]
    exercises = list(registry().values())
    blocks = []
    for chapter in sorted({ex.chapter for ex in exercises}):
        blocks += [f"### {text['chapter_heading'].format(n=chapter)}", "", text["exercises_header"]]
        blocks.append("|---|---|---|---:|")
        for ex in (e for e in exercises if e.chapter == chapter):
            reads = ", ".join(f"`{name}`" for name in ex.names)
            blocks.append(f"| `{ex.id}` | {_cell(ex.title)} | {reads} | {ex.points} |")
        blocks.append("")
    blocks.append(text["total"].format(count=len(exercises), points=sum(ex.points for ex in exercises)))
    return _replace_marker(source, EXERCISES_MARKER, "\n".join(blocks), BOOK_DIR / "instructors.md")


# --- staging and building --------------------------------------------------------------------------------------


def _write_if_changed(path: Path, content: str | bytes) -> None:
    data = content.encode("utf-8") if isinstance(content, str) else content
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def stage(language: Language, stage_dir: Path) -> list[str]:
    """Write the Sphinx sources of one language into ``stage_dir``; returns the chapters' stems.

    Raises:
        BookError: a chapter lacks its title, its glossary or its student notebook, or a hand-written page is
            missing.
    """
    lang = language.code
    sources = sorted(language.solutions_dir.glob("*.ipynb"))
    if not sources:
        raise BookError(f"{language.solutions_dir}: no notebooks to put on the site")
    wanted: set[Path] = set()
    chapters, glossary = [], []
    for path in sources:
        stem = path.stem
        student = language.students_dir / path.name
        if not student.exists():
            raise BookError(f"{student}: missing: run `make build` to generate the student edition")
        nb = nbformat.read(path, as_version=4)
        page = chapter_page(nb, stem, lang)
        chapters.append((stem, chapter_title(nb, stem)))
        glossary += parse_glossary(nb, stem)
        files = {
            stage_dir / path.name: nbformat.writes(page) + "\n",
            stage_dir / "downloads" / path.name: student.read_bytes(),
            stage_dir / "downloads" / f"{stem}_solved.ipynb": path.read_bytes(),
        }
        for target, content in files.items():
            _write_if_changed(target, content)
            wanted.add(target)
    pages = {}
    for name in ("intro.md", "instructors.md"):
        if not (language.pages_dir / name).exists():
            raise BookError(f"{language.pages_dir / name}: missing: the {lang} site needs this page")
        pages[name] = (language.pages_dir / name).read_text(encoding="utf-8")
    generated = {
        "index.md": intro_page(pages["intro.md"], chapters, lang),
        "instructors.md": instructors_page(pages["instructors.md"], lang),
        "glossary.md": glossary_page(glossary, lang),
    }
    for name, content in generated.items():
        _write_if_changed(stage_dir / name, content)
        wanted.add(stage_dir / name)
    for stale in [p for p in stage_dir.rglob("*") if p.is_file() and p not in wanted]:
        stale.unlink()  # a chapter that was removed or renamed
    return [stem for stem, _ in chapters]


def _site_settings(language: Language, languages: Sequence[Language]) -> dict:
    root_from_here = "../" * len(Path(language.out_subdir).parts)
    switch = [
        {"code": other.code, "label": other.label, "from_here": root_from_here + (other.out_subdir + "/").lstrip("/")}
        for other in languages
    ]
    title = "Defining models in PyTorch" if language.code == "en" else "用 PyTorch 定义模型"
    return {"language": language.code, "title": title, "languages": switch if len(languages) > 1 else []}


_STAGED_NOTEBOOK_LINE = re.compile(r"^(?P<path>\S+?\.ipynb):(?P<line>\d+): ")


def _shown(path: Path) -> Path:
    return path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path


def _locate(warning: str, language: Language, src: Path) -> str:
    """Point a warning about a staged chapter at the source-edition notebook, the cell id and the line's text.

    myst-nb numbers the lines of cell ``i`` from ``(i + 1) * 10000``; its line ``n`` is the cell's line ``n - 1``.
    """
    match = _STAGED_NOTEBOOK_LINE.match(warning)
    if not match or Path(match["path"]).parent != src:
        return warning
    index, line = divmod(int(match["line"]), 10_000)
    name = Path(match["path"]).name
    cells = nbformat.read(src / name, as_version=4).cells
    if not 1 <= index <= len(cells):
        return warning
    cell = cells[index - 1]
    lines = cell.source.splitlines()
    text = f", {lines[line - 2].strip()[:80]!r}" if 2 <= line <= len(lines) + 1 else ""
    return f"{_shown(language.solutions_dir / name)} (cell {cell.get('id')!r}{text}): {warning[match.end() :]}"


def _sphinx(language: Language, languages: Sequence[Language], src: Path, out: Path, work_dir: Path) -> list[str]:
    """Run Sphinx on one staged language; returns its warnings (Sphinx's own errors raise)."""
    warnings_file = work_dir / f"warnings-{language.code}.txt"
    # -E: read every page afresh, so that a warning is reported on every build, not only when its page changed.
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-q", "--keep-going", "-c", str(BOOK_DIR)]
    command += ["-d", str(work_dir / "doctrees" / language.code), "-w", str(warnings_file), str(src), str(out)]
    env = {**os.environ, "COURSE_BOOK_SITE": json.dumps(_site_settings(language, languages))}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    warnings = [_locate(line, language, src) for line in warnings_file.read_text(encoding="utf-8").splitlines()]
    warnings = [line for line in warnings if line.strip()]
    if result.returncode != 0 and not warnings:
        raise BookError(f"Sphinx failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return warnings


def build_book(
    out_dir: Path | None = None,
    work_dir: Path | None = None,
    languages: Sequence[Language] | None = None,
    strict: bool = True,
) -> list[str]:
    """Build the website: English into ``out_dir``, every other language that exists into ``out_dir/<code>``.

    Args:
        out_dir: where the site goes (default ``_build/html``; its ``index.html`` is the front page).
        work_dir: staged sources, Sphinx's caches and warning logs (default ``_build``).
        languages: the languages to consider (default :data:`LANGUAGES`); those without notebooks are left out.
        strict: raise on any build warning (broken link, skipped heading level, unknown target, ...).

    Returns:
        The build's warnings (empty when ``strict``).

    Raises:
        BookError: the content cannot be built, or (``strict``) it built with warnings, each listed.
    """
    out_dir = Path(out_dir or BUILD_DIR / "html")
    work_dir = Path(work_dir or BUILD_DIR)
    present = [language for language in (languages or LANGUAGES) if language.exists()]
    if not present or present[0].out_subdir:
        raise BookError("the site's root language (English) has no notebooks")
    warnings = []
    for language in present:
        src = work_dir / "src" / language.code
        stage(language, src)
        out = out_dir / language.out_subdir if language.out_subdir else out_dir
        warnings += _sphinx(language, present, src, out, work_dir)
    if strict and warnings:
        listed = "\n".join(warnings)
        raise BookError(f"the website built with {len(warnings)} warnings (fix them where they point):\n{listed}")
    return warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.book", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUILD_DIR / "html", help="where the site goes (_build/html)")
    parser.add_argument("--allow-warnings", action="store_true", help="print build warnings instead of failing")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        warnings = build_book(args.out, strict=not args.allow_warnings)
    except BookError as error:
        print(f"make book: {error}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(warning, file=sys.stderr)
    index = args.out / "index.html"
    print(f"Built {index} in {time.monotonic() - started:.1f} s ({len(warnings)} warnings).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
