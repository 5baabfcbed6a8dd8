"""Chapter 3 reference solutions: modifying an existing model (a torchvision ResNet as the running example).

The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers delimit what the student edition replaces with a
stub; ``python -m course_utils.build`` copies these definitions into the chapter's notebook.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the classification head of a torchvision classifier, its last ``nn.Linear``, in place.

    Finds ResNet's ``fc``, VGG's ``classifier.6``, MobileNet's ``classifier[-1]``, EfficientNet's
    ``classifier.1`` and ViT's ``heads.head``. The new layer keeps the old one's ``in_features``, bias, dtype
    and device.

    Args:
        model: a torchvision classifier whose head is its last registered ``nn.Linear``.
        num_classes: how many classes the new head scores.

    Returns:
        The same model object, changed in place.

    Raises:
        ValueError: if ``num_classes`` is not positive or the model has no ``nn.Linear`` below its root.
    """
    ### BEGIN SOLUTION
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive (got {num_classes})")
    # torchvision registers the classifier last, so the last Linear in named_modules() order is the head.
    linears = [name for name, module in model.named_modules() if name and isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to replace")
    name = linears[-1]
    old = model.get_submodule(name)
    new = nn.Linear(
        old.in_features,
        num_classes,
        bias=old.bias is not None,
        device=old.weight.device,  # a model already on a GPU, or in half precision, gets a matching head
        dtype=old.weight.dtype,
    )
    # set_submodule follows the dots ("classifier.6", "heads.head"); setattr(model, "classifier.6", new) would not.
    model.set_submodule(name, new)
    return model
    ### END SOLUTION


def swap_modules(model: nn.Module, old_type: type[nn.Module], make_new: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every submodule that is an ``old_type``, at any depth, by ``make_new(old)``; return how many."""
    ### BEGIN SOLUTION
    # Collect the names first, then replace: walking the tree while changing it would also visit the new modules.
    names = [name for name, module in model.named_modules() if name and isinstance(module, old_type)]
    for name in names:
        # set_submodule follows the dots ("layer1.0.bn1"); setattr(model, "layer1.0.bn1", ...) would not.
        model.set_submodule(name, make_new(model.get_submodule(name)))
    return len(names)
    ### END SOLUTION


def freeze_backbone(model: nn.Module) -> list[str]:
    """Turn off gradients for every parameter of a torchvision ResNet except ``fc``'s; return the trainable names."""
    model.requires_grad_(False)
    model.fc.requires_grad_(True)
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


class EvalBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode: ``train()`` cannot switch it back, so its statistics stay fixed."""

    def train(self, mode: bool = True) -> "EvalBatchNorm2d":
        ### BEGIN SOLUTION
        return super().train(False)  # whatever mode was asked for
        ### END SOLUTION


def freeze_until(model: nn.Module, stage: str) -> list[dict[str, Any]]:
    """Freeze a torchvision ResNet before ``stage``; return optimizer parameter groups for the rest.

    Every parameter of the stem (``conv1``, ``bn1``) and of the stages before ``stage`` stops requiring grad,
    and their BatchNorm2d layers stay in eval mode even after a later ``model.train()`` (they become
    :class:`EvalBatchNorm2d`: same parameters, buffers and state-dict keys). ``stage`` and the stages after it
    are made trainable, so calling it again with an earlier stage unfreezes more.

    Args:
        model: a torchvision ResNet, changed in place.
        stage: the first trainable stage: ``"layer1"``, ``"layer2"``, ``"layer3"``, ``"layer4"`` or ``"fc"``.

    Returns:
        Two groups per trainable stage, input to output: ``{"params": [...], "stage": name}`` with the weights
        of convolutions and Linear layers, and ``{"params": [...], "stage": name, "weight_decay": 0.0}`` with the
        norm weights and all biases (1-D parameters). Groups that would be empty are left out.

    Raises:
        ValueError: if ``stage`` is not one of these five, or the model lacks one of these parts.
    """
    ### BEGIN SOLUTION
    stages = ("layer1", "layer2", "layer3", "layer4", "fc")  # after the stem, conv1 and bn1
    if stage not in stages:
        raise ValueError(f"stage must be one of {', '.join(stages)} (got {stage!r})")
    missing = [name for name in ("conv1", "bn1", *stages) if not isinstance(getattr(model, name, None), nn.Module)]
    if missing:
        raise ValueError(f"model must be a torchvision ResNet (a {type(model).__name__} has no {missing[0]})")
    first = stages.index(stage)
    frozen = ["conv1", "bn1", *stages[:first]]
    trainable = list(stages[first:])
    for name in frozen:
        part = model.get_submodule(name)
        part.requires_grad_(False)
        for module in part.modules():
            if type(module) is nn.BatchNorm2d:
                # Swapping the class keeps the module, its parameters and its buffers; torch.nn.utils.parametrize
                # changes classes the same way. Only train() changes: it always selects eval mode.
                module.__class__ = EvalBatchNorm2d
                module.train(False)
    groups = []
    for name in trainable:
        part = model.get_submodule(name)
        part.requires_grad_(True)
        for module in part.modules():
            if type(module) is EvalBatchNorm2d:  # frozen by an earlier call: back to a plain BatchNorm2d
                module.__class__ = nn.BatchNorm2d
                module.train(model.training)
        parameters = list(part.parameters())
        # Weight decay pulls weights towards 0; for norm weights (which scale) and biases (which shift) that is
        # not a regularization but a distortion, so they get none (the convention of BERT, GPT-2 and timm).
        decay = [p for p in parameters if p.ndim >= 2]
        no_decay = [p for p in parameters if p.ndim < 2]
        if decay:
            groups.append({"params": decay, "stage": name})
        if no_decay:
            groups.append({"params": no_decay, "stage": name, "weight_decay": 0.0})
    return groups
    ### END SOLUTION


def bilinear_pool(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Bilinear pooling: (N, C, H, W) => mean outer product over positions => signed sqrt => L2 => (N, C*C).

    Args:
        features: a batch of feature maps.
        eps: added inside the square root, so that its gradient stays finite (at most ``1/(2*sqrt(eps))``).

    Returns:
        One L2-normalized vector of C*C channel co-occurrences per example.

    Raises:
        ValueError: if ``features`` is not 4-dimensional.
    """
    ### BEGIN SOLUTION
    if features.ndim != 4:
        raise ValueError(f"features must have shape (N, C, H, W) (got {tuple(features.shape)})")
    n, c, h, w = features.shape
    x = features.reshape(n, c, h * w)  # (N, C, HW): the tensor first, then the new shape
    bilinear = torch.bmm(x, x.transpose(1, 2)) / (h * w)  # (N, C, C): the mean of f_p f_p^T over positions p
    bilinear = bilinear.reshape(n, c * c)  # (N, C*C)
    bilinear = torch.sign(bilinear) * torch.sqrt(bilinear.abs() + eps)  # signed square root
    return nn.functional.normalize(bilinear, dim=1)  # each example's vector gets length 1
    ### END SOLUTION


class ResNetWithExtraInput(nn.Module):
    """Image => ResNet trunk => pooled features ++ extra => Linear head. The backbone's fc is not used."""

    def __init__(self, backbone: nn.Module, extra_features: int, num_classes: int) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        in_features = backbone.fc.in_features  # read it before fc goes away
        backbone.fc = nn.Identity()  # the backbone now returns its pooled features
        self.backbone = backbone
        self.head = nn.Linear(in_features + extra_features, num_classes)
        ### END SOLUTION

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        features = self.backbone(image)  # (N, C)
        combined = torch.cat([features, extra], dim=1)  # (N, C + extra_features)
        logits = self.head(combined)
        return logits
        ### END SOLUTION


class ResNetWithFeatures(nn.Module):
    """A torchvision ResNet that also returns its pooled features: x => (logits, features)."""

    def __init__(self, backbone: nn.Module) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        self.backbone = backbone
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ### BEGIN SOLUTION
        net = self.backbone
        x = net.conv1(x)  # (N, 64, H/2, W/2)
        x = net.bn1(x)
        x = net.relu(x)
        x = net.maxpool(x)  # (N, 64, H/4, W/4)
        x = net.layer1(x)
        x = net.layer2(x)
        x = net.layer3(x)
        x = net.layer4(x)  # (N, C, H/32, W/32)
        x = net.avgpool(x)  # (N, C, 1, 1)
        features = torch.flatten(x, 1)  # (N, C): the step that is a function, not a module
        logits = net.fc(features)
        return logits, features
        ### END SOLUTION
