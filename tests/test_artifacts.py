"""course_utils.artifacts and data/MANIFEST.json: every committed artifact exists and matches its entry."""

import json

import pytest
import torch

from course_utils import artifacts, data
from course_utils.paths import DATA_DIR
from course_utils.solutions import ch02_model_blocks as ch02

MANIFEST = json.loads((DATA_DIR / artifacts.MANIFEST_NAME).read_text(encoding="utf-8"))
ENTRIES = MANIFEST["files"]


def test_the_manifest_is_an_object_of_files():
    assert set(MANIFEST) == {"files"}
    assert ENTRIES, "the manifest lists no files"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_entry_has_the_required_fields(name):
    entry = ENTRIES[name]
    assert {"description", "sha256", "bytes", "regenerate"} <= set(entry)
    assert len(entry["sha256"]) == 64 and int(entry["sha256"], 16) >= 0
    assert entry["bytes"] > 0 and entry["regenerate"].startswith("python ")


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_listed_file_exists_and_matches_its_checksum(name):
    path = artifacts.verify(name)
    assert path.stat().st_size == ENTRIES[name]["bytes"]
    assert artifacts.sha256(path) == ENTRIES[name]["sha256"]


def test_every_file_in_data_is_listed_in_the_manifest():
    files = {p.name for p in DATA_DIR.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert files - {artifacts.MANIFEST_NAME, "README.md"} <= set(ENTRIES)


def test_verify_reports_a_changed_file(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"original")
    artifacts.write_entry(
        "weights.pt",
        {"description": "test", "sha256": artifacts.sha256(tmp_path / "weights.pt"), "bytes": 8, "regenerate": "x"},
        tmp_path,
    )
    assert artifacts.verify("weights.pt", tmp_path) == tmp_path / "weights.pt"
    (tmp_path / "weights.pt").write_bytes(b"modified")
    with pytest.raises(artifacts.ArtifactError, match="does not match"):
        artifacts.verify("weights.pt", tmp_path)


def test_verify_reports_a_missing_or_unlisted_file(tmp_path):
    artifacts.write_entry("gone.pt", {"description": "", "sha256": "0" * 64, "bytes": 1, "regenerate": "cmd"}, tmp_path)
    with pytest.raises(artifacts.ArtifactError, match="missing; rebuild it with: cmd"):
        artifacts.verify("gone.pt", tmp_path)
    with pytest.raises(artifacts.ArtifactError, match="not listed"):
        artifacts.verify("other.pt", tmp_path)


def test_write_entry_keeps_the_other_entries(tmp_path):
    artifacts.write_entry("b.pt", {"bytes": 1}, tmp_path)
    artifacts.write_entry("a.pt", {"bytes": 2}, tmp_path)
    artifacts.write_entry("b.pt", {"bytes": 3}, tmp_path)
    assert artifacts.read_manifest(tmp_path) == {"a.pt": {"bytes": 2}, "b.pt": {"bytes": 3}}
    assert [p.name for p in tmp_path.iterdir()] == [artifacts.MANIFEST_NAME]  # no temporary file left


def test_verify_all_checks_the_committed_artifacts():
    assert artifacts.verify_all() == sorted(ENTRIES)


def test_the_small_unet_checkpoint_is_a_plain_state_dict_of_the_documented_model():
    entry = ENTRIES[artifacts.UNET_SMALL_FILE]
    assert entry["regenerate"] == "python -m course_utils.artifacts unet_small"
    assert entry["metadata"]["constructor_kwargs"] == ch02.SMALL_UNET_KWARGS
    state = torch.load(DATA_DIR / artifacts.UNET_SMALL_FILE, weights_only=True, map_location="cpu")
    assert all(isinstance(value, torch.Tensor) for value in state.values())  # no metadata inside
    model = ch02.UNet(**entry["metadata"]["constructor_kwargs"])
    model.load_state_dict(state, strict=True)
    assert entry["bytes"] < 5_000_000


def test_the_small_unet_checkpoint_segments_the_held_out_shapes():
    model = artifacts.load_unet_small()
    assert not model.training
    images, masks = data.held_out_set(64)
    assert ch02.mean_foreground_dice(model, images, masks) > 0.95


def test_the_command_line_verifies_the_manifest(capsys):
    assert artifacts.main(["--verify"]) == 0
    assert "match MANIFEST.json" in capsys.readouterr().out


def test_artifacts_does_not_import_wild_checkpoints():
    # wild_checkpoints builds on artifacts; the reverse import would make a circle.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(artifacts))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if "wild_checkpoints" in name}


@pytest.mark.parametrize("module", ["course_utils.artifacts", "course_utils.wild_checkpoints"])
def test_each_artifact_module_imports_alone_in_a_fresh_interpreter(module):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
