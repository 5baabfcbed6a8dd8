"""The course's committed artifacts: how to check them against ``data/MANIFEST.json`` and how to rebuild them.

    python -m course_utils.artifacts --verify       # check every file the manifest lists
    python -m course_utils.artifacts unet_small     # retrain data/unet_small_shapes.pt and update its entry
    python -m course_utils.wild_checkpoints         # then rebuild chapter 4's checkpoints from it
    python -m course_utils.pretrained_classifier    # pretrain chapter 6's classifier

The manifest is one JSON object, ``{"files": {name: entry}}``; every entry has a ``description``, the file's
``sha256`` and size in ``bytes``, and the ``regenerate`` command that rebuilds it. Entries may add a ``metadata``
object (for a checkpoint: how it was trained), so that metadata never has to live inside a state dict.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from course_utils.paths import DATA_DIR

MANIFEST_NAME = "MANIFEST.json"
UNET_SMALL_FILE = "unet_small_shapes.pt"
UNET_SMALL_STEPS = 600
UNET_SMALL_BATCH_SIZE = 16
UNET_SMALL_LR = 3e-3
UNET_SMALL_SEED = 0


class ArtifactError(Exception):
    """A committed artifact is missing, unlisted or does not match its manifest entry."""


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(data_dir: Path = DATA_DIR) -> dict[str, dict[str, Any]]:
    """The manifest's entries by file name (empty when there is no manifest yet)."""
    path = data_dir / MANIFEST_NAME
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))["files"]


def verify(name: str, data_dir: Path = DATA_DIR) -> Path:
    """Check one artifact against its manifest entry.

    Args:
        name: the file name, e.g. ``"unet_small_shapes.pt"``.
        data_dir: where the artifacts and the manifest are.

    Returns:
        The artifact's path.

    Raises:
        ArtifactError: if the manifest does not list it, the file is missing, or its size or checksum differs.
    """
    entries = read_manifest(data_dir)
    if name not in entries:
        raise ArtifactError(f"{name} is not listed in {MANIFEST_NAME}")
    entry, path = entries[name], data_dir / name
    if not path.exists():
        raise ArtifactError(f"{name} is missing; rebuild it with: {entry['regenerate']}")
    size, digest = path.stat().st_size, sha256(path)
    if size != entry["bytes"] or digest != entry["sha256"]:
        raise ArtifactError(
            f"{name} does not match {MANIFEST_NAME} (size {size}, sha256 {digest[:12]}...; expected size "
            f"{entry['bytes']}, sha256 {entry['sha256'][:12]}...). It was changed or is a Git LFS pointer; "
            f"rebuild it with: {entry['regenerate']}"
        )
    return path


def verify_all(data_dir: Path = DATA_DIR) -> list[str]:
    """Check every artifact the manifest lists; return their names.

    Raises:
        ArtifactError: at the first artifact that does not match.
    """
    names = sorted(read_manifest(data_dir))
    for name in names:
        verify(name, data_dir)
    return names


def write_entry(name: str, entry: dict[str, Any], data_dir: Path = DATA_DIR) -> None:
    """Add or replace one manifest entry, keeping the others (the file is rewritten atomically)."""
    entries = read_manifest(data_dir)
    entries[name] = entry
    text = json.dumps({"files": dict(sorted(entries.items()))}, indent=2, ensure_ascii=False) + "\n"
    _write_atomically(data_dir / MANIFEST_NAME, text.encode("utf-8"))


def _write_atomically(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it: a crash never leaves half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        os.chmod(temporary, 0o644)  # mkstemp creates the file readable by its owner only
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- the small U-Net trained on synthetic shapes ---------------------------------------------------------


def load_unet_small(data_dir: Path = DATA_DIR) -> Any:
    """The committed small U-Net (``UNet(**SMALL_UNET_KWARGS)``), checksum-verified, on the CPU, in eval mode.

    Raises:
        ArtifactError: if the checkpoint is missing or does not match the manifest.
    """
    import torch

    from course_utils.solutions import ch02_model_blocks as ch02

    path = verify(UNET_SMALL_FILE, data_dir)
    model = ch02.small_unet()
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    return model.eval()


def make_unet_small(data_dir: Path = DATA_DIR, progress: bool = True) -> dict[str, Any]:
    """Train the small U-Net from scratch, save its state dict and update its manifest entry.

    Returns:
        The new manifest entry.
    """
    import torch

    from course_utils import data
    from course_utils.solutions import ch02_model_blocks as ch02

    torch.manual_seed(UNET_SMALL_SEED)
    model = ch02.small_unet()
    history = ch02.train_unet(
        model,
        steps=UNET_SMALL_STEPS,
        batch_size=UNET_SMALL_BATCH_SIZE,
        lr=UNET_SMALL_LR,
        seed=UNET_SMALL_SEED,
        progress=progress,
    )
    model.eval()
    images, masks = data.held_out_set()
    dice = ch02.dice_per_class(ch02.predict(model, images), masks, data.NUM_CLASSES)
    path = data_dir / UNET_SMALL_FILE
    with tempfile.TemporaryDirectory(dir=data_dir) as scratch:
        temporary = Path(scratch) / UNET_SMALL_FILE
        torch.save(model.state_dict(), temporary)
        os.replace(temporary, path)
    kwargs = ", ".join(f"{key}={value!r}" for key, value in ch02.SMALL_UNET_KWARGS.items())
    entry = {
        "description": (
            f"State dict of the small U-Net of chapter 2, course_utils.solutions.ch02_model_blocks.UNet({kwargs}), "
            f"trained on the synthetic shapes of course_utils.data (classes: {', '.join(data.CLASS_NAMES)}). "
            "Load it with torch.load(path, weights_only=True, map_location='cpu') or "
            "course_utils.artifacts.load_unet_small(). Retraining gives an equivalent model whose bytes, and so "
            "whose checksum, can differ on another machine or thread count."
        ),
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "regenerate": "python -m course_utils.artifacts unet_small",
        "metadata": {
            "constructor": "course_utils.solutions.ch02_model_blocks.UNet",
            "constructor_kwargs": dict(ch02.SMALL_UNET_KWARGS),
            "parameters": sum(p.numel() for p in model.parameters()),
            "training": {
                "function": "course_utils.solutions.ch02_model_blocks.train_unet",
                "steps": history["steps"],
                "batch_size": UNET_SMALL_BATCH_SIZE,
                "lr": UNET_SMALL_LR,
                "seed": UNET_SMALL_SEED,
                "seconds": round(history["seconds"], 1),
                "final_loss": round(sum(history["loss"][-20:]) / 20, 4),
            },
            "held_out_dice": {
                "held_out": "course_utils.data.held_out_set() (256 images)",
                "mode": "eval",
                "per_class": {
                    name: round(score, 4) for name, score in zip(data.CLASS_NAMES, dice.tolist(), strict=True)
                },
                "mean_foreground": round(dice[1:].mean().item(), 4),
            },
            "torch": torch.__version__,
        },
    }
    write_entry(UNET_SMALL_FILE, entry, data_dir)
    return entry


REGENERATORS: dict[str, Callable[..., dict[str, Any]]] = {"unet_small": make_unet_small}
"""What ``python -m course_utils.artifacts NAME`` can rebuild. Chapter 4's files derived from the small U-Net are
rebuilt by ``python -m course_utils.wild_checkpoints`` and chapter 6's classifier by
``python -m course_utils.pretrained_classifier``; both import this module (never the other way round)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.artifacts", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=sorted(REGENERATORS), help="the artifact to rebuild")
    parser.add_argument("--verify", action="store_true", help="check every artifact against the manifest")
    args = parser.parse_args(argv)
    if args.name:
        entry = REGENERATORS[args.name]()
        print(json.dumps(entry, indent=2))
    if args.verify or not args.name:
        try:
            names = verify_all()
        except ArtifactError as error:
            print(f"verify failed: {error}", file=sys.stderr)
            return 1
        print(f"{len(names)} artifact(s) match {MANIFEST_NAME}: {', '.join(names) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
