"""Chapter 1 checkers: the references pass; real learner mistakes fail with the intended message."""

from collections import OrderedDict
from itertools import pairwise

import pytest
import torch
from torch import nn

from course_utils import checking
from course_utils.solutions import ch01_model_definition as ref


def _run(exercise_id: str, name: str, value) -> checking.CheckResult:
    return checking.run(exercise_id, {name: value})


def _expect_fail(result: checking.CheckResult, *fragments: str) -> None:
    assert result.status == "fail", str(result)
    for fragment in fragments:
        assert fragment in result.message + " " + (result.hint or ""), str(result)


@pytest.mark.parametrize(
    ("exercise_id", "name"),
    [
        ("ch1.build_mlp", "build_mlp"),
        ("ch1.mlp_stack", "MLPStack"),
        ("ch1.task_heads", "TaskHeads"),
        ("ch1.running_mean", "RunningMean"),
        ("ch1.fix_registration", "FixedNet"),
    ],
)
def test_the_reference_passes(exercise_id, name):
    result = _run(exercise_id, name, getattr(ref, name))
    assert result.status == "pass", str(result)


# --- ch1.build_mlp ------------------------------------------------------------------------------------


def test_build_mlp_without_names_fails_and_suggests_an_ordered_dict():
    def build_mlp(sizes):
        layers = []
        for n_in, n_out in pairwise(sizes):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    _expect_fail(_run("ch1.build_mlp", "build_mlp", build_mlp), "have no names (0, 1, 2)", "OrderedDict")


def test_build_mlp_with_relu_after_the_last_layer_fails():
    def build_mlp(sizes):
        layers = OrderedDict()
        for i, (n_in, n_out) in enumerate(pairwise(sizes), start=1):
            layers[f"fc{i}"] = nn.Linear(n_in, n_out)
            layers[f"relu{i}"] = nn.ReLU()
        return nn.Sequential(layers)

    _expect_fail(_run("ch1.build_mlp", "build_mlp", build_mlp), "fc1, relu1, fc2, relu2", "No ReLU after the last")


def test_build_mlp_numbered_from_zero_fails():
    def build_mlp(sizes):
        layers = OrderedDict()
        for i, (n_in, n_out) in enumerate(pairwise(sizes)):
            layers[f"fc{i}"] = nn.Linear(n_in, n_out)
            if i < len(sizes) - 2:
                layers[f"relu{i}"] = nn.ReLU()
        return nn.Sequential(layers)

    _expect_fail(_run("ch1.build_mlp", "build_mlp", build_mlp), "named fc0, relu0, fc1", "Number the layers from 1")


def test_build_mlp_with_wrong_layer_sizes_fails():
    def build_mlp(sizes):
        layers = OrderedDict()
        for i in range(1, len(sizes)):
            layers[f"fc{i}"] = nn.Linear(sizes[0], sizes[i])
            if i < len(sizes) - 1:
                layers[f"relu{i}"] = nn.ReLU()
        return nn.Sequential(layers)

    _expect_fail(
        _run("ch1.build_mlp", "build_mlp", build_mlp),
        "fc2 of build_mlp([784, 256, 10]) must be nn.Linear(256, 10) (got nn.Linear(784, 10))",
    )


def test_build_mlp_that_accepts_a_single_size_fails():
    def build_mlp(sizes):
        return ref.build_mlp(sizes) if len(sizes) > 1 else nn.Sequential()

    _expect_fail(
        _run("ch1.build_mlp", "build_mlp", build_mlp),
        "build_mlp([10]) returned a Sequential object; expected it to raise ValueError",
    )


def test_build_mlp_that_crashes_on_an_empty_list_with_index_error_fails():
    def build_mlp(sizes):
        sizes[0]  # IndexError on []
        if len(sizes) < 2:
            raise ValueError("too short")
        return ref.build_mlp(sizes)

    _expect_fail(_run("ch1.build_mlp", "build_mlp", build_mlp), "raised IndexError", "Expected ValueError")


def test_build_mlp_returning_a_list_fails():
    def build_mlp(sizes):
        return list(ref.build_mlp(sizes))

    _expect_fail(_run("ch1.build_mlp", "build_mlp", build_mlp), "must return an nn.Sequential (got a list of 3 items)")


# --- ch1.mlp_stack ------------------------------------------------------------------------------------


class _ListStack(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.layers = [nn.Linear(a, b) for a, b in pairwise(sizes)]

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def test_mlp_stack_with_a_plain_list_fails_and_names_the_consequence():
    _expect_fail(_run("ch1.mlp_stack", "MLPStack", _ListStack), "plain Python list", "nn.ModuleList")


def test_mlp_stack_with_relu_after_the_last_layer_fails():
    class MLPStack(ref.MLPStack):
        def forward(self, x):
            for layer in self.layers:
                x = torch.relu(layer(x))
            return x

    _expect_fail(_run("ch1.mlp_stack", "MLPStack", MLPStack), "applies ReLU after the last layer")


def test_mlp_stack_without_activations_fails():
    class MLPStack(ref.MLPStack):
        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    _expect_fail(_run("ch1.mlp_stack", "MLPStack", MLPStack), "has no ReLU between the Linear layers")


def test_mlp_stack_with_relus_inside_the_list_fails():
    class MLPStack(nn.Module):
        def __init__(self, sizes):
            super().__init__()
            self.layers = nn.ModuleList()
            for n_in, n_out in pairwise(sizes):
                self.layers.extend([nn.Linear(n_in, n_out), nn.ReLU()])

        def forward(self, x):
            for layer in self.layers[:-1]:
                x = layer(x)
            return x

    _expect_fail(_run("ch1.mlp_stack", "MLPStack", MLPStack), "holds 6 modules; expected 3 Linear layers")


def test_mlp_stack_in_a_sequential_named_layers_fails():
    class MLPStack(nn.Module):
        def __init__(self, sizes):
            super().__init__()
            self.layers = nn.Sequential(*[nn.Linear(a, b) for a, b in pairwise(sizes)])

    _expect_fail(_run("ch1.mlp_stack", "MLPStack", MLPStack), "must be an nn.ModuleList (got a Sequential object)")


def test_mlp_stack_without_super_init_fails_with_the_hint():
    class MLPStack(nn.Module):
        def __init__(self, sizes):
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))

    _expect_fail(_run("ch1.mlp_stack", "MLPStack", MLPStack), "raised AttributeError", "super().__init__()")


def test_mlp_stack_that_also_keeps_the_layers_under_other_names_fails():
    class MLPStack(ref.MLPStack):
        def __init__(self, sizes):
            super().__init__(sizes)
            self.first = self.layers[0]

    _expect_fail(_run("ch1.mlp_stack", "MLPStack", MLPStack), "unexpected first.weight, first.bias")


# --- ch1.task_heads -----------------------------------------------------------------------------------


def test_task_heads_in_a_plain_dict_fails():
    class TaskHeads(ref.TaskHeads):
        def __init__(self, in_features, hidden, tasks):
            nn.Module.__init__(self)
            self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
            self.heads = {task: nn.Linear(hidden, n) for task, n in tasks.items()}

    _expect_fail(_run("ch1.task_heads", "TaskHeads", TaskHeads), "heads is a plain dict", "nn.ModuleDict")


def test_task_heads_returning_every_head_fails():
    class TaskHeads(ref.TaskHeads):
        def forward(self, x, task):
            features = self.trunk(x)
            return {name: head(features) for name, head in self.heads.items()}

    _expect_fail(_run("ch1.task_heads", "TaskHeads", TaskHeads), "must be a tensor (got a dict with keys")


def test_task_heads_with_relu_on_the_logits_fails():
    class TaskHeads(ref.TaskHeads):
        def forward(self, x, task):
            return torch.relu(super().forward(x, task))

    _expect_fail(_run("ch1.task_heads", "TaskHeads", TaskHeads), "applies ReLU to the logits")


def test_task_heads_relying_on_module_dict_key_error_fails():
    class TaskHeads(ref.TaskHeads):
        def forward(self, x, task):
            return self.heads[task](self.trunk(x))

    _expect_fail(_run("ch1.task_heads", "TaskHeads", TaskHeads), "must name the known tasks")


def test_task_heads_raising_value_error_for_an_unknown_task_fails():
    class TaskHeads(ref.TaskHeads):
        def forward(self, x, task):
            if task not in self.heads:
                raise ValueError(f"unknown task {task}")
            return super().forward(x, task)

    _expect_fail(_run("ch1.task_heads", "TaskHeads", TaskHeads), "raised ValueError", "Expected KeyError")


def test_task_heads_with_a_trunk_without_relu_fails():
    class TaskHeads(ref.TaskHeads):
        def __init__(self, in_features, hidden, tasks):
            super().__init__(in_features, hidden, tasks)
            self.trunk = nn.Sequential(nn.Linear(in_features, hidden))

    _expect_fail(_run("ch1.task_heads", "TaskHeads", TaskHeads), "trunk must be Linear then ReLU (got 1 modules")


# --- ch1.running_mean ---------------------------------------------------------------------------------


class _RunningMeanBase(nn.Module):
    def __init__(self, num_features, momentum=0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))


def test_running_mean_as_a_plain_tensor_fails():
    class RunningMean(ref.RunningMean):
        def __init__(self, num_features, momentum=0.1):
            nn.Module.__init__(self)
            self.momentum = momentum
            self.running_mean = torch.zeros(num_features)

    _expect_fail(_run("ch1.running_mean", "RunningMean", RunningMean), "plain attribute", "register_buffer")


def test_running_mean_as_a_parameter_fails():
    class RunningMean(ref.RunningMean):
        def __init__(self, num_features, momentum=0.1):
            nn.Module.__init__(self)
            self.momentum = momentum
            self.running_mean = nn.Parameter(torch.zeros(num_features))

    _expect_fail(_run("ch1.running_mean", "RunningMean", RunningMean), "is an nn.Parameter")


def test_running_mean_not_persistent_fails():
    class RunningMean(ref.RunningMean):
        def __init__(self, num_features, momentum=0.1):
            nn.Module.__init__(self)
            self.momentum = momentum
            self.register_buffer("running_mean", torch.zeros(num_features), persistent=False)

    _expect_fail(_run("ch1.running_mean", "RunningMean", RunningMean), "non-persistent buffer")


def test_running_mean_updated_with_autograd_history_fails():
    class RunningMean(_RunningMeanBase):
        def forward(self, x):
            if self.training:
                batch_mean = x.mean(dim=0)
                self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * batch_mean
                return x - batch_mean
            return x - self.running_mean

    _expect_fail(_run("ch1.running_mean", "RunningMean", RunningMean), "carries autograd history", "torch.no_grad()")


def test_running_mean_with_swapped_momentum_fails():
    class RunningMean(_RunningMeanBase):
        def forward(self, x):
            if self.training:
                batch_mean = x.mean(dim=0)
                with torch.no_grad():
                    self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * batch_mean)
                return x - batch_mean
            return x - self.running_mean

    _expect_fail(_run("ch1.running_mean", "RunningMean", RunningMean), "weight 1 - momentum")


def test_running_mean_that_forgets_its_history_fails():
    class RunningMean(_RunningMeanBase):
        def forward(self, x):
            if self.training:
                batch_mean = x.mean(dim=0)
                with torch.no_grad():
                    self.running_mean.copy_(self.momentum * batch_mean)
                return x - batch_mean
            return x - self.running_mean

    _expect_fail(_run("ch1.running_mean", "RunningMean", RunningMean), "forgets its previous value")


def test_running_mean_using_the_batch_mean_in_eval_fails():
    class RunningMean(ref.RunningMean):
        def forward(self, x):
            output = super().forward(x)
            return output if self.training else x - x.mean(dim=0)

    _expect_fail(_run("ch1.running_mean", "RunningMean", RunningMean), "In eval mode the output uses the batch mean")


def test_running_mean_updated_in_eval_mode_too_fails():
    class RunningMean(_RunningMeanBase):
        def forward(self, x):
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * x.mean(dim=0))
            return x - x.mean(dim=0) if self.training else x - self.running_mean

    _expect_fail(_run("ch1.running_mean", "RunningMean", RunningMean), "In eval mode the output")


# --- ch1.fix_registration -----------------------------------------------------------------------------


class _BrokenNet(nn.Module):
    def __init__(self, sizes, scale=0.5):
        super().__init__()
        self.layers = [nn.Linear(a, b) for a, b in pairwise(sizes)]
        self.scale = torch.tensor(scale)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x) * self.scale


def test_fixed_net_that_is_still_broken_fails_on_the_list():
    _expect_fail(_run("ch1.fix_registration", "FixedNet", _BrokenNet), "plain Python list")


def test_fixed_net_with_scale_as_a_plain_tensor_fails():
    class FixedNet(_BrokenNet):
        def __init__(self, sizes, scale=0.5):
            super().__init__(sizes, scale)
            self.layers = nn.ModuleList(self.layers)

    _expect_fail(_run("ch1.fix_registration", "FixedNet", FixedNet), "scale is a tensor of shape () kept as a plain")


def test_fixed_net_with_scale_as_a_parameter_fails():
    class FixedNet(ref.FixedNet):
        def __init__(self, sizes, scale=0.5):
            nn.Module.__init__(self)
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
            self.scale = nn.Parameter(torch.tensor(scale))

    _expect_fail(_run("ch1.fix_registration", "FixedNet", FixedNet), "is an nn.Parameter, so an optimizer would train")


def test_fixed_net_with_a_non_persistent_scale_fails():
    class FixedNet(ref.FixedNet):
        def __init__(self, sizes, scale=0.5):
            nn.Module.__init__(self)
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
            self.register_buffer("scale", torch.tensor(scale), persistent=False)

    _expect_fail(_run("ch1.fix_registration", "FixedNet", FixedNet), "non-persistent buffer")


def test_fixed_net_that_drops_the_default_scale_fails():
    class FixedNet(ref.FixedNet):
        def __init__(self, sizes, scale=1.0):
            super().__init__(sizes, scale)

    _expect_fail(_run("ch1.fix_registration", "FixedNet", FixedNet), "must have scale 0.5 by default")


def test_fixed_net_that_forgets_the_scale_in_forward_fails():
    class FixedNet(ref.FixedNet):
        def forward(self, x):
            for layer in self.layers[:-1]:
                x = torch.relu(layer(x))
            return self.layers[-1](x)

    _expect_fail(_run("ch1.fix_registration", "FixedNet", FixedNet), "differs from the reference output")


def test_checks_never_mutate_the_learners_objects():
    net = ref.build_mlp([8, 16, 16, 4])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert _run("ch1.build_mlp", "build_mlp", lambda sizes: net if sizes == [8, 16, 16, 4] else ref.build_mlp(sizes))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
