"""Chapter 6's pretrained classifier, ``data/shapes_classifier.pt``: retrain it and update its manifest entry.

    python -m course_utils.pretrained_classifier

It lives apart from :mod:`course_utils.artifacts`, which never imports a chapter: chapter 6 verifies the committed
file through it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from course_utils import artifacts, data
from course_utils.paths import DATA_DIR
from course_utils.solutions import ch06_project_segmentation as ch06

REGENERATE = "python -m course_utils.pretrained_classifier"


def make_classifier_artifact(data_dir: Path = DATA_DIR, progress: bool = True) -> dict[str, Any]:
    """Pretrain the classifier, save its state dict to ``data_dir`` atomically, and update its manifest entry.

    Returns:
        The new manifest entry.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, as in the notebooks: the bytes depend on the thread count
    try:
        model, history = ch06.pretrain_classifier(**ch06.CLASSIFIER_TRAINING, progress=progress)
    finally:
        torch.set_num_threads(threads)
    images, masks = ch06.held_out_set(data.HELD_OUT_SIZE)
    accuracy = ch06.classifier_accuracy(model, images, masks)
    path = Path(data_dir) / ch06.CLASSIFIER_FILE
    with tempfile.TemporaryDirectory(dir=data_dir) as scratch:  # same name inside the archive, atomic rename
        temporary = Path(scratch) / ch06.CLASSIFIER_FILE
        torch.save(model.state_dict(), temporary)
        os.replace(temporary, path)
    kwargs = ", ".join(f"{key}={value!r}" for key, value in ch06.CLASSIFIER_KWARGS.items())
    size = ch06.IMAGE_SIZE
    entry = {
        "description": (
            f"State dict of chapter 6's pretrained classifier, course_utils.solutions.ch06_project_segmentation."
            f"ShapesClassifier({kwargs}): stem, stage1..3 (chapter 2's DoubleConv and Down), pool, fc. Trained "
            f"on {size} x {size} synthetic shapes to tell which of {', '.join(ch06.SHAPE_NAMES)} an image "
            "holds (multi-label, BCE). Its trunk becomes the encoder of chapter 6's segmenter. Load it with "
            "torch.load(path, weights_only=True, map_location='cpu'). Retraining gives an equivalent model whose "
            "bytes can differ on another machine or thread count."
        ),
        "sha256": artifacts.sha256(path),
        "bytes": path.stat().st_size,
        "regenerate": REGENERATE,
        "metadata": {
            "constructor": f"{ch06.ShapesClassifier.__module__}.ShapesClassifier",
            "constructor_kwargs": dict(ch06.CLASSIFIER_KWARGS),
            "parameters": ch06.parameter_count(model),
            "training": {
                "function": f"{ch06.pretrain_classifier.__module__}.pretrain_classifier",
                **ch06.CLASSIFIER_TRAINING,
                "image_size": ch06.IMAGE_SIZE,
                "threads": 1,
                "seconds": round(history["seconds"], 1),
                "final_loss": round(sum(history["loss"][-20:]) / 20, 4),
            },
            "held_out_accuracy": {
                "held_out": f"course_utils.data.make_shapes(256, seed=HELD_OUT_SEED, image_size={ch06.IMAGE_SIZE})",
                "per_shape": {name: round(v, 4) for name, v in zip(ch06.SHAPE_NAMES, accuracy.tolist(), strict=True)},
            },
            "torch": torch.__version__,
        },
    }
    artifacts.write_entry(ch06.CLASSIFIER_FILE, entry, Path(data_dir))
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    entry = make_classifier_artifact(progress=not args.quiet)
    print(f"{ch06.CLASSIFIER_FILE}: {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
