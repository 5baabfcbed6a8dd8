"""Chapter 3 checkers: modifying an existing model (a torchvision ResNet as the running example).

Every check works on fresh copies of two small torchvision ResNets built once per process, each with one
block per stage: one with BasicBlocks (pooled features 512 wide, like resnet18; a 1000-class ``fc``) and one
with Bottlenecks (2048 wide, like resnet50; 100 classes), which catches a width hard-coded as 512. The
learner's functions and classes are applied to these copies, never to anything the learner owns.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from course_utils.checking import Fail, describe, exercise, expect, make_check, step
from course_utils.compare import (
    build,
    count_parameters,
    expect_close,
    expect_function,
    expect_module_class,
    matches,
)
from course_utils.solutions import ch03_model_modification as ref

_IMAGE_SHAPE = (2, 3, 64, 64)  # big enough that layer4's output is 2x2, so "before pooling" is visible
_ACTIVATIONS = (nn.Softmax, nn.LogSoftmax, nn.Sigmoid, nn.ReLU)


# --- shared helpers -----------------------------------------------------------------------------------


@functools.cache
def _pristine(kind: str) -> ResNet:
    """A small torchvision ResNet, built once with a fixed seed. Never handed to learner code: copy it."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(3)
        # Built on the meta device and initialized once: ResNet's own __init__ initializes every weight twice,
        # and this build counts against the first check's time budget.
        with torch.device("meta"):
            if kind == "basic":
                net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1000)
            else:  # narrow 3x3 convolutions and 100 classes: only its 2048 pooled features matter here
                net = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16, num_classes=100)
        net.to_empty(device="cpu")
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            # Non-trivial BatchNorm statistics, so that a lost or re-initialized buffer shows in the outputs.
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return net.eval()


def _resnet(kind: str = "basic") -> ResNet:
    """A fresh copy of a small ResNet ("basic": 512 features like resnet18; "bottleneck": 2048 like resnet50)."""
    return copy.deepcopy(_pristine(kind))


def _describe_resnet(kind: str) -> str:
    return {"basic": "a ResNet with BasicBlocks (512 features)", "bottleneck": "a ResNet with Bottlenecks (2048)"}[kind]


def _image(batch: int = _IMAGE_SHAPE[0]) -> torch.Tensor:
    return torch.randn(batch, *_IMAGE_SHAPE[1:])


def _reference_outputs(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pooled features) of the pristine ResNet ``kind`` on ``x``."""
    with torch.no_grad():  # in eval mode and without gradients, a forward changes nothing in the model
        return ref.ResNetWithFeatures(_pristine(kind))(x)


def _short(value: Any) -> str:
    """A one-line description of a learner's module: nn.Linear(512, 7), Sequential(Linear, Softmax), a ResNet."""
    if isinstance(value, nn.Linear):
        return f"nn.Linear({value.in_features}, {value.out_features})"
    if isinstance(value, nn.Sequential | nn.ModuleList):
        parts = [type(child).__name__ for child in value.children()]
        shown = ", ".join(parts[:4]) + (", ..." if len(parts) > 4 else "")
        return f"{type(value).__name__}({shown})"
    if isinstance(value, nn.Module):
        if any(True for _ in value.children()):
            return f"a {type(value).__name__} model"
        text = repr(value).splitlines()[0]
        return text if len(text) <= 80 else text[:77] + "..."
    return describe(value)


def _activation_in(module: nn.Module) -> str | None:
    """The class name of the first activation inside ``module`` (a head must have none), or None."""
    for sub in module.modules():
        if isinstance(sub, _ACTIVATIONS):
            return type(sub).__name__
    return None


def _activation_hint(name: str) -> str:
    if name in ("Softmax", "LogSoftmax"):
        return (
            f"Remove the {name}: nn.CrossEntropyLoss applies log-softmax itself, and a softmax before it "
            "squashes the logits so that confident mistakes get almost no gradient. Apply softmax only when "
            "you want probabilities at inference time."
        )
    return f"Remove the {name}: a head outputs raw logits, which must be free to take any real value."


def _expect_no_activation(module: Any, what: str) -> None:
    """Fail if ``module`` is a container of layers with an activation inside: a head must return raw logits."""
    if isinstance(module, nn.Module) and not isinstance(module, nn.Linear):
        activation = _activation_in(module)
        if activation is not None:
            raise Fail(f"{what} contains a {activation}: {_short(module)}.", _activation_hint(activation))


@contextlib.contextmanager
def _learner_step(doing: str, hints: dict[str, str]) -> Iterator[None]:
    """Like :func:`step`, but give the hint ``hints[fragment]`` when the failure's message contains ``fragment``."""
    try:
        with step(doing):
            yield
    except Fail as failure:
        for fragment, hint in hints.items():
            if fragment in failure.message:
                raise Fail(failure.message, hint) from None
        raise


def _expect_pair(output: Any, call: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fail unless ``output`` is a (logits, features) pair of tensors."""
    if isinstance(output, dict):
        raise Fail(
            f"{call} returned a dict with keys {sorted(map(str, output))}; it must return a tuple (logits, features).",
            "Unpack it: return out['logits'], out['features'] (with your own keys).",
        )
    if isinstance(output, torch.Tensor):
        raise Fail(
            f"{call} returned a single tensor of shape {tuple(output.shape)}; it must return a tuple "
            f"(logits, features).",
            "End forward with: return logits, features",
        )
    expect(
        isinstance(output, tuple | list) and len(output) == 2,
        f"{call} must return a tuple (logits, features) (got {describe(output)}).",
        "End forward with: return logits, features",
    )
    logits, features = output
    for name, value in (("logits", logits), ("features", features)):
        expect(
            isinstance(value, torch.Tensor),
            f"The {name} returned by {call} must be a tensor (got {describe(value)}).",
            "End forward with: return logits, features",
        )
    return logits, features


# --- ch3.replace_head ---------------------------------------------------------------------------------


def _check_head_replaced(
    model: ResNet, result: Any, old_fc: nn.Linear, old_shape: tuple[int, int], call: str, num_classes: int
) -> nn.Linear:
    """Fail unless ``replace_head`` put a fresh Linear into ``model.fc`` and returned ``model``."""
    old_out, in_features = old_shape  # read before the learner's code ran: it may have changed old_fc
    expected = f"nn.Linear({in_features}, {num_classes})"
    if result is None:
        raise Fail(f"{call} returned None; it must return the model it changed.", "End the function with: return model")
    if result is not model:
        if isinstance(result, nn.Sequential) and any(part is model for part in result):
            raise Fail(
                f"{call} stacked a new layer after the model, so the old {old_out}-class fc still runs and the new "
                f"layer only sees its {old_out} logits.",
                f"Replace the last layer instead of adding one: model.fc = {expected}, then return model.",
            )
        if getattr(model, "fc", None) is old_fc:
            raise Fail(
                f"{call} returned a different object ({_short(result)}) and left the model it was given unchanged "
                f"(its fc still has {old_out} outputs).",
                "Change the model you were given (model.fc = ...) and return that same object: a copy or a newly "
                "built ResNet throws away the trained weights you want to fine-tune.",
            )
        raise Fail(
            f"{call} returned {_short(result)} instead of the model.",
            "Assign the new layer to model.fc, then return model (not the layer).",
        )
    fc = getattr(model, "fc", None)
    if fc is old_fc:
        if getattr(fc, "out_features", None) == num_classes:
            raise Fail(
                f"{call} changed fc.out_features to {num_classes}, but fc.weight still has shape "
                f"{tuple(fc.weight.shape)}, so the model still outputs {old_out} values.",
                f"Setting an attribute does not resize a layer: assign a new one, model.fc = {expected}.",
            )
        raise Fail(
            f"After {call}, model.fc is still the original {_short(old_fc)}.",
            f"Assign a new layer: model.fc = {expected}.",
        )
    _expect_no_activation(fc, f"After {call}, model.fc")
    expect(
        isinstance(fc, nn.Linear),
        f"After {call}, model.fc must be {expected} (got {_short(fc)}).",
        f"model.fc = {expected}",
    )
    if fc.in_features != in_features:
        hint = "Read the width from the model: nn.Linear(model.fc.in_features, num_classes)."
        if fc.in_features == 512:
            hint += " 512 is right for resnet18 and resnet34 only."
        raise Fail(
            f"After {call} on {_describe_resnet('bottleneck' if in_features == 2048 else 'basic')}, model.fc must "
            f"be {expected} (got {_short(fc)}).",
            hint,
        )
    expect(
        fc.out_features == num_classes,
        f"After {call}, model.fc must be {expected} (got {_short(fc)}).",
        "The new layer's out_features is num_classes.",
    )
    expect(
        fc.bias is not None,
        f"After {call}, model.fc has no bias; a fresh nn.Linear has one.",
        f"model.fc = {expected} (bias=True is the default).",
    )
    return fc


@exercise("ch3.replace_head", title="Replace a ResNet's classification head", names=["replace_head"], points=1)
def _check_replace_head(replace_head: Any) -> str:
    expect_function(replace_head, "replace_head", "replace_head(model, num_classes)")
    for kind, num_classes in (("basic", 7), ("bottleneck", 3)):
        model = _resnet(kind)
        old_fc = model.fc
        old_shape = tuple(old_fc.weight.shape)
        call = f"replace_head(resnet, {num_classes})"
        result = build(replace_head, call, model, num_classes)
        fc = _check_head_replaced(model, result, old_fc, old_shape, call, num_classes)
        pristine = _pristine(kind).state_dict()
        with step(f"reading the state dict of the model after {call}"):
            state = model.state_dict()
        changed = [
            key
            for key, value in pristine.items()
            if not key.startswith("fc.") and (key not in state or not torch.equal(state[key], value))
        ]
        expect(
            not changed,
            f"{call} also changed {changed[0] if changed else ''}: only fc may change.",
            "Do not rebuild or re-initialize the model: its backbone weights are what you fine-tune.",
        )
        if kind != "basic":
            continue  # the structure is what differs between ResNets; one forward is enough
        x = _image()
        with step(f"running the model returned by {call} on a {tuple(x.shape)} input"):
            output = model(x)
        expect(
            isinstance(output, torch.Tensor) and tuple(output.shape) == (x.shape[0], num_classes),
            f"After {call}, the model must output shape {(x.shape[0], num_classes)} (got {describe(output)}).",
        )
        with torch.no_grad():
            expected = nn.functional.linear(_reference_outputs(kind, x)[1], fc.weight, fc.bias)
        expect_close(output, expected, f"The output after {call}", "Change only model.fc; leave the rest as it is.")
    return "replace_head swaps in a fresh Linear(fc.in_features, num_classes), keeps the backbone, returns the model."


check_replace_head = make_check("ch3.replace_head")


# --- ch3.swap_modules ---------------------------------------------------------------------------------


class _Recorder:
    """A ``make_new`` for the checks: builds a replacement and remembers which old module it was built from."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.made: dict[int, nn.Module] = {}
        self.calls = 0

    def __call__(self, old: nn.Module) -> nn.Module:
        self.calls += 1
        new = self.factory(old)
        self.made[id(old)] = new
        return new


def _nested_model() -> nn.Module:
    """ReLUs at three depths, inside a ModuleList and a ModuleDict (structure only; never run)."""
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU())]),
        nn.ModuleDict({"out": nn.Sequential(nn.ReLU(), nn.Linear(8, 2))}),
    )


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def _check_swap(swap_modules: Any, model: nn.Module, old_type: type, factory: Any, what: str, new_what: str) -> None:
    """Run the learner's swap_modules on ``model`` and check every replacement and the count."""
    type_name = f"nn.{old_type.__name__}"
    call = f"swap_modules({what}, {type_name}, {new_what})"
    before = dict(model.named_modules())
    targets = [name for name, module in before.items() if name and isinstance(module, old_type)]
    recorder = _Recorder(factory)
    hints = {
        "recursed without end": "Do not look inside the module that make_new returned: here it wraps the old "
        "module, so you would find and replace it again, forever. Collect the names first, then replace.",
        "missing 1 required positional argument": "Call make_new with the module it replaces: make_new(old).",
    }
    with _learner_step(f"calling {call}", hints):
        count = swap_modules(model, old_type, recorder)

    dotted = [name for name, _ in model.named_children() if "." in name]
    if dotted:
        raise Fail(
            f"{call} added children with dotted names ({_listing(dotted)}) instead of replacing the nested "
            f"modules: setattr(model, '{dotted[0]}', new) creates a new attribute with that literal name.",
            "Use model.set_submodule(name, new), which follows the dots, or setattr on the parent module.",
        )
    replaced, wrong_new, kept = [], [], []
    for name in targets:
        with step(f"looking up {name} after {call}"):
            current = model.get_submodule(name) if _has_submodule(model, name) else None
        if current is before[name]:
            kept.append(name)
        elif id(before[name]) in recorder.made and current is recorder.made[id(before[name])]:
            replaced.append(name)
        else:
            wrong_new.append(name)
    if targets and not replaced and not wrong_new:
        if recorder.calls:
            raise Fail(
                f"{call} called make_new {recorder.calls} times but the model it was given still has all its "
                f"{len(targets)} {type_name} modules: it changed a copy.",
                "Change model in place (model.set_submodule(name, make_new(module))); do not deepcopy it.",
            )
        raise Fail(
            f"{call} replaced none of the {len(targets)} {type_name} modules ({_listing(targets)}).",
            "Walk model.named_modules(), keep the names whose module is an instance of old_type, then call "
            "model.set_submodule(name, make_new(module)) for each.",
        )
    if wrong_new:
        raise Fail(
            f"After {call}, {wrong_new[0]} holds a module that make_new did not build from the {type_name} "
            f"that was there.",
            "Pass each old module to make_new and put what it returns in that module's place.",
        )
    if kept:
        top_level = [name for name in targets if "." not in name]
        subclass = [name for name in kept if type(before[name]) is not old_type]
        if subclass:
            cls = type(before[subclass[0]]).__name__
            raise Fail(
                f"{call} missed {_listing(subclass)}: its class {cls} is a subclass of {type_name}, so it is an "
                f"instance of {type_name} too.",
                "Test with isinstance(module, old_type): `type(module) is old_type` misses subclasses.",
            )
        if replaced == top_level:
            raise Fail(
                f"{call} replaced only the top-level {type_name} modules ({len(replaced)} of {len(targets)}); "
                f"it left the nested ones, e.g. {_listing(kept)}.",
                "Recurse into each child, or walk model.named_modules(), which yields modules at every depth "
                "with dotted names such as 'layer1.0.bn1'.",
            )
        raise Fail(
            f"{call} left {len(kept)} of {len(targets)} {type_name} modules in place ({_listing(kept)}).",
            "Every module that is an instance of old_type must be replaced, at any depth.",
        )
    others = [name for name in before if name and not _under(name, targets)]
    changed = [
        name for name in others if not _has_submodule(model, name) or model.get_submodule(name) is not before[name]
    ]
    if changed:
        raise Fail(
            f"{call} also replaced {_listing(changed)}, which {'is' if len(changed) == 1 else 'are'} not {type_name}.",
            "Replace only the modules for which isinstance(module, old_type) is true.",
        )
    if count is None:
        raise Fail(
            f"{call} replaced the right modules but returned None; it must return how many it replaced "
            f"({len(targets)}).",
            "Count the replacements and return the count.",
        )
    expect(
        isinstance(count, int) and not isinstance(count, bool) and count == len(targets),
        f"{call} replaced {len(targets)} modules but returned {describe(count)}.",
        "Add 1 for each replacement (and, if you recurse, add what each recursive call returns); count nothing else.",
    )


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _group_norm(old: nn.Module) -> nn.Module:
    return nn.GroupNorm(8, old.num_features)


def _wrapped(old: nn.Module) -> nn.Module:
    return nn.Sequential(old, nn.Dropout(p=0.1))


def _lora_like(old: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Identity(), nn.Linear(old.in_features, old.out_features))


@exercise("ch3.swap_modules", title="Replace every module of a type", names=["swap_modules"], points=2)
def _check_swap_modules(swap_modules: Any) -> str:
    expect_function(swap_modules, "swap_modules", "swap_modules(model, old_type, make_new)")
    _check_swap(swap_modules, _resnet("basic"), nn.BatchNorm2d, _group_norm, "resnet", "to_group_norm")
    _check_swap(swap_modules, _nested_model(), nn.ReLU, _wrapped, "nested", "wrap_in_sequential")
    encoder = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16)
    _check_swap(swap_modules, encoder, nn.Linear, _lora_like, "encoder_layer", "to_adapter")
    _check_swap(swap_modules, _nested_model(), nn.Conv2d, _wrapped, "nested", "wrap_in_sequential")
    return (
        "swap_modules replaces every instance of old_type at any depth (subclasses too), in place, "
        "with make_new(old), and counts them."
    )


check_swap_modules = make_check("ch3.swap_modules")


# --- ch3.freeze_backbone ------------------------------------------------------------------------------


@exercise("ch3.freeze_backbone", title="Freeze a ResNet's backbone", names=["freeze_backbone"], points=1)
def _check_freeze_backbone(freeze_backbone: Any) -> str:
    expect_function(freeze_backbone, "freeze_backbone", "freeze_backbone(model)")
    model = _resnet("basic").train()
    old_fc = model.fc
    n_tensors = len(list(model.parameters()))
    call = "freeze_backbone(resnet)"
    result = build(freeze_backbone, call, model)

    if getattr(model, "fc", None) is not old_fc:
        raise Fail(
            f"{call} replaced model.fc; it must only switch gradients off.",
            "Leave the layers alone: call requires_grad_(False) on the model, then requires_grad_(True) on fc.",
        )
    parameters = dict(model.named_parameters())
    trainable = [name for name, p in parameters.items() if p.requires_grad]
    if len(trainable) == len(parameters):
        if not model.training:
            raise Fail(
                f"{call} put the model in eval mode but left all {n_tensors} parameter tensors trainable: eval() "
                f"changes how Dropout and BatchNorm behave, not which parameters get gradients.",
                "Switch gradients off with model.requires_grad_(False), then on again with "
                "model.fc.requires_grad_(True).",
            )
        raise Fail(
            f"After {call}, all {n_tensors} parameter tensors of the model still require grad.",
            "Change the model you were given, not a copy; torch.no_grad() only affects operations run inside it. "
            "Use model.requires_grad_(False), then model.fc.requires_grad_(True).",
        )
    head = [name for name in parameters if name.startswith("fc.")]
    frozen_head = [name for name in head if not parameters[name].requires_grad]
    if frozen_head:
        raise Fail(
            f"After {call}, {_listing(frozen_head)} {'does' if len(frozen_head) == 1 else 'do'} not require grad: "
            f"the head was frozen too, so nothing would learn.",
            "After model.requires_grad_(False), turn the head back on: model.fc.requires_grad_(True).",
        )
    left = [name for name in trainable if not name.startswith("fc.")]
    if left:
        if all(name.endswith(".bias") for name in left):
            hint = "Biases are parameters too (BatchNorm has one): freeze every parameter, not only the weights."
        else:
            hint = "Freeze every parameter (model.requires_grad_(False)), then unfreeze fc."
        raise Fail(f"After {call}, {len(left)} backbone parameter tensors still require grad ({_listing(left)}).", hint)
    with step(f"reading the state dict of the model after {call}"):
        state = model.state_dict()
    changed = [k for k, v in _pristine("basic").state_dict().items() if k in state and not torch.equal(state[k], v)]
    expect(
        not changed,
        f"{call} changed {_listing(changed)}; it must only change requires_grad.",
        "Do not re-initialize or modify any weight.",
    )
    expected = ["fc.weight", "fc.bias"]
    if result is None:
        raise Fail(
            f"{call} froze the right parameters but returned None; it must return the names of the trainable ones "
            f"({', '.join(expected)}).",
            "return [name for name, p in model.named_parameters() if p.requires_grad]",
        )
    if isinstance(result, list | tuple) and result and all(isinstance(item, torch.Tensor) for item in result):
        raise Fail(
            f"{call} returned {len(result)} tensors; it must return the parameters' names.",
            "Use model.named_parameters(), which yields (name, parameter) pairs.",
        )
    expect(
        isinstance(result, list | tuple) and all(isinstance(item, str) for item in result),
        f"{call} must return a list of parameter names (got {describe(result)}).",
        "return [name for name, p in model.named_parameters() if p.requires_grad]",
    )
    if sorted(result) == ["bias", "weight"]:
        raise Fail(
            f"{call} returned {list(result)}; name the parameters as model.named_parameters() does ({expected}).",
            "Iterate model.named_parameters(), not model.fc.named_parameters().",
        )
    expect(
        sorted(result) == sorted(expected),
        f"{call} returned {_listing(list(result))} ({len(result)} names); expected the trainable ones, "
        f"{', '.join(expected)}.",
        "return [name for name, p in model.named_parameters() if p.requires_grad]",
    )
    return "freeze_backbone turns off gradients for all but fc.weight and fc.bias, in place, and names those two."


check_freeze_backbone = make_check("ch3.freeze_backbone")


# --- ch3.extra_input ----------------------------------------------------------------------------------


_SHAPE_HINT = (
    "Your forward still runs the backbone's fc, or concatenates tensors of the wrong width: the backbone must "
    "return its pooled features (e.g. backbone.fc = nn.Identity()), and head reads those plus the extra inputs."
)


def _check_extra_head(net: nn.Module, call: str, in_features: int, n_logits: int, extra: int, classes: int) -> None:
    expected = f"nn.Linear({in_features + extra}, {classes})"
    head = getattr(net, "head", None)
    expect(
        head is not None,
        f"{call} has no attribute head.",
        f"self.head = nn.Linear(backbone.fc.in_features + extra_features, num_classes)  # here {expected}",
    )
    _expect_no_activation(head, f"{call}.head")
    expect(isinstance(head, nn.Linear), f"{call}.head must be {expected} (got {_short(head)}).")
    if head.in_features == n_logits + extra:
        raise Fail(
            f"{call}.head reads {head.in_features} inputs: the backbone's {n_logits} logits plus {extra} extra. It "
            f"must read the {in_features} pooled features plus {extra} extra ({expected}).",
            "The logits are scores for the backbone's old classes, computed by a layer you are replacing: "
            "concatenate the pooled features (backbone.fc.in_features wide) instead, and do not run backbone.fc.",
        )
    if head.in_features == in_features:
        raise Fail(
            f"{call}.head reads only the {in_features} image features; it must also read the {extra} extra "
            f"inputs ({expected}).",
            "in_features of head is backbone.fc.in_features + extra_features.",
        )
    if head.in_features != in_features + extra:
        hint = "Read the width from the backbone: backbone.fc.in_features + extra_features."
        if head.in_features == 512 + extra:
            hint += " 512 is right for resnet18 and resnet34 only."
        raise Fail(f"{call}.head must be {expected} (got {_short(head)}).", hint)
    expect(
        head.out_features == classes,
        f"{call}.head must be {expected} (got {_short(head)}).",
        "head's out_features is num_classes.",
    )


@exercise("ch3.extra_input", title="An extra input next to the image", names=["ResNetWithExtraInput"], points=2)
def _check_extra_input(ResNetWithExtraInput: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(ResNetWithExtraInput, "ResNetWithExtraInput")
    for kind, extra, classes in (("basic", 3, 5), ("bottleneck", 2, 4)):
        backbone = _resnet(kind)
        in_features, n_logits = backbone.fc.in_features, backbone.fc.out_features
        call = f"ResNetWithExtraInput(backbone, {extra}, {classes})"
        net = build(ResNetWithExtraInput, call, backbone, extra, classes)
        _check_extra_head(net, call, in_features, n_logits, extra, classes)
        head = net.head
        if kind != "basic":
            continue  # the head's width is what differs between ResNets; one forward is enough
        trunk = count_parameters(_pristine(kind)) - count_parameters(_pristine(kind).fc)
        expect(
            count_parameters(net) >= trunk + count_parameters(head),
            f"{call} has {count_parameters(net):,} parameters, fewer than the backbone's {trunk:,} plus the head's: "
            f"the backbone is not registered as a submodule.",
            "Assign it in __init__, after super().__init__(): self.backbone = backbone.",
        )
        with step(f"calling .eval() on {call}"):
            net.eval()
        image, extra_values = _image(), torch.randn(_IMAGE_SHAPE[0], extra)
        doing = f"calling forward(image, extra) with image {tuple(image.shape)} and extra {tuple(extra_values.shape)}"
        with _learner_step(
            doing,
            {
                "cannot be multiplied": _SHAPE_HINT,
                "must have same number of dimensions": (
                    "The pooled features are (N, C, 1, 1): flatten them to (N, C) before concatenating."
                ),
            },
        ):
            output = net(image, extra_values)
        expect(
            isinstance(output, torch.Tensor) and tuple(output.shape) == (image.shape[0], classes),
            f"forward(image, extra) of {call} must return logits of shape {(image.shape[0], classes)} "
            f"(got {describe(output)}).",
            "Return self.head(torch.cat([features, extra], dim=1)).",
        )
        features = _reference_outputs(kind, image)[1]
        with torch.no_grad():
            expected = nn.functional.linear(torch.cat([features, extra_values], dim=1), head.weight, head.bias)
            swapped = nn.functional.linear(torch.cat([extra_values, features], dim=1), head.weight, head.bias)
        if matches(output, expected.softmax(dim=1)):
            raise Fail(f"forward(image, extra) of {call} returns probabilities.", _activation_hint("Softmax"))
        if matches(output, swapped):
            raise Fail(
                f"forward(image, extra) of {call} concatenates extra before the image features.",
                "Concatenate the features first: torch.cat([features, extra], dim=1).",
            )
        expect_close(
            output,
            expected,
            f"The output of {call}",
            "features = the backbone's pooled, flattened features (N, C); "
            "logits = self.head(torch.cat([features, extra], dim=1)). Leave the backbone's weights as they are.",
        )
    return "ResNetWithExtraInput concatenates the pooled features (not the logits) with the extra input before head."


check_extra_input = make_check("ch3.extra_input")


# --- ch3.extra_output ---------------------------------------------------------------------------------


def _count_hooks(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


@exercise("ch3.extra_output", title="Return features with the logits", names=["ResNetWithFeatures"], points=2)
def _check_extra_output(ResNetWithFeatures: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(ResNetWithFeatures, "ResNetWithFeatures")
    backbone = _resnet("basic")
    fc, n_features, n_logits = backbone.fc, backbone.fc.in_features, backbone.fc.out_features
    call = "ResNetWithFeatures(backbone)"
    net = build(ResNetWithFeatures, call, backbone)
    changed = [name for name, module in _pristine("basic").named_modules() if not _has_submodule(backbone, name)]
    changed += [
        name
        for name, module in backbone.named_modules()
        if not _has_submodule(_pristine("basic"), name)
        or type(module) is not type(_pristine("basic").get_submodule(name))
    ]
    fc_replaced = getattr(backbone, "fc", None) is not fc
    if fc_replaced or changed:
        where = "fc" if fc_replaced else changed[0]
        raise Fail(
            f"{call} changed the backbone it was given (its {where} was replaced), so backbone(x) no longer "
            f"returns the same logits.",
            "Leave the backbone as it is: compute the features in forward (or record them with a forward hook on "
            "avgpool) and apply backbone.fc to them.",
        )
    conv1_calls = []
    backbone.conv1.register_forward_hook(lambda *args: conv1_calls.append(1))
    with step(f"calling .eval() on {call}"):
        net.eval()
    hooks_before = _count_hooks(net)
    for x in (_image(), torch.randn(1, 3, 32, 32)):
        batch = x.shape[0]
        conv1_calls.clear()
        doing = f"calling forward(x) with x of shape {tuple(x.shape)}"
        with _learner_step(
            doing, {"cannot be multiplied": "Flatten the pooled features before fc: torch.flatten(x, 1)."}
        ):
            output = net(x)
        logits, features = _expect_pair(output, f"forward(x) of {call}")
        expected_logits, expected_features = _reference_outputs("basic", x)
        if matches(logits, expected_features) and matches(features, expected_logits):
            raise Fail(
                f"forward(x) of {call} returns (features, logits); it must return (logits, features).",
                "return logits, features",
            )
        if matches(features, expected_logits) or (features.ndim == 2 and features.shape[1] == n_logits):
            raise Fail(
                f"The features returned by {call} have shape {tuple(features.shape)}: they are taken after fc. "
                f"They must be the {n_features} pooled features that fc reads, shape {tuple(expected_features.shape)}.",
                "Take them after avgpool and flatten, before fc (a forward hook on avgpool, or your own forward).",
            )
        if tuple(features.shape) == (batch, n_features, 1, 1):
            raise Fail(
                f"The features returned by {call} have shape {tuple(features.shape)}; flatten them to "
                f"{tuple(expected_features.shape)}.",
                "features = torch.flatten(pooled, 1)",
            )
        if features.ndim == 4 and features.shape[1] == n_features:
            raise Fail(
                f"The features returned by {call} have shape {tuple(features.shape)}: they are taken before pooling. "
                f"They must be the pooled features, shape {tuple(expected_features.shape)}.",
                "Apply backbone.avgpool, then torch.flatten(..., 1).",
            )
        expect_close(
            features,
            expected_features,
            f"The features returned by {call}",
            "features are the flattened output of backbone.avgpool: exactly what backbone.fc reads.",
        )
        if matches(logits, expected_logits.softmax(dim=1)):
            raise Fail(f"The logits returned by {call} are probabilities.", _activation_hint("Softmax"))
        expect_close(
            logits,
            expected_logits,
            f"The logits returned by {call}",
            "The logits must equal backbone(x): apply backbone.fc to the features.",
        )
        if len(conv1_calls) > 1:
            raise Fail(
                f"forward(x) of {call} ran the backbone {len(conv1_calls)} times per call.",
                "Run it once: compute the features, then logits = backbone.fc(features).",
            )
    hooks_after = _count_hooks(net)
    if hooks_after > hooks_before:
        raise Fail(
            f"Every call of forward(x) of {call} registers another hook ({hooks_before} before two calls, "
            f"{hooks_after} after): they pile up and each one runs on every later call.",
            "Register a hook once, in __init__, and keep its handle (or remove it with handle.remove()).",
        )
    return "ResNetWithFeatures returns (logits, features): logits equal backbone(x), features are what fc reads."


check_extra_output = make_check("ch3.extra_output")
