"""The grader on fixture submissions built from the chapter 1 student edition (tests/submissions.py).

Fixtures keep the student edition's import, exercise and check cells (the explanatory demos only cost time) and
then act like learners: solve everything, leave it untouched, answer wrong, loop forever, ignore interrupts, kill
the kernel, damage the file, delete the check cells, or patch the checker.
"""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import psutil
import pytest
from submissions import (
    CH1_WRONG_BUILD_MLP,
    Answers,
    after_imports,
    is_check,
    source_edition,
    student_edition,
    with_cell,
)

from course_utils import checking, grade, translate
from course_utils.paths import NOTEBOOKS_DIR

NAME = "01_model_definition.ipynb"
FULL_MARKS = sum(ex.points for ex in checking.chapter_exercises(1))
ANSWERS = Answers.of(source_edition(NAME), 1)
PATCH_CHECKER = """\
import course_utils.checking as checking
from course_utils.checks import ch01_model_definition as checks
checking.run = lambda exercise_id, namespace: checking.CheckResult(exercise_id, "", "pass", "patched")
checking.chapter_exercises = lambda chapter: []
checks.check_build_mlp = lambda *args: None
"""


def _student() -> nbformat.NotebookNode:
    """The student edition with only its import, exercise and check cells."""
    return student_edition(NAME)


def _solved() -> nbformat.NotebookNode:
    return ANSWERS.submission(_student(), right=ANSWERS.exercises)


def _wrong() -> nbformat.NotebookNode:
    nb = _solved()
    (cell_id,) = ANSWERS.cells["ch1.build_mlp"]
    next(c for c in nb.cells if c.id == cell_id).source = CH1_WRONG_BUILD_MLP
    return nb


@pytest.fixture(scope="module")
def submissions(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("submissions")
    solved, student = _solved(), _student()
    fixtures = {
        "complete": solved,
        "untouched": student,
        "wrong": _wrong(),
        "endless_loop": with_cell(solved, "while True:\n    pass", after_imports(solved)),
        "kernel_dies": with_cell(solved, "import os\n\nos._exit(1)", after_imports(solved)),
        "no_check_cells": nbformat.v4.new_notebook(
            cells=[c for c in solved.cells if not is_check(c)], metadata=solved.metadata
        ),
        "patched_checker": with_cell(student, PATCH_CHECKER, len(student.cells)),
    }
    if (NOTEBOOKS_DIR / "zh" / NAME).exists():  # the Chinese edition: same cells, its own language
        fixtures["zh_untouched"] = student_edition(f"zh/{NAME}")
        zh_wrong = ANSWERS.submission(student_edition(f"zh/{NAME}"), right=ANSWERS.exercises)
        (cell_id,) = ANSWERS.cells["ch1.build_mlp"]
        next(c for c in zh_wrong.cells if c.id == cell_id).source = CH1_WRONG_BUILD_MLP
        fixtures["zh_wrong"] = zh_wrong
    for name, nb in fixtures.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
    (folder / "invalid_json.ipynb").write_text('{"cells": [', encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def graded(submissions, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("out")
    argv = [str(submissions), "--out", str(out / "grades.csv"), "--feedback-dir", str(out / "feedback")]
    argv += ["--chapter", "1", "--jobs", "2", "--cell-timeout", "15", "--timeout", "90"]
    assert grade.main(argv) == 0
    with (out / "grades.csv").open(encoding="utf-8") as f:
        rows = {Path(row["file"]).stem: row for row in csv.DictReader(f)}
    for name, row in rows.items():
        row["feedback"] = (out / "feedback" / f"{name}.md").read_text(encoding="utf-8")
    return rows


def _points(row: dict) -> int:
    return int(row["total"])


@pytest.mark.slow
def test_a_complete_submission_gets_full_marks(graded):
    row = graded["complete"]
    assert (row["status"], _points(row), int(row["max"])) == ("ok", FULL_MARKS, FULL_MARKS)
    assert all(row[ex.id] == str(ex.points) for ex in checking.chapter_exercises(1))


@pytest.mark.slow
def test_an_untouched_submission_gets_zero_and_not_attempted_feedback(graded):
    row = graded["untouched"]
    assert (row["status"], _points(row)) == ("ok", 0)
    assert row["feedback"].count("Not attempted.") == len(checking.chapter_exercises(1))


@pytest.mark.slow
def test_a_chinese_submission_is_graded_alike_with_chinese_feedback(graded):
    if "zh_untouched" not in graded:
        pytest.skip("no Chinese edition")
    untouched, wrong, english = graded["zh_untouched"], graded["zh_wrong"], graded["wrong"]
    assert (untouched["status"], _points(untouched)) == ("ok", 0)
    assert untouched["feedback"].count("未作答。") == len(checking.chapter_exercises(1))
    assert (wrong["status"], _points(wrong)) == ("ok", _points(english)), "the same answers get the same points"
    build_mlp = wrong["feedback"].split("## ch1.build_mlp", 1)[1].split("\n## ", 1)[0]
    assert "检查未通过" in build_mlp and re.search(r"[\u4e00-\u9fff]", build_mlp.split("检查未通过", 1)[1])


@pytest.mark.slow
def test_a_wrong_answer_loses_its_points_and_gets_the_checkers_message(graded):
    row = graded["wrong"]
    assert row["status"] == "ok" and row["ch1.build_mlp"] == "0"
    assert _points(row) == FULL_MARKS - checking.registry()["ch1.build_mlp"].points
    assert "Check failed. The layers of build_mlp([784, 256, 10]) have no names" in row["feedback"]
    assert "Hint: Pass an OrderedDict" in row["feedback"]


@pytest.mark.slow
def test_an_endless_loop_is_interrupted_and_the_rest_is_still_graded(graded):
    row = graded["endless_loop"]
    assert (row["status"], _points(row)) == ("ok", FULL_MARKS)
    assert "interrupted after 15 s" in row["notes"]


@pytest.mark.slow
def test_a_kernel_that_dies_is_reported(graded):
    row = graded["kernel_dies"]
    assert (row["status"], _points(row)) == ("kernel died", 0)
    assert "kernel stopped" in row["feedback"]


@pytest.mark.slow
def test_invalid_json_is_unreadable(graded):
    row = graded["invalid_json"]
    assert (row["status"], _points(row)) == ("unreadable", 0)


@pytest.mark.slow
def test_deleting_the_check_cells_changes_nothing(graded):
    assert (graded["no_check_cells"]["status"], _points(graded["no_check_cells"])) == ("ok", FULL_MARKS)


@pytest.mark.slow
def test_a_monkey_patched_checker_changes_nothing(graded):
    row = graded["patched_checker"]
    assert (row["status"], _points(row)) == ("ok", 0)


@pytest.mark.slow
def test_a_loop_that_ignores_interrupts_is_killed_with_its_kernel(tmp_path):
    stubborn = (
        "import time\n\nwhile True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass"
    )
    path = tmp_path / "stubborn.ipynb"
    nbformat.write(with_cell(_student(), stubborn, after_imports(_student())), path)
    result = grade.grade_notebook(path, cell_timeout=3, timeout=10)
    assert (result.status, result.total) == ("timeout", 0)
    assert result.notes == "killed after 10 s"


@pytest.mark.slow
def test_no_process_is_left_behind(graded):
    assert psutil.Process().children(recursive=True) == []


def test_the_chapter_is_detected_from_imports_then_from_the_file_name():
    assert grade.detect_chapter(_student(), "alice.ipynb") == 1
    empty = nbformat.v4.new_notebook()
    assert grade.detect_chapter(empty, "03_model_modification.ipynb") == 3
    assert grade.detect_chapter(empty, "alice.ipynb") is None


def test_a_notebook_of_unknown_chapter_is_reported_without_running(tmp_path):
    path = tmp_path / "alice.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), path)
    assert grade.grade_notebook(path).status == "unknown chapter"


def test_the_grader_fails_only_for_its_own_errors(tmp_path, capsys):
    assert grade.main([str(tmp_path / "missing")]) == 2
    assert grade.main([str(tmp_path), "--chapter", "42"]) == 2
    assert grade.main([str(tmp_path), "--out", str(tmp_path / "g.csv")]) == 0
    assert (tmp_path / "g.csv").read_text().startswith("file,chapter,status")


@pytest.mark.slow
def test_nbval_lax_in_graded_mode_fails_exactly_at_the_exercises_that_do_not_pass(tmp_path):
    path = tmp_path / "wrong.ipynb"
    nbformat.write(_wrong(), path)
    env = {**os.environ, "COURSE_UTILS_GRADING": "1", "COURSE_UTILS_STRICT": "0"}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env"]
    result = subprocess.run([*command, str(path)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "1 failed" in result.stdout, result.stdout[-2000:]
    assert "[FAIL] ch1.build_mlp" in result.stdout
    assert "course_utils/checking.py" not in result.stdout, "graded mode must not show a traceback"


def test_the_language_comes_from_the_edition_unless_it_is_given():
    nb = nbformat.v4.new_notebook()
    assert grade.submission_language(nb) == "en"
    nb.metadata["language"] = "zh"
    assert grade.submission_language(nb) == "zh"
    assert grade.submission_language(nb, "en") == "en"
    nb.metadata["language"] = "klingon"
    assert grade.submission_language(nb) == "en", "an unknown language in the metadata falls back to English"


def test_feedback_pages_are_written_in_the_submissions_language(tmp_path, monkeypatch):
    import polib

    from course_utils import i18n

    (tmp_path / "zh").mkdir()
    po = polib.POFile()
    for english, chinese in [
        ("# Feedback on {grade.file}", "# {grade.file} 的反馈"),
        (
            "Chapter {grade.chapter}: **{grade.total} of {grade.maximum} points**.",
            "第 {grade.chapter} 章：**{grade.total}/{grade.maximum} 分**。",
        ),
        ("Check failed.", "检查未通过。"),
        ("Hint: {r['hint']}", "提示：{r['hint']}"),
    ]:
        po.append(polib.POEntry(msgid=english, msgstr=chinese))
    po.save(str(tmp_path / "zh" / translate.CHECKS_CATALOG))
    monkeypatch.setattr(translate, "TRANSLATIONS_DIR", tmp_path)
    i18n._messages.cache_clear()
    i18n._compiled.cache_clear()
    result = {"id": "ch1.build_mlp", "title": "构建 MLP", "points": 2, "status": "fail", "message": "层没有名字。"}
    page = grade.feedback_markdown(
        grade.Grade("alice.ipynb", 1, "ok", [result | {"hint": "用 OrderedDict。"}], language="zh")
    )
    i18n._compiled.cache_clear()
    assert page.splitlines()[:2] == ["# alice.ipynb 的反馈", ""]
    assert f"第 1 章：**0/{FULL_MARKS} 分**。" in page
    assert "检查未通过。层没有名字。" in page and "提示：用 OrderedDict。" in page
    english = grade.feedback_markdown(grade.Grade("bob.ipynb", 1, "ok", [result | {"hint": "Use an OrderedDict."}]))
    assert "# Feedback on bob.ipynb" in english and "Hint: Use an OrderedDict." in english


@pytest.mark.slow
def test_answers_built_on_the_reference_classes_still_pass_when_the_checkers_are_imported_afresh(tmp_path):
    # Chapter 5's zero_init_residual looks for the ResidualBlock class the notebook imported; the fresh checkers
    # must build their test models from that same class, or the reference answer fails.
    name = "05_initialization.ipynb"
    answers = Answers.of(source_edition(name), 5)
    path = tmp_path / name
    nbformat.write(answers.submission(student_edition(name), right=answers.exercises), path)
    result = grade.grade_notebook(path, 5, cell_timeout=60, timeout=300)
    assert (result.status, result.total) == ("ok", result.maximum), result.results
