"""Chapter 4 reference solutions: saving and loading models and checkpoints.

These are also helpers that are safe to use for real:

- :func:`save_checkpoint` writes atomically (a temporary file in the same directory, then ``os.replace``), so a
  crash or a kill at any moment leaves either the previous file or the new one, never a torn file;
- :func:`load_checkpoint` loads with ``weights_only=True`` and ``map_location="cpu"`` and raises
  :class:`CheckpointError`, naming the file, when it is missing, damaged, not a checkpoint, or holds code;
- :func:`load_flexible` loads a state dict saved from ``nn.DataParallel``/DDP (``module.``) or from
  ``torch.compile`` (``_orig_mod.``) strictly, without touching keys that carry no prefix;
- :func:`load_matching` copies what fits (same key and shape) and reports what it skipped.

The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers delimit what the student edition replaces with a
stub; ``python -m course_utils.build`` copies these definitions into the chapter's notebook.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by wrappers: ``nn.DataParallel`` and DDP add ``module.``, ``torch.compile`` ``_orig_mod.``."""


class CheckpointError(Exception):
    """A checkpoint file is missing, damaged, not a checkpoint, or holds objects weights_only=True refuses."""


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Save the model's and the optimizer's state and the epoch to ``path``, atomically.

    Args:
        path: the checkpoint file (a str or a ``pathlib.Path``); its directory must exist.
        model: the model whose ``state_dict()`` is saved.
        optimizer: the optimizer whose ``state_dict()`` is saved.
        epoch: the last epoch that finished.
    """
    ### BEGIN SOLUTION
    path = Path(path)
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": int(epoch)}
    # In the same directory as path: os.replace is atomic only within one file system.
    temporary = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    try:
        with open(temporary, "xb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())  # the bytes reach the disk before the name points at them
        os.replace(temporary, path)  # readers see the old file or the new one, never half of one
    finally:
        temporary.unlink(missing_ok=True)  # only left after a failure: os.replace moved it otherwise
    ### END SOLUTION


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` and ``optimizer``.

    Args:
        path: the checkpoint file.
        model: a model of the same architecture; its state is replaced.
        optimizer: an optimizer over ``model.parameters()``, built as the saved one was; its state is replaced.

    Returns:
        The epoch stored in the checkpoint.

    Raises:
        CheckpointError: if the file is missing, empty, truncated or corrupted, is not a checkpoint, does not fit
            the model, or holds Python objects that ``weights_only=True`` refuses (their code never runs).
    """
    ### BEGIN SOLUTION
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        # weights_only=True (the default since PyTorch 2.6) rebuilds tensors and plain values only: it never
        # imports or calls what a pickle names. map_location="cpu": a file saved on a GPU loads anywhere.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a torn write has no zip directory
            reason = "not a file written by torch.save (empty, truncated or corrupted)"
            raise CheckpointError(f"{path}: {reason}") from error
        try:
            unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))  # reads names, runs nothing
        except Exception:
            unsafe = []
        if unsafe:
            raise CheckpointError(
                f"{path}: refused by weights_only=True: loading it would import or call {', '.join(unsafe)}"
            ) from error
        raise CheckpointError(f"{path}: damaged or incomplete (torch.load raised {type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or not {"model", "optimizer", "epoch"} <= checkpoint.keys():
        found = f"keys {', '.join(map(str, list(checkpoint)[:3]))}, ..." if isinstance(checkpoint, dict) else "no dict"
        raise CheckpointError(f"{path}: not a checkpoint: expected the keys model, optimizer and epoch (found {found})")
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: does not fit this model and optimizer: {error}") from error
    return int(checkpoint["epoch"])
    ### END SOLUTION


def load_flexible(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load ``state_dict`` into ``model`` strictly, first removing the ``module.`` and ``_orig_mod.`` prefixes.

    Args:
        model: the plain (unwrapped) model.
        state_dict: a state dict saved from the model itself, from ``nn.DataParallel``/DDP (``module.``), from
            ``torch.compile`` (``_orig_mod.``) or from both; it is not changed.

    Raises:
        RuntimeError: from ``load_state_dict`` when keys are missing or unexpected, or shapes differ.
    """
    ### BEGIN SOLUTION
    # A new dict holding the same tensors: consume_prefix_in_state_dict_if_present renames keys in place.
    state_dict = dict(state_dict)
    expected = model.state_dict().keys()
    while state_dict.keys() != expected:
        # Strip a wrapper's prefix only when every key has it: a key without one is already right.
        prefixes = ("module.", "_orig_mod.")  # nn.DataParallel and DDP; torch.compile
        prefix = next((p for p in prefixes if state_dict and all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break  # nothing left to strip: load_state_dict names the keys that do not fit
        consume_prefix_in_state_dict_if_present(state_dict, prefix)
    model.load_state_dict(state_dict)
    ### END SOLUTION


def load_matching(model: nn.Module, state_dict: Mapping[str, Any]) -> list[str]:
    """Copy into ``model`` every entry of ``state_dict`` whose key and shape match; leave the rest untouched.

    Args:
        model: the model to update in place.
        state_dict: the entries to copy from; it is not changed. Values that are not tensors are skipped.

    Returns:
        The sorted keys of ``state_dict`` that were not copied: keys the model does not have, shapes that differ,
        values that are not tensors.
    """
    ### BEGIN SOLUTION
    own = model.state_dict()
    matching = {
        key: value
        for key, value in state_dict.items()
        if key in own and isinstance(value, torch.Tensor) and value.shape == own[key].shape
    }
    # strict=False lets us load a subset; it still raises on a shape mismatch, which is why we filtered shapes.
    model.load_state_dict(matching, strict=False)
    return sorted(key for key in state_dict if key not in matching)
    ### END SOLUTION
