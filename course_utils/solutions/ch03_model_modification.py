"""Chapter 3 reference solutions: modifying an existing model (a torchvision ResNet as the running example).

The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers delimit what the student edition replaces with a
stub; ``python -m course_utils.build`` copies these definitions into the chapter's notebook.
"""

from collections.abc import Callable

import torch
from torch import nn


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give a torchvision ResNet a fresh ``fc`` for ``num_classes`` classes; return the same model object."""
    ### BEGIN SOLUTION
    # A new layer, not `model.fc.out_features = num_classes`: that would leave the weight at its old shape.
    model.fc = nn.Linear(model.fc.in_features, num_classes)
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
    ### BEGIN SOLUTION
    model.requires_grad_(False)
    model.fc.requires_grad_(True)
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
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
