"""Chapter 2: the reference models, their equivalences, and the checkers against real learner mistakes."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from torch import nn

from course_utils import checking, data
from course_utils.checks import ch02_model_blocks as checks
from course_utils.compare import count_parameters
from course_utils.solutions import ch02_model_blocks as ref

EXERCISES = {
    "ch2.double_conv": "DoubleConv",
    "ch2.down": "Down",
    "ch2.up": "Up",
    "ch2.unet": "UNet",
    "ch2.residual_block": "ResidualBlock",
    "ch2.trace_shapes": "trace_shapes",
    "ch2.infer_flat_size": "infer_flat_size",
}


def run(exercise_id: str, value: object) -> checking.CheckResult:
    return checking.run(exercise_id, {EXERCISES[exercise_id]: value})


def expect_fail(exercise_id: str, value: object, *fragments: str) -> checking.CheckResult:
    result = run(exercise_id, value)
    assert result.status == "fail", result
    for fragment in fragments:
        assert fragment in result.message + " " + (result.hint or ""), result
    return result


# --- the reference models -----------------------------------------------------------------------------


def test_full_size_unet_has_the_community_parameter_counts():
    assert count_parameters(ref.UNet(3, 2)) == 31_037_698
    assert count_parameters(ref.UNet(3, 2, bilinear=True)) == 17_263_042
    assert checks.UNET_PARAMETERS == 31_037_698
    assert checks.UNET_BILINEAR_PARAMETERS == 17_263_042


def test_unet_state_dict_uses_the_community_module_names():
    keys = ref.UNet(3, 2, base_channels=4).state_dict().keys()
    assert "inc.double_conv.0.weight" in keys
    assert "down4.maxpool_conv.1.double_conv.3.weight" in keys
    assert "up1.up.weight" in keys and "up1.conv.double_conv.4.running_var" in keys
    assert "outc.conv.bias" in keys
    assert not any(".bias" in key for key in keys if "double_conv.0" in key or "double_conv.3" in key)
    assert {key.split(".")[0] for key in keys} == {
        "inc",
        *(f"down{i}" for i in range(1, 5)),
        *(f"up{i}" for i in range(1, 5)),
        "outc",
    }


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (37, 45), (17, 16)])
def test_unet_keeps_odd_input_sizes(bilinear, size):
    net = ref.UNet(3, 5, bilinear=bilinear, base_channels=4).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, *size)).shape == (1, 5, *size)


def test_unet_rejects_a_non_positive_size():
    with pytest.raises(ValueError, match="must be positive"):
        ref.UNet(3, 2, base_channels=0)


@pytest.mark.parametrize("bilinear", [False, True])
def test_loop_unet_has_the_same_parameters_and_output_as_unet(bilinear):
    unet = ref.randomize_batchnorm(ref.UNet(3, 2, bilinear=bilinear, base_channels=4)).eval()
    loop = ref.LoopUNet(3, 2, bilinear=bilinear, base_channels=4).eval()
    assert count_parameters(ref.LoopUNet(3, 2, bilinear=bilinear)) == count_parameters(ref.UNet(3, 2, bilinear))
    renamed = {}
    for key, value in unet.state_dict().items():
        part, rest = key.split(".", 1)
        if part[:-1] in ("down", "up"):
            part = f"{part[:-1]}s.{int(part[-1]) - 1}"
        renamed[f"{part}.{rest}"] = value
    loop.load_state_dict(renamed, strict=True)
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(loop(x), unet(x))


def test_loop_unet_takes_its_depth_as_an_argument():
    net = ref.LoopUNet(3, 2, base_channels=4, depth=2).eval()
    assert len(net.downs) == len(net.ups) == 2
    with torch.no_grad():
        assert net(torch.randn(1, 3, 13, 11)).shape == (1, 2, 13, 11)
    with pytest.raises(ValueError, match="depth"):
        ref.LoopUNet(3, 2, depth=0)


def test_resnet34_loads_torchvision_weights_strictly_and_computes_the_same_outputs():
    torch.manual_seed(0)
    theirs = ref.randomize_batchnorm(torchvision.models.resnet34(weights=None))  # else every BN is ~ identity
    ours = ref.resnet34()
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert count_parameters(ours) == count_parameters(theirs) == 21_797_672
    x = torch.randn(2, 3, 64, 64)
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_make_layer_only_projects_in_its_first_block():
    layer = ref.make_layer(64, 128, 4, stride=2)
    assert [block.downsample is not None for block in layer] == [True, False, False, False]
    assert layer[0].conv1.stride == (2, 2) and layer[1].conv1.stride == (1, 1)
    with pytest.raises(ValueError, match="num_blocks"):
        ref.make_layer(64, 64, 0)


def test_residual_block_uses_torchvision_basic_block_names():
    block = ref.ResidualBlock(64, 128, stride=2)
    theirs = torchvision.models.resnet34(weights=None).layer2[0]
    assert block.state_dict().keys() == theirs.state_dict().keys()
    assert ref.ResidualBlock(64, 64).downsample is None


def test_dice_per_class_counts_over_all_pixels():
    masks = torch.tensor([[[0, 1], [2, 2]]])
    predictions = torch.tensor([[[0, 1], [2, 1]]])
    scores = ref.dice_per_class(predictions, masks, 4)
    torch.testing.assert_close(scores, torch.tensor([1.0, 2 / 3, 2 / 3, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        ref.dice_per_class(predictions, masks[0], 4)


def test_train_unet_takes_the_steps_asked_and_lowers_the_loss():
    torch.manual_seed(0)
    net = ref.UNet(3, data.NUM_CLASSES, base_channels=4)
    history = ref.train_unet(net, steps=12, batch_size=4, progress=False)
    assert history["steps"] == len(history["loss"]) == 12
    assert sum(history["loss"][-3:]) < sum(history["loss"][:3])
    assert net.training


def test_train_unet_needs_steps_or_a_time_budget():
    with pytest.raises(ValueError, match="steps"):
        ref.train_unet(ref.UNet(3, 4, base_channels=4))


def test_train_unet_stops_at_its_time_budget():
    net = ref.UNet(3, data.NUM_CLASSES, base_channels=4)
    start = time.perf_counter()
    history = ref.train_unet(net, time_budget_s=0.5, batch_size=2, progress=False)
    assert history["steps"] >= 1
    assert time.perf_counter() - start < 5.0


def test_mean_foreground_dice_of_the_perfect_model_is_one():
    images, masks = data.make_shapes(4, seed=3)

    class Oracle(nn.Module):
        def forward(self, x):
            return F.one_hot(masks[: len(x)], data.NUM_CLASSES).permute(0, 3, 1, 2).float()

    assert ref.mean_foreground_dice(Oracle(), images, masks) == 1.0


class BlockUsingBn1Twice(ref.ResidualBlock):
    """The bug a fresh-BatchNorm comparison cannot see: bn2 is never used."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn1(self.conv2(out))
        return self.relu(out + identity)


def test_a_block_that_uses_bn1_twice_matches_fresh_batchnorms_but_not_randomized_ones():
    torch.manual_seed(0)
    right = ref.ResidualBlock(8, 8).eval()
    wrong = BlockUsingBn1Twice(8, 8).eval()
    wrong.load_state_dict(right.state_dict(), strict=True)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.allclose(wrong(x), right(x), atol=1e-6)  # why the comparison needs randomized BatchNorms
        ref.randomize_batchnorm(right)
        wrong.load_state_dict(right.state_dict())
        assert not torch.allclose(wrong(x), right(x), atol=1e-3)


def test_randomize_batchnorm_changes_every_batchnorm_and_follows_its_generator():
    net = nn.Sequential(nn.BatchNorm1d(3), nn.Conv2d(2, 2, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(2, affine=False))
    assert ref.randomize_batchnorm(net, torch.Generator().manual_seed(1)) is net
    for bn in (net[0], net[2]):
        assert not torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert bn.weight.min() >= 0.5 and bn.running_var.min() >= 0.5
    assert not torch.equal(net[3].running_mean, torch.zeros(2))
    again = copy.deepcopy(net)
    ref.randomize_batchnorm(again, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True))
    assert isinstance(net[0].weight, nn.Parameter) and net[0].weight.requires_grad


@pytest.mark.parametrize(
    ("size", "kernel_size", "stride", "padding", "dilation"),
    [(37, 3, 1, 1, 1), (37, 3, 2, 1, 1), (224, 7, 2, 3, 1), (10, 3, 1, 0, 2), (17, 2, 2, 0, 1), (5, 5, 1, 0, 1)],
)
def test_conv2d_output_size_matches_the_layers(size, kernel_size, stride, padding, dilation):
    x = torch.zeros(1, 1, size, size)
    conv = nn.Conv2d(1, 1, kernel_size, stride, padding, dilation)
    expected = ref.conv2d_output_size(size, kernel_size, stride, padding, dilation)
    assert conv(x).shape[-1] == expected
    if padding <= kernel_size // 2:
        assert nn.MaxPool2d(kernel_size, stride, padding, dilation)(x).shape[-1] == expected


def test_conv2d_output_size_rejects_a_kernel_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        ref.conv2d_output_size(4, kernel_size=7)


@pytest.mark.parametrize(
    ("size", "kernel_size", "stride", "padding", "output_padding"),
    [(18, 2, 2, 0, 0), (5, 3, 2, 1, 1), (5, 3, 2, 1, 0), (7, 4, 3, 2, 2)],
)
def test_conv_transpose2d_output_size_matches_the_layer(size, kernel_size, stride, padding, output_padding):
    layer = nn.ConvTranspose2d(1, 1, kernel_size, stride, padding, output_padding)
    expected = ref.conv_transpose2d_output_size(size, kernel_size, stride, padding, output_padding)
    assert layer(torch.zeros(1, 1, size, size)).shape[-1] == expected


def test_trace_shapes_of_the_small_unet_follows_the_diagram_and_leaves_no_hook():
    net = ref.UNet(3, 4, base_channels=8).eval()
    rows = ref.trace_shapes(net, torch.randn(1, 3, 37, 45))
    assert len(rows) == 63  # 23 convs, 18 BNs, 18 ReLUs, 4 pools
    assert rows[0] == ("inc.double_conv.0", (1, 8, 37, 45)) and rows[-1] == ("outc.conv", (1, 4, 37, 45))
    pools = [shape for name, shape in rows if name.endswith("maxpool_conv.0")]
    assert [shape[2:] for shape in pools] == [(18, 22), (9, 11), (4, 5), (2, 2)]
    assert all(not m._forward_hooks for m in net.modules()) and not net.training


def test_trace_shapes_removes_its_hooks_when_forward_raises():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))
    with pytest.raises(RuntimeError):
        ref.trace_shapes(net, torch.randn(2, 3))
    assert all(not m._forward_hooks for m in net.modules())


def test_infer_flat_size_leaves_statistics_modes_and_random_state_unchanged():
    features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.MaxPool2d(2)).train()
    features[1].eval()
    state = copy.deepcopy(features.state_dict())
    rng = torch.get_rng_state()
    assert ref.infer_flat_size(features, (3, 10, 12)) == 4 * 4 * 5
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in features] == [True, False, True, True] and features.training
    assert all(torch.equal(v, state[k]) for k, v in features.state_dict().items())
    assert ref.infer_flat_size(nn.Flatten(), (2, 3)) == 6
    assert ref.infer_flat_size(nn.Linear(3, 5).double(), (3,)) == 5


def test_infer_flat_size_initializes_lazy_modules_and_nothing_else():
    features = nn.Sequential(nn.LazyConv2d(4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5)).train()
    assert ref.infer_flat_size(features, (3, 8, 8)) == 5
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in features.parameters())
    assert features.training and features[1].num_batches_tracked.item() == 0
    assert features[0].weight.shape == (4, 3, 3, 3) and features[3].weight.shape == (5, 4 * 6 * 6)


def test_deep_mlp_has_the_asked_depth_and_the_same_layers_with_or_without_residuals():
    plain = ref.deep_mlp(40, 32, 32, 10)
    residual = ref.deep_mlp(40, 32, 32, 10, residual=True)
    for net in (plain, residual):
        assert sum(isinstance(m, nn.Linear) for m in net.modules()) == 40
        assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 39
    assert count_parameters(plain) == count_parameters(residual)
    assert sum(isinstance(m, ref.ResidualLinear) for m in residual) == 19
    with pytest.raises(ValueError, match="even"):
        ref.deep_mlp(5, 8, 4, 2, residual=True)
    with pytest.raises(ValueError, match="at least 2"):
        ref.deep_mlp(1, 8, 4, 2)


def test_fit_random_labels_records_every_step_and_a_shallow_net_memorizes():
    inputs, labels = ref.random_labels(128, 16, 4, seed=1)
    assert torch.equal(labels, ref.random_labels(128, 16, 4, seed=1)[1])
    torch.manual_seed(0)
    history = ref.fit_random_labels(ref.deep_mlp(3, 64, 16, 4), inputs, labels, steps=150, lr=1e-2)
    assert len(history["loss"]) == len(history["accuracy"]) == 150
    assert len(history["grad_norms"]) == 3 and min(history["grad_norms"]) > 0
    assert history["accuracy"][-1] > 0.9 > history["accuracy"][0]


def test_train_unet_scores_the_held_out_set_when_asked():
    torch.manual_seed(0)
    net = ref.UNet(3, data.NUM_CLASSES, base_channels=4)
    held_out = data.held_out_set(8)
    history = ref.train_unet(net, steps=7, batch_size=2, progress=False, held_out=held_out, eval_every=3)
    assert history["dice_steps"] == [3, 6, 7]
    assert len(history["dice"]) == 3 and all(0.0 <= d <= 1.0 for d in history["dice"])
    assert net.training
    with pytest.raises(ValueError, match="eval_every"):
        ref.train_unet(net, steps=1, eval_every=0)


# --- the checkers: references pass ------------------------------------------------------------------


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_reference_passes(exercise_id):
    result = run(exercise_id, getattr(ref, EXERCISES[exercise_id]))
    assert result.status == "pass", result


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_each_check_takes_well_under_a_second(exercise_id):
    reference = getattr(ref, EXERCISES[exercise_id])
    run(exercise_id, reference)  # warm-up
    start = time.perf_counter()
    run(exercise_id, reference)
    assert time.perf_counter() - start < 1.0


# --- ch2.double_conv mistakes ------------------------------------------------------------------------


def make_double_conv(*, padding=1, bias=False, use_mid=True, relu_first=False, batchnorm=True):
    class DoubleConv(nn.Module):
        def __init__(self, in_channels, out_channels, mid_channels=None):
            super().__init__()
            if mid_channels is None or not use_mid:
                mid_channels = out_channels
            layers = []
            for n_in, n_out in ((in_channels, mid_channels), (mid_channels, out_channels)):
                conv = nn.Conv2d(n_in, n_out, kernel_size=3, padding=padding, bias=bias)
                norm = [nn.BatchNorm2d(n_out)] if batchnorm else []
                layers += [conv, nn.ReLU(inplace=True), *norm] if relu_first else [conv, *norm, nn.ReLU(inplace=True)]
            self.double_conv = nn.Sequential(*layers)

        def forward(self, x):
            return self.double_conv(x)

    return DoubleConv


def test_double_conv_without_padding_fails_naming_the_padding():
    expect_fail("ch2.double_conv", make_double_conv(padding=0), "no padding", "padding=1")


def test_double_conv_with_conv_bias_before_batchnorm_fails():
    expect_fail("ch2.double_conv", make_double_conv(bias=True), "has a bias", "bias=False")


def test_double_conv_that_ignores_mid_channels_fails():
    expect_fail("ch2.double_conv", make_double_conv(use_mid=False), "mid_channels=5")


def test_double_conv_with_relu_before_batchnorm_fails():
    expect_fail("ch2.double_conv", make_double_conv(relu_first=True), "ReLU before the BatchNorm2d")


def test_double_conv_without_batchnorm_fails():
    expect_fail("ch2.double_conv", make_double_conv(batchnorm=False), "no BatchNorm2d")


def test_double_conv_with_its_own_attribute_names_fails_naming_the_layout():
    class DoubleConv(nn.Module):
        def __init__(self, in_channels, out_channels, mid_channels=None):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, mid_channels or out_channels, 3, padding=1, bias=False)

        def forward(self, x):
            return self.conv1(x)

    expect_fail("ch2.double_conv", DoubleConv, "no attribute double_conv", "community")


def test_double_conv_whose_forward_skips_the_layers_fails():
    class DoubleConv(ref.DoubleConv):
        def forward(self, x):
            return self.double_conv[:3](x)

    expect_fail("ch2.double_conv", DoubleConv, "has shape (2, 5, 10, 9)")


def test_double_conv_stub_is_not_attempted():
    class DoubleConv(nn.Module):
        def __init__(self, in_channels, out_channels, mid_channels=None):
            raise NotImplementedError

    assert run("ch2.double_conv", DoubleConv).status == "not_attempted"


# --- ch2.down mistakes ---------------------------------------------------------------------------------


def make_down(layers_of):
    class Down(nn.Module):
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.maxpool_conv = nn.Sequential(*layers_of(in_channels, out_channels))

        def forward(self, x):
            return self.maxpool_conv(x)

    return Down


def test_down_that_pools_after_the_double_conv_fails():
    down = make_down(lambda i, o: [ref.DoubleConv(i, o), nn.MaxPool2d(2)])
    expect_fail("ch2.down", down, "pools after the DoubleConv")


def test_down_without_pooling_fails():
    down = make_down(lambda i, o: [ref.DoubleConv(i, o)])
    expect_fail("ch2.down", down, "does not pool")


def test_down_with_average_pooling_fails():
    down = make_down(lambda i, o: [nn.AvgPool2d(2), ref.DoubleConv(i, o)])
    expect_fail("ch2.down", down, "AvgPool2d", "MaxPool2d(2)")


def test_down_that_keeps_the_input_channels_fails():
    down = make_down(lambda i, o: [nn.MaxPool2d(2), ref.DoubleConv(i, i)])
    expect_fail("ch2.down", down, "must map 4 to 8 channels")


def test_down_with_a_3x3_pool_fails():
    down = make_down(lambda i, o: [nn.MaxPool2d(3, stride=2, padding=1), ref.DoubleConv(i, o)])
    expect_fail("ch2.down", down, "nn.MaxPool2d(2)")


def test_down_with_its_own_attribute_names_fails():
    class Down(nn.Module):
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.pool = nn.MaxPool2d(2)
            self.conv = ref.DoubleConv(in_channels, out_channels)

        def forward(self, x):
            return self.conv(self.pool(x))

    expect_fail("ch2.down", Down, "no attribute maxpool_conv")


# --- ch2.up mistakes ------------------------------------------------------------------------------------


class UpWithoutPadding(ref.Up):
    def forward(self, x, skip):
        x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UpSkipLast(ref.Up):
    def forward(self, x, skip):
        x = self.up(x)
        diff_h, diff_w = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
        x = F.pad(x, [diff_w // 2, diff_w - diff_w // 2, diff_h // 2, diff_h - diff_h // 2])
        return self.conv(torch.cat([x, skip], dim=1))


class UpPaddingOneSide(ref.Up):
    def forward(self, x, skip):
        x = self.up(x)
        x = F.pad(x, [0, skip.size(3) - x.size(3), 0, skip.size(2) - x.size(2)])
        return self.conv(torch.cat([skip, x], dim=1))


class UpPaddingHeightFirst(ref.Up):
    def forward(self, x, skip):
        x = self.up(x)
        diff_h, diff_w = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
        x = F.pad(x, [diff_h // 2, diff_h - diff_h // 2, diff_w // 2, diff_w - diff_w // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UpWithoutSkip(ref.Up):
    def forward(self, x, skip):
        return self.conv(self.up(x))


class UpBilinearWithoutMidChannels(ref.Up):
    def __init__(self, in_channels, out_channels, bilinear=False):
        super().__init__(in_channels, out_channels, bilinear)
        if bilinear:
            self.conv = ref.DoubleConv(in_channels, out_channels)


class UpAlignCornersFalse(ref.Up):
    def __init__(self, in_channels, out_channels, bilinear=False):
        super().__init__(in_channels, out_channels, bilinear)
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)


class UpTransposeToOutChannels(ref.Up):
    def __init__(self, in_channels, out_channels, bilinear=False):
        super().__init__(in_channels, out_channels, bilinear)
        if not bilinear:
            self.up = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)


def test_up_without_padding_fails_on_odd_sizes():
    result = expect_fail("ch2.up", UpWithoutPadding, "odd-sized skip (1, 8, 9, 11)", "sizes must match in torch.cat")
    assert "pad" in result.hint.lower()


def test_up_that_concatenates_the_skip_last_fails():
    expect_fail("ch2.up", UpSkipLast, "concatenates [x, skip]", "torch.cat([skip, x], dim=1)")


def test_up_that_pads_on_one_side_fails():
    expect_fail("ch2.up", UpPaddingOneSide, "pads on one side only")


def test_up_that_pads_height_and_width_in_the_wrong_order_fails():
    expect_fail("ch2.up", UpPaddingHeightFirst, "(1, 8, 9, 10)", "last dimension, W, first")


def test_up_that_ignores_the_skip_fails():
    expect_fail("ch2.up", UpWithoutSkip, "concatenate the skip")


def test_bilinear_up_without_mid_channels_fails():
    expect_fail("ch2.up", UpBilinearWithoutMidChannels, "mid_channels=8", "in_channels // 2")


def test_bilinear_up_with_align_corners_false_fails():
    expect_fail("ch2.up", UpAlignCornersFalse, "align_corners=False")


def test_up_whose_transposed_conv_keeps_the_channels_fails():
    expect_fail("ch2.up", UpTransposeToOutChannels, "nn.ConvTranspose2d(16, 8, kernel_size=2, stride=2)")


# --- ch2.unet mistakes ----------------------------------------------------------------------------------


class UNetWithoutFactor(ref.UNet):
    def __init__(self, n_channels, n_classes, bilinear=False, base_channels=64):
        super().__init__(n_channels, n_classes, bilinear, base_channels)
        c = base_channels
        self.down4 = ref.Down(8 * c, 16 * c)


class UNetWithSoftmax(ref.UNet):
    def forward(self, x):
        return super().forward(x).softmax(dim=1)


class UNetRenamedHead(ref.UNet):
    def __init__(self, n_channels, n_classes, bilinear=False, base_channels=64):
        super().__init__(n_channels, n_classes, bilinear, base_channels)
        self.head = self.outc
        del self.outc


class UNetFixedInputChannels(ref.UNet):
    def __init__(self, n_channels, n_classes, bilinear=False, base_channels=64):
        super().__init__(3, n_classes, bilinear, base_channels)


class UNetWithoutHead(ref.UNet):
    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        return self.up4(x, x1)  # forgets outc


class UNetCroppingInsteadOfPadding(ref.UNet):
    """Resizes the input to a multiple of 16 and back: runs, but is not the U-Net that pads."""

    def forward(self, x):
        size = x.shape[-2:]
        logits = super().forward(F.interpolate(x, size=(32, 48), mode="bilinear"))
        return F.interpolate(logits, size=size, mode="bilinear")


class UNetWithoutBaseChannels(nn.Module):
    """A correct U-Net written without the optional base_channels argument."""

    def __init__(self, n_channels, n_classes, bilinear=False):
        super().__init__()
        self.inner = ref.UNet(n_channels, n_classes, bilinear)
        for name, module in list(self.inner.named_children()):
            setattr(self, name, module)
        del self.inner

    def forward(self, x):
        return ref.UNet.forward(self, x)


def test_bilinear_unet_without_the_channel_factor_fails():
    expect_fail("ch2.unet", UNetWithoutFactor, "UNet(3, 2, bilinear=True)", "down4", "factor = 2")


def test_unet_with_softmax_on_its_output_fails():
    expect_fail("ch2.unet", UNetWithSoftmax, "applies an activation", "logits")


def test_unet_with_renamed_parts_fails_naming_them():
    expect_fail("ch2.unet", UNetRenamedHead, "has no outc", "inc, down1..down4, up1..up4, outc")


def test_unet_that_ignores_n_channels_fails():
    expect_fail("ch2.unet", UNetFixedInputChannels, "UNet(1, 5)", "inc.double_conv.0.weight", "n_channels")


def test_unet_that_forgets_the_output_conv_fails():
    expect_fail("ch2.unet", UNetWithoutHead, "has shape (1, 4, 37, 45), expected (1, 3, 37, 45)")


def test_unet_that_resizes_instead_of_padding_fails():
    expect_fail("ch2.unet", UNetCroppingInsteadOfPadding, "differs from the reference", "up4(x, x1)")


def test_unet_without_base_channels_is_checked_at_full_size_and_passes():
    result = run("ch2.unet", UNetWithoutBaseChannels)
    assert result.status == "pass", result


def test_unet_without_base_channels_is_still_quick_to_check():
    run("ch2.unet", UNetWithoutBaseChannels)
    start = time.perf_counter()
    run("ch2.unet", UNetWithoutBaseChannels)
    assert time.perf_counter() - start < 1.5


# --- ch2.residual_block mistakes ---------------------------------------------------------------------------


class BlockWithoutProjection(ref.ResidualBlock):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__(in_channels, out_channels, stride)
        self.downsample = None


class BlockProjectingOnlyOnStride(ref.ResidualBlock):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__(in_channels, out_channels, stride)
        if stride == 1:
            self.downsample = None


class BlockReluBeforeAddition(ref.ResidualBlock):
    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return out + identity


class BlockWithoutFinalRelu(ref.ResidualBlock):
    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + identity


class BlockWithoutShortcut(ref.ResidualBlock):
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


class BlockWithBias(ref.ResidualBlock):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__(in_channels, out_channels, stride)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class BlockStridingConv2(ref.ResidualBlock):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__(in_channels, out_channels, stride)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BlockAlwaysProjecting(ref.ResidualBlock):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__(in_channels, out_channels, stride)
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )


class BlockWithOtherNames(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False))

    def forward(self, x):
        return self.body(x)


def test_residual_block_without_projection_shortcut_fails():
    expect_fail("ch2.residual_block", BlockWithoutProjection, "no projection shortcut", "halves H and W")


def test_residual_block_that_projects_only_when_striding_fails():
    expect_fail("ch2.residual_block", BlockProjectingOnlyOnStride, "ResidualBlock(8, 16, stride=1)", "changes the")


def test_residual_block_with_relu_before_the_addition_fails():
    expect_fail("ch2.residual_block", BlockReluBeforeAddition, "ReLU to the residual before adding")


def test_residual_block_without_relu_after_the_addition_fails():
    expect_fail("ch2.residual_block", BlockWithoutFinalRelu, "no ReLU after the addition")


def test_residual_block_without_shortcut_fails():
    expect_fail("ch2.residual_block", BlockWithoutShortcut, "adds no shortcut")


def test_residual_block_with_conv_bias_before_batchnorm_fails():
    expect_fail("ch2.residual_block", BlockWithBias, "conv1 has a bias", "bias=False")


def test_residual_block_striding_conv2_fails():
    expect_fail("ch2.residual_block", BlockStridingConv2, "puts the stride on conv2")


def test_residual_block_projecting_when_the_identity_fits_fails():
    expect_fail("ch2.residual_block", BlockAlwaysProjecting, "downsample must be None")


def test_residual_block_with_other_names_fails_naming_torchvision():
    expect_fail("ch2.residual_block", BlockWithOtherNames, "has no conv1, bn1, conv2, bn2, downsample", "BasicBlock")


# --- other correct styles pass (the checkers assume no construction style) -----------------------------


class DoubleConvFromALoop(nn.Module):
    """Layers built in a loop, padding='same', ReLU not in place, a dict_keys attribute (deepcopy-hostile)."""

    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        widths = [in_channels, mid_channels or out_channels, out_channels]
        layers = []
        for n_in, n_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(n_in, n_out, (3, 3), padding="same", bias=False), nn.BatchNorm2d(n_out), nn.ReLU()]
        self.double_conv = nn.Sequential(*layers)
        self.names = {"a": 1}.keys()

    def forward(self, x):
        for layer in self.double_conv:
            x = layer(x)
        return x


class DownWithKeywords(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential()
        self.maxpool_conv.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.maxpool_conv.append(DoubleConvFromALoop(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class UpWithOtherIdioms(nn.Module):
    """UpsamplingBilinear2d (align_corners=True), sizes from shape[-2:], a hook registered in __init__."""

    def __init__(self, in_channels, out_channels, bilinear=False):
        super().__init__()
        if bilinear:
            self.up = nn.UpsamplingBilinear2d(scale_factor=2)
            self.conv = ref.DoubleConv(in_channels, out_channels, mid_channels=in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, 2)
            self.conv = ref.DoubleConv(in_channels, out_channels)
        self.seen = []
        self.register_forward_hook(lambda module, args, output: self.seen.append(output.shape))

    def forward(self, x, skip):
        x = self.up(x)
        (h, w), (sh, sw) = x.shape[-2:], skip.shape[-2:]
        top, left = (sh - h) // 2, (sw - w) // 2
        x = F.pad(x, (left, sw - w - left, top, sh - h - top))
        return self.conv(torch.cat((skip, x), 1))


class UNetWithSkipList(ref.UNet):
    """A forward that keeps the skips in a list, and a non-module attribute."""

    def __init__(self, n_channels, n_classes, bilinear=False, base_channels=64):
        super().__init__(n_channels, n_classes, bilinear, base_channels)
        self.part_names = dict.fromkeys(["inc", "outc"]).keys()

    def forward(self, x):
        skips = [self.inc(x)]
        for down in (self.down1, self.down2, self.down3, self.down4):
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in (self.up1, self.up2, self.up3, self.up4):
            x = up(x, skips.pop())
        return self.outc(x)


class ResidualBlockInPlace(nn.Module):
    """F.relu, an in-place addition, tuple padding, no self.relu."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, (1, 1), bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, (1, 1), bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        needs_projection = stride != 1 or in_channels != out_channels
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
            if needs_projection
            else None
        )

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu(out)


@pytest.mark.parametrize(
    ("exercise_id", "answer"),
    [
        ("ch2.double_conv", DoubleConvFromALoop),
        ("ch2.down", DownWithKeywords),
        ("ch2.up", UpWithOtherIdioms),
        ("ch2.unet", UNetWithSkipList),
        ("ch2.residual_block", ResidualBlockInPlace),
    ],
)
def test_correct_answers_in_other_styles_pass(exercise_id, answer):
    result = run(exercise_id, answer)
    assert result.status == "pass", result


def test_a_residual_block_that_uses_bn1_twice_fails_the_checker():
    expect_fail("ch2.residual_block", BlockUsingBn1Twice, "differs from the reference")


# --- ch2.trace_shapes: mistakes and other correct styles -----------------------------------------------


def _leaves(model):
    return [(name, m) for name, m in model.named_modules() if not list(m.children())]


def trace_children_only(model, *inputs):
    rows = []
    handles = [
        child.register_forward_hook(lambda m, a, out, name=name: rows.append((name, tuple(out.shape))))
        for name, child in model.named_children()
    ]
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def trace_every_module(model, *inputs):
    rows = []
    handles = [
        m.register_forward_hook(lambda m, a, out, name=name: rows.append((name, tuple(out.shape))))
        for name, m in model.named_modules()
    ]
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def trace_never_removing(model, *inputs):
    rows = []
    for name, m in _leaves(model):
        m.register_forward_hook(lambda m, a, out, name=name: rows.append((name, tuple(out.shape))))
    model(*inputs)
    return rows


def trace_removing_only_on_success(model, *inputs):
    rows = []
    handles = [
        m.register_forward_hook(lambda m, a, out, name=name: rows.append((name, tuple(out.shape))))
        for name, m in _leaves(model)
    ]
    model(*inputs)  # no try/finally: an error leaves every hook behind
    for handle in handles:
        handle.remove()
    return rows


def trace_swallowing_errors(model, *inputs):
    rows = []
    handles = [
        m.register_forward_hook(lambda m, a, out, name=name: rows.append((name, tuple(out.shape))))
        for name, m in _leaves(model)
    ]
    try:
        model(*inputs)
    except Exception:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return rows


def trace_in_eval_mode(model, *inputs):
    model.eval()  # "a trace should not update BatchNorm", but the learner's mode is gone
    return ref.trace_shapes(model, *inputs)


def trace_clearing_every_hook(model, *inputs):
    rows = []
    for name, m in _leaves(model):
        m.register_forward_hook(lambda m, a, out, name=name: rows.append((name, tuple(out.shape))))
    try:
        model(*inputs)
    finally:
        for m in model.modules():
            m._forward_hooks.clear()
    return rows


def trace_into_a_dict(model, *inputs):
    shapes = {}
    handles = [
        m.register_forward_hook(lambda m, a, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name, m in _leaves(model)
    ]
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return list(shapes.items())


def trace_input_shapes(model, *inputs):
    rows = []
    handles = [
        m.register_forward_hook(lambda m, args, out, name=name: rows.append((name, tuple(args[0].shape))))
        for name, m in _leaves(model)
    ]
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def test_trace_of_direct_children_only_fails():
    expect_fail("ch2.trace_shapes", trace_children_only, "only the direct children", "leaf")


def test_trace_of_every_module_fails_naming_the_containers():
    expect_fail("ch2.trace_shapes", trace_every_module, "container modules too", "'' (the model itself)")


def test_trace_that_never_removes_its_hooks_fails():
    expect_fail("ch2.trace_shapes", trace_never_removing, "left 7 hook(s) registered", "handle.remove()")


def test_trace_without_finally_fails_on_a_forward_that_raises():
    expect_fail("ch2.trace_shapes", trace_removing_only_on_success, "whose forward raised", "finally")


def test_trace_that_swallows_the_models_error_fails():
    expect_fail("ch2.trace_shapes", trace_swallowing_errors, "the error must reach the caller")


def test_trace_that_switches_to_eval_mode_fails():
    expect_fail("ch2.trace_shapes", trace_in_eval_mode, "model was in training mode and is now in eval mode")


def test_trace_that_clears_the_models_own_hooks_fails():
    expect_fail("ch2.trace_shapes", trace_clearing_every_hook, "removed a forward hook that was on the model")


def test_trace_into_a_dict_loses_the_second_call_and_fails():
    expect_fail("ch2.trace_shapes", trace_into_a_dict, "model.act, which runs twice")


def test_trace_of_input_shapes_fails():
    expect_fail("ch2.trace_shapes", trace_input_shapes, "records the input shapes")


def test_trace_returning_a_dict_fails():
    expect_fail("ch2.trace_shapes", lambda model, *inputs: dict(ref.trace_shapes(model, *inputs)), "list of (name")


def trace_with_a_global_hook(model, *inputs):
    names = {m: name for name, m in model.named_modules() if len(list(m.children())) == 0}
    rows = []

    def hook(module, args, output):
        if module in names:
            rows.append([names[module], output.size()])  # lists and torch.Size: other types, same content

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        model(*inputs)
    finally:
        handle.remove()
    return rows


class ShapeTracer:
    """A context manager: hooks on enter, removed on exit (an object-style correct answer)."""

    def __init__(self, model):
        self.model, self.rows, self.handles = model, [], []

    def __enter__(self):
        for name, m in self.model.named_modules():
            if next(m.children(), None) is None:
                self.handles.append(m.register_forward_hook(self._hook(name), with_kwargs=True))
        return self

    def _hook(self, name):
        def hook(module, args, kwargs, output):
            self.rows.append((name, tuple(output.shape)))

        return hook

    def __exit__(self, *exc):
        while self.handles:
            self.handles.pop().remove()
        return False


def trace_with_a_context_manager(model, x):
    with ShapeTracer(model) as tracer, torch.inference_mode():
        model(x)
    return tracer.rows


@pytest.mark.parametrize("answer", [trace_with_a_global_hook, trace_with_a_context_manager])
def test_trace_shapes_written_in_other_styles_passes(answer):
    result = run("ch2.trace_shapes", answer)
    assert result.status == "pass", result


# --- ch2.infer_flat_size: mistakes and other correct styles --------------------------------------------


def flat_size_in_training_mode(features, input_shape):
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape))[0].numel()


def flat_size_left_in_eval_mode(features, input_shape):
    p = next(features.parameters(), None)
    features.eval()
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape, dtype=p.dtype if p is not None else None))[0].numel()


def flat_size_restoring_only_the_top(features, input_shape):
    was_training = features.training
    features.eval()
    p = next(features.parameters(), None)
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape, dtype=p.dtype if p is not None else None))
    features.train(was_training)
    return out[0].numel()


def flat_size_with_a_random_input(features, input_shape):
    modes = {m: m.training for m in features.modules()}
    features.eval()
    p = next(features.parameters(), None)
    with torch.no_grad():
        out = features(torch.randn(1, *input_shape, dtype=p.dtype if p is not None else None))
    for m, training in modes.items():
        m.train(training)
    return out[0].numel()


def flat_size_in_float32(features, input_shape):
    modes = {m: m.training for m in features.modules()}
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape))
    for m, training in modes.items():
        m.training = training
    return out[0].numel()


def flat_size_assuming_parameters(features, input_shape):
    modes = {m: m.training for m in features.modules()}
    p = next(features.parameters())
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape, dtype=p.dtype))
    for m, training in modes.items():
        m.training = training
    return out[0].numel()


def flat_size_with_the_batch(features, input_shape):
    return ref.infer_flat_size(features, input_shape) * 2  # numel() of a (2, ...) output


def flat_size_of_the_channels(features, input_shape):
    modes = {m: m.training for m in features.modules()}
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape, dtype=next(features.parameters()).dtype))
    for m, training in modes.items():
        m.training = training
    return out.shape[1]


def flat_size_as_a_shape(features, input_shape):
    copy_ = copy.deepcopy(features).eval()
    with torch.no_grad():
        return copy_(torch.zeros(1, *input_shape)).shape[1:]


def test_dry_run_in_training_mode_fails_naming_the_batchnorm_statistics():
    expect_fail("ch2.infer_flat_size", flat_size_in_training_mode, "changed the BatchNorm statistics", "eval mode")


def test_dry_run_that_leaves_the_model_in_eval_mode_fails():
    expect_fail("ch2.infer_flat_size", flat_size_left_in_eval_mode, "features was in training mode and is now in eval")


def test_dry_run_that_restores_only_the_top_mode_fails_naming_the_frozen_batchnorm():
    expect_fail(
        "ch2.infer_flat_size", flat_size_restoring_only_the_top, "features.6 was in eval mode", "train(was_training)"
    )


def test_dry_run_with_a_random_input_fails_naming_the_random_state():
    expect_fail("ch2.infer_flat_size", flat_size_with_a_random_input, "random-number state", "torch.zeros")


def test_dry_run_in_float32_on_a_float64_model_fails_naming_the_dtype():
    expect_fail("ch2.infer_flat_size", flat_size_in_float32, "float64 model", "dtype")


def test_dry_run_that_assumes_parameters_fails_on_a_parameter_free_model():
    expect_fail(
        "ch2.infer_flat_size", flat_size_assuming_parameters, "StopIteration", "next(features.parameters(), None)"
    )


def test_flat_size_that_counts_the_batch_fails():
    expect_fail("ch2.infer_flat_size", flat_size_with_the_batch, "returned 512, expected 256", "batch dimension")


def test_flat_size_of_the_channels_only_fails():
    expect_fail("ch2.infer_flat_size", flat_size_of_the_channels, "the channels only")


def test_flat_size_returned_as_a_shape_fails():
    expect_fail("ch2.infer_flat_size", flat_size_as_a_shape, "must return an int", "numel()")


def flat_size_on_a_copy(features, input_shape):
    """Another correct style: a deep copy in eval mode, inside fork_rng, with a random input."""
    twin = copy.deepcopy(features).eval()
    dtype = next((p.dtype for p in twin.parameters()), torch.float32)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        out = twin(torch.randn(3, *input_shape, dtype=dtype))
    return np.prod(out.shape[1:])  # a NumPy integer


def flat_size_restoring_a_snapshot(features, input_shape):
    """Another correct style: train-mode dry run, then the state dict and every mode put back."""
    state = copy.deepcopy(features.state_dict())
    modes = [m.training for m in features.modules()]
    rng = torch.get_rng_state()
    buffer = next(iter(features.parameters()), torch.zeros(()))
    with torch.no_grad():
        out = features(torch.ones(2, *input_shape, dtype=buffer.dtype))
    features.load_state_dict(state)
    for m, training in zip(features.modules(), modes, strict=True):
        m.train(training)
    torch.set_rng_state(rng)
    return math.prod(out.flatten(1).shape[1:])


@pytest.mark.parametrize("answer", [flat_size_on_a_copy, flat_size_restoring_a_snapshot])
def test_infer_flat_size_written_in_other_styles_passes(answer):
    result = run("ch2.infer_flat_size", answer)
    assert result.status == "pass", result


# --- junk never crashes ---------------------------------------------------------------------------------


class Hangs(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, *args):
        while True:
            pass


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
@pytest.mark.parametrize("junk", [None, 42, nn.Linear, Hangs], ids=["None", "int", "Linear", "hangs"])
def test_junk_fails_without_raising(exercise_id, junk, short_time_budget):
    assert run(exercise_id, junk).status in ("fail", "not_attempted")
