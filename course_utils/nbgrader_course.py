"""Lay out an nbgrader course from the source edition, and read back the points nbgrader gave per exercise.

    python -m course_utils.nbgrader_course COURSE_DIR [--chapter N ...] [--course-id ID]

copies each chapter's source-edition notebooks to ``COURSE_DIR/source/chNN/`` (one nbgrader assignment per
chapter) and writes ``COURSE_DIR/nbgrader_config.py`` unless there is one. Then, in ``COURSE_DIR`` with the
course's environment on ``PATH`` (nbgrader runs ``alembic`` from it)::

    nbgrader generate_assignment ch01   # release/ch01/: the notebooks to hand out
    nbgrader autograde ch01             # submitted/<student>/ch01/ -> autograded/ and gradebook.db
    nbgrader generate_feedback ch01     # feedback/<student>/ch01/*.html

``course_utils.build`` writes nbgrader's cell metadata into the source edition from the exercise registry: exercise
cells are autograded answers, check cells are locked autograded tests worth the exercise's points, with the
exercise id as ``grade_id`` (its dot made a dash: ``ch1-build_mlp``). Under nbgrader a check that does not pass
raises its one-line result (``NBGRADER_EXECUTION`` turns on graded mode), so a test cell earns its points exactly
when the checker passes the learner's answer.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from course_utils import build
from course_utils.paths import SOLUTIONS_NOTEBOOKS_DIR

COURSE_ID = "pytorch-models"
CELL_TIMEOUT_S = 120
"""Seconds nbgrader lets one cell run (its default, 30 s, is tight for the training cells on a slow machine)."""

CONFIG = """\
# nbgrader's configuration for the course "Defining models in PyTorch" (written by course_utils.nbgrader_course).
c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.course_id = "{course_id}"
c.Execute.timeout = {timeout}
"""


def assignment_name(chapter: int) -> str:
    """The nbgrader assignment of a chapter: ``1`` -> ``"ch01"``."""
    return f"ch{chapter:02d}"


def chapter_notebooks(source_dir: Path | None = None) -> dict[int, list[Path]]:
    """The source-edition notebooks of every chapter, by chapter number."""
    chapters: dict[int, list[Path]] = {}
    for path in sorted((source_dir or SOLUTIONS_NOTEBOOKS_DIR).glob("*.ipynb")):
        chapters.setdefault(build.chapter_of(path), []).append(path)
    return chapters


def init(
    course_dir: Path,
    chapters: list[int] | None = None,
    source_dir: Path | None = None,
    course_id: str = COURSE_ID,
    cell_timeout: int = CELL_TIMEOUT_S,
) -> list[Path]:
    """Copy the chapters' source notebooks into ``course_dir/source/chNN/`` and write the nbgrader config.

    Args:
        course_dir: the nbgrader course directory (created if missing).
        chapters: which chapters (default: all).
        source_dir: where the source-edition notebooks are (default: ``notebooks/solutions``).
        course_id: nbgrader's ``CourseDirectory.course_id``.
        cell_timeout: nbgrader's ``Execute.timeout``, in seconds.

    Returns:
        The files written; an existing ``nbgrader_config.py`` is kept as it is.

    Raises:
        ValueError: for a chapter that has no notebooks.
    """
    available = chapter_notebooks(source_dir)
    chapters = sorted(available) if chapters is None else chapters
    missing = [chapter for chapter in chapters if chapter not in available]
    if missing:
        raise ValueError(f"no notebooks for chapter {missing[0]} (there are chapters {sorted(available)})")
    written = []
    for chapter in chapters:
        folder = course_dir / "source" / assignment_name(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        for path in available[chapter]:
            written.append(Path(shutil.copy(path, folder / path.name)))
    config = course_dir / "nbgrader_config.py"
    if not config.exists():
        config.write_text(CONFIG.format(course_id=course_id, timeout=cell_timeout), encoding="utf-8")
        written.append(config)
    return written


def _gradebook(course_dir: Path):
    """nbgrader's Gradebook of a course (nbgrader is imported only here: learners need not install it)."""
    try:
        from nbgrader.api import Gradebook
    except ImportError:
        raise RuntimeError("nbgrader is not installed: pip install -e '.[test]' installs nbgrader==0.9.6") from None
    database = course_dir / "gradebook.db"
    if not database.exists():
        raise FileNotFoundError(f"{database} does not exist: run nbgrader generate_assignment first")
    return Gradebook(f"sqlite:///{database}")


def maximum_points(course_dir: Path, assignment: str) -> dict[str, float]:
    """What each graded cell of an assignment is worth, by exercise id (other grade cells by their ``grade_id``)."""
    with _gradebook(course_dir) as gradebook:
        notebooks = gradebook.find_assignment(assignment).notebooks
        return {build.exercise_id(cell.name): cell.max_score for nb in notebooks for cell in nb.grade_cells}


def exercise_points(course_dir: Path, assignment: str) -> dict[str, dict[str, float]]:
    """The points nbgrader gave each student per exercise (ungraded cells count 0), from ``gradebook.db``."""
    points: dict[str, dict[str, float]] = {}
    with _gradebook(course_dir) as gradebook:
        for submission in gradebook.assignment_submissions(assignment):
            grades = points.setdefault(submission.student.id, {})
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    grades[build.exercise_id(grade.name)] = grade.score or 0.0
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.nbgrader_course", description=__doc__.splitlines()[0])
    parser.add_argument("course_dir", type=Path, help="the nbgrader course directory (created if missing)")
    parser.add_argument("--chapter", type=int, action="append", help="a chapter to include (default: all)")
    parser.add_argument("--course-id", default=COURSE_ID, help=f"nbgrader's course id ({COURSE_ID})")
    args = parser.parse_args(argv)
    try:
        written = init(args.course_dir, args.chapter, course_id=args.course_id)
    except (OSError, ValueError) as error:
        print(f"nbgrader_course: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    assignments = sorted({path.parent.name for path in written if path.suffix == ".ipynb"})
    print(f"Next, in {args.course_dir}: nbgrader generate_assignment {assignments[0] if assignments else 'chNN'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
