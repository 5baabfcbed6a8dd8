"""Tests for course_utils.checking: the registry, run(), results, strict and graded modes, display."""

import random

import numpy as np
import pytest
import torch

from course_utils import checking
from course_utils.checking import CheckResult, Fail, exercise, expect_raises, make_check, run, step

# A throwaway exercise registered only for these tests (chapter 99 is never shown to learners).


@exercise("ch99.double", title="Double a number", names=["double"], points=3)
def _check_double(double):
    checking.expect(callable(double), f"double must be a function (got {checking.describe(double)}).")
    with step("calling double(2)"):
        value = double(2)
    checking.expect(value == 4, f"double(2) returned {checking.describe(value)}; expected 4.", "Multiply by 2.")
    return "double(2) == 4."


@exercise("ch99.buggy", title="A checker with a bug", names=["anything"])
def _check_buggy(anything):
    return 1 / 0


@exercise("ch99.mutating", title="A checker that draws random numbers", names=["value"])
def _check_random(value):
    torch.rand(3)
    np.random.rand(3)
    random.random()
    return "drew numbers."


check_double = make_check("ch99.double")


def _stub(x):
    raise NotImplementedError


def test_registry_lists_id_title_names_and_points():
    ex = checking.registry()["ch99.double"]
    assert (ex.id, ex.title, ex.names, ex.points, ex.chapter) == ("ch99.double", "Double a number", ("double",), 3, 99)


def test_registry_holds_every_chapter_one_exercise_in_order():
    ids = [ex.id for ex in checking.chapter_exercises(1)]
    assert ids == ["ch1.build_mlp", "ch1.task_heads", "ch1.my_sequential", "ch1.fix_bugs", "ch1.running_mean"]


@pytest.mark.parametrize("bad_id", ["build_mlp", "ch1", "ch1.Build", "chapter1.x", "ch1.build-mlp"])
def test_malformed_exercise_ids_are_rejected(bad_id):
    with pytest.raises(ValueError, match="must look like"):
        exercise(bad_id, title="t", names=["x"])


def test_an_id_registered_by_two_different_checkers_is_rejected():
    def another(double):
        return ""

    with pytest.raises(ValueError, match="registered twice"):
        exercise("ch99.double", title="t", names=["double"])(another)


def test_exercises_need_names_and_positive_points():
    with pytest.raises(ValueError, match="at least one name"):
        exercise("ch99.none", title="t", names=[])
    with pytest.raises(ValueError, match="positive"):
        exercise("ch99.none", title="t", names=["x"], points=0)


def test_a_right_answer_passes_and_is_truthy():
    result = run("ch99.double", {"double": lambda x: 2 * x})
    assert result.status == "pass" and result and result.passed
    assert result.message == "double(2) == 4."


def test_a_wrong_answer_fails_with_message_and_hint_and_is_falsy():
    result = run("ch99.double", {"double": lambda x: x + 1})
    assert result.status == "fail" and not result
    assert result.message == "double(2) returned int 3; expected 4."
    assert result.hint == "Multiply by 2."


@pytest.mark.parametrize("namespace", [{}, {"double": ...}, {"other": 1}])
def test_a_missing_or_ellipsis_name_is_not_attempted(namespace):
    result = run("ch99.double", namespace)
    assert result.status == "not_attempted"
    assert result.message == "double is not defined yet."


def test_a_stub_that_raises_not_implemented_is_not_attempted():
    result = run("ch99.double", {"double": _stub})
    assert result.status == "not_attempted"
    assert "still a stub" in result.message


def test_a_learner_exception_becomes_one_line_naming_the_step():
    def double(x):
        raise ValueError("bad input\nsecond line")

    result = run("ch99.double", {"double": double})
    assert result.status == "fail"
    assert result.message == "calling double(2) raised ValueError: bad input"


def test_a_missing_super_init_gets_its_own_hint():
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(Fail) as info, step("calling Net()"):
        Net()
    assert "super().__init__()" in info.value.hint


def test_a_forward_named_wrongly_is_a_failure_not_a_stub():
    from torch import nn

    class Net(nn.Module):
        def foward(self, x):
            return x

    with pytest.raises(Fail, match="no forward method"), step("calling Net()(x)"):
        Net()(torch.zeros(1))


def test_endless_recursion_is_reported_as_a_failure():
    def double(x):
        return double(x)

    result = run("ch99.double", {"double": double})
    assert result.status == "fail" and "recursed" in result.message


def test_a_hanging_answer_is_stopped_by_the_time_budget(short_time_budget):
    def double(x):
        while True:
            pass

    result = run("ch99.double", {"double": double})
    assert result.status == "fail"
    assert result.message == "calling double(2) did not finish within 0.5 s."


def test_a_hanging_answer_that_catches_exception_is_still_stopped(short_time_budget):
    def double(x):
        while True:
            try:
                while True:
                    pass
            except Exception:
                pass

    assert run("ch99.double", {"double": double}).status == "fail"


def test_the_time_budget_does_not_outlive_the_check(short_time_budget):
    import signal

    run("ch99.double", {"double": lambda x: 2 * x})
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_learner_prints_do_not_reach_the_output(capsys):
    def double(x):
        print("debugging!")
        return 2 * x

    assert run("ch99.double", {"double": double}).passed
    assert "debugging" not in capsys.readouterr().out


def test_checks_do_not_change_the_learners_random_state():
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(1).item(), np.random.rand(), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    run("ch99.mutating", {"value": 1})
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == expected


def test_a_checker_bug_raises_in_strict_mode():
    with pytest.raises(checking.CheckerBug, match="ZeroDivisionError"):
        run("ch99.buggy", {"anything": 1})


def test_a_checker_bug_is_reported_politely_without_strict_mode(monkeypatch):
    monkeypatch.delenv("COURSE_UTILS_STRICT")
    result = run("ch99.buggy", {"anything": 1})
    assert result.status == "checker_error"
    assert "bug, not your code" in result.message


def test_an_unknown_exercise_is_a_checker_error(monkeypatch):
    monkeypatch.delenv("COURSE_UTILS_STRICT")
    assert run("ch1.no_such_thing", {}).status == "checker_error"


def test_a_namespace_that_is_not_a_mapping_is_not_attempted():
    assert run("ch99.double", None).status == "not_attempted"


def test_expect_raises_returns_the_expected_exception():
    def f(x):
        raise KeyError("known: a, b")

    error = expect_raises(KeyError, "calling f(1)", f, 1)
    assert isinstance(error, KeyError)


def test_expect_raises_fails_when_nothing_is_raised_or_the_wrong_type():
    with pytest.raises(Fail, match=r"returned int 1; expected it to raise ValueError"):
        expect_raises(ValueError, "calling f(1)", lambda x: x, 1)
    with pytest.raises(Fail, match=r"raised IndexError: .* Expected ValueError"):
        expect_raises(ValueError, "calling f(1)", lambda x: [][x], 1)


def test_result_text_names_status_id_title_message_and_hint():
    result = CheckResult("ch99.double", "Double a number", "fail", "double(2) returned 3.", "Multiply by 2.")
    assert str(result) == "[FAIL] ch99.double (Double a number): double(2) returned 3.\n    Hint: Multiply by 2."


def test_result_html_is_escaped_and_carries_the_status():
    result = CheckResult("ch99.double", "Double <a>", "pass", "x < y & z")
    html = result._repr_html_()
    assert 'data-status="pass"' in html
    assert "Double &lt;a&gt;" in html and "x &lt; y &amp; z" in html


def test_a_result_with_an_unknown_status_is_rejected():
    with pytest.raises(ValueError, match="status must be one of"):
        CheckResult("ch99.double", "t", "passed", "m")


def test_notebook_check_prints_the_result_outside_jupyter(capsys):
    check_double(lambda x: 2 * x)
    assert capsys.readouterr().out.startswith("[PASS] ch99.double")


def test_notebook_check_has_a_readable_name_and_signature():
    import inspect

    assert check_double.__name__ == "check_double"
    assert list(inspect.signature(check_double).parameters) == ["double"]


def test_notebook_check_called_with_extra_arguments_fails_politely(capsys):
    check_double(1, 2)
    assert "takes your double and nothing else" in capsys.readouterr().out


def test_graded_mode_raises_a_one_line_error_for_anything_but_a_pass(monkeypatch):
    monkeypatch.setenv("COURSE_UTILS_GRADING", "1")
    with pytest.raises(checking.CheckNotPassed) as info:
        check_double(lambda x: x + 1)
    rendered = info.value._render_traceback_()
    assert rendered == [
        "[FAIL] ch99.double (Double a number): double(2) returned int 3; expected 4. Hint: Multiply by 2."
    ]
    with pytest.raises(checking.CheckNotPassed, match="NOT ATTEMPTED"):
        check_double(...)
    check_double(lambda x: 2 * x)  # a pass does not raise


def test_describe_is_short_and_has_no_addresses():
    from torch import nn

    assert checking.describe(None) == "None"
    assert checking.describe(3) == "int 3"
    assert checking.describe(torch.zeros(2, 3)) == "a tensor of shape (2, 3)"
    assert checking.describe(np.zeros((4,))) == "a NumPy array of shape (4,)"
    assert checking.describe((1, 2)) == "a tuple of 2 items"
    assert checking.describe({"a": 1}) == "a dict with keys ['a']"
    assert checking.describe(nn.Linear) == "the class Linear"
    assert checking.describe(len) == "the function len"
    assert checking.describe(object()) == "a object object"
    assert checking.describe("x" * 100).endswith("'")


def test_first_line_drops_addresses_and_long_tails():
    error = RuntimeError("object <Net at 0x7f3a2b1c9d00> broke\nmore")
    assert checking.first_line(error) == "object <Net> broke"
    assert checking.first_line(RuntimeError("")) == "(no message)"
    assert len(checking.first_line(RuntimeError("y" * 500))) == 200


def test_checks_run_on_one_thread_and_restore_the_learners_setting():
    @exercise("ch99.threads", title="Threads", names=["value"])
    def _check_threads(value):
        return f"{torch.get_num_threads()} thread"

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run("ch99.threads", {"value": 1}).message == "1 thread"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("execution", ["autograde", "validate"])
def test_graded_mode_is_on_while_nbgrader_autogrades_or_validates(monkeypatch, execution):
    monkeypatch.setenv("NBGRADER_EXECUTION", execution)
    with pytest.raises(checking.CheckNotPassed, match=r"^\[FAIL\] ch99.double .* Hint: Multiply by 2.$"):
        check_double(lambda x: x + 1)
    check_double(lambda x: 2 * x)


def test_graded_mode_is_off_for_other_nbgrader_runs_and_by_default(monkeypatch, capsys):
    monkeypatch.setenv("NBGRADER_EXECUTION", "other")
    assert not checking.grading_mode()
    monkeypatch.delenv("NBGRADER_EXECUTION")
    check_double(lambda x: x + 1)
    assert capsys.readouterr().out.startswith("[FAIL] ch99.double")
