"""Chapter 4's checkpoints "as met in the wild": the small U-Net of chapter 2, saved the ways people save models.

    python -m course_utils.wild_checkpoints           # rebuild every file below from data/unet_small_shapes.pt
    python -m course_utils.wild_checkpoints --quick   # the same, without running the compiled model once

Every file holds the same trained weights as ``data/unet_small_shapes.pt`` (which is checksum-verified first);
only the way they were saved differs. Each file gets an entry in ``data/MANIFEST.json`` that says how it was
written and how to load it. The bytes are deterministic: rebuilding gives the same checksums on this PyTorch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_utils import artifacts
from course_utils.paths import DATA_DIR

REGENERATE = "python -m course_utils.wild_checkpoints"
DATAPARALLEL_FILE = "unet_small_dataparallel.pt"
COMPILED_FILE = "unet_small_compiled.pt"
WHOLE_MODEL_FILE = "unet_small_whole_model.pt"
MASK_VALUES_FILE = "unet_small_mask_values.pt"
SAFETENSORS_FILE = "unet_small_shapes.safetensors"
SAVED_ON_GPU_FILE = "unet_small_saved_on_gpu.pt"
EMA_FILE = "unet_small_ema.pt"
EMA_DECAY = 0.999
MASK_VALUES = [0, 1, 2, 3]
"""The extra ``mask_values`` entry: the label of each class, stored inside the state dict."""

_tag_as_cuda = False


def _cuda_tagger(storage: Any) -> str | None:
    """Label CPU storages ``cuda:0`` while :func:`_tagging_cpu_as_cuda` is active; otherwise defer to PyTorch."""
    if _tag_as_cuda and storage.device.type == "cpu":
        return "cuda:0"
    return None


def _no_deserializer(storage: Any, location: str) -> None:
    return None  # restoring is left to PyTorch's own CPU and CUDA deserializers


_tagger_registered = False


@contextlib.contextmanager
def _tagging_cpu_as_cuda() -> Iterator[None]:
    """Make ``torch.save`` record CPU tensors as living on ``cuda:0``, as it records tensors saved from a GPU."""
    global _tag_as_cuda, _tagger_registered
    if not _tagger_registered:
        # Priority 1 runs before PyTorch's CPU tagger (10); the tagger stays registered but inert outside this block.
        torch.serialization.register_package(1, _cuda_tagger, _no_deserializer)
        _tagger_registered = True
    _tag_as_cuda = True
    try:
        yield
    finally:
        _tag_as_cuda = False


def _torch_bytes(obj: Any) -> bytes:
    """What ``torch.save(obj, file)`` writes to an open file (its archive folder is then named ``archive``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _write_atomically(path: Path, payload: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.write_bytes(payload)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _load_source(data_dir: Path) -> nn.Module:
    from course_utils.solutions import ch02_model_blocks as ch02

    path = artifacts.verify(artifacts.UNET_SMALL_FILE, data_dir)
    model = ch02.small_unet()
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    return model.eval()


def _dataparallel(model: nn.Module, run_compiled: bool) -> tuple[bytes, dict[str, Any]]:
    # On a CPU-only machine DataParallel just calls the model, but it wraps it all the same: keys gain "module.".
    wrapped = nn.DataParallel(model)
    return _torch_bytes(wrapped.state_dict()), {
        "saved_with": "torch.save(nn.DataParallel(model).state_dict(), file)",
        "key_prefix": "module.",
    }


def _compiled(model: nn.Module, run_compiled: bool) -> tuple[bytes, dict[str, Any]]:
    from course_utils import data

    compiled = torch.compile(model)
    if run_compiled:
        # Compiling happens at the first call (about a minute on a small CPU); the state dict is the same either way.
        images, _ = data.make_shapes(2, seed=0)
        with torch.no_grad():
            compiled(images)
    return _torch_bytes(compiled.state_dict()), {
        "saved_with": "torch.save(torch.compile(model).state_dict(), file)"
        + (", after one compiled forward pass in eval mode" if run_compiled else " (compiled model never run)"),
        "key_prefix": "_orig_mod.",
    }


def _whole_model(model: nn.Module, run_compiled: bool) -> tuple[bytes, dict[str, Any]]:
    payload = _torch_bytes(model)
    unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(payload)))
    return payload, {"saved_with": "torch.save(model, file)", "pickled_globals": unsafe}


def _mask_values(model: nn.Module, run_compiled: bool) -> tuple[bytes, dict[str, Any]]:
    state = model.state_dict()
    state["mask_values"] = list(MASK_VALUES)
    return _torch_bytes(state), {
        "saved_with": "state = model.state_dict(); state['mask_values'] = [0, 1, 2, 3]; torch.save(state, file)",
        "extra_keys": ["mask_values"],
    }


def _safetensors(model: nn.Module, run_compiled: bool) -> tuple[bytes, dict[str, Any]]:
    from safetensors.torch import save

    from course_utils.solutions import ch02_model_blocks as ch02

    # safetensors metadata maps strings to strings, and its key order is not stable: one key holding JSON is.
    info = {
        "constructor": "course_utils.solutions.ch02_model_blocks.UNet",
        "constructor_kwargs": dict(ch02.SMALL_UNET_KWARGS),
        "source": artifacts.UNET_SMALL_FILE,
    }
    metadata = {"course_utils": json.dumps(info, sort_keys=True)}
    return save(model.state_dict(), metadata=metadata), {
        "saved_with": "safetensors.torch.save_file(model.state_dict(), path, metadata)",
        "safetensors_metadata": metadata,
    }


def _saved_on_gpu(model: nn.Module, run_compiled: bool) -> tuple[bytes, dict[str, Any]]:
    if torch.cuda.is_available():
        payload = _torch_bytes({k: v.to("cuda:0") for k, v in model.state_dict().items()})
        how = "saved from cuda:0 on a machine with a GPU"
    else:
        with _tagging_cpu_as_cuda():
            payload = _torch_bytes(model.state_dict())
        how = (
            "written on a CPU-only machine with a torch.serialization tagger that labels the storages cuda:0, "
            "exactly the label torch.save gives tensors that live on the first GPU"
        )
    return payload, {"saved_with": "torch.save(state_dict_on_cuda0, file)", "storage_location": "cuda:0", "how": how}


def _ema(model: nn.Module, run_compiled: bool) -> tuple[bytes, dict[str, Any]]:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    # The first update copies the weights (n_averaged 0 -> 1); training would then call it after every step.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
    ema.update_parameters(model)
    return _torch_bytes(ema.state_dict()), {
        "saved_with": (
            f"ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn({EMA_DECAY})); "
            "ema.update_parameters(model); "
            "torch.save(ema.state_dict(), file)"
        ),
        "key_prefix": "module.",
        "extra_keys": ["n_averaged"],
    }


_WRITERS: dict[str, tuple[Callable[[nn.Module, bool], tuple[bytes, dict[str, Any]]], str]] = {
    DATAPARALLEL_FILE: (
        _dataparallel,
        "The small U-Net's trained weights (the same as unet_small_shapes.pt) saved from an nn.DataParallel wrapper: "
        "every key starts with 'module.'. Load: state = torch.load(path, weights_only=True, map_location='cpu'); "
        "torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, 'module.'); "
        "model.load_state_dict(state).",
    ),
    WHOLE_MODEL_FILE: (
        _whole_model,
        "The whole small U-Net pickled with torch.save(model): the file names the classes it was built from "
        "(course_utils.solutions.ch02_model_blocks.UNet and its parts, torch.nn layers). torch.load refuses it with "
        "weights_only=True, the default; a trusted copy loads inside torch.serialization.safe_globals([...]) listing "
        "those classes. It breaks when a class moves or is renamed.",
    ),
    MASK_VALUES_FILE: (
        _mask_values,
        "The small U-Net's trained state dict with one extra entry, 'mask_values': [0, 1, 2, 3] (the label of each "
        "class), stored inside the state dict as some projects do. load_state_dict rejects the unexpected key; "
        "remove it first: mask_values = state.pop('mask_values').",
    ),
    SAFETENSORS_FILE: (
        _safetensors,
        "The small U-Net's trained state dict in the safetensors format (tensors and a string-to-string header, "
        "no pickle), with the constructor and its arguments as JSON under the metadata key 'course_utils'. "
        "Load: safetensors.torch.load_file(path), then model.load_state_dict(state).",
    ),
    SAVED_ON_GPU_FILE: (
        _saved_on_gpu,
        "The small U-Net's trained state dict as saved from a model on 'cuda:0': its storages are labelled cuda:0, "
        "so torch.load restores them to the GPU. On a machine without a GPU, load it with map_location='cpu'. "
        "Written on a CPU-only machine with a serialization tagger that gives CPU storages the label 'cuda:0' "
        "(see metadata.how).",
    ),
    EMA_FILE: (
        _ema,
        "The small U-Net's trained weights as an exponential moving average (EMA) saves them: the state dict of "
        "torch.optim.swa_utils.AveragedModel after one update (so the averaged weights equal the trained ones). "
        "Its keys are 'n_averaged' (the number of updates, a buffer of the wrapper) and the model's keys with the "
        "prefix 'module.'. Load: state = torch.load(path, weights_only=True, map_location='cpu'); "
        "state.pop('n_averaged'); then remove the prefix (consume_prefix_in_state_dict_if_present(state, 'module.')) "
        "and model.load_state_dict(state).",
    ),
    COMPILED_FILE: (
        _compiled,
        "The small U-Net's trained weights saved from torch.compile(model): every key starts with '_orig_mod.'. "
        "Load: strip the prefix with consume_prefix_in_state_dict_if_present(state, '_orig_mod.'), then "
        "model.load_state_dict(state).",
    ),
}
WILD_FILES: tuple[str, ...] = tuple(_WRITERS)
"""The file names this module writes into ``data/``."""


def make_wild_checkpoints(data_dir: Path = DATA_DIR, run_compiled: bool = True) -> dict[str, dict[str, Any]]:
    """Write every wild checkpoint into ``data_dir`` and its entry into the manifest there.

    Args:
        data_dir: where ``unet_small_shapes.pt`` (listed in the manifest) is and where the files go.
        run_compiled: run the ``torch.compile``d model once before saving it (about a minute on a small CPU;
            the saved bytes are the same without it).

    Returns:
        The new manifest entries, by file name.

    Raises:
        course_utils.artifacts.ArtifactError: if ``unet_small_shapes.pt`` is missing or does not match.
    """
    data_dir = Path(data_dir)
    model = _load_source(data_dir)
    source_sha256 = artifacts.read_manifest(data_dir)[artifacts.UNET_SMALL_FILE]["sha256"]
    entries = {}
    for name, (writer, description) in _WRITERS.items():
        payload, metadata = writer(model, run_compiled)
        path = data_dir / name
        _write_atomically(path, payload)
        entry = {
            "description": description,
            "sha256": artifacts.sha256(path),
            "bytes": path.stat().st_size,
            "regenerate": REGENERATE,
            "metadata": {
                **metadata,
                "source": artifacts.UNET_SMALL_FILE,
                "source_sha256": source_sha256,
                "torch": torch.__version__,
            },
        }
        artifacts.write_entry(name, entry, data_dir)
        entries[name] = entry
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="do not run the compiled model before saving it")
    args = parser.parse_args(argv)
    try:
        entries = make_wild_checkpoints(run_compiled=not args.quick)
    except artifacts.ArtifactError as error:
        print(f"cannot build the wild checkpoints: {error}", file=sys.stderr)
        return 1
    for name, entry in entries.items():
        print(f"{name}: {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
