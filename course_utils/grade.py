"""Grade a folder of submitted notebooks.

    python -m course_utils.grade SUBMISSIONS_DIR [--chapter N] [--out grades.csv] [--feedback-dir DIR]

Each submission runs in its own process with a fresh kernel (see ``course_utils.grade_worker``), with a per-cell
timeout (interrupt and continue) and a wall-clock limit after which the whole process tree, kernel included, is
killed. The learner's own check cells and outputs are ignored: every registered exercise of the chapter is run
afresh against the kernel's namespace. The result is one CSV row per submission and, with ``--feedback-dir``, one
Markdown file per submission.

Trust model: this resists mistakes and casual tampering (deleted check cells, a patched checker, endless loops,
a crashing kernel). It is not a sandbox: a submission runs with your user's rights, so grade untrusted
notebooks in a container or a throwaway account.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import psutil

from course_utils import checking, i18n

CELL_TIMEOUT_S = 30.0
NOTEBOOK_TIMEOUT_S = 180.0
_IMPORT = re.compile(r"course_utils\.(?:checks|solutions)\.ch(\d\d)_")
_FILE_NAME = re.compile(r"^(\d\d)_")


@dataclasses.dataclass
class Grade:
    """One submission's row: where it came from, how the run ended, and each exercise's result."""

    file: str
    chapter: int | None
    status: str
    results: list[dict] = dataclasses.field(default_factory=list)
    notes: str = ""
    language: str = i18n.ENGLISH

    @property
    def total(self) -> int:
        return sum(r["points"] for r in self.results if r["status"] == "pass")

    @property
    def maximum(self) -> int:
        return sum(ex.points for ex in checking.chapter_exercises(self.chapter)) if self.chapter else 0


def detect_chapter(nb: nbformat.NotebookNode, file_name: str) -> int | None:
    """The chapter a notebook belongs to: from its course_utils imports, else from its file name."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            match = _IMPORT.search(cell.source)
            if match:
                return int(match.group(1))
    match = _FILE_NAME.match(file_name)
    return int(match.group(1)) if match else None


def submission_language(nb: nbformat.NotebookNode, language: str | None = None) -> str:
    """The language of a submission's messages: ``language`` if given, else the edition's (its metadata)."""
    if language is not None:
        return language
    found = nb.metadata.get("language")
    return found if found in i18n.available_languages() else i18n.ENGLISH


def _kill_tree(seen: dict[int, float]) -> None:
    """Kill every process seen in the tree that still runs (matching create time, so no reused PID is hit)."""
    victims = []
    for pid, created in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created:
                victims.append(process)
        except psutil.Error:
            continue
    for process in victims:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=5)


def _watch(process: subprocess.Popen, timeout: float) -> tuple[bool, dict[int, float]]:
    """Wait for ``process``; remember every descendant it starts. Returns (finished in time, processes seen)."""
    root = psutil.Process(process.pid)
    seen = {process.pid: root.create_time()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in root.children(recursive=True):
                seen.setdefault(child.pid, child.create_time())
        except psutil.Error:
            pass
        if process.poll() is not None:
            return True, seen
        time.sleep(0.1)
    return False, seen


def grade_notebook(
    path: Path,
    chapter: int | None = None,
    cell_timeout: float = CELL_TIMEOUT_S,
    timeout: float = NOTEBOOK_TIMEOUT_S,
    language: str | None = None,
) -> Grade:
    """Grade one submitted notebook in its own process and kernel.

    Args:
        path: the submitted ``.ipynb`` file.
        chapter: its chapter; detected from the notebook when None.
        cell_timeout: seconds before a cell is interrupted (the run then continues).
        timeout: seconds before the whole run is killed.
        language: the language of messages and feedback; the edition's own (from its metadata) when None.

    Returns:
        The grade; a submission that cannot be graded gets status ``unreadable``, ``unknown chapter``,
        ``timeout``, ``kernel died`` or ``grading failed`` and no points.
    """
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as error:  # invalid JSON, not a notebook, unreadable file
        return Grade(path.name, chapter, "unreadable", notes=checking.first_line(error))
    chapter = chapter or detect_chapter(nb, path.name)
    language = submission_language(nb, language)
    if not chapter or not checking.chapter_exercises(chapter):
        return Grade(path.name, chapter, "unknown chapter", notes="pass --chapter N", language=language)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_UTILS_", "NBGRADER_"))}
    env["MPLBACKEND"] = "Agg"
    env["COURSE_UTILS_LANGUAGE"] = language  # the kernel's checks report in it
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "course_utils.grade_worker", str(path), str(chapter)]
        command += [str(result_path), str(cell_timeout)]
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            finished, seen = _watch(process, timeout)
        finally:
            if process.poll() is None:
                process.kill()
        _kill_tree(seen)
        process.wait()
        if not finished:
            return Grade(path.name, chapter, "timeout", notes=f"killed after {timeout:g} s", language=language)
        if not result_path.exists():
            notes = f"worker exited with {process.returncode}"
            return Grade(path.name, chapter, "grading failed", notes=notes, language=language)
        payload = json.loads(result_path.read_text(encoding="utf-8"))
    notes = ", ".join(f"cell {i} interrupted after {cell_timeout:g} s" for i in payload["interrupted"])
    return Grade(path.name, chapter, payload["status"], payload["results"], notes, language)


def write_csv(grades: list[Grade], out: Path) -> None:
    """One row per submission: file, chapter, status, points per exercise, total, maximum, notes."""
    chapters = sorted({g.chapter for g in grades if g.chapter and checking.chapter_exercises(g.chapter)})
    ids = [ex.id for chapter in chapters for ex in checking.chapter_exercises(chapter)]
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "chapter", "status", *ids, "total", "max", "notes"])
        for grade in grades:
            earned = {r["id"]: (r["points"] if r["status"] == "pass" else 0) for r in grade.results}
            chapter_ids = {ex.id for ex in checking.chapter_exercises(grade.chapter)} if grade.chapter else set()
            row = [earned.get(i, 0) if i in chapter_ids else "" for i in ids]
            writer.writerow(
                [grade.file, grade.chapter or "", grade.status, *row, grade.total, grade.maximum, grade.notes]
            )


_WHY = {
    "timeout": "Your notebook did not finish in time, so it could not be graded. Look for a loop that never ends.",
    "kernel died": "The Python kernel stopped while running your notebook (a crash or os._exit), so it could not "
    "be graded.",
    "unreadable": "This file is not a readable notebook (it may be damaged): re-download it from JupyterLab.",
    "unknown chapter": "The chapter of this notebook could not be found.",
    "grading failed": "The grader could not finish on this notebook; please tell your instructor.",
}
_LABEL = {
    "pass": "Check passed.",
    "fail": "Check failed.",
    "not_attempted": "Not attempted.",
    "checker_error": "Checker error.",
}


def feedback_markdown(grade: Grade) -> str:
    """A short Markdown page for the learner, in the submission's language: the total, then each result and hint."""

    def t(text: str) -> str:  # the results come translated from the kernel; the page's own sentences here
        return i18n.translate_message(text, grade.language) or ""

    lines = [t(f"# Feedback on {grade.file}"), ""]
    if grade.status != "ok":
        lines += [t(f"**Status: {grade.status}.**") + " " + t(_WHY.get(grade.status, "")), ""]
    if grade.chapter:
        lines += [t(f"Chapter {grade.chapter}: **{grade.total} of {grade.maximum} points**."), ""]
    if grade.notes:
        lines += [t(f"Note: {grade.notes}."), ""]
    for r in grade.results:
        earned = r["points"] if r["status"] == "pass" else 0
        lines += [
            f"## {r['id']}: {r['title']} ({earned}/{r['points']})",
            "",
            f"{t(_LABEL[r['status']])} {r['message']}",
        ]
        if r.get("hint") and r["status"] != "pass":
            lines += ["", t(f"Hint: {r['hint']}")]
        lines.append("")
    return "\n".join(i18n.tidy(line, grade.language) for line in lines)


def grade_directory(
    submissions: Path,
    chapter: int | None = None,
    jobs: int = 1,
    cell_timeout: float = CELL_TIMEOUT_S,
    timeout: float = NOTEBOOK_TIMEOUT_S,
    progress: bool = True,
    language: str | None = None,
) -> list[Grade]:
    """Grade every ``*.ipynb`` in ``submissions`` (sorted by name), ``jobs`` at a time."""
    from tqdm.auto import tqdm

    paths = sorted(p for p in submissions.glob("*.ipynb") if not p.name.startswith("."))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = pool.map(lambda p: grade_notebook(p, chapter, cell_timeout, timeout, language), paths)
        return list(tqdm(futures, total=len(paths), desc="grading", unit="notebook", disable=not progress))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.grade", description=__doc__.splitlines()[0])
    parser.add_argument("submissions", type=Path, help="folder of submitted .ipynb files")
    parser.add_argument("--chapter", type=int, help="chapter number (detected from each notebook if omitted)")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV file to write (grades.csv)")
    parser.add_argument("--feedback-dir", type=Path, help="write one Markdown feedback file per submission here")
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default 1)")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S, help="seconds per cell (30)")
    parser.add_argument("--timeout", type=float, default=NOTEBOOK_TIMEOUT_S, help="seconds per notebook (180)")
    parser.add_argument(
        "--language", choices=i18n.available_languages(), help="messages and feedback (default: each edition's own)"
    )
    args = parser.parse_args(argv)
    if not args.submissions.is_dir():
        print(f"grade: {args.submissions} is not a folder", file=sys.stderr)
        return 2
    if args.chapter is not None and not checking.chapter_exercises(args.chapter):
        print(f"grade: chapter {args.chapter} has no exercises", file=sys.stderr)
        return 2
    grades = grade_directory(
        args.submissions, args.chapter, args.jobs, args.cell_timeout, args.timeout, language=args.language
    )
    write_csv(grades, args.out)
    if args.feedback_dir:
        args.feedback_dir.mkdir(parents=True, exist_ok=True)
        for grade in grades:
            (args.feedback_dir / f"{Path(grade.file).stem}.md").write_text(feedback_markdown(grade), encoding="utf-8")
    print(f"Graded {len(grades)} notebooks -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
