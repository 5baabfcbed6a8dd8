"""Tests for course_utils.setup() and for importing the package without side effects."""

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import course_utils


def test_importing_course_utils_does_not_import_torch_or_print():
    code = "import sys, course_utils; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "False False\n"


def test_setup_seeds_every_generator(capsys):
    course_utils.setup(seed=7, show_versions=False)
    first = (torch.rand(1).item(), np.random.rand(), random.random())
    course_utils.setup(seed=7, show_versions=False)
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == first
    assert capsys.readouterr().out == ""


def test_setup_prints_one_line_of_versions(capsys):
    course_utils.setup()
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert f"torch {torch.__version__}" in out


def test_setup_sets_short_tensor_printing():
    course_utils.setup(show_versions=False)
    assert repr(torch.tensor([1 / 3])) == "tensor([0.3333])"


def test_setup_uses_one_cpu_thread_by_default_and_restores_nothing_else():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        course_utils.setup(show_versions=False)
        assert torch.get_num_threads() == 1
        course_utils.setup(show_versions=False, threads=None)
        assert torch.get_num_threads() == 1, "threads=None must leave the current setting alone"
        course_utils.setup(show_versions=False, threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_setup_refuses_a_thread_count_that_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match="threads must be a positive int or None"):
        course_utils.setup(show_versions=False, threads=bad)
