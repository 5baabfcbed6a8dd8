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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch codebase uses
from torch import nn

from course_utils.checking import Fail, describe, exercise, expect, first_line, make_check, step
from course_utils.compare import expect_function
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


class _Unpicklable:
    """Makes torch.save fail halfway, as a full disk would."""

    def __reduce_ex__(self, protocol: int) -> tuple:
        raise OSError("No space left on device (simulated by the checker)")


class _PoisonedModel(nn.Module):
    """The model whose state dict cannot be written: saving it fails after the file was opened."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = self.inner.state_dict(*args, **kwargs)
        state["zz_unwritable"] = _Unpicklable()
        return state


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
            f"{_SAVE_CALL} did not create the file at path (the folder holds: {', '.join(files) or 'nothing'}).",
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
                f"After load_checkpoint the model's {key} differs from the saved one"
                + (" (a BatchNorm buffer: buffers were not restored)." if buffer else "."),
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
        failed = False
        try:
            with step("calling save_checkpoint on a model whose state cannot be written"):
                save_checkpoint(str(path), _PoisonedModel(fresh), fresh_optimizer, _EPOCH + 1)
        except Fail:
            failed = True
        if failed:
            damaged = None
            try:
                torch.load(path, weights_only=True, map_location="cpu")
            except Exception as error:
                damaged = error
            expect(
                damaged is None,
                "A save that failed halfway (we made writing fail, as a full disk or a kill would) left the "
                f"previous checkpoint unreadable ({type(damaged).__name__}: {first_line(damaged or Exception())}).",
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
