"""Run one submitted notebook in a fresh kernel, then grade its namespace (spawned by course_utils.grade).

    python -m course_utils.grade_worker NOTEBOOK CHAPTER RESULT_JSON CELL_TIMEOUT

Every code cell runs with a per-cell timeout (interrupt and continue; errors do not stop the run). Then a
final cell drops every ``course_utils`` module the learner may have imported or patched except the reference
solutions (``course_utils.solutions.*``, whose classes the learner's answers are built on), imports the checkers
afresh from disk, and runs every registered exercise of the chapter against the kernel's namespace. The learner's
own check cells and stored outputs play no part. The result goes to RESULT_JSON.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

_GRADING_CELL = """\
def __course_utils_grade(chapter, out_path):
    import builtins, json, sys
    # Fresh checkers, but the same reference modules: answers are built on the reference classes the notebook
    # imported (isinstance(m, ResidualBlock)), and a second copy of those classes would fail correct answers.
    for name in [n for n in sys.modules if n.startswith("course_utils.") and n.split(".")[1] != "solutions"]:
        del sys.modules[name]
    from course_utils import checking
    results = []
    for ex in checking.chapter_exercises(chapter):
        r = checking.run(ex.id, globals())
        results.append({"id": ex.id, "title": r.title, "points": ex.points, "status": r.status,
                        "message": r.message, "hint": r.hint})
    with builtins.open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f)
__course_utils_grade(%d, %r)
"""


def run_submission(notebook: Path, chapter: int, result_path: Path, cell_timeout: float) -> dict:
    """Execute ``notebook`` and grade it; returns what is also written to ``result_path``."""
    nb = nbformat.read(notebook, as_version=4)
    interrupted = []
    with tempfile.TemporaryDirectory(prefix="grade-") as workdir:
        shutil.copy(notebook, Path(workdir) / "submission.ipynb")
        client = NotebookClient(
            nb,
            timeout=cell_timeout,
            interrupt_on_timeout=True,
            allow_errors=True,
            kernel_name="python3",
            resources={"metadata": {"path": workdir}},
        )
        scores_path = Path(workdir) / "scores.json"
        try:
            with client.setup_kernel():
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type != "code":
                        continue
                    start = time.monotonic()
                    client.execute_cell(cell, index)
                    if time.monotonic() - start >= cell_timeout:
                        interrupted.append(index)
                grading = nbformat.v4.new_code_cell(_GRADING_CELL % (chapter, str(scores_path)))
                nb.cells.append(grading)
                client.execute_cell(grading, len(nb.cells) - 1)
        except DeadKernelError:
            return _write(result_path, {"status": "kernel died", "interrupted": interrupted, "results": []})
        if not scores_path.exists():
            return _write(result_path, {"status": "grading failed", "interrupted": interrupted, "results": []})
        results = json.loads(scores_path.read_text(encoding="utf-8"))
    return _write(result_path, {"status": "ok", "interrupted": interrupted, "results": results})


def _write(path: Path, payload: dict) -> dict:
    path.write_text(json.dumps(payload), encoding="utf-8")
    return payload


def main(argv: list[str] | None = None) -> int:
    notebook, chapter, result_path, cell_timeout = argv if argv is not None else sys.argv[1:]
    run_submission(Path(notebook), int(chapter), Path(result_path), float(cell_timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
