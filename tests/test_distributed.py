"""course_utils.distributed: the DDP and DCP workers of chapter 4, in one process and (slow) in two."""

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn

from course_utils import artifacts, distributed
from course_utils.solutions import ch02_model_blocks as ch02
from course_utils.solutions import ch04_save_and_load as ch04


@pytest.fixture(autouse=True)
def _restore_threads():
    """The workers set one torch thread for their process; give this test process its threads back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_digest_changes_with_any_bit_and_with_names():
    layer = nn.Linear(2, 2)
    first = distributed.digest(layer.named_parameters())
    assert first == distributed.digest(layer.named_parameters()) and len(first) == 12
    assert distributed.digest([("w", torch.zeros(2))]) != distributed.digest([("v", torch.zeros(2))])
    with torch.no_grad():
        layer.bias[0] = torch.nextafter(layer.bias[0], torch.tensor(2.0))
    assert distributed.digest(layer.named_parameters()) != first
    assert distributed.digest([("steps", torch.tensor(3))])  # 0-d integer tensors too


def test_read_reports_orders_by_rank(tmp_path):
    for rank in (10, 2, 0):
        (tmp_path / f"ddp_rank{rank}.json").write_text(json.dumps({"rank": rank}))
    assert [r["rank"] for r in distributed.read_reports(tmp_path, "ddp")] == [0, 2, 10]


def test_the_ddp_worker_in_one_process_saves_a_checkpoint_that_a_plain_model_loads(tmp_path):
    distributed.ddp_train_worker(0, 1, str(tmp_path), steps=2, batch_size=2)
    (report,) = distributed.read_reports(tmp_path, "ddp")
    assert report["ddp_keys"][0] == "module." + report["module_keys"][0]
    assert len(report["losses"]) == 2 and not report["sync_batchnorm"]
    model = ch02.small_unet()
    epoch = ch04.load_checkpoint(tmp_path / distributed.DDP_CHECKPOINT, model, torch.optim.AdamW(model.parameters()))
    assert epoch == 0
    assert distributed.digest(model.named_parameters()) == report["parameters_after_training"]
    assert not torch.distributed.is_initialized()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # loading in one process, on purpose
def test_the_dcp_worker_in_one_process_writes_a_checkpoint_a_single_process_loads(tmp_path):
    distributed.dcp_save_worker(0, 1, str(tmp_path))
    folder = tmp_path / distributed.DCP_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp"]
    model = ch02.small_unet()
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=folder, no_dist=True)
    model.load_state_dict(state["model"])
    trained = artifacts.load_unet_small().state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_two_ddp_processes_keep_identical_parameters_and_rank_0_saves(tmp_path):
    mp.spawn(distributed.ddp_train_worker, args=(2, str(tmp_path), 2, "gloo", 2), nprocs=2)
    reports = distributed.read_reports(tmp_path, "ddp")
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["parameters_before_ddp"] != reports[1]["parameters_before_ddp"]
    assert reports[0]["parameters_after_ddp"] == reports[1]["parameters_after_ddp"]
    assert reports[0]["parameters_after_training"] == reports[1]["parameters_after_training"]
    assert reports[0]["losses"] != reports[1]["losses"]  # each rank trained on its own batches
    model = ch02.small_unet()
    ch04.load_checkpoint(tmp_path / distributed.DDP_CHECKPOINT, model, torch.optim.AdamW(model.parameters()))
    assert distributed.digest(model.named_parameters()) == reports[0]["parameters_after_training"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_the_combined_worker_passes_steps_and_batch_size_on(tmp_path):
    distributed.ddp_then_dcp_worker(0, 1, str(tmp_path), "gloo", 1, 1)
    (report,) = distributed.read_reports(tmp_path, "ddp")
    assert len(report["losses"]) == 1
    assert (tmp_path / distributed.DCP_FOLDER / ".metadata").exists()
