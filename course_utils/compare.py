"""Comparisons that checkers share: module classes, parameter counts, state dicts and outputs.

Every function raises :class:`course_utils.checking.Fail` with a message that names what was compared,
what was expected and what was found.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from course_utils.checking import Fail, describe, expect, step


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """How many numbers a module learns (each shared parameter counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def expect_module_class(cls: Any, name: str) -> None:
    """Fail unless ``cls`` is a class derived from ``nn.Module``."""
    expect(
        inspect.isclass(cls) and issubclass(cls, nn.Module),
        f"{name} must be a class derived from nn.Module (got {describe(cls)}).",
        f"Start with: class {name}(nn.Module):",
    )


def expect_function(func: Any, name: str, signature: str) -> None:
    """Fail unless ``func`` is a plain callable (not a class, not a value)."""
    expect(
        callable(func) and not inspect.isclass(func),
        f"{name} must be a function (got {describe(func)}).",
        f"Define it with: def {signature}:",
    )


def build(factory: Callable[..., Any], call: str, *args: Any, **kwargs: Any) -> Any:
    """Call a learner's class or function as ``call`` describes it, turning its errors into a Fail."""
    with step(f"calling {call}"):
        return factory(*args, **kwargs)


def expect_linear(layer: Any, in_features: int, out_features: int, where: str) -> None:
    """Fail unless ``layer`` is ``nn.Linear(in_features, out_features)``."""
    expected = f"nn.Linear({in_features}, {out_features})"
    expect(isinstance(layer, nn.Linear), f"{where} must be {expected} (got {_short(layer)}).")
    expect(
        (layer.in_features, layer.out_features) == (in_features, out_features),
        f"{where} must be {expected} (got nn.Linear({layer.in_features}, {layer.out_features})).",
        "Each layer's in_features is the previous layer's out_features.",
    )


def expect_same_keys(module: nn.Module, reference: nn.Module, what: str, hint: str | None = None) -> None:
    """Fail unless two modules' state dicts have the same keys and shapes."""
    mine, theirs = module.state_dict(), reference.state_dict()
    missing = [k for k in theirs if k not in mine]
    extra = [k for k in mine if k not in theirs]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_listing(missing)}")
        if extra:
            parts.append(f"unexpected {_listing(extra)}")
        if len(parts) == 2:
            raise Fail(f"The state dict of {what} has {parts[0]} and {parts[1]}.", hint)
        raise Fail(f"The state dict of {what} has {parts[0]}.", hint)
    for key, value in theirs.items():
        expect(
            mine[key].shape == value.shape,
            f"In the state dict of {what}, {key} has shape {tuple(mine[key].shape)}, expected {tuple(value.shape)}.",
            hint,
        )


def load_reference_weights(module: nn.Module, reference: nn.Module, what: str) -> None:
    """Copy the reference's weights into the learner's module (keys and shapes checked first)."""
    expect_same_keys(module, reference, what)
    with step(f"loading the reference weights into {what}"):
        module.load_state_dict(reference.state_dict())


def expect_close(actual: Any, expected: torch.Tensor, what: str, hint: str | None = None, atol: float = 1e-5) -> None:
    """Fail unless ``actual`` is a tensor of ``expected``'s shape and values."""
    expect(
        isinstance(actual, torch.Tensor),
        f"{what} must be a tensor (got {describe(actual)}).",
        hint or "forward must return a single tensor.",
    )
    expect(
        tuple(actual.shape) == tuple(expected.shape),
        f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}.",
        hint,
    )
    actual = actual.detach().to(expected.dtype)
    if not torch.allclose(actual, expected, atol=atol, rtol=1e-4):
        worst = (actual - expected).abs().max().item()
        raise Fail(f"{what} differs from the reference output (largest difference {worst:.3g}).", hint)


def matches(actual: Any, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    """True when ``actual`` is a tensor equal to ``expected`` (for diagnosing which mistake was made)."""
    return (
        isinstance(actual, torch.Tensor)
        and tuple(actual.shape) == tuple(expected.shape)
        and torch.allclose(actual.detach().to(expected.dtype), expected, atol=atol, rtol=1e-4)
    )


def _listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (and {len(keys) - limit} more)" if len(keys) > limit else shown


def _short(value: Any) -> str:
    if isinstance(value, nn.Module):
        text = repr(value).splitlines()[0]
        return text if len(text) <= 80 else text[:77] + "..."
    return describe(value)
