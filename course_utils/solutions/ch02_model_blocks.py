"""Chapter 2 reference solutions: building networks from blocks (U-Net and ResNet).

The U-Net keeps the module layout of the widely used community PyTorch U-Net (``inc``, ``down1..4``,
``up1..4``, ``outc``; ``double_conv``, ``maxpool_conv``, ``up`` and ``conv`` inside), so its published
checkpoints load with ``strict=True`` once their extra ``mask_values`` entry is popped. The residual block
keeps torchvision's BasicBlock names, so torchvision's ResNet-34 state dict loads into :func:`resnet34`.

The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers delimit what the student edition replaces with a
stub; ``python -m course_utils.build`` copies these definitions into the chapter's notebook.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch codebase uses
from torch import nn

from course_utils import data

# --- U-Net parts ------------------------------------------------------------------------------------


class DoubleConv(nn.Module):
    """(Conv 3x3 => BN => ReLU) * 2. Keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        if mid_channels is None:
            mid_channels = out_channels
        # No conv bias: the BatchNorm right after it subtracts the mean, so a bias would cancel out.
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.double_conv(x)
        ### END SOLUTION


class Down(nn.Module):
    """MaxPool 2x2 => DoubleConv. Halves H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2),
            DoubleConv(in_channels, out_channels),
        )
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.maxpool_conv(x)  # (B, out_channels, H // 2, W // 2)
        ### END SOLUTION


class Up(nn.Module):
    """Upsample 2x => pad to the skip's size => concat [skip, x] => DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = False) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        if bilinear:
            # Upsampling has no weights and keeps the channels, so the DoubleConv reduces them.
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)
        ### END SOLUTION

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        x = self.up(x)  # (B, C, 2h, 2w)
        # Pooling an odd size floors it, so 2h can be one less than the skip's H: pad to the skip's size.
        diff_h = skip.size(2) - x.size(2)
        diff_w = skip.size(3) - x.size(3)
        x = F.pad(x, [diff_w // 2, diff_w - diff_w // 2, diff_h // 2, diff_h - diff_h // 2])  # (B, C, H, W)
        x = torch.cat([skip, x], dim=1)  # (B, C_skip + C, H, W): skip first, as in the community U-Net
        return self.conv(x)
        ### END SOLUTION


class OutConv(nn.Module):
    """Conv 1x1: one score (logit) per class and pixel."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """The U-Net of Ronneberger et al. (2015), with BatchNorm and same-size padding."""

    def __init__(self, n_channels: int, n_classes: int, bilinear: bool = False, base_channels: int = 64) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        if n_channels < 1 or n_classes < 1 or base_channels < 1:
            raise ValueError(
                f"n_channels, n_classes and base_channels must be positive "
                f"(got {n_channels}, {n_classes}, {base_channels})"
            )
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.bilinear = bilinear
        c = base_channels
        factor = 2 if bilinear else 1  # bilinear Ups cannot halve the channels, so the deepest maps are halved
        self.inc = DoubleConv(n_channels, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.down3 = Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 16 * c // factor)
        self.up1 = Up(16 * c, 8 * c // factor, bilinear)
        self.up2 = Up(8 * c, 4 * c // factor, bilinear)
        self.up3 = Up(4 * c, 2 * c // factor, bilinear)
        self.up4 = Up(2 * c, c, bilinear)
        self.outc = OutConv(c, n_classes)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        x1 = self.inc(x)  # (B, C, H, W)
        x2 = self.down1(x1)  # (B, 2C, H/2, W/2)
        x3 = self.down2(x2)  # (B, 4C, H/4, W/4)
        x4 = self.down3(x3)  # (B, 8C, H/8, W/8)
        x5 = self.down4(x4)  # (B, 16C/factor, H/16, W/16)
        x = self.up1(x5, x4)  # (B, 8C/factor, H/8, W/8)
        x = self.up2(x, x3)  # (B, 4C/factor, H/4, W/4)
        x = self.up3(x, x2)  # (B, 2C/factor, H/2, W/2)
        x = self.up4(x, x1)  # (B, C, H, W)
        logits = self.outc(x)  # (B, n_classes, H, W)
        return logits
        ### END SOLUTION


class LoopUNet(nn.Module):
    """The same U-Net with its Downs and Ups in nn.ModuleLists, so the depth is an argument."""

    def __init__(
        self, n_channels: int, n_classes: int, bilinear: bool = False, base_channels: int = 64, depth: int = 4
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1 (got {depth})")
        channels = [base_channels * 2**level for level in range(depth + 1)]  # C, 2C, ..., 2**depth C
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, channels[0])
        self.downs = nn.ModuleList()
        for level in range(depth):
            deepest = level == depth - 1
            self.downs.append(Down(channels[level], channels[level + 1] // (factor if deepest else 1)))
        self.ups = nn.ModuleList()
        for level in reversed(range(depth)):
            shallowest = level == 0
            self.ups.append(Up(channels[level + 1], channels[level] // (1 if shallowest else factor), bilinear))
        self.outc = OutConv(channels[0], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up in self.ups:  # the deepest skip is used first: pop from the end
            x = up(x, skips.pop())
        logits = self.outc(x)
        return logits


# --- ResNet ------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """Conv 3x3 => BN => ReLU => Conv 3x3 => BN, plus the shortcut, => ReLU (torchvision's BasicBlock)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # The identity only fits when the shape does not change; otherwise project x with a strided 1x1 conv.
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        identity = x
        out = self.conv1(x)  # (B, out_channels, H/stride, W/stride)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)  # (B, out_channels, H/stride, W/stride)
        out = out + identity
        out = self.relu(out)  # after the addition, so the shortcut carries x unchanged
        return out
        ### END SOLUTION


def make_layer(
    in_channels: int, out_channels: int, num_blocks: int, stride: int = 1, block: type[nn.Module] | None = None
) -> nn.Sequential:
    """``num_blocks`` ResidualBlocks; only the first one changes the stride and the channels.

    Args:
        in_channels: channels of the layer's input.
        out_channels: channels of every block's output.
        num_blocks: how many blocks (at least 1).
        stride: the first block's stride (2 halves H and W).
        block: the block class, called as ``block(in_channels, out_channels, stride)`` (default
            :class:`ResidualBlock`).

    Returns:
        The blocks in an ``nn.Sequential`` (keys ``0.conv1.weight``, ``1.conv1.weight``, ...).

    Raises:
        ValueError: if ``num_blocks`` is less than 1.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be at least 1 (got {num_blocks})")
    block = block or ResidualBlock
    blocks = [block(in_channels, out_channels, stride)]
    blocks += [block(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Stem (Conv 7x7 => BN => ReLU => MaxPool) => four layers of ResidualBlocks => global pool => Linear."""

    def __init__(self, layers: Sequence[int], num_classes: int = 1000, block: type[nn.Module] | None = None) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give the number of blocks of 4 layers (got {list(layers)})")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = make_layer(64, 64, layers[0], block=block)
        self.layer2 = make_layer(64, 128, layers[1], stride=2, block=block)
        self.layer3 = make_layer(128, 256, layers[2], stride=2, block=block)
        self.layer4 = make_layer(256, 512, layers[3], stride=2, block=block)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, 64, H/2, W/2)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)  # (B, 64, H/4, W/4)
        x = self.layer1(x)  # (B, 64, H/4, W/4)
        x = self.layer2(x)  # (B, 128, H/8, W/8)
        x = self.layer3(x)  # (B, 256, H/16, W/16)
        x = self.layer4(x)  # (B, 512, H/32, W/32)
        x = self.avgpool(x)  # (B, 512, 1, 1)
        x = torch.flatten(x, 1)  # (B, 512)
        logits = self.fc(x)
        return logits


def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34 (He et al., 2016): 3, 4, 6 and 3 residual blocks; loads torchvision's ``resnet34`` weights."""
    return ResNet([3, 4, 6, 3], num_classes=num_classes)


def randomize_batchnorm(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm in ``module`` random affine parameters and running statistics, in place.

    A freshly built BatchNorm has weight 1, bias 0, running mean 0 and running variance 1, so in eval mode it is
    (almost) the identity: a comparison of two fresh networks cannot tell a block that applies ``bn1`` twice
    from a correct one. After this call every BatchNorm changes its input, so equal outputs mean equal wiring.

    Args:
        module: the network (or block); its BatchNorms (1-D, 2-D, 3-D) are changed in place.
        generator: where the random numbers come from (default: PyTorch's global generator).

    Returns:
        ``module`` itself, so that calls chain: ``randomize_batchnorm(net).eval()``.
    """
    with torch.no_grad():
        for m in module.modules():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm):
                continue
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)  # uniform in [0.5, 1.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.2)
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return module


# --- shapes: the output-size formula, a shape trace, a dry run ---------------------------------------


def conv2d_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """The output height (or width) of ``nn.Conv2d``, ``nn.MaxPool2d`` or ``nn.AvgPool2d`` along one dimension.

    ``floor((size + 2 * padding - dilation * (kernel_size - 1) - 1) / stride) + 1``, the formula of the PyTorch
    documentation of ``nn.Conv2d`` (pooling layers use the same one, with ``ceil_mode=False``).

    Raises:
        ValueError: if the kernel does not fit into the padded input even once.
    """
    out = (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(
            f"a kernel of {kernel_size} (dilation {dilation}) does not fit into {size} + 2 * {padding} values"
        )
    return out


def conv_transpose2d_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, output_padding: int = 0, dilation: int = 1
) -> int:
    """The output height (or width) of ``nn.ConvTranspose2d`` along one dimension.

    ``(size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1``: the inverse of
    :func:`conv2d_output_size` (several input sizes floor to the same conv output; ``output_padding`` picks one).
    """
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def trace_shapes(model: nn.Module, *inputs: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Run ``model(*inputs)`` once and record the output shape of every leaf module, in the order they run.

    Args:
        model: any module; it runs in the mode it is in (its mode is not changed).
        inputs: what to call ``model`` with.

    Returns:
        One ``(name, shape)`` per call of a leaf module (a module without children), named as in
        ``model.named_modules()``; a module called twice appears twice. Outputs that are not tensors are skipped.

    Raises:
        Whatever ``model`` raises; the hooks are removed in any case.
    """
    ### BEGIN SOLUTION
    # Leaves only: a container's output is its last child's, so it would only repeat a row.
    names = {module: name for name, module in model.named_modules() if next(module.children(), None) is None}
    rows = []

    def record(module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            rows.append((names[module], tuple(output.shape)))

    handles = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:  # also when forward raises: a forgotten hook would fire on every later call
        for handle in handles:
            handle.remove()
    return rows
    ### END SOLUTION


def infer_flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    """How many values per example ``features`` outputs, found by one dry run that leaves ``features`` unchanged.

    Unchanged means: the same parameters and buffers (BatchNorm's running statistics included), the same mode in
    every submodule, and the same random-number state. The one exception is a lazy module (``nn.LazyLinear``,
    ...): a dry run is what initializes it, with random numbers, as its first real forward pass would.

    Args:
        features: the part of a network before its flatten and its first ``nn.Linear``.
        input_shape: the shape of one example, without the batch dimension, e.g. ``(3, 64, 64)``.

    Returns:
        The number of values in the output of one example: the ``in_features`` of the head's ``nn.Linear``.
    """
    ### BEGIN SOLUTION
    first = next(features.parameters(), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    device = first.device if first is not None else None
    modes = {module: module.training for module in features.modules()}  # submodules may differ (a frozen BN)
    # Eval mode: BatchNorm uses its running statistics without updating them, and Dropout draws no numbers.
    features.eval()
    try:
        with torch.no_grad():
            output = features(torch.zeros(1, *input_shape, dtype=dtype, device=device))  # zeros: no RNG drawn
    finally:
        for module, training in modes.items():
            module.training = training
    return output[0].numel()
    ### END SOLUTION


# --- degradation: a deep plain stack against the same depth with residual connections ------------------


class ResidualLinear(nn.Module):
    """Linear => BN => ReLU => Linear => BN, plus the identity, => ReLU: BasicBlock's wiring for vectors."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(width, width, bias=False)
        self.bn2 = nn.BatchNorm1d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.fc1(x)))
        out = self.bn2(self.fc2(out))
        return self.relu(out + identity)


def deep_mlp(depth: int, width: int, in_features: int, num_classes: int, residual: bool = False) -> nn.Sequential:
    """An MLP of ``depth`` Linear layers, each hidden one followed by BatchNorm1d and ReLU.

    Args:
        depth: Linear layers in all, at least 2 (the first maps ``in_features`` to ``width``, the last
            ``width`` to ``num_classes``).
        width: features of every hidden layer.
        in_features: features of the input.
        num_classes: outputs (logits).
        residual: wrap the ``depth - 2`` middle layers two by two in :class:`ResidualLinear` blocks (same
            layers, same parameter count, plus the identity shortcuts); ``depth`` must then be even.

    Raises:
        ValueError: for a depth below 2, or an odd depth with ``residual=True``.
    """
    if depth < 2:
        raise ValueError(f"depth must be at least 2 (got {depth})")
    if residual and depth % 2:
        raise ValueError(f"a residual MLP pairs its middle layers, so depth must be even (got {depth})")
    layers: list[nn.Module] = [nn.Linear(in_features, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
    if residual:
        layers += [ResidualLinear(width) for _ in range((depth - 2) // 2)]
    else:
        for _ in range(depth - 2):
            layers += [nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def random_labels(
    num_examples: int = 512, in_features: int = 32, num_classes: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs ``(num_examples, in_features)`` with uniformly random labels: a task only memory solves."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_examples, in_features, generator=generator)
    labels = torch.randint(0, num_classes, (num_examples,), generator=generator)
    return inputs, labels


def fit_random_labels(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps: int = 200, lr: float = 3e-3
) -> dict[str, list[float]]:
    """Train ``model`` on the whole set at every step with Adam and record how well it memorizes it.

    Returns:
        ``loss`` and ``accuracy`` (on the training set, from each step's forward pass, in training mode), and
        ``grad_norms``: the gradient norm of every Linear weight at the first step, input side first.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "grad_norms": []}
    model.train()
    for step in range(steps):
        logits = model(inputs)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            history["grad_norms"] = [m.weight.grad.norm().item() for m in linears]
        optimizer.step()
        history["loss"].append(loss.item())
        history["accuracy"].append((logits.argmax(dim=1) == labels).float().mean().item())
    return history


# --- training the small U-Net on synthetic shapes -----------------------------------------------------

SMALL_UNET_KWARGS: dict[str, int | bool] = {
    "n_channels": 3,
    "n_classes": data.NUM_CLASSES,
    "bilinear": False,
    "base_channels": 8,
}
"""The constructor arguments of the CPU-sized U-Net trained on :mod:`course_utils.data` shapes."""


def small_unet() -> UNet:
    """The CPU-sized U-Net: ``UNet(**SMALL_UNET_KWARGS)``, freshly initialized."""
    return UNet(**SMALL_UNET_KWARGS)


def dice_per_class(predictions: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The Dice coefficient of every class, counted over all pixels of all images.

    Args:
        predictions: predicted labels, ``(N, H, W)``, integers.
        masks: true labels of the same shape.
        num_classes: how many classes there are.

    Returns:
        A tensor of ``num_classes`` values ``2|P & T| / (|P| + |T|)``; a class absent from both gets 1.
    """
    if predictions.shape != masks.shape:
        raise ValueError(f"predictions and masks must have the same shape (got {predictions.shape}, {masks.shape})")
    scores = []
    for label in range(num_classes):
        predicted = predictions == label
        true = masks == label
        overlap = (predicted & true).sum().item()
        total = predicted.sum().item() + true.sum().item()
        scores.append(1.0 if total == 0 else 2 * overlap / total)
    return torch.tensor(scores)


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block on ``num_threads`` CPU threads (``None``: unchanged), then restore the setting."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 64, num_threads: int | None = 1) -> torch.Tensor:
    """Predicted labels ``(N, H, W)`` for ``images`` ``(N, C, H, W)``, in the model's current mode.

    In training mode every batch of ``batch_size`` images is normalized with its own BatchNorm statistics,
    and the running statistics are updated. ``num_threads``: see :func:`train_unet`.
    """
    with _torch_threads(num_threads):
        batches = [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
        return torch.cat([model(batch).argmax(dim=1) for batch in batches])


def mean_foreground_dice(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 64, num_classes: int | None = None
) -> float:
    """The mean Dice over the foreground classes (labels 1 and up), in the model's current mode.

    Args:
        model: the segmentation model.
        images: ``(N, C, H, W)`` inputs.
        masks: ``(N, H, W)`` true labels.
        batch_size: images per forward pass (it matters in training mode, where BatchNorm uses batch statistics).
        num_classes: how many classes, background included (default: :data:`course_utils.data.NUM_CLASSES`).
    """
    num_classes = num_classes or data.NUM_CLASSES
    scores = dice_per_class(predict(model, images, batch_size), masks, num_classes)
    return scores[1:].mean().item()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor,
    background_weight: float = 0.2,
) -> float:
    """One optimizer step of weighted cross-entropy on a batch; returns the batch's loss."""
    logits = model(images.contiguous(memory_format=torch.channels_last))  # (B, classes, H, W)
    weight = torch.ones(logits.size(1), device=logits.device)
    weight[0] = background_weight  # the background is ~88% of the pixels: count it less
    loss = F.cross_entropy(logits, masks, weight=weight)  # log-softmax inside: the model returns logits
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_unet(
    model: nn.Module,
    *,
    steps: int | None = None,
    time_budget_s: float | None = None,
    batch_size: int = 16,
    lr: float = 3e-3,
    background_weight: float = 0.2,
    seed: int = 0,
    num_threads: int | None = 1,
    progress: bool = True,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 25,
) -> dict[str, list[float] | float | int]:
    """Train a segmentation model on fresh batches of synthetic shapes with AdamW and weighted cross-entropy.

    The learning rate warms up over 20 steps, then follows a cosine down to zero over ``steps`` steps or over
    ``time_budget_s`` seconds, whichever ends first. The background covers about 90% of the pixels, so its
    pixels count ``background_weight`` times as much in the loss as the shapes' pixels: without that, a
    class can stay "background" for hundreds of steps.

    Args:
        model: a model mapping ``(B, 3, 64, 64)`` images to ``(B, num_classes, 64, 64)`` logits; it is left in
            training mode.
        steps: how many optimizer steps to take.
        time_budget_s: stop after this many seconds of training.
        batch_size: images per step.
        lr: the peak learning rate.
        background_weight: the weight of class 0 in the cross-entropy (the other classes weigh 1).
        seed: the seed of the stream of batches (see :func:`course_utils.data.shape_batches`).
        num_threads: CPU threads to train with (restored afterwards); ``None`` keeps PyTorch's setting. One by
            default: for a model this small, a second thread saved about 30% on an idle 2-core machine but made
            each step 3 to 6 times slower as soon as other programs shared the cores.
        progress: show a tqdm progress bar.
        held_out: ``(images, masks)`` to score every ``eval_every`` steps and after the last one, in eval mode
            (:func:`mean_foreground_dice`); the model goes back to training mode afterwards.
        eval_every: steps between two held-out scores.

    Returns:
        A dict with ``loss`` (one value per step), ``steps`` (taken), ``seconds`` (spent training, held-out
        scoring included) and, with ``held_out``, ``dice_steps`` and ``dice`` (the step after which each score
        was taken, and the score).

    Raises:
        ValueError: if neither ``steps`` nor ``time_budget_s`` is given.
    """
    if steps is None and time_budget_s is None:
        raise ValueError("give steps, time_budget_s or both")
    if eval_every < 1:
        raise ValueError(f"eval_every must be at least 1 (got {eval_every})")
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    losses: list[float] = []
    dice_steps: list[int] = []
    dice_scores: list[float] = []

    def score() -> None:
        model.eval()
        dice_steps.append(len(losses))
        dice_scores.append(mean_foreground_dice(model, *held_out))
        model.train()

    total = steps if steps is not None else round(time_budget_s)
    bar = tqdm(total=total, disable=not progress, unit="step" if steps is not None else "s")
    with _torch_threads(num_threads):
        # Channels-last memory suits oneDNN's CPU convolutions (about 1.5x faster here); undone at the end.
        model.to(memory_format=torch.channels_last)
        model.train()
        start = time.perf_counter()
        for step, (images, masks) in enumerate(data.shape_batches(batch_size, seed)):
            elapsed = time.perf_counter() - start
            done = max(step / steps if steps else 0.0, elapsed / time_budget_s if time_budget_s else 0.0)
            if done >= 1.0:
                break
            warmup = min(1.0, (step + 1) / 20)
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup * 0.5 * (1 + math.cos(math.pi * done))
            losses.append(train_step(model, optimizer, images, masks, background_weight))
            if held_out is not None and len(losses) % eval_every == 0:
                score()
            bar.update(1 if steps is not None else min(round(time.perf_counter() - start), total) - bar.n)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if held_out is not None and (not dice_steps or dice_steps[-1] != len(losses)):
            score()
        seconds = time.perf_counter() - start
        model.to(memory_format=torch.contiguous_format)
    bar.close()
    history: dict[str, list[float] | float | int] = {"loss": losses, "steps": len(losses), "seconds": seconds}
    if held_out is not None:
        history["dice_steps"] = dice_steps
        history["dice"] = dice_scores
    return history
