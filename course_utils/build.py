"""Build the notebook editions from one source of truth.

    python -m course_utils.build           # sync and regenerate
    python -m course_utils.build --check   # exit 1 if anything would change

Two steps, for every ``notebooks/solutions/NN_name.ipynb``:

1. **Inject.** A code cell that contains ``### BEGIN SOLUTION`` is an exercise cell. Its code (after any
   leading comment lines, which are kept) must be the source of the top-level functions and classes it
   defines, copied from the chapter's reference module ``course_utils.solutions.chNN_name``. The build
   rewrites the cell from the package, so the package is the only copy that anyone edits.
   It also makes the first code cell of every notebook the Colab install cell (tagged ``nbval-skip``; it does
   nothing outside Colab), built from ``[project.urls] Repository`` in ``pyproject.toml``.
2. **Generate.** The student edition ``notebooks/NN_name.ipynb`` is the source edition with every solution
   region replaced by a stub, outputs and execution counts cleared, and only cell tags kept as metadata.
   Stubs never raise when their cell runs: inside a body the stub is ``raise NotImplementedError``; at the
   top level each assigned name becomes ``name = ...``.
3. **Translate.** For every language with a catalog folder in ``course_utils/translations/`` (see
   :mod:`course_utils.translate`), ``notebooks/<language>/solutions/`` gets the source edition with its prose
   translated and the English outputs kept, and ``notebooks/<language>/`` its student edition. A prose cell
   without a current translation stops the build (and is drift under ``--check``), naming the cell.

The build also writes nbgrader's cell metadata into the source edition, from the exercise registry, so that an
instructor can run nbgrader on it (see :func:`nbgrader_metadata`). The student edition carries none of it.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import inspect
import re
import sys
import tomllib
from pathlib import Path

import nbformat

from course_utils import checking, translate
from course_utils.paths import NOTEBOOKS_DIR, REPO_DIR, SOLUTIONS_NOTEBOOKS_DIR

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB_COMMENT = "# YOUR CODE HERE"
_REGION = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[ \t]*\n(.*?)^[ \t]*{re.escape(END)}[ \t]*(\n|\Z)", re.M | re.S)
_NOTEBOOK_NAME = re.compile(r"^(\d\d)_([a-z0-9_]+?)(?:_[ab])?$")
_CHECK_CALL = re.compile(r"(?<![\w.])check_([a-z][a-z0-9_]*)\s*\(")
NBGRADER_SCHEMA_VERSION = 3


COLAB_CELL_ID = "colab-install"
# What the course imports that Colab's image may lack; everything else (PyTorch, torchvision, NumPy, Matplotlib,
# tqdm, ipywidgets) is Colab's own build, which the course's exact pins must not replace: reinstalling Jupyter or
# PyTorch inside a running Colab session breaks it or downloads gigabytes.
COLAB_EXTRAS = ("torchinfo", "safetensors", "polib")
_COLAB_CELL = """\
# On Google Colab only: fetch and install the course, then carry on (this cell does nothing anywhere else).
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    repository = "{url}"
    if not os.path.isdir("/content/course"):  # running the cell again skips the download
        subprocess.run(["git", "clone", "--depth", "1", repository, "/content/course"], check=True)
    packages = ["-e", "/content/course", {extras}]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *packages], check=True)
    if "/content/course" not in sys.path:
        sys.path.insert(0, "/content/course")"""


class BuildError(Exception):
    """A notebook breaks the rules of the build (the message says which cell and why)."""


def reference_module_name(notebook: Path) -> str:
    """``notebooks/solutions/02_model_blocks.ipynb`` -> ``course_utils.solutions.ch02_model_blocks``."""
    match = _NOTEBOOK_NAME.match(notebook.stem)
    if not match:
        raise BuildError(f"{notebook.name}: notebook names must look like '01_model_definition.ipynb'")
    return f"course_utils.solutions.ch{match.group(1)}_{match.group(2)}"


def chapter_of(notebook: Path) -> int:
    """``notebooks/solutions/02_model_blocks.ipynb`` -> ``2``."""
    reference_module_name(notebook)  # the same naming rule, and its error
    return int(_NOTEBOOK_NAME.match(notebook.stem).group(1))


def _split_header(source: str) -> tuple[str, str]:
    """Split a cell into its leading comment/blank lines and the code after them."""
    lines = source.splitlines(keepends=True)
    n = 0
    while n < len(lines) and (not lines[n].strip() or lines[n].lstrip().startswith("#")):
        if lines[n].strip().startswith(BEGIN):
            break
        n += 1
    return "".join(lines[:n]), "".join(lines[n:])


def _defined_names(code: str, where: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError as error:
        raise BuildError(f"{where}: the exercise cell does not parse ({error.msg}, line {error.lineno})") from None
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.append(node.name)
        else:
            raise BuildError(f"{where}: an exercise cell may only define functions and classes")
    if not names:
        raise BuildError(f"{where}: the exercise cell defines nothing")
    return names


def reference_source(module_name: str, names: list[str], where: str) -> str:
    """The package's source of ``names`` in ``module_name``, joined as they would be in a file."""
    module = importlib.import_module(module_name)
    parts = []
    for name in names:
        if not hasattr(module, name):
            raise BuildError(f"{where}: {module_name} has no {name} (the reference must live in the package)")
        parts.append(inspect.getsource(getattr(module, name)).rstrip("\n"))
    return "\n\n\n".join(parts)


def inject_references(nb: nbformat.NotebookNode, module_name: str, label: str) -> int:
    """Rewrite every exercise cell from the reference module. Returns how many cells changed."""
    changed = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or BEGIN not in cell.source:
            continue
        where = f"{label}, cell {index}"
        header, code = _split_header(cell.source)
        expected = header + reference_source(module_name, _defined_names(code, where), where)
        if cell.source != expected:
            cell.source = expected
            changed += 1
    return changed


def colab_cell_source() -> str:
    """The Colab install cell, for the repository and the pins of :data:`COLAB_EXTRAS` in ``pyproject.toml``."""
    project = tomllib.loads((REPO_DIR / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {re.split(r"[=<>!~ \[]", requirement, maxsplit=1)[0]: requirement for requirement in project["dependencies"]}
    extras = ", ".join(f'"{pins[name]}"' for name in COLAB_EXTRAS)
    return _COLAB_CELL.format(url=project["urls"]["Repository"], extras=extras)


def ensure_colab_cell(nb: nbformat.NotebookNode) -> bool:
    """Make the Colab install cell the first code cell. Returns whether anything changed."""
    source = colab_cell_source()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    first = code[0] if code else None
    if first is not None and first.get("id") == COLAB_CELL_ID:
        if first.source == source and first.metadata.get("tags") == ["nbval-skip"]:
            return False
        first.source = source
        first.metadata["tags"] = ["nbval-skip"]
        return True
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["nbval-skip"]})
    cell.id = COLAB_CELL_ID
    position = nb.cells.index(first) if first is not None else len(nb.cells)
    nb.cells.insert(position, cell)
    return True


def grade_id(exercise_id: str) -> str:
    """nbgrader's ``grade_id`` for an exercise: ``"ch1.build_mlp"`` -> ``"ch1-build_mlp"``.

    nbgrader's cell toolbar accepts only letters, digits, ``_`` and ``-`` in a ``grade_id``, and exercise ids never
    contain ``-``, so replacing the one dot is the whole mapping (:func:`exercise_id` undoes it).
    """
    return exercise_id.replace(".", "-", 1)


def exercise_id(nbgrader_grade_id: str) -> str:
    """The exercise id of a check cell's ``grade_id``: ``"ch1-build_mlp"`` -> ``"ch1.build_mlp"``."""
    return nbgrader_grade_id.replace("-", ".", 1)


def checked_exercises(source: str, chapter: int) -> list[checking.Exercise]:
    """The registered exercises of ``chapter`` whose ``check_<name>(...)`` a code cell calls, in call order."""
    exercises = {ex.id: ex for ex in checking.chapter_exercises(chapter)}
    found = []
    for name in _CHECK_CALL.findall(source):
        ex = exercises.get(f"ch{chapter}.{name}")
        if ex is not None and ex not in found:
            found.append(ex)
    return found


def nbgrader_metadata(nb: nbformat.NotebookNode, chapter: int, label: str) -> list[dict | None]:
    """nbgrader's metadata for each cell of a source-edition notebook (None: not an nbgrader cell).

    * An exercise cell (one with a solution region) is an autograded answer: a solution cell whose ``grade_id``
      is the cell's id.
    * A check cell (one that calls the ``check_<name>`` of a registered exercise of the chapter) is an autograded
      test: locked, ``grade_id`` from :func:`grade_id`, and the exercise's points. Under nbgrader the check
      raises when it does not pass (``NBGRADER_EXECUTION`` turns on graded mode), so the cell earns its points
      exactly when the checker passes the learner's answer.

    Raises:
        BuildError: for a cell that is both, a cell that checks two exercises, an exercise checked twice, a cell
            without an id, or a ``grade_id`` used twice.
    """
    metadata: list[dict | None] = []
    seen: dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        meta = None
        if cell.cell_type == "code":
            where = f"{label}, cell {index}"
            checked = checked_exercises(cell.source, chapter)
            solution = BEGIN in cell.source
            if solution and checked:
                raise BuildError(f"{where}: an exercise cell may not call a check; give the check its own cell")
            if len(checked) > 1:
                ids = ", ".join(ex.id for ex in checked)
                raise BuildError(f"{where}: a check cell checks one exercise (this one checks {ids})")
            if (solution or checked) and not cell.get("id"):
                raise BuildError(f"{where}: an exercise or check cell needs a cell id (nbformat 4.5)")
            if solution:
                meta = {"grade": False, "grade_id": cell.id, "locked": False, "solution": True}
            elif checked:
                ex = checked[0]
                meta = {"grade": True, "grade_id": grade_id(ex.id), "locked": True, "points": ex.points}
                meta["solution"] = False
            if meta is not None:
                meta |= {"schema_version": NBGRADER_SCHEMA_VERSION, "task": False}
                if meta["grade_id"] in seen:
                    what = "is checked twice" if checked else "is used twice as a grade_id"
                    raise BuildError(f"{where}: {meta['grade_id']} {what} (first in cell {seen[meta['grade_id']]})")
                seen[meta["grade_id"]] = index
        metadata.append(meta)
    return metadata


def ensure_nbgrader_metadata(nb: nbformat.NotebookNode, chapter: int, label: str) -> int:
    """Write :func:`nbgrader_metadata` into the cells (removing it from all others). Returns cells changed."""
    changed = 0
    for cell, meta in zip(nb.cells, nbgrader_metadata(nb, chapter, label), strict=True):
        if cell.get("metadata", {}).get("nbgrader") == meta:
            continue
        if meta is None:
            del cell.metadata["nbgrader"]
        else:
            cell.metadata["nbgrader"] = nbformat.NotebookNode(meta)
        changed += 1
    return changed


def _stub(match: re.Match[str]) -> str:
    indent, body = match.group(1), match.group(2)
    if indent:
        return f"{indent}{STUB_COMMENT}\n{indent}raise NotImplementedError\n"
    assigned = []
    for node in ast.parse(body).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        assigned += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in assigned]
    return STUB_COMMENT + "\n" + "".join(f"{name} = ...\n" for name in assigned)


def strip_solutions(source: str) -> str:
    """Replace every solution region of a cell's source with a stub that does not raise when run."""
    if source.count(BEGIN) != source.count(END):
        raise BuildError(f"unbalanced solution markers in:\n{source[:200]}")
    return _REGION.sub(_stub, source).rstrip("\n")


def student_edition(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student edition of a source-edition notebook."""
    student = copy.deepcopy(nb)
    student.metadata.pop("widgets", None)  # progress-bar widget state: outputs that the student edition drops
    for cell in student.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        cell.metadata = nbformat.NotebookNode({"tags": list(tags)} if tags else {})
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs = []
            cell.execution_count = None
    return student


def _dumps(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


_SETUP_CALL = re.compile(r"\bcourse_utils\.setup\((\s*\))?")


def _translate_check_results(nb: nbformat.NotebookNode, language: str) -> None:
    """Show the stored check results of a translated edition in its language (the outputs are copied, not rerun)."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            shown = checking.translated_display(output.get("data", {}), language)
            if shown is not None:
                output["data"].update(shown)


def _set_setup_language(nb: nbformat.NotebookNode, language: str) -> None:
    """Make the notebook's ``course_utils.setup(...)`` call choose ``language`` for checker messages."""
    for cell in nb.cells:
        if cell.cell_type == "code" and _SETUP_CALL.search(cell.source):
            cell.source = _SETUP_CALL.sub(
                lambda m: f'course_utils.setup(language="{language}"' + (")" if m.group(1) else ", "), cell.source
            )


def _sync(target: Path, text: str, check: bool, drift: list[str], label: str) -> None:
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        drift.append(f"{label}: {'is out of date' if target.exists() else 'is missing'}")
        if not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")


def translated_editions(
    sources: dict[Path, nbformat.NotebookNode], out_dir: Path, check: bool, translations_dir: Path | None = None
) -> list[str]:
    """Write (or, with ``check``, compare) every language's source and student editions. Returns the drift."""
    drift: list[str] = []
    for language in translate.languages(translations_dir):
        student_dir, source_dir = out_dir / language, out_dir / language / "solutions"
        for path, nb in sources.items():
            label = f"{path.parent.name}/{path.name}"
            catalog = translate.read_catalog(translate.catalog_path(language, path, translations_dir))
            try:
                translated = translate.translated_notebook(nb, catalog, language, label)
            except translate.TranslationError as error:
                if not check:
                    raise BuildError(str(error)) from None
                drift.append(str(error))
                continue
            _set_setup_language(translated, language)
            _translate_check_results(translated, language)
            rel = f"{out_dir.name}/{language}"
            _sync(source_dir / path.name, _dumps(translated), check, drift, f"{rel}/solutions/{path.name}")
            _sync(student_dir / path.name, _dumps(student_edition(translated)), check, drift, f"{rel}/{path.name}")
        for folder in (student_dir, source_dir):
            for orphan in sorted(p for p in folder.glob("*.ipynb") if p.name not in {s.name for s in sources}):
                drift.append(f"{out_dir.name}/{language}/{orphan.relative_to(out_dir / language)}: has no source")
                if not check:
                    orphan.unlink()
    return drift


def build(
    check: bool = False,
    source_dir: Path | None = None,
    out_dir: Path | None = None,
    translations_dir: Path | None = None,
) -> list[str]:
    """Sync the source edition from the package and regenerate the student and translated editions.

    Args:
        check: change nothing; only report what would change.
        source_dir: where the source-edition notebooks are (default: ``notebooks/solutions``).
        out_dir: where the student-edition notebooks go (default: ``notebooks``).
        translations_dir: where the catalogs are (default: ``course_utils/translations``).

    Returns:
        One line per file that changed (or, with ``check``, would change).
    """
    source_dir = source_dir or SOLUTIONS_NOTEBOOKS_DIR
    out_dir = out_dir or NOTEBOOKS_DIR
    drift = []
    sources = sorted(source_dir.glob("*.ipynb"))
    synced = {}
    for path in sources:
        label = f"{path.parent.name}/{path.name}"
        nb = nbformat.read(path, as_version=4)
        synced[path] = nb
        changes = []
        if inject_references(nb, reference_module_name(path), label):
            changes.append(f"{label}: exercise cells differ from {reference_module_name(path)}")
        if ensure_colab_cell(nb):
            changes.append(f"{label}: the Colab install cell is missing or out of date")
        if ensure_nbgrader_metadata(nb, chapter_of(path), label):
            changes.append(f"{label}: nbgrader cell metadata is missing or out of date")
        if changes and not check:
            path.write_text(_dumps(nb), encoding="utf-8")
        drift += changes
        target = out_dir / path.name
        text = _dumps(student_edition(nb))
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            drift.append(f"{out_dir.name}/{path.name}: student edition is out of date")
            if not check:
                target.write_text(text, encoding="utf-8")
    expected = {p.name for p in sources}
    for orphan in sorted(p for p in out_dir.glob("*.ipynb") if p.name not in expected):
        drift.append(f"{out_dir.name}/{orphan.name}: has no source edition")
        if not check:
            orphan.unlink()
    return drift + translated_editions(synced, out_dir, check, translations_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the editions have drifted; change nothing")
    args = parser.parse_args(argv)
    try:
        drift = build(check=args.check)
    except BuildError as error:
        print(f"build failed: {error}", file=sys.stderr)
        return 2
    for line in drift:
        print(("drift: " if args.check else "updated: ") + line)
    if args.check and drift:
        print("Run `python -m course_utils.build` to regenerate.", file=sys.stderr)
        return 1
    if not drift:
        print("Editions are up to date.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
