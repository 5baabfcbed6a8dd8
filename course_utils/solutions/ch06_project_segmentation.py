"""Chapter 6 reference solutions: a project. A segmenter built from a pretrained classifier, trained, saved,
resumed and shipped.

The project reuses the earlier chapters' references instead of copying them: the U-Net parts and the Dice of
chapter 2 (``ch2``), the recipe for loading what fits of chapter 4 (``ch4``), and the init function and the
zero-init of residual blocks of chapter 5 (``ch5``).

The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers delimit what the student edition replaces with a
stub; ``python -m course_utils.build`` copies these definitions into the chapter's notebook.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch codebase uses
from torch import nn

from course_utils import data
from course_utils.solutions import ch02_model_blocks as ch2
from course_utils.solutions import ch04_save_and_load as ch4
from course_utils.solutions import ch05_initialization as ch5

IMAGE_SIZE = 32
"""The project trains on 32 x 32 shapes: four times fewer pixels than chapter 2's, so it runs in seconds."""
NUM_CLASSES = data.NUM_CLASSES
SHAPE_NAMES = data.CLASS_NAMES[1:]
"""The classifier's labels: one "is this shape in the image?" output per shape class."""
CLASSIFIER_FILE = "shapes_classifier.pt"
CLASSIFIER_KWARGS: dict[str, int] = {"base_channels": 8, "num_labels": len(SHAPE_NAMES)}
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# --- data ----------------------------------------------------------------------------------------------------


def shape_batches(batch_size: int, seed: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless 32 x 32 training batches; batch ``i`` is drawn with the seed ``(seed, i)``, from batch ``start`` on.

    Drawing batch ``i`` from its own seed is what makes resuming exact: the batch after a restart at step ``k``
    is batch ``k``, the one the uninterrupted run saw, with no random state to save.
    """
    index = start
    while True:
        yield data.make_shapes(batch_size, seed=(seed, index), image_size=IMAGE_SIZE)
        index += 1


def held_out_set(num_images: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` (at most 256) images and masks of the 32 x 32 held-out set (seed ``HELD_OUT_SEED``)."""
    if not 0 <= num_images <= data.HELD_OUT_SIZE:
        raise ValueError(f"num_images must be between 0 and {data.HELD_OUT_SIZE} (got {num_images})")
    images, masks = data.make_shapes(data.HELD_OUT_SIZE, seed=data.HELD_OUT_SEED, image_size=IMAGE_SIZE)
    return images[:num_images].clone(), masks[:num_images].clone()


def present_shapes(masks: torch.Tensor) -> torch.Tensor:
    """The classifier's targets: ``(N, 3)`` floats, 1 where the shape class appears anywhere in the mask."""
    return torch.stack([(masks == label).flatten(1).any(dim=1) for label in range(1, NUM_CLASSES)], dim=1).float()


def class_frequencies(masks: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """The fraction of pixels of each class in ``masks``, ``(num_classes,)``, summing to 1."""
    counts = torch.bincount(masks.flatten(), minlength=num_classes).double()
    return (counts / counts.sum()).float()


# --- the pretrained classifier --------------------------------------------------------------------------------


class ShapesClassifier(nn.Module):
    """Stem => three Down stages (H/2, H/4, H/8) => global average pool => Linear: which shapes are present."""

    def __init__(self, base_channels: int = 8, num_labels: int = 3) -> None:
        super().__init__()
        if base_channels < 1 or num_labels < 1:
            raise ValueError(f"base_channels and num_labels must be positive (got {base_channels}, {num_labels})")
        c = base_channels
        self.channels = (c, 2 * c, 4 * c, 8 * c)  # what each stage outputs, for whoever reuses the trunk
        self.stem = ch2.DoubleConv(3, c)
        self.stage1 = ch2.Down(c, 2 * c)
        self.stage2 = ch2.Down(2 * c, 4 * c)
        self.stage3 = ch2.Down(4 * c, 8 * c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * c, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C, H, W)
        x = self.stage1(x)  # (B, 2C, H/2, W/2)
        x = self.stage2(x)  # (B, 4C, H/4, W/4)
        x = self.stage3(x)  # (B, 8C, H/8, W/8)
        x = self.pool(x)  # (B, 8C, 1, 1)
        x = torch.flatten(x, 1)  # (B, 8C)
        logits = self.fc(x)  # (B, num_labels): one "present" score per shape, for BCEWithLogits
        return logits


def pretrain_classifier(
    steps: int = 500, batch_size: int = 32, lr: float = 3e-3, seed: int = 0, progress: bool = False
) -> tuple[ShapesClassifier, dict[str, Any]]:
    """Train :class:`ShapesClassifier` to tell which shapes an image holds (multi-label, BCE), deterministically.

    Returns:
        The trained classifier (eval mode) and a dict with ``loss`` (per step) and ``seconds``.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = ShapesClassifier(**CLASSIFIER_KWARGS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, steps))
    losses = []
    start = time.perf_counter()
    model.train()
    batches = shape_batches(batch_size, seed=seed + 10_000)  # not the segmenter's training stream
    for _ in tqdm(range(steps), disable=not progress, desc="pretraining the classifier"):
        images, masks = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(images), present_shapes(masks))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model.eval(), {"loss": losses, "seconds": time.perf_counter() - start}


CLASSIFIER_TRAINING: dict[str, int | float] = {"steps": 500, "batch_size": 32, "lr": 3e-3, "seed": 0}
"""How the committed classifier was pretrained (``python -m course_utils.pretrained_classifier``)."""


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per shape, the fraction of images where the classifier's "present" answer (logit > 0) is right."""
    predicted = model(images) > 0
    return (predicted == present_shapes(masks).bool()).float().mean(dim=0)


def load_classifier(path: str | os.PathLike | None = None) -> ShapesClassifier:
    """The committed pretrained classifier (checksum-verified when ``path`` is None), on the CPU, in eval mode."""
    from course_utils import artifacts

    path = artifacts.verify(CLASSIFIER_FILE) if path is None else Path(path)
    model = ShapesClassifier(**CLASSIFIER_KWARGS)
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    return model.eval()


# --- step 1: the segmenter (modification) ----------------------------------------------------------------------


class Segmenter(nn.Module):
    """A classifier's trunk as the encoder => U-Net decoder (Up with skips, residual refine) => 1x1 head."""

    def __init__(self, classifier: nn.Module, num_classes: int) -> None:
        ### BEGIN SOLUTION
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive (got {num_classes})")
        c1, c2, c3, c4 = classifier.channels
        # The trunk's stages, by name, without pool and fc: a ModuleDict keeps the keys encoder.stem..., and the
        # segmenter holds the classifier's own modules (no copy), so whatever the classifier learned is in it.
        self.encoder = nn.ModuleDict(
            {
                "stem": classifier.stem,
                "stage1": classifier.stage1,
                "stage2": classifier.stage2,
                "stage3": classifier.stage3,
            }
        )
        self.decoder = nn.ModuleDict(
            {
                "up1": ch2.Up(c4, c3),  # H/8 => H/4, with the skip from stage2
                "up2": ch2.Up(c3, c2),  # H/4 => H/2, with the skip from stage1
                "up3": ch2.Up(c2, c1),  # H/2 => H, with the skip from the stem
                "refine": ch2.ResidualBlock(c1, c1),
            }
        )
        self.head = ch2.OutConv(c1, num_classes)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        skip0 = self.encoder.stem(x)  # (B, C, H, W)
        skip1 = self.encoder.stage1(skip0)  # (B, 2C, H/2, W/2)
        skip2 = self.encoder.stage2(skip1)  # (B, 4C, H/4, W/4)
        x = self.encoder.stage3(skip2)  # (B, 8C, H/8, W/8)
        x = self.decoder.up1(x, skip2)  # (B, 4C, H/4, W/4)
        x = self.decoder.up2(x, skip1)  # (B, 2C, H/2, W/2)
        x = self.decoder.up3(x, skip0)  # (B, C, H, W)
        x = self.decoder.refine(x)
        logits = self.head(x)  # (B, num_classes, H, W)
        return logits
        ### END SOLUTION


def new_segmenter(num_classes: int = NUM_CLASSES, base_channels: int = 8) -> Segmenter:
    """A :class:`Segmenter` on a freshly initialized classifier: the architecture, with nothing pretrained."""
    return Segmenter(ShapesClassifier(base_channels=base_channels), num_classes)


# --- step 2: load what fits (loading) ---------------------------------------------------------------------------


def load_encoder(model: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load a :class:`ShapesClassifier` checkpoint into the segmenter's encoder; report what did not fit.

    Args:
        model: a :class:`Segmenter` (its encoder's keys are the classifier's, under ``encoder.``).
        path: a file written by ``torch.save(classifier.state_dict(), path)``.

    Returns:
        A dict of sorted key lists: ``loaded`` (the model's keys that were filled), ``unused`` (the checkpoint's
        keys that were not loaded, such as the classifier's ``fc``), ``missing`` (the model's keys the checkpoint
        did not fill, such as the decoder's and the head's).
    """
    ### BEGIN SOLUTION
    # weights_only=True: a checkpoint from elsewhere never runs code; map_location: it may come from a GPU.
    state = torch.load(path, map_location="cpu", weights_only=True)
    prefixed = {f"encoder.{key}": value for key, value in state.items()}  # the segmenter keeps the trunk there
    skipped = ch4.load_matching(model, prefixed)  # same key and same shape, or left alone
    loaded = sorted(key for key in prefixed if key not in skipped)
    return {
        "loaded": loaded,
        "unused": sorted(key.removeprefix("encoder.") for key in skipped),
        "missing": sorted(key for key in model.state_dict() if key not in loaded),
    }
    ### END SOLUTION


# --- step 3: initialize the new parts on purpose (initialization) ------------------------------------------------


def init_decoder(model: nn.Module, class_frequencies: torch.Tensor) -> None:
    """Initialize the segmenter's new parts; leave the pretrained encoder alone.

    The decoder gets chapter 5's ``init_weights`` (Kaiming fan_out for its convolutions) and starts its residual
    block as its shortcut (``zero_init_residual``). The head starts with tiny weights and the log of the class
    frequencies as its bias, so that its first predictions are the class prior instead of uniform.

    Args:
        model: a :class:`Segmenter`.
        class_frequencies: the fraction of pixels of each class, ``(num_classes,)``, all positive.

    Raises:
        ValueError: if a frequency is zero or negative (its log, the bias, would be -inf or NaN).
    """
    ### BEGIN SOLUTION
    frequencies = torch.as_tensor(class_frequencies, dtype=torch.float32)
    if not bool((frequencies > 0).all()):
        raise ValueError(f"class frequencies must all be positive (got {frequencies.tolist()})")
    model.decoder.apply(ch5.init_weights)  # the decoder only: model.apply would wipe out the pretrained encoder
    ch5.zero_init_residual(model.decoder)  # bn2.weight = 0: the refine block starts as relu(x)
    nn.init.normal_(model.head.conv.weight, mean=0.0, std=0.01)
    with torch.no_grad():
        # softmax(log p) = p: the head starts out predicting the class frequencies (the prior) at every pixel.
        model.head.conv.bias.copy_(frequencies.log())
    ### END SOLUTION


# --- step 4: freeze, then fine-tune with per-group learning rates (modification) ----------------------------------


def make_optimizer(model: nn.Module, lr: float, encoder_lr: float | None = None) -> torch.optim.Optimizer:
    """An AdamW optimizer for a :class:`Segmenter`, with the encoder frozen or in a group of its own.

    Args:
        model: a :class:`Segmenter`.
        lr: the learning rate of the decoder and the head.
        encoder_lr: ``None`` freezes the encoder (``requires_grad`` off, not in the optimizer); a number unfreezes
            it and gives it its own parameter group with that learning rate (the first group).

    Returns:
        The optimizer: one group (decoder and head) when frozen, two groups (encoder, then decoder and head)
        otherwise.
    """
    ### BEGIN SOLUTION
    encoder = list(model.encoder.parameters())
    new_parts = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    frozen = encoder_lr is None
    for parameter in encoder:
        parameter.requires_grad_(not frozen)  # unfreezing must turn gradients back on, too
    if frozen:
        return torch.optim.AdamW(new_parts, lr=lr)
    return torch.optim.AdamW([{"params": encoder, "lr": encoder_lr}, {"params": new_parts, "lr": lr}])
    ### END SOLUTION


def warmup_cosine(step: int, total: int, warmup: int = 10, floor: float = 0.1) -> float:
    """The learning-rate factor at ``step`` of ``total``: linear warm-up, then a cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_train_mode(model: nn.Module) -> None:
    """Training mode, except a frozen encoder: its BatchNorm layers keep the statistics learned in pretraining."""
    model.train()
    if not any(p.requires_grad for p in model.encoder.parameters()):
        model.encoder.eval()


# --- step 5: save during training and resume exactly (saving) -----------------------------------------------------


def save_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
) -> None:
    """Save everything training changes (model, optimizer, scheduler, step) to ``path``, atomically.

    Args:
        path: the checkpoint file; its directory must exist.
        model: the model whose ``state_dict()`` is saved (parameters and buffers).
        optimizer: the optimizer whose ``state_dict()`` is saved (Adam's moments and step counts).
        scheduler: the learning-rate scheduler whose ``state_dict()`` is saved (where the schedule is).
        step: how many training steps are done.
    """
    ### BEGIN SOLUTION
    # Chapter 4's helper: a temporary file in the same folder, fsynced, then one rename over the old checkpoint,
    # so a crash mid-save leaves the previous checkpoint whole. It stores the step count where it keeps the epoch.
    ch4.save_checkpoint(path, model, optimizer, step, scheduler=scheduler)
    ### END SOLUTION


def load_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Restore a checkpoint written by :func:`save_training_state`; return the number of steps done.

    The model, optimizer and scheduler must be built as the saved ones were (the same parameter groups).
    """
    ### BEGIN SOLUTION
    # All or nothing: if the file does not fit, chapter 4's loader raises and leaves all three as they were.
    return ch4.load_checkpoint(path, model, optimizer, scheduler=scheduler)
    ### END SOLUTION


class SimulatedCrash(RuntimeError):
    """Raised by :func:`train_segmenter` to stand for a crash (a killed job, a lost machine) after some step."""


def train_segmenter(
    model: Segmenter,
    *,
    steps: int,
    freeze_steps: int = 0,
    lr: float = 1e-2,
    encoder_lr: float | None = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    eval_every: int = 0,
    eval_images: int = 128,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    crash_after: int | None = None,
    until: int | None = None,
    resume: bool = False,
    progress: bool = False,
    description: str = "training",
) -> dict[str, list[float]]:
    """Train a segmenter in two phases: encoder frozen for ``freeze_steps`` steps, then all of it.

    Each phase has its own optimizer (:func:`make_optimizer`) and its own warm-up and cosine schedule. Batch
    ``i`` is always :func:`shape_batches`'s batch ``i``, so a run resumed from a checkpoint sees the batches the
    uninterrupted run saw.

    Args:
        model: the segmenter; it is left in training mode.
        steps: the total number of steps, both phases.
        freeze_steps: steps with the encoder frozen (0: train everything from the start).
        lr: the decoder's and head's learning rate.
        encoder_lr: the encoder's learning rate after the frozen phase.
        batch_size: images per step.
        seed: the seed of the batch stream.
        eval_every: measure the held-out Dice every so many steps (0: never).
        eval_images: how many held-out images to measure on.
        checkpoint_dir: where :func:`save_training_state` writes ``step_0020.pt``, ... (None: no checkpoints).
        checkpoint_every: save after every so many steps.
        crash_after: raise :class:`SimulatedCrash` right after this step (and its checkpoint, if due).
        until: stop after this step, as a job whose time ran out would (the schedules still span ``steps``).
        resume: start from the newest checkpoint in ``checkpoint_dir`` instead of step 0.
        progress: show a progress bar.
        description: the progress bar's label.

    Returns:
        ``{"step": [...], "loss": [...], "dice_step": [...], "dice": [...]}``: the loss of every step, and the
        held-out mean foreground Dice (eval mode) at step 0 and every ``eval_every`` steps.
    """
    from tqdm.auto import tqdm

    history: dict[str, list[float]] = {"step": [], "loss": [], "dice_step": [], "dice": []}
    held_images, held_masks = held_out_set(eval_images) if eval_every else (None, None)

    def phase_of(step: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        frozen = step < freeze_steps
        optimizer = make_optimizer(model, lr, None if frozen else encoder_lr)
        length = freeze_steps if frozen else steps - freeze_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, length))
        return optimizer, scheduler

    def measure(step: int) -> None:
        model.eval()
        history["dice_step"].append(step)
        history["dice"].append(ch2.mean_foreground_dice(model, held_images, held_masks))
        set_train_mode(model)

    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    start = 0
    optimizer, scheduler = phase_of(0)
    if resume:
        path = latest_checkpoint(checkpoint_dir)
        # Build what was saved: the phase of the last step done (a checkpoint taken right after the frozen
        # phase holds its one-group optimizer; the loop below then switches phases as the first run did).
        optimizer, scheduler = phase_of(checkpoint_step(path) - 1)
        start = load_training_state(path, model, optimizer, scheduler)
    set_train_mode(model)
    if eval_every and start == 0:
        measure(0)
    batches = shape_batches(batch_size, seed=seed, start=start)
    end = steps if until is None else min(steps, until)
    for step in tqdm(range(start, end), disable=not progress, desc=description, initial=start, total=end):
        if step == freeze_steps and step > 0:  # the frozen phase is over: unfreeze, new groups, new schedule
            optimizer, scheduler = phase_of(step)
            set_train_mode(model)
        images, masks = next(batches)
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        done = step + 1
        history["step"].append(done)
        history["loss"].append(loss.item())
        if eval_every and done % eval_every == 0:
            measure(done)
        if checkpoint_dir is not None and checkpoint_every and done % checkpoint_every == 0:
            save_training_state(Path(checkpoint_dir) / f"step_{done:04d}.pt", model, optimizer, scheduler, done)
        if crash_after is not None and done == crash_after:
            raise SimulatedCrash(f"simulated crash after step {done}")
    return history


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step a checkpoint was saved after, read from its name (``step_0040.pt`` -> 40)."""
    return int(Path(path).stem.removeprefix("step_"))


def latest_checkpoint(folder: str | os.PathLike) -> Path:
    """The newest ``step_NNNN.pt`` in ``folder``: the one to resume from.

    Raises:
        FileNotFoundError: when the folder holds no checkpoint.
    """
    found = sorted(Path(folder).glob("step_*.pt"), key=checkpoint_step)
    if not found:
        raise FileNotFoundError(f"no step_*.pt checkpoint in {folder}")
    return found[-1]


PROJECT_RUN: dict[str, int | float] = {
    "steps": 150,
    "freeze_steps": 30,
    "lr": 1e-2,
    "encoder_lr": 3e-3,
    "batch_size": 16,
    "eval_every": 10,
}
"""The notebook's and the benchmark's training run for the pretrained segmenter (see :func:`train_segmenter`)."""
SCRATCH_RUN: dict[str, int | float] = {**PROJECT_RUN, "freeze_steps": 0, "encoder_lr": PROJECT_RUN["lr"]}
"""The same run from scratch: nothing to freeze, every parameter at the decoder's learning rate."""
DICE_THRESHOLD = 0.8
"""The held-out Dice that the pretrained segmenter reaches first on every seed we tried (0, 1, 2)."""


def training_frequencies() -> torch.Tensor:
    """The class frequencies of a 64-image sample of a training stream (seed 99, used by no run)."""
    _, masks = next(shape_batches(64, seed=99))
    return class_frequencies(masks)


def pretrained_segmenter(seed: int, frequencies: torch.Tensor, path: str | os.PathLike | None = None) -> Segmenter:
    """Steps 1 to 3: the architecture, the committed classifier's trunk loaded into it, the new parts initialized."""
    from course_utils import artifacts

    torch.manual_seed(seed)
    model = new_segmenter()
    load_encoder(model, artifacts.verify(CLASSIFIER_FILE) if path is None else path)
    init_decoder(model, frequencies)
    return model


def scratch_segmenter(seed: int, frequencies: torch.Tensor) -> Segmenter:
    """The same segmenter with nothing pretrained: a random encoder, the new parts initialized the same way."""
    torch.manual_seed(seed)
    model = new_segmenter()
    init_decoder(model, frequencies)
    return model


def steps_to_reach(history: dict[str, list[float]], threshold: float) -> int | None:
    """The first measured step at which the held-out Dice reached ``threshold`` (None: never)."""
    return next((s for s, d in zip(history["dice_step"], history["dice"], strict=True) if d >= threshold), None)


# --- step 6: ship it (safetensors + config) ----------------------------------------------------------------------


def export_model(model: nn.Module, folder: str | os.PathLike) -> None:
    """Write ``model.safetensors`` (every tensor of the state dict) and ``config.json`` (how to rebuild it).

    Args:
        model: the trained :class:`Segmenter`.
        folder: the folder to write into (created if needed).
    """
    ### BEGIN SOLUTION
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = model.head.conv.out_channels
    config = {  # the constructor's arguments, and what a user of the model must know
        "architecture": f"{type(model).__module__}.{type(model).__qualname__}",
        "base_channels": model.encoder.stem.double_conv[0].out_channels,
        "num_classes": num_classes,
        "class_names": list(data.CLASS_NAMES[:num_classes]),
        "image_size": IMAGE_SIZE,
        "torch": torch.__version__,
    }
    # safetensors stores plain, contiguous tensors only: copy out of channels-last or shared storage first.
    tensors = {key: value.detach().contiguous().clone() for key, value in model.state_dict().items()}
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    ### END SOLUTION


def load_exported(folder: str | os.PathLike) -> nn.Module:
    """Rebuild the segmenter that :func:`export_model` wrote to ``folder``: on the CPU, in eval mode."""
    ### BEGIN SOLUTION
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    model = Segmenter(ShapesClassifier(base_channels=config["base_channels"]), config["num_classes"])
    model.load_state_dict(load_file(folder / WEIGHTS_FILE, device="cpu"))  # strict: every key must fit
    return model.eval()  # BatchNorm with its running statistics, as at inference
    ### END SOLUTION


def output_checksum(model: nn.Module, num_images: int = 8) -> tuple[float, torch.Tensor]:
    """The model's eval-mode logits on the first ``num_images`` held-out images, and their sum (a checksum)."""
    images, _ = held_out_set(num_images)
    with torch.no_grad():
        logits = model.eval()(images)
    return logits.double().sum().item(), logits


def parameter_count(module: nn.Module) -> int:
    """How many numbers a module learns."""
    return sum(p.numel() for p in module.parameters())


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """True when two models' state dicts hold exactly the same keys and values."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
