"""Tests for benchmarks/run.py (`make bench`): the load generator and the targets it reports against."""

import importlib.util
import time

import psutil
import pytest

from course_utils.paths import REPO_DIR


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", REPO_DIR / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(slowdown: float, seconds: float = 10.0, peak_mb: int = 800) -> dict:
    row = {"notebook": "01_x.ipynb", "seconds": seconds, "peak_mb": peak_mb}
    row |= {"seconds_one_core_busy": round(seconds * slowdown, 1), "slowdown": slowdown}
    return {"machine": "test", "notebooks": [row], "checks": [{"exercise": "ch1.x", "median_ms": 5.0}]}


def test_one_core_busy_runs_a_process_that_burns_cpu_and_stops_it_afterwards(bench):
    me = psutil.Process()
    with bench.one_core_busy():
        (spinner,) = me.children()
        assert spinner.cmdline()[-1] == bench._SPIN
        deadline = time.monotonic() + 20  # on a loaded machine the spinner gets less than its core
        while spinner.cpu_times().user < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spinner.cpu_times().user >= 0.2, "the spinner does not burn CPU"
    assert not spinner.is_running() or spinner.status() == psutil.STATUS_ZOMBIE
    assert me.children() == []


def test_one_core_busy_stops_its_process_when_the_block_raises(bench):
    me = psutil.Process()
    with pytest.raises(RuntimeError), bench.one_core_busy():
        raise RuntimeError("notebook failed")
    assert me.children() == []


@pytest.mark.parametrize(("slowdown", "verdict"), [(1.3, "yes"), (2.5, "yes"), (2.6, "**no**")])
def test_a_notebook_that_slows_more_than_the_limit_under_load_misses_its_targets(bench, slowdown, verdict):
    row = [line for line in bench._markdown(_report(slowdown)).splitlines() if line.startswith("| 01_x")]
    assert row == [f"| 01_x.ipynb | 10.0 | {round(10.0 * slowdown, 1)} | {slowdown}x | 800 | {verdict} |"]


@pytest.mark.parametrize(("seconds", "peak_mb"), [(61.0, 800), (10.0, 1600)])
def test_a_slow_or_big_notebook_misses_its_targets_even_when_steady(bench, seconds, peak_mb):
    text = bench._markdown(_report(1.0, seconds=seconds, peak_mb=peak_mb))
    assert "| **no** |" in text
