"""Chapter 1 reference solutions: defining models with nn.Module and its containers.

The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers delimit what the student edition replaces with a
stub; ``python -m course_utils.build`` copies these definitions into the chapter's notebook.
"""

from collections import OrderedDict
from itertools import pairwise

import torch
from torch import nn


def build_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear => ReLU => ... => Linear, with the layers named fc1, relu1, fc2, ..."""
    ### BEGIN SOLUTION
    if len(sizes) < 2:
        raise ValueError(f"sizes must hold an input and an output size at least (got {sizes})")
    layers = OrderedDict()
    last = len(sizes) - 1
    for i, (n_in, n_out) in enumerate(pairwise(sizes), start=1):
        layers[f"fc{i}"] = nn.Linear(n_in, n_out)
        if i < last:  # no activation after the last layer: it outputs logits
            layers[f"relu{i}"] = nn.ReLU()
    return nn.Sequential(layers)
    ### END SOLUTION


class MLPStack(nn.Module):
    """Linear layers kept in an nn.ModuleList, ReLU between them, none after the last."""

    def __init__(self, sizes: list[int]) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"sizes must hold an input and an output size at least (got {sizes})")
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in pairwise(sizes))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        logits = self.layers[-1](x)
        return logits
        ### END SOLUTION


class TaskHeads(nn.Module):
    """Shared trunk => one Linear head per task, chosen by name at call time."""

    def __init__(self, in_features: int, hidden: int, tasks: dict[str, int]) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in tasks.items()})
        ### END SOLUTION

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        ### BEGIN SOLUTION
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; known tasks: {', '.join(self.heads.keys())}")
        features = self.trunk(x)
        logits = self.heads[task](features)
        return logits
        ### END SOLUTION


class RunningMean(nn.Module):
    """Centres features: by the batch mean while training (tracking a running mean), by the running mean in eval."""

    def __init__(self, num_features: int, momentum: float = 0.1) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        if not self.training:
            return x - self.running_mean
        batch_mean = x.mean(dim=0)
        # A statistic, not something to differentiate through: keep it out of the autograd graph.
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * batch_mean)
        return x - batch_mean
        ### END SOLUTION


class FixedNet(nn.Module):
    """BrokenNet with its parts registered: the layers in an nn.ModuleList, the scale in a buffer."""

    def __init__(self, sizes: list[int], scale: float = 0.5) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in pairwise(sizes))
        self.register_buffer("scale", torch.tensor(scale))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BrokenNet's forward, unchanged: only the registration in __init__ needs fixing.
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        logits = self.layers[-1](x) * self.scale
        return logits
