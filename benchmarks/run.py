"""`make bench`: measure the course on this machine and write bench/results.md and bench/results.json.

    python benchmarks/run.py [--skip-test-suite] [--skip-nbgrader] [--out bench]

Per notebook: wall time and peak memory (the kernel's VmHWM) executing the source edition, once on an otherwise
idle machine and once while another process keeps one core busy (a learner's browser, a second kernel, a
shared CI runner). Per exercise: the median time of a check call on the reference answer. The chapter-2 U-Net
training (Dice and time), when that chapter's benchmark exists. Chapter 6's steps to a held-out Dice, pretrained
encoder against from scratch, when that chapter's benchmark exists. The total `make test` time, unless skipped.
Every chapter's whole notebook through nbgrader (generate, autograde, feedback) and course_utils.grade on the same
fixture submissions, with the points each gave (tests/test_nbgrader_course.py with COURSE_NBGRADER_ALL=1), unless
skipped.
Targets (2-core machine): notebook < 60 s and < 1.5 GB, at most 2.5x slower with one core busy, check < 1 s,
test suite < 5 min after installation.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

from course_utils import checking
from course_utils.paths import REPO_DIR, SOLUTIONS_NOTEBOOKS_DIR

NOTEBOOK_SECONDS, NOTEBOOK_BYTES, CHECK_SECONDS, SUITE_SECONDS = 60.0, 1.5e9, 1.0, 300.0
LOAD_SLOWDOWN = 2.5  # how much slower a notebook may run while another process keeps one core busy
_SPIN = "while True:\n    pass\n"  # one core, 100 %, no memory, no I/O


def _peak_rss(pid: int) -> int:
    """Peak resident memory of a live process, from /proc (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def one_core_busy():
    """Keep one CPU core busy with another process for the duration of the block."""
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def bench_notebook(path: Path) -> dict:
    """Wall time and peak kernel memory of one source-edition notebook, idle and with one core busy."""
    idle = _run_notebook(path)
    with one_core_busy():
        loaded = _run_notebook(path)
    return {
        "notebook": path.name,
        "seconds": idle["seconds"],
        "peak_mb": idle["peak_mb"],
        "seconds_one_core_busy": loaded["seconds"],
        "slowdown": round(loaded["seconds"] / max(idle["seconds"], 0.1), 2),
    }


def _run_notebook(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    with client.setup_kernel():
        kernel_pid = client.km.provisioner.process.pid
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        wall = time.perf_counter() - start
        peak = _peak_rss(kernel_pid)
    return {"seconds": round(wall, 1), "peak_mb": round(peak / 1e6)}


def bench_checks(repeats: int = 5) -> list[dict]:
    rows = []
    for ex in checking.registry().values():
        if not ex.checker.__module__.startswith("course_utils.checks."):
            continue
        module = importlib.import_module(ex.checker.__module__.replace(".checks.", ".solutions."))
        namespace = {name: getattr(module, name) for name in ex.names}
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = checking.run(ex.id, namespace)
            times.append(time.perf_counter() - start)
        rows.append(
            {"exercise": ex.id, "median_ms": round(1000 * statistics.median(times), 1), "status": result.status}
        )
    return rows


def bench_unet() -> dict | None:
    script = REPO_DIR / "benchmarks" / "bench_ch02_unet.py"
    if not script.exists():
        return None
    out = subprocess.run([sys.executable, str(script), "--json"], capture_output=True, text=True, cwd=REPO_DIR)
    start = out.stdout.find("{")  # the benchmark prints one indented JSON object
    return json.loads(out.stdout[start:]) if start >= 0 else {"error": out.stderr[-500:]}


def bench_project() -> dict | None:
    """Chapter 6: steps to the held-out Dice threshold, pretrained encoder against from scratch, on three seeds."""
    script = REPO_DIR / "benchmarks" / "bench_ch06_project.py"
    if not script.exists():
        return None
    out = subprocess.run([sys.executable, str(script), "--json"], capture_output=True, text=True, cwd=REPO_DIR)
    start = out.stdout.find("{")
    return json.loads(out.stdout[start:]) if start >= 0 else {"error": out.stderr[-500:]}


def bench_test_suite() -> dict:
    start = time.perf_counter()
    result = subprocess.run(["make", "test"], cwd=REPO_DIR, capture_output=True, text=True)
    summary = [line for line in result.stdout.splitlines() if " passed" in line or " failed" in line]
    return {"seconds": round(time.perf_counter() - start), "exit": result.returncode, "summary": summary[-1:]}


def bench_nbgrader() -> dict:
    """Run tests/test_nbgrader_course.py's all-chapters pipeline; collect its time and the points per fixture."""
    with tempfile.TemporaryDirectory(prefix="bench-nbgrader-") as tmp:
        points = Path(tmp) / "points.jsonl"
        env = {**os.environ, "COURSE_NBGRADER_ALL": "1", "COURSE_NBGRADER_REPORT": str(points), "OMP_NUM_THREADS": "1"}
        test = "tests/test_nbgrader_course.py::test_every_chapter_end_to_end"
        start = time.perf_counter()
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", test]
        result = subprocess.run(command, cwd=REPO_DIR, env=env, capture_output=True, text=True)
        seconds = round(time.perf_counter() - start)
        chapters = [json.loads(line) for line in points.read_text().splitlines()] if points.exists() else []
    summary = [line for line in result.stdout.splitlines() if " passed" in line or " failed" in line]
    return {"seconds": seconds, "exit": result.returncode, "summary": summary[-1:], "chapters": chapters}


def _nbgrader_markdown(run: dict) -> list[str]:
    lines = [
        "",
        f"nbgrader, every chapter end to end: {run['seconds']} s, exit {run['exit']} {' '.join(run['summary'])}.",
    ]
    lines += [
        "",
        "| Chapter | Submission | nbgrader | course_utils.grade | Max | Same per exercise |",
        "|---|---|---:|---:|---:|---|",
    ]
    for chapter in run["chapters"]:
        maximum = sum(chapter["maximum"].values())
        for name, points in chapter["fixtures"].items():
            ours, theirs = points["course_utils.grade"], points["nbgrader"]
            same = "yes" if ours == theirs else "no (documented)" if name == "switches_off_graded_mode" else "**no**"
            totals = f"{sum(theirs.values()):g} | {sum(ours.values()):g} | {maximum:g}"
            lines.append(f"| {chapter['chapter']} | {name} | {totals} | {same} |")
    return lines


def _markdown(report: dict) -> str:
    ok = lambda good: "yes" if good else "**no**"  # noqa: E731
    lines = [
        f"# Benchmark ({report['machine']})",
        "",
        "| Notebook | Wall time (s) | One core busy (s) | Slowdown | Peak memory (MB) | Meets targets |",
    ]
    lines.append("|---|---:|---:|---:|---:|---|")
    for r in report["notebooks"]:
        good = r["seconds"] < NOTEBOOK_SECONDS and r["peak_mb"] * 1e6 < NOTEBOOK_BYTES
        good = good and r["slowdown"] <= LOAD_SLOWDOWN
        row = f"| {r['notebook']} | {r['seconds']} | {r['seconds_one_core_busy']} | {r['slowdown']}x | {r['peak_mb']} |"
        lines.append(f"{row} {ok(good)} |")
    checks = report["checks"]
    slowest = max(checks, key=lambda r: r["median_ms"])
    median = statistics.median(r["median_ms"] for r in checks)
    lines += ["", f"Check calls: {len(checks)} exercises, median {median:.0f} ms, slowest {slowest['exercise']} "]
    lines[-1] += f"{slowest['median_ms']:.0f} ms (target < 1000 ms: {ok(slowest['median_ms'] < 1000 * CHECK_SECONDS)})."
    unet = report.get("unet")
    if unet and "error" not in unet:
        lines += ["", f"Chapter 2 U-Net trained from scratch: mean foreground Dice {unet['mean_foreground_dice_eval']}"]
        lines[-1] += f" after {unet['training_seconds']} s ({unet['steps']} steps; target >= 0.90 within 30 s: "
        lines[-1] += f"{ok(unet['target_met'])})."
    elif unet:
        lines += ["", f"Chapter 2 U-Net benchmark failed: {unet['error']}"]
    project = report.get("project")
    if project and "error" not in project:
        lines += ["", f"Chapter 6 project: steps to held-out Dice {project['threshold']} on seeds {project['seeds']}:"]
        lines[-1] += f" pretrained encoder {project['pretrained_steps']}, from scratch {project['scratch_steps']}"
        lines[-1] += f" ({project['steps'] + 1} = not within {project['steps']} steps; target: pretrained fewer on "
        lines[-1] += f"every seed: {ok(project['target_met'])})."
    elif project:
        lines += ["", f"Chapter 6 project benchmark failed: {project['error']}"]
    if report.get("test_suite"):
        suite = report["test_suite"]
        lines += ["", f"`make test`: {suite['seconds']} s, exit {suite['exit']} {' '.join(suite['summary'])} "]
        lines[-1] += f"(target < {SUITE_SECONDS:.0f} s: {ok(suite['seconds'] < SUITE_SECONDS)})."
    if report.get("nbgrader"):
        lines += _nbgrader_markdown(report["nbgrader"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-test-suite", action="store_true", help="do not time `make test`")
    parser.add_argument("--skip-nbgrader", action="store_true", help="do not run every chapter through nbgrader")
    parser.add_argument("--out", type=Path, default=REPO_DIR / "bench")
    parser.add_argument("--notebooks", default="*", help="glob of the notebooks to time (default: all)")
    args = parser.parse_args(argv)
    os.environ.setdefault("COURSE_UTILS_STRICT", "1")
    machine = f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    report = {"machine": machine, "load_before": os.getloadavg()[0]}
    report["notebooks"] = [bench_notebook(p) for p in sorted(SOLUTIONS_NOTEBOOKS_DIR.glob(f"{args.notebooks}.ipynb"))]
    report["checks"] = bench_checks()
    report["unet"] = bench_unet()
    report["project"] = bench_project()
    report["test_suite"] = None if args.skip_test_suite else bench_test_suite()
    report["nbgrader"] = None if args.skip_nbgrader else bench_nbgrader()
    args.out.mkdir(exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
