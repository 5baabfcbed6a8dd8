"""Every registered checker survives junk: it reports fail or not attempted and never raises or hangs."""

import time

import numpy as np
import pytest
import torch
from torch import nn

from course_utils import checking


class _InitRaises(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
        raise RuntimeError("broken constructor")


class _ForwardRaises(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, *args, **kwargs):
        raise ValueError("broken forward")


class _ForwardHangs(_ForwardRaises):
    def forward(self, *args, **kwargs):
        while True:
            pass


class _ForwardReturnsTuple(_ForwardRaises):
    def forward(self, *args, **kwargs):
        return (torch.zeros(1), torch.zeros(1))


class _ForwardReturnsNumpy(_ForwardRaises):
    def forward(self, *args, **kwargs):
        return np.zeros((2, 2))


class _NoForward(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()


class _NotAModule:
    def __init__(self, *args, **kwargs):
        pass


def _function_hangs(*args, **kwargs):
    while True:
        pass


def _function_returns_none(*args, **kwargs):
    return None


def _function_raises(*args, **kwargs):
    raise TypeError("broken function")


def _function_returns_a_module(*args, **kwargs):
    return _ForwardRaises()


JUNK = {
    "None": None,
    "a number": 42,
    "a string": "model",
    "a tensor": torch.zeros(3),
    "a class whose __init__ raises": _InitRaises,
    "a class whose forward raises": _ForwardRaises,
    "a class whose forward hangs": _ForwardHangs,
    "a class whose forward returns a tuple": _ForwardReturnsTuple,
    "a class whose forward returns a NumPy array": _ForwardReturnsNumpy,
    "a module class without forward": _NoForward,
    "a class that is not a module": _NotAModule,
    "a function that hangs": _function_hangs,
    "a function that returns None": _function_returns_none,
    "a function that raises": _function_raises,
    "a function that returns a broken module": _function_returns_a_module,
}

COURSE_EXERCISES = [
    ex.id for ex in checking.registry().values() if ex.checker.__module__.startswith("course_utils.checks.")
]


def test_every_chapter_so_far_registers_exercises():
    assert {int(eid.split(".")[0][2:]) for eid in COURSE_EXERCISES} >= {1}


@pytest.mark.parametrize("exercise_id", COURSE_EXERCISES)
@pytest.mark.parametrize("junk", list(JUNK), ids=list(JUNK))
def test_junk_never_crashes_a_checker(exercise_id, junk, short_time_budget):
    ex = checking.registry()[exercise_id]
    namespace = {name: JUNK[junk] for name in ex.names}
    start = time.perf_counter()
    result = checking.run(exercise_id, namespace)  # strict mode: a checker bug raises here
    elapsed = time.perf_counter() - start
    assert result.status in ("fail", "not_attempted"), str(result)
    assert result.message and "\n" not in result.message
    assert elapsed < 5, f"{exercise_id} took {elapsed:.1f} s on {junk}"
