"""nbgrader end to end: generate each chapter's assignment, autograde fixture submissions, write the feedback, and
give the same points per exercise as course_utils.grade.

`make test` generates every chapter and runs the whole pipeline on chapter 1's import, exercise and check cells
(tests/submissions.py builds the submissions, as for tests/test_grade.py). With COURSE_NBGRADER_ALL=1 (`make
bench`) the pipeline runs every chapter's whole notebook.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from submissions import CH1_WRONG_BUILD_MLP, Answers, after_imports, trimmed, with_cell

from course_utils import build, checking, grade, nbgrader_course

CHAPTERS = nbgrader_course.chapter_notebooks()
NBGRADER_ALL = os.environ.get("COURSE_NBGRADER_ALL") == "1"
REPORT = os.environ.get("COURSE_NBGRADER_REPORT")  # make bench: where the all-chapters run writes its points
# nbgrader takes any line that contains "BEGIN SOLUTION", in any cell, for the start of a solution region, so a
# Markdown cell that quotes the markers stops generate_assignment ("Solution region detected in a non-solution
# cell"): test_no_prose_cell_quotes_nbgrader_solution_markers keeps them out of the prose.
NBGRADER_DELIMITERS = ("BEGIN SOLUTION", "END SOLUTION")
SWITCH_OFF_GRADED_MODE = "import course_utils.checking\n\ncourse_utils.checking.grading_mode = lambda: False"


def _chapter_param(chapter: int):
    return pytest.param(chapter, id=f"ch{chapter}")


def _env() -> dict[str, str]:
    # nbgrader runs `alembic` from PATH: the course environment's own comes first.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def nbgrader(course: Path, *args: str) -> str:
    """Run one nbgrader command in ``course``; fail the test with its output when it fails."""
    command = [sys.executable, "-m", "nbgrader", *args]
    result = subprocess.run(command, cwd=course, env=_env(), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}"
    return result.stdout + result.stderr


@dataclasses.dataclass
class Fixture:
    """One learner: the points each exercise should earn, and whether course_utils.grade should agree."""

    expected: dict[str, int]
    statuses: dict[str, str]  # what course_utils.grade should report per exercise
    honest: bool = True


@dataclasses.dataclass
class Pipeline:
    chapter: int
    fixtures: dict[str, Fixture]
    maximum: dict[str, float]
    nbgrader: dict[str, dict[str, float]]  # student -> exercise id -> points
    grader: dict[str, dict[str, dict]]  # student -> exercise id -> course_utils.grade's result
    feedback: dict[str, str]  # student -> the text of nbgrader's feedback pages
    seconds: float


def _fixtures(release: nbformat.NotebookNode, answers: Answers, chapter: int) -> dict[str, tuple]:
    """(notebook, Fixture) per learner, from nbgrader's release of one notebook."""
    out = {}
    for name, (right, wrong) in answers.plans().items():
        statuses = {
            ex: "pass" if ex in right else "fail" if ex in wrong else "not_attempted" for ex in answers.exercises
        }
        out[name] = (answers.submission(release, right, wrong), Fixture(answers.expected(right), statuses))
    if chapter == 1 and "ch1.build_mlp" in answers.exercises:  # a real mistake, from test_grade.py
        nb = answers.submission(release, right=answers.exercises)
        (cell_id,) = answers.cells["ch1.build_mlp"]
        next(c for c in nb.cells if c.id == cell_id).source = CH1_WRONG_BUILD_MLP
        right = set(answers.exercises) - {"ch1.build_mlp"}
        statuses = {ex: "pass" if ex in right else "fail" for ex in answers.exercises}
        out["wrong_build_mlp"] = (nb, Fixture(answers.expected(right), statuses))
        # nbgrader runs its test cells in the learner's kernel: a notebook that switches graded mode off passes
        # every check cell. course_utils.grade checks afresh with checkers imported from disk, so it is not fooled.
        cheat = with_cell(release, SWITCH_OFF_GRADED_MODE, after_imports(release))
        fooled = answers.expected(set(answers.exercises))
        out["switches_off_graded_mode"] = (cheat, Fixture(fooled, dict.fromkeys(answers.exercises, ""), honest=False))
    return out


def run_pipeline(course: Path, chapter: int, source_dir: Path) -> Pipeline:
    """Lay out the course, generate the chapter's assignment, autograde the fixtures, write feedback, then grade
    the same submissions with course_utils.grade."""
    start = time.perf_counter()
    assignment = nbgrader_course.assignment_name(chapter)
    nbgrader_course.init(course, [chapter], source_dir=source_dir, cell_timeout=300)
    nbgrader(course, "generate_assignment", assignment)
    fixtures: dict[str, Fixture] = {}
    submitted = []
    for release_path in sorted((course / "release" / assignment).glob("*.ipynb")):
        answers = Answers.of(nbformat.read(course / "source" / assignment / release_path.name, as_version=4), chapter)
        release = nbformat.read(release_path, as_version=4)
        for student, (nb, fixture) in _fixtures(release, answers, chapter).items():
            path = course / "submitted" / student / assignment / release_path.name
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, path)
            submitted.append((student, path, set(answers.exercises)))
            if student in fixtures:  # a chapter in several notebooks: one learner hands in all of them
                previous = fixtures[student]
                fixture = Fixture(previous.expected | fixture.expected, previous.statuses | fixture.statuses)
            fixtures[student] = fixture
    nbgrader(course, "autograde", assignment)
    nbgrader(course, "generate_feedback", assignment)
    feedback = {
        student: "\n".join(
            html.unescape(p.read_text(encoding="utf-8")) for p in (course / "feedback" / student).rglob("*.html")
        )
        for student in fixtures
    }

    def grade_one(item):
        student, path, exercises = item
        result = grade.grade_notebook(path, chapter, cell_timeout=300, timeout=1200)
        assert result.status == "ok", f"course_utils.grade on {student}: {result.status} {result.notes}"
        return student, {r["id"]: r for r in result.results if r["id"] in exercises}

    grader: dict[str, dict[str, dict]] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for student, results in pool.map(grade_one, submitted):
            grader.setdefault(student, {}).update(results)
    return Pipeline(
        chapter,
        fixtures,
        nbgrader_course.maximum_points(course, assignment),
        nbgrader_course.exercise_points(course, assignment),
        grader,
        feedback,
        time.perf_counter() - start,
    )


def _grader_points(results: dict[str, dict]) -> dict[str, int]:
    return {ex: r["points"] if r["status"] == "pass" else 0 for ex, r in results.items()}


def _one_line(result: dict) -> str:
    """How a check that does not pass renders under nbgrader: CheckNotPassed's one line."""
    fields = {k: result[k] for k in ("title", "status", "message", "hint")}
    return str(checking.CheckNotPassed(checking.CheckResult(result["id"], **fields)))


def _assert_pipeline(run: Pipeline) -> None:
    """Everything the issue asks of the pipeline, on one chapter's run."""
    registered = {ex.id: ex.points for ex in checking.chapter_exercises(run.chapter)}
    assert run.maximum == registered, "nbgrader's points per exercise must be the registry's"
    for student, fixture in run.fixtures.items():
        assert run.nbgrader[student] == fixture.expected, f"nbgrader's points for {student}"
        if not fixture.honest:
            continue
        assert _grader_points(run.grader[student]) == fixture.expected, f"course_utils.grade's points for {student}"
        statuses = {ex: r["status"] for ex, r in run.grader[student].items()}
        assert statuses == fixture.statuses, f"course_utils.grade's statuses for {student}"
        for result in run.grader[student].values():
            line = result["message"] if result["status"] == "pass" else _one_line(result)
            assert line in run.feedback[student], f"{student}'s feedback lacks: {line}"


# --- the course layout -------------------------------------------------------------------------------------------


def test_init_copies_every_chapter_into_its_assignment_and_writes_the_config_once(tmp_path):
    written = nbgrader_course.init(tmp_path)
    for chapter, paths in CHAPTERS.items():
        for path in paths:
            copy = tmp_path / "source" / f"ch{chapter:02d}" / path.name
            assert copy in written and copy.read_bytes() == path.read_bytes()
    config = tmp_path / "nbgrader_config.py"
    from traitlets.config import Config

    loaded = Config()
    exec(compile(config.read_text(), str(config), "exec"), {"get_config": lambda: loaded})
    assert loaded.CourseDirectory.course_id == nbgrader_course.COURSE_ID
    assert loaded.Execute.timeout == nbgrader_course.CELL_TIMEOUT_S
    config.write_text("# the instructor's own\n")
    assert config not in nbgrader_course.init(tmp_path, [1])
    assert config.read_text() == "# the instructor's own\n"


def test_the_command_line_lays_out_the_chosen_chapters_and_refuses_unknown_ones(tmp_path, capsys):
    assert nbgrader_course.main([str(tmp_path), "--chapter", "2", "--course-id", "demo"]) == 0
    assert [p.name for p in (tmp_path / "source").iterdir()] == ["ch02"]
    assert 'course_id = "demo"' in (tmp_path / "nbgrader_config.py").read_text()
    assert "nbgrader generate_assignment ch02" in capsys.readouterr().out
    assert nbgrader_course.main([str(tmp_path), "--chapter", "42"]) == 2
    assert "no notebooks for chapter 42" in capsys.readouterr().err


def test_points_need_a_gradebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="run nbgrader generate_assignment first"):
        nbgrader_course.exercise_points(tmp_path, "ch01")


# --- every chapter: the assignment generates, and its points are the registry's ----------------------------------


@pytest.fixture(scope="module")
def full_course(tmp_path_factory) -> Path:
    course = tmp_path_factory.mktemp("course")
    nbgrader_course.init(course)
    return course


@pytest.mark.slow
@pytest.mark.parametrize("chapter", [_chapter_param(c) for c in CHAPTERS])
def test_generate_assignment_succeeds_and_each_check_cell_is_worth_its_exercise(full_course, chapter):
    assignment = nbgrader_course.assignment_name(chapter)
    nbgrader(full_course, "generate_assignment", assignment)
    expected = {ex.id: float(ex.points) for ex in checking.chapter_exercises(chapter)}
    assert nbgrader_course.maximum_points(full_course, assignment) == expected
    for source_path in CHAPTERS[chapter]:
        source = nbformat.read(source_path, as_version=4)
        release = nbformat.read(full_course / "release" / assignment / source_path.name, as_version=4)
        assert [c.get("id") for c in release.cells] == [c.get("id") for c in source.cells]
        for ours, theirs in zip(source.cells, release.cells, strict=True):
            meta = ours.metadata.get("nbgrader", {})
            if meta.get("grade"):  # a check cell: handed out as it is, and locked
                assert theirs.source == ours.source and theirs.metadata["editable"] is False
            elif meta.get("solution"):
                assert build.BEGIN not in theirs.source and "raise NotImplementedError()" in theirs.source


@pytest.mark.parametrize(
    "path",
    [p for paths in CHAPTERS.values() for p in paths],
    ids=lambda p: p.name,
)
def test_no_prose_cell_quotes_nbgrader_solution_markers(path):
    nb = nbformat.read(path, as_version=4)
    quoting = [
        c.get("id") for c in nb.cells if c.cell_type != "code" and any(d in c.source for d in NBGRADER_DELIMITERS)
    ]
    assert not quoting, f"{path.name}: cells {quoting} quote {NBGRADER_DELIMITERS}; write 'the solution markers'"


# --- chapter 1's exercises, end to end (make test) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def chapter_1(tmp_path_factory) -> Pipeline:
    source_dir = tmp_path_factory.mktemp("trimmed")
    for path in CHAPTERS[1]:
        nbformat.write(trimmed(nbformat.read(path, as_version=4)), source_dir / path.name)
    return run_pipeline(tmp_path_factory.mktemp("course"), 1, source_dir)


@pytest.mark.slow
def test_a_solved_submission_gets_full_marks_and_the_maximum_is_the_registry_total(chapter_1):
    total = sum(ex.points for ex in checking.chapter_exercises(1))
    assert sum(chapter_1.nbgrader["solved"].values()) == total == sum(chapter_1.maximum.values())


@pytest.mark.slow
def test_an_untouched_release_gets_zero(chapter_1):
    assert chapter_1.nbgrader["untouched"] and set(chapter_1.nbgrader["untouched"].values()) == {0}


@pytest.mark.slow
@pytest.mark.parametrize("student", ["right_then_wrong", "mixed", "wrong_build_mlp"])
def test_a_partly_wrong_submission_gets_exactly_the_points_of_the_exercises_it_got_right(chapter_1, student):
    expected = chapter_1.fixtures[student].expected
    assert 0 < sum(expected.values()) < sum(chapter_1.maximum.values()), "the fixture must be partly right"
    assert chapter_1.nbgrader[student] == expected


@pytest.mark.slow
def test_course_utils_grade_gives_the_same_points_and_the_feedback_shows_each_message_and_hint(chapter_1):
    _assert_pipeline(chapter_1)


@pytest.mark.slow
def test_a_notebook_that_switches_off_graded_mode_fools_nbgrader_but_not_course_utils_grade(chapter_1):
    full = sum(chapter_1.maximum.values())
    assert sum(chapter_1.nbgrader["switches_off_graded_mode"].values()) == full
    assert sum(_grader_points(chapter_1.grader["switches_off_graded_mode"]).values()) == 0


# --- every chapter's whole notebook, end to end (make bench) -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not NBGRADER_ALL, reason="runs every whole chapter under nbgrader: COURSE_NBGRADER_ALL=1")
@pytest.mark.parametrize("chapter", [_chapter_param(c) for c in CHAPTERS])
def test_every_chapter_end_to_end(tmp_path, chapter):
    run = run_pipeline(tmp_path / "course", chapter, CHAPTERS[chapter][0].parent)
    if REPORT:
        rows = {
            s: {"nbgrader": run.nbgrader[s], "course_utils.grade": _grader_points(run.grader[s])} for s in run.fixtures
        }
        entry = {"chapter": chapter, "seconds": round(run.seconds, 1), "maximum": run.maximum, "fixtures": rows}
        with open(REPORT, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    _assert_pipeline(run)
