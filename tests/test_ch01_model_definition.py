"""Chapter 1 checkers: the references pass; real learner mistakes fail with the intended message."""

from collections import OrderedDict
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch codebase uses
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
        ("ch1.task_heads", "TaskHeads"),
        ("ch1.my_sequential", "MySequential"),
        ("ch1.fix_bugs", "MultiTaskNet"),
        ("ch1.running_mean", "RunningMean"),
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


def test_task_heads_that_lets_module_dicts_key_error_through_fails():
    class TaskHeads(ref.TaskHeads):
        def __init__(self, in_features, hidden, tasks):
            nn.Module.__init__(self)
            self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
            self.heads = nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in tasks.items()})

    _expect_fail(
        _run("ch1.task_heads", "TaskHeads", TaskHeads),
        "raised KeyError: \"attribute 'type' already exists\"",
        "Expected ValueError",
        "catch it in __init__",
    )


def test_task_heads_that_checks_isidentifier_rejects_valid_names_and_fails():
    class TaskHeads(ref.TaskHeads):
        def __init__(self, in_features, hidden, tasks):
            bad = [task for task in tasks if not task.isidentifier()]
            if bad:
                raise ValueError(f"task name {bad[0]!r} is not an identifier")
            super().__init__(in_features, hidden, tasks)

    _expect_fail(_run("ch1.task_heads", "TaskHeads", TaskHeads), "raised ValueError: task name 'colour-v2'")


def test_task_heads_that_renames_reserved_task_names_fails():
    class TaskHeads(ref.TaskHeads):
        """Silently renames the reserved task: the spec asks for a ValueError instead."""

        def __init__(self, in_features, hidden, tasks):
            safe = {(f"task_{t}" if t in ("type", "to") else t): n for t, n in tasks.items()}
            super().__init__(in_features, hidden, safe)

        def forward(self, x, task):
            return super().forward(x, f"task_{task}" if task in ("type", "to") else task)

    _expect_fail(
        _run("ch1.task_heads", "TaskHeads", TaskHeads),
        "TaskHeads(8, 16, {'digit': 10, 'type': 3}) returned a TaskHeads object; expected it to raise ValueError",
    )


def test_task_heads_whose_message_does_not_name_the_task_fails():
    class TaskHeads(ref.TaskHeads):
        def __init__(self, in_features, hidden, tasks):
            try:
                super().__init__(in_features, hidden, tasks)
            except ValueError:
                raise ValueError("bad task name") from None

    _expect_fail(_run("ch1.task_heads", "TaskHeads", TaskHeads), "its message must name the task 'type'")


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


def test_checks_never_mutate_the_learners_objects():
    net = ref.build_mlp([8, 16, 16, 4])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert _run("ch1.build_mlp", "build_mlp", lambda sizes: net if sizes == [8, 16, 16, 4] else ref.build_mlp(sizes))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# --- correct answers in other styles, with attributes copy.deepcopy cannot handle -------------------------


def test_task_heads_with_a_dict_keys_attribute_and_built_with_add_module_passes():
    class TaskHeads(nn.Module):
        def __init__(self, in_features, hidden, tasks):
            super().__init__()
            self.task_names = tasks.keys()  # a dict_keys view: copy.deepcopy raises TypeError on it
            self.pending = (name for name in tasks)  # a generator: deepcopy cannot copy it either
            self.add_module("trunk", nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU()))
            heads = nn.ModuleDict()
            for task, n in tasks.items():
                if "." in task or task == "" or hasattr(heads, task):
                    raise ValueError(f"{task!r} cannot name a head")
                heads.update({task: nn.Linear(hidden, n)})
            self.__setattr__("heads", heads)  # the same as self.heads = heads, written out

        def forward(self, x, task):
            if task not in self.heads:
                raise KeyError(f"{task} is none of {sorted(self.task_names)}")
            return self.heads[task](self.trunk(x))

    result = _run("ch1.task_heads", "TaskHeads", TaskHeads)
    assert result.status == "pass", str(result)


def test_running_mean_with_a_generator_and_a_lambda_attribute_passes():
    class RunningMean(nn.Module):
        def __init__(self, num_features, momentum=0.1):
            super().__init__()
            self.momentum = momentum
            self.running_mean = nn.Buffer(torch.zeros(num_features))
            self.steps = (i for i in range(3))  # a generator: copy.deepcopy raises TypeError on it
            self.centre = lambda x, m: x - m

        def forward(self, x):
            if self.training:
                mean = x.detach().mean(0)
                self.running_mean.lerp_(mean, self.momentum)
                return self.centre(x, x.mean(0))
            return self.centre(x, self.running_mean)

    result = _run("ch1.running_mean", "RunningMean", RunningMean)
    assert result.status == "pass", str(result)


def test_build_mlp_returning_a_sequential_with_a_dict_keys_attribute_passes():
    def build_mlp(sizes):
        if len(sizes) < 2:
            raise ValueError("need at least an input and an output size")
        net = nn.Sequential()
        n = len(sizes) - 1
        for i in range(1, n + 1):
            net.add_module(f"fc{i}", nn.Linear(sizes[i - 1], sizes[i]))
            if i < n:
                net.add_module(f"relu{i}", nn.ReLU())
        net.names = {"a": 1}.keys()
        return net

    result = _run("ch1.build_mlp", "build_mlp", build_mlp)
    assert result.status == "pass", str(result)


# --- ch1.my_sequential --------------------------------------------------------------------------------


class _ListSequential(nn.Module):
    def __init__(self, *args):
        super().__init__()
        self.layers = list(args[0].values()) if len(args) == 1 and isinstance(args[0], OrderedDict) else list(args)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_my_sequential_with_a_plain_list_fails():
    _expect_fail(
        _run("ch1.my_sequential", "MySequential", _ListSequential),
        "registers no modules: its state dict is empty (the modules sit in the plain attribute layers)",
        "add_module",
    )


def test_my_sequential_inside_a_module_list_attribute_fails_on_the_keys():
    class MySequential(_ListSequential):
        def __init__(self, *args):
            super().__init__(*args)
            self.layers = nn.ModuleList(self.layers)

    _expect_fail(
        _run("ch1.my_sequential", "MySequential", MySequential),
        "keys of MySequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)) are layers.0.weight",
        "not inside a container attribute",
    )


def test_my_sequential_that_subclasses_sequential_fails():
    class MySequential(nn.Sequential):
        pass

    _expect_fail(_run("ch1.my_sequential", "MySequential", MySequential), "derives from nn.Sequential")


def test_my_sequential_indexing_by_name_fails_on_negative_indices():
    class MySequential(ref.MySequential):
        def __getitem__(self, index):
            return self._modules[str(index)]

    _expect_fail(
        _run("ch1.my_sequential", "MySequential", MySequential),
        "indexing net[-1] of MySequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)) raised KeyError",
        "Negative indices count from the end",
    )


def test_my_sequential_without_len_fails():
    class MySequential(nn.Module):
        def __init__(self, *modules):
            super().__init__()
            for i, module in enumerate(modules):
                self.add_module(str(i), module)

        def __getitem__(self, index):
            return list(self._modules.values())[index]

    _expect_fail(_run("ch1.my_sequential", "MySequential", MySequential), "raised TypeError", "Define __len__")


def test_my_sequential_that_wraps_an_index_error_in_a_key_error_fails():
    class MySequential(ref.MySequential):
        def __getitem__(self, index):
            modules = list(self._modules.values())
            if index >= len(modules):
                raise KeyError(index)
            return modules[index]

    _expect_fail(
        _run("ch1.my_sequential", "MySequential", MySequential), "indexing net[3]", "raised KeyError", "IndexError"
    )


def test_my_sequential_running_children_skips_a_shared_module_and_fails():
    class MySequential(ref.MySequential):
        def __len__(self):
            return len(self._modules)

        def forward(self, x):
            for module in self.children():
                x = module(x)
            return x

    _expect_fail(
        _run("ch1.my_sequential", "MySequential", MySequential),
        "MySequential(shared, nn.Tanh(), shared) runs the module passed twice only once",
        "self._modules.values()",
    )


def test_my_sequential_counting_children_fails_on_a_shared_module():
    class MySequential(ref.MySequential):
        def __len__(self):
            return len(list(self.children()))

    _expect_fail(
        _run("ch1.my_sequential", "MySequential", MySequential),
        "len(MySequential(shared, nn.Tanh(), shared)) is 2; expected 3",
    )


def test_my_sequential_running_backwards_fails():
    class MySequential(ref.MySequential):
        def forward(self, x):
            for module in reversed(list(self._modules.values())):
                x = module(x)
            return x

    _expect_fail(_run("ch1.my_sequential", "MySequential", MySequential), "runs its modules in reverse order")


def test_my_sequential_that_does_not_chain_fails():
    class MySequential(ref.MySequential):
        def forward(self, x):
            out = x
            for module in self._modules.values():
                out = module(x)
            return out

    _expect_fail(
        _run("ch1.my_sequential", "MySequential", MySequential),
        "returns the last module applied to the input",
        "previous module's output",
    )


def test_my_sequential_without_the_ordered_dict_branch_fails():
    class MySequential(nn.Module):
        def __init__(self, *modules):
            super().__init__()
            for i, module in enumerate(modules):
                self.add_module(str(i), module)

        def __len__(self):
            return len(self._modules)

        def __getitem__(self, index):
            return list(self._modules.values())[index]

        def forward(self, x):
            for module in self._modules.values():
                x = module(x)
            return x

    _expect_fail(
        _run("ch1.my_sequential", "MySequential", MySequential),
        "calling MySequential(OrderedDict(fc1=..., act=..., fc2=...)) raised TypeError",
        "One OrderedDict argument",
    )


def test_my_sequential_with_setattr_and_a_dict_keys_attribute_passes():
    class MySequential(nn.Module):
        def __init__(self, *args):
            super().__init__()
            pairs = args[0].items() if len(args) == 1 and isinstance(args[0], OrderedDict) else enumerate(args)
            for name, module in pairs:
                setattr(self, str(name), module)
            self.names = self._modules.keys()  # a dict_keys view: deepcopy cannot copy it

        def __len__(self):
            return len(self.names)

        def __getitem__(self, index):
            names = list(self.names)
            return self._modules[names[index]]  # list indexing raises IndexError, negative indices work

        def forward(self, x):
            for name in self.names:
                x = self._modules[name](x)
            return x

    result = _run("ch1.my_sequential", "MySequential", MySequential)
    assert result.status == "pass", str(result)


def test_my_sequential_with_register_module_and_operator_index_passes():
    import operator

    class MySequential(nn.Module):
        def __init__(self, *args):
            super().__init__()
            if len(args) == 1 and isinstance(args[0], OrderedDict):
                args_named = list(args[0].items())
            else:
                args_named = [(str(i), m) for i, m in enumerate(args)]
            for name, module in args_named:
                self.register_module(name, module)

        def __len__(self):
            return len(self._modules)

        def __getitem__(self, index):
            index = operator.index(index)
            size = len(self)
            if index < 0:
                index += size
            if not 0 <= index < size:
                raise IndexError("MySequential index out of range")
            return list(self._modules.values())[index]

        def forward(self, x):
            out = x
            for i in range(len(self)):
                out = self[i](out)
            return out

    result = _run("ch1.my_sequential", "MySequential", MySequential)
    assert result.status == "pass", str(result)


# --- ch1.fix_bugs -------------------------------------------------------------------------------------


class _Buggy(nn.Module):
    """The notebook's BuggyMultiTaskNet: every bug of the exercise."""

    def __init__(self, in_features, hidden, depth, tasks, p=0.5):
        super().__init__()
        self.hidden = hidden
        self.p = p
        self.centre = torch.zeros(in_features)
        self.blocks = [nn.Linear(hidden, hidden) for _ in range(depth)]
        self.heads = {task: nn.Linear(hidden, n) for task, n in tasks.items()}

    def forward(self, x, task):
        x = x - self.centre
        x = nn.Linear(x.shape[-1], self.hidden)(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        x = F.dropout(x, self.p)
        return self.heads[task](x)


class _FixedBlocks(_Buggy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.blocks = nn.ModuleList(self.blocks)


class _FixedHeads(_FixedBlocks):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.heads = nn.ModuleDict(self.heads)


class _FixedCentre(_FixedHeads):
    def __init__(self, in_features, *args, **kwargs):
        super().__init__(in_features, *args, **kwargs)
        del self.centre
        self.register_buffer("centre", torch.zeros(in_features))


class _FixedProj(_FixedCentre):
    """Registers proj, but forward still calls F.dropout without training=."""

    def __init__(self, in_features, hidden, *args, **kwargs):
        super().__init__(in_features, hidden, *args, **kwargs)
        self.proj = nn.Linear(in_features, hidden)

    def forward(self, x, task):
        x = self.proj(x - self.centre)
        for block in self.blocks:
            x = torch.relu(block(x))
        x = F.dropout(x, self.p)
        return self.heads[task](x)


def test_fix_bugs_on_the_buggy_net_names_the_plain_list():
    _expect_fail(_run("ch1.fix_bugs", "MultiTaskNet", _Buggy), "blocks is a plain Python list", "nn.ModuleList")


def test_fix_bugs_with_only_the_list_fixed_names_the_plain_dict():
    _expect_fail(_run("ch1.fix_bugs", "MultiTaskNet", _FixedBlocks), "heads is a plain dict", "nn.ModuleDict")


def test_fix_bugs_with_a_plain_centre_names_it():
    _expect_fail(
        _run("ch1.fix_bugs", "MultiTaskNet", _FixedHeads), "centre is a tensor of shape (6,) kept as a plain attribute"
    )


def test_fix_bugs_with_a_parameter_centre_fails():
    class MultiTaskNet(_FixedHeads):
        def __init__(self, in_features, *args, **kwargs):
            super().__init__(in_features, *args, **kwargs)
            del self.centre
            self.centre = nn.Parameter(torch.zeros(in_features))

    _expect_fail(_run("ch1.fix_bugs", "MultiTaskNet", MultiTaskNet), "centre is an nn.Parameter")


def test_fix_bugs_with_the_layer_still_built_in_forward_names_it():
    _expect_fail(
        _run("ch1.fix_bugs", "MultiTaskNet", _FixedCentre),
        "has no registered layer proj",
        "self.proj = nn.Linear(in_features, hidden)",
    )


def test_fix_bugs_with_proj_registered_but_also_rebuilt_in_forward_names_the_rebuilt_layer():
    class MultiTaskNet(_FixedProj):
        def forward(self, x, task):
            x = self.proj(x - self.centre)
            x = nn.Linear(self.hidden, self.hidden)(x)  # "one more projection", new weights every call
            for block in self.blocks:
                x = torch.relu(block(x))
            x = F.dropout(x, self.p, self.training)
            return self.heads[task](x)

    _expect_fail(_run("ch1.fix_bugs", "MultiTaskNet", MultiTaskNet), "even with p=0.0: forward still builds a layer")


def test_fix_bugs_with_f_dropout_in_eval_names_it():
    _expect_fail(_run("ch1.fix_bugs", "MultiTaskNet", _FixedProj), "dropout still drops", "training=self.training")


def test_fix_bugs_without_any_dropout_fails():
    class MultiTaskNet(_FixedProj):
        def forward(self, x, task):
            x = self.proj(x - self.centre)
            for block in self.blocks:
                x = torch.relu(block(x))
            return self.heads[task](x)

    _expect_fail(_run("ch1.fix_bugs", "MultiTaskNet", MultiTaskNet), "dropout never drops")


def test_fix_bugs_with_a_hard_coded_dropout_rate_fails():
    class MultiTaskNet(_FixedProj):
        def forward(self, x, task):
            x = self.proj(x - self.centre)
            for block in self.blocks:
                x = torch.relu(block(x))
            x = F.dropout(x, 0.5, training=self.training)
            return self.heads[task](x)

    _expect_fail(_run("ch1.fix_bugs", "MultiTaskNet", MultiTaskNet), "must use the p given to the constructor")


def test_fix_bugs_that_forgets_the_centre_in_forward_fails():
    class MultiTaskNet(_FixedProj):
        def forward(self, x, task):
            x = self.proj(x)
            for block in self.blocks:
                x = torch.relu(block(x))
            x = F.dropout(x, self.p, training=self.training)
            return self.heads[task](x)

    _expect_fail(_run("ch1.fix_bugs", "MultiTaskNet", MultiTaskNet), "In eval mode, forward(x, 'topic') differs")


def test_fix_bugs_with_f_dropout_and_training_flag_passes():
    class MultiTaskNet(_FixedProj):
        def forward(self, x, task):
            x = self.proj(x - self.centre)
            for block in self.blocks:
                x = torch.relu(block(x))
            x = F.dropout(x, self.p, training=self.training)
            return self.heads[task](x)

    result = _run("ch1.fix_bugs", "MultiTaskNet", MultiTaskNet)
    assert result.status == "pass", str(result)


def test_fix_bugs_in_another_style_with_odd_attributes_passes():
    class MultiTaskNet(nn.Module):
        def __init__(self, in_features, hidden, depth, tasks, p=0.5):
            super().__init__()
            self.task_names = tasks.keys()  # dict_keys: deepcopy cannot copy it
            self.act = lambda t: t.clamp(min=0)
            self.centre = nn.Buffer(torch.zeros(in_features))
            self.add_module("proj", nn.LazyLinear(hidden))
            self.blocks = nn.ModuleList()
            for _ in range(depth):
                self.blocks.append(nn.Linear(hidden, hidden))
            self.heads = nn.ModuleDict()
            self.heads.update((task, nn.Linear(hidden, n)) for task, n in tasks.items())
            self.drop = nn.Dropout(p)

        def forward(self, x, task):
            h = self.proj(x - self.centre)
            for block in self.blocks:
                h = self.act(block(h))
            return self.heads[task](self.drop(h))

    result = _run("ch1.fix_bugs", "MultiTaskNet", MultiTaskNet)
    assert result.status == "pass", str(result)


def test_fix_bugs_with_the_blocks_in_a_sequential_passes():
    class MultiTaskNet(ref.MultiTaskNet):
        def __init__(self, in_features, hidden, depth, tasks, p=0.5):
            super().__init__(in_features, hidden, depth, tasks, p)
            self.blocks = nn.Sequential(*[nn.Linear(hidden, hidden) for _ in range(depth)])

    result = _run("ch1.fix_bugs", "MultiTaskNet", MultiTaskNet)
    assert result.status == "pass", str(result)


def test_fix_bugs_with_one_block_too_many_fails_on_the_keys():
    class MultiTaskNet(ref.MultiTaskNet):
        def __init__(self, in_features, hidden, depth, tasks, p=0.5):
            super().__init__(in_features, hidden, depth + 1, tasks, p)

    _expect_fail(_run("ch1.fix_bugs", "MultiTaskNet", MultiTaskNet), "unexpected blocks.2.weight, blocks.2.bias")


# --- the references' own failure modes ----------------------------------------------------------------


def test_reference_my_sequential_indexes_like_a_list():
    a, b = nn.Linear(2, 2), nn.ReLU()
    net = ref.MySequential(a, b)
    assert (net[0], net[-1], net[-2], len(net)) == (a, b, a, 2)
    with pytest.raises(IndexError, match="index 2 is out of range for a MySequential of 2 modules"):
        net[2]
    with pytest.raises(TypeError, match="indices must be integers"):
        net["0"]


def test_reference_my_sequential_runs_a_shared_module_twice():
    shared = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    assert torch.allclose(ref.MySequential(shared, nn.Tanh(), shared)(x), shared(torch.tanh(shared(x))))


@pytest.mark.parametrize("task", ["type", "to", "cls.v2", ""])
def test_reference_task_heads_rejects_names_module_dict_cannot_hold(task):
    with pytest.raises(ValueError, match=f"task name {task!r} cannot be a key of nn.ModuleDict"):
        ref.TaskHeads(4, 8, {"digit": 10, task: 2})


def test_reference_multitask_net_is_deterministic_in_eval_and_drops_in_training():
    net = ref.MultiTaskNet(6, 8, 2, {"a": 3}, p=0.5)
    x = torch.randn(4, 6)
    net.eval()
    assert torch.equal(net(x, "a"), net(x, "a"))
    net.train()
    assert not torch.equal(net(x, "a"), net(x, "a"))
