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


class TaskHeads(nn.Module):
    """Shared trunk => one Linear head per task, chosen by name at call time."""

    def __init__(self, in_features: int, hidden: int, tasks: dict[str, int]) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.heads = nn.ModuleDict()
        for task, n_classes in tasks.items():
            try:
                self.heads[task] = nn.Linear(hidden, n_classes)
            except KeyError as error:  # "", a dot, or a name nn.ModuleDict already has ("type", "train", ...)
                raise ValueError(f"task name {task!r} cannot be a key of nn.ModuleDict: {error.args[0]}") from None
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


class MySequential(nn.Module):
    """Runs its modules one after the other, like nn.Sequential, built on add_module."""

    def __init__(self, *args: nn.Module) -> None:
        """Takes modules positionally (named "0", "1", ...) or one OrderedDict of name -> module."""
        ### BEGIN SOLUTION
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, module in args[0].items():
                self.add_module(name, module)
        else:
            for index, module in enumerate(args):
                self.add_module(str(index), module)
        ### END SOLUTION

    def __len__(self) -> int:
        ### BEGIN SOLUTION
        return len(self._modules)
        ### END SOLUTION

    def __getitem__(self, index: int) -> nn.Module:
        ### BEGIN SOLUTION
        if not isinstance(index, int):
            raise TypeError(f"MySequential indices must be integers (got {type(index).__name__})")
        modules = list(self._modules.values())
        if not -len(modules) <= index < len(modules):
            raise IndexError(f"index {index} is out of range for a MySequential of {len(modules)} modules")
        return modules[index]
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        # _modules, not children(): children() lists a module passed twice only once, so it would run once.
        for module in self._modules.values():
            x = module(x)
        return x
        ### END SOLUTION


class MultiTaskNet(nn.Module):
    """Centre => Linear => (Linear => ReLU) x depth => Dropout => one Linear head per task."""

    def __init__(self, in_features: int, hidden: int, depth: int, tasks: dict[str, int], p: float = 0.5) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        self.register_buffer("centre", torch.zeros(in_features))
        self.proj = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.dropout = nn.Dropout(p)
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, n_classes) for task, n_classes in tasks.items()})
        ### END SOLUTION

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        ### BEGIN SOLUTION
        x = x - self.centre
        x = self.proj(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        x = self.dropout(x)  # a module follows train() / eval(); F.dropout needs training=self.training
        logits = self.heads[task](x)
        return logits
        ### END SOLUTION
