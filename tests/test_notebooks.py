"""The two notebook editions: stored outputs, up to date, checks named right, the student edition runs clean.

Strict nbval on the source edition runs from the Makefile (`pytest --nbval ... notebooks/solutions`).
"""

import re
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import CHROMIUM

from course_utils import build, checking, i18n, translate
from course_utils.paths import NOTEBOOKS_DIR, REPO_DIR, SOLUTIONS_NOTEBOOKS_DIR

SOURCES = sorted(SOLUTIONS_NOTEBOOKS_DIR.glob("*.ipynb"))
STUDENTS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
LANGUAGES = translate.languages()
# The translated editions: notebooks/<language>/ (student) and notebooks/<language>/solutions/ (source).
TRANSLATED = [(lang, path) for lang in LANGUAGES for path in SOURCES]
CJK = re.compile(r"[\u4e00-\u9fff]")
CHECK_CALL = re.compile(r"\bcheck_([a-z][a-z0-9_]*)\(")


def _chapter(path: Path) -> int:
    return int(path.name[:2])


def _code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def test_there_is_a_notebook_per_chapter_with_both_editions():
    assert SOURCES, "no source-edition notebooks found"
    assert [p.name for p in SOURCES] == [p.name for p in STUDENTS]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_each_notebook_has_a_reference_module_a_checks_module_and_tests(path):
    module = build.reference_module_name(path).rsplit(".", 1)[1]
    assert (REPO_DIR / "course_utils" / "solutions" / f"{module}.py").exists()
    assert (REPO_DIR / "course_utils" / "checks" / f"{module}.py").exists()
    assert (REPO_DIR / "tests" / f"test_{module}.py").exists()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_source_edition_has_stored_outputs_for_every_code_cell(path):
    # nbval silently skips cells without an execution count: a stripped notebook would check nothing.
    unexecuted = [
        i
        for i, cell in enumerate(_code_cells(path))
        if cell.source.strip() and not cell.execution_count and "nbval-skip" not in cell.metadata.get("tags", [])
    ]
    assert not unexecuted, f"code cells {unexecuted} of {path.name} have not been executed"


def test_student_edition_is_up_to_date_with_the_source_edition_and_the_package():
    assert build.build(check=True) == [], "run `make build` (python -m course_utils.build)"


@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: p.name)
def test_student_edition_has_no_solutions_and_no_outputs(path):
    for cell in _code_cells(path):
        assert build.BEGIN not in cell.source and build.END not in cell.source
        assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_every_check_call_names_a_registered_exercise_of_its_chapter(path):
    ids = {ex.id for ex in checking.chapter_exercises(_chapter(path))}
    called = {f"ch{_chapter(path)}.{name}" for cell in _code_cells(path) for name in CHECK_CALL.findall(cell.source)}
    assert called <= ids, f"{path.name} calls checks of unregistered exercises: {sorted(called - ids)}"
    assert ids <= called, f"{path.name} never checks {sorted(ids - called)}"


def _run_and_collect_check_results(path: Path, tmp_path: Path) -> list[str]:
    """Run a notebook top to bottom in a fresh kernel; the first line of every check result it shows."""
    from nbclient import NotebookClient

    copy = tmp_path / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    # Cells tagged raises-exception may fail (they demonstrate errors); any other error fails this test.
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    results = []
    for cell in nb.cells:
        if cell.cell_type != "code" or not CHECK_CALL.search(cell.source):
            continue
        texts = [out.get("data", {}).get("text/plain", "") + out.get("text", "") for out in cell.outputs]
        results += [line for text in texts for line in text.splitlines() if line.startswith("[")]
    assert results, f"no check results shown in {path.name}"
    return results


@pytest.mark.slow
@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: p.name)
def test_student_edition_runs_top_to_bottom_and_every_check_is_not_attempted(path, tmp_path):
    if CHROMIUM.exists():
        pytest.skip("tests/test_browser.py runs this student edition in JupyterLab instead")
    results = _run_and_collect_check_results(path, tmp_path)
    assert all(line.startswith("[NOT ATTEMPTED]") for line in results), results


@pytest.mark.parametrize(("language", "path"), TRANSLATED, ids=lambda x: getattr(x, "stem", x))
def test_a_translated_edition_has_the_english_cells_ids_code_and_outputs(language, path):
    english = nbformat.read(path, as_version=4)
    translated = nbformat.read(NOTEBOOKS_DIR / language / "solutions" / path.name, as_version=4)
    assert [(c.id, c.cell_type) for c in translated.cells] == [(c.id, c.cell_type) for c in english.cells]
    assert translated.metadata["language"] == language
    for en, tr in zip(english.cells, translated.cells, strict=True):
        if en.cell_type == "code" and "course_utils.setup(" not in en.source:
            assert tr.source == en.source, f"{tr.id}: code is never translated"
        if en.cell_type == "code":
            assert tr.execution_count == en.execution_count and len(tr.outputs) == len(en.outputs), tr.id
            for out_en, out_tr in zip(en.outputs, tr.outputs, strict=True):
                shown = checking.translated_display(out_en.get("data", {}), language)
                if shown is None:
                    assert out_tr == out_en, f"{tr.id}: outputs are copied from the English edition"
                else:
                    assert out_tr["data"] == shown and CJK.search(shown["text/plain"]), f"{tr.id}: check in {language}"
    prose = [
        (en.source, tr.source)
        for en, tr in zip(english.cells, translated.cells, strict=True)
        if en.cell_type == "markdown"
    ]
    assert all(CJK.search(tr) for en, tr in prose if en.strip()), "every prose cell is in the translated language"
    student = nbformat.read(NOTEBOOKS_DIR / language / path.name, as_version=4)
    assert [c.id for c in student.cells] == [c.id for c in english.cells]
    assert all(c.outputs == [] for c in student.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize(("language", "path"), TRANSLATED, ids=lambda x: getattr(x, "stem", x))
def test_a_translated_student_edition_runs_top_to_bottom_and_says_not_attempted_in_its_language(
    language, path, tmp_path
):
    label = i18n.translate_message("NOT ATTEMPTED", language)
    assert label != "NOT ATTEMPTED", f"the {language} catalog has no label for NOT ATTEMPTED"
    results = _run_and_collect_check_results(NOTEBOOKS_DIR / language / path.name, tmp_path)
    assert all(line.startswith(f"[{label}]") for line in results), results
    assert all(CJK.search(line.split(":", 1)[1]) for line in results), f"messages not in {language}: {results}"
