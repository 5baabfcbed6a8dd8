"""Where the course's files are, resolved from this package and never from the working directory."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = REPO_DIR / "data"
NOTEBOOKS_DIR = REPO_DIR / "notebooks"
SOLUTIONS_NOTEBOOKS_DIR = NOTEBOOKS_DIR / "solutions"
