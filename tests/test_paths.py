"""Tests for course_utils.paths: locations come from the package, never from the working directory."""

import os
import subprocess
import sys

from course_utils import paths


def test_data_dir_is_next_to_the_package():
    assert paths.DATA_DIR == paths.PACKAGE_DIR.parent / "data"
    assert paths.DATA_DIR.is_dir()


def test_notebook_dirs_exist():
    assert paths.NOTEBOOKS_DIR.is_dir() and paths.SOLUTIONS_NOTEBOOKS_DIR.is_dir()


def test_paths_do_not_depend_on_the_working_directory(tmp_path):
    code = "from course_utils import paths; print(paths.DATA_DIR)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == str(paths.DATA_DIR)
    assert os.path.isabs(out.stdout.strip())
