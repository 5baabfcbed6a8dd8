"""Chapter 1 checkers: defining models with nn.Module and its containers."""

from __future__ import annotations

from collections import OrderedDict
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
    # Structure only: the output is compared with the learner's own layers, so nothing is loaded into the
    # network (build_mlp may return an object that the learner still holds) and nothing needs a deep copy.
    expect_same_keys(net, ref.build_mlp(_SIZES), f"build_mlp({_SIZES})")
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
    # The checker built net itself, so it may change it: no deep copy, which would fail on correct modules
    # holding attributes that copy.deepcopy cannot handle (a dict_keys view, a generator).
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
    for tasks in ({"colour-v2": 3, "3d": 2}, {"Type": 2, "heads": 3}):
        build(TaskHeads, f"TaskHeads(8, 16, {tasks})", 8, 16, tasks)
    for bad in ("type", "to", "cls.v2", ""):
        tasks = {"digit": 10, bad: 3}
        error = expect_raises(
            ValueError,
            f"calling TaskHeads(8, 16, {tasks})",
            TaskHeads,
            8,
            16,
            tasks,
            hint="nn.ModuleDict refuses some keys with a KeyError (an existing attribute such as 'type' or 'to', "
            "a name with a dot, the empty string): catch it in __init__ and raise ValueError naming the task.",
        )
        expect(
            bad in str(error),
            f"TaskHeads(8, 16, {tasks}) raised ValueError({str(error)!r}); its message must name the task {bad!r}.",
            'raise ValueError(f"task name {task!r} cannot be a key of nn.ModuleDict: ...") from None',
        )
    return (
        "TaskHeads shares its trunk, keeps one registered head per task, names the known tasks on a typo, and "
        "rejects task names that nn.ModuleDict cannot hold."
    )


check_task_heads = make_check("ch1.task_heads")


# --- ch1.my_sequential --------------------------------------------------------------------------------


def _learner_call(doing: str, func: Any, hint: str | None) -> Any:
    """Run learner code in a step, adding ``hint`` when it raises."""
    try:
        with step(doing):
            return func()
    except Fail as failure:
        raise Fail(failure.message, failure.hint or hint) from None


def _expect_keys(net: nn.Module, call: str, expected: list[str]) -> None:
    keys = _learner_call(f"calling {call}.state_dict()", net.state_dict, None)
    keys = list(keys)
    if not keys:
        plain = [n for n, v in vars(net).items() if isinstance(v, list | tuple | dict) and not n.startswith("_")]
        where = f" (the modules sit in the plain attribute {plain[0]})" if plain else ""
        raise Fail(
            f"{call} registers no modules: its state dict is empty{where}.",
            "Register each module on the MySequential itself: self.add_module(name, module).",
        )
    if keys == expected:
        return
    nested = all("." in key[: key.rfind(".")] for key in keys)
    hint = (
        "Register each module on the MySequential itself (self.add_module('0', module)), not inside a container "
        "attribute: its name becomes the first part of the key."
        if nested
        else "Name the i-th module str(i), or use the OrderedDict's names."
    )
    raise Fail(f"The state dict keys of {call} are {', '.join(keys)}; expected {', '.join(expected)}.", hint)


def _expect_indexing(net: nn.Module, modules: list[nn.Module], call: str) -> None:
    n = len(modules)
    length = _learner_call(f"calling len({call})", lambda: len(net), "Define __len__(self) -> int.")
    expect(length == n, f"len({call}) is {length!r}; expected {n}.", "Return the number of modules added.")
    for index in (0, n - 1, -1, -n):
        got = _learner_call(
            f"indexing net[{index}] of {call}",
            lambda index=index: net[index],
            "Negative indices count from the end: index into list(self._modules.values()).",
        )
        expect(
            got is modules[index],
            f"net[{index}] of {call} must be the module passed at position {index % n} (got {describe(got)}).",
            "Return the module object itself, counting negative indices from the end.",
        )
    for index in (n, -n - 1):
        expect_raises(
            IndexError,
            f"indexing net[{index}] of {call}",
            lambda index=index: net[index],
            hint="Raise IndexError for an index outside -len(self) <= index < len(self), as a list does.",
        )


def _expect_runs_in_order(net: nn.Module, first: nn.Module, middle: nn.Module, last: nn.Module, call: str) -> None:
    """Compare net(x) with last(middle(first(x))), naming the usual mistakes; every module maps 4 -> 4 features."""
    x = _input(5, 4)
    with torch.no_grad():
        expected = last(middle(first(x)))
        backwards = first(middle(last(x)))
        once = middle(first(x))
        last_only = last(x)
    with step(f"calling {call} on a (5, 4) input"):
        output = net(x)
    if last is first:
        if matches(output, once):
            raise Fail(
                f"{call} runs the module passed twice only once.",
                "children() and named_children() list a shared module once: iterate over self._modules.values().",
            )
    elif matches(output, backwards):
        raise Fail(f"{call} runs its modules in reverse order.", "Run them in the order they were added.")
    if matches(output, last_only):
        raise Fail(
            f"{call} returns the last module applied to the input.",
            "Feed each module the previous module's output: x = module(x) in a loop.",
        )
    expect_close(output, expected, f"The output of {call}", "for module in self._modules.values(): x = module(x)")


@exercise("ch1.my_sequential", title="MySequential, built on add_module", names=["MySequential"], points=2)
def _check_my_sequential(MySequential: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(MySequential, "MySequential")
    for container in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
        expect(
            not issubclass(MySequential, container),
            f"MySequential derives from nn.{container.__name__}, which does the work for you.",
            "class MySequential(nn.Module): register each module with self.add_module(name, module).",
        )
    modules = [nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)]
    call = "MySequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))"
    net = build(MySequential, call, *modules)
    _expect_keys(net, call, ["0.weight", "0.bias", "2.weight", "2.bias"])
    n_params = len(list(net.parameters()))
    expect(n_params == 4, f"{call}.parameters() yields {n_params} tensors; expected 4.")
    _expect_indexing(net, modules, call)

    first, tanh, last = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)
    call = "MySequential(first, nn.Tanh(), last) with two Linear(4, 4)"
    net = build(MySequential, call, first, tanh, last)
    _expect_runs_in_order(net, first, tanh, last, call)

    shared = nn.Linear(4, 4)
    call = "MySequential(shared, nn.Tanh(), shared)"
    net = build(MySequential, call, shared, tanh, shared)
    length = _learner_call(f"calling len({call})", lambda: len(net), None)
    expect(
        length == 3,
        f"len({call}) is {length!r}; expected 3.",
        "children() lists a module passed twice only once: count the entries of self._modules.",
    )
    _expect_runs_in_order(net, shared, tanh, shared, call)

    named = OrderedDict([("fc1", nn.Linear(4, 4)), ("act", nn.ReLU()), ("fc2", nn.Linear(4, 4))])
    call = "MySequential(OrderedDict(fc1=..., act=..., fc2=...))"
    net = _learner_call(
        f"calling {call}",
        lambda: MySequential(named),
        "One OrderedDict argument: register each of its (name, module) pairs with self.add_module(name, module).",
    )
    _expect_keys(net, call, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])
    expect(
        getattr(net, "fc1", None) is named["fc1"],
        f"{call}.fc1 must be the module named fc1.",
        "add_module(name, module) makes the module an attribute too.",
    )
    _expect_indexing(net, list(named.values()), call)
    _expect_runs_in_order(net, named["fc1"], named["act"], named["fc2"], call)
    return "MySequential registers its modules (positional or named), indexes them like a list and runs them in order."


check_my_sequential = make_check("ch1.my_sequential")


# --- ch1.fix_bugs -------------------------------------------------------------------------------------

_MT_TASKS = {"topic": 4, "spam": 2}
_MT_CALL = f"MultiTaskNet(6, 8, 2, {_MT_TASKS}, p=0.5)"


def _multitask_outputs(net: nn.Module, x: torch.Tensor, what: str) -> dict[str, Any]:
    outputs = {}
    for task in _MT_TASKS:
        with step(f"calling {what}(x, {task!r}) on a (5, 6) input"):
            outputs[task] = net(x, task)
    return outputs


def _reference_multitask(p: float) -> nn.Module:
    reference = ref.MultiTaskNet(6, 8, 2, dict(_MT_TASKS), p=p)
    with torch.no_grad():
        reference.centre.normal_()  # a centre of zeros would hide a forward that forgets to subtract it
    return reference


def _materialize(net: nn.Module, x: torch.Tensor, call: str) -> None:
    """Run one dry run when the learner used a lazy layer (nn.LazyLinear is a fine answer for proj)."""
    lazy = [m for m in net.modules() if isinstance(m, nn.modules.lazy.LazyModuleMixin)]
    if any(m.has_uninitialized_params() for m in lazy):
        with step(f"running a dry run of {call} for its lazy layers"), torch.no_grad():
            was_training = net.training
            net.eval()(x, next(iter(_MT_TASKS)))
            net.train(was_training)


def _calm_net(MultiTaskNet: Any, reference: nn.Module, x: torch.Tensor) -> nn.Module:  # noqa: N803
    """The learner's network with p=0.0, holding the reference's weights."""
    call = f"MultiTaskNet(6, 8, 2, {_MT_TASKS}, p=0.0)"
    calm = build(MultiTaskNet, call, 6, 8, 2, dict(_MT_TASKS), p=0.0)
    _materialize(calm, x, call)
    load_reference_weights(calm, reference, call)
    return calm


@exercise("ch1.fix_bugs", title="Find and fix the bugs of BuggyMultiTaskNet", names=["MultiTaskNet"], points=2)
def _check_fix_bugs(MultiTaskNet: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(MultiTaskNet, "MultiTaskNet")
    net = build(MultiTaskNet, _MT_CALL, 6, 8, 2, dict(_MT_TASKS), p=0.5)
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, list | tuple):
        _expect_module_list(net, "blocks", "MultiTaskNet")  # names the plain-list bug
    expect(
        isinstance(blocks, nn.Module),
        f"MultiTaskNet.blocks must be a registered container, such as an nn.ModuleList (got {describe(blocks)}).",
        "self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))",
    )
    heads = getattr(net, "heads", None)
    if isinstance(heads, dict):
        raise Fail(
            "MultiTaskNet.heads is a plain dict, so the heads are not registered: parameters() misses them, "
            ".to() does not move them and state_dict() does not save them.",
            "self.heads = nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in tasks.items()})",
        )
    expect(
        isinstance(heads, nn.ModuleDict),
        f"MultiTaskNet.heads must be an nn.ModuleDict (got {describe(heads)}).",
        "self.heads = nn.ModuleDict({...})",
    )
    _expect_buffer(net, "centre", _MT_CALL)
    proj = getattr(net, "proj", None)
    expect(
        isinstance(proj, nn.Linear),
        f"{_MT_CALL} has no registered layer proj (got {describe(proj)}). A layer created inside forward gets new "
        "random weights on every call, and the optimizer never sees them.",
        "Create it once in __init__: self.proj = nn.Linear(in_features, hidden).",
    )
    x = _input(5, 6)
    _materialize(net, x, _MT_CALL)
    reference = _reference_multitask(p=0.5)
    expect_same_keys(net, reference, _MT_CALL, "Register centre, proj, blocks and heads, and nothing else.")
    load_reference_weights(net, reference, _MT_CALL)  # the checker built net: no copy needed
    with step("calling .eval() on the module"):
        net.eval()
    reference.eval()
    first = _multitask_outputs(net, x, "the module in eval mode")
    second = _multitask_outputs(net, x, "the module in eval mode")
    if not all(matches(first[t], second[t]) for t in _MT_TASKS if isinstance(second[t], torch.Tensor)):
        calm = _calm_net(MultiTaskNet, reference, x)
        with step("calling .eval() on the module"):
            calm.eval()
        a = _multitask_outputs(calm, x, "MultiTaskNet(..., p=0.0) in eval mode")
        b = _multitask_outputs(calm, x, "MultiTaskNet(..., p=0.0) in eval mode")
        if all(matches(a[t], b[t]) for t in _MT_TASKS if isinstance(b[t], torch.Tensor)):
            raise Fail(
                "In eval mode two calls on the same input give different outputs: dropout still drops.",
                "F.dropout(x, p) drops even in eval mode: pass training=self.training, or use nn.Dropout(p).",
            )
        raise Fail(
            "Two calls on the same input give different outputs even with p=0.0: forward still builds a layer "
            "(new random weights every call).",
            "Create every layer once in __init__ and only call it in forward.",
        )
    with torch.no_grad():
        expected = {task: reference(x, task) for task in _MT_TASKS}
    for task in _MT_TASKS:
        expect_close(
            first[task],
            expected[task],
            f"In eval mode, forward(x, {task!r})",
            "x - centre => proj => ReLU(block(x)) for each block => dropout => heads[task].",
        )
    with step("calling .train() on the module"):
        net.train()
    trained = _multitask_outputs(net, x, "the module in training mode")
    expect(
        not all(matches(trained[t], expected[t]) for t in _MT_TASKS),
        "In training mode the output equals eval mode's: dropout never drops.",
        "Keep the dropout after the blocks: nn.Dropout(p), or F.dropout(x, self.p, training=self.training).",
    )
    calm = _calm_net(MultiTaskNet, reference, x)
    with step("calling .train() on the module"):
        calm.train()
    untouched = _multitask_outputs(calm, x, "MultiTaskNet(..., p=0.0) in training mode")
    for task in _MT_TASKS:
        expect_close(
            untouched[task],
            expected[task],
            f"MultiTaskNet(..., p=0.0) in training mode, forward(x, {task!r})",
            "Dropout must use the p given to the constructor.",
        )
    _expect_buffer_follows_to(net, "centre")
    return "MultiTaskNet registers blocks, heads, centre and proj, and drops out in training mode only."


check_fix_bugs = make_check("ch1.fix_bugs")


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
