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
from torch.nn.modules.lazy import LazyModuleMixin
from torchvision.models import VGG, VisionTransformer
from torchvision.models.efficientnet import EfficientNet, MBConvConfig
from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from course_utils.checking import Fail, describe, exercise, expect, expect_raises, make_check, step
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

# Five torchvision classifier families, each the library's own class, built small: a full VGG's classifier alone
# has 120 M parameters. The ViT is in float64, so a head that ignores the model's dtype shows.
_HEADS = {  # family: (where its head is, input size)
    "ResNet": ("fc", 32),
    "VGG": ("classifier.6", 32),
    "MobileNetV3": ("classifier.3", 32),
    "EfficientNet": ("classifier.1", 32),
    "VisionTransformer": ("heads.head", 32),
}


def _build_classifier(family: str) -> nn.Module:
    if family == "ResNet":
        return _pristine("basic")  # shared with the other checks, never changed: everyone copies it
    if family == "VGG":
        # VGG's __init__ hard-codes a 25088 => 4096 => 4096 classifier: build it on the meta device (no memory),
        # give it narrow Linear layers in the same places, then allocate and initialize for real.
        with torch.device("meta"):
            features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
            net = VGG(features, num_classes=1000, init_weights=False)
            net.classifier[0] = nn.Linear(8 * 7 * 7, 48)
            net.classifier[3] = nn.Linear(48, 40)
            net.classifier[6] = nn.Linear(40, 1000)
        net.to_empty(device="cpu")
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return net
    if family == "MobileNetV3":
        setting = [
            InvertedResidualConfig(16, 3, 16, 16, True, "RE", 2, 1, 1.0),
            InvertedResidualConfig(16, 3, 72, 24, False, "HS", 2, 1, 1.0),
        ]
        return MobileNetV3(setting, last_channel=64, num_classes=1000)
    if family == "EfficientNet":
        setting = [MBConvConfig(1, 3, 1, 16, 16, 1), MBConvConfig(6, 3, 2, 16, 24, 1)]
        return EfficientNet(setting, dropout=0.2, num_classes=100)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    return vit.double()


@functools.cache
def _pristine_classifier(family: str) -> nn.Module:
    """A small torchvision classifier of ``family``, built once with a fixed seed. Copy it before use."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        return _build_classifier(family).eval()


def _keep_input(store: list[torch.Tensor]) -> Any:
    """A forward pre-hook that appends the module's first input to ``store``."""
    return lambda module, args: store.append(args[0])


def _head_input(family: str, x: torch.Tensor) -> torch.Tensor:
    """What the pristine model's head reads for the input ``x``."""
    model = _pristine_classifier(family)
    seen = []
    handle = model.get_submodule(_HEADS[family][0]).register_forward_pre_hook(_keep_input(seen))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


_FIND_HINT = (
    "Not every model calls its head fc: find it. The head is the last nn.Linear in model.named_modules(); "
    "replace it with model.set_submodule(name, new_layer)."
)


def _check_new_head(family: str, model: nn.Module, before: dict[str, nn.Module], result: Any, call: str) -> None:
    """Fail unless ``replace_head`` replaced ``family``'s head, and only that, and returned the model."""
    head_name, _ = _HEADS[family]
    old = before[head_name]
    num_classes = 7
    expected = f"nn.Linear({old.in_features}, {num_classes})"
    dotted = [name for name, _ in model.named_children() if "." in name]
    if dotted:
        raise Fail(
            f"{call} on a {family} added a child with the dotted name '{dotted[0]}' and left the real head in "
            f"place: setattr(model, '{dotted[0]}', layer) creates a new attribute with that literal name.",
            "Use model.set_submodule(name, layer), which follows the dots.",
        )
    if result is None:
        raise Fail(f"{call} returned None; it must return the model it changed.", "End the function with: return model")
    if result is not model:
        if isinstance(result, nn.Sequential) and any(part is model for part in result):
            raise Fail(
                f"{call} stacked a new layer after the {family}, so its old {old.out_features}-class head still "
                f"runs and the new layer only sees its {old.out_features} scores.",
                f"Replace the head instead of adding a layer: {head_name} becomes {expected}; then return model.",
            )
        if isinstance(result, nn.Linear):
            raise Fail(
                f"{call} returned {_short(result)} instead of the model.",
                "Put the new layer into the model, then return model (not the layer).",
            )
        raise Fail(
            f"{call} on a {family} returned a different object ({_short(result)}), not the model it was given.",
            "Change the model you were given and return that same object: a copy or a newly built model throws "
            "away the trained weights you want to fine-tune.",
        )
    head = model.get_submodule(head_name) if _has_submodule(model, head_name) else None
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if head is old:
        if old.out_features == num_classes:
            raise Fail(
                f"{call} changed {head_name}.out_features to {num_classes}, but its weight still has shape "
                f"{tuple(old.weight.shape)}, so the {family} still outputs {old.weight.shape[0]} values.",
                f"Setting an attribute does not resize a layer: put a new one in its place, {expected}.",
            )
        moved = [name for name, m in linears.items() if before.get(name) is not m]
        if moved and moved[0] in before:
            raise Fail(
                f"{call} on a {family} replaced {moved[0]}, which is not the head: the head is the last "
                f"nn.Linear, {head_name} ({_short(old)}).",
                "Take the last nn.Linear in model.named_modules(), not the first.",
            )
        if moved:
            raise Fail(
                f"{call} on a {family} added {moved[0]} ({_short(linears[moved[0]])}) after the old head, which "
                f"still runs: {head_name} is still {_short(old)}.",
                f"Replace {head_name} itself: it becomes {expected}.",
            )
        raise Fail(f"After {call} on a {family}, its head {head_name} is still {_short(old)}.", _FIND_HINT)
    if head is None:
        raise Fail(
            f"After {call} on a {family}, the model has no {head_name} any more: only the head may change, and "
            f"the layers around it must stay.",
            f"Replace just the last nn.Linear ({head_name}), e.g. with model.set_submodule('{head_name}', layer).",
        )
    _expect_no_activation(head, f"After {call} on a {family}, {head_name}")
    expect(
        isinstance(head, nn.Linear),
        f"After {call} on a {family}, {head_name} must be {expected} (got {_short(head)}).",
        f"{head_name} becomes {expected}.",
    )
    if head.in_features != old.in_features:
        hint = (
            f"Read the width from the old head: nn.Linear(old.in_features, num_classes). {head.in_features} is a "
            f"ResNet's width, not a {family}'s."
            if head.in_features in (512, 2048)
            else "Read the width from the old head: nn.Linear(old.in_features, num_classes)."
        )
        raise Fail(f"After {call} on a {family}, {head_name} must be {expected} (got {_short(head)}).", hint)
    expect(
        head.out_features == num_classes,
        f"After {call} on a {family}, {head_name} must be {expected} (got {_short(head)}).",
        "The new layer's out_features is num_classes.",
    )
    expect(
        (head.bias is None) == (old.bias is None),
        f"After {call} on a {family}, {head_name} has no bias; the old head had one."
        if head.bias is None
        else f"After {call} on a {family}, {head_name} has a bias; the old head had none.",
        "Keep the old head's bias setting: bias=old.bias is not None.",
    )
    if head.weight.dtype != old.weight.dtype or head.weight.device != old.weight.device:
        raise Fail(
            f"After {call} on a {family} in {str(old.weight.dtype).replace('torch.', '')}, the new head is in "
            f"{str(head.weight.dtype).replace('torch.', '')}: it does not match the model.",
            "Create the layer like the old one: nn.Linear(..., device=old.weight.device, dtype=old.weight.dtype).",
        )


@exercise("ch3.replace_head", title="Find and replace a classifier's head", names=["replace_head"], points=2)
def _check_replace_head(replace_head: Any) -> str:
    expect_function(replace_head, "replace_head", "replace_head(model, num_classes)")
    hints = {"has no attribute": _FIND_HINT, "object is not subscriptable": _FIND_HINT}
    for family, (head_name, size) in _HEADS.items():
        model = copy.deepcopy(_pristine_classifier(family))
        before = dict(model.named_modules())
        call = "replace_head(model, 7)"
        with _learner_step(f"calling {call} on a {family} model", hints):
            result = replace_head(model, 7)
        _check_new_head(family, model, before, result, call)
        head = model.get_submodule(head_name)
        with step(f"reading the state dict of the {family} after {call}"):
            state = model.state_dict()
        prefix = head_name + "."
        pristine_state = _pristine_classifier(family).state_dict()  # never handed to learner code, never changed
        changed = [
            key
            for key, value in pristine_state.items()
            if not key.startswith(prefix) and (key not in state or not torch.equal(state[key], value))
        ]
        added = [key for key in state if not key.startswith(prefix) and key not in pristine_state]
        expect(
            not changed and not added,
            f"{call} on a {family} also changed {(changed or added or [''])[0]}: only {head_name} may change.",
            "Do not rebuild or re-initialize the model: its other weights are what you fine-tune.",
        )
        dtype = head.weight.dtype
        x = torch.randn(2, 3, size, size, dtype=dtype)
        seen = []
        handle = head.register_forward_pre_hook(_keep_input(seen))
        try:
            with step(f"running the {family} returned by {call} on a {tuple(x.shape)} input"), torch.no_grad():
                output = model(x)
        finally:
            handle.remove()
        expect(
            isinstance(output, torch.Tensor) and tuple(output.shape) == (2, 7),
            f"After {call}, the {family} must output shape (2, 7) (got {describe(output)}).",
        )
        expect(len(seen) == 1, f"After {call}, the {family}'s new head {head_name} ran {len(seen)} times, not once.")
        expect_close(seen[0], _head_input(family, x), f"What the new head of the {family} reads", _FIND_HINT)
        with torch.no_grad():
            expected = nn.functional.linear(seen[0], head.weight, head.bias)
        expect_close(output, expected, f"The output of the {family} after {call}", "Change only the head.")
    families = ", ".join(_HEADS)
    return f"replace_head finds and replaces the head of {families} (dtype kept), and returns the model."


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
            f"{call} also replaced {_listing(changed)}, which is not {type_name}."
            if len(changed) == 1
            else f"{call} also replaced {_listing(changed)}, which are not {type_name}.",
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


# --- ch3.freeze_until ---------------------------------------------------------------------------------

_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4", "fc")
_STAGES = ("stem", *_RESNET_STAGES)  # "stem" is conv1 and bn1


def _stage_of(name: str) -> str:
    """The stage of a parameter or buffer: 'layer1.0.bn1.weight' -> 'layer1'; 'conv1.weight' -> 'stem'."""
    top = name.split(".", 1)[0]
    return top if top in _RESNET_STAGES else "stem"


_KEEP_EVAL_HINT = (
    "model.train() sets the mode of every submodule, so a BatchNorm put in eval() is back in training mode. Make "
    "the frozen ones stay in eval: replace them with torchvision.ops.FrozenBatchNorm2d, or give them a train() "
    "that always selects eval mode."
)
_GROUPS_HINT = (
    "Build the groups from the trainable stages: for each, {'params': [its weights with 2 or more dimensions]} and "
    "{'params': [its norm weights and biases], 'weight_decay': 0.0}."
)


def _check_requires_grad(model: nn.Module, stage: str, call: str) -> None:
    first = _STAGES.index(stage)
    params = dict(model.named_parameters())
    trainable = [name for name, p in params.items() if p.requires_grad]
    off = [name for name, p in params.items() if _STAGES.index(_stage_of(name)) >= first and not p.requires_grad]
    on = [name for name in trainable if _STAGES.index(_stage_of(name)) < first]
    if off:
        if {_stage_of(name) for name in off} == {stage}:
            raise Fail(
                f"After {call}, {_listing(off)} does not require grad: {stage} was frozen too. {stage} is the first "
                "stage that trains."
                if len(off) == 1
                else f"After {call}, {_listing(off)} do not require grad: {stage} was frozen too. {stage} is the first "
                "stage that trains.",
                f"Freeze the stages before {stage}, not {stage} itself (watch the end of your range or slice).",
            )
        raise Fail(
            f"After {call}, {_listing(off)} does not require grad; every parameter from {stage} on must train."
            if len(off) == 1
            else f"After {call}, {_listing(off)} do not require grad; every parameter from {stage} on must train.",
            f"Turn gradients on for {stage} and every stage after it: part.requires_grad_(True).",
        )
    if on:
        if all(_stage_of(name) == "stem" for name in on):
            hint = "The stem, conv1 and bn1, comes before layer1: freeze it too."
        elif all(name.endswith(".bias") for name in on):
            hint = "Biases are parameters too (BatchNorm has one): freeze every parameter, not only the weights."
        else:
            hint = "Call requires_grad_(False) on conv1, bn1 and every stage before the given one."
        raise Fail(
            f"After {call}, {len(on)} parameter tensors before {stage} still require grad ({_listing(on)}).", hint
        )


def _check_batchnorm_modes(model: nn.Module, stage: str, call: str) -> None:
    """After model.train(), frozen BatchNorm layers must keep their statistics and trainable ones update theirs."""
    pristine = _pristine("basic")
    before = {k: v for k, v in pristine.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    x = _image()
    seen: list[torch.Tensor] = []
    last_frozen = _RESNET_STAGES[_RESNET_STAGES.index(stage) - 1]
    with step(f"calling model.train() after {call}"):
        model.train()
    handle = model.get_submodule(last_frozen).register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        with step(f"running a training-mode forward after {call} and model.train()"), torch.no_grad():
            model(x)
    finally:
        handle.remove()
    with step(f"reading the state dict after {call}"):
        state = model.state_dict()
    first = _STAGES.index(stage)
    moved = [k for k, v in before.items() if _STAGES.index(_stage_of(k)) < first and not torch.equal(state[k], v)]
    if moved:
        raise Fail(
            f"After {call} and model.train(), a training-mode forward changed {_listing(moved)}: the frozen "
            f"BatchNorm layers went back to training mode and their statistics moved.",
            _KEEP_EVAL_HINT,
        )
    still = [k for k, v in before.items() if _STAGES.index(_stage_of(k)) >= first and torch.equal(state[k], v)]
    if still:
        raise Fail(
            f"After {call} and model.train(), a training-mode forward left {_listing(still)} unchanged: the "
            f"BatchNorm layers of the stages that train must train too.",
            "Keep only the frozen stages' BatchNorm layers in eval mode, not all of them.",
        )
    with torch.no_grad():
        expected = nn.Sequential(*[pristine.get_submodule(n) for n in ("conv1", "bn1", "relu", "maxpool")])(x)
        for name in _RESNET_STAGES[: _RESNET_STAGES.index(stage)]:
            expected = pristine.get_submodule(name)(expected)
    expect_close(
        seen[0] if seen else None,
        expected,
        f"The output of {last_frozen} in training mode after {call}",
        "The frozen stages must compute exactly what they computed in eval mode: same weights, same statistics.",
    )


def _check_groups(model: nn.Module, groups: Any, stage: str, call: str) -> None:
    names = {id(p): name for name, p in model.named_parameters()}
    if groups is None:
        raise Fail(
            f"{call} froze the right parameters but returned None; it must return the parameter groups.", _GROUPS_HINT
        )
    expect(
        isinstance(groups, list | tuple) and len(groups) > 0 and all(isinstance(g, dict) for g in groups),
        f"{call} must return a list of parameter-group dicts (got {describe(groups)}).",
        _GROUPS_HINT,
    )
    seen: dict[int, int] = {}
    last_stage = -1
    for index, group in enumerate(groups):
        expect("params" in group, f"Group {index} returned by {call} has no 'params' entry.", _GROUPS_HINT)
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        if not isinstance(params, list | tuple):
            raise Fail(
                f"The 'params' of group {index} returned by {call} is {describe(params)}, not a list: a generator "
                f"such as model.layer3.parameters() is used up by whoever reads it first, and then it is empty.",
                "Wrap it in list(...).",
            )
        stages = set()
        for p in params:
            if id(p) not in names:
                raise Fail(
                    f"Group {index} returned by {call} holds {describe(p)} that is not a parameter of the model.",
                    _GROUPS_HINT,
                )
            name = names[id(p)]
            if id(p) in seen:
                raise Fail(
                    f"{name} is in group {seen[id(p)]} and in group {index} returned by {call}: the optimizer "
                    f"refuses a parameter in two groups.",
                    "Put each parameter in exactly one group.",
                )
            seen[id(p)] = index
            if not p.requires_grad:
                raise Fail(
                    f"Group {index} returned by {call} holds {name}, which is frozen.",
                    "Give the optimizer only the parameters that train: those of the given stage and after.",
                )
            decay = group.get("weight_decay")
            if p.ndim < 2 and decay != 0:
                kind = "a bias" if name.endswith("bias") else "a norm weight"
                raise Fail(
                    f"{name} ({kind}) is in group {index} returned by {call}, whose weight decay is "
                    f"{'the optimizer default' if decay is None else decay}: norm weights and biases get none.",
                    "Put them (the 1-D parameters) in their own group with 'weight_decay': 0.0.",
                )
            if p.ndim >= 2 and decay == 0:
                raise Fail(
                    f"{name} is in group {index} returned by {call}, whose weight_decay is 0: only norm weights and "
                    f"biases skip weight decay.",
                    "Leave 'weight_decay' out of the groups of weights (the optimizer's default applies).",
                )
            stages.add(_stage_of(name))
        if len(stages) > 1:
            shown = " and ".join(sorted(stages, key=_STAGES.index))
            raise Fail(
                f"Group {index} returned by {call} mixes {shown}: each group must hold one stage's parameters, so "
                f"that each stage can get its own learning rate.",
                _GROUPS_HINT,
            )
        if stages:
            position = _STAGES.index(stages.pop())
            expect(
                position >= last_stage,
                f"The groups returned by {call} are not in the order of the stages (input to output).",
                "Walk the stages in order: the given one first, fc last.",
            )
            last_stage = position
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    expect(
        not missing,
        f"No group returned by {call} holds {_listing(missing)}: the optimizer would never update it."
        if len(missing) == 1
        else f"No group returned by {call} holds {_listing(missing)}: the optimizer would never update them.",
        _GROUPS_HINT,
    )
    with step(f"building torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05) from the groups of {call}"):
        torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)


@exercise("ch3.freeze_until", title="Freeze a ResNet up to a stage", names=["freeze_until"], points=3)
def _check_freeze_until(freeze_until: Any) -> str:
    expect_function(freeze_until, "freeze_until", "freeze_until(model, stage)")
    model = _resnet("basic")
    call = "freeze_until(resnet, 'layer3')"
    with step(f"calling {call}"):
        groups = freeze_until(model, "layer3")
    _check_requires_grad(model, "layer3", call)
    with step(f"reading the state dict after {call}"):
        state = model.state_dict()
    pristine = _pristine("basic").state_dict()
    # FrozenBatchNorm2d keeps everything but num_batches_tracked, which only matters to BatchNorm(momentum=None).
    lost = [k for k in pristine if k not in state and not k.endswith("num_batches_tracked")]
    changed = [k for k, v in pristine.items() if k in state and not torch.equal(state[k], v)]
    expect(
        not lost and not changed,
        f"{call} lost {_listing(lost)}; it may only change what trains."
        if lost
        else f"{call} changed {_listing(changed)}; it may only change what trains.",
        "Do not re-initialize, remove or modify any weight or statistic.",
    )
    _check_groups(model, groups, "layer3", call)
    _check_batchnorm_modes(model, "layer3", call)
    model = _resnet("basic")
    call = "freeze_until(resnet, 'layer1')"
    with step(f"calling {call}"):
        freeze_until(model, "layer1")
    _check_requires_grad(model, "layer1", call)
    expect_raises(
        ValueError,
        "calling freeze_until(resnet, 'layer5')",
        freeze_until,
        _resnet("basic"),
        "layer5",
        hint=f"Check stage first: raise ValueError unless it is one of {', '.join(_RESNET_STAGES)}.",
    )
    return (
        "freeze_until freezes the stem and the stages before the given one (their BatchNorm stays in eval after "
        "model.train()) and returns per-stage groups, norm weights and biases without weight decay."
    )


check_freeze_until = make_check("ch3.freeze_until")


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
        hint = (
            "Read the width from the backbone: backbone.fc.in_features + extra_features. 512 is right for resnet18 "
            "and resnet34 only."
            if head.in_features == 512 + extra
            else "Read the width from the backbone: backbone.fc.in_features + extra_features."
        )
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
        with step(f"calling .eval() on {call}"):
            net.eval()
        image, extra_values = _image(), torch.randn(_IMAGE_SHAPE[0], extra)
        doing = f"calling forward(image, extra) with image {tuple(image.shape)} and extra {tuple(extra_values.shape)}"
        forward_hints = {
            "cannot be multiplied": _SHAPE_HINT,
            "must have same number of dimensions": (
                "The pooled features are (N, C, 1, 1): flatten them to (N, C) before concatenating; an extra input "
                "of shape (N,) needs extra.unsqueeze(1) to become (N, 1)."
            ),
        }
        head = getattr(net, "head", None)
        if isinstance(head, LazyModuleMixin) and head.has_uninitialized_params():
            # An nn.LazyLinear head learns its in_features on the first call: make that call before reading them.
            with _learner_step(f"{doing} (a first call sets the lazy head's in_features)", forward_hints):
                with torch.no_grad():
                    net(image, extra_values)
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
        with _learner_step(doing, forward_hints):
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
    hook_counts = []
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
        hook_counts.append(_count_hooks(net))
    # Counted after each call, so that a hook registered once, lazily, in the first call is fine.
    if hook_counts[1] > hook_counts[0]:
        raise Fail(
            f"Every call of forward(x) of {call} registers another hook ({hook_counts[0]} after the first call, "
            f"{hook_counts[1]} after the second): they pile up and each one runs on every later call.",
            "Register a hook once, in __init__, and keep its handle (or remove it with handle.remove()).",
        )
    return "ResNetWithFeatures returns (logits, features): logits equal backbone(x), features are what fc reads."


check_extra_output = make_check("ch3.extra_output")


# --- ch3.bilinear_pool --------------------------------------------------------------------------------

_RESHAPE_HINT = (
    "torch.reshape takes the tensor and then the new shape: torch.reshape(x, (N, C, H * W)), or x.reshape(N, C, H * W)."
)


def _bilinear_variants(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What common mistakes return for ``x``, to name the mistake."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    b = (flat @ flat.transpose(1, 2) / (h * w)).reshape(n, c * c)
    normalize = nn.functional.normalize
    return {
        "no signed square root": normalize(b, dim=1),
        "no sign": normalize(torch.sqrt(b.abs() + 1e-5), dim=1),
        "no L2 normalization": torch.sign(b) * torch.sqrt(b.abs() + 1e-5),
        "normalized over the batch": normalize(torch.sign(b) * torch.sqrt(b.abs() + 1e-5), dim=0),
    }


_VARIANT_HINTS = {
    "no signed square root": "After the mean outer product, take the signed square root: sign(b) * sqrt(|b| + eps).",
    "no sign": "Keep the sign: torch.sign(b) * torch.sqrt(b.abs() + eps); sqrt(|b|) alone makes every entry positive.",
    "no L2 normalization": "End with nn.functional.normalize(b, dim=1): each example's vector gets length 1.",
    "normalized over the batch": "Normalize each example's vector: nn.functional.normalize(b, dim=1), not dim=0.",
}


def _check_bilinear_output(output: Any, x: torch.Tensor, call: str) -> None:
    n, c, h, w = x.shape
    expect(
        isinstance(output, torch.Tensor),
        f"{call} must return a tensor (got {describe(output)}).",
        "Return the normalized (N, C*C) tensor.",
    )
    shape = tuple(output.shape)
    if shape == (n, c, c):
        raise Fail(
            f"{call} returned shape {shape}; flatten each C x C matrix: expected {(n, c * c)}.", "b.reshape(N, C * C)"
        )
    if shape == (n, (h * w) ** 2) or shape == (n, h * w, h * w):
        raise Fail(
            f"{call} returned shape {shape}: products of positions (HW x HW), not of channels. Expected {(n, c * c)}.",
            "With x of shape (N, C, HW), the channel products are torch.bmm(x, x.transpose(1, 2)), shape (N, C, C).",
        )
    expect(shape == (n, c * c), f"{call} must return shape {(n, c * c)} (got {shape}).", "(N, C, H, W) => (N, C*C)")
    if torch.isnan(output).any():
        raise Fail(
            f"{call} returned NaN: the square root of negative entries.",
            "The mean outer product has negative entries; take torch.sign(b) * torch.sqrt(b.abs() + eps).",
        )
    for name, value in _bilinear_variants(x).items():
        if matches(output, value, atol=1e-4):
            raise Fail(f"{call} differs from bilinear pooling: {name}.", _VARIANT_HINTS[name])
    expect_close(
        output,
        ref.bilinear_pool(x),
        f"The output of {call}",
        "Flatten the positions without mixing them with channels (x.reshape(N, C, H * W)), then the mean outer "
        "product, signed square root, L2 normalization.",
        atol=1e-4,
    )


@exercise("ch3.bilinear_pool", title="Bilinear pooling", names=["bilinear_pool"], points=2)
def _check_bilinear_pool(bilinear_pool: Any) -> str:
    expect_function(bilinear_pool, "bilinear_pool", "bilinear_pool(features)")
    hints = {
        "positional argument": _RESHAPE_HINT,
        "view size is not compatible": "Use x.reshape or x.flatten(2): "
        "view needs dimensions it can merge without copying, and a transposed or permuted tensor may not have them.",
    }
    x = torch.randn(2, 6, 3, 4)  # C = 6 and H*W = 12 differ, so products of positions show in the shape
    original = x.clone()
    call = "bilinear_pool(x) with x of shape (2, 6, 3, 4)"
    with _learner_step(f"calling {call}", hints):
        output = bilinear_pool(x)
    expect(torch.equal(x, original), f"{call} changed x in place.", "Work on new tensors; never change the input.")
    _check_bilinear_output(output, x, call)
    # A transposed view is not contiguous: x.view(N, C, H * W) refuses it, reshape and flatten do not.
    x = torch.randn(3, 5, 4, 4).transpose(2, 3)
    call = "bilinear_pool(x) with a non-contiguous x of shape (3, 5, 4, 4)"
    with _learner_step(f"calling {call}", hints):
        output = bilinear_pool(x)
    _check_bilinear_output(output, x, call)
    # A channel that is all zero makes a row of the outer product zero, where sqrt has an infinite slope.
    x = torch.randn(2, 4, 3, 3)
    x[:, 0] = 0
    x.requires_grad_(True)
    call = "bilinear_pool(x) with a channel of zeros"
    with _learner_step(f"calling {call} and backpropagating", hints):
        bilinear_pool(x).sum().backward()
    expect(
        x.grad is not None and bool(torch.isfinite(x.grad).all()),
        f"The gradient of {call} is not finite (NaN or inf): the square root's slope is infinite at 0.",
        "Add a small eps inside the square root: torch.sqrt(b.abs() + 1e-5).",
    )
    return "bilinear_pool: mean outer product over positions, signed square root, L2 normalization, finite gradient."


check_bilinear_pool = make_check("ch3.bilinear_pool")
