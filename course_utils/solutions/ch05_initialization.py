"""Chapter 5 reference solutions: initializing parameters, measured.

The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers delimit what the student edition replaces with a
stub; ``python -m course_utils.build`` copies these definitions into the chapter's notebook.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

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
    """Zero the last BatchNorm weight of every residual branch in ``model``, so that each block starts as its shortcut.

    Chapter 2's ``ResidualBlock`` and torchvision's ``BasicBlock`` end their branch with ``bn2``, torchvision's
    ``Bottleneck`` (ResNet-50 and deeper) with ``bn3``; the blocks may sit at any depth.

    Returns:
        How many blocks were changed.
    """
    ### BEGIN SOLUTION
    count = 0
    for module in model.modules():  # every depth, not only the direct children
        if isinstance(module, (ResidualBlock, BasicBlock)):
            last = module.bn2
        elif isinstance(module, Bottleneck):
            last = module.bn3  # conv1 (1x1), conv2 (3x3), conv3 (1x1): the branch ends with bn3
        else:
            continue
        nn.init.zeros_(last.weight)  # in place: an optimizer that holds it sees the change
        count += 1
    return count
    ### END SOLUTION


# --- measuring: per-layer statistics recorded by forward hooks -------------------------------------------------


class ActivationStats:
    """Record the mean, std and dead-unit fraction of some modules' outputs on every forward call.

    A context manager: the forward hooks are registered on entry and removed on exit, even when the block raises.
    Use it around a training loop, then read the statistics as tensors of shape ``(calls, layers)``::

        with ActivationStats([m for m in model if isinstance(m, nn.ReLU)]) as stats:
            for batch in batches:
                ...
        stats.std[:, 0]  # the first ReLU's output std at every step

    A unit (a feature, or a channel of a convolution) is *dead* on a batch when it is zero for every sample and
    position, as a ReLU unit whose input is negative everywhere.

    Args:
        modules: the modules to watch (each must be called exactly once per forward pass of the model, and return
            a tensor of shape ``(batch, units, ...)``).

    Raises:
        ValueError: for an empty list of modules.
        TypeError: (during the forward pass) when a watched module returns anything else.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        if not modules:
            raise ValueError("ActivationStats needs at least one module to watch")
        self.modules = list(modules)
        self._rows: dict[str, list[list[torch.Tensor]]] = {"mean": [], "std": [], "dead": []}
        self._current: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                raise TypeError(
                    f"ActivationStats watches outputs of shape (batch, units, ...); {type(module).__name__} returned "
                    f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}"
                )
            with torch.no_grad():
                values = output.detach().float()
                # units are dimension 1 (features or channels); every other dimension is a sample or a position
                alive = values.transpose(0, 1).flatten(1).ne(0).any(dim=1)
                self._current[index] = (values.mean(), values.std(), 1.0 - alive.float().mean())
            if len(self._current) == len(self.modules):  # the last watched module of this forward pass
                for key, position in (("mean", 0), ("std", 1), ("dead", 2)):
                    self._rows[key].append([self._current[i][position] for i in range(len(self.modules))])
                self._current = {}

        return record

    def __enter__(self) -> ActivationStats:
        self._handles = [module.register_forward_hook(self._hook(i)) for i, module in enumerate(self.modules)]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _table(self, key: str) -> torch.Tensor:
        rows = self._rows[key]
        return torch.stack([torch.stack(row) for row in rows]) if rows else torch.empty(0, len(self.modules))

    @property
    def mean(self) -> torch.Tensor:
        """Output means, ``(calls, layers)``."""
        return self._table("mean")

    @property
    def std(self) -> torch.Tensor:
        """Output standard deviations, ``(calls, layers)``."""
        return self._table("std")

    @property
    def dead(self) -> torch.Tensor:
        """Fractions of dead units, ``(calls, layers)``."""
        return self._table("dead")


# --- LSUV: layer-sequential unit-variance initialization -------------------------------------------------------


def lsuv_init_(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    tol: float = 0.02,
    max_iters: int = 10,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Layer-sequential unit-variance initialization (Mishkin & Matas, 2016), in place; returns ``model``.

    Every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` gets an orthogonal weight and a zero bias; then, layer by layer in
    the order the forward pass reaches them, the weight is divided by the std of the layer's output on ``batch``
    (recorded by a forward hook) until that std is within ``tol`` of 1. The train/eval mode of every module, the
    parameter objects and the hooks the model already has are left as they were. Meant for networks without
    normalization layers.

    Args:
        model: the network; its parameters are changed in place.
        batch: a representative input batch (for example 256 training samples).
        tol: how close to 1 each layer's output std must come.
        max_iters: the most rescaling passes per layer.
        generator: the random generator for the orthogonal weights (``None``: the global one).

    Returns:
        ``model`` itself.

    Raises:
        ValueError: when the model has no such layer, a layer is not called by ``model(batch)``, or a layer's
            output is constant on the batch (its std is 0, so no scale can make it 1).
    """
    ### BEGIN SOLUTION
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not layers:
        raise ValueError("lsuv_init_ found no Linear or convolution layer in the model")
    modes = {module: module.training for module in model.modules()}
    stds: dict[nn.Module, list[float]] = {layer: [] for layer in layers}
    calls: list[nn.Module] = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        calls.append(module)
        stds[module].append(output.std().item())

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        model.eval()  # measure without dropout noise; every module's mode is restored below
        with torch.no_grad():
            for layer in layers:
                nn.init.orthogonal_(layer.weight, generator=generator)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            model(batch)  # one pass to find the order in which the forward pass reaches the layers
            unused = [layer for layer in layers if not stds[layer]]
            if unused:
                raise ValueError(f"{len(unused)} layer(s) are never called by model(batch), e.g. {unused[0]}")
            for layer in list(dict.fromkeys(calls)):  # each layer once, in the order of its first call
                for _ in range(max_iters):
                    for seen in stds.values():
                        seen.clear()
                    model(batch)
                    std = stds[layer][0]  # its first call, if the layer is shared
                    if std == 0.0 or not math.isfinite(std):
                        raise ValueError(f"the output of {layer} has std {std} on the batch; it cannot be scaled to 1")
                    if abs(std - 1.0) <= tol:
                        break
                    layer.weight.div_(std)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training  # not module.train(), which would also set its children
    return model
    ### END SOLUTION


# --- a prior-probability bias for the output layer --------------------------------------------------------------


def prior_bias_(head: nn.Module, class_frequencies: Sequence[float] | torch.Tensor) -> nn.Module:
    """Set the bias of an output layer so that, while its weights are small, it predicts the class frequencies.

    A head with C > 1 outputs is read with a softmax (``CrossEntropyLoss``): its bias becomes
    ``log(f_k / sum(f))``, so ``softmax(bias)`` equals the frequencies; ``class_frequencies`` may be counts.
    A head with one output is read with a sigmoid (``BCEWithLogitsLoss``): ``class_frequencies`` is then the one
    fraction ``p`` of positives, in (0, 1), and the bias becomes ``log(p / (1 - p))`` (Lin et al., 2017).
    The initial loss then equals the entropy of the labels instead of ``log C``. The weight is not changed:
    make it small first (for example ``nn.init.normal_(head.weight, std=0.01)``).

    Args:
        head: the last layer, e.g. ``nn.Linear(..., C)`` or ``nn.Conv2d(..., C, 1)``, with a bias.
        class_frequencies: C positive numbers (frequencies or counts), or one fraction for a one-output head.

    Returns:
        ``head`` itself, its bias changed in place.

    Raises:
        ValueError: when the head has no bias, the number of frequencies does not match its outputs, or a
            frequency is not positive (or, for one output, not below 1).
    """
    ### BEGIN SOLUTION
    bias = getattr(head, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"the head must have a bias (got {type(head).__name__} with bias {bias!r})")
    frequencies = torch.as_tensor(class_frequencies, dtype=torch.float64).flatten()
    if frequencies.numel() != bias.numel():
        raise ValueError(f"the head has {bias.numel()} outputs but {frequencies.numel()} class frequencies were given")
    if not bool((frequencies > 0).all()) or not bool(frequencies.isfinite().all()):
        raise ValueError(f"class frequencies must be positive and finite (got {frequencies.tolist()})")
    if bias.numel() == 1:
        p = frequencies
        if not bool((p < 1).all()):
            raise ValueError(f"a one-output head needs the fraction of positives, below 1 (got {p.item()})")
        values = torch.log(p / (1 - p))  # sigmoid(values) = p
    else:
        values = torch.log(frequencies / frequencies.sum())  # softmax(values) = frequencies / sum
    with torch.no_grad():
        bias.copy_(values.reshape(bias.shape))  # copy_ keeps the bias's dtype, device and Parameter object
    return head
    ### END SOLUTION


# --- deferred initialization on the meta device -----------------------------------------------------------------


def deferred_init(module_class: Callable[..., nn.Module], *args: Any, device: str = "cpu", **kwargs: Any) -> nn.Module:
    """Build ``module_class(*args, **kwargs)`` on the meta device, then allocate and initialize it on ``device``.

    On the meta device a module has shapes but no memory, so building it is instant whatever its size.
    ``to_empty`` then allocates *uninitialized* memory (whatever it held before), and ``reset_parameters``,
    called on every submodule that defines one, fills it with the module's default initialization (for
    BatchNorm this also resets the running statistics). A buffer that a module fills in its ``__init__`` without
    a ``reset_parameters`` is not restored: check such modules by hand.

    Returns:
        The module, on ``device``, with default-initialized parameters.
    """
    with torch.device("meta"):
        model = module_class(*args, **kwargs)
    model.to_empty(device=device)
    with torch.no_grad():
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return model
