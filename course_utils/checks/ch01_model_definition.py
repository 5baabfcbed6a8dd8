"""Chapter 1 checkers: defining models with nn.Module and its containers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from course_utils.checking import Fail, describe, exercise, expect, expect_raises, make_check, step
from course_utils.compare import (
    build,
    expect_close,
    expect_function,
    expect_linear,
    expect_module_class,
    expect_same_keys,
    learner_copy,
    load_reference_weights,
    matches,
)
from course_utils.solutions import ch01_model_definition as ref

_SIZES = [8, 16, 16, 4]


def _input(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def _diagnose_mlp(output: Any, layers: list[nn.Linear], x: torch.Tensor, what: str) -> None:
    """Compare an MLP's output with the reference and with the usual mistakes, and name the one made."""
    with torch.no_grad():
        h = x
        for layer in layers[:-1]:
            h = torch.relu(layer(h))
        expected = layers[-1](h)
        no_relu = x
        for layer in layers:
            no_relu = layer(no_relu)
    if matches(output, torch.relu(expected)):
        raise Fail(
            f"{what} applies ReLU after the last layer.",
            "The last Linear outputs logits: return them without an activation.",
        )
    if matches(output, no_relu):
        raise Fail(f"{what} has no ReLU between the Linear layers.", "Apply torch.relu after every layer but the last.")
    expect_close(output, expected, what, "Run the layers in order, ReLU after each one but the last.")


# --- ch1.build_mlp ------------------------------------------------------------------------------------


def _expected_names(n_layers: int) -> list[str]:
    names = []
    for i in range(1, n_layers + 1):
        names.append(f"fc{i}")
        if i < n_layers:
            names.append(f"relu{i}")
    return names


def _naming_hint(names: list[str], expected: list[str]) -> str:
    if names and names[-1].startswith("relu"):
        return "No ReLU after the last Linear: the network must output raw logits."
    if any(name in ("fc0", "relu0") for name in names):
        return "Number the layers from 1: fc1, relu1, fc2, ..."
    if len(names) < len(expected):
        return "Put a ReLU after every Linear except the last."
    return "Name the i-th Linear fc{i} and the ReLU after it relu{i}."


@exercise("ch1.build_mlp", title="An MLP in nn.Sequential with named layers", names=["build_mlp"], points=1)
def _check_build_mlp(build_mlp: Any) -> str:
    expect_function(build_mlp, "build_mlp", "build_mlp(sizes)")
    net = build(build_mlp, "build_mlp([784, 256, 10])", [784, 256, 10])
    expect(
        isinstance(net, nn.Sequential),
        f"build_mlp([784, 256, 10]) must return an nn.Sequential (got {describe(net)}).",
        "Collect the layers in an OrderedDict, then return nn.Sequential(that_dict).",
    )
    for sizes in ([784, 256, 10], _SIZES):
        net = build(build_mlp, f"build_mlp({sizes})", sizes)
        names = [name for name, _ in net.named_children()]
        expected = _expected_names(len(sizes) - 1)
        if names == [str(i) for i in range(len(names))]:
            raise Fail(
                f"The layers of build_mlp({sizes}) have no names ({', '.join(names)}); expected {', '.join(expected)}.",
                "Pass an OrderedDict of name -> layer to nn.Sequential to name the layers.",
            )
        expect(
            names == expected,
            f"The layers of build_mlp({sizes}) are named {', '.join(names)}; expected {', '.join(expected)}.",
            _naming_hint(names, expected),
        )
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            expect_linear(getattr(net, f"fc{i}"), n_in, n_out, f"fc{i} of build_mlp({sizes})")
            if i < len(sizes) - 1:
                relu = getattr(net, f"relu{i}")
                expect(
                    isinstance(relu, nn.ReLU),
                    f"relu{i} of build_mlp({sizes}) must be nn.ReLU() (got {type(relu).__name__}).",
                )
    net = learner_copy(net, "the network")
    load_reference_weights(net, ref.build_mlp(_SIZES), f"build_mlp({_SIZES})")
    x = _input(5, _SIZES[0])
    with step(f"running build_mlp({_SIZES}) on a (5, 8) input"):
        output = net(x)
    _diagnose_mlp(output, [net.fc1, net.fc2, net.fc3], x, f"The output of build_mlp({_SIZES})")
    for sizes in ([10], []):
        expect_raises(
            ValueError,
            f"calling build_mlp({sizes})",
            build_mlp,
            sizes,
            hint="Check len(sizes) < 2 first and raise ValueError with a sentence that says why.",
        )
    return "build_mlp names its layers fc1, relu1, fc2, ..., computes the reference MLP, and rejects short lists."


check_build_mlp = make_check("ch1.build_mlp")


# --- ch1.mlp_stack ------------------------------------------------------------------------------------


def _expect_module_list(net: nn.Module, attribute: str, cls_name: str) -> nn.ModuleList:
    layers = getattr(net, attribute, None)
    expect(
        layers is not None,
        f"{cls_name} has no attribute {attribute}.",
        f"Assign self.{attribute} = nn.ModuleList(...).",
    )
    if isinstance(layers, list | tuple):
        raise Fail(
            f"{cls_name}.{attribute} is a plain Python {type(layers).__name__}, so its layers are not registered: "
            f"parameters() misses them, .to() does not move them and state_dict() does not save them.",
            f"Wrap them: self.{attribute} = nn.ModuleList([...]).",
        )
    expect(
        isinstance(layers, nn.ModuleList),
        f"{cls_name}.{attribute} must be an nn.ModuleList (got {describe(layers)}).",
        f"Assign self.{attribute} = nn.ModuleList([...]).",
    )
    return layers


@exercise("ch1.mlp_stack", title="Layers in an nn.ModuleList", names=["MLPStack"], points=1)
def _check_mlp_stack(MLPStack: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(MLPStack, "MLPStack")
    net = build(MLPStack, f"MLPStack({_SIZES})", _SIZES)
    layers = _expect_module_list(net, "layers", "MLPStack")
    expect(
        len(layers) == len(_SIZES) - 1,
        f"MLPStack({_SIZES}).layers holds {len(layers)} modules; expected {len(_SIZES) - 1} Linear layers.",
        "Keep only the Linear layers in the list; apply ReLU in forward.",
    )
    for i, (n_in, n_out) in enumerate(zip(_SIZES[:-1], _SIZES[1:], strict=True)):
        expect_linear(layers[i], n_in, n_out, f"layers[{i}] of MLPStack({_SIZES})")
    reference = ref.MLPStack(_SIZES)
    expect_same_keys(
        net, reference, f"MLPStack({_SIZES})", "Register the Linear layers once, in self.layers, and nothing else."
    )
    net = learner_copy(net, "the network")
    load_reference_weights(net, reference, f"MLPStack({_SIZES})")
    x = _input(5, _SIZES[0])
    with step(f"running MLPStack({_SIZES}) on a (5, 8) input"):
        output = net(x)
    _diagnose_mlp(output, list(reference.layers), x, f"The output of MLPStack({_SIZES})")
    return "MLPStack registers its layers in an nn.ModuleList (keys layers.0.weight, ...) and computes the reference."


check_mlp_stack = make_check("ch1.mlp_stack")


# --- ch1.task_heads -----------------------------------------------------------------------------------

_TASKS = {"digit": 10, "parity": 2}


@exercise("ch1.task_heads", title="Task heads in an nn.ModuleDict", names=["TaskHeads"], points=2)
def _check_task_heads(TaskHeads: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(TaskHeads, "TaskHeads")
    call = f"TaskHeads(8, 16, {_TASKS})"
    net = build(TaskHeads, call, 8, 16, dict(_TASKS))
    trunk = getattr(net, "trunk", None)
    expect(
        isinstance(trunk, nn.Sequential),
        f"{call}.trunk must be an nn.Sequential (got {describe(trunk)}).",
        "self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())",
    )
    expect(
        len(trunk) == 2 and isinstance(trunk[-1], nn.ReLU),
        f"{call}.trunk must be Linear then ReLU (got {len(trunk)} modules: "
        f"{', '.join(type(m).__name__ for m in trunk)}).",
        "self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())",
    )
    expect_linear(trunk[0], 8, 16, f"trunk[0] of {call}")
    heads = getattr(net, "heads", None)
    if isinstance(heads, dict):
        raise Fail(
            f"{call}.heads is a plain dict, so the heads are not registered: parameters() misses them, "
            f".to() does not move them and state_dict() does not save them.",
            "Use nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in tasks.items()}).",
        )
    expect(
        isinstance(heads, nn.ModuleDict),
        f"{call}.heads must be an nn.ModuleDict (got {describe(heads)}).",
        "Use nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in tasks.items()}).",
    )
    expect(
        sorted(heads.keys()) == sorted(_TASKS),
        f"{call}.heads has keys {sorted(heads.keys())}; expected {sorted(_TASKS)}.",
        "Use the task names as the ModuleDict's keys.",
    )
    for task, n in _TASKS.items():
        expect_linear(heads[task], 16, n, f"heads[{task!r}] of {call}")
    reference = ref.TaskHeads(8, 16, dict(_TASKS))
    net = learner_copy(net, "the network")
    load_reference_weights(net, reference, call)
    x = _input(5, 8)
    for task in _TASKS:
        with step(f"calling forward(x, {task!r}) on a (5, 8) input"):
            output = net(x, task)
        with torch.no_grad():
            expected = reference(x, task)
        if matches(output, torch.relu(expected)):
            raise Fail(f"forward(x, {task!r}) applies ReLU to the logits.", "Return the head's output as it is.")
        expect_close(
            output,
            expected,
            f"forward(x, {task!r})",
            f"Return self.heads[task](self.trunk(x)): only the {task!r} head's logits.",
        )
    error = expect_raises(
        KeyError,
        "calling forward(x, 'colour') with an unknown task",
        net,
        x,
        "colour",
        hint="Check `task not in self.heads` first and raise KeyError with a message.",
    )
    text = str(error)
    expect(
        all(task in text for task in _TASKS),
        f"forward(x, 'colour') raised KeyError({text}); its message must name the known tasks (digit, parity).",
        "raise KeyError(f\"unknown task {task!r}; known tasks: {', '.join(self.heads.keys())}\")",
    )
    return "TaskHeads shares its trunk, keeps one registered head per task, and names the known tasks on a typo."


check_task_heads = make_check("ch1.task_heads")


# --- ch1.running_mean ---------------------------------------------------------------------------------


def _expect_buffer(net: nn.Module, name: str, call: str) -> torch.Tensor:
    """Fail unless ``name`` is a persistent buffer of ``net``; return it."""
    parameters = dict(net.named_parameters())
    if name in parameters:
        raise Fail(
            f"{call}.{name} is an nn.Parameter, so an optimizer would train it.",
            f"Use self.register_buffer({name!r}, tensor): a buffer is saved and moved but not trained.",
        )
    buffers = dict(net.named_buffers())
    if name not in buffers:
        value = getattr(net, name, None)
        found = "is missing" if value is None else f"is {describe(value)} kept as a plain attribute"
        raise Fail(
            f"{call}.{name} {found}, not a registered buffer: .to() would not move it and state_dict() "
            f"would not save it.",
            f"Use self.register_buffer({name!r}, tensor) in __init__.",
        )
    expect(
        name in net.state_dict(),
        f"{call}.{name} is a non-persistent buffer, so state_dict() does not save it.",
        f"Register it with persistent=True (the default): self.register_buffer({name!r}, tensor).",
    )
    return buffers[name]


def _expect_buffer_follows_to(net: nn.Module, name: str) -> None:
    """Fail unless the buffer ``name`` changes dtype with ``net.to(torch.float64)`` (as it would change device)."""
    with step("calling .to(torch.float64) on the module"):
        net.to(torch.float64)
    expect(
        getattr(net, name).dtype == torch.float64,
        f"{name} did not follow .to(torch.float64), so it would not follow .to('cuda') either.",
        f"Register it with self.register_buffer({name!r}, ...).",
    )


@exercise("ch1.running_mean", title="A running statistic in a buffer", names=["RunningMean"], points=2)
def _check_running_mean(RunningMean: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(RunningMean, "RunningMean")
    call = "RunningMean(4, momentum=0.2)"
    net = build(RunningMean, call, 4, momentum=0.2)
    buffer = _expect_buffer(net, "running_mean", call)
    expect(
        tuple(buffer.shape) == (4,) and bool((buffer == 0).all()),
        f"{call}.running_mean must start as zeros of shape (4,) (got {describe(buffer)} "
        f"with values {[round(v, 3) for v in buffer.flatten().tolist()[:4]]}).",
        "torch.zeros(num_features)",
    )
    expect(
        not buffer.requires_grad,
        f"{call}.running_mean requires grad; a running statistic must not.",
        "Register a plain tensor (torch.zeros(num_features)), not a Parameter or a tensor that requires grad.",
    )
    net = learner_copy(net, "the module")
    with step(f"calling {call}.train()"):
        net.train()
    momentum = 0.2
    expected_running = torch.zeros(4)
    for batch in (1, 2):
        x = (torch.randn(8, 4) * 2 + 3).requires_grad_()
        with step(f"calling the module in training mode (batch {batch})"):
            output = net(x)
        batch_mean = x.detach().mean(dim=0)
        if matches(output, x.detach()):
            raise Fail("In training mode the output must be x minus the batch mean (got x unchanged).")
        expect_close(
            output, x.detach() - batch_mean, "In training mode the output", "Return x - x.mean(dim=0) while training."
        )
        running = getattr(net, "running_mean", None)
        expect(
            isinstance(running, torch.Tensor) and "running_mean" in dict(net.named_buffers()),
            f"After a training step running_mean is {describe(running)}, no longer a registered buffer.",
            "Update it in place (self.running_mean.mul_(...).add_(...)) under torch.no_grad().",
        )
        expect(
            running.grad_fn is None and not running.requires_grad,
            "After a training step running_mean carries autograd history (it has a grad_fn).",
            "Update it under `with torch.no_grad():` (or from batch_mean.detach()).",
        )
        previous = expected_running.clone()
        expected_running = (1 - momentum) * previous + momentum * batch_mean
        if not matches(running, expected_running):
            if matches(running, previous):
                raise Fail(
                    "running_mean did not change during a training step.", "Update it in forward while training."
                )
            if matches(running, momentum * previous + (1 - momentum) * batch_mean):
                raise Fail(
                    "running_mean gives the new batch weight 1 - momentum; it must get weight momentum.",
                    "running_mean = (1 - momentum) * running_mean + momentum * batch_mean",
                )
            if matches(running, momentum * batch_mean):
                raise Fail(
                    "running_mean forgets its previous value on every step.",
                    "running_mean = (1 - momentum) * running_mean + momentum * batch_mean",
                )
            expect_close(
                running,
                expected_running,
                f"running_mean after training batch {batch}",
                "running_mean = (1 - momentum) * running_mean + momentum * batch_mean",
            )
    with step("calling .eval() on the module"):
        net.eval()
    x = torch.randn(8, 4) * 2 + 3
    with step("calling the module in eval mode"):
        output = net(x)
    if matches(output, x - x.mean(dim=0)):
        raise Fail(
            "In eval mode the output uses the batch mean; it must use running_mean.",
            "Branch on self.training in forward.",
        )
    expect_close(output, x - expected_running, "In eval mode the output", "Return x - self.running_mean in eval mode.")
    expect(
        matches(net.running_mean, expected_running),
        "running_mean changed in eval mode; it must only change while training.",
        "Update it only when self.training is True.",
    )
    _expect_buffer_follows_to(net, "running_mean")
    return "RunningMean keeps a persistent buffer, updates it without autograd history in training only."


check_running_mean = make_check("ch1.running_mean")


# --- ch1.fix_registration -----------------------------------------------------------------------------

_FIX_SIZES = [6, 12, 3]


@exercise("ch1.fix_registration", title="Register what BrokenNet forgot", names=["FixedNet"], points=1)
def _check_fix_registration(FixedNet: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(FixedNet, "FixedNet")
    call = f"FixedNet({_FIX_SIZES}, scale=0.25)"
    net = build(FixedNet, call, _FIX_SIZES, scale=0.25)
    layers = _expect_module_list(net, "layers", "FixedNet")
    expect(
        len(layers) == len(_FIX_SIZES) - 1,
        f"{call}.layers holds {len(layers)} modules; expected {len(_FIX_SIZES) - 1} Linear layers.",
    )
    scale = _expect_buffer(net, "scale", call)
    expect(
        scale.numel() == 1 and abs(float(scale) - 0.25) < 1e-6,
        f"{call}.scale must hold 0.25 (got {describe(scale)}).",
        "self.register_buffer('scale', torch.tensor(scale))",
    )
    default = build(FixedNet, f"FixedNet({_FIX_SIZES})", _FIX_SIZES)
    default_scale = getattr(default, "scale", None)
    expect(
        isinstance(default_scale, torch.Tensor) and abs(float(default_scale) - 0.5) < 1e-6,
        f"FixedNet({_FIX_SIZES}) must have scale 0.5 by default, like BrokenNet (got {describe(default_scale)}).",
        "Keep BrokenNet's constructor: def __init__(self, sizes, scale=0.5).",
    )
    reference = ref.FixedNet(_FIX_SIZES, scale=0.25)
    expect_same_keys(net, reference, call, "Keep exactly layers.0, layers.1, ... and the scale buffer.")
    net = learner_copy(net, "the network")
    load_reference_weights(net, reference, call)
    x = _input(5, _FIX_SIZES[0])
    with step(f"running {call} on a (5, 6) input"):
        output = net(x)
    with torch.no_grad():
        expected = reference(x)
    expect_close(output, expected, f"The output of {call}", "Keep BrokenNet's forward exactly; change only __init__.")
    _expect_buffer_follows_to(net, "scale")
    return "FixedNet registers its layers and its scale, so they are trained, moved and saved as they should be."


check_fix_registration = make_check("ch1.fix_registration")
