"""Chapter 5 checkers: initializing parameters, measured.

Initialization is random, so these checkers measure. They fill tensors large enough, with a fixed seed, that the
sample standard deviation lies within about 0.5% of the true one (18,432 numbers; 0.1% for 400,000), and accept
4% (3% from 100,000 numbers on). The mistakes they name are further away than that: the wrong fan is 41% or
more off, tanh's gain for relu's 18%, the wrong leaky-ReLU gain 9%, and normal_(w, 0.01) gives std 1.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from course_utils.checking import Fail, describe, exercise, expect, expect_raises, make_check, step
from course_utils.compare import expect_function
from course_utils.i18n import N_
from course_utils.solutions.ch02_model_blocks import ResidualBlock

_FILL = 0.37
"""What the checkers write into every parameter first, so that 'left alone' and 'changed' are both visible."""
_GAIN_NAMES = {1.0: "linear's 1", math.sqrt(2.0): "relu's sqrt(2)", 5.0 / 3: "tanh's 5/3", 0.75: "selu's 3/4"}


def _std_and_mean(tensor: torch.Tensor) -> tuple[float, float]:
    values = tensor.detach().double()
    return values.std().item(), values.mean().item()


def _near(value: float, target: float, rel: float) -> bool:
    return abs(value - target) <= rel * abs(target)


def _normal_fraction(tensor: torch.Tensor) -> float:
    """The fraction of values within one standard deviation of the mean: 0.683 for a normal, 0.577 for a uniform."""
    values = tensor.detach().double().flatten()
    return ((values - values.mean()).abs() <= values.std()).double().mean().item()


def _expect_normal(tensor: torch.Tensor, what: str, hint: str) -> None:
    """Fail unless about 68% of the values lie within one std of the mean, as for a normal distribution."""
    fraction = _normal_fraction(tensor)
    expect(
        abs(fraction - 0.6827) <= 0.03,
        f"{what} has the right std but {fraction:.0%} of its values within one std of the mean; a normal "
        f"distribution has 68% (a uniform one 58%).",
        hint,
    )


def _fill_every_parameter(model: nn.Module) -> dict[str, torch.Tensor]:
    """Overwrite every parameter with ``_FILL``; return the parameters, by name, for identity checks."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(_FILL)
    return dict(model.named_parameters())


def _expect_same_parameters(model: nn.Module, before: dict[str, torch.Tensor], who: str) -> None:
    """Fail when a parameter was replaced by a new object, deleted, or stopped requiring grad."""
    after = dict(model.named_parameters())
    for name, parameter in before.items():
        now = after.get(name)
        expect(
            now is not None,
            f"After {who}, the model has no parameter {name} any more.",
            "Change the values of a parameter; never delete it or set it to a plain tensor.",
        )
        expect(
            now is parameter,
            f"After {who}, {name} is a new Parameter object: an optimizer created before would keep updating the "
            f"old one, which the model no longer uses.",
            "Fill the existing parameter in place (nn.init.*_ functions, or copy_ under torch.no_grad()).",
        )
        expect(
            now.requires_grad,
            f"After {who}, {name} no longer requires grad, so it would not be trained.",
            "Initialize the values only; leave requires_grad as it is.",
        )


# --- ch5.init_weights ---------------------------------------------------------------------------------


class _Head(nn.Module):
    """Modules that init_weights must leave alone, next to a Linear that it must initialize."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.norm = nn.LayerNorm(16)
        self.scale = nn.Parameter(torch.ones(16))
        self.fc = nn.Linear(512, 256)


def _init_weights_model() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(64, 128, 3, padding=1),
            bn=nn.BatchNorm2d(128),
            relu=nn.ReLU(),
            block=nn.Sequential(nn.Conv2d(128, 32, 3, bias=False), nn.BatchNorm2d(32)),
            head=_Head(),
        )
    )


def _expect_kaiming_fan_out(weight: torch.Tensor, where: str) -> None:
    """Fail unless a Conv2d weight looks like kaiming_normal_(mode='fan_out', nonlinearity='relu')."""
    out_channels, in_channels, *kernel = weight.shape
    receptive_field = math.prod(kernel)
    fan_out, fan_in = out_channels * receptive_field, in_channels * receptive_field
    expected = math.sqrt(2.0 / fan_out)
    std, mean = _std_and_mean(weight)
    hint = "nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')"
    if std == 0.0:
        found = f"all {weight.flatten()[0].item():.3g}"
        raise Fail(f"{where} was not initialized (its weight is {found}).", "Handle nn.Conv2d with " + hint + ".")
    if _near(std, math.sqrt(2.0 / fan_in), 0.04) and not _near(std, expected, 0.04):
        raise Fail(
            f"{where} has std {std:.4f}, which is Kaiming's with fan_in = {fan_in}; fan_out = {fan_out} was "
            f"asked (expected std {expected:.4f}).",
            "Pass mode='fan_out': " + hint + ".",
        )
    if not _near(std, expected, 0.04):
        ratio = std * math.sqrt(fan_out)
        gains = [name for gain, name in _GAIN_NAMES.items() if _near(ratio, gain, 0.04)]
        gain_text = f": the gain is {gains[0]}, not relu's sqrt(2)" if gains else ""
        raise Fail(
            f"{where} has std {std:.4f}, expected {expected:.4f} = sqrt(2 / fan_out){gain_text}.",
            "Pass nonlinearity='relu': " + hint + ".",
        )
    expect(
        abs(mean) <= 0.05 * expected,
        f"{where} has mean {mean:.4f}; Kaiming's distribution is centred on 0.",
        hint + ".",
    )
    _expect_normal(weight, where, "Use kaiming_normal_, not kaiming_uniform_.")


def _expect_zero_bias(bias: torch.Tensor | None, where: str, weight_hint: str) -> None:
    if bias is None:
        return
    values = bias.detach()
    if torch.equal(values, torch.full_like(values, _FILL)):
        raise Fail(f"The bias of {where} was left as it was; it must be zero.", "nn.init.zeros_(m.bias)")
    std, _ = _std_and_mean(values)
    if std > 0:
        raise Fail(
            f"The bias of {where} holds random values (std {std:.3g}); it must be zero.",
            f"Initialize the weight, not the bias: {weight_hint}, then nn.init.zeros_(m.bias).",
        )
    expect(bool((values == 0).all()), f"The bias of {where} must be zero (got {values.flatten()[0].item():.3g}).")


def _expect_linear_small_normal(linear: nn.Linear, where: str) -> None:
    weight = linear.weight.detach()
    hint = "nn.init.normal_(m.weight, mean=0.0, std=0.01)"
    std, mean = _std_and_mean(weight)
    if std == 0.0:
        value = weight.flatten()[0].item()
        bias_std = _std_and_mean(linear.bias)[0] if linear.bias is not None else 0.0
        if bias_std > 0:
            raise Fail(
                f"The weight of {where} is all {value:.3g} while its bias is random: you initialized the bias "
                f"instead of the weight.",
                f"{hint}, then nn.init.zeros_(m.bias).",
            )
        raise Fail(f"{where} was not initialized (its weight is all {value:.3g}).", "Handle nn.Linear with " + hint)
    if _near(mean, 0.01, 0.2) and _near(std, 1.0, 0.04):
        raise Fail(
            f"The weight of {where} has mean {mean:.4f} and std {std:.3f}: normal_(w, 0.01) sets the MEAN to 0.01 "
            f"and keeps std 1.",
            "Pass the std by keyword: " + hint + ".",
        )
    expect(
        _near(std, 0.01, 0.04),
        f"The weight of {where} has std {std:.4f}, expected 0.01.",
        hint + " (std, not variance: N(0, 0.01^2) has std 0.01).",
    )
    expect(abs(mean) <= 0.0005, f"The weight of {where} has mean {mean:.4f}, expected 0.", hint + ".")
    _expect_zero_bias(linear.bias, where, hint)


def _expect_batchnorm(bn: nn.BatchNorm2d, where: str) -> None:
    weight, bias = bn.weight.detach(), bn.bias.detach()
    if torch.equal(weight, torch.full_like(weight, _FILL)) and torch.equal(bias, torch.full_like(bias, _FILL)):
        raise Fail(
            f"{where} was left as it was (weight and bias still {_FILL}).",
            "Handle nn.BatchNorm2d: nn.init.ones_(m.weight) and nn.init.zeros_(m.bias).",
        )
    if bool((weight == 0).all()) and bool((bias == 1).all()):
        raise Fail(
            f"{where} got weight 0 and bias 1: the other way round.", "Weight (the scale) 1, bias (the shift) 0."
        )
    expect(
        bool((weight == 1).all()),
        f"The weight of {where} must be all 1 (got {weight.flatten()[0].item():.3g}).",
        "nn.init.ones_(m.weight)",
    )
    expect(
        bool((bias == 0).all()),
        f"The bias of {where} must be all 0 (got {bias.flatten()[0].item():.3g}).",
        "nn.init.zeros_(m.bias)",
    )


_LEFT_ALONE = {
    "head.embed.weight": "an nn.Embedding",
    "head.norm.weight": "an nn.LayerNorm",
    "head.norm.bias": "an nn.LayerNorm",
    "head.scale": "a Parameter of a custom module",
}


def _expect_left_alone(model: nn.Module) -> None:
    parameters = dict(model.named_parameters())
    for name, what in _LEFT_ALONE.items():
        values = parameters[name].detach()
        expect(
            torch.equal(values, torch.full_like(values, _FILL)),
            f"init_weights changed {name}, {what}; modules other than Conv2d, BatchNorm2d and Linear must be left "
            f"alone.",
            "Branch on the module's type with isinstance and do nothing for other types; do not loop over "
            "parameters() or test hasattr(module, 'weight').",
        )


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _apply_hint(failure: Fail, module: nn.Module | None) -> str | None:
    """A hint for the usual crashes of an init function, given the module it crashed on."""
    message = failure.message
    if "fewer than 2 dimensions" in message:
        if isinstance(module, _NORM_TYPES):
            return (
                "A norm layer's weight is 1-D (one scale per channel) and has no fan: branch on the module's type "
                "(isinstance(module, nn.Conv2d)) rather than hasattr(module, 'weight'), and give nn.BatchNorm2d "
                "ones_/zeros_."
            )
        return "A bias is 1-D and has no fan: pass module.weight to kaiming_normal_, and zero the bias."
    if "NoneType" in message:
        return "nn.Conv2d(..., bias=False) has bias None: check `if module.bias is not None` before zeroing it."
    if "leaf Variable" in message:
        return "Use the nn.init functions (they work under torch.no_grad()), or wrap in-place changes in it."
    if "no attribute 'zeros_'" in message:
        return (
            "Tensors have no zeros_() method: the in-place method is zero_() (under torch.no_grad()), the function "
            "nn.init.zeros_(module.bias)."
        )
    if re.search(r"object has no attribute '(weight|bias)'", message):
        return "Test the module's type first (isinstance(module, nn.Conv2d)); not every module has a weight."
    return failure.hint


@exercise("ch5.init_weights", title="An init function by module type", names=["init_weights"], points=2)
def _check_init_weights(init_weights: Any) -> str:
    expect_function(init_weights, "init_weights", "init_weights(module)")
    model = _init_weights_model()
    before = _fill_every_parameter(model)
    names = {module: name or "(the model)" for name, module in model.named_modules()}
    visiting: list[nn.Module] = []

    def init_and_remember(module: nn.Module) -> None:
        visiting.append(module)
        init_weights(module)

    try:
        with step("calling model.apply(init_weights) on a model with Conv2d, BatchNorm2d, Linear and others"):
            model.apply(init_and_remember)
    except Fail as failure:
        module = visiting[-1] if visiting else None
        message = (
            f"{failure.message} (on the {type(module).__name__} at {names.get(module, '?')})"
            if module is not None
            else failure.message
        )
        raise Fail(message, _apply_hint(failure, module)) from None
    _expect_same_parameters(model, before, "model.apply(init_weights)")
    _expect_left_alone(model)
    conv_hint = "nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')"
    _expect_kaiming_fan_out(model.conv.weight, "The Conv2d(64, 128, 3) at conv")
    _expect_zero_bias(model.conv.bias, "the Conv2d(64, 128, 3) at conv", conv_hint)
    _expect_kaiming_fan_out(model.block[0].weight, "The nested Conv2d(128, 32, 3, bias=False) at block.0")
    _expect_batchnorm(model.bn, "The BatchNorm2d(128) at bn")
    _expect_batchnorm(model.block[1], "The nested BatchNorm2d(32) at block.1")
    _expect_linear_small_normal(model.head.fc, "the Linear(512, 256) at head.fc")

    # init_weights(module) initializes that module only: model.apply visits each submodule once.
    inner = nn.Sequential(nn.Conv2d(16, 16, 3))
    _fill_every_parameter(inner)
    with step("calling init_weights(nn.Sequential(nn.Conv2d(16, 16, 3)))"):
        init_weights(inner)
    weight = inner[0].weight.detach()
    expect(
        torch.equal(weight, torch.full_like(weight, _FILL)),
        "init_weights(nn.Sequential(conv)) changed the Conv2d inside it: init_weights must initialize only the "
        "module it is given. model.apply(init_weights) calls it on every submodule already, so a loop inside "
        "initializes each module again and again.",
        "Remove the loop over module.modules() / children() from init_weights.",
    )
    return (
        "init_weights gives Conv2d Kaiming fan_out, BatchNorm2d 1 and 0, Linear N(0, 0.01^2), zero biases, "
        "and leaves every other module alone."
    )


check_init_weights = make_check("ch5.init_weights")


# --- ch5.kaiming_normal -------------------------------------------------------------------------------

_KAIMING_NAMES = ("kaiming_normal_", "kaiming_uniform_", "kaiming_normal", "kaiming_uniform")


@contextlib.contextmanager
def _spy_on_torch_kaiming() -> Iterator[list[str]]:
    """Record calls to torch.nn.init's Kaiming functions (they still work) while the block runs."""
    calls: list[str] = []
    originals = {name: getattr(nn.init, name) for name in _KAIMING_NAMES if hasattr(nn.init, name)}

    def spy(name: str, original: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)

        return recorded

    for name, original in originals.items():
        setattr(nn.init, name, spy(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(nn.init, name, original)


def _gain(nonlinearity: str, a: float) -> float:
    return math.sqrt(2.0 / (1 + a**2)) if nonlinearity == "leaky_relu" else nn.init.calculate_gain(nonlinearity)


def _kaiming_case(my_kaiming_normal_: Any, shape: tuple[int, ...], **kwargs: Any) -> None:
    """Call the learner's function on an empty tensor of ``shape`` and compare its statistics with the formula."""
    arguments = "".join(f", {key}={value!r}" for key, value in kwargs.items())
    call = f"my_kaiming_normal_(torch.empty{shape}{arguments})"
    mode = kwargs.get("mode", "fan_in")
    nonlinearity = kwargs.get("nonlinearity", "relu")
    gain = _gain(nonlinearity, kwargs.get("a", 0.0))
    receptive_field = math.prod(shape[2:])
    fans = {"fan_in": shape[1] * receptive_field, "fan_out": shape[0] * receptive_field}
    other_mode = "fan_out" if mode == "fan_in" else "fan_in"
    expected = gain / math.sqrt(fans[mode])
    tensor = torch.full(shape, _FILL)
    with step(f"calling {call}"):
        result = my_kaiming_normal_(tensor, **kwargs)
    filled = not torch.equal(tensor, torch.full(shape, _FILL))
    if result is not tensor:
        if isinstance(result, torch.Tensor) and not filled:
            raise Fail(
                f"{call} returned a new tensor and left the one it was given unchanged.",
                "Fill the given tensor in place (tensor.normal_(...)) and return that same tensor.",
            )
        raise Fail(
            f"{call} must return the tensor it filled (got {describe(result)}).",
            "End with `return tensor`, as the nn.init functions do, so calls can be chained.",
        )
    expect(filled, f"{call} left the tensor unchanged.", "Fill it in place: tensor.normal_(0.0, std).")
    std, mean = _std_and_mean(tensor)
    rel = 0.04 if tensor.numel() < 100_000 else 0.03
    if not _near(std, expected, rel):
        formula = f"{gain:.4g} / sqrt({mode} = {fans[mode]})"
        if _near(mean, expected, 0.2) and _near(std, 1.0, 0.04):
            raise Fail(
                f"{call} gave mean {mean:.4f} and std {std:.3f}: normal_(std) sets the MEAN to std and keeps std 1.",
                "tensor.normal_(0.0, std) or tensor.normal_(mean=0.0, std=std).",
            )
        if _near(std, expected**2, rel):
            raise Fail(
                f"{call} has std {std:.5f}, the square of the expected {expected:.4f}: the variance was used as std.",
                "std = gain / sqrt(fan); the variance is gain**2 / fan.",
            )
        if _near(std, gain / math.sqrt(fans[other_mode]), rel):
            raise Fail(
                f"{call} has std {std:.4f}, which is what {other_mode} = {fans[other_mode]} gives; {mode} was asked "
                f"(expected {expected:.4f} = {formula}).",
                "For a weight (out, in, *kernel): fan_in = in * prod(kernel), fan_out = out * prod(kernel).",
            )
        if receptive_field > 1 and any(_near(std, gain / math.sqrt(shape[i]), rel) for i in (0, 1)):
            raise Fail(
                f"{call} has std {std:.4f}: the fan leaves out the kernel's {receptive_field} positions "
                f"(expected {expected:.4f} = {formula}).",
                "Multiply the channel count by the kernel size: fan_in = in_channels * kH * kW.",
            )
        ratio = std * math.sqrt(fans[mode])
        gains = [name for value, name in _GAIN_NAMES.items() if _near(ratio, value, rel)]
        raise Fail(
            f"{call} has std {std:.4f}, which is {gains[0]} / sqrt({mode}); expected {expected:.4f} = {formula}."
            if gains
            else f"{call} has std {std:.4f}, expected {expected:.4f} = {formula}.",
            "The gain depends on the nonlinearity: nn.init.calculate_gain(nonlinearity, a); for leaky_relu it is "
            "sqrt(2 / (1 + a**2)).",
        )
    expect(
        abs(mean) <= 0.05 * expected,
        f"{call} has mean {mean:.4f}; it must be centred on 0.",
        "tensor.normal_(0.0, std)",
    )
    _expect_normal(tensor, call, "Draw from a normal distribution: tensor.normal_(0.0, std).")


@exercise("ch5.kaiming_normal", title="Kaiming normal by hand", names=["my_kaiming_normal_"], points=2)
def _check_kaiming_normal(my_kaiming_normal_: Any) -> str:
    expect_function(
        my_kaiming_normal_,
        "my_kaiming_normal_",
        'my_kaiming_normal_(tensor, mode="fan_in", nonlinearity="relu", a=0.0)',
    )
    with _spy_on_torch_kaiming() as calls:
        _kaiming_case(my_kaiming_normal_, (200, 800))
        expect(
            not calls,
            f"my_kaiming_normal_ calls torch.nn.init.{calls[0] if calls else ''}; the exercise is to compute the "
            f"std yourself.",
            "Compute fan and gain, then std = gain / sqrt(fan), and fill with tensor.normal_(0.0, std).",
        )
        _kaiming_case(my_kaiming_normal_, (200, 800), mode="fan_out")
        _kaiming_case(my_kaiming_normal_, (64, 32, 3, 3))
        _kaiming_case(my_kaiming_normal_, (64, 32, 3, 3), mode="fan_out")
        _kaiming_case(my_kaiming_normal_, (200, 800), nonlinearity="tanh")
        _kaiming_case(my_kaiming_normal_, (200, 800), nonlinearity="linear")
        _kaiming_case(my_kaiming_normal_, (400, 1000), nonlinearity="leaky_relu", a=0.5)
    parameter = nn.Parameter(torch.empty(128, 64))
    try:
        with step("calling my_kaiming_normal_(nn.Parameter(torch.empty(128, 64)))"):
            result = my_kaiming_normal_(parameter)
    except Fail as failure:
        hint = failure.hint
        if "leaf Variable" in failure.message:
            hint = "A Parameter requires grad: fill it inside `with torch.no_grad():`, as nn.init does."
        raise Fail(failure.message, hint) from None
    expect(
        result is parameter and isinstance(result, nn.Parameter) and result.requires_grad,
        f"my_kaiming_normal_ on an nn.Parameter must return that same Parameter (got {describe(result)}).",
        "Fill in place under torch.no_grad() and return the tensor you were given.",
    )
    return "my_kaiming_normal_ matches gain / sqrt(fan) for Linear and Conv weights, both modes and four gains."


check_kaiming_normal = make_check("ch5.kaiming_normal")


# --- ch5.zero_init_residual ---------------------------------------------------------------------------


def _residual_model() -> nn.Sequential:
    """Four ResidualBlocks at three depths (one nested in a Sequential in a Sequential), then torchvision's
    BasicBlock and two Bottlenecks (one with a projection shortcut), with BatchNorms around."""
    projection = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
            layer1=nn.Sequential(ResidualBlock(8, 8), ResidualBlock(8, 8)),
            layer2=nn.Sequential(ResidualBlock(8, 16, stride=2), nn.Sequential(ResidualBlock(16, 16))),
            layer3=nn.Sequential(BasicBlock(16, 16), Bottleneck(16, 4), Bottleneck(16, 8, 2, downsample=projection)),
            head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)),
        )
    )


def _last_norm_name(block: nn.Module) -> str | None:
    """The name of the BatchNorm that ends a residual block's branch, or None for any other module."""
    if isinstance(block, ResidualBlock | BasicBlock):
        return "bn2"
    if isinstance(block, Bottleneck):
        return "bn3"
    return None


def _is_filled(tensor: torch.Tensor) -> bool:
    return torch.equal(tensor.detach(), torch.full_like(tensor.detach(), _FILL))


def _is_zero(tensor: torch.Tensor) -> bool:
    return bool((tensor.detach() == 0).all())


_BLOCK_TYPES_HINT = (
    "Three block types: chapter 2's ResidualBlock and torchvision's BasicBlock end their branch with bn2, "
    "torchvision's Bottleneck (ResNet-50 and deeper) with bn3."
)


@exercise("ch5.zero_init_residual", title="Zero-init the last BN of residual blocks", names=["zero_init_residual"])
def _check_zero_init_residual(zero_init_residual: Any) -> str:
    expect_function(zero_init_residual, "zero_init_residual", "zero_init_residual(model)")
    model = _residual_model()
    before = _fill_every_parameter(model)
    blocks = {name: (type(m).__name__, _last_norm_name(m)) for name, m in model.named_modules() if _last_norm_name(m)}
    with step(
        "calling zero_init_residual(model) on a model with four ResidualBlocks, a BasicBlock and two Bottlenecks"
    ):
        count = zero_init_residual(model)
    _expect_same_parameters(model, before, "zero_init_residual(model)")
    parameters = dict(model.named_parameters())
    for name, (_, last) in blocks.items():
        weight, bias = parameters[f"{name}.{last}.weight"], parameters[f"{name}.{last}.bias"]
        if _is_filled(weight) and _is_zero(bias):
            raise Fail(
                f"zero_init_residual zeroed {name}.{last}.bias instead of {name}.{last}.weight.",
                f"The weight (gamma) scales the branch; with gamma = 0 the branch outputs beta = 0: "
                f"nn.init.zeros_(block.{last}.weight).",
            )
        conv = "conv3" if last == "bn3" else "conv2"
        if _is_filled(weight) and _is_zero(parameters[f"{name}.{conv}.weight"]):
            raise Fail(
                f"zero_init_residual zeroed {name}.{conv}.weight instead of {name}.{last}.weight.",
                "Zero the BatchNorm's weight: with the convolution zeroed, BatchNorm divides an all-zero map by "
                "sqrt(eps) and the first gradient that reaches the convolution is about 100 times too large.",
            )
    changed = [name for name, parameter in parameters.items() if not _is_filled(parameter)]
    expected = [f"{name}.{last}.weight" for name, (_, last) in blocks.items()]
    unexpected = [name for name in changed if name not in expected]
    if unexpected:
        first = unexpected[0]
        owner = next((b for b in blocks if first.startswith(b + ".")), None)
        why = "a BatchNorm outside the residual branches"
        hint = "Change only the last BatchNorm's weight of each residual block; leave every other parameter alone."
        if owner is not None and ".downsample." in first:
            why = "the shortcut's BatchNorm, not the last one of the residual branch"
            hint = (
                "In a block with a projection shortcut, the last BatchNorm in modules() order is downsample.1; "
                "take the branch's BatchNorm by name (block.bn2, or block.bn3 in a Bottleneck)."
            )
        elif owner is not None and blocks[owner][0] == "Bottleneck" and first == f"{owner}.bn2.weight":
            why = "the middle BatchNorm of a Bottleneck: its branch has three convolutions and ends with bn3"
            hint = _BLOCK_TYPES_HINT
        elif first.endswith(".bn1.weight"):
            why = "the first BatchNorm of the branch, not the last"
            hint = "Only the BatchNorm right before the addition starts at zero (bn2, or bn3 in a Bottleneck)."
        elif first.endswith(".bias") and owner is not None:
            why = "the shift of the last BatchNorm; only its weight (the scale) must be zeroed"
            hint = "nn.init.zeros_(block.bn2.weight) (bn3 in a Bottleneck) and nothing else."
        raise Fail(f"zero_init_residual changed {first}, {why}.", hint)
    for name, (kind, last) in blocks.items():
        if not _is_zero(parameters[f"{name}.{last}.weight"]):
            hint = (
                "Blocks nest inside Sequentials at any depth: visit them all with model.modules() (children() only "
                "sees the direct children)."
            )
            if kind != "ResidualBlock":
                hint = _BLOCK_TYPES_HINT + " Import them from torchvision.models.resnet."
            raise Fail(f"{name}.{last}.weight of the {kind} at {name} was not set to zero.", hint)
    expect(
        isinstance(count, numbers.Integral) and not isinstance(count, bool),
        f"zero_init_residual must return how many blocks it changed, an int (got {describe(count)}).",
        "Count the blocks as you go and return the count.",
    )
    expect(
        count == len(blocks),
        f"zero_init_residual returned {count}; the model has {len(blocks)} residual blocks.",
        "Add 1 for each residual block, not for each module or BatchNorm.",
    )
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    _fill_every_parameter(plain)
    with step("calling zero_init_residual on a model without residual blocks"):
        count = zero_init_residual(plain)
    expect(
        count == 0 and all(_is_filled(p) for p in plain.parameters()),
        f"On a model without residual blocks, zero_init_residual must change nothing and return 0 (got "
        f"{describe(count)}).",
        "Test each module's type with isinstance.",
    )
    return (
        "zero_init_residual zeroes the last BatchNorm of every residual branch (bn2 or bn3), at any depth, and "
        "nothing else."
    )


check_zero_init_residual = make_check("ch5.zero_init_residual")


# --- ch5.lsuv -----------------------------------------------------------------------------------------------

_LSUV_TOLERANCE = 0.1
"""How far from 1 a layer's output std on a fresh batch may be: fitting on 256 samples leaves a few per cent."""


class _Scaled(nn.Module):
    """A custom module in the middle of the LSUV model: its Linear is not a direct child of a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(512, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


def _lsuv_model() -> nn.Sequential:
    """Two convolutions and three Linears without normalization, one Linear inside a custom module."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 8, 3, padding=1),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            block=_Scaled(),
            fc2=nn.Linear(64, 64),
            relu3=nn.ReLU(),
            dropout=nn.Dropout(0.1),
            fc3=nn.Linear(64, 10),
        )
    )


def _lsuv_batch(seed: int) -> torch.Tensor:
    # Inputs with mean 0.5 and std 2: not standardized, so the first layer's scale must be found, not assumed.
    generator = torch.Generator().manual_seed(seed)
    return 0.5 + 2.0 * torch.randn(256, 3, 8, 8, generator=generator)


def _output_stds(model: nn.Module, layers: dict[str, nn.Module], batch: torch.Tensor) -> dict[str, float]:
    """Each layer's output std on ``batch``, in eval mode, recorded by hooks the checker removes again."""
    stds: dict[str, float] = {}

    def recorder(name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:  # returns None: the output stays as it is
            if name not in stds and isinstance(output, torch.Tensor):
                stds[name] = output.detach().std().item()

        return record

    handles = [layer.register_forward_hook(recorder(name)) for name, layer in layers.items()]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), step("running the model after lsuv_init_ on a fresh batch"):
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return stds


def _orthogonality_error(weight: torch.Tensor) -> float:
    """How far a (scaled) weight is from orthogonal rows (wide) or columns (tall), relative to its scale."""
    matrix = weight.detach().double().flatten(1)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    scale = gram.diagonal().mean()
    return ((gram / scale) - torch.eye(gram.shape[0], dtype=gram.dtype)).abs().max().item()


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@exercise("ch5.lsuv", title="LSUV: unit variance, layer by layer", names=["lsuv_init_"], points=2)
def _check_lsuv(lsuv_init_: Any) -> str:
    expect_function(lsuv_init_, "lsuv_init_", "lsuv_init_(model, batch, *, tol=0.02, max_iters=10)")
    model = _lsuv_model()
    model.train()
    model.dropout.eval()  # a mixed-mode model: lsuv_init_ must give every module its own mode back
    layers = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear | nn.Conv2d)}
    before = dict(model.named_parameters())
    modes = {name: module.training for name, module in model.named_modules()}
    hooks_before = _hook_count(model)
    with step("calling lsuv_init_(model, batch) on 2 Conv2d and 3 Linear layers"):
        result = lsuv_init_(model, _lsuv_batch(0))
    expect(
        result is model,
        f"lsuv_init_ must return the model it initialized (got {describe(result)}).",
        "End with `return model`.",
    )
    _expect_same_parameters(model, before, "lsuv_init_(model, batch)")
    left = _hook_count(model) - hooks_before
    expect(
        left == 0,
        f"lsuv_init_ left {left} hook(s) registered on the model: they would run on every later forward pass.",
        "Keep the handle that register_forward_hook returns and call handle.remove() when done (in a finally block).",
    )
    changed = [name for name, module in model.named_modules() if module.training != modes[name]]
    if changed:
        now = "eval" if not model.get_submodule(changed[0]).training else "train"
        raise Fail(
            f"lsuv_init_ changed the mode of {changed[0] or 'the model'} to {now}(); it must leave every module's "
            f"train/eval mode as it found it.",
            "Remember each module's .training before, and set module.training back afterwards (model.train(flag) "
            "sets every child too).",
        )
    output_hint = (
        "Divide the weight by the std of the layer's OUTPUT (a forward hook on the layer), not by its variance or "
        "its input's std, and repeat until it is within tol of 1."
    )
    for name, layer in layers.items():
        weight = layer.weight.detach()
        state = "not finite" if not bool(weight.isfinite().all()) else N_("about 0")
        expect(
            bool(weight.isfinite().all()) and bool(weight.abs().max() > 1e-6),
            f"After lsuv_init_ the weight of {name} is {state}: the rescaling ran away, as when each step divides "
            "by a std that the change does not move.",
            output_hint,
        )
        error = _orthogonality_error(layer.weight)
        expect(
            error <= 1e-3,
            f"The weight of {name} is not a scaled orthogonal matrix (largest error {error:.2f}): LSUV starts from "
            f"orthogonal weights.",
            "First nn.init.orthogonal_(layer.weight) for every layer, then rescale; scaling keeps it orthogonal.",
        )
    stds = _output_stds(model, layers, _lsuv_batch(1))
    for name in layers:
        std = stds.get(name, float("nan"))
        if not abs(std - 1.0) <= _LSUV_TOLERANCE:
            later = list(layers)[list(layers).index(name) :]
            hint = "Rescale one layer at a time, in forward order, re-running the batch after each change."
            if all(abs(stds[n] - 1.0) > _LSUV_TOLERANCE for n in later) and name == list(layers)[0]:
                hint = output_hint
            raise Fail(
                f"After lsuv_init_, {name}'s output has std {std:.3f} on a fresh batch; every layer's output must "
                f"have std 1 (within {_LSUV_TOLERANCE}). Output stds: "
                + ", ".join(f"{n} {s:.2f}" for n, s in stds.items())
                + ".",
                hint,
            )
    return "lsuv_init_ starts from orthogonal weights and gives every layer's output std 1, removing its hooks."


check_lsuv = make_check("ch5.lsuv")


# --- ch5.prior_bias -----------------------------------------------------------------------------------------


def _prior_case(prior_bias_: Any, head: nn.Module, frequencies: Any, shown: str) -> torch.Tensor:
    """Call prior_bias_ on a filled head; check the return value, the objects and the weight. Return the bias."""
    before = _fill_every_parameter(head)
    call = f"prior_bias_({shown})"
    with step(f"calling {call}"):
        result = prior_bias_(head, frequencies)
    expect(
        result is head,
        f"{call} must return the head it changed (got {describe(result)}).",
        "End with `return head`.",
    )
    _expect_same_parameters(head, before, call)
    expect(
        _is_filled(head.weight),
        f"{call} changed the head's weight; only the bias carries the prior.",
        "Leave head.weight alone: the caller makes it small before calling prior_bias_.",
    )
    bias = head.bias.detach()
    expect(
        bias.dtype == torch.float32,
        f"After {call} the bias is {bias.dtype}, not float32 any more.",
        "Copy the values into the existing bias (head.bias.copy_(values) under torch.no_grad()); copy_ converts.",
    )
    return bias.double()


@exercise("ch5.prior_bias", title="A prior-probability bias for the head", names=["prior_bias_"], points=2)
def _check_prior_bias(prior_bias_: Any) -> str:
    expect_function(prior_bias_, "prior_bias_", "prior_bias_(head, class_frequencies)")
    frequencies = [0.7, 0.1, 0.15, 0.05]
    p = torch.tensor(frequencies, dtype=torch.float64)
    shown = "nn.Linear(16, 4), [0.7, 0.1, 0.15, 0.05]"
    try:
        bias = _prior_case(prior_bias_, nn.Linear(16, 4), frequencies, shown)
    except Fail as failure:
        hint = failure.hint
        if "leaf Variable" in failure.message:
            hint = "The bias is a Parameter that requires grad: change it under torch.no_grad() (copy_)."
        raise Fail(failure.message, hint) from None
    predicted = torch.softmax(bias, dim=0)
    if not torch.allclose(predicted, p, atol=1e-4):
        if torch.allclose(bias, p, atol=1e-4):
            why, hint = "the bias holds the frequencies themselves", "The bias is the log of the frequency."
        elif torch.allclose(bias, torch.log(p / (1 - p)), atol=1e-4):
            why = "the bias holds log(p / (1 - p)) per class, the prior of independent sigmoids"
            hint = "With several outputs read by a softmax, the bias is log(p_k) (up to a constant)."
        else:
            why, hint = "", "bias_k = log(f_k / sum(f)): then softmax(bias) equals the frequencies."
        found = ", ".join(f"{value:.3f}" for value in predicted.tolist())
        raise Fail(
            f"After prior_bias_({shown}) softmax(bias) is [{found}], expected [0.700, 0.100, 0.150, 0.050]: {why}."
            if why
            else f"After prior_bias_({shown}) softmax(bias) is [{found}], expected [0.700, 0.100, 0.150, 0.050].",
            hint,
        )
    counts = torch.tensor([900, 60, 40])
    bias = _prior_case(prior_bias_, nn.Conv2d(8, 3, 1), counts, "nn.Conv2d(8, 3, 1), torch.tensor([900, 60, 40])")
    predicted = torch.softmax(bias, dim=0)
    expect(
        torch.allclose(predicted, torch.tensor([0.9, 0.06, 0.04], dtype=torch.float64), atol=1e-4),
        "With counts [900, 60, 40] softmax(bias) is ["
        + ", ".join(f"{v:.3f}" for v in predicted.tolist())
        + "], expected [0.900, 0.060, 0.040].",
        "Counts work like frequencies once divided by their sum (or not: softmax ignores a constant added to log).",
    )
    for fraction in (0.2, 0.01):
        bias = _prior_case(prior_bias_, nn.Linear(16, 1), [fraction], f"nn.Linear(16, 1), [{fraction}]")
        predicted = torch.sigmoid(bias).item()
        if abs(predicted - fraction) > 1e-4 * max(fraction, 0.01):
            hint = "With one output read by a sigmoid, the bias is log(p / (1 - p)), so that sigmoid(bias) = p."
            found = f"After prior_bias_(nn.Linear(16, 1), [{fraction}]) sigmoid(bias) is {predicted:.4f}"
            if abs(bias.item() - math.log(fraction)) < 1e-4:
                raise Fail(f"{found}, expected {fraction}: the bias is log(p), but a sigmoid needs the log-odds.", hint)
            raise Fail(f"{found}, expected {fraction}.", hint)
    expect_raises(
        ValueError,
        "calling prior_bias_(nn.Linear(16, 4), [0.5, 0.5])",
        prior_bias_,
        nn.Linear(16, 4),
        [0.5, 0.5],
        hint="Compare the number of frequencies with head.bias.numel() and raise ValueError when they differ.",
    )
    expect_raises(
        ValueError,
        "calling prior_bias_(nn.Linear(16, 3, bias=False), [0.5, 0.3, 0.2])",
        prior_bias_,
        nn.Linear(16, 3, bias=False),
        [0.5, 0.3, 0.2],
        hint="A head built with bias=False has head.bias None: raise ValueError with a sentence.",
    )
    return (
        "prior_bias_ sets log-frequencies for a softmax head, log-odds for a one-output head, in place, and "
        "refuses a mismatch or a missing bias."
    )


check_prior_bias = make_check("ch5.prior_bias")
