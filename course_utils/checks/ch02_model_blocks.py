"""Chapter 2 checkers: building networks from blocks (U-Net and ResNet).

Each block checker builds modules from the learner's class and looks at their structure first (names, layer
types, channels, padding, bias), then at shapes, then loads the reference weights into them (every BatchNorm
randomized, so that a mis-wired BatchNorm cannot hide) and compares outputs with the reference and with the
outputs of the usual mistakes, so that a failure names its cause. The two function checkers (``trace_shapes``,
``infer_flat_size``) run the learner's function on models the checker builds, and look at what it leaves
behind: hooks, modes, BatchNorm statistics, the random-number state. Inputs are small and on the CPU: every
check runs in a fraction of a second (the full-size U-Net is built on the meta device).
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch codebase uses
from torch import nn

from course_utils.checking import Fail, describe, exercise, expect, make_check, step
from course_utils.compare import (
    build,
    count_parameters,
    expect_close,
    expect_function,
    expect_module_class,
    expect_same_keys,
    load_reference_weights,
    matches,
)
from course_utils.i18n import N_
from course_utils.solutions import ch02_model_blocks as ref

UNET_PARAMETERS = 31_037_698
"""Parameters of UNet(3, 2) with 64 base channels (the community U-Net's count)."""
UNET_BILINEAR_PARAMETERS = 17_263_042
"""Parameters of UNet(3, 2, bilinear=True) with 64 base channels."""

_BIAS_HINT = "Pass bias=False to every conv that a BatchNorm2d follows."


# --- shared helpers ---------------------------------------------------------------------------------


def _randomize_batchnorm(module: nn.Module) -> nn.Module:
    """Random BatchNorm parameters and statistics (the reference helper: one source of truth)."""
    return ref.randomize_batchnorm(module)


def _conv_text(conv: Any) -> str:
    if not isinstance(conv, nn.Conv2d | nn.ConvTranspose2d):
        return describe(conv) if not isinstance(conv, nn.Module) else type(conv).__name__
    text = (
        f"nn.{type(conv).__name__}({conv.in_channels}, {conv.out_channels}, kernel_size={_pair_text(conv.kernel_size)}"
    )
    if conv.stride != (1, 1):
        text += f", stride={_pair_text(conv.stride)}"
    if conv.padding not in ((0, 0), "valid"):
        text += f", padding={_pair_text(conv.padding)}"
    if conv.bias is None:
        text += ", bias=False"
    return text + ")"


def _pair_text(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
        return str(value[0])
    return repr(value)


def _expect_conv(
    conv: Any,
    where: str,
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = False,
) -> None:
    """Fail unless ``conv`` is the nn.Conv2d described, naming the first wrong setting."""
    expected = f"nn.Conv2d({in_channels}, {out_channels}, kernel_size={kernel_size}"
    expected += f", stride={stride}" if stride != 1 else ""
    expected += f", padding={padding}" if padding else ""
    expected += ")" if bias else ", bias=False)"
    expect(isinstance(conv, nn.Conv2d), f"{where} must be {expected} (got {_conv_text(conv)}).")
    if bias is False and conv.bias is not None:
        raise Fail(
            f"{where} has a bias, but a BatchNorm2d follows it: BatchNorm subtracts the mean of each channel, "
            f"which cancels any bias, so the bias is a wasted parameter (and checkpoints do not have it).",
            _BIAS_HINT,
        )
    expect(
        conv.in_channels == in_channels and conv.out_channels == out_channels,
        f"{where} must map {in_channels} to {out_channels} channels (got {_conv_text(conv)}).",
    )
    expect(
        conv.kernel_size == (kernel_size, kernel_size),
        f"{where} must have kernel_size={kernel_size} (got {_conv_text(conv)}).",
    )
    expect(
        conv.stride == (stride, stride),
        f"{where} must have stride={stride} (got {_conv_text(conv)}).",
    )
    if conv.padding != (padding, padding) and not (conv.padding == "same" and stride == 1 and padding):
        if padding and conv.padding in ((0, 0), "valid"):
            raise Fail(
                f"{where} has no padding: a 3x3 conv without padding trims a pixel from each border, so H and W "
                f"shrink by 2 with every conv and the feature maps no longer line up.",
                f"Pass padding={padding} to keep H and W.",
            )
        raise Fail(f"{where} must have padding={padding} (got {_conv_text(conv)}).")


def _expect_batchnorm(bn: Any, where: str, num_features: int) -> None:
    expect(
        isinstance(bn, nn.BatchNorm2d) and bn.num_features == num_features,
        f"{where} must be nn.BatchNorm2d({num_features}) (got {_conv_text(bn)}).",
    )


def _run(module: nn.Module, doing: str, *inputs: torch.Tensor, train: bool) -> Any:
    """Call a learner's module on clones of the inputs, in training or eval mode, without autograd."""
    with step(doing):
        module.train(train)
        with torch.no_grad():
            return module(*(x.clone() for x in inputs))


def _expect_shape(output: Any, shape: tuple[int, ...], what: str, hint: str | None = None) -> None:
    expect(
        isinstance(output, torch.Tensor),
        f"{what} must be a tensor (got {describe(output)}).",
        "forward must return a single tensor.",
    )
    expect(tuple(output.shape) == shape, f"{what} has shape {tuple(output.shape)}, expected {shape}.", hint)


def _with_reference_weights(net: nn.Module, reference: nn.Module, what: str) -> nn.Module:
    """The learner's module (built by the checker, so no copy is needed) holding the reference's weights."""
    load_reference_weights(net, reference, what)
    return net


# --- ch2.double_conv --------------------------------------------------------------------------------

_DOUBLE_CONV_LAYERS = ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
_DOUBLE_CONV_HINT = (
    "self.double_conv = nn.Sequential(conv 3x3, BatchNorm2d, ReLU, conv 3x3, BatchNorm2d, ReLU): the community "
    "U-Net's layout, so its checkpoints load."
)


def _expect_double_conv(block: Any, call: str, in_channels: int, mid_channels: int, out_channels: int) -> None:
    """Fail unless ``block`` has the community DoubleConv structure with these channels."""
    layers = getattr(block, "double_conv", None)
    expect(layers is not None, f"{call} has no attribute double_conv.", _DOUBLE_CONV_HINT)
    expect(
        isinstance(layers, nn.Sequential),
        f"{call}.double_conv must be an nn.Sequential (got {describe(layers)}).",
        _DOUBLE_CONV_HINT,
    )
    kinds = [type(m).__name__ for m in layers]
    if kinds != _DOUBLE_CONV_LAYERS:
        if "BatchNorm2d" not in kinds:
            raise Fail(
                f"{call}.double_conv has no BatchNorm2d (got {', '.join(kinds)}).",
                "Put nn.BatchNorm2d(channels) after each conv, before its ReLU.",
            )
        if kinds == ["Conv2d", "ReLU", "BatchNorm2d"] * 2:
            raise Fail(
                f"{call}.double_conv puts the ReLU before the BatchNorm2d (got {', '.join(kinds)}).",
                "The order is conv => BatchNorm2d => ReLU, twice.",
            )
        raise Fail(
            f"{call}.double_conv must hold Conv2d, BatchNorm2d, ReLU, Conv2d, BatchNorm2d, ReLU "
            f"(got {', '.join(kinds) or N_('nothing')}).",
            _DOUBLE_CONV_HINT,
        )
    first, second = layers[0], layers[3]
    if (
        isinstance(first, nn.Conv2d)
        and mid_channels != out_channels
        and first.out_channels == out_channels
        and first.in_channels == in_channels
    ):
        raise Fail(
            f"{call}: the first conv outputs {out_channels} channels; it must output mid_channels={mid_channels}.",
            "Use mid_channels for the first conv's output and the second conv's input "
            "(and out_channels when mid_channels is None).",
        )
    _expect_conv(first, f"{call}.double_conv[0]", in_channels, mid_channels, kernel_size=3, padding=1)
    _expect_batchnorm(layers[1], f"{call}.double_conv[1]", mid_channels)
    _expect_conv(second, f"{call}.double_conv[3]", mid_channels, out_channels, kernel_size=3, padding=1)
    _expect_batchnorm(layers[4], f"{call}.double_conv[4]", out_channels)


@exercise("ch2.double_conv", title="DoubleConv: (conv => BN => ReLU) * 2", names=["DoubleConv"], points=1)
def _check_double_conv(DoubleConv: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(DoubleConv, "DoubleConv")
    block = build(DoubleConv, "DoubleConv(3, 8)", 3, 8)
    _expect_double_conv(block, "DoubleConv(3, 8)", 3, 8, 8)
    call = "DoubleConv(3, 8, mid_channels=5)"
    block = build(DoubleConv, call, 3, 8, mid_channels=5)
    _expect_double_conv(block, call, 3, 5, 8)
    reference = _randomize_batchnorm(ref.DoubleConv(3, 8, mid_channels=5))
    block = _with_reference_weights(block, reference, call)
    x = torch.randn(2, 3, 10, 9)
    for train in (True, False):
        mode = "training" if train else "eval"
        output = _run(block, f"running {call} on a (2, 3, 10, 9) input in {mode} mode", x, train=train)
        _expect_shape(output, (2, 8, 10, 9), f"The output of {call} ({mode} mode)", "A DoubleConv keeps H and W.")
        reference.train(train)
        with torch.no_grad():
            expected = reference(x)
        expect_close(
            output,
            expected,
            f"The output of {call} ({mode} mode)",
            "forward must return self.double_conv(x).",
        )
    return "DoubleConv has the community layout (no conv bias, padding 1, mid_channels) and computes the reference."


check_double_conv = make_check("ch2.double_conv")


# --- ch2.down ---------------------------------------------------------------------------------------

_DOWN_HINT = "self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))"


@exercise("ch2.down", title="Down: max-pool => DoubleConv", names=["Down"], points=1)
def _check_down(Down: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(Down, "Down")
    call = "Down(4, 8)"
    net = build(Down, call, 4, 8)
    layers = getattr(net, "maxpool_conv", None)
    expect(layers is not None, f"{call} has no attribute maxpool_conv.", _DOWN_HINT)
    expect(
        isinstance(layers, nn.Sequential),
        f"{call}.maxpool_conv must be an nn.Sequential (got {describe(layers)}).",
        _DOWN_HINT,
    )
    parts = list(layers)
    kinds = ", ".join(type(m).__name__ for m in parts) or N_("nothing")
    if any(isinstance(m, nn.AvgPool2d) for m in parts):
        raise Fail(
            f"{call} pools with nn.AvgPool2d; U-Net's encoder uses max pooling.",
            "Use nn.MaxPool2d(2): it halves H and W and keeps the strongest response of each 2x2 window.",
        )
    if not any(isinstance(m, nn.MaxPool2d) for m in parts):
        raise Fail(
            f"{call}.maxpool_conv does not pool (got {kinds}), so H and W are not halved.",
            "Start with nn.MaxPool2d(2).",
        )
    if len(parts) == 2 and isinstance(parts[1], nn.MaxPool2d):
        raise Fail(
            f"{call} pools after the DoubleConv (got {kinds}): pool first, so that the convolutions run on the "
            f"halved map and see twice as far.",
            _DOWN_HINT,
        )
    expect(len(parts) == 2, f"{call}.maxpool_conv must hold MaxPool2d and DoubleConv (got {kinds}).", _DOWN_HINT)
    pool, double_conv = parts
    expect(
        pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0)),
        f"{call}.maxpool_conv[0] must be nn.MaxPool2d(2) (got kernel_size={pool.kernel_size}, stride={pool.stride}, "
        f"padding={pool.padding}).",
        "nn.MaxPool2d(2) halves H and W.",
    )
    _expect_double_conv(double_conv, f"{call}.maxpool_conv[1]", 4, 8, 8)
    reference = _randomize_batchnorm(ref.Down(4, 8))
    net = _with_reference_weights(net, reference, call)
    for shape, out_shape, train in (((2, 4, 16, 12), (2, 8, 8, 6), True), ((1, 4, 17, 15), (1, 8, 8, 7), False)):
        mode = "training" if train else "eval"
        x = torch.randn(*shape)
        output = _run(net, f"running {call} on a {shape} input in {mode} mode", x, train=train)
        _expect_shape(output, out_shape, f"The output of {call} for a {shape} input", "Down halves H and W (floor).")
        reference.train(train)
        with torch.no_grad():
            expected = reference(x)
        expect_close(
            output, expected, f"The output of {call} for a {shape} input", "forward returns self.maxpool_conv(x)."
        )
    return "Down max-pools, then runs a DoubleConv: H and W halve (odd sizes floor), as in the reference."


check_down = make_check("ch2.down")


# --- ch2.up -----------------------------------------------------------------------------------------

_PAD_HINT = (
    "Pad x to the skip's size before torch.cat: F.pad(x, [diff_w // 2, diff_w - diff_w // 2, "
    "diff_h // 2, diff_h - diff_h // 2]) (F.pad lists the last dimension, W, first)."
)


def _pad_to(x: torch.Tensor, skip: torch.Tensor, where: str) -> torch.Tensor:
    diff_h, diff_w = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
    if where == "centre":
        return F.pad(x, [diff_w // 2, diff_w - diff_w // 2, diff_h // 2, diff_h - diff_h // 2])
    if where == "after":
        return F.pad(x, [0, diff_w, 0, diff_h])
    return F.pad(x, [diff_w, 0, diff_h, 0])


def _up_variants(reference: nn.Module, x: torch.Tensor, skip: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference Up's output and the outputs of its usual mistakes."""
    with torch.no_grad():
        upsampled = reference.up(x)
        outputs = {}
        for where in ("centre", "after", "before"):
            outputs[where] = reference.conv(torch.cat([skip, _pad_to(upsampled, skip, where)], dim=1))
        outputs["swapped"] = reference.conv(torch.cat([_pad_to(upsampled, skip, "centre"), skip], dim=1))
    return outputs


def _check_up_output(net: nn.Module, reference: nn.Module, call: str, x: torch.Tensor, skip: torch.Tensor) -> None:
    shapes = f"x {tuple(x.shape)} and skip {tuple(skip.shape)}"
    odd = skip.size(2) % 2 == 1 or skip.size(3) % 2 == 1
    doing = f"running {call} on {shapes}"
    try:
        output = _run(net, doing, x, skip, train=False)
    except Fail as failure:
        cause = failure.__context__
        if odd and isinstance(cause, RuntimeError) and "Sizes of tensors must match" in str(cause):
            raise Fail(
                f"{call} with an odd-sized skip {tuple(skip.shape)} failed: sizes must match in torch.cat "
                f"(the upsampled x is {2 * x.size(2)}x{2 * x.size(3)}).",
                _PAD_HINT,
            ) from None
        if isinstance(cause, RuntimeError) and "channels" in str(cause):
            raise Fail(
                f"{failure.message.rstrip('.')}. Does forward concatenate the skip?",
                "x = torch.cat([skip, x], dim=1) joins them on the channel dimension (dim 1) before self.conv.",
            ) from None
        raise
    out_shape = (1, reference.conv.double_conv[3].out_channels, skip.size(2), skip.size(3))
    _expect_shape(output, out_shape, f"The output of {call} on {shapes}", "The output has the skip's H and W.")
    variants = _up_variants(reference, x, skip)
    if matches(output, variants["centre"]):
        return
    if matches(output, variants["swapped"]):
        raise Fail(
            f"{call} concatenates [x, skip]; the community U-Net puts the skip first, and its weights expect that.",
            "x = torch.cat([skip, x], dim=1)",
        )
    if odd and (matches(output, variants["after"]) or matches(output, variants["before"])):
        raise Fail(
            f"{call} on {shapes} pads on one side only; centre the upsampled map: diff // 2 before, the rest after.",
            _PAD_HINT,
        )
    upsample = getattr(net, "up", None)
    if isinstance(upsample, nn.Upsample) and not upsample.align_corners:
        raise Fail(
            f"{call}.up uses align_corners=False; the community U-Net uses align_corners=True.",
            "nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)",
        )
    expect_close(
        output,
        variants["centre"],
        f"The output of {call} on {shapes}",
        "Upsample x with self.up, pad it to the skip's size, torch.cat([skip, x], dim=1), then self.conv.",
    )


@exercise("ch2.up", title="Up: upsample => pad => concat skip => DoubleConv", names=["Up"], points=2)
def _check_up(Up: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(Up, "Up")
    call = "Up(16, 8)"
    net = build(Up, call, 16, 8)
    upsample = getattr(net, "up", None)
    expected = "nn.ConvTranspose2d(16, 8, kernel_size=2, stride=2)"
    expect(upsample is not None, f"{call} has no attribute up.", f"self.up = {expected}")
    expect(
        isinstance(upsample, nn.ConvTranspose2d),
        f"{call}.up must be {expected} (got {_conv_text(upsample)}).",
        "With bilinear=False the upsampling is learned: a transposed convolution that halves the channels.",
    )
    expect(
        (upsample.in_channels, upsample.out_channels, upsample.kernel_size, upsample.stride) == (16, 8, (2, 2), (2, 2)),
        f"{call}.up must be {expected} (got {_conv_text(upsample)}).",
        "The transposed conv doubles H and W and halves the channels: in_channels // 2 outputs.",
    )
    conv = getattr(net, "conv", None)
    expect(conv is not None, f"{call} has no attribute conv.", "self.conv = DoubleConv(in_channels, out_channels)")
    _expect_double_conv(conv, f"{call}.conv", 16, 8, 8)
    reference = _randomize_batchnorm(ref.Up(16, 8)).eval()
    net = _with_reference_weights(net, reference, call)
    x = torch.randn(1, 16, 4, 5)
    # In a U-Net the skip is at most one pixel larger; (1, 8, 11, 12) checks that the padding is centred.
    for skip_shape in ((1, 8, 8, 10), (1, 8, 9, 11), (1, 8, 9, 10), (1, 8, 11, 12)):
        _check_up_output(net, reference, call, x, torch.randn(*skip_shape))

    call = "Up(16, 4, bilinear=True)"
    net = build(Up, call, 16, 4, bilinear=True)
    upsample = getattr(net, "up", None)
    expected = "nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)"
    expect(
        isinstance(upsample, nn.Upsample),
        f"{call}.up must be {expected} (got {describe(upsample)}).",
        "With bilinear=True the upsampling has no weights.",
    )
    expect(
        upsample.mode == "bilinear" and upsample.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0)),
        f"{call}.up must be {expected} (got mode={upsample.mode!r}, scale_factor={upsample.scale_factor}).",
    )
    conv = getattr(net, "conv", None)
    expect(conv is not None, f"{call} has no attribute conv.", "self.conv = DoubleConv(in_channels, out_channels)")
    layers = getattr(conv, "double_conv", None)
    if isinstance(layers, nn.Sequential) and len(layers) and isinstance(layers[0], nn.Conv2d):
        expect(
            layers[0].out_channels == 8,
            f"{call}.conv must be DoubleConv(16, 4, mid_channels=8) (its first conv outputs "
            f"{layers[0].out_channels} channels).",
            "Bilinear upsampling keeps the channels, so the DoubleConv halves them first: "
            "DoubleConv(in_channels, out_channels, in_channels // 2).",
        )
    _expect_double_conv(conv, f"{call}.conv", 16, 8, 4)
    reference = _randomize_batchnorm(ref.Up(16, 4, bilinear=True)).eval()
    net = _with_reference_weights(net, reference, call)
    x = torch.randn(1, 8, 4, 5)
    for skip_shape in ((1, 8, 8, 10), (1, 8, 9, 11)):
        _check_up_output(net, reference, call, x, torch.randn(*skip_shape))
    return "Up upsamples (transposed conv or bilinear), pads to odd skip sizes, puts the skip first, as the reference."


check_up = make_check("ch2.up")


# --- ch2.unet ---------------------------------------------------------------------------------------

_UNET_PARTS = ["inc", "down1", "down2", "down3", "down4", "up1", "up2", "up3", "up4", "outc"]
_UNET_FORWARD_HINT = (
    "Each Up takes the previous output and the skip of the same resolution: x = up1(x5, x4), up2(x, x3), "
    "up3(x, x2), up4(x, x1); return outc(x), the logits."
)


def _accepts_base_channels(cls: Any) -> bool:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "base_channels" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _build_on_meta(cls: Any, call: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Build a learner's model on the meta device: shapes and names without the cost of initializing weights."""
    try:
        with torch.device("meta"):
            return build(cls, call, *args, **kwargs)
    except Fail:
        return build(cls, call, *args, **kwargs)  # the learner's own error, raised again where it is plain


@functools.cache
def _meta_reference(n_channels: int, n_classes: int, bilinear: bool) -> nn.Module:
    """The full-size reference U-Net on the meta device (names and shapes only), built once."""
    with torch.device("meta"):
        return ref.UNet(n_channels, n_classes, bilinear=bilinear)


def _expect_unet_layout(net: Any, call: str, bilinear: bool) -> None:
    expect(isinstance(net, nn.Module), f"{call} must build an nn.Module (got {describe(net)}).")
    names = [name for name, _ in net.named_children()]
    missing = [name for name in _UNET_PARTS if name not in names]
    if missing:
        found = ", ".join(names) or "no submodules"
        raise Fail(
            f"{call} has no {', '.join(missing)} (its parts are: {found}).",
            "Name the parts as the community U-Net does, so its checkpoints load: inc, down1..down4, up1..up4, outc.",
        )
    reference = _meta_reference(3, 2, bilinear)
    hint = (
        "With bilinear=True, bilinear upsampling cannot halve the channels, so down4 and up1..up3 output half as "
        "many (factor = 2)."
        if bilinear
        else "Channels double on the way down (64, 128, 256, 512, 1024) and halve on the way up."
    )
    expect_same_keys(net, reference, call, hint)


@exercise("ch2.unet", title="UNet: assemble the parts", names=["UNet"], points=2)
def _check_unet(UNet: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(UNet, "UNet")
    for bilinear, count in ((False, UNET_PARAMETERS), (True, UNET_BILINEAR_PARAMETERS)):
        call = "UNet(3, 2, bilinear=True)" if bilinear else "UNet(3, 2)"
        net = _build_on_meta(UNet, call, 3, 2, bilinear=bilinear)
        _expect_unet_layout(net, call, bilinear)
        found = count_parameters(net)
        expect(found == count, f"{call} has {found:,} parameters, expected {count:,}.")
    call = "UNet(1, 5)"
    net = _build_on_meta(UNet, call, 1, 5)
    reference = _meta_reference(1, 5, False)
    expect_same_keys(net, reference, call, "Use n_channels for inc's input and n_classes for outc's output.")

    x = torch.randn(1, 3, 37, 45)
    if _accepts_base_channels(UNet):
        call = "UNet(3, 3, base_channels=4)"
        net = build(UNet, call, 3, 3, base_channels=4)
        reference = _randomize_batchnorm(ref.UNet(3, 3, base_channels=4)).eval()
        load_reference_weights(net, reference, call)
        output = _run(net, f"running {call} on a (1, 3, 37, 45) input", x, train=False)
    else:
        # The full-size model, without allocating its 124 MB: every weight is a view into one random pool,
        # and training mode lets BatchNorm keep the activations in range whatever the weights are.
        call = "UNet(3, 3)"
        net = _build_on_meta(UNet, call, 3, 3)
        reference = _meta_reference(3, 3, False)
        expect_same_keys(net, reference, call)
        pool = torch.rand(max(t.numel() for t in reference.state_dict().values())) * 2 - 1
        reference = copy.deepcopy(reference)
        reference.load_state_dict(_pooled_state_dict(reference, pool), assign=True)
        with step(f"loading the reference weights into {call}"):
            net.load_state_dict(_pooled_state_dict(reference, pool), assign=True)
        reference.train()
        output = _run(net, f"running {call} on a (1, 3, 37, 45) input", x, train=True)
    _expect_shape(
        output,
        (1, 3, 37, 45),
        f"The output of {call} for a (1, 3, 37, 45) input",
        "The output keeps the input's H and W, one channel per class; the Ups pad odd sizes.",
    )
    with torch.no_grad():
        expected = reference(x)
    if matches(output, expected.softmax(dim=1)) or matches(output, expected.sigmoid()):
        raise Fail(
            f"{call} applies an activation to its output; a segmentation model returns logits.",
            "Return self.outc(x) as it is: F.cross_entropy applies log-softmax itself.",
        )
    expect_close(output, expected, f"The output of {call} for a (1, 3, 37, 45) input", _UNET_FORWARD_HINT)
    return (
        f"UNet has the community layout ({UNET_PARAMETERS:,} parameters; {UNET_BILINEAR_PARAMETERS:,} with "
        "bilinear=True) and computes the reference on an odd-sized input."
    )


def _pooled_state_dict(reference: nn.Module, pool: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weights for ``reference``'s keys that are views into ``pool`` (no copies); fresh BatchNorm statistics."""
    state = {}
    for key, tensor in reference.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_mean"):
            state[key] = torch.zeros(tensor.shape)
        elif key.endswith("running_var"):
            state[key] = torch.ones(tensor.shape)
        else:
            state[key] = pool[: tensor.numel()].view(tensor.shape)
    return state


check_unet = make_check("ch2.unet")


# --- ch2.residual_block -----------------------------------------------------------------------------

_BLOCK_NAMES = ["conv1", "bn1", "conv2", "bn2"]
_PROJECTION = (
    "nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False), "
    "nn.BatchNorm2d(out_channels))"
)


def _expect_residual_structure(net: Any, call: str, in_channels: int, out_channels: int, stride: int) -> None:
    missing = [name for name in [*_BLOCK_NAMES, "downsample"] if not hasattr(net, name)]
    expect(
        not missing,
        f"{call} has no {', '.join(missing)}.",
        "Use torchvision's BasicBlock names: conv1, bn1, conv2, bn2 and downsample (None for the identity).",
    )
    conv1, conv2 = net.conv1, net.conv2
    if (
        stride != 1
        and isinstance(conv1, nn.Conv2d)
        and isinstance(conv2, nn.Conv2d)
        and conv1.stride == (1, 1)
        and conv2.stride == (stride, stride)
    ):
        raise Fail(
            f"{call} puts the stride on conv2; torchvision's BasicBlock strides conv1.",
            "conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)",
        )
    _expect_conv(conv1, f"{call}.conv1", in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
    _expect_batchnorm(net.bn1, f"{call}.bn1", out_channels)
    _expect_conv(conv2, f"{call}.conv2", out_channels, out_channels, kernel_size=3, padding=1)
    _expect_batchnorm(net.bn2, f"{call}.bn2", out_channels)
    changes_shape = stride != 1 or in_channels != out_channels
    downsample = net.downsample
    if not changes_shape:
        expect(
            downsample is None,
            f"{call}.downsample must be None: the block keeps the shape, so the shortcut is the identity "
            f"(got {describe(downsample)}).",
            "Create the projection only when stride != 1 or in_channels != out_channels.",
        )
        return
    if downsample is None:
        what = "halves H and W" if stride != 1 else "changes the channels"
        raise Fail(
            f"{call} has no projection shortcut (downsample is None), but the block {what}: x "
            f"({in_channels} channels) cannot be added to the output ({out_channels} channels"
            f"{', half the size' if stride != 1 else ''}).",
            f"When stride != 1 or in_channels != out_channels, set self.downsample = {_PROJECTION}.",
        )
    expect(
        isinstance(downsample, nn.Sequential) and len(downsample) == 2,
        f"{call}.downsample must be an nn.Sequential of a 1x1 conv and a BatchNorm2d (got {describe(downsample)}).",
        f"self.downsample = {_PROJECTION}",
    )
    _expect_conv(downsample[0], f"{call}.downsample[0]", in_channels, out_channels, kernel_size=1, stride=stride)
    _expect_batchnorm(downsample[1], f"{call}.downsample[1]", out_channels)


def _residual_variants(block: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference block's output and the outputs of its usual mistakes."""
    with torch.no_grad():
        residual = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        shortcut = x if block.downsample is None else block.downsample(x)
        return {
            "right": torch.relu(residual + shortcut),
            "relu before the addition": torch.relu(residual) + shortcut,
            "relu on both sides": torch.relu(torch.relu(residual) + shortcut),
            "no final relu": residual + shortcut,
            "no shortcut": torch.relu(residual),
        }


@exercise("ch2.residual_block", title="ResidualBlock: ResNet's basic block", names=["ResidualBlock"], points=2)
def _check_residual_block(ResidualBlock: Any) -> str:  # noqa: N803 - the learner's class name
    expect_module_class(ResidualBlock, "ResidualBlock")
    cases = [(8, 8, 1), (8, 16, 2), (8, 16, 1), (8, 8, 2)]
    for in_channels, out_channels, stride in cases:
        call = f"ResidualBlock({in_channels}, {out_channels}, stride={stride})"
        net = build(ResidualBlock, call, in_channels, out_channels, stride=stride)
        _expect_residual_structure(net, call, in_channels, out_channels, stride)
        reference = _randomize_batchnorm(ref.ResidualBlock(in_channels, out_channels, stride)).eval()
        net = _with_reference_weights(net, reference, call)
        x = torch.randn(2, in_channels, 8, 8)
        out_shape = (2, out_channels, 8 // stride, 8 // stride)
        output = _run(net, f"running {call} on a (2, {in_channels}, 8, 8) input in eval mode", x, train=False)
        _expect_shape(output, out_shape, f"The output of {call}")
        variants = _residual_variants(reference, x)
        if not matches(output, variants["right"]):
            if matches(output, variants["relu before the addition"]) or matches(output, variants["relu on both sides"]):
                raise Fail(
                    f"{call} applies ReLU to the residual before adding the shortcut.",
                    "bn2's output is added to the shortcut as it is; apply ReLU after the addition.",
                )
            if matches(output, variants["no final relu"]):
                raise Fail(f"{call} has no ReLU after the addition.", "out = self.relu(out + identity)")
            if matches(output, variants["no shortcut"]):
                raise Fail(
                    f"{call} adds no shortcut: the output is ReLU(residual) alone.",
                    "Keep identity = x (or self.downsample(x)) and return relu(out + identity).",
                )
            expect_close(
                output,
                variants["right"],
                f"The output of {call} (eval mode)",
                "out = bn2(conv2(relu(bn1(conv1(x))))); return relu(out + identity).",
            )
        output = _run(net, f"running {call} on a (2, {in_channels}, 8, 8) input in training mode", x, train=True)
        reference.train()
        with torch.no_grad():
            expected = reference(x)
        expect_close(output, expected, f"The output of {call} (training mode)")
    return "ResidualBlock matches torchvision's BasicBlock: names, projection only where needed, ReLU after the sum."


check_residual_block = make_check("ch2.residual_block")


# --- ch2.trace_shapes -------------------------------------------------------------------------------


class _TraceNet(nn.Module):
    """A small model with nested containers, a BatchNorm and a ReLU that runs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, kernel_size=3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 3, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 4, 8, 6)
        x = self.act(self.pool(x))  # (B, 4, 4, 3)
        x = self.head(x)  # (B, 5)
        return self.act(x)  # the same ReLU again


class _FailingNet(nn.Module):
    """Runs one conv, then raises: a forward that fails halfway."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        raise _DeliberateError("the model broke halfway (the checker's deliberate error)")


class _DeliberateError(RuntimeError):
    pass


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _global_hook_count() -> int:
    module = torch.nn.modules.module
    return len(module._global_forward_hooks) + len(module._global_forward_pre_hooks)


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _expect_modes_kept(model: nn.Module, root: str, before: dict[str, bool], what: str, restore_hint: str) -> None:
    for name, training in _modes(model).items():
        if training != before[name]:
            where = f"{root}.{name}" if name else root
            was, now = ("training", "eval") if before[name] else ("eval", "training")
            raise Fail(f"{what} changed the mode: {where} was in {was} mode and is now in {now} mode.", restore_hint)


def _rows(result: Any, call: str) -> list[tuple[str, tuple[int, ...]]]:
    """The learner's rows as (name, shape tuple) pairs, or a Fail saying what the result looks like."""
    expect(
        isinstance(result, list | tuple),
        f"{call} must return a list of (name, shape) pairs (got {describe(result)}).",
        "Append (name, tuple(output.shape)) in the hook and return the list.",
    )
    rows = []
    for row in result:
        ok = isinstance(row, list | tuple) and len(row) == 2 and isinstance(row[0], str)
        shape = row[1] if ok else None
        ok = ok and isinstance(shape, list | tuple) and all(isinstance(n, int) for n in shape)
        expect(
            ok,
            f"{call} must return (name, shape) pairs such as ('features.0', (2, 4, 8, 6)) (got {describe(row)}).",
            "Each row is (the module's name from named_modules(), tuple(output.shape)).",
        )
        rows.append((row[0], tuple(shape)))
    return rows


_TRACE_HOOK_HINT = (
    "Keep the handles that register_forward_hook returns and call handle.remove() on each in a finally: block, "
    "so they go even when forward raises."
)


@exercise("ch2.trace_shapes", title="trace_shapes: a shape trace with forward hooks", names=["trace_shapes"])
def _check_trace_shapes(trace_shapes: Any) -> str:
    expect_function(trace_shapes, "trace_shapes", "trace_shapes(model, *inputs)")
    model = _TraceNet()
    expected_model = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 6)
    expected = ref.trace_shapes(expected_model, x)
    model.train()
    model.features[1].eval()  # a frozen BatchNorm: the modes differ between modules
    modes = _modes(model)
    calls = []
    own = model.pool.register_forward_hook(lambda module, args, output: calls.append(1))  # a hook the model had
    hooks, global_hooks = _hook_count(model), _global_hook_count()
    call = "trace_shapes(model, x)"
    with step(f"calling {call} on a small CNN with x of shape (2, 3, 8, 6)"):
        result = trace_shapes(model, x)
    expect(
        own.id in model.pool._forward_hooks,
        f"{call} removed a forward hook that was on the model before the trace.",
        "Remove only the hooks you registered (their handles), never clear a module's hook dicts.",
    )
    left = _hook_count(model) - hooks + _global_hook_count() - global_hooks
    expect(left <= 0, f"{call} left {left} hook(s) registered on the model after it returned.", _TRACE_HOOK_HINT)
    _expect_modes_kept(
        model, "model", modes, call, "Run the model in the mode it is in: do not call model.eval() or model.train()."
    )
    rows = _rows(result, call)
    names = [name for name, _ in rows]
    children = {name for name, _ in model.named_children()}
    if names and set(names) <= children and any(name in ("features", "head") for name in names):
        raise Fail(
            f"{call} records only the direct children of the model ({', '.join(dict.fromkeys(names))}).",
            "Hook every leaf module: the modules of model.named_modules() that have no children.",
        )
    containers = [name for name, module in model.named_modules() if next(module.children(), None) is not None]
    recorded_containers = [name or "'' (the model itself)" for name in dict.fromkeys(names) if name in containers]
    if recorded_containers:
        raise Fail(
            f"{call} records container modules too ({', '.join(recorded_containers)}); only leaves were asked for.",
            "A container's output is its last child's output: keep the modules without children.",
        )
    if len(rows) == len(expected) - 1 and names.count("act") == 1:
        raise Fail(
            f"{call} has one row for model.act, which runs twice (after pool and at the end).",
            "Append a row on every call of the hook; a dict keyed by name keeps only the last call.",
        )
    input_shapes = [(2, 3, 8, 6), (2, 4, 8, 6), (2, 4, 8, 6), (2, 4, 8, 6), (2, 4, 4, 3), (2, 4, 4, 3), (2, 48), (2, 5)]
    if [shape for _, shape in rows] == input_shapes:
        raise Fail(f"{call} records the input shapes; the output shapes were asked for.", "tuple(output.shape)")
    for index, (found, wanted) in enumerate(zip(rows, expected, strict=False)):
        expect(
            found == wanted,
            f"Row {index} of {call} is {found}, expected {wanted}.",
            "One row per leaf call, in the order the leaves run, with tuple(output.shape).",
        )
    expect(
        len(rows) == len(expected),
        f"{call} has {len(rows)} rows, expected {len(expected)} (one per call of a leaf module).",
    )
    expect(len(calls) == 1, f"{call} must run the model exactly once (the model's own hook fired {len(calls)} times).")

    failing = _FailingNet()
    hooks = _hook_count(failing)
    doing = f"calling {call} on a model whose forward raises halfway"
    try:
        with step(doing):
            trace_shapes(failing, torch.randn(1, 3, 5, 5))
    except Fail as failure:
        if not isinstance(failure.__context__, _DeliberateError):
            raise
    else:
        raise Fail(
            f"{call} returned although the model's forward raised: the error must reach the caller.",
            "Use try/finally (not try/except): remove the hooks in finally, and let the exception propagate.",
        )
    left = _hook_count(failing) - hooks + _global_hook_count() - global_hooks
    expect(left <= 0, f"{call} left {left} hook(s) on a model whose forward raised.", _TRACE_HOOK_HINT)
    return "trace_shapes records every leaf call in order, removes its hooks (even on an error), keeps the modes."


check_trace_shapes = make_check("ch2.trace_shapes")


# --- ch2.infer_flat_size ----------------------------------------------------------------------------


def _flat_size_features() -> nn.Sequential:
    """A CNN trunk with BatchNorm and Dropout, in training mode, with its second BatchNorm frozen (eval)."""
    features = nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.3),
        nn.Conv2d(8, 16, kernel_size=3, stride=2, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
    )
    features.train()
    features[6].eval()
    return features


_DTYPE_HINT = (
    "Make the dry input with the dtype and device of the model's parameters: p = next(features.parameters(), None); "
    "torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device) (the defaults when p is None)."
)


def _flat_size(result: Any, call: str) -> int:
    if isinstance(result, torch.Tensor) and result.dim() > 0 or isinstance(result, tuple | list):
        raise Fail(
            f"{call} must return an int (got {describe(result)}).",
            "The output of one example has output[0].numel() values.",
        )
    expect(not isinstance(result, bool | float), f"{call} must return an int (got {describe(result)}).")
    try:
        return operator.index(result)
    except TypeError:
        raise Fail(f"{call} must return an int (got {describe(result)}).") from None


def _call_flat_size(infer_flat_size: Any, features: nn.Module, shape: tuple[int, ...], what: str) -> int:
    call = f"infer_flat_size(features, {shape})"
    doing = f"calling {call} on {what}"
    try:
        with step(doing):
            result = infer_flat_size(features, shape)
    except Fail as failure:
        cause = failure.__context__
        if isinstance(cause, StopIteration):
            raise Fail(
                f"{doing} raised StopIteration: the model has no parameters, so next(features.parameters()) is empty.",
                "next(features.parameters(), None) returns None instead; then use the default dtype.",
            ) from None
        text = str(cause)
        if isinstance(cause, RuntimeError) and any(w in text for w in ("type", "Double", "Float")):
            raise Fail(f"{failure.message.rstrip('.')}.", _DTYPE_HINT) from None
        raise
    return _flat_size(result, call)


@exercise("ch2.infer_flat_size", title="infer_flat_size: a dry run that changes nothing", names=["infer_flat_size"])
def _check_infer_flat_size(infer_flat_size: Any) -> str:
    expect_function(infer_flat_size, "infer_flat_size", "infer_flat_size(features, input_shape)")
    features = _flat_size_features()
    shape = (3, 20, 18)
    call = f"infer_flat_size(features, {shape})"
    expected = ref.infer_flat_size(copy.deepcopy(features), shape)  # 16 channels of 4 x 4
    state = {key: value.clone() for key, value in features.state_dict().items()}
    modes = _modes(features)
    rng = torch.get_rng_state()
    found = _call_flat_size(infer_flat_size, features, shape, "a CNN trunk in training mode")
    if found != expected:
        if found in (2 * expected, 4 * expected, 8 * expected, 16 * expected, 32 * expected):
            raise Fail(
                f"{call} returned {found}, expected {expected}: the count includes the batch dimension "
                f"({found // expected} examples).",
                "Count the values of one example: output[0].numel(), or output.flatten(1).size(1).",
            )
        if found == 16:
            raise Fail(
                f"{call} returned {found}, the channels only; the head's Linear sees channels x height x width "
                f"= {expected} values.",
                "Count every value of one example: output[0].numel().",
            )
        raise Fail(f"{call} returned {found}, expected {expected}.", "Run features on one example and count.")
    for key, value in features.state_dict().items():
        if torch.equal(value, state[key]):
            continue
        if "running" in key or "num_batches_tracked" in key:
            raise Fail(
                f"{call} changed the BatchNorm statistics (features.{key}): the dry run ran in training mode, "
                f"so it updated the running statistics (torch.no_grad() does not stop that).",
                "Run the dry run in eval mode, then give every submodule its mode back.",
            )
        raise Fail(f"{call} changed features.{key}.", "A dry run only reads the model.")
    _expect_modes_kept(
        features,
        "features",
        modes,
        call,
        "Save every submodule's .training before eval() and restore each one: features.train(was_training) "
        "would also switch a frozen BatchNorm back to training mode.",
    )
    expect(
        torch.equal(torch.get_rng_state(), rng),
        f"{call} changed the random-number state: a later torch.randn (or a Dropout) gives other numbers than "
        f"it would have without the dry run.",
        "A zero input draws nothing: torch.zeros(1, *input_shape); in eval mode Dropout draws nothing either.",
    )

    double = nn.Sequential(nn.Conv2d(1, 2, kernel_size=5), nn.Flatten()).double().eval()
    found = _call_flat_size(infer_flat_size, double, (1, 12, 12), "a float64 model")
    expect(found == 128, f"infer_flat_size(features, (1, 12, 12)) on a float64 model returned {found}, expected 128.")
    pooling = nn.Sequential(nn.MaxPool2d(2), nn.Flatten()).eval()
    found = _call_flat_size(infer_flat_size, pooling, (3, 9, 8), "a model without parameters")
    expect(
        found == 48,
        f"infer_flat_size(features, (3, 9, 8)) on MaxPool2d(2) returned {found}, expected 48 (3 x 4 x 4).",
    )
    return (
        f"infer_flat_size finds {expected} and leaves the model as it was: BatchNorm statistics, every submodule's "
        "mode, the random-number state."
    )


check_infer_flat_size = make_check("ch2.infer_flat_size")
