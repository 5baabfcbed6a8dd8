"""The worker functions of chapter 4's multi-process examples: DDP training and a sharded checkpoint.

``torch.multiprocessing.spawn`` starts fresh Python interpreters, and each one must import the function it runs
by name. A function defined in a notebook lives in ``__main__``, which a fresh interpreter does not have, so the
workers live here, in the package:

    import torch.multiprocessing as mp
    from course_utils import distributed

    mp.spawn(distributed.ddp_train_worker, args=(2, folder), nprocs=2)   # calls ddp_train_worker(rank, 2, folder)

The processes meet through a file in ``folder`` (no network port to pick), write what they saw to
``folder/<name>_rank<r>.json`` (a child's prints would interleave unpredictably), and print nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch codebase uses

DDP_CHECKPOINT = "unet_ddp.pt"
"""The checkpoint rank 0 writes in :func:`ddp_train_worker`'s folder."""
DCP_FOLDER = "unet_dcp"
"""The folder :func:`dcp_save_worker` writes its sharded checkpoint to."""


def _start(rank: int, world_size: int, folder: str | os.PathLike, name: str, backend: str) -> torch.device:
    """Join the process group; return this process's device."""
    # Two processes share a laptop's cores: one thread each avoids oversubscription.
    torch.set_num_threads(1)
    # The processes meet at a file; it must not be left over from an earlier run, hence a fresh folder per run.
    init_method = Path(folder).resolve().joinpath(f"{name}.rendezvous").as_uri()
    if backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)  # before joining: NCCL binds this process to its GPU
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, device_id=device)
        return device
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    return torch.device("cpu")


def _report(folder: str | os.PathLike, name: str, rank: int, report: dict[str, Any]) -> None:
    path = Path(folder) / f"{name}_rank{rank}.json"
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")


def read_reports(folder: str | os.PathLike, name: str) -> list[dict[str, Any]]:
    """The reports the workers of one run wrote, by rank."""
    paths = sorted(Path(folder).glob(f"{name}_rank*.json"), key=lambda p: int(p.stem.rsplit("rank", 1)[1]))
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short fingerprint of named tensors (``model.named_parameters()``): equal digests, bit-for-bit equal tensors."""
    hasher = hashlib.sha256()
    for name, tensor in named_tensors:
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:12]


def ddp_train_worker(
    rank: int, world_size: int, folder: str, steps: int = 3, backend: str = "gloo", batch_size: int = 4
) -> None:
    """One process of the DDP example: train the small U-Net on this rank's batches; rank 0 saves a checkpoint.

    Every rank starts from different random weights on purpose: wrapping the model in DDP copies rank 0's
    parameters and buffers to all ranks. Each rank then trains on its own batches; DDP averages the gradients,
    so the parameters stay identical everywhere, and one copy (rank 0's) is all we need to save. BatchNorm's
    running statistics are updated by each rank from its own batches; DDP copies rank 0's to the others at the
    start of every forward (``broadcast_buffers=True``), so rank 0's are the ones that count.

    Args:
        rank: this process's number, 0 .. world_size - 1 (``mp.spawn`` passes it first).
        world_size: how many processes take part.
        folder: a fresh folder shared by the processes: rendezvous file, reports, checkpoint.
        steps: optimizer steps to take.
        backend: ``"gloo"`` on CPUs, ``"nccl"`` with one GPU per process (the model then uses SyncBatchNorm).
        batch_size: images per rank and step.
    """
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: N817 - the usual name

    from course_utils import data
    from course_utils.solutions import ch02_model_blocks as ch02
    from course_utils.solutions import ch04_save_and_load as ch04

    device = _start(rank, world_size, folder, "ddp", backend)
    try:
        torch.manual_seed(rank)  # different weights on every rank, until DDP copies rank 0's
        model = ch02.small_unet()
        before = digest(model.named_parameters())
        if device.type == "cuda":
            # BatchNorm statistics over the whole global batch instead of each GPU's share of it.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device)
        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        after_wrap = digest(ddp_model.module.named_parameters())
        optimizer = torch.optim.AdamW(ddp_model.parameters(), lr=3e-3)
        losses = []
        # Each rank draws its own batches (seed = rank), as a DistributedSampler would give it its own shard.
        for images, masks in data.shape_batches(batch_size, seed=rank, num_batches=steps):
            images, masks = images.to(device), masks.to(device)
            loss = F.cross_entropy(ddp_model(images), masks)
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients of all ranks here
            optimizer.step()
            losses.append(loss.item())
        if rank == 0:
            # Save the inner module: its keys have no "module." prefix, so a plain model loads them.
            ch04.save_checkpoint(Path(folder) / DDP_CHECKPOINT, ddp_model.module, optimizer, epoch=0)
        # No rank goes on (to load the file, or to exit and let the parent read it) before rank 0 has written it.
        dist.barrier()
        _report(
            folder,
            "ddp",
            rank,
            {
                "rank": rank,
                "world_size": world_size,
                "backend": backend,
                "parameters_before_ddp": before,
                "parameters_after_ddp": after_wrap,
                "parameters_after_training": digest(ddp_model.module.named_parameters()),
                # BatchNorm running statistics: each rank updates them from its own batches only.
                "buffers_after_training": digest(ddp_model.module.named_buffers()),
                "losses": losses,
                "ddp_keys": list(ddp_model.state_dict())[:2],
                "module_keys": list(ddp_model.module.state_dict())[:2],
                "sync_batchnorm": any(isinstance(m, nn.SyncBatchNorm) for m in ddp_model.modules()),
            },
        )
    finally:
        dist.destroy_process_group()


def dcp_save_worker(rank: int, world_size: int, folder: str, backend: str = "gloo") -> None:
    """One process of the sharded-checkpoint example: shard the trained small U-Net with FSDP2, save it with DCP.

    After ``fully_shard`` every rank holds only its slice (along dimension 0) of each parameter, as a
    ``DTensor``. ``torch.distributed.checkpoint.save`` then writes each rank's slices to its own file plus a
    ``.metadata`` index, and no process ever holds the whole model.

    Args:
        rank: this process's number (``mp.spawn`` passes it first).
        world_size: how many processes take part.
        folder: a fresh folder shared by the processes; the checkpoint goes to ``folder/unet_dcp``.
        backend: ``"gloo"`` on CPUs, ``"nccl"`` with one GPU per process.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from course_utils import artifacts

    device = _start(rank, world_size, folder, "dcp", backend)
    try:
        model = artifacts.load_unet_small().to(device)  # the trained weights, on every rank
        mesh = init_device_mesh(device.type, (world_size,))
        fully_shard(model, mesh=mesh)
        state = model.state_dict()
        shards = {
            key: {
                "type": type(value).__name__,
                "global_shape": list(value.shape),
                "local_shape": list(value.to_local().shape) if hasattr(value, "to_local") else list(value.shape),
            }
            for key, value in state.items()
        }
        # Every rank calls save; each writes its own shards, rank 0 also the metadata.
        dcp.save({"model": state}, checkpoint_id=Path(folder) / DCP_FOLDER)
        _report(folder, "dcp", rank, {"rank": rank, "world_size": world_size, "shards": shards})
    finally:
        dist.destroy_process_group()


def ddp_then_dcp_worker(
    rank: int, world_size: int, folder: str, backend: str = "gloo", steps: int = 3, batch_size: int = 4
) -> None:
    """Run :func:`ddp_train_worker`, then :func:`dcp_save_worker`, in the same process.

    Starting processes is the slow part (each one imports PyTorch), so the notebook starts two processes once
    and lets each run both examples, one process group after the other. ``steps`` and ``batch_size`` go to
    :func:`ddp_train_worker`.
    """
    ddp_train_worker(rank, world_size, folder, steps=steps, backend=backend, batch_size=batch_size)
    dcp_save_worker(rank, world_size, folder, backend=backend)
