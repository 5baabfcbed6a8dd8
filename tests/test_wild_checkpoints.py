"""course_utils.wild_checkpoints: the chapter 4 checkpoints in data/ are listed, reproducible, and each loads
the documented way into the trained weights of data/unet_small_shapes.pt."""

import importlib
import io
import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, safe_open
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from course_utils import artifacts, wild_checkpoints
from course_utils.paths import DATA_DIR
from course_utils.solutions import ch02_model_blocks as ch02
from course_utils.solutions import ch04_save_and_load as ch04

ENTRIES = artifacts.read_manifest()


def _trained_state() -> dict:
    return torch.load(DATA_DIR / artifacts.UNET_SMALL_FILE, weights_only=True, map_location="cpu")


def _expect_trained(state) -> None:
    trained = _trained_state()
    assert list(state) == list(trained)
    assert all(torch.equal(state[k], trained[k]) for k in trained)


def _load(name: str, **kwargs):
    return torch.load(DATA_DIR / name, weights_only=True, map_location="cpu", **kwargs)


@pytest.mark.parametrize("name", wild_checkpoints.WILD_FILES)
def test_every_wild_file_is_listed_and_matches_its_checksum(name):
    assert ENTRIES[name]["regenerate"] == wild_checkpoints.REGENERATE
    artifacts.verify(name)


@pytest.mark.parametrize("name", wild_checkpoints.WILD_FILES)
def test_every_wild_file_was_made_from_the_current_trained_checkpoint(name):
    source = ENTRIES[artifacts.UNET_SMALL_FILE]["sha256"]
    assert ENTRIES[name]["metadata"]["source_sha256"] == source, "run python -m course_utils.wild_checkpoints"


def test_rebuilding_the_wild_files_gives_the_same_bytes(tmp_path):
    shutil.copy(DATA_DIR / artifacts.UNET_SMALL_FILE, tmp_path)
    artifacts.write_entry(artifacts.UNET_SMALL_FILE, ENTRIES[artifacts.UNET_SMALL_FILE], tmp_path)
    entries = wild_checkpoints.make_wild_checkpoints(tmp_path, run_compiled=False)
    assert set(entries) == set(wild_checkpoints.WILD_FILES)
    for name, entry in entries.items():
        assert entry["sha256"] == ENTRIES[name]["sha256"], name
    assert sorted(artifacts.read_manifest(tmp_path)) == sorted([artifacts.UNET_SMALL_FILE, *entries])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_rebuilding_refuses_a_missing_source(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="not listed"):
        wild_checkpoints.make_wild_checkpoints(tmp_path, run_compiled=False)


def test_main_reports_a_missing_source_without_a_traceback(monkeypatch, capsys):
    def fail(run_compiled):
        raise artifacts.ArtifactError("unet_small_shapes.pt is missing")

    monkeypatch.setattr(wild_checkpoints, "make_wild_checkpoints", fail)
    assert wild_checkpoints.main(["--quick"]) == 1
    assert "cannot build the wild checkpoints: unet_small_shapes.pt is missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "prefix"),
    [(wild_checkpoints.DATAPARALLEL_FILE, "module."), (wild_checkpoints.COMPILED_FILE, "_orig_mod.")],
)
def test_a_prefixed_file_loads_after_removing_its_prefix(name, prefix):
    state = _load(name)
    assert all(key.startswith(prefix) for key in state)
    with pytest.raises(RuntimeError, match="Missing key"):
        ch02.small_unet().load_state_dict(state)
    model = ch02.small_unet()
    ch04.load_flexible(model, state)
    _expect_trained(model.state_dict())
    consume_prefix_in_state_dict_if_present(state, prefix)
    _expect_trained(state)


def test_the_whole_model_pickle_is_refused_by_default_and_loads_with_its_classes_allowed():
    path = DATA_DIR / wild_checkpoints.WHOLE_MODEL_FILE
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        torch.load(path, weights_only=True)
    names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert names == ENTRIES[wild_checkpoints.WHOLE_MODEL_FILE]["metadata"]["pickled_globals"]
    assert "course_utils.solutions.ch02_model_blocks.UNet" in names
    classes = [getattr(importlib.import_module(n.rsplit(".", 1)[0]), n.rsplit(".", 1)[1]) for n in names]
    with torch.serialization.safe_globals(classes):
        model = torch.load(path, weights_only=True, map_location="cpu")
    assert isinstance(model, ch02.UNet) and not model.training
    _expect_trained(model.state_dict())


def test_the_mask_values_file_loads_once_the_extra_key_is_removed():
    state = _load(wild_checkpoints.MASK_VALUES_FILE)
    with pytest.raises(RuntimeError, match='Unexpected key\\(s\\) in state_dict: "mask_values"'):
        ch02.small_unet().load_state_dict(state)
    assert state.pop("mask_values") == wild_checkpoints.MASK_VALUES
    _expect_trained(state)


def test_the_safetensors_file_holds_the_trained_weights_and_its_constructor():
    path = DATA_DIR / wild_checkpoints.SAFETENSORS_FILE
    state = load_file(path)
    trained = _trained_state()
    assert set(state) == set(trained) and all(torch.equal(state[k], trained[k]) for k in trained)
    with safe_open(path, framework="pt") as file:
        info = json.loads(file.metadata()["course_utils"])
    assert info["constructor_kwargs"] == ch02.SMALL_UNET_KWARGS


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a machine with a GPU the file loads to cuda:0")
def test_the_file_saved_on_a_gpu_needs_map_location_on_a_cpu_only_machine():
    path = DATA_DIR / wild_checkpoints.SAVED_ON_GPU_FILE
    with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
        torch.load(path, weights_only=True)
    _expect_trained(torch.load(path, weights_only=True, map_location="cpu"))
    _expect_trained(torch.load(path, weights_only=True, map_location={"cuda:0": "cpu"}))


def test_the_cuda_tagger_is_inert_outside_the_generator():
    with wild_checkpoints._tagging_cpu_as_cuda():
        pass
    buffer = io.BytesIO()
    torch.save(torch.ones(2), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).device.type == "cpu"


def test_the_ema_file_loads_once_n_averaged_is_removed_and_the_prefix_stripped():
    state = _load(wild_checkpoints.EMA_FILE)
    assert list(state)[0] == "n_averaged" and state["n_averaged"].item() == 1
    assert all(key.startswith("module.") for key in list(state)[1:])
    with pytest.raises(RuntimeError, match='Unexpected key\\(s\\) in state_dict: "n_averaged"'):
        ch04.load_flexible(ch02.small_unet(), state)  # one key without the prefix: nothing is stripped
    state.pop("n_averaged")
    model = ch02.small_unet()
    ch04.load_flexible(model, state)
    _expect_trained(model.state_dict())


def test_the_ema_file_is_what_averaged_model_saves():
    from torch.optim.swa_utils import AveragedModel

    model = ch02.small_unet()
    keys = list(AveragedModel(model).state_dict())
    assert keys == list(_load(wild_checkpoints.EMA_FILE))
