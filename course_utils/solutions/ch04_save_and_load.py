"""Chapter 4 reference solutions: saving and loading models and checkpoints.

These are also helpers that are safe to use for real:

- :func:`save_checkpoint` writes atomically and durably (a temporary file in the same folder, fsynced, then
  ``os.replace`` and an fsync of the folder), so a crash, a kill or a full disk at any moment leaves either the
  previous file or the new one, never a torn file. It keeps the target's permission bits, writes through a
  symbolic link (the link stays, the file it points to is replaced), and removes temporary files that a killed
  save left behind (only its own, ``.ckpt-*.tmp``, and only those untouched for :data:`STALE_AFTER_SECONDS`).
  Keyword-only extras store a scheduler, a ``GradScaler``, the random number generators and any plain values.
- :func:`load_checkpoint` loads with ``weights_only=True`` and ``map_location="cpu"``, is transactional (when it
  raises, the model, the optimizer, the scheduler and the scaler are exactly as they were), and raises
  :class:`CheckpointError` with one sentence that says what is wrong: no such file, a folder, no permission to
  read, damaged, not a checkpoint, malformed, another optimizer type, or code that ``weights_only`` refused.
- :func:`load_flexible` loads a state dict saved from ``nn.DataParallel``/DDP (``module.``) or from
  ``torch.compile`` (``_orig_mod.``) strictly, without touching keys that carry no prefix;
- :func:`load_matching` copies what fits (same key and shape) and reports what it skipped;
- :func:`save_run` / :func:`load_run` (exact resume), :func:`rename_keys` (keys renamed by a code change) and
  :func:`load_big` (a big model through the meta device, ``mmap=True`` and ``assign=True``).

The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers delimit what the student edition replaces with a
stub; ``python -m course_utils.build`` copies these definitions into the chapter's notebook.
"""

from __future__ import annotations

import copy
import errno
import numbers
import os
import pickle
import random
import re
import secrets
import stat
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by wrappers: ``nn.DataParallel`` and DDP add ``module.``, ``torch.compile`` ``_orig_mod.``."""
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".ckpt-", ".tmp"
"""How :func:`save_checkpoint` names its temporary files (short, so any valid target name still fits)."""
STALE_AFTER_SECONDS = 3600
"""A temporary file of ours that nobody wrote to for this long was left by a killed save, and is removed."""


class CheckpointError(Exception):
    """A checkpoint cannot be saved or loaded; the message names the file and says why."""


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    *,
    scheduler: Any = None,
    scaler: Any = None,
    rng: bool = False,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save the model's and the optimizer's state and the epoch to ``path``, atomically.

    Args:
        path: the checkpoint file (a str or a ``pathlib.Path``); its folder must exist. A symbolic link is
            written through: the link stays and the file it points to is replaced.
        model: the model whose ``state_dict()`` is saved.
        optimizer: the optimizer whose ``state_dict()`` (and class name) is saved.
        epoch: the last epoch that finished.
        scheduler: a learning-rate scheduler whose ``state_dict()`` is saved too.
        scaler: a ``torch.amp.GradScaler`` whose ``state_dict()`` is saved too.
        rng: also save the states of Python's, NumPy's (global) and PyTorch's random number generators.
        generators: ``torch.Generator`` objects by name (e.g. a DataLoader's), whose states are saved too.
        extra: plain values (numbers, strings, lists, dicts, tensors) saved under ``"extra"``.

    Raises:
        CheckpointError: when the file cannot be written (no such folder, a folder at ``path``, a read-only
            file, no permission, a full disk), or ``extra`` holds objects ``weights_only=True`` would refuse.
            The previous file at ``path``, if any, is then unchanged.
    """
    ### BEGIN SOLUTION
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
        raise TypeError(f"epoch must be an int (got {type(epoch).__name__})")
    checkpoint: dict[str, Any] = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "optimizer_class": type(optimizer).__qualname__,  # load_checkpoint refuses an optimizer of another type
        "epoch": int(epoch),
    }
    if scheduler is not None:
        checkpoint["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        checkpoint["scaler"] = scaler.state_dict()
    if rng:
        checkpoint["rng"] = rng_state()
    if generators:
        checkpoint["generators"] = {name: generator.get_state() for name, generator in generators.items()}
    if extra is not None:
        checkpoint["extra"] = dict(extra)
    _write_atomically(Path(path), lambda file: torch.save(checkpoint, file))
    ### END SOLUTION


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = False,
    generators: Mapping[str, torch.Generator] | None = None,
) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` and ``optimizer``, all or nothing.

    Args:
        path: the checkpoint file.
        model: a model of the same architecture; its state is replaced.
        optimizer: an optimizer of the saved type over ``model.parameters()``, with the same parameter groups.
        scheduler: a scheduler to restore (the checkpoint must hold one).
        scaler: a ``GradScaler`` to restore (the checkpoint must hold one).
        restore_rng: also restore the random number generators saved with ``rng=True``.
        generators: ``torch.Generator`` objects by name, restored from the states saved under the same names.

    Returns:
        The epoch stored in the checkpoint.

    Raises:
        CheckpointError: if the file is missing, a folder, unreadable, damaged, not a checkpoint or malformed,
            was saved for another optimizer type, does not fit the model or the optimizer, lacks a requested
            part, or holds Python objects that ``weights_only=True`` refuses (their code never runs). Nothing
            was changed then: while loading, a copy of the current states is kept to restore them.
    """
    ### BEGIN SOLUTION
    checkpoint = read_checkpoint(path)
    _check_optimizer(path, checkpoint, optimizer)
    wanted = {"scheduler": scheduler, "scaler": scaler, "rng": restore_rng or None}
    for part, value in (*wanted.items(), *((f"generators.{n}", g) for n, g in (generators or {}).items())):
        key, _, name = part.partition(".")
        holds = key in checkpoint and (not name or name in checkpoint[key])
        if value is not None and not holds:
            raise CheckpointError(f"{path}: holds no {part} state to restore (it was not saved)")
    targets = [(model, model.state_dict()), (optimizer, optimizer.state_dict())]
    targets += [(obj, obj.state_dict()) for obj in (scheduler, scaler) if obj is not None]
    before = [(obj, copy.deepcopy(state)) for obj, state in targets]  # to undo a half-done load
    try:
        model.load_state_dict(checkpoint["model"])
        sizes = [len(group["params"]) for group in checkpoint["optimizer"]["param_groups"]]
        own = [len(group["params"]) for group in optimizer.param_groups]
        if sizes != own:
            raise ValueError(f"the saved optimizer has parameter groups of sizes {sizes}, this one {own}")
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(checkpoint["scaler"])
        for name, generator in (generators or {}).items():
            generator.set_state(checkpoint["generators"][name])
    except BaseException as error:
        for obj, state in before:
            obj.load_state_dict(state)
        if not isinstance(error, Exception):
            raise  # KeyboardInterrupt: undone, and passed on
        detail = str(error).strip().replace("\n", " ").replace("\t", "")
        raise CheckpointError(
            f"{path}: does not fit this model and optimizer, nothing was changed: {detail}"
        ) from error
    if restore_rng:
        set_rng_state(checkpoint["rng"])
    return int(checkpoint["epoch"])
    ### END SOLUTION


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``, on the CPU) and check its structure.

    Args:
        path: the checkpoint file.

    Returns:
        The checkpoint dict: ``model``, ``optimizer``, ``epoch`` and whatever extras were saved.

    Raises:
        CheckpointError: with one sentence saying what is wrong with the file.
    """
    ### BEGIN SOLUTION
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as file:
            file.read(1)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except PermissionError:
        raise CheckpointError(f"{path}: cannot be read (permission denied)") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        # weights_only=True (the default since PyTorch 2.6) rebuilds tensors and plain values only: it never
        # imports or calls what a pickle names. map_location="cpu": a file saved on a GPU loads anywhere.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: {_load_failure(path, error)}") from error
    _check_structure(path, checkpoint)
    return checkpoint
    ### END SOLUTION


def _load_failure(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a few words."""
    ### BEGIN SOLUTION
    legacy = not zipfile.is_zipfile(path)  # torch.save writes a zip archive since PyTorch 1.6
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
        if legacy:  # get_unsafe_globals_in_checkpoint reads zip archives only: the error names the global
            unsafe = re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))
        else:
            try:
                unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))  # reads, runs nothing
            except Exception:
                unsafe = []
        if unsafe:
            kind = "a legacy-format (pre-1.6, not zip) file " if legacy else ""
            return (
                f"{kind}refused by weights_only=True for safety: loading it would import or call "
                f"{', '.join(unsafe)} (nothing ran)"
            )
        if legacy:
            return "not a file written by torch.save (perhaps by pickle.dump, or damaged)"
    if legacy:
        return "not a file written by torch.save (empty, truncated or corrupted)"
    return f"damaged or incomplete (torch.load raised {type(error).__name__})"
    ### END SOLUTION


def _check_structure(path: Path, checkpoint: Any) -> None:
    """Raise CheckpointError unless ``checkpoint`` has the parts save_checkpoint writes, of the right types."""
    ### BEGIN SOLUTION
    if not isinstance(checkpoint, Mapping) or not {"model", "optimizer", "epoch"} <= checkpoint.keys():
        found = f"keys {', '.join(map(str, list(checkpoint)[:3]))}, ..." if isinstance(checkpoint, Mapping) else ""
        found = found or f"a {type(checkpoint).__name__}, not a dict"
        raise CheckpointError(f"{path}: not a checkpoint: expected the keys model, optimizer and epoch (found {found})")
    epoch, optimizer = checkpoint["epoch"], checkpoint["optimizer"]
    problems = {
        "model": not isinstance(checkpoint["model"], Mapping),
        "optimizer": not (isinstance(optimizer, Mapping) and {"state", "param_groups"} <= optimizer.keys()),
        "epoch": isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral),
    }
    problems.update(
        {k: not isinstance(checkpoint[k], Mapping) for k in ("scheduler", "scaler", "rng") if k in checkpoint}
    )
    wanted = {"model": "a state dict", "optimizer": "an optimizer state dict", "epoch": "an int"}
    for key, bad in problems.items():
        if bad:
            shown = repr(checkpoint[key]) if isinstance(checkpoint[key], str | numbers.Number) else None
            shown = shown or f"a {type(checkpoint[key]).__name__}"
            raise CheckpointError(f"{path}: malformed: {key} must be {wanted.get(key, 'a dict')} (got {shown})")
    ### END SOLUTION


def _check_optimizer(path: str | os.PathLike, checkpoint: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Raise CheckpointError when the saved optimizer state cannot belong to ``optimizer``."""
    ### BEGIN SOLUTION
    mine = type(optimizer).__qualname__
    saved = checkpoint.get("optimizer_class")
    groups = checkpoint["optimizer"]["param_groups"]
    if saved is None and groups:  # a file from before the class was stored: compare the hyperparameter names
        # Another type has names this one lacks AND lacks names this one needs (SGD's momentum for an Adam file).
        # Either alone is normal: schedulers add initial_lr, and newer PyTorch versions add hyperparameters.
        foreign = sorted(set(groups[0]) - set(optimizer.param_groups[0]) - {"initial_lr"})
        if foreign and set(optimizer.defaults) - set(groups[0]):
            saved = f"another optimizer (its groups hold {', '.join(foreign)})"
    if saved is not None and saved != mine:
        raise CheckpointError(f"{path}: holds the state of {saved}, but this optimizer is {mine}")
    ### END SOLUTION


def _write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file with ``write(file)`` so that ``path`` is always either the old file or the complete new one."""
    ### BEGIN SOLUTION
    target = Path(os.path.realpath(path))  # a symbolic link is written through: the file it points to is replaced
    folder = target.parent
    if not folder.is_dir():
        raise CheckpointError(f"cannot save {path}: the folder {path.parent} does not exist")
    if target.is_dir():
        raise CheckpointError(f"cannot save {path}: it is a folder")
    old = target.stat() if target.exists() else None
    if old is not None and not (old.st_mode & 0o222 and os.access(target, os.W_OK)):
        raise CheckpointError(f"cannot save {path}: the file is read-only (make it writable, or save elsewhere)")
    _remove_stale_temporaries(folder)
    try:
        # In the same folder as the target: os.replace is atomic only within one file system. Mode 0o666 lets
        # the umask decide the permissions, as for any new file (tempfile.mkstemp would make it 0o600).
        temporary = folder / f"{TEMPORARY_PREFIX}{secrets.token_hex(6)}{TEMPORARY_SUFFIX}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as error:
        raise CheckpointError(f"cannot save {path}: {_reason(error)} in {path.parent}") from error
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the bytes reach the disk before the name points at them
        if old is not None:
            os.chmod(temporary, stat.S_IMODE(old.st_mode))  # keep the target's permission bits
        _refuse_unsafe(path, temporary)
        os.replace(temporary, target)  # readers see the old file or the new one, never half of one
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, CheckpointError) or not isinstance(error, Exception):
            raise
        cause = _os_error(error)
        if cause is None:
            raise
        unchanged = "; the previous file is unchanged" if old is not None else ""
        raise CheckpointError(f"cannot save {path}: {_reason(cause)}{unchanged}") from error
    _fsync_folder(folder)  # the rename itself survives a power cut
    ### END SOLUTION


def _refuse_unsafe(path: Path, temporary: Path) -> None:
    """Refuse to publish a file that ``weights_only=True`` would refuse (e.g. ``extra`` holds a NumPy array)."""
    ### BEGIN SOLUTION
    unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(temporary))
    if unsafe:
        raise CheckpointError(
            f"cannot save {path}: it would hold objects that weights_only=True refuses ({', '.join(unsafe)}); "
            "store plain values (int, float, str, list, dict, tensors) instead"
        )
    ### END SOLUTION


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete our own temporary files (``.ckpt-*.tmp``) that no save has written to for a long time."""
    ### BEGIN SOLUTION
    # A running save keeps writing (and so touching) its file; one untouched for an hour was left by a kill.
    now = time.time()
    for candidate in folder.glob(f"{TEMPORARY_PREFIX}*{TEMPORARY_SUFFIX}"):
        try:
            info = candidate.lstat()
            ours = not hasattr(os, "getuid") or info.st_uid == os.getuid()
            if stat.S_ISREG(info.st_mode) and ours and now - info.st_mtime > STALE_AFTER_SECONDS:
                candidate.unlink()
        except OSError:
            pass  # gone already, or not ours to remove: saving does not depend on it
    ### END SOLUTION


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows has no folder handles to fsync)."""
    ### BEGIN SOLUTION
    if os.name == "nt":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename has happened either way
    finally:
        os.close(descriptor)
    ### END SOLUTION


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind an exception (torch.save turns a failed write into a RuntimeError)."""
    ### BEGIN SOLUTION
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
    ### END SOLUTION


def _reason(error: OSError) -> str:
    """An OSError in a few plain words."""
    ### BEGIN SOLUTION
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENAMETOOLONG: "the file name is too long",
    }
    return reasons.get(error.errno, error.strerror or str(error))
    ### END SOLUTION


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's global and PyTorch's random number generators, as plain values.

    Every value loads with ``weights_only=True``: NumPy's own ``np.random.get_state()`` holds an ndarray, which
    ``weights_only`` refuses, so its key array is stored as a list of ints.
    """
    ### BEGIN SOLUTION
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
    ### END SOLUTION


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only when the machine has as many GPUs)."""
    ### BEGIN SOLUTION
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    ### END SOLUTION


def load_flexible(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load ``state_dict`` into ``model`` strictly, first removing the ``module.`` and ``_orig_mod.`` prefixes.

    Args:
        model: the plain (unwrapped) model.
        state_dict: a state dict saved from the model itself, from ``nn.DataParallel``/DDP (``module.``), from
            ``torch.compile`` (``_orig_mod.``) or from both; it is not changed. Its ``_metadata`` (each module's
            version, which ``_load_from_state_dict`` uses to upgrade old files) is kept.

    Raises:
        RuntimeError: from ``load_state_dict`` when keys are missing or unexpected, or shapes differ.
    """
    ### BEGIN SOLUTION
    # A new dict holding the same tensors, and a copy of _metadata: consume_prefix_in_state_dict_if_present
    # renames keys (and _metadata's keys) in place. dict(state_dict) would drop _metadata.
    metadata = getattr(state_dict, "_metadata", None)
    state_dict = OrderedDict(state_dict)
    if metadata is not None:
        state_dict._metadata = copy.deepcopy(metadata)
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

    A dtype difference still counts as a match: like ``load_state_dict``, the copy converts to the model's dtype.

    Args:
        model: the model to update in place.
        state_dict: the entries to copy from; it is not changed. Values that are not tensors are skipped. Its
            ``_metadata`` (module versions) is kept.

    Returns:
        The sorted keys of ``state_dict`` that were not copied: keys the model does not have, shapes that differ,
        values that are not tensors.
    """
    ### BEGIN SOLUTION
    own = model.state_dict()
    matching = OrderedDict(
        (key, value)
        for key, value in state_dict.items()
        if key in own and isinstance(value, torch.Tensor) and value.shape == own[key].shape
    )
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        matching._metadata = copy.deepcopy(metadata)  # module versions: old files are upgraded by version
    # strict=False lets us load a subset; it still raises on a shape mismatch, which is why we filtered shapes.
    model.load_state_dict(matching, strict=False)
    return sorted(key for key in state_dict if key not in matching)
    ### END SOLUTION


def save_run(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    epoch: int,
) -> None:
    """Save everything a training run changes, so that it resumes exactly after ``epoch``.

    Args:
        path: the file to write.
        model: the model (its dropout draws from PyTorch's global generator).
        optimizer: its optimizer.
        scheduler: its learning-rate scheduler.
        generator: the ``torch.Generator`` that shuffles the DataLoader.
        epoch: the last epoch that finished.
    """
    ### BEGIN SOLUTION
    run = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": int(epoch),
        "torch_rng": torch.get_rng_state(),  # dropout masks
        "data_rng": generator.get_state(),  # the DataLoader's order
    }
    torch.save(run, path)
    ### END SOLUTION


def load_run(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> int:
    """Restore what :func:`save_run` saved; return the epoch it saved.

    Args:
        path: the file :func:`save_run` wrote.
        model: a model of the same architecture.
        optimizer: an optimizer over ``model.parameters()``, built as the saved one was.
        scheduler: a scheduler of the saved type over ``optimizer``.
        generator: the DataLoader's generator.

    Returns:
        The saved epoch.
    """
    ### BEGIN SOLUTION
    run = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(run["model"])
    optimizer.load_state_dict(run["optimizer"])
    scheduler.load_state_dict(run["scheduler"])
    generator.set_state(run["data_rng"])
    torch.set_rng_state(run["torch_rng"])  # last: building and loading may draw random numbers
    return run["epoch"]
    ### END SOLUTION


def rename_keys(state_dict: Mapping[str, Any], renames: Mapping[str, str]) -> OrderedDict:
    """A copy of ``state_dict`` in which each key that starts with an old prefix starts with its new one.

    Args:
        state_dict: the state dict to rename; it is not changed.
        renames: old prefix -> new prefix, e.g. ``{"features.": "backbone.", "fc.": "head."}``. A prefix matches
            only at the start of a key; when several match, the longest wins.

    Returns:
        The renamed state dict (the same tensors), with ``_metadata`` renamed the same way, so that module
        versions still reach the modules under their new names.

    Raises:
        ValueError: when two keys would get the same new name.
    """
    ### BEGIN SOLUTION
    ordered = sorted(renames.items(), key=lambda item: len(item[0]), reverse=True)  # longest prefix first

    def rename(key: str) -> str:
        for old, new in ordered:
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    renamed = OrderedDict()
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key in renamed:
            raise ValueError(f"two keys would be renamed to {new_key!r}")
        renamed[new_key] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        # _metadata is keyed by module path without the trailing dot ("" is the root module).
        renamed._metadata = OrderedDict(
            (rename(key + ".")[:-1] if key else key, copy.deepcopy(value)) for key, value in metadata.items()
        )
    return renamed
    ### END SOLUTION


def load_big(build: Callable[[], nn.Module], path: str | os.PathLike) -> nn.Module:
    """Build a model without memory for its parameters and give it the weights of ``path``, memory-mapped.

    Args:
        build: makes the model (e.g. ``lambda: MyModel(config)``); it is called once.
        path: a state dict written by ``torch.save`` (zip format).

    Returns:
        The model: its parameters and persistent buffers are the file's tensors (mapped, not copied), its
        non-persistent buffers are the ones ``build`` made, and tied parameters are still tied.
    """
    ### BEGIN SOLUTION

    def to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
        # Each parameter moves to the meta device as it is registered, before __init__ initializes it (so that
        # costs nothing). Buffers are made normally: the non-persistent ones are not in the file.
        if param is None or param.device.type == "meta" or type(param) is not nn.Parameter:
            return None  # None keeps it: an already-moved (tied) parameter stays the same object
        return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    handle = register_module_parameter_registration_hook(to_meta)
    try:
        model = build()
    finally:
        handle.remove()
    # assign=True gives every key its own Parameter: remember which names share one, to tie them again.
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    state = torch.load(path, mmap=True, map_location="cpu", weights_only=True)
    model.load_state_dict(state, assign=True)  # the mapped tensors become the parameters: no copy
    for first, *others in groups.values():
        for name in others:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, model.get_parameter(first))
    return model
    ### END SOLUTION
