"""Chapter 4: the references pass their checks, real mistakes fail with the intended message, and the reference
checkpoint helpers are safe for real (kills mid-save, damaged files, pickled code)."""

import copy
import errno
import io
import json
import os
import pathlib
import pickle
import random
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from course_utils import checking
from course_utils.solutions import ch04_save_and_load as ref


def _expect_fail(result: checking.CheckResult, *fragments: str) -> None:
    assert result.status == "fail", str(result)
    for fragment in fragments:
        assert fragment in result.message + " " + (result.hint or ""), str(result)


def _check_checkpoint(save, load) -> checking.CheckResult:
    return checking.run("ch4.checkpoint", {"save_checkpoint": save, "load_checkpoint": load})


def _plain_load(path, model, optimizer):
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["epoch"]


def _naive_save(path, model, optimizer, epoch):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, path)


@pytest.mark.parametrize(
    ("exercise_id", "names"),
    [
        ("ch4.checkpoint", ["save_checkpoint", "load_checkpoint"]),
        ("ch4.load_flexible", ["load_flexible"]),
        ("ch4.load_matching", ["load_matching"]),
        ("ch4.resume", ["save_run", "load_run"]),
        ("ch4.rename", ["rename_keys"]),
        ("ch4.load_big", ["load_big"]),
    ],
)
def test_the_reference_passes(exercise_id, names):
    result = checking.run(exercise_id, {name: getattr(ref, name) for name in names})
    assert result.status == "pass", str(result)


# --- ch4.checkpoint: mistakes -------------------------------------------------------------------------------


def test_saving_the_model_object_fails_because_weights_only_refuses_it():
    def save(path, model, optimizer, epoch):
        torch.save({"model": model, "optimizer": optimizer, "epoch": epoch}, path)

    def load(path, model, optimizer):
        checkpoint = torch.load(path, weights_only=False)
        model.load_state_dict(checkpoint["model"].state_dict())
        optimizer.load_state_dict(checkpoint["optimizer"].state_dict())
        return checkpoint["epoch"]

    _expect_fail(
        _check_checkpoint(save, load),
        "does not load with weights_only=True",
        "(Adam, BatchNorm1d, defaultdict and 4 more)",
        "state_dict()",
    )


def test_a_checkpoint_without_the_optimizer_fails():
    def save(path, model, optimizer, epoch):
        torch.save({"model": model.state_dict(), "epoch": epoch}, path)

    def load(path, model, optimizer):
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        return checkpoint["epoch"]

    _expect_fail(_check_checkpoint(save, load), "optimizer has no state", "optimizer.load_state_dict")


def test_returning_the_next_epoch_fails():
    def load(path, model, optimizer):
        return _plain_load(path, model, optimizer) + 1

    _expect_fail(_check_checkpoint(ref.save_checkpoint, load), "returned 8", "epoch=7")


def test_returning_nothing_from_load_checkpoint_fails():
    def load(path, model, optimizer):
        _plain_load(path, model, optimizer)

    _expect_fail(_check_checkpoint(ref.save_checkpoint, load), "must return the saved epoch as an int (got None)")


def test_saving_only_the_parameters_fails_on_the_batchnorm_buffers():
    def save(path, model, optimizer, epoch):
        params = {name: p.detach() for name, p in model.named_parameters()}
        torch.save({"model": params, "optimizer": optimizer.state_dict(), "epoch": epoch}, path)

    def load(path, model, optimizer):
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint["model"], strict=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
        return checkpoint["epoch"]

    _expect_fail(_check_checkpoint(save, load), "running_mean", "buffers were not restored")


def test_not_loading_the_model_fails():
    def load(path, model, optimizer):
        checkpoint = torch.load(path, weights_only=True)
        optimizer.load_state_dict(checkpoint["optimizer"])
        return checkpoint["epoch"]

    _expect_fail(_check_checkpoint(ref.save_checkpoint, load), "still has its fresh weights")


def test_writing_the_checkpoint_in_place_fails_because_a_kill_would_tear_the_last_good_file():
    _expect_fail(_check_checkpoint(_naive_save, _plain_load), "rewrote the existing checkpoint in place", "os.replace")


def test_serializing_to_memory_then_overwriting_the_file_fails():
    # It survives a pickling error (nothing is written until the bytes exist), but not a kill or a full disk
    # during write_bytes: the target is overwritten in place.
    def save(path, model, optimizer, epoch):
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, buffer)
        pathlib.Path(path).write_bytes(buffer.getvalue())

    _expect_fail(_check_checkpoint(save, _plain_load), "same inode", "os.replace(temporary, path)")


def test_deleting_the_old_file_before_writing_fails_because_a_failed_save_destroys_it():
    def save(path, model, optimizer, epoch):
        pathlib.Path(path).unlink(missing_ok=True)  # a new file each time, but nothing to fall back on
        _naive_save(path, model, optimizer, epoch)

    _expect_fail(_check_checkpoint(save, _plain_load), "left the previous checkpoint unreadable", "os.replace")


def test_loading_with_weights_only_false_fails_because_hidden_code_runs():
    def load(path, model, optimizer):
        checkpoint = torch.load(path, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        return checkpoint["epoch"]

    _expect_fail(_check_checkpoint(ref.save_checkpoint, load), "ran code hidden", "weights_only=True")


def test_a_save_that_only_accepts_str_paths_fails_with_a_clear_message():
    def save(path, model, optimizer, epoch):
        temporary = path + ".tmp"
        _naive_save(temporary, model, optimizer, epoch)
        os.replace(temporary, path)

    _expect_fail(_check_checkpoint(save, _plain_load), "with a pathlib.Path raised TypeError", "pathlib.Path(path)")


def test_a_save_that_writes_nothing_fails():
    _expect_fail(_check_checkpoint(lambda *args: None, _plain_load), "did not create the file at path")


def test_the_checkpoint_checker_removes_every_file_it_wrote(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert _check_checkpoint(ref.save_checkpoint, ref.load_checkpoint).passed
    assert list(tmp_path.iterdir()) == []


# --- ch4.load_flexible: mistakes ----------------------------------------------------------------------------


def _check_flexible(func) -> checking.CheckResult:
    return checking.run("ch4.load_flexible", {"load_flexible": func})


def test_cutting_seven_characters_from_every_key_fails():
    def load_flexible(model, state_dict):
        model.load_state_dict({k[7:]: v for k, v in state_dict.items()})

    _expect_fail(_check_flexible(load_flexible), "plain state dict", "'.0.weight'", "k[7:]")


def test_replacing_module_anywhere_in_a_key_fails():
    def load_flexible(model, state_dict):
        model.load_state_dict({k.replace("_orig_mod.", "").replace("module.", ""): v for k, v in state_dict.items()})

    _expect_fail(_check_flexible(load_flexible), "'subweight'", "str.replace")


def test_lstrip_instead_of_removing_a_prefix_fails():
    def load_flexible(model, state_dict):
        model.load_state_dict({k.lstrip("module."): v for k, v in state_dict.items()})

    _expect_fail(_check_flexible(load_flexible), "'ncoder.0.weight'", "str.lstrip")


def test_handling_only_the_module_prefix_fails_on_torch_compile():
    def load_flexible(model, state_dict):
        model.load_state_dict({k.removeprefix("module."): v for k, v in state_dict.items()})

    _expect_fail(_check_flexible(load_flexible), "torch.compile", "'_orig_mod.encoder.0.weight'", "_orig_mod.")


def test_stripping_each_prefix_once_in_the_wrong_order_fails_on_stacked_prefixes():
    def load_flexible(model, state_dict):
        state_dict = dict(state_dict)
        for prefix in ("module.", "_orig_mod."):
            consume_prefix_in_state_dict_if_present(state_dict, prefix)
        model.load_state_dict(state_dict)

    _expect_fail(_check_flexible(load_flexible), "_orig_mod.module.", "'module.encoder.0.weight'")


def test_stripping_the_caller_dict_in_place_fails():
    def load_flexible(model, state_dict):
        for prefix in ("_orig_mod.", "module."):
            consume_prefix_in_state_dict_if_present(state_dict, prefix)
        model.load_state_dict(state_dict)

    _expect_fail(_check_flexible(load_flexible), "changed the state dict it was given", "Work on a copy")


def test_loading_with_strict_false_fails():
    def load_flexible(model, state_dict):
        state_dict = dict(state_dict)
        for _ in range(2):
            for prefix in ("_orig_mod.", "module."):
                consume_prefix_in_state_dict_if_present(state_dict, prefix)
        model.load_state_dict(state_dict, strict=False)

    _expect_fail(_check_flexible(load_flexible), "accepted a state dict without submodule.bias", "strict=True")


def test_a_load_flexible_that_sorts_the_keys_passes():
    def load_flexible(model, state_dict):
        metadata = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state_dict._metadata.items()}
        state_dict = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state_dict.items()}
        state_dict = OrderedDict(sorted(state_dict.items()))
        state_dict._metadata = metadata
        model.load_state_dict(state_dict)

    assert _check_flexible(load_flexible).passed


def test_a_load_flexible_that_drops_the_metadata_fails_on_the_module_version():
    def load_flexible(model, state_dict):
        model.load_state_dict({k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state_dict.items()})

    _expect_fail(_check_flexible(load_flexible), "scale is 7.389, not 2.0", "_metadata")


def test_a_load_flexible_that_renames_the_callers_metadata_fails():
    def load_flexible(model, state_dict):
        state_dict = copy.copy(state_dict)  # a new OrderedDict, but the same _metadata object
        for prefix in ("_orig_mod.", "module."):
            consume_prefix_in_state_dict_if_present(state_dict, prefix)
        model.load_state_dict(state_dict)

    _expect_fail(_check_flexible(load_flexible), "changed the _metadata of the state dict it was given", "deepcopy")


def test_dropping_entries_fails():
    def load_flexible(model, state_dict):
        model.load_state_dict({k: v for k, v in state_dict.items() if "running" not in k}, strict=False)

    _expect_fail(_check_flexible(load_flexible), "passed no 'encoder.1.running_mean'", "Keep every entry")


def test_load_flexible_keeps_the_metadata_of_the_callers_state_dict():
    wrapped = nn.DataParallel(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    state = wrapped.state_dict()
    metadata = dict(state._metadata)
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ref.load_flexible(model, state)
    assert list(state) == list(wrapped.state_dict()) and state._metadata == metadata
    assert torch.equal(model[0].weight, wrapped.module[0].weight)


def test_load_flexible_keeps_a_model_whose_own_keys_start_with_module():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    source, target = Holder(), Holder()
    ref.load_flexible(target, source.state_dict())
    assert torch.equal(target.module.weight, source.module.weight)


# --- ch4.load_matching: mistakes ----------------------------------------------------------------------------


def _check_matching(func) -> checking.CheckResult:
    return checking.run("ch4.load_matching", {"load_matching": func})


def test_strict_false_alone_fails_on_the_shape_mismatch():
    def load_matching(model, state_dict):
        result = model.load_state_dict({k: v for k, v in state_dict.items() if k != "mask_values"}, strict=False)
        return sorted(result.unexpected_keys)

    _expect_fail(_check_matching(load_matching), "size mismatch", "key and shape both match")


def test_filtering_by_key_only_fails_on_the_shape_mismatch():
    def load_matching(model, state_dict):
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
        return sorted(k for k in state_dict if k not in own)

    _expect_fail(_check_matching(load_matching), "size mismatch")


def test_reading_the_shape_of_every_value_fails_on_a_non_tensor_entry():
    def load_matching(model, state_dict):
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in state_dict.items()}
        matching = {k: state_dict[k] for k in theirs if own.get(k) == theirs[k]}
        model.load_state_dict(matching, strict=False)
        return sorted(k for k in state_dict if k not in matching)

    _expect_fail(_check_matching(load_matching), "AttributeError", "Not every value of a state dict is a tensor")


def test_returning_unsorted_skipped_keys_fails():
    def load_matching(model, state_dict):
        return list(reversed(ref.load_matching(model, state_dict)))

    _expect_fail(_check_matching(load_matching), "not sorted", "sorted(skipped)")


def test_reporting_only_the_shape_mismatches_fails():
    def load_matching(model, state_dict):
        own = model.state_dict()
        ref.load_matching(model, state_dict)
        return sorted(k for k, v in state_dict.items() if k in own and v.shape != own[k].shape)

    _expect_fail(_check_matching(load_matching), "miss aux.weight, mask_values", "a key the model does not have")


def test_returning_the_loaded_keys_fails():
    def load_matching(model, state_dict):
        skipped = ref.load_matching(model, state_dict)
        return sorted(k for k in state_dict if k not in skipped)

    _expect_fail(_check_matching(load_matching), "which were copied")


def test_listing_the_models_missing_keys_fails():
    def load_matching(model, state_dict):
        missing = [k for k in model.state_dict() if k not in state_dict]
        return sorted(ref.load_matching(model, state_dict) + missing)

    _expect_fail(_check_matching(load_matching), "encoder.1.num_batches_tracked", "does not have")


def test_popping_skipped_entries_from_the_callers_dict_fails():
    def load_matching(model, state_dict):
        skipped = ref.load_matching(model, state_dict)
        for key in skipped:
            state_dict.pop(key)
        return skipped

    _expect_fail(_check_matching(load_matching), "changed the state dict it was given")


def test_not_loading_anything_fails():
    def load_matching(model, state_dict):
        return ref.load_matching(nn.Module(), state_dict)

    _expect_fail(_check_matching(load_matching), "encoder.0.weight was not copied")


def test_load_matching_leaves_a_buffer_that_the_state_dict_lacks_untouched():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    model[1].num_batches_tracked.fill_(5)
    state = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).state_dict()
    del state["1.num_batches_tracked"]
    assert ref.load_matching(model, state) == []
    assert model[1].num_batches_tracked.item() == 5
    assert torch.equal(model[0].weight, state["0.weight"])


# --- the reference helpers are safe for real ----------------------------------------------------------------


def _small_setup():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_save_checkpoint_writes_a_weights_only_file_and_leaves_no_temporary_file(tmp_path):
    model, optimizer = _small_setup()
    ref.save_checkpoint(str(tmp_path / "ckpt.tar"), model, optimizer, 3)
    ref.save_checkpoint(tmp_path / "ckpt.tar", model, optimizer, 4)  # replaces the first one
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.tar"]
    checkpoint = torch.load(tmp_path / "ckpt.tar", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer", "optimizer_class", "epoch"} and checkpoint["epoch"] == 4
    assert ref.load_checkpoint(tmp_path / "ckpt.tar", *_small_setup()) == 4


def test_a_failed_save_keeps_the_previous_file_and_removes_its_temporary_file(tmp_path):
    model, optimizer = _small_setup()
    path = tmp_path / "ckpt.pt"
    ref.save_checkpoint(path, model, optimizer, 1)

    class Unwritable(nn.Module):
        def state_dict(self, *args, **kwargs):
            return {"x": lambda: None}  # a lambda cannot be pickled

    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises
        ref.save_checkpoint(path, Unwritable(), optimizer, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert ref.load_checkpoint(path, *_small_setup()) == 1


@pytest.fixture
def checkpoint_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    ref.save_checkpoint(path, *_small_setup(), 5)
    return path


def _load_error(path) -> str:
    with pytest.raises(ref.CheckpointError) as info:
        ref.load_checkpoint(path, *_small_setup())
    message = str(info.value)
    assert str(path) in message, message  # every error names the file
    return message


def _member_data_offset(path, info: zipfile.ZipInfo) -> int:
    """Where a zip member's bytes start: after its local header, whose extra field (padding) the index omits."""
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = int.from_bytes(file.read(2), "little"), int.from_bytes(file.read(2), "little")
    return info.header_offset + 30 + name_length + extra_length


def test_a_missing_file_gives_a_clear_error(tmp_path):
    assert "no such file" in _load_error(tmp_path / "nothing.pt")


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.99])
def test_a_truncated_file_gives_a_clear_error(checkpoint_file, fraction):
    data = checkpoint_file.read_bytes()
    checkpoint_file.write_bytes(data[: int(len(data) * fraction)])
    assert "not a file written by torch.save (empty, truncated or corrupted)" in _load_error(checkpoint_file)


def test_a_file_that_is_not_a_zip_archive_gives_a_clear_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    assert "not a file written by torch.save" in _load_error(path)


def test_a_file_with_a_corrupted_start_gives_a_clear_error(checkpoint_file):
    data = bytearray(checkpoint_file.read_bytes())
    data[:64] = bytes(b ^ 0xFF for b in data[:64])
    checkpoint_file.write_bytes(bytes(data))
    assert "damaged or incomplete (torch.load raised UnpicklingError)" in _load_error(checkpoint_file)


def test_a_file_with_a_corrupted_pickle_gives_a_clear_error(checkpoint_file):
    data = bytearray(checkpoint_file.read_bytes())
    with zipfile.ZipFile(checkpoint_file) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    start = _member_data_offset(checkpoint_file, info)
    data[start + 2 : start + 40] = bytes(b ^ 0x5A for b in data[start + 2 : start + 40])
    checkpoint_file.write_bytes(bytes(data))
    assert "damaged or incomplete" in _load_error(checkpoint_file)


def test_torch_load_does_not_notice_a_flipped_byte_in_tensor_data(checkpoint_file):
    # Why the course keeps SHA-256 checksums of its checkpoints: torch.load checks no checksum of tensor bytes.
    data = bytearray(checkpoint_file.read_bytes())
    with zipfile.ZipFile(checkpoint_file) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    start = _member_data_offset(checkpoint_file, info)
    data[start] ^= 0xFF
    checkpoint_file.write_bytes(bytes(data))
    assert isinstance(torch.load(checkpoint_file, weights_only=True), dict)


def test_a_state_dict_is_not_mistaken_for_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    assert "not a checkpoint: expected the keys model, optimizer and epoch (found keys weight, bias" in (
        _load_error(path)
    )


def test_a_checkpoint_of_another_model_gives_a_clear_error(tmp_path):
    path = tmp_path / "other.pt"
    other = nn.Linear(3, 3)
    ref.save_checkpoint(path, other, torch.optim.Adam(other.parameters()), 0)
    assert "does not fit this model and optimizer, nothing was changed" in _load_error(path)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({self.marker!r}).touch()",))


def test_a_pickle_payload_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "payload-ran"
    model, optimizer = _small_setup()
    path = tmp_path / "evil.pt"
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}
    torch.save({**checkpoint, "note": _Payload(marker)}, path)
    message = _load_error(path)
    assert "refused by weights_only=True for safety: loading it would import or call builtins.exec" in message
    assert not marker.exists()
    # The payload is real: loading with weights_only=False runs it (in a file we made, in a temporary folder).
    torch.load(path, weights_only=False)
    assert marker.exists()


_KILL_HARNESS = textwrap.dedent(
    """
    import json, os, random, signal, sys, time
    import torch
    from course_utils.solutions import ch02_model_blocks as ch02
    from course_utils.solutions import ch04_save_and_load as ref

    torch.set_num_threads(1)
    folder, atomic_rounds, naive_rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(0)
    model = ch02.small_unet()
    optimizer = torch.optim.Adam(model.parameters())

    def naive_save(path, model, optimizer, epoch):
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, path)

    start = time.perf_counter()
    ref.save_checkpoint(os.path.join(folder, "timing.pt"), model, optimizer, 0)
    save_seconds = time.perf_counter() - start
    results = []
    for round_ in range(atomic_rounds + naive_rounds):
        atomic = round_ < atomic_rounds
        path = os.path.join(folder, f"round{round_}.pt")
        before = set(os.listdir(folder))
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child saves in a loop until it is killed
            os.close(read_end)
            epoch = 0
            while True:
                (ref.save_checkpoint if atomic else naive_save)(path, model, optimizer, epoch)
                if epoch == 0:
                    os.write(write_end, b"x")  # one complete file exists
                epoch += 1
        os.close(write_end)
        os.read(read_end, 1)
        os.close(read_end)
        time.sleep(rng.uniform(0, 3 * save_seconds))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        leftovers = [n for n in os.listdir(folder) if n.startswith(".ckpt-") and n not in before]
        try:
            epoch = ref.load_checkpoint(path, ch02.small_unet(), torch.optim.Adam(ch02.small_unet().parameters()))
            error = None
        except ref.CheckpointError as exc:
            epoch, error = None, str(exc)
        results.append({"atomic": atomic, "mid_save": bool(leftovers), "epoch": epoch, "error": error})
    print(json.dumps({"save_seconds": save_seconds, "results": results}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the harness forks savers (POSIX only)")
def test_a_kill_during_save_checkpoint_never_leaves_a_file_that_fails_to_load(tmp_path):
    # One subprocess imports torch once, then forks savers and SIGKILLs each one at a random moment.
    # The naive torch.save(checkpoint, path) rounds show that the harness does catch torn files.
    completed = subprocess.run(
        [sys.executable, "-c", _KILL_HARNESS, str(tmp_path), "24", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    atomic = [r for r in report["results"] if r["atomic"]]
    naive = [r for r in report["results"] if not r["atomic"]]
    assert all(r["error"] is None and r["epoch"] >= 0 for r in atomic), atomic
    assert sum(r["mid_save"] for r in atomic) >= 3, f"too few kills landed mid-save: {atomic}"
    assert any(r["error"] for r in naive), f"no naive save was torn: the harness kills at the wrong moments {naive}"


def test_state_dict_copies_share_tensors_until_deep_copied():
    # The "best snapshot" bug of the notebook: a state dict holds references to the live tensors.
    model = nn.Linear(2, 2)
    best = model.state_dict()
    best_copy = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.weight.add_(1.0)
    assert torch.equal(best["weight"], model.weight)
    assert not torch.equal(best_copy["weight"], model.weight)


# --- the reference helpers against every row of the review's reliability table ---------------------------


def _state_of(model, optimizer):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def _same_state(model, optimizer, saved) -> bool:
    model_state, optimizer_state = saved
    now_model, now_optimizer = model.state_dict(), optimizer.state_dict()
    same_model = list(now_model) == list(model_state) and all(
        torch.equal(now_model[k], model_state[k]) for k in now_model
    )
    same_groups = now_optimizer["param_groups"] == optimizer_state["param_groups"]
    same_state = (
        all(
            all(torch.equal(torch.as_tensor(v), torch.as_tensor(optimizer_state["state"][i][n])) for n, v in s.items())
            for i, s in now_optimizer["state"].items()
        )
        and now_optimizer["state"].keys() == optimizer_state["state"].keys()
    )
    return same_model and same_groups and same_state


def test_loading_a_folder_says_it_is_a_folder(tmp_path):
    assert "is a folder, not a checkpoint file" in _load_error(tmp_path)


def test_saving_onto_a_folder_says_so_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(ref.CheckpointError, match="it is a folder"):
        ref.save_checkpoint(tmp_path / "adir", *_small_setup(), 1)
    assert [p.name for p in tmp_path.iterdir()] == ["adir"]


def test_a_missing_parent_folder_is_named_without_a_temporary_file(tmp_path):
    with pytest.raises(ref.CheckpointError) as info:
        ref.save_checkpoint(tmp_path / "no" / "x.tar", *_small_setup(), 1)
    assert str(info.value) == f"cannot save {tmp_path / 'no' / 'x.tar'}: the folder {tmp_path / 'no'} does not exist"


def test_the_zip_crc_catches_a_flipped_bit_that_torch_load_misses(checkpoint_file):
    data = bytearray(checkpoint_file.read_bytes())
    with zipfile.ZipFile(checkpoint_file) as archive:
        assert archive.testzip() is None
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    start = _member_data_offset(checkpoint_file, info)
    data[start] ^= 0x01
    checkpoint_file.write_bytes(bytes(data))
    assert ref.load_checkpoint(checkpoint_file, *_small_setup()) == 5  # loads, with one wrong number
    with zipfile.ZipFile(checkpoint_file) as archive:
        assert archive.testzip().endswith("data/0")


def test_a_checkpoint_whose_head_differs_leaves_the_model_and_the_optimizer_untouched(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    ref.save_checkpoint(path, source, torch.optim.Adam(source.parameters()), 1)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 7))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    before = _state_of(model, optimizer)
    message = _load_error_for(path, model, optimizer)
    assert "does not fit this model and optimizer, nothing was changed: " in message and "size mismatch" in message
    assert _same_state(model, optimizer, before)


def _load_error_for(path, model, optimizer, **kwargs) -> str:
    with pytest.raises(ref.CheckpointError) as info:
        ref.load_checkpoint(path, model, optimizer, **kwargs)
    return str(info.value)


def test_optimizer_groups_that_differ_leave_the_model_untouched(tmp_path):
    path = tmp_path / "ckpt.pt"
    model, optimizer = _small_setup()
    ref.save_checkpoint(path, model, optimizer, 1)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.add_(1.0)
    grouped = torch.optim.Adam([{"params": other[0].parameters()}, {"params": other[1].parameters()}])
    before = _state_of(other, grouped)
    assert "parameter groups of sizes [4], this one [2, 2]" in _load_error_for(path, other, grouped)
    assert _same_state(other, grouped, before)


def test_an_optimizer_of_another_type_is_refused(tmp_path):
    path = tmp_path / "adam.pt"
    model, optimizer = _small_setup()
    ref.save_checkpoint(path, model, optimizer, 1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = _state_of(model, sgd)
    assert "holds the state of Adam, but this optimizer is SGD" in _load_error_for(path, model, sgd)
    assert _same_state(model, sgd, before)


def test_an_old_checkpoint_without_the_optimizer_class_still_loads_and_is_still_checked(tmp_path):
    path = tmp_path / "old.tar"
    model, optimizer = _small_setup()
    torch.optim.lr_scheduler.StepLR(optimizer, 1)  # adds initial_lr to the groups, as a scheduler does
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 2}, path)
    assert ref.load_checkpoint(path, *_small_setup()) == 2
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert "holds the state of another optimizer (its groups hold amsgrad, betas" in _load_error_for(path, model, sgd)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model": torch.zeros(3)}, "malformed: model must be a state dict (got a Tensor)"),
        ({"epoch": "three"}, "malformed: epoch must be an int (got 'three')"),
        ({"epoch": 1.9}, "malformed: epoch must be an int (got 1.9)"),
        ({"epoch": True}, "malformed: epoch must be an int (got True)"),
        ({"optimizer": [1, 2]}, "malformed: optimizer must be an optimizer state dict (got a list)"),
        ({"scheduler": 3}, "malformed: scheduler must be a dict (got 3)"),
    ],
)
def test_malformed_contents_are_a_checkpoint_error(tmp_path, change, expected):
    path = tmp_path / "bad.pt"
    model, optimizer = _small_setup()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1, **change}, path)
    before = _state_of(model, optimizer)
    assert expected in _load_error_for(path, model, optimizer)
    assert _same_state(model, optimizer, before)


def test_a_legacy_format_file_loads(tmp_path):
    path = tmp_path / "legacy.pt"
    model, optimizer = _small_setup()
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 6}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    assert ref.load_checkpoint(path, *_small_setup()) == 6


def test_a_legacy_format_file_with_a_payload_is_refused_for_safety(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "legacy_evil.pt"
    torch.save({"note": _Payload(marker)}, path, _use_new_zipfile_serialization=False)
    message = _load_error(path)
    assert "a legacy-format (pre-1.6, not zip) file refused by weights_only=True for safety" in message
    assert "builtins.exec" in message or "call exec" in message
    assert not marker.exists()


def test_a_pickle_dump_file_is_not_taken_for_a_torch_save_file(tmp_path):
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as file:
        pickle.dump({"weight": [1.0, 2.0]}, file)
    assert "not a file written by torch.save (perhaps by pickle.dump, or damaged)" in _load_error(path)


def test_numpys_legacy_random_state_is_refused_but_rng_true_loads(tmp_path):
    model, optimizer = _small_setup()
    path = tmp_path / "np.pt"
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}
    torch.save({**checkpoint, "numpy": np.random.get_state()}, path)
    assert "numpy._core.multiarray._reconstruct, numpy.dtype, numpy.ndarray" in _load_error(path)
    ref.save_checkpoint(path, model, optimizer, 1, rng=True)
    assert set(torch.load(path, weights_only=True)["rng"]) >= {"python", "numpy", "torch"}


def test_save_refuses_extras_that_weights_only_would_refuse_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    model, optimizer = _small_setup()
    ref.save_checkpoint(path, model, optimizer, 1)
    with pytest.raises(ref.CheckpointError, match="objects that weights_only=True refuses .numpy"):
        ref.save_checkpoint(path, model, optimizer, 2, extra={"loss": np.float64(0.5)})
    assert ref.load_checkpoint(path, *_small_setup()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize("name", ["with space.pt", "检查点.pt", "modèle.pt", "a/b/c.pt", "x" * 255])
def test_unusual_file_names_save_and_load(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    ref.save_checkpoint(path, *_small_setup(), 3)
    assert ref.load_checkpoint(path, *_small_setup()) == 3
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_folder_without_write_permission_gives_permission_denied(tmp_path, monkeypatch):
    real_open = os.open

    def refuse(name, flags, mode=0o777, **kwargs):
        if os.fspath(name).endswith(ref.TEMPORARY_SUFFIX):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(name))
        return real_open(name, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ref.CheckpointError) as info:
        ref.save_checkpoint(tmp_path / "x.pt", *_small_setup(), 1)
    assert str(info.value) == f"cannot save {tmp_path / 'x.pt'}: permission denied in {tmp_path}"


def test_a_read_only_target_is_not_replaced(tmp_path):
    path = tmp_path / "frozen.pt"
    ref.save_checkpoint(path, *_small_setup(), 1)
    path.chmod(0o444)
    with pytest.raises(ref.CheckpointError, match="the file is read-only"):
        ref.save_checkpoint(path, *_small_setup(), 2)
    assert ref.load_checkpoint(path, *_small_setup()) == 1


def test_an_unreadable_file_says_permission_denied(checkpoint_file, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ref, "open", refuse, raising=False)  # as root, chmod 000 would not stop us
    assert "cannot be read (permission denied)" in _load_error(checkpoint_file)


def test_the_targets_permission_bits_are_kept_and_new_files_follow_the_umask(tmp_path):
    private = tmp_path / "private.pt"
    ref.save_checkpoint(private, *_small_setup(), 1)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(private.stat().st_mode) == 0o666 & ~umask
    private.chmod(0o600)
    ref.save_checkpoint(private, *_small_setup(), 2)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_symlinked_target_is_written_through(tmp_path):
    real, link = tmp_path / "epoch_1.pt", tmp_path / "latest.pt"
    ref.save_checkpoint(real, *_small_setup(), 1)
    link.symlink_to(real.name)
    ref.save_checkpoint(link, *_small_setup(), 2)
    assert link.is_symlink() and link.resolve() == real
    assert ref.load_checkpoint(real, *_small_setup()) == 2


def _fail_fsync_with_enospc(monkeypatch):
    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)


def test_a_full_disk_is_one_clear_sentence_and_the_old_file_survives(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    ref.save_checkpoint(path, *_small_setup(), 1)
    _fail_fsync_with_enospc(monkeypatch)
    with pytest.raises(ref.CheckpointError) as info:
        ref.save_checkpoint(path, *_small_setup(), 2)
    assert str(info.value) == f"cannot save {path}: the disk is full; the previous file is unchanged"
    monkeypatch.undo()
    assert ref.load_checkpoint(path, *_small_setup()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if not hasattr(os, "getuid") or os.getuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_keeps_the_old_file(small_tmpfs):
    path = small_tmpfs / "ckpt.pt"
    model = nn.Linear(200, 200)  # about 160 kB of weights, 480 kB with Adam's state: two copies do not fit
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(1, 200)).sum().backward()
    optimizer.step()
    ref.save_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1), 1)
    with pytest.raises(ref.CheckpointError, match="the disk is full; the previous file is unchanged"):
        ref.save_checkpoint(path, model, optimizer, 2)
    assert ref.load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1)) == 1
    assert [p.name for p in small_tmpfs.iterdir()] == ["ckpt.pt"]


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    kinds = []
    real_fsync = os.fsync

    def record(descriptor):
        kinds.append("folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", record)
    ref.save_checkpoint(tmp_path / "ckpt.pt", *_small_setup(), 1)
    assert kinds == ["file", "folder"]


def test_stale_temporary_files_of_a_killed_save_are_removed_and_nothing_else(tmp_path):
    old = time.time() - ref.STALE_AFTER_SECONDS - 60
    stale, fresh = tmp_path / ".ckpt-0123456789ab.tmp", tmp_path / ".ckpt-ba9876543210.tmp"
    foreign, notes = tmp_path / ".other-file.tmp", tmp_path / "notes.txt"
    for path in (stale, fresh, foreign, notes):
        path.write_bytes(b"partial")
    for path in (stale, foreign, notes):
        os.utime(path, (old, old))
    ref.save_checkpoint(tmp_path / "ckpt.pt", *_small_setup(), 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, foreign.name, notes.name, "ckpt.pt"])


def test_the_four_argument_call_and_old_files_keep_working(tmp_path):
    model, optimizer = _small_setup()
    ref.save_checkpoint(tmp_path / "a.tar", model, optimizer, 4)
    assert ref.load_checkpoint(tmp_path / "a.tar", *_small_setup()) == 4
    assert ref.load_checkpoint(str(tmp_path / "a.tar"), *_small_setup()) == 4


def test_extras_resume_scheduler_scaler_generators_and_rng(tmp_path):
    path = tmp_path / "run.tar"
    model, optimizer = _small_setup()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scheduler.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    generator = torch.Generator().manual_seed(7)
    torch.randn(3, generator=generator)
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    ref.save_checkpoint(
        path,
        model,
        optimizer,
        2,
        scheduler=scheduler,
        scaler=scaler,
        rng=True,
        generators={"data": generator},
        extra={"best_loss": 0.25},
    )
    expected = (torch.rand(2), random.random(), np.random.rand(), torch.rand(2, generator=generator))
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model2, optimizer2 = _small_setup()
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    scaler2 = torch.amp.GradScaler("cpu")
    generator2 = torch.Generator().manual_seed(0)
    epoch = ref.load_checkpoint(
        path,
        model2,
        optimizer2,
        scheduler=scheduler2,
        scaler=scaler2,
        restore_rng=True,
        generators={"data": generator2},
    )
    got = (torch.rand(2), random.random(), np.random.rand(), torch.rand(2, generator=generator2))
    assert epoch == 2 and scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert scaler2.state_dict() == scaler.state_dict()
    assert torch.equal(got[0], expected[0]) and got[1:3] == expected[1:3] and torch.equal(got[3], expected[3])
    assert ref.read_checkpoint(path)["extra"] == {"best_loss": 0.25}


def test_asking_for_a_part_that_was_not_saved_changes_nothing(tmp_path):
    path = tmp_path / "plain.tar"
    model, optimizer = _small_setup()
    ref.save_checkpoint(path, model, optimizer, 1)
    other, other_optimizer = _small_setup()
    with torch.no_grad():
        other[0].weight.add_(1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(other_optimizer, 1)
    before = _state_of(other, other_optimizer)
    assert "holds no scheduler state" in _load_error_for(path, other, other_optimizer, scheduler=scheduler)
    assert "holds no rng state" in _load_error_for(path, other, other_optimizer, restore_rng=True)
    assert "holds no generators.data state" in _load_error_for(
        path, other, other_optimizer, generators={"data": torch.Generator()}
    )
    assert _same_state(other, other_optimizer, before)


def test_a_non_integer_epoch_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match="epoch must be an int"):
        ref.save_checkpoint(tmp_path / "x.pt", *_small_setup(), 1.5)


# --- module versions (_metadata) survive load_flexible and load_matching -------------------------------------


class _Versioned(nn.Module):
    """Version 1 stored log(scale); version 2 stores scale. Old files are upgraded while loading."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        version = local_metadata.get("version")
        key = prefix + "scale"
        if (version is None or version < 2) and key in state_dict:
            state_dict[key] = state_dict[key].exp()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


def _versioned_pair():
    source = nn.Sequential(nn.Linear(2, 2), _Versioned())
    with torch.no_grad():
        source[1].scale.fill_(2.0)
    return source, nn.Sequential(nn.Linear(2, 2), _Versioned())


def test_load_flexible_keeps_module_versions():
    source, target = _versioned_pair()
    state = nn.DataParallel(source).state_dict()
    ref.load_flexible(target, state)
    assert target[1].scale.item() == 2.0  # dict(state) would give exp(2) = 7.389
    ref.load_flexible(target, state)  # a second time from the same dict: its _metadata was not renamed
    assert target[1].scale.item() == 2.0


def test_load_matching_keeps_module_versions():
    source, target = _versioned_pair()
    assert ref.load_matching(target, source.state_dict()) == []
    assert target[1].scale.item() == 2.0


def test_a_version_1_file_is_still_upgraded():
    source, target = _versioned_pair()
    state = source.state_dict()
    state._metadata["1"]["version"] = 1
    with torch.no_grad():
        state["1.scale"].fill_(0.0)  # log(1)
    ref.load_matching(target, state)
    assert target[1].scale.item() == 1.0


def test_a_load_matching_that_drops_the_metadata_fails_on_the_module_version():
    def load_matching(model, state_dict):
        own = model.state_dict()
        matching = {
            k: v for k, v in state_dict.items() if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
        }
        model.load_state_dict(matching, strict=False)
        return sorted(k for k in state_dict if k not in matching)

    _expect_fail(_check_matching(load_matching), "scale is 7.389, not 2.0", "_metadata")


def test_a_load_matching_that_deletes_from_a_copy_passes():
    def load_matching(model, state_dict):
        own = model.state_dict()
        kept = copy.copy(state_dict)  # keeps _metadata; deleting keys does not touch the caller's dict
        skipped = []
        for key in list(kept):
            value = kept[key]
            if key not in own or not torch.is_tensor(value) or value.size() != own[key].size():
                del kept[key]
                skipped.append(key)
        model.load_state_dict(kept, strict=False)
        return sorted(skipped)

    assert _check_matching(load_matching).passed


# --- ch4.resume ----------------------------------------------------------------------------------------------


def _check_resume(save, load) -> checking.CheckResult:
    return checking.run("ch4.resume", {"save_run": save, "load_run": load})


def _partial_run(skip: str):
    """save_run/load_run that forget one part of the state."""

    def save(path, model, optimizer, scheduler, generator, epoch):
        run = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        if skip != "scheduler":
            run["scheduler"] = scheduler.state_dict()
        if skip != "generator":
            run["data"] = generator.get_state()
        if skip != "torch":
            run["torch"] = torch.get_rng_state()
        torch.save(run, path)

    def load(path, model, optimizer, scheduler, generator):
        run = torch.load(path, weights_only=True)
        model.load_state_dict(run["model"])
        optimizer.load_state_dict(run["optimizer"])
        if "scheduler" in run:
            scheduler.load_state_dict(run["scheduler"])
        if "data" in run:
            generator.set_state(run["data"])
        if "torch" in run:
            torch.set_rng_state(run["torch"])
        return run["epoch"]

    return save, load


def test_forgetting_the_scheduler_fails_on_the_learning_rate():
    _expect_fail(
        _check_resume(*_partial_run("scheduler")),
        "did not restore the learning-rate schedule (the scheduler is at step 0 instead of 1",
        "scheduler.state_dict",
    )


def test_forgetting_the_dataloader_generator_fails_on_the_data_order():
    _expect_fail(_check_resume(*_partial_run("generator")), "the DataLoader's order", "generator.get_state()")


def test_forgetting_the_global_rng_fails_on_the_dropout_masks():
    _expect_fail(_check_resume(*_partial_run("torch")), "the dropout masks", "torch.get_rng_state()")


def test_saving_numpys_legacy_state_fails_because_weights_only_refuses_it():
    save, load = _partial_run("nothing")

    def save_with_numpy(path, model, optimizer, scheduler, generator, epoch):
        save(path, model, optimizer, scheduler, generator, epoch)
        run = torch.load(path, weights_only=True)
        torch.save({**run, "numpy": np.random.get_state()}, path)

    _expect_fail(_check_resume(save_with_numpy, load), "does not load with weights_only=True", "state_dict()")


def test_restoring_the_rng_before_building_state_that_draws_does_not_matter_but_returning_a_string_fails():
    save, load = _partial_run("nothing")

    def load_returning_a_string(*args):
        return str(load(*args))

    _expect_fail(_check_resume(save, load_returning_a_string), "must return the saved epoch, 0")


def test_the_reference_checkpoint_helpers_with_their_extras_pass_ch4_resume():
    def save(path, model, optimizer, scheduler, generator, epoch):
        ref.save_checkpoint(
            path, model, optimizer, epoch, scheduler=scheduler, rng=True, generators={"data": generator}
        )

    def load(path, model, optimizer, scheduler, generator):
        return ref.load_checkpoint(
            path, model, optimizer, scheduler=scheduler, restore_rng=True, generators={"data": generator}
        )

    assert _check_resume(save, load).passed


def test_a_resume_with_a_tuple_file_and_fork_free_rng_calls_passes():
    def save(path, model, optimizer, scheduler, generator, epoch):
        states = (model.state_dict(), optimizer.state_dict(), scheduler.state_dict())
        torch.save((states, generator.get_state(), torch.random.get_rng_state(), epoch), path)

    def load(path, model, optimizer, scheduler, generator):
        (model_state, optimizer_state, scheduler_state), data, rng, epoch = torch.load(path)
        torch.random.set_rng_state(rng)  # first: nothing below draws random numbers
        generator.set_state(data)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        return epoch

    assert _check_resume(save, load).passed


# --- ch4.rename ----------------------------------------------------------------------------------------------


def _check_rename(func) -> checking.CheckResult:
    return checking.run("ch4.rename", {"rename_keys": func})


def test_str_replace_fails_on_a_nested_key():
    def rename_keys(state_dict, renames):
        renamed = OrderedDict()
        for key, value in state_dict.items():
            for old, new in renames.items():
                key = key.replace(old, new)
            renamed[key] = value
        renamed._metadata = copy.deepcopy(state_dict._metadata)
        return renamed

    _expect_fail(_check_rename(rename_keys), "'aux.head.weight'", "str.replace")


def test_a_dict_comprehension_fails_because_it_drops_the_metadata():
    def rename_keys(state_dict, renames):
        def rename(key):
            return next((new + key[len(old) :] for old, new in renames.items() if key.startswith(old)), key)

        return {rename(k): v for k, v in state_dict.items()}

    _expect_fail(_check_rename(rename_keys), "lost its _metadata", "_metadata")


def test_keeping_the_metadata_without_renaming_it_fails():
    def rename_keys(state_dict, renames):
        def rename(key):
            return next((new + key[len(old) :] for old, new in renames.items() if key.startswith(old)), key)

        renamed = OrderedDict((rename(k), v) for k, v in state_dict.items())
        renamed._metadata = state_dict._metadata
        return renamed

    _expect_fail(_check_rename(rename_keys), "still names the module features.2", "Rename the keys of _metadata")


def test_renaming_in_place_fails():
    def rename_keys(state_dict, renames):
        for key in list(state_dict):
            for old, new in renames.items():
                if key.startswith(old):
                    state_dict[new + key[len(old) :]] = state_dict.pop(key)
        return state_dict

    _expect_fail(_check_rename(rename_keys), "changed the state dict it was given", "new OrderedDict")


def test_forgetting_the_keys_without_an_old_prefix_fails():
    def rename_keys(state_dict, renames):
        renamed = OrderedDict()
        for key, value in state_dict.items():
            for old, new in renames.items():
                if key.startswith(old):
                    renamed[new + key[len(old) :]] = value
        return renamed

    _expect_fail(_check_rename(rename_keys), "returned no 'aux.fc.weight'", "Keep every entry")


def test_a_regex_rename_that_renames_metadata_passes():
    import re

    def rename_keys(state_dict, renames):
        pattern = re.compile("^(" + "|".join(re.escape(old) for old in renames) + ")")

        def rename(key):
            return pattern.sub(lambda match: renames[match.group(1)], key)

        renamed = OrderedDict((rename(k), v.clone()) for k, v in state_dict.items())
        renamed._metadata = {rename(k + ".").rstrip(".") if k else k: dict(v) for k, v in state_dict._metadata.items()}
        return renamed

    assert _check_rename(rename_keys).passed


# --- ch4.load_big --------------------------------------------------------------------------------------------


def _check_big(func) -> checking.CheckResult:
    return checking.run("ch4.load_big", {"load_big": func})


def _meta_build(build):
    with torch.device("meta"):
        return build()


def test_loading_into_meta_tensors_without_assign_fails():
    def load_big(build, path):
        model = _meta_build(build)
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True))
        return model

    _expect_fail(_check_big(load_big), "still on the meta device: load_state_dict copied", "assign=True")


def test_the_plain_meta_recipe_fails_on_the_non_persistent_buffer():
    def load_big(build, path):
        model = _meta_build(build)
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True)
        return model

    _expect_fail(_check_big(load_big), "non-persistent buffer positions is still on the meta device", "registration")


def test_forgetting_to_tie_the_weights_again_fails():
    def load_big(build, path):
        def to_meta(module, name, param):
            if param is not None and param.device.type != "meta":
                return nn.Parameter(param.to("meta"))
            return None

        handle = torch.nn.modules.module.register_module_parameter_registration_hook(to_meta)
        try:
            model = build()
        finally:
            handle.remove()
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True)
        return model

    _expect_fail(_check_big(load_big), "two Parameters", "Tie them again")


def test_building_on_the_cpu_fails():
    def load_big(build, path):
        model = build()
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True)
        model.head.weight = model.embed.weight
        return model

    _expect_fail(_check_big(load_big), "build() made real parameters on the CPU", "meta")


def test_to_empty_fails_because_it_leaves_the_buffer_uninitialized():
    def load_big(build, path):
        model = _meta_build(build).to_empty(device="cpu")
        with torch.no_grad():
            model.positions.fill_(-1.0)  # what uninitialized memory might hold
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True)
        model.head.weight = model.embed.weight
        return model

    _expect_fail(_check_big(load_big), "holds other values than build() gave it", "move only the parameters")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="the mapping check reads /proc/self/maps")
def test_loading_without_mmap_fails_because_the_parameters_are_copied():
    def load_big(build, path):
        with torch.device("meta"):
            model = build()
        model.positions = torch.arange(6.0)  # knows this model's buffer: not general, but it works here
        model.load_state_dict(torch.load(path, weights_only=True), assign=True)
        model.head.weight = model.embed.weight
        return model

    _expect_fail(_check_big(load_big), "copied into memory", "mmap=True")


def test_a_meta_build_that_recomputes_the_buffers_and_reties_passes():
    def load_big(build, path):
        with torch.device("meta"):
            model = build()
        with torch.device("cpu"):
            buffers = dict(build().named_buffers())  # a second, CPU build only for the buffers (costly, but right)
        for name, buffer in model.named_buffers():
            if buffer.is_meta:
                owner, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(owner), leaf, buffers[name])
        shared = [(n, p) for n, p in model.named_parameters(remove_duplicate=False)]
        ties = {n: [m for m, q in shared if q is p][0] for n, p in shared}
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True, map_location="cpu"), assign=True)
        for name, first in ties.items():
            if name != first:
                owner, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(owner), leaf, model.get_parameter(first))
        return model

    assert _check_big(load_big).passed


def test_load_big_loads_a_torch_save_file_of_the_chapters_classifier_shape(tmp_path):
    class WithScratch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.register_buffer("scratch", torch.ones(2), persistent=False)

    torch.save(WithScratch().state_dict(), tmp_path / "w.pt")
    model = ref.load_big(WithScratch, tmp_path / "w.pt")
    assert model.scratch.device.type == "cpu" and torch.equal(model.scratch, torch.ones(2))
    assert model.fc.weight.device.type == "cpu" and model.fc.weight.requires_grad


def test_rename_keys_refuses_two_keys_with_one_new_name():
    with pytest.raises(ValueError, match="two keys would be renamed to 'b.weight'"):
        ref.rename_keys(OrderedDict([("a.weight", 1), ("b.weight", 2)]), {"a.": "b."})


def test_rename_keys_prefers_the_longest_prefix():
    renamed = ref.rename_keys(OrderedDict([("enc.0.w", 1), ("enc.1.w", 2)]), {"enc.": "encoder.", "enc.0.": "stem."})
    assert list(renamed) == ["stem.w", "encoder.1.w"]


def test_a_file_that_holds_a_list_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    assert "not a checkpoint: expected the keys model, optimizer and epoch (found a list, not a dict)" in (
        _load_error(path)
    )
