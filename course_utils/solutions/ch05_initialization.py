"""Chapter 5 reference solutions: initializing parameters, measured.

The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers delimit what the student edition replaces with a
stub; ``python -m course_utils.build`` copies these definitions into the chapter's notebook.
"""

import math

import torch
from torch import nn

from course_utils.solutions.ch02_model_blocks import ResidualBlock


def init_weights(module: nn.Module) -> None:
    """Initialize one module by its type; meant for ``model.apply(init_weights)``.

    Conv2d: Kaiming normal (fan_out, ReLU) and a zero bias; BatchNorm2d: weight 1, bias 0; Linear: N(0, 0.01^2)
    and a zero bias. Every other module is left alone, and so are the submodules of the one given:
    ``model.apply`` already visits each of them once.
    """
    ### BEGIN SOLUTION
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        # std by keyword: the second positional argument of normal_ is the mean.
        nn.init.normal_(module.weight, mean=0.0, std=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    ### END SOLUTION


def my_kaiming_normal_(
    tensor: torch.Tensor, mode: str = "fan_in", nonlinearity: str = "relu", a: float = 0.0
) -> torch.Tensor:
    """Fill ``tensor`` in place from N(0, std^2) with std = gain / sqrt(fan) (He et al., 2015); return it.

    Args:
        tensor: a Linear weight ``(out, in)`` or a convolution weight ``(out, in, *kernel)``.
        mode: ``"fan_in"`` keeps the variance of activations in the forward pass, ``"fan_out"`` that of
            gradients in the backward pass.
        nonlinearity: the activation after the layer, as ``nn.init.calculate_gain`` names it.
        a: the negative slope, used only with ``"leaky_relu"``.

    Returns:
        ``tensor`` itself.

    Raises:
        ValueError: for a tensor with fewer than two dimensions or an unknown ``mode``.
    """
    ### BEGIN SOLUTION
    if tensor.dim() < 2:
        raise ValueError(f"a weight needs at least 2 dimensions to have a fan (got shape {tuple(tensor.shape)})")
    receptive_field = math.prod(tensor.shape[2:])  # 1 for a Linear weight, kH * kW for a Conv2d weight
    if mode == "fan_in":
        fan = tensor.shape[1] * receptive_field
    elif mode == "fan_out":
        fan = tensor.shape[0] * receptive_field
    else:
        raise ValueError(f"mode must be 'fan_in' or 'fan_out' (got {mode!r})")
    gain = nn.init.calculate_gain(nonlinearity, a)
    std = gain / math.sqrt(fan)
    with torch.no_grad():  # a Parameter is a leaf that requires grad: no in-place change outside no_grad
        tensor.normal_(mean=0.0, std=std)
    return tensor
    ### END SOLUTION


def zero_init_residual(model: nn.Module) -> int:
    """Zero ``bn2.weight`` in every ResidualBlock of ``model``, so that each block starts as its shortcut.

    Returns:
        How many blocks were changed.
    """
    ### BEGIN SOLUTION
    count = 0
    for module in model.modules():  # every depth, not only the direct children
        if isinstance(module, ResidualBlock):
            nn.init.zeros_(module.bn2.weight)  # in place: an optimizer that holds it sees the change
            count += 1
    return count
    ### END SOLUTION
