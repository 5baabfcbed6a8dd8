"""Chapter 5: the references pass their checks, real mistakes fail with the intended message, and the facts the
notebook states about torch.nn.init hold on the pinned PyTorch."""

import math
import time

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from course_utils import checking
from course_utils.solutions import ch02_model_blocks as ch02
from course_utils.solutions import ch05_initialization as ref


def _run(exercise_id: str, **names: object) -> checking.CheckResult:
    return checking.run(exercise_id, names)


def _expect_fail(result: checking.CheckResult, *fragments: str) -> None:
    assert result.status == "fail", str(result)
    for fragment in fragments:
        assert fragment in result.message, str(result)


# --- ch5.init_weights ---------------------------------------------------------------------------------


def _init_weights_with(conv=None, linear=None, batchnorm=True, other=None):
    """An init_weights with one branch swapped for a mistake (None keeps the reference's branch)."""

    def init_weights(module):
        if isinstance(module, nn.Conv2d):
            if conv is not None:
                conv(module)
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            if batchnorm:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear is not None:
                linear(module)
            else:
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        elif other is not None:
            other(module)

    return init_weights


def test_reference_init_weights_passes():
    assert _run("ch5.init_weights", init_weights=ref.init_weights).status == "pass"


def test_init_weights_with_normal_mean_argument_fails():
    def linear(m):
        nn.init.normal_(m.weight, 0.01)  # the mean, not the std
        nn.init.zeros_(m.bias)

    _expect_fail(_run("ch5.init_weights", init_weights=_init_weights_with(linear=linear)), "sets the MEAN to 0.01")


def test_init_weights_with_fan_in_for_conv_fails():
    def conv(m):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)

    _expect_fail(_run("ch5.init_weights", init_weights=_init_weights_with(conv=conv)), "fan_in = 576", "fan_out = 1152")


def test_init_weights_with_tanh_gain_for_conv_fails():
    def conv(m):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="tanh")
        if m.bias is not None:
            nn.init.zeros_(m.bias)

    _expect_fail(_run("ch5.init_weights", init_weights=_init_weights_with(conv=conv)), "the gain is tanh's 5/3")


def test_init_weights_with_kaiming_uniform_for_conv_fails():
    def conv(m):
        nn.init.kaiming_uniform_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)

    _expect_fail(_run("ch5.init_weights", init_weights=_init_weights_with(conv=conv)), "a uniform one 58%")


def test_init_weights_that_initializes_the_linear_bias_instead_of_the_weight_fails():
    def linear(m):
        nn.init.normal_(m.bias, std=0.01)
        nn.init.zeros_(m.weight)

    _expect_fail(
        _run("ch5.init_weights", init_weights=_init_weights_with(linear=linear)),
        "initialized the bias instead of the weight",
    )


def test_init_weights_that_zeroes_a_missing_conv_bias_fails_with_a_hint():
    def conv(m):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(m.bias)  # None for Conv2d(..., bias=False)

    result = _run("ch5.init_weights", init_weights=_init_weights_with(conv=conv))
    _expect_fail(result, "AttributeError")
    assert "bias=False" in result.hint


def test_init_weights_that_skips_batchnorm_fails():
    _expect_fail(
        _run("ch5.init_weights", init_weights=_init_weights_with(batchnorm=False)),
        "BatchNorm2d(128) at bn was left as it was",
    )


def test_init_weights_that_touches_every_module_with_a_weight_fails():
    def other(m):
        if getattr(m, "weight", None) is not None:
            nn.init.normal_(m.weight, std=0.01)

    _expect_fail(_run("ch5.init_weights", init_weights=_init_weights_with(other=other)), "changed head.embed.weight")


def test_init_weights_that_loops_over_all_parameters_fails():
    def init_weights(module):
        for parameter in module.parameters(recurse=False):
            nn.init.normal_(parameter, std=0.01)

    _expect_fail(_run("ch5.init_weights", init_weights=init_weights), "must be left alone")


def test_init_weights_that_loops_over_submodules_itself_fails():
    def init_weights(module):
        for m in module.modules():  # a double loop once model.apply calls it on every module
            ref.init_weights(m)

    _expect_fail(_run("ch5.init_weights", init_weights=init_weights), "changed the Conv2d inside it")


def test_init_weights_that_replaces_parameters_fails():
    def linear(m):
        m.weight = nn.Parameter(torch.randn(m.out_features, m.in_features) * 0.01)
        nn.init.zeros_(m.bias)

    _expect_fail(
        _run("ch5.init_weights", init_weights=_init_weights_with(linear=linear)), "head.fc.weight is a new Parameter"
    )


def test_init_weights_stub_is_not_attempted():
    def init_weights(module):
        raise NotImplementedError

    assert _run("ch5.init_weights", init_weights=init_weights).status == "not_attempted"


# --- ch5.kaiming_normal -------------------------------------------------------------------------------


def _kaiming_with(fan=None, gain=None, fill=None):
    """A my_kaiming_normal_ with one step swapped for a mistake (None keeps the reference's step)."""

    def my_kaiming_normal_(tensor, mode="fan_in", nonlinearity="relu", a=0.0):
        receptive_field = math.prod(tensor.shape[2:])
        if fan is not None:
            n = fan(tensor, mode)
        else:
            n = (tensor.shape[1] if mode == "fan_in" else tensor.shape[0]) * receptive_field
        g = gain(nonlinearity, a) if gain is not None else nn.init.calculate_gain(nonlinearity, a)
        std = g / math.sqrt(n)
        with torch.no_grad():
            if fill is not None:
                return fill(tensor, std)
            tensor.normal_(0.0, std)
        return tensor

    return my_kaiming_normal_


def test_reference_my_kaiming_normal_passes():
    assert _run("ch5.kaiming_normal", my_kaiming_normal_=ref.my_kaiming_normal_).status == "pass"


def test_my_kaiming_normal_that_passes_std_as_the_mean_fails():
    def fill(tensor, std):
        tensor.normal_(std)
        return tensor

    _expect_fail(_run("ch5.kaiming_normal", my_kaiming_normal_=_kaiming_with(fill=fill)), "sets the MEAN")


def test_my_kaiming_normal_with_swapped_fans_fails():
    def fan(tensor, mode):  # fan_in taken from the output dimension
        return (tensor.shape[0] if mode == "fan_in" else tensor.shape[1]) * math.prod(tensor.shape[2:])

    _expect_fail(_run("ch5.kaiming_normal", my_kaiming_normal_=_kaiming_with(fan=fan)), "what fan_out = 200 gives")


def test_my_kaiming_normal_that_ignores_mode_fails():
    def fan(tensor, mode):
        return tensor.shape[1] * math.prod(tensor.shape[2:])

    _expect_fail(
        _run("ch5.kaiming_normal", my_kaiming_normal_=_kaiming_with(fan=fan)), "what fan_in = 800 gives; fan_out"
    )


def test_my_kaiming_normal_without_the_kernel_size_fails():
    def fan(tensor, mode):
        return tensor.shape[1] if mode == "fan_in" else tensor.shape[0]

    _expect_fail(
        _run("ch5.kaiming_normal", my_kaiming_normal_=_kaiming_with(fan=fan)), "leaves out the kernel's 9 positions"
    )


def test_my_kaiming_normal_with_relu_gain_for_tanh_fails():
    _expect_fail(
        _run("ch5.kaiming_normal", my_kaiming_normal_=_kaiming_with(gain=lambda nonlinearity, a: math.sqrt(2.0))),
        "nonlinearity='tanh'",
        "which is relu's sqrt(2) / sqrt(fan_in)",
    )


def test_my_kaiming_normal_with_the_wrong_leaky_relu_gain_fails():
    def gain(nonlinearity, a):
        if nonlinearity == "leaky_relu":
            return math.sqrt(2.0 / (1 + a))  # the slope, not its square
        return nn.init.calculate_gain(nonlinearity)

    _expect_fail(_run("ch5.kaiming_normal", my_kaiming_normal_=_kaiming_with(gain=gain)), "a=0.5", "expected 0.0400")


def test_my_kaiming_normal_with_the_variance_as_std_fails():
    def fill(tensor, std):
        tensor.normal_(0.0, std**2)
        return tensor

    _expect_fail(_run("ch5.kaiming_normal", my_kaiming_normal_=_kaiming_with(fill=fill)), "the variance was used")


def test_my_kaiming_normal_from_a_uniform_distribution_fails():
    def fill(tensor, std):
        bound = math.sqrt(3.0) * std
        tensor.uniform_(-bound, bound)
        return tensor

    _expect_fail(_run("ch5.kaiming_normal", my_kaiming_normal_=_kaiming_with(fill=fill)), "a uniform one 58%")


def test_my_kaiming_normal_that_returns_a_new_tensor_fails():
    def fill(tensor, std):
        return torch.randn(tensor.shape) * std

    _expect_fail(_run("ch5.kaiming_normal", my_kaiming_normal_=_kaiming_with(fill=fill)), "returned a new tensor")


def test_my_kaiming_normal_that_calls_torch_kaiming_fails():
    def my_kaiming_normal_(tensor, mode="fan_in", nonlinearity="relu", a=0.0):
        return nn.init.kaiming_normal_(tensor, a=a, mode=mode, nonlinearity=nonlinearity)

    _expect_fail(
        _run("ch5.kaiming_normal", my_kaiming_normal_=my_kaiming_normal_), "calls torch.nn.init.kaiming_normal_"
    )
    assert nn.init.kaiming_normal_.__name__ == "kaiming_normal_"  # the spy is gone again


def test_my_kaiming_normal_without_no_grad_fails_on_a_parameter_with_a_hint():
    def my_kaiming_normal_(tensor, mode="fan_in", nonlinearity="relu", a=0.0):
        fan = (tensor.shape[1] if mode == "fan_in" else tensor.shape[0]) * math.prod(tensor.shape[2:])
        return tensor.normal_(0.0, nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan))

    result = _run("ch5.kaiming_normal", my_kaiming_normal_=my_kaiming_normal_)
    _expect_fail(result, "nn.Parameter", "leaf Variable")
    assert "torch.no_grad()" in result.hint


# --- ch5.zero_init_residual ---------------------------------------------------------------------------


def test_reference_zero_init_residual_passes():
    assert _run("ch5.zero_init_residual", zero_init_residual=ref.zero_init_residual).status == "pass"


def test_zero_init_residual_that_visits_two_levels_only_fails():
    def zero_init_residual(model):
        count = 0
        for layer in model.children():
            for block in layer.children():
                if isinstance(block, ch02.ResidualBlock):
                    nn.init.zeros_(block.bn2.weight)
                    count += 1
        return count

    result = _run("ch5.zero_init_residual", zero_init_residual=zero_init_residual)
    _expect_fail(result, "layer2.1.0.bn2.weight", "was not set to zero")
    assert "modules()" in result.hint


def test_zero_init_residual_that_zeroes_the_bias_fails():
    def zero_init_residual(model):
        blocks = [m for m in model.modules() if isinstance(m, ch02.ResidualBlock)]
        for block in blocks:
            nn.init.zeros_(block.bn2.bias)
        return len(blocks)

    _expect_fail(_run("ch5.zero_init_residual", zero_init_residual=zero_init_residual), "zeroed layer1.0.bn2.bias")


def test_zero_init_residual_that_zeroes_every_batchnorm_fails():
    def zero_init_residual(model):
        count = 0
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.zeros_(module.weight)
                count += 1
        return count

    _expect_fail(
        _run("ch5.zero_init_residual", zero_init_residual=zero_init_residual),
        "changed stem.1.weight, a BatchNorm outside the residual branches",
    )


def test_zero_init_residual_that_zeroes_the_last_batchnorm_in_module_order_fails():
    def zero_init_residual(model):
        blocks = [m for m in model.modules() if isinstance(m, ch02.ResidualBlock)]
        for block in blocks:
            last = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
            nn.init.zeros_(last.weight)
        return len(blocks)

    _expect_fail(
        _run("ch5.zero_init_residual", zero_init_residual=zero_init_residual),
        "changed layer2.0.downsample.1.weight, the shortcut's BatchNorm",
    )


def test_zero_init_residual_that_zeroes_conv2_fails():
    def zero_init_residual(model):
        blocks = [m for m in model.modules() if isinstance(m, ch02.ResidualBlock)]
        for block in blocks:
            nn.init.zeros_(block.conv2.weight)
        return len(blocks)

    _expect_fail(
        _run("ch5.zero_init_residual", zero_init_residual=zero_init_residual),
        "zeroed layer1.0.conv2.weight instead of layer1.0.bn2.weight",
    )


def test_zero_init_residual_that_assigns_new_parameters_fails():
    def zero_init_residual(model):
        blocks = [m for m in model.modules() if isinstance(m, ch02.ResidualBlock)]
        for block in blocks:
            block.bn2.weight = nn.Parameter(torch.zeros_like(block.bn2.weight))
        return len(blocks)

    _expect_fail(
        _run("ch5.zero_init_residual", zero_init_residual=zero_init_residual),
        "layer1.0.bn2.weight is a new Parameter object",
    )


def test_zero_init_residual_that_returns_nothing_fails():
    def zero_init_residual(model):
        ref.zero_init_residual(model)

    _expect_fail(_run("ch5.zero_init_residual", zero_init_residual=zero_init_residual), "must return", "got None")


def test_zero_init_residual_that_counts_modules_fails():
    def zero_init_residual(model):
        ref.zero_init_residual(model)
        return len(list(model.modules()))

    _expect_fail(
        _run("ch5.zero_init_residual", zero_init_residual=zero_init_residual), "the model has 7 residual blocks"
    )


# --- the facts the notebook states, on the pinned PyTorch ---------------------------------------------------


@pytest.mark.parametrize("layer", [nn.Linear(500, 300), nn.Conv2d(64, 128, 3)], ids=["Linear", "Conv2d"])
def test_default_init_is_uniform_within_one_over_sqrt_fan_in(layer):
    fan_in = layer.weight[0].numel()
    bound = 1 / math.sqrt(fan_in)
    weight, bias = layer.weight.detach(), layer.bias.detach()
    assert weight.abs().max() <= bound and weight.abs().max() > 0.99 * bound
    assert bias.abs().max() <= bound
    assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    assert math.isclose(nn.init.calculate_gain("leaky_relu", math.sqrt(5)) * math.sqrt(3), 1.0)


@pytest.mark.parametrize("a", [None, 0.0, 0.2, 1.0])
def test_leaky_relu_gain_is_sqrt_of_two_over_one_plus_a_squared(a):
    slope = 0.01 if a is None else a
    assert math.isclose(nn.init.calculate_gain("leaky_relu", a), math.sqrt(2 / (1 + slope**2)))


def test_normal_takes_the_mean_first():
    torch.manual_seed(0)
    w = nn.init.normal_(torch.empty(300, 300), 0.1)
    assert abs(w.mean().item() - 0.1) < 0.01 and abs(w.std().item() - 1.0) < 0.02


def test_tensors_have_zero_but_no_zeros_method():
    bias = nn.Linear(4, 2).bias
    assert not hasattr(bias, "zeros_")
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        bias.zero_()
    nn.init.zeros_(bias)
    assert not bias.any()


def test_trunc_normal_bounds_are_absolute_not_in_standard_deviations():
    torch.manual_seed(0)
    w = nn.init.trunc_normal_(torch.empty(1000, 500), std=0.02)
    assert w.abs().max() > 0.08  # more than 4 std: nothing was cut at 2 std


def test_apply_visits_children_before_their_parent():
    inner = nn.Sequential(nn.ReLU())
    model = nn.Sequential(nn.Linear(2, 2), inner)
    visited = []
    model.apply(visited.append)
    assert visited == [model[0], inner[0], inner, model]
    assert list(model.modules()) == [model, model[0], inner, inner[0]]


def test_init_weights_fails_on_a_lazy_module_before_the_dry_run():
    lazy = nn.Sequential(nn.LazyLinear(4))
    with pytest.raises((RuntimeError, ValueError), match="uninitialized parameter"):
        lazy.apply(ref.init_weights)
    lazy(torch.zeros(1, 3))
    lazy.apply(ref.init_weights)
    assert not lazy[0].bias.any()


def test_a_new_parameter_is_invisible_to_an_optimizer_created_before():
    layer = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.weight = nn.Parameter(torch.ones(1, 3))
    nn.functional.mse_loss(layer(torch.randn(8, 3)), torch.randn(8, 1)).backward()
    optimizer.step()
    assert torch.equal(layer.weight.detach(), torch.ones(1, 3))


def test_ref_my_kaiming_normal_rejects_unknown_modes_and_vectors():
    with pytest.raises(ValueError, match="mode"):
        ref.my_kaiming_normal_(torch.empty(4, 4), mode="fan_avg")
    with pytest.raises(ValueError, match="2 dimensions"):
        ref.my_kaiming_normal_(torch.empty(4))


def test_zero_init_residual_turns_identity_blocks_into_relu():
    torch.manual_seed(0)
    model = nn.Sequential(ch02.ResidualBlock(8, 8))
    assert ref.zero_init_residual(model) == 1
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(model.eval()(x), torch.relu(x))


def test_zero_init_residual_zeroes_as_many_blocks_as_torchvision_in_resnet34():
    import torchvision

    assert ref.zero_init_residual(ch02.resnet34()) == 16
    tv = torchvision.models.resnet34(weights=None, zero_init_residual=True)
    assert sum(1 for m in tv.modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any()) == 16


# --- timing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exercise_id", "names"),
    [
        ("ch5.init_weights", {"init_weights": ref.init_weights}),
        ("ch5.kaiming_normal", {"my_kaiming_normal_": ref.my_kaiming_normal_}),
        ("ch5.zero_init_residual", {"zero_init_residual": ref.zero_init_residual}),
        ("ch5.lsuv", {"lsuv_init_": ref.lsuv_init_}),
        ("ch5.prior_bias", {"prior_bias_": ref.prior_bias_}),
    ],
)
def test_each_check_takes_well_under_a_second(exercise_id, names):
    checking.run(exercise_id, names)  # warm up
    start = time.perf_counter()
    assert checking.run(exercise_id, names).status == "pass"
    assert time.perf_counter() - start < 1.0  # typically 0.02-0.2 s; generous for a busy machine


# --- ch5.init_weights: the hints for the two classic crashes ------------------------------------------------


def test_init_weights_with_a_zeros_method_gets_the_zero_hint():
    def init_weights(module):
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(1.0)
            module.bias.data.zeros_()  # the circulating typo: the method is zero_()
        else:
            ref.init_weights(module)

    result = _run("ch5.init_weights", init_weights=init_weights)
    _expect_fail(result, "AttributeError: 'Tensor' object has no attribute 'zeros_'", "on the BatchNorm2d at bn")
    assert "zero_()" in result.hint and "nn.init.zeros_" in result.hint
    assert "not every module has a weight" not in result.hint


def test_init_weights_with_kaiming_on_every_weight_gets_the_norm_layer_hint():
    def init_weights(module):
        if hasattr(module, "weight"):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    result = _run("ch5.init_weights", init_weights=init_weights)
    _expect_fail(result, "fewer than 2 dimensions", "on the BatchNorm2d at bn")
    assert "norm layer's weight is 1-D" in result.hint and "isinstance" in result.hint
    assert "A bias is 1-D" not in result.hint


def test_init_weights_with_kaiming_on_a_bias_gets_the_bias_hint():
    def init_weights(module):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.kaiming_normal_(module.bias)
        else:
            ref.init_weights(module)

    result = _run("ch5.init_weights", init_weights=init_weights)
    _expect_fail(result, "fewer than 2 dimensions", "on the Conv2d at conv")
    assert result.hint.startswith("A bias is 1-D")


def test_init_weights_that_reads_a_weight_every_module_lacks_gets_the_type_hint():
    def init_weights(module):
        nn.init.zeros_(module.bias) if isinstance(module, nn.ReLU) else ref.init_weights(module)

    result = _run("ch5.init_weights", init_weights=init_weights)
    _expect_fail(result, "'ReLU' object has no attribute 'bias'", "on the ReLU at relu")
    assert "not every module has a weight" in result.hint


@pytest.mark.parametrize("style", ["data", "no_grad", "tuple", "type_is", "modules_loop_safe"])
def test_init_weights_in_other_correct_styles_passes(style):
    def with_data(module):  # the .data style of older tutorials, with zero_() spelled right
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels * math.prod(module.kernel_size)
            module.weight.data.normal_(0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, nn.Linear):
            module.weight.data.normal_(std=0.01)
            module.bias.data.zero_()

    def with_no_grad(module):
        with torch.no_grad():
            with_data(module)

    def with_tuple(module):  # isinstance with a tuple, then a branch per type
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)

    def with_type_is(module):
        if type(module) is nn.Conv2d:
            nn.init.kaiming_normal_(module.weight, mode="fan_out")  # the default leaky_relu with a=0 is relu's gain
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif type(module) is nn.BatchNorm2d:
            module.reset_parameters()  # weight 1, bias 0 (and the running statistics reset)
        elif type(module) is nn.Linear:
            nn.init.trunc_normal_(module.weight, std=0.01, a=-1.0, b=1.0)  # bounds 100 std away: a plain normal
            nn.init.zeros_(module.bias)

    def with_modules_loop_safe(module):  # recurse=False keeps it to the module itself
        own = list(module.parameters(recurse=False))
        if own and isinstance(module, nn.Conv2d | nn.BatchNorm2d | nn.Linear):
            ref.init_weights(module)

    styles = {
        "data": with_data,
        "no_grad": with_no_grad,
        "tuple": with_tuple,
        "type_is": with_type_is,
        "modules_loop_safe": with_modules_loop_safe,
    }
    result = _run("ch5.init_weights", init_weights=styles[style])
    assert result.status == "pass", str(result)


# --- ch5.lsuv -------------------------------------------------------------------------------------------------

_LAYER_TYPES = (nn.Linear, nn.Conv2d)


def _lsuv_layers(model):
    return [m for m in model.modules() if isinstance(m, _LAYER_TYPES)]


def _output_std(model, layer, batch):
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.std().item()))
    with torch.no_grad():
        model(batch)
    handle.remove()
    return seen[0]


def _lsuv_with(orthogonal=True, order=None, measure="output", power=1.0, remove=True, mode=None, iterations=10):
    """An lsuv_init_ with one step swapped for a mistake; the defaults make a correct, plain answer."""

    def lsuv_init_(model, batch, *, tol=0.02, max_iters=10):
        layers = _lsuv_layers(model)
        if order is not None:
            layers = order(layers)
        for layer in layers:
            if orthogonal:
                nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)
        if mode == "eval":
            model.eval()
        for layer in layers:
            for _ in range(iterations):
                seen = []
                if measure == "output":
                    handle = layer.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.std().item()))
                else:
                    handle = layer.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0].std().item()))
                with torch.no_grad():
                    model(batch)
                if remove:
                    handle.remove()
                if abs(seen[0] - 1) < tol:
                    break
                with torch.no_grad():
                    layer.weight.div_(seen[0] ** power)
        if mode == "train":
            model.train()
        return model

    return lsuv_init_


def test_reference_lsuv_passes():
    assert _run("ch5.lsuv", lsuv_init_=ref.lsuv_init_).status == "pass"


def test_lsuv_plain_answer_passes():
    assert _run("ch5.lsuv", lsuv_init_=_lsuv_with()).status == "pass"


def test_lsuv_that_leaves_its_hooks_fails():
    _expect_fail(_run("ch5.lsuv", lsuv_init_=_lsuv_with(remove=False)), "left", "hook(s) registered")


def test_lsuv_that_leaves_the_model_in_eval_mode_fails():
    _expect_fail(_run("ch5.lsuv", lsuv_init_=_lsuv_with(mode="eval")), "changed the mode of", "to eval()")


def test_lsuv_that_restores_with_model_train_flips_the_frozen_dropout():
    _expect_fail(_run("ch5.lsuv", lsuv_init_=_lsuv_with(mode="train")), "changed the mode of dropout to train()")


def test_lsuv_without_the_orthogonal_start_fails():
    _expect_fail(_run("ch5.lsuv", lsuv_init_=_lsuv_with(orthogonal=False)), "not a scaled orthogonal matrix")


def test_lsuv_that_divides_by_the_variance_fails():
    result = _run("ch5.lsuv", lsuv_init_=_lsuv_with(power=2.0, iterations=1))
    _expect_fail(result, "conv1's output has std")


def test_lsuv_that_measures_the_layer_input_fails():
    result = _run("ch5.lsuv", lsuv_init_=_lsuv_with(measure="input"))
    _expect_fail(result, "the rescaling ran away")
    assert "OUTPUT" in result.hint


def test_lsuv_in_reverse_order_fails():
    result = _run("ch5.lsuv", lsuv_init_=_lsuv_with(order=lambda layers: layers[::-1], iterations=1))
    _expect_fail(result, "output has std")
    assert "forward order" in result.hint


def test_lsuv_that_scales_every_layer_from_one_pass_fails():
    def lsuv_init_(model, batch, *, tol=0.02, max_iters=10):
        layers = _lsuv_layers(model)
        stds = {}
        handles = [layer.register_forward_hook(lambda m, i, o: stds.__setitem__(m, o.std().item())) for layer in layers]
        for layer in layers:
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            model(batch)
            for layer in layers:  # all at once: later layers were measured before the earlier ones changed
                layer.weight.div_(stds[layer])
        for handle in handles:
            handle.remove()
        return model

    _expect_fail(_run("ch5.lsuv", lsuv_init_=lsuv_init_), "conv2's output has std")


def test_lsuv_that_replaces_weights_fails():
    def lsuv_init_(model, batch, *, tol=0.02, max_iters=10):
        ref.lsuv_init_(model, batch)
        model.fc3.weight = nn.Parameter(model.fc3.weight.detach().clone())
        return model

    _expect_fail(_run("ch5.lsuv", lsuv_init_=lsuv_init_), "fc3.weight is a new Parameter")


def test_lsuv_that_returns_nothing_fails():
    def lsuv_init_(model, batch, **kwargs):
        ref.lsuv_init_(model, batch)

    _expect_fail(_run("ch5.lsuv", lsuv_init_=lsuv_init_), "must return the model", "got None")


def test_lsuv_in_other_correct_styles_passes():
    class Hooks:  # a context manager that owns its handles
        def __init__(self, layers, hook):
            self.handles = [layer.register_forward_hook(hook) for layer in layers]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            for handle in self.handles:
                handle.remove()

    def fastai_style(model, batch, *, tol=0.02, max_iters=10):
        """Also centres each output with the bias, as fastai's LSUV does; a while loop; .data updates."""
        layers = _lsuv_layers(model)
        for layer in layers:
            nn.init.orthogonal_(layer.weight)
        for layer in layers:
            stats = {}

            def hook(module, inputs, output, stats=stats):
                stats["mean"], stats["std"] = output.mean().item(), output.std().item()

            with Hooks([layer], hook), torch.no_grad():
                model(batch)
                iterations = 0
                while iterations < max_iters and (abs(stats["std"] - 1) > tol or abs(stats["mean"]) > tol):
                    layer.bias.data -= stats["mean"]
                    layer.weight.data /= stats["std"]
                    model(batch)
                    iterations += 1
        return model

    def fixed_passes(model, batch, **kwargs):
        """No hooks for control flow: a fixed 5 passes per layer, the std read by a hook into a list."""
        was = {m: m.training for m in model.modules()}
        with torch.no_grad():
            for layer in _lsuv_layers(model):
                nn.init.orthogonal_(layer.weight)
                nn.init.zeros_(layer.bias)
            for layer in _lsuv_layers(model):
                for _ in range(5):
                    out = []
                    handle = layer.register_forward_hook(lambda m, i, o, out=out: out.append(o))
                    try:
                        model.eval()(batch)
                    finally:
                        handle.remove()
                    layer.weight.mul_(1 / out[0].std())
        for m, training in was.items():
            m.training = training
        return model

    for answer in (fastai_style, fixed_passes):
        result = _run("ch5.lsuv", lsuv_init_=answer)
        assert result.status == "pass", f"{answer.__name__}: {result}"


def test_lsuv_check_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    _run("ch5.lsuv", lsuv_init_=ref.lsuv_init_)
    assert torch.equal(torch.get_rng_state(), state)


def test_ref_lsuv_gives_unit_output_std_and_restores_modes_and_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    model[2].eval()
    own = model[0].register_forward_hook(lambda m, i, o: None)
    batch = 3 + 5 * torch.randn(512, 20)
    assert ref.lsuv_init_(model, batch, tol=0.01) is model
    assert [m.training for m in model] == [True, True, False, True, True, True]
    assert len(model[0]._forward_hooks) == 1 and all(not m._forward_hooks for m in list(model)[1:])
    own.remove()
    model.eval()
    for layer in _lsuv_layers(model):
        assert abs(_output_std(model, layer, batch) - 1) <= 0.01


def test_ref_lsuv_with_a_generator_is_reproducible_and_leaves_the_global_rng():
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))

    batch = torch.randn(64, 8)
    state = torch.get_rng_state()
    a = ref.lsuv_init_(make(), batch, generator=torch.Generator().manual_seed(1))
    torch.set_rng_state(state)
    b = ref.lsuv_init_(make(), batch, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_ref_lsuv_rejects_a_model_without_layers_an_unused_layer_and_a_dead_layer():
    with pytest.raises(ValueError, match="no Linear"):
        ref.lsuv_init_(nn.Sequential(nn.ReLU()), torch.randn(4, 3))

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match="never called"):
        ref.lsuv_init_(Unused(), torch.randn(4, 3))
    with pytest.raises(ValueError, match="std 0"):
        ref.lsuv_init_(nn.Sequential(nn.Linear(3, 3)), torch.zeros(4, 3))


# --- ch5.prior_bias -------------------------------------------------------------------------------------------


def test_reference_prior_bias_passes():
    assert _run("ch5.prior_bias", prior_bias_=ref.prior_bias_).status == "pass"


def _prior_with(multi, binary, validate=True):
    def prior_bias_(head, class_frequencies):
        f = torch.as_tensor(class_frequencies, dtype=torch.float32)
        if validate and (head.bias is None or f.numel() != head.bias.numel()):
            raise ValueError("frequencies do not match the head")
        with torch.no_grad():
            head.bias.copy_(binary(f) if f.numel() == 1 else multi(f))
        return head

    return prior_bias_


def _normalized_log(f):
    return torch.log(f / f.sum())


def _logit(f):
    return torch.log(f / (1 - f))


def test_prior_bias_that_uses_the_frequencies_without_log_fails():
    result = _run("ch5.prior_bias", prior_bias_=_prior_with(lambda f: f / f.sum(), _logit))
    _expect_fail(result, "the bias holds the frequencies themselves")


def test_prior_bias_with_sigmoid_log_odds_for_a_softmax_head_fails():
    result = _run("ch5.prior_bias", prior_bias_=_prior_with(lambda f: _logit(f / f.sum()), _logit))
    _expect_fail(result, "log(p / (1 - p)) per class")
    assert "softmax" in result.hint


def test_prior_bias_with_log_p_for_a_one_output_head_fails():
    result = _run("ch5.prior_bias", prior_bias_=_prior_with(_normalized_log, torch.log))
    _expect_fail(result, "nn.Linear(16, 1), [0.2]", "the bias is log(p)")
    assert "log(p / (1 - p))" in result.hint


def test_prior_bias_that_normalizes_a_single_fraction_fails():
    result = _run("ch5.prior_bias", prior_bias_=_prior_with(_normalized_log, _normalized_log))  # log(1) = 0
    _expect_fail(result, "sigmoid(bias) is 0.5000")


def test_prior_bias_that_does_not_check_the_length_fails():
    def prior_bias_(head, class_frequencies):
        f = torch.as_tensor(class_frequencies, dtype=torch.float32)
        with torch.no_grad():
            head.bias[: f.numel()] = _logit(f) if head.bias.numel() == 1 else _normalized_log(f)
        return head

    _expect_fail(_run("ch5.prior_bias", prior_bias_=prior_bias_), "[0.5, 0.5]", "expected it to raise ValueError")


def test_prior_bias_that_assigns_float64_data_fails():
    def prior_bias_(head, class_frequencies):
        f = torch.as_tensor(class_frequencies, dtype=torch.float64)
        if head.bias is None or f.numel() != head.bias.numel():
            raise ValueError("mismatch")
        head.bias.data = _logit(f) if f.numel() == 1 else _normalized_log(f)
        return head

    _expect_fail(_run("ch5.prior_bias", prior_bias_=prior_bias_), "the bias is torch.float64")


def test_prior_bias_that_replaces_the_bias_parameter_fails():
    def prior_bias_(head, class_frequencies):
        ref.prior_bias_(head, class_frequencies)
        head.bias = nn.Parameter(head.bias.detach().clone())
        return head

    _expect_fail(_run("ch5.prior_bias", prior_bias_=prior_bias_), "bias is a new Parameter")


def test_prior_bias_without_no_grad_fails_with_a_hint():
    def prior_bias_(head, class_frequencies):
        f = torch.as_tensor(class_frequencies, dtype=torch.float32)
        head.bias.copy_(torch.log(f / f.sum()))
        return head

    result = _run("ch5.prior_bias", prior_bias_=prior_bias_)
    _expect_fail(result, "leaf Variable")
    assert "torch.no_grad()" in result.hint


def test_prior_bias_that_changes_the_weight_fails():
    def prior_bias_(head, class_frequencies):
        nn.init.normal_(head.weight, std=0.01)
        return ref.prior_bias_(head, class_frequencies)

    _expect_fail(_run("ch5.prior_bias", prior_bias_=prior_bias_), "changed the head's weight")


def test_prior_bias_in_other_correct_styles_passes():
    def with_log_counts(head, class_frequencies):  # softmax ignores a constant: log(counts) is as good
        if getattr(head, "bias", None) is None:
            raise ValueError("no bias")
        values = [float(v) for v in class_frequencies]
        if len(values) != head.bias.shape[0]:
            raise ValueError(f"{len(values)} frequencies for {head.bias.shape[0]} outputs")
        if len(values) == 1:
            logits = [math.log(values[0] / (1 - values[0]))]
        else:
            logits = [math.log(v) for v in values]
        with torch.no_grad():
            for i, value in enumerate(logits):
                head.bias[i] = value
        return head

    def centred(head, class_frequencies):  # log-frequencies shifted to mean 0, filled with nn.init
        f = torch.tensor(list(map(float, class_frequencies)))
        if head.bias is None or len(f) != len(head.bias):
            raise ValueError("mismatch")
        if len(f) == 1:
            nn.init.constant_(head.bias, math.log(f.item()) - math.log1p(-f.item()))
        else:
            with torch.no_grad():
                head.bias.copy_(f.log() - f.log().mean())
        return head

    for answer in (with_log_counts, centred):
        result = _run("ch5.prior_bias", prior_bias_=answer)
        assert result.status == "pass", f"{answer.__name__}: {result}"


def test_ref_prior_bias_gives_the_entropy_as_the_initial_loss():
    torch.manual_seed(0)
    head = nn.Linear(8, 3)
    nn.init.zeros_(head.weight)
    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    ref.prior_bias_(head, torch.bincount(labels))
    p = torch.tensor([0.8, 0.15, 0.05])
    loss = nn.functional.cross_entropy(head(torch.randn(100, 8)), labels)
    assert math.isclose(loss.item(), -(p * p.log()).sum().item(), rel_tol=1e-5)


@pytest.mark.parametrize(
    ("head", "frequencies", "match"),
    [
        (nn.Linear(4, 3, bias=False), [0.5, 0.3, 0.2], "must have a bias"),
        (nn.Linear(4, 3), [0.5, 0.5], "3 outputs but 2"),
        (nn.Linear(4, 2), [0.0, 1.0], "positive"),
        (nn.Linear(4, 1), [1.0], "below 1"),
        (nn.ReLU(), [1.0], "must have a bias"),
    ],
)
def test_ref_prior_bias_refuses_bad_arguments(head, frequencies, match):
    with pytest.raises(ValueError, match=match):
        ref.prior_bias_(head, frequencies)


# --- more facts the notebook states ------------------------------------------------------------------------------


def _relu_stack_float32(depth):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.2)
            nn.init.zeros_(module.bias)
    loss = nn.functional.mse_loss(model(torch.randn(64, 256)), torch.randn(64, 10))
    loss.backward()
    return loss.item(), model[0].weight.grad


def test_float32_relu_stack_with_std_0_2_overflows_at_depth_50_and_gives_nan_gradients_at_60():
    loss, grad = _relu_stack_float32(40)
    assert math.isfinite(loss) and grad.isfinite().all()
    loss, grad = _relu_stack_float32(50)
    assert math.isinf(loss) and not grad.isnan().any()
    loss, grad = _relu_stack_float32(60)
    assert math.isinf(loss) and grad.isnan().any()


def test_orthogonal_preserves_lengths_only_when_the_matrix_is_tall_or_square():
    torch.manual_seed(0)
    for shape, ratio in [((500, 300), 1.0), ((300, 300), 1.0), ((300, 500), math.sqrt(300 / 500))]:
        w = nn.init.orthogonal_(torch.empty(*shape))
        x = torch.randn(shape[1], 2000)
        measured = ((w @ x).norm(dim=0) / x.norm(dim=0)).mean().item()
        assert abs(measured - ratio) < 0.01, (shape, measured)


def test_grouped_conv_fan_in_divides_by_groups():
    conv = nn.Conv2d(64, 64, 3, groups=8)
    assert nn.init._calculate_fan_in_and_fan_out(conv.weight)[0] == 64 // 8 * 9 == conv.weight[0].numel()
    assert math.isclose(conv.weight.abs().max().item(), 1 / math.sqrt(72), rel_tol=1e-3)


def test_calculate_gain_docstring_says_selu_networks_use_linear():
    doc = " ".join(nn.init.calculate_gain.__doc__.split())
    assert "you should use ``nonlinearity='linear'`` instead of ``nonlinearity='selu'``" in doc
    assert "sacrifices the normalization" in doc


def test_updating_a_state_dict_without_load_state_dict_changes_nothing():
    torch.manual_seed(0)
    model, pretrained = nn.Linear(3, 2), nn.Linear(3, 2)
    before = model.weight.detach().clone()
    own = model.state_dict()
    own.update(pretrained.state_dict())  # replaces entries of a new dict, not the parameters
    assert torch.equal(model.weight, before) and model.state_dict() is not own
    model.load_state_dict(own)
    assert torch.equal(model.weight, pretrained.weight)


def test_the_misplaced_parentheses_of_circulating_formulas_are_far_off():
    torch.manual_seed(0)
    fan_in, fan_out, a = 500, 1000, 0.2
    w = torch.empty(fan_out, fan_in)
    bound = nn.init.xavier_uniform_(w).abs().max().item()
    assert math.isclose(bound, math.sqrt(6 / (fan_in + fan_out)), rel_tol=1e-3)
    assert math.sqrt(6 / fan_in + fan_out) > 400 * bound  # sqrt(6 / fan_in + fan_out)
    std = nn.init.kaiming_normal_(w, a=a).std().item()
    assert math.isclose(std, math.sqrt(2 / (1 + a**2) / fan_in), rel_tol=0.01)
    assert math.sqrt(2 / (1 + a**2) * fan_in) > 400 * std  # sqrt(2 / (1 + a**2) * fan_in)


def test_nn_init_generator_is_reproducible_and_leaves_the_global_rng():
    state = torch.get_rng_state()
    first = nn.init.kaiming_normal_(torch.empty(8, 8), generator=torch.Generator().manual_seed(3))
    second = nn.init.kaiming_normal_(torch.empty(8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second) and torch.equal(torch.get_rng_state(), state)


def test_deferred_init_builds_on_meta_and_resets_every_module():
    built_on = []

    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(width, width)
            self.bn = nn.BatchNorm1d(width)
            built_on.append(self.fc.weight.device.type)

    model = ref.deferred_init(Net, 300)
    assert built_on == ["meta"]
    assert model.fc.weight.device.type == "cpu" and 0 < model.fc.weight.abs().max() <= 1 / math.sqrt(300)
    assert torch.equal(model.bn.running_var, torch.ones(300)) and not model.bn.running_mean.any()
    assert model.bn.num_batches_tracked.item() == 0


def test_activation_stats_records_every_call_and_removes_its_hooks():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 2.0]))
    with ref.ActivationStats([model[1], model[3]]) as stats:
        for _ in range(3):
            model(torch.randn(5, 4))
    assert all(not m._forward_hooks for m in model)
    assert stats.std.shape == stats.mean.shape == stats.dead.shape == (3, 2)
    assert torch.allclose(stats.dead[:, 0], torch.full((3,), 0.5))  # three of the six units are negative: dead
    assert torch.allclose(stats.mean[:, 0], torch.full((3,), 4 / 6))
    with pytest.raises(ValueError, match="at least one"):
        ref.ActivationStats([])


def test_activation_stats_removes_its_hooks_when_the_block_raises():
    model = nn.Sequential(nn.ReLU())
    with pytest.raises(RuntimeError), ref.ActivationStats([model[0]]):
        raise RuntimeError("training crashed")
    assert not model[0]._forward_hooks


# --- ch5.zero_init_residual: torchvision's blocks, and other correct styles ------------------------------------


def test_zero_init_residual_that_knows_only_chapter_2_blocks_fails():
    def zero_init_residual(model):
        blocks = [m for m in model.modules() if isinstance(m, ch02.ResidualBlock)]
        for block in blocks:
            nn.init.zeros_(block.bn2.weight)
        return len(blocks)

    result = _run("ch5.zero_init_residual", zero_init_residual=zero_init_residual)
    _expect_fail(result, "layer3.0.bn2.weight of the BasicBlock at layer3.0 was not set to zero")
    assert "Bottleneck" in result.hint and "bn3" in result.hint


def test_zero_init_residual_that_zeroes_bn2_of_a_bottleneck_fails():
    def zero_init_residual(model):
        blocks = [m for m in model.modules() if isinstance(m, ch02.ResidualBlock | BasicBlock | Bottleneck)]
        for block in blocks:
            nn.init.zeros_(block.bn2.weight)
        return len(blocks)

    _expect_fail(
        _run("ch5.zero_init_residual", zero_init_residual=zero_init_residual),
        "changed layer3.1.bn2.weight, the middle BatchNorm of a Bottleneck",
    )


def test_zero_init_residual_that_zeroes_the_bottleneck_bias_fails():
    def zero_init_residual(model):
        count = 0
        for m in model.modules():
            if isinstance(m, ch02.ResidualBlock | BasicBlock):
                nn.init.zeros_(m.bn2.weight)
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.bias)
            else:
                continue
            count += 1
        return count

    _expect_fail(_run("ch5.zero_init_residual", zero_init_residual=zero_init_residual), "zeroed layer3.1.bn3.bias")


def _zero_apply_closure(model):
    count = [0]

    def visit(module):
        last = {ch02.ResidualBlock: "bn2", BasicBlock: "bn2", Bottleneck: "bn3"}.get(type(module))
        if last is not None:
            with torch.no_grad():
                getattr(module, last).weight.fill_(0.0)
            count[0] += 1

    model.apply(visit)
    return count[0]


def _zero_by_attribute(model):  # duck typing: a Bottleneck is the block with a bn3
    count = 0
    for _, module in model.named_modules():
        if isinstance(module, ch02.ResidualBlock | BasicBlock | Bottleneck):
            norm = module.bn3 if hasattr(module, "bn3") else module.bn2
            norm.weight.data.zero_()
            count += 1
    return count


def _zero_recursive(model):  # a hand-written recursion over children(), multiplying by 0
    count = 0
    for child in model.children():
        if isinstance(child, Bottleneck):
            with torch.no_grad():
                child.bn3.weight.mul_(0)
            count += 1
        elif isinstance(child, ch02.ResidualBlock | BasicBlock):
            with torch.no_grad():
                child.bn2.weight.mul_(0)
            count += 1
        count += _zero_recursive(child)
    return count


@pytest.mark.parametrize("answer", [_zero_apply_closure, _zero_by_attribute, _zero_recursive])
def test_zero_init_residual_in_other_correct_styles_passes(answer):
    result = _run("ch5.zero_init_residual", zero_init_residual=answer)
    assert result.status == "pass", str(result)


def test_ref_zero_init_residual_matches_torchvision_on_resnet50():
    import torchvision

    assert ref.zero_init_residual(torchvision.models.resnet50(weights=None)) == 16
    tv = torchvision.models.resnet50(weights=None, zero_init_residual=True)
    zeroed = [n for n, m in tv.named_modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any()]
    assert len(zeroed) == 16 and all(n.endswith(".bn3") for n in zeroed)


@pytest.mark.parametrize("style", ["helpers", "copy_randn", "fan_helper"])
def test_my_kaiming_normal_in_other_correct_styles_passes(style):
    def gain_of(nonlinearity, a):
        gains = {"linear": 1.0, "relu": math.sqrt(2.0), "tanh": 5.0 / 3}
        return math.sqrt(2.0 / (1 + a**2)) if nonlinearity == "leaky_relu" else gains[nonlinearity]

    def helpers(tensor, mode="fan_in", nonlinearity="relu", a=0.0):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(tensor)
        std = gain_of(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)
        with torch.no_grad():
            return tensor.normal_(0, std)  # normal_ returns the tensor itself

    def copy_randn(tensor, mode="fan_in", nonlinearity="relu", a=0.0):
        out_dim, in_dim = tensor.shape[:2]
        kernel = tensor[0][0].numel()
        fan = (in_dim if mode == "fan_in" else out_dim) * kernel
        with torch.no_grad():
            tensor.copy_(torch.randn(tensor.shape) * nn.init.calculate_gain(nonlinearity, a) / fan**0.5)
        return tensor

    def fan_helper(tensor, mode="fan_in", nonlinearity="relu", a=0.0):
        fan = tensor[0].numel() if mode == "fan_in" else tensor.shape[0] * tensor[0][0].numel()
        tensor.data.normal_(mean=0.0, std=gain_of(nonlinearity, a) / math.sqrt(fan))
        return tensor

    answers = {"helpers": helpers, "copy_randn": copy_randn, "fan_helper": fan_helper}
    result = _run("ch5.kaiming_normal", my_kaiming_normal_=answers[style])
    assert result.status == "pass", str(result)


def test_activation_stats_refuses_outputs_without_a_unit_dimension():
    model = nn.Sequential(nn.Flatten(0))
    with ref.ActivationStats([model[0]]), pytest.raises(TypeError, match=r"shape \(batch, units"):
        model(torch.randn(3, 4))


def test_the_source_edition_stores_no_execution_metadata():
    import nbformat

    from course_utils.paths import SOLUTIONS_NOTEBOOKS_DIR

    nb = nbformat.read(SOLUTIONS_NOTEBOOKS_DIR / "05_initialization.ipynb", as_version=4)
    assert not [cell.id for cell in nb.cells if "execution" in cell.metadata]
