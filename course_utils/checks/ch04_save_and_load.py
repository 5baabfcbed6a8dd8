"""Chapter 4 checkers: saving and loading models and checkpoints.

The checkpoint checker writes files, only inside a ``tempfile.TemporaryDirectory`` it removes afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch codebase uses
from torch import nn

from course_utils.checking import Fail, describe, exercise, expect, first_line, make_check, step
from course_utils.compare import expect_function
from course_utils.i18n import N_
from course_utils.solutions.ch04_save_and_load import WRAPPER_PREFIXES

# --- ch4.checkpoint ---------------------------------------------------------------------------------------

_STEPS = 3
_EPOCH = 7  # not the number of steps, so that returning a step count cannot pass by chance
_SAVE_CALL = "save_checkpoint(path, model, optimizer, epoch=7)"


def _unchanged(state: dict, keys_before: list, values_before: list) -> bool:
    """True when a state dict still has the same keys, in order, holding the very same objects."""
    return list(state) == keys_before and all(a is b for a, b in zip(state.values(), values_before, strict=False))


def _checkpoint_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _checkpoint_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(4)
    return [(torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)) for _ in range(6)]


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> list[float]:
    model.train()
    losses = []
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


class _Payload:
    """Pickles as a call to exec that would create a marker file: it shows whether a loader runs pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",))


class Unpicklable:
    """Makes torch.save fail halfway, as a full disk would."""

    def __reduce_ex__(self, protocol: int) -> tuple:
        raise OSError("No space left on device (simulated by the checker)")


class PoisonedModel(nn.Module):
    """A model whose state dict cannot be written: saving it fails after the file was opened (chapter 6 too)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = self.inner.state_dict(*args, **kwargs)
        state["zz_unwritable"] = Unpicklable()
        return state


def expect_failed_save_keeps_old_file(save: Callable[[], Any], path: Path, doing: str, hint: str) -> None:
    """Run a learner's save that fails part-way (through :class:`PoisonedModel`); the old file must still load.

    A save that reports no error is not judged here: other checks catch what it wrote (chapters 4 and 6).
    """
    try:
        with step(doing):
            save()
    except Fail:
        damaged = None
        try:
            torch.load(path, weights_only=True, map_location="cpu")
        except Exception as error:
            damaged = error
        expect(
            damaged is None,
            "A save that failed halfway (we made writing fail, as a full disk or a kill would) left the "
            f"previous checkpoint unreadable ({type(damaged).__name__}: {first_line(damaged or Exception())}).",
            hint,
        )


def _load_raw(path: Path, what: str) -> Any:
    """torch.load with weights_only=True, every failure turned into a Fail that says why."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unsafe = []
        names = sorted({name.rsplit(".", 1)[-1] for name in unsafe}, key=str.lower)
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        objects = f" ({', '.join(names[:3])}{more})" if names else ""
        raise Fail(
            f"{what} does not load with weights_only=True: it holds pickled Python objects{objects}, "
            "not only tensors and plain values.",
            "Save model.state_dict() and optimizer.state_dict(), not the model or the optimizer object.",
        ) from None
    except Exception as error:
        raise Fail(
            f"{what} cannot be read by torch.load ({type(error).__name__}: {first_line(error)}).",
            "Write the checkpoint dict with torch.save(checkpoint, file).",
        ) from None


def _differing_key(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    for key, value in expected.items():
        if key not in actual or not torch.equal(actual[key], value):
            return key
    return None


def _optimizer_difference(actual: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """Where two optimizer state dicts differ (None when they are equal)."""
    if not actual.get("state"):
        return "empty"
    for index, state in expected["state"].items():
        mine = actual["state"].get(index, {})
        for name, value in state.items():
            other = mine.get(name)
            same = (
                torch.equal(torch.as_tensor(other), torch.as_tensor(value))
                if other is not None and isinstance(value, torch.Tensor | numbers.Number)
                else other == value
            )
            if not same:
                return f"state[{index}][{name!r}]"
    for number, (mine, theirs) in enumerate(zip(actual["param_groups"], expected["param_groups"], strict=False)):
        for name, value in theirs.items():
            if mine.get(name) != value:
                return f"param_groups[{number}][{name!r}]"
    return None


@exercise(
    "ch4.checkpoint",
    title="A checkpoint that resumes training exactly",
    names=["save_checkpoint", "load_checkpoint"],
    points=3,
)
def _check_checkpoint(save_checkpoint: Any, load_checkpoint: Any) -> str:
    expect_function(save_checkpoint, "save_checkpoint", "save_checkpoint(path, model, optimizer, epoch)")
    expect_function(load_checkpoint, "load_checkpoint", "load_checkpoint(path, model, optimizer)")
    batches = _checkpoint_batches()
    with tempfile.TemporaryDirectory(prefix="course_ch4_") as scratch:
        folder = Path(scratch)
        path = folder / "checkpoint.pt"
        model = _checkpoint_model(seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        _train(model, optimizer, batches[:_STEPS])
        saved_model = copy.deepcopy(model.state_dict())
        saved_optimizer = copy.deepcopy(optimizer.state_dict())
        try:
            with step(f"calling {_SAVE_CALL} with a pathlib.Path"):
                save_checkpoint(path, model, optimizer, _EPOCH)
        except Fail as failure:
            if isinstance(failure.__context__, TypeError) and "str" in str(failure.__context__):
                failure.hint = "Accept a str or a pathlib.Path: start with path = pathlib.Path(path)."
            raise
        files = sorted(p.name for p in folder.iterdir())
        expect(
            path.is_file(),
            f"{_SAVE_CALL} did not create the file at path (the folder holds: {', '.join(files) or N_('nothing')}).",
            "Write to a temporary file in the same directory, then os.replace(temporary, path).",
        )
        _load_raw(path, "The file save_checkpoint wrote")
        uninterrupted = _train(model, optimizer, batches[_STEPS:])

        fresh = _checkpoint_model(seed=1)
        fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.001)
        with step("calling load_checkpoint(path, new_model, new_optimizer)"):
            epoch = load_checkpoint(str(path), fresh, fresh_optimizer)
        expect(
            isinstance(epoch, numbers.Integral) and not isinstance(epoch, bool),
            f"load_checkpoint must return the saved epoch as an int (got {describe(epoch)}).",
            "Store the epoch in the checkpoint dict and return int(checkpoint['epoch']).",
        )
        expect(
            epoch == _EPOCH,
            f"load_checkpoint returned {epoch}; the checkpoint was saved with epoch={_EPOCH}.",
            "Return the epoch that was saved; the training loop resumes at epoch + 1.",
        )
        restored = fresh.state_dict()
        if all(not torch.equal(restored[k], v) for k, v in saved_model.items() if k.endswith("weight")):
            raise Fail(
                "After load_checkpoint the model still has its fresh weights: the model state was not restored.",
                "Call model.load_state_dict(checkpoint['model']) in load_checkpoint.",
            )
        key = _differing_key(restored, saved_model)
        if key is not None:
            buffer = key.endswith(("running_mean", "running_var", "num_batches_tracked"))
            raise Fail(
                f"After load_checkpoint the model's {key} differs from the saved one (a BatchNorm buffer: buffers "
                "were not restored)."
                if buffer
                else f"After load_checkpoint the model's {key} differs from the saved one.",
                "Save model.state_dict(): it holds the parameters and the buffers.",
            )
        difference = _optimizer_difference(fresh_optimizer.state_dict(), saved_optimizer)
        if difference == "empty":
            raise Fail(
                "After load_checkpoint the optimizer has no state (Adam's step counts and moving averages are "
                "empty): training would not resume where it stopped.",
                "Save optimizer.state_dict() too, and call optimizer.load_state_dict(checkpoint['optimizer']).",
            )
        expect(
            difference is None,
            f"After load_checkpoint the optimizer's {difference} differs from the saved one.",
            "Save optimizer.state_dict() and restore it with optimizer.load_state_dict.",
        )
        with step("training the restored model and optimizer"):
            resumed = _train(fresh, fresh_optimizer, batches[_STEPS:])
        if resumed != uninterrupted:
            shown = ", ".join(f"{v:.4f}" for v in resumed)
            wanted = ", ".join(f"{v:.4f}" for v in uninterrupted)
            raise Fail(
                f"Training resumed from the checkpoint gave the losses {shown}; uninterrupted training gave {wanted}.",
                "Restore everything that training changes: the model's and the optimizer's state dicts.",
            )

        # Saving again must publish a new file (os.replace), not rewrite the old one in place: a kill or a full
        # disk during an in-place write tears the last good checkpoint.
        # Holding the old file open keeps its inode allocated, so a new file can never reuse its number (POSIX;
        # on Windows an open file cannot be replaced at all, so there we only compare the numbers).
        with contextlib.ExitStack() as stack:
            if os.name != "nt":
                stack.enter_context(open(path, "rb"))
            inode = path.stat().st_ino
            with step(f"calling {_SAVE_CALL} a second time, over the first file"):
                save_checkpoint(path, fresh, fresh_optimizer, _EPOCH)
            replaced = path.is_file() and path.stat().st_ino != inode
        expect(
            replaced,
            "save_checkpoint rewrote the existing checkpoint in place (path is still the same file, same inode): a "
            "kill or a full disk during that write leaves a torn file and no good one.",
            "Write the new checkpoint to a temporary file in the same folder, then os.replace(temporary, path).",
        )

        # A save that fails halfway (here: a value that cannot be pickled, as with a full disk) must leave the
        # previous checkpoint intact.
        expect_failed_save_keeps_old_file(
            lambda: save_checkpoint(str(path), PoisonedModel(fresh), fresh_optimizer, _EPOCH + 1),
            path,
            "calling save_checkpoint on a model whose state cannot be written",
            "Write to a temporary file in the same directory, then os.replace(temporary, path): "
            "a failure then never touches the last good file.",
        )

        # A file that hides code must be refused, and the code never run.
        marker = folder / "payload-ran"
        payload_path = folder / "payload.pt"
        torch.save(
            {"model": saved_model, "optimizer": saved_optimizer, "epoch": _EPOCH, "note": _Payload(marker)},
            payload_path,
        )
        try:
            with step("calling load_checkpoint on a file that hides code"):
                other = _checkpoint_model(seed=2)
                load_checkpoint(payload_path, other, torch.optim.Adam(other.parameters(), lr=0.05))
        except Fail:
            pass  # refusing the file is right; the marker tells whether its code ran
        expect(
            not marker.exists(),
            "load_checkpoint ran code hidden in a checkpoint file (our harmless payload created a marker file): "
            "it loads with weights_only=False.",
            "Load with torch.load(path, map_location='cpu', weights_only=True), the default since PyTorch 2.6.",
        )
    return (
        "The checkpoint restores model, buffers, optimizer and epoch; resumed training matches uninterrupted "
        "training; the file loads with weights_only=True; a new save replaces the file and a failed one keeps it; "
        "hidden code never runs."
    )


check_checkpoint = make_check("ch4.checkpoint")


# --- ch4.load_flexible ------------------------------------------------------------------------------------


class _Versioned(nn.Module):
    """A module at version 2 that upgrades version-1 files (which stored log(scale)) while loading."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool, *args: Any, **kwargs: Any
    ) -> None:
        key = prefix + "scale"
        version = local_metadata.get("version") if isinstance(local_metadata, dict) else None
        if (version is None or version < 2) and key in state_dict:
            state_dict[key] = state_dict[key].exp()  # without _metadata every file looks like version 1
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args, **kwargs)


_SCALE = 2.0  # the saved scale; exp(2.0) = 7.389 when the version is lost
_METADATA_HINT = (
    "Keep the state dict's _metadata (each module's version): dict(state_dict) and a new dict drop it. Copy it: "
    "new = OrderedDict(...); new._metadata = copy.deepcopy(state_dict._metadata)."
)


def _expect_scale(value: float, where: str) -> None:
    expect(
        abs(value - _SCALE) < 1e-6,
        f"{where} the versioned module's scale is {value:.3f}, not {_SCALE}: it upgraded a current file as if it "
        "were an old one, because the module version stored in state_dict._metadata was lost.",
        _METADATA_HINT,
    )


class _Probe(nn.Module):
    """Key names that careless prefix code breaks: encoder.* and submodule.*; and a module with a version."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 2, kernel_size=3), nn.BatchNorm2d(2))
        self.submodule = nn.Linear(2, 2)
        self.scaled = _Versioned()


class _RecordingProbe(_Probe):
    """A _Probe that remembers the keys and the strict flag of every load_state_dict call."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[list[str], bool]] = []

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self.received.append((list(state_dict.keys()), strict))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class _Wrapper(nn.Module):
    """Holds a module under a given attribute name, as nn.DataParallel (module) and torch.compile (_orig_mod) do."""

    def __init__(self, inner: nn.Module, name: str) -> None:
        super().__init__()
        self.add_module(name, inner)


def _probe_state(seed: int) -> OrderedDict:
    torch.manual_seed(seed)
    probe = _Probe()
    with torch.no_grad():
        probe.encoder[1].running_mean.normal_()
        probe.encoder[1].running_var.uniform_(0.5, 2.0)
        probe.encoder[1].num_batches_tracked.fill_(3)
        probe.scaled.scale.fill_(_SCALE)
    return probe.state_dict()


def _prefix_hint(received: str, expected: str) -> str:
    if received == expected[7:]:
        return (
            "k[7:] cuts 7 characters from every key, also from keys that have no prefix. Remove a prefix only "
            "where it is present: consume_prefix_in_state_dict_if_present(state_dict, prefix)."
        )
    if "module." in expected and received == expected.replace("module.", ""):
        return (
            "str.replace removes 'module.' anywhere in a key, also inside a name such as 'submodule.weight'. "
            "Remove it only at the start of the key."
        )
    if received in (expected.lstrip("module."), expected.lstrip("_orig_mod.")):  # noqa: B005 - the learner's mistake
        return "str.lstrip removes any of the given characters, not a prefix: use removeprefix or consume_prefix."
    if received.startswith(WRAPPER_PREFIXES) and not expected.startswith(WRAPPER_PREFIXES):
        return "Remove every wrapper prefix: module. (DataParallel, DDP) and _orig_mod. (torch.compile), or both."
    return "Remove a prefix only from the start of keys: consume_prefix_in_state_dict_if_present(state_dict, prefix)."


def _diagnose_keys(model: _RecordingProbe, expected: list[str], label: str) -> None:
    """Raise a Fail that names a corrupted key when load_flexible passed wrong keys to load_state_dict."""
    if not model.received:
        return
    received, _strict = model.received[-1]
    wrong = [k for k in received if k not in expected]
    absent = [k for k in expected if k not in received]
    if not wrong and not absent:
        return  # the right keys, in whatever order
    if not wrong:
        raise Fail(
            f"For {label}, load_flexible passed no {absent[0]!r} to load_state_dict.",
            "Keep every entry of the state dict; only rename the keys that carry a wrapper's prefix.",
        )
    # Pair the first wrong key with the model key it most likely came from.
    got = wrong[0]
    wanted = next((k for k in absent if k.endswith(got) or got.endswith(k)), absent[0] if absent else got)
    raise Fail(
        f"For {label}, load_flexible passed the key {got!r} to load_state_dict; the model's key is {wanted!r}.",
        _prefix_hint(got, wanted),
    )


@exercise("ch4.load_flexible", title="Load state dicts with or without wrapper prefixes", names=["load_flexible"])
def _check_load_flexible(load_flexible: Any) -> str:
    expect_function(load_flexible, "load_flexible", "load_flexible(model, state_dict)")
    source = _probe_state(seed=1)
    expected = list(source)
    inner = _Probe()
    inner.load_state_dict(source)
    # Real state dicts of wrapped models (with their _metadata), built as the wrappers build them.
    cases = [
        ("a plain state dict (no prefix)", source),
        ("a state dict saved from nn.DataParallel (keys start with module.)", _Wrapper(inner, "module").state_dict()),
        (
            "a state dict saved from torch.compile (keys start with _orig_mod.)",
            _Wrapper(inner, "_orig_mod").state_dict(),
        ),
        (
            "a state dict saved from torch.compile(DDP(model)) (keys start with _orig_mod.module.)",
            _Wrapper(_Wrapper(inner, "module"), "_orig_mod").state_dict(),
        ),
    ]
    later: list[Fail] = []  # module-version mistakes, reported once the keys are known to be right
    for label, state in cases:
        keys_before = list(state)
        values_before = list(state.values())
        metadata_before = copy.deepcopy(getattr(state, "_metadata", None))
        torch.manual_seed(2)
        model = _RecordingProbe()
        try:
            with step(f"calling load_flexible(model, {label})"):
                load_flexible(model, state)
        except Fail:
            _diagnose_keys(model, expected, label)
            raise
        expect(
            _unchanged(state, keys_before, values_before),
            f"load_flexible changed the state dict it was given ({label}): its keys are now "
            f"{', '.join(list(state)[:2])}, ...",
            "Work on a copy, state_dict = dict(state_dict): consume_prefix_in_state_dict_if_present renames in place.",
        )
        if getattr(state, "_metadata", None) != metadata_before:
            later.append(
                Fail(
                    f"load_flexible changed the _metadata of the state dict it was given ({label}): its module paths "
                    "lost their prefix, so the next load from the same dict finds no module versions.",
                    "consume_prefix_in_state_dict_if_present renames _metadata in place too: give the copy its own "
                    "copy.deepcopy(state_dict._metadata).",
                )
            )
        _diagnose_keys(model, expected, label)
        try:
            _expect_scale(model.scaled.scale.item(), f"After load_flexible(model, {label})")
        except Fail as failure:
            later.append(failure)
        loaded = model.state_dict()
        key = _differing_key(loaded, {k: v for k, v in source.items() if k != "scaled.scale"})
        if key is not None:
            strict_off = any(not strict for _, strict in model.received)
            raise Fail(
                f"After load_flexible(model, {label}) the model's {key} is not the one in the state dict.",
                "With strict=False, load_state_dict skips every key it does not know and only says so in its "
                "return value: load strictly."
                if strict_off
                else "Call model.load_state_dict(state_dict) once the prefixes are removed.",
            )
    missing = OrderedDict((k, v) for k, v in source.items() if k != "submodule.bias")
    torch.manual_seed(2)
    model = _RecordingProbe()
    accepted = True
    try:
        with step("calling load_flexible(model, a state dict without submodule.bias)"):
            load_flexible(model, missing)
    except Fail:
        accepted = False
    expect(
        not accepted,
        "load_flexible accepted a state dict without submodule.bias: it must load strictly, so that a missing "
        "key is an error and not a layer left untrained.",
        "Call model.load_state_dict(state_dict) with the default strict=True.",
    )
    if later:
        raise later[0]
    return (
        "load_flexible loads plain, module., _orig_mod. and _orig_mod.module. state dicts strictly, keeps keys "
        "such as submodule.weight intact, keeps module versions (_metadata), and leaves the given dict as it was."
    )


check_load_flexible = make_check("ch4.load_flexible")


# --- ch4.load_matching ------------------------------------------------------------------------------------


class _MatchProbe(nn.Module):
    """An encoder (Conv2d, BatchNorm2d) and a classifier whose size depends on the number of classes."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, kernel_size=3), nn.BatchNorm2d(4))
        self.classifier = nn.Linear(4, num_classes)
        self.scaled = _Versioned()


_CALL = "load_matching(model, state_dict)"


def _match_source() -> dict[str, Any]:
    """A 2-class probe's state dict with an extra tensor, a non-tensor value and one buffer missing."""
    torch.manual_seed(1)
    probe = _MatchProbe(num_classes=2)
    with torch.no_grad():
        probe.encoder[1].running_mean.normal_()
        probe.scaled.scale.fill_(_SCALE)
    state = probe.state_dict()
    del state["encoder.1.num_batches_tracked"]
    state["aux.weight"] = torch.randn(2, 2)
    state["mask_values"] = [0, 1]  # metadata stored inside a state dict, as some projects do
    return state


@exercise("ch4.load_matching", title="Load what fits: same key and same shape", names=["load_matching"], points=2)
def _check_load_matching(load_matching: Any) -> str:
    expect_function(load_matching, "load_matching", "load_matching(model, state_dict)")
    source = _match_source()
    keys_before = list(source)
    values_before = list(source.values())
    torch.manual_seed(2)
    model = _MatchProbe(num_classes=3)
    with torch.no_grad():
        model.encoder[1].num_batches_tracked.fill_(5)
    before = copy.deepcopy(model.state_dict())
    try:
        with step(f"calling {_CALL} (3-class model, 2-class state dict)"):
            skipped = load_matching(model, source)
    except Fail as failure:
        cause = str(failure.__context__)
        if "size mismatch" in cause:
            raise Fail(
                f"{_CALL} raised RuntimeError: size mismatch for classifier.weight.",
                "load_state_dict(strict=False) skips missing and unexpected keys, but a shape mismatch is still an "
                "error: keep only the entries whose key and shape both match.",
            ) from None
        if "has no attribute 'shape'" in cause or "has no attribute 'size'" in cause:
            raise Fail(
                f"{failure.message}",
                "Not every value of a state dict is a tensor (here mask_values is a list): skip those too.",
            ) from None
        raise
    expect(
        _unchanged(source, keys_before, values_before),
        f"{_CALL} changed the state dict it was given (it now has {len(source)} entries instead of "
        f"{len(keys_before)}).",
        "Build a new dict of the entries to load; never pop from or delete keys of the caller's state dict.",
    )
    loaded = model.state_dict()
    for key in ("encoder.0.weight", "encoder.0.bias", "encoder.1.weight", "encoder.1.running_mean"):
        expect(
            torch.equal(loaded[key], source[key]),
            f"After {_CALL} the model's {key} was not copied, although its key and shape match.",
            "Load the matching entries into the model itself: model.load_state_dict(matching, strict=False).",
        )
    for key in ("classifier.weight", "classifier.bias", "encoder.1.num_batches_tracked"):
        expect(
            torch.equal(loaded[key], before[key]),
            f"After {_CALL} the model's {key} changed; entries that do not match (or are absent) must stay as "
            "they were.",
            "Copy only the entries whose key and shape match; do not re-initialize the rest.",
        )
    expect(
        isinstance(skipped, list | tuple) and all(isinstance(k, str) for k in skipped),
        f"{_CALL} must return a list of the skipped keys (got {describe(skipped)}).",
        "Return sorted(key for key in state_dict if key not in matching).",
    )
    wanted = sorted(k for k in source if k.startswith(("aux", "mask", "classifier")))
    missing = [k for k in wanted if k not in skipped]
    extra = [k for k in skipped if k not in wanted]
    copied = [k for k in extra if k in source]
    expect(
        not copied,
        f"The keys {_CALL} returned include {', '.join(copied[:3])}, which were copied.",
        "Return the keys that were skipped (not copied), not the ones that were loaded.",
    )
    if missing:
        reasons = {
            "aux.weight": "a key the model does not have",
            "mask_values": "not a tensor",
            "classifier.weight": "a shape that differs",
            "classifier.bias": "a shape that differs",
        }
        raise Fail(
            f"The keys {_CALL} returned miss {', '.join(missing)} ({reasons[missing[0]]}).",
            "Skipped means every entry of the state dict that was not copied: unknown keys, shape mismatches, "
            "values that are not tensors.",
        )
    expect(
        not extra,
        f"The keys {_CALL} returned include {', '.join(extra)}, which the state dict does not have.",
        "Return only the state dict's keys that were not copied, not the model's keys that it lacks.",
    )
    expect(
        list(skipped) == sorted(skipped),
        f"{_CALL} returned the right keys but not sorted: {', '.join(skipped)}.",
        "Return sorted(skipped).",
    )
    _expect_scale(loaded["scaled.scale"].item(), f"After {_CALL}")
    return (
        "load_matching copies the entries whose key and shape match (keeping module versions), leaves the rest "
        "untouched, and returns the sorted skipped keys (unknown, reshaped, not a tensor)."
    )


check_load_matching = make_check("ch4.load_matching")


# --- ch4.resume -------------------------------------------------------------------------------------------

_RESUME_EPOCHS = 3
_RESUME_SAVE_CALL = "save_run(path, model, optimizer, scheduler, generator, epoch=0)"
_RESUME_LOAD_CALL = "load_run(path, new_model, new_optimizer, new_scheduler, new_generator)"


def _resume_data() -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(24, 6, generator=generator)
    return torch.utils.data.TensorDataset(x, torch.randint(0, 3, (24,), generator=generator))


def _resume_setup(seed: int, dataset: Any) -> tuple[nn.Module, Any, Any, torch.Generator, Any]:
    """A model with dropout, SGD with momentum, a StepLR schedule and a DataLoader shuffled by a seeded generator."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2], gamma=0.1)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, generator=generator)
    return model, optimizer, scheduler, generator, loader


def _resume_epoch(model: nn.Module, optimizer: Any, scheduler: Any, loader: Any) -> list[float]:
    model.train()
    losses = []
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    scheduler.step()
    return losses


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@exercise(
    "ch4.resume",
    title="Resume training exactly: scheduler, data order and dropout",
    names=["save_run", "load_run"],
    points=2,
)
def _check_resume(save_run: Any, load_run: Any) -> str:
    expect_function(save_run, "save_run", "save_run(path, model, optimizer, scheduler, generator, epoch)")
    expect_function(load_run, "load_run", "load_run(path, model, optimizer, scheduler, generator)")
    dataset = _resume_data()
    model, optimizer, scheduler, _, loader = _resume_setup(0, dataset)
    torch.manual_seed(100)
    uninterrupted = [_resume_epoch(model, optimizer, scheduler, loader) for _ in range(_RESUME_EPOCHS)]

    model, optimizer, scheduler, generator, loader = _resume_setup(0, dataset)
    torch.manual_seed(100)
    _resume_epoch(model, optimizer, scheduler, loader)
    saved = {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "lr": scheduler.get_last_lr(),
        "scheduler_epoch": scheduler.last_epoch,
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
    }
    with tempfile.TemporaryDirectory(prefix="course_ch4_") as scratch:
        path = Path(scratch) / "run.pt"
        with step(f"calling {_RESUME_SAVE_CALL}"):
            save_run(path, model, optimizer, scheduler, generator, 0)
        expect(path.is_file(), f"{_RESUME_SAVE_CALL} did not create the file at path.", "Save with torch.save.")
        _load_raw(path, "The file save_run wrote")
        # A new process: other weights, another learning rate, other seeds; random numbers drawn meanwhile.
        torch.manual_seed(12345)
        model, optimizer, scheduler, generator, loader = _resume_setup(1, dataset)
        for group in optimizer.param_groups:
            group["lr"] = 0.01
        torch.rand(7)
        with step(f"calling {_RESUME_LOAD_CALL}"):
            epoch = load_run(path, model, optimizer, scheduler, generator)
        problems = []
        if not _same_tensors(model.state_dict(), saved["model"]):
            problems.append(("the model's weights", "Save model.state_dict() and load it with load_state_dict."))
        if optimizer.state_dict()["state"].keys() != saved["optimizer"]["state"].keys() or not all(
            torch.equal(optimizer.state[p]["momentum_buffer"], saved["optimizer"]["state"][i]["momentum_buffer"])
            for i, p in enumerate(model.parameters())
            if "momentum_buffer" in optimizer.state[p]
        ):
            problems.append(("SGD's momentum buffers", "Save optimizer.state_dict() and restore it."))
        if scheduler.last_epoch != saved["scheduler_epoch"] or [g["lr"] for g in optimizer.param_groups] != saved["lr"]:
            problems.append(
                (
                    f"the learning-rate schedule (the scheduler is at step {scheduler.last_epoch} instead of "
                    f"{saved['scheduler_epoch']}; {_lrs(optimizer)} instead of "
                    f"{_lrs_of(saved['lr'])})"
                    if [g["lr"] for g in optimizer.param_groups] != saved["lr"]
                    else f"the learning-rate schedule (the scheduler is at step {scheduler.last_epoch} instead of "
                    f"{saved['scheduler_epoch']})",
                    "Save scheduler.state_dict() and restore it with scheduler.load_state_dict (after the optimizer).",
                )
            )
        if not torch.equal(generator.get_state(), saved["generator"]):
            problems.append(
                (
                    "the DataLoader's order (its generator's state)",
                    "Save generator.get_state() and restore it with generator.set_state(...).",
                )
            )
        if not torch.equal(torch.get_rng_state(), saved["torch"]):
            problems.append(
                (
                    "the dropout masks (PyTorch's global random state)",
                    "Save torch.get_rng_state() and restore it with torch.set_rng_state(...), last in load_run.",
                )
            )
    expect(
        isinstance(epoch, numbers.Integral) and not isinstance(epoch, bool) and epoch == 0,
        f"load_run must return the saved epoch, 0 (got {describe(epoch)}).",
        "Store the epoch in the file and return it.",
    )
    with step("training the restored run for the remaining epochs"):
        resumed = [_resume_epoch(model, optimizer, scheduler, loader) for _ in range(1, _RESUME_EPOCHS)]
    if resumed != uninterrupted[1:]:
        what, hint = problems[0] if problems else ("something", "Restore everything that training changes.")
        index = next(i for i, (a, b) in enumerate(zip(resumed, uninterrupted[1:], strict=True)) if a != b)
        shown = ", ".join(f"{v:.4f}" for v in resumed[index])
        wanted = ", ".join(f"{v:.4f}" for v in uninterrupted[1 + index])
        raise Fail(
            f"Epoch {1 + index} of the resumed run gave the losses {shown}; the uninterrupted run gave {wanted}: "
            f"load_run did not restore {what}.",
            hint,
        )
    return (
        "The resumed run matches the uninterrupted one exactly: weights, momentum, learning-rate schedule, data "
        "order and dropout masks are all restored, and the file loads with weights_only=True."
    )


def _lrs(optimizer: Any) -> str:
    return _lrs_of([group["lr"] for group in optimizer.param_groups])


def _lrs_of(values: list[float]) -> str:
    return ", ".join(f"lr={v:g}" for v in values)


check_resume = make_check("ch4.resume")


# --- ch4.rename -------------------------------------------------------------------------------------------

RENAMES = {"features.": "backbone.", "fc.": "head."}
"""The renaming the checker asks for: the code now calls the old ``features`` block ``backbone``, ``fc`` ``head``."""
_RENAME_CALL = 'rename_keys(state_dict, {"features.": "backbone.", "fc.": "head."})'


class _Aux(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)  # aux.fc.* must stay: "fc." is a prefix only at the start of a key


class _OldNet(nn.Module):
    """Version 1 of a model's code: ``features``, ``fc`` and ``aux.fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, kernel_size=3), nn.BatchNorm2d(2), _Versioned())
        self.fc = nn.Linear(2, 3)
        self.aux = _Aux()


class _NewNet(nn.Module):
    """Version 2 of the same model: the blocks were renamed ``backbone`` and ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 2, kernel_size=3), nn.BatchNorm2d(2), _Versioned())
        self.head = nn.Linear(2, 3)
        self.aux = _Aux()


def _rename_hint(got: str) -> str:
    if got.startswith("aux.head."):
        return (
            "str.replace renames 'fc.' anywhere in a key, also inside aux.fc.weight. Rename a prefix only at the "
            "start of a key: new + key[len(old):] when key.startswith(old)."
        )
    if got.startswith(tuple(RENAMES)):
        return "Rename every key that starts with an old prefix; keep the rest of the key as it is."
    return "Replace only the prefix: new + key[len(old):], and keep every other key unchanged."


@exercise("ch4.rename", title="Load a checkpoint whose keys were renamed", names=["rename_keys"], points=2)
def _check_rename(rename_keys: Any) -> str:
    expect_function(rename_keys, "rename_keys", "rename_keys(state_dict, renames)")
    torch.manual_seed(3)
    old = _OldNet()
    with torch.no_grad():
        old.features[1].running_mean.normal_()
        old.features[2].scale.fill_(_SCALE)
    source = old.state_dict()
    keys_before, values_before = list(source), list(source.values())
    metadata_before = copy.deepcopy(source._metadata)
    with step(f"calling {_RENAME_CALL}"):
        renamed = rename_keys(source, dict(RENAMES))
    expect(
        _unchanged(source, keys_before, values_before) and source._metadata == metadata_before,
        f"{_RENAME_CALL} changed the state dict it was given.",
        "Build a new OrderedDict; never rename the caller's keys or its _metadata in place.",
    )
    expect(
        isinstance(renamed, Mapping),
        f"{_RENAME_CALL} must return the renamed state dict (got {describe(renamed)}).",
        "Return a new OrderedDict of (new_key, value) pairs.",
    )
    new = _NewNet()
    wanted = list(new.state_dict())
    wrong = [k for k in renamed if k not in wanted]
    if wrong:
        raise Fail(
            f"{_RENAME_CALL} returned the key {wrong[0]!r}, which the new model does not have.", _rename_hint(wrong[0])
        )
    absent = [k for k in wanted if k not in renamed]
    expect(
        not absent,
        f"{_RENAME_CALL} returned no {absent[0] if absent else ''!r}.",
        "Keep every entry: rename the keys with an old prefix, copy the others as they are.",
    )
    for old_key, value in source.items():
        new_key = next((n + old_key[len(o) :] for o, n in RENAMES.items() if old_key.startswith(o)), old_key)
        expect(
            renamed[new_key] is value or torch.equal(renamed[new_key], value),
            f"{_RENAME_CALL} gave {new_key!r} another value than the old {old_key!r}.",
            "Only the keys change: keep each value as it is.",
        )
    with step("loading the renamed state dict into the new model (strict=True)"):
        new.load_state_dict(renamed)
    scale = new.backbone[2].scale.item()
    if abs(scale - _SCALE) > 1e-6:
        metadata = getattr(renamed, "_metadata", None)
        raise Fail(
            f"After loading the renamed state dict, the versioned module's scale is {scale:.3f}, not {_SCALE}: "
            + (
                "the state dict lost its _metadata (each module's version)."
                if metadata is None
                else "its _metadata still names the module features.2, so backbone.2 finds no version."
            ),
            _METADATA_HINT
            if metadata is None
            else "Rename the keys of _metadata too (module paths without the trailing dot: 'features.2').",
        )
    return (
        "rename_keys renames prefixes only at the start of keys, keeps every value, renames _metadata so module "
        "versions still apply, and leaves the given state dict as it was."
    )


check_rename = make_check("ch4.rename")


# --- ch4.load_big -----------------------------------------------------------------------------------------


class _BigProbe(nn.Module):
    """Tied embedding and head, a persistent buffer, and a non-persistent one that the file does not hold."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 12, bias=False)
        self.head.weight = self.embed.weight  # tied: one Parameter under two names
        self.register_buffer("mean", torch.full((4,), 0.5))
        self.register_buffer("positions", torch.arange(6.0), persistent=False)
        self.built_with = self.body.weight.device.type  # where build() put the parameters

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens) + self.positions[: tokens.shape[-1], None] - self.mean
        return self.head(torch.relu(self.body(hidden)))


def _mapped_ranges(path: Path) -> list[tuple[int, int]] | None:
    """The address ranges where ``path`` is memory-mapped in this process (None where /proc is not available)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    real = os.path.realpath(path)
    ranges = []
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == real:
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


_LOAD_BIG_CALL = "load_big(build, path)"


@exercise(
    "ch4.load_big",
    title="Load a big model: meta device, mmap=True, assign=True, and what they break",
    names=["load_big"],
    points=2,
)
def _check_load_big(load_big: Any) -> str:
    expect_function(load_big, "load_big", "load_big(build, path)")
    torch.manual_seed(4)
    source = _BigProbe()
    with torch.no_grad():
        source.mean.fill_(0.25)
    calls = []

    def build() -> nn.Module:
        calls.append(1)
        return _BigProbe()

    # ignore_cleanup_errors: on Windows a file stays undeletable while a learner's object still maps it.
    with tempfile.TemporaryDirectory(prefix="course_ch4_", ignore_cleanup_errors=True) as scratch:
        path = Path(scratch) / "big.pt"
        torch.save(source.state_dict(), path)
        with step(f"calling {_LOAD_BIG_CALL}"):
            model = load_big(build, path)
        expect(
            isinstance(model, _BigProbe),
            f"{_LOAD_BIG_CALL} must return the model that build() made (got {describe(model)}).",
            "Return the model after loading the weights into it.",
        )
        on_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
        if "positions" in on_meta and len(on_meta) == 1:
            raise Fail(
                "After load_big, the non-persistent buffer positions is still on the meta device: the file does not "
                "hold it (persistent=False), so load_state_dict never replaced it.",
                "Move only the parameters to meta while build() runs, e.g. with "
                "torch.nn.modules.module.register_module_parameter_registration_hook; buffers then keep their values.",
            )
        expect(
            not on_meta,
            f"After load_big, {', '.join(on_meta[:3])} are still on the meta "
            "device: load_state_dict copied into meta tensors, which holds nothing."
            if len(on_meta) != 1
            else f"After load_big, {on_meta[0]} is still on the meta device: load_state_dict copied into a meta "
            "tensor, which holds nothing.",
            "Load with model.load_state_dict(state, assign=True): the loaded tensors then replace the meta ones.",
        )
        expect(
            model.built_with == "meta",
            "build() made real parameters on the CPU: each was allocated and initialized only to be replaced.",
            "Build the parameters on the meta device (torch.device('meta'), or a parameter registration hook).",
        )
        for name, value in source.state_dict().items():
            expect(
                torch.equal(model.state_dict()[name], value),
                f"After load_big, {name} is not the file's value.",
                "Load every entry of the file into the model.",
            )
        expect(
            torch.equal(model.positions, torch.arange(6.0)),
            "After load_big, the non-persistent buffer positions holds other values than build() gave it (to_empty "
            "leaves memory uninitialized).",
            "Keep the buffers that build() made: move only the parameters to the meta device.",
        )
        expect(
            model.head.weight is model.embed.weight,
            "After load_big, head.weight and embed.weight are two Parameters: assign=True gave each key its own, so "
            "the tie is broken (an optimizer would update them apart).",
            "Tie them again after loading: record which names share a Parameter before, then set the same one.",
        )
        ranges = _mapped_ranges(path)
        if ranges is not None:
            pointer = model.body.weight.data_ptr()
            expect(
                any(start <= pointer < end for start, end in ranges),
                "After load_big, the parameters were copied into memory instead of using the file's mapping.",
                "Load with torch.load(path, mmap=True, map_location='cpu', weights_only=True) and "
                "load_state_dict(..., assign=True).",
            )
        with step("running the loaded model"):
            model.eval()
            with torch.no_grad():
                output = model(torch.tensor([[1, 2, 3]]))
                expected = source.eval()(torch.tensor([[1, 2, 3]]))
        expect(torch.equal(output, expected), "The loaded model does not compute what the saved one did.")
        del model, output
    return (
        "load_big builds the parameters on the meta device, maps the file's tensors in with assign=True, keeps the "
        "non-persistent buffers and ties head.weight to embed.weight again."
    )


check_load_big = make_check("ch4.load_big")
