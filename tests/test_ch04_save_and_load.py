"""Chapter 4: the references pass their checks, real mistakes fail with the intended message, and the reference
checkpoint helpers are safe for real (kills mid-save, damaged files, pickled code)."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict

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


def test_writing_the_checkpoint_in_place_fails_because_a_failed_save_destroys_the_last_good_file():
    _expect_fail(_check_checkpoint(_naive_save, _plain_load), "left the previous checkpoint unreadable", "os.replace")


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
        state_dict = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state_dict.items()}
        model.load_state_dict(dict(sorted(state_dict.items())))

    assert _check_flexible(load_flexible).passed


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
    assert set(checkpoint) == {"model", "optimizer", "epoch"} and checkpoint["epoch"] == 4
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
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 2 : start + 40] = bytes(b ^ 0x5A for b in data[start + 2 : start + 40])
    checkpoint_file.write_bytes(bytes(data))
    assert "damaged or incomplete" in _load_error(checkpoint_file)


def test_torch_load_does_not_notice_a_flipped_byte_in_tensor_data(checkpoint_file):
    # Why the course keeps SHA-256 checksums of its checkpoints: torch.load checks no checksum of tensor bytes.
    data = bytearray(checkpoint_file.read_bytes())
    with zipfile.ZipFile(checkpoint_file) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
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
    ref.save_checkpoint(path, other, torch.optim.SGD(other.parameters(), lr=0.1), 0)
    assert "does not fit this model and optimizer" in _load_error(path)


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
    assert "refused by weights_only=True: loading it would import or call builtins.exec" in message
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
        leftovers = [n for n in os.listdir(folder) if n.startswith(f".round{round_}.pt.")]
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
