"""Tests for course_utils.compare: the comparisons every checker shares."""

import pytest
import torch
from torch import nn

from course_utils import compare
from course_utils.checking import Fail


def test_count_parameters_counts_shared_weights_once_and_can_skip_frozen_ones():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
    assert compare.count_parameters(net) == 3 * 4 + 4 + 4 * 3 + 3
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    assert compare.count_parameters(tied) == 16 + 4 + 4
    tied[0].bias.requires_grad_(False)
    assert compare.count_parameters(tied, trainable_only=True) == 16 + 4


def test_expect_module_class_rejects_instances_functions_and_other_classes():
    compare.expect_module_class(nn.Linear, "Net")
    for value, found in [(nn.Linear(1, 1), "a Linear object"), (len, "the function len"), (int, "the class int")]:
        with pytest.raises(Fail, match=f"Net must be a class derived from nn.Module \\(got {found}\\)"):
            compare.expect_module_class(value, "Net")


def test_expect_function_rejects_classes_and_values():
    compare.expect_function(len, "f", "f(x)")
    with pytest.raises(Fail, match=r"f must be a function \(got the class Linear\)") as info:
        compare.expect_function(nn.Linear, "f", "f(x)")
    assert info.value.hint == "Define it with: def f(x):"


def test_expect_linear_names_the_expected_and_found_sizes():
    compare.expect_linear(nn.Linear(3, 4), 3, 4, "fc1")
    with pytest.raises(Fail, match=r"fc1 must be nn.Linear\(3, 4\) \(got nn.Linear\(4, 3\)\)"):
        compare.expect_linear(nn.Linear(4, 3), 3, 4, "fc1")
    with pytest.raises(Fail, match=r"fc1 must be nn.Linear\(3, 4\) \(got ReLU\(\)\)"):
        compare.expect_linear(nn.ReLU(), 3, 4, "fc1")


def test_expect_same_keys_lists_missing_and_unexpected_keys_and_wrong_shapes():
    reference = nn.Sequential(nn.Linear(3, 4))
    compare.expect_same_keys(nn.Sequential(nn.Linear(3, 4)), reference, "net")
    with pytest.raises(Fail, match=r"missing 0.weight, 0.bias and unexpected fc.weight, fc.bias"):
        compare.expect_same_keys(_named(), reference, "net")
    with pytest.raises(Fail, match=r"0.weight has shape \(5, 3\), expected \(4, 3\)"):
        compare.expect_same_keys(nn.Sequential(nn.Linear(3, 5)), reference, "net")


def _named() -> nn.Module:
    net = nn.Module()
    net.fc = nn.Linear(3, 4)
    return net


def test_load_reference_weights_makes_outputs_equal():
    torch.manual_seed(0)
    mine, reference = nn.Linear(3, 2), nn.Linear(3, 2)
    compare.load_reference_weights(mine, reference, "net")
    x = torch.randn(4, 3)
    assert torch.equal(mine(x), reference(x))


def test_expect_close_reports_type_shape_and_largest_difference():
    expected = torch.zeros(2, 3)
    compare.expect_close(torch.zeros(2, 3) + 1e-7, expected, "out")
    with pytest.raises(Fail, match=r"out must be a tensor \(got a tuple of 2 items\)"):
        compare.expect_close((1, 2), expected, "out")
    with pytest.raises(Fail, match=r"out has shape \(3, 2\), expected \(2, 3\)"):
        compare.expect_close(torch.zeros(3, 2), expected, "out")
    with pytest.raises(Fail, match=r"largest difference 0.5"):
        compare.expect_close(torch.full((2, 3), 0.5), expected, "out")


def test_matches_is_a_quiet_expect_close():
    assert compare.matches(torch.ones(2), torch.ones(2))
    assert not compare.matches(torch.ones(3), torch.ones(2))
    assert not compare.matches([1.0, 1.0], torch.ones(2))


def test_build_turns_errors_into_fail():
    with pytest.raises(Fail, match=r"calling Net\(\) raised ZeroDivisionError"):
        compare.build(lambda: 1 / 0, "Net()")
