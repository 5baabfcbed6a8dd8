"""Shared test set-up: checker bugs must never hide, and checks must not wait long on a hanging answer."""

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium"))
"""Debian's Chromium: where it exists, tests/test_browser.py runs the student notebooks in JupyterLab."""
CHROMIUM_ARGS = [  # as root, in a container, on a machine whose network is closed: no background connections
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Set before any course_utils import so every checker runs in strict mode.
os.environ["COURSE_UTILS_STRICT"] = "1"
os.environ.pop("COURSE_UTILS_GRADING", None)
os.environ.pop("NBGRADER_EXECUTION", None)


@pytest.fixture
def short_time_budget(monkeypatch):
    """Cut the checkers' time budget so tests of hanging answers are quick."""
    from course_utils import checking

    monkeypatch.setattr(checking, "TIME_BUDGET_S", 0.5)
