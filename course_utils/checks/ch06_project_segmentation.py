"""Chapter 6 checkers: the project, step by step, each on small models of the checker's own.

The checkers that write files do so only inside a ``tempfile.TemporaryDirectory`` that they remove afterwards.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch codebase uses
from torch import nn

from course_utils.checking import Fail, describe, exercise, expect, first_line, make_check, step
from course_utils.checks.ch04_save_and_load import PoisonedModel, expect_failed_save_keeps_old_file
from course_utils.compare import expect_function, expect_module_class, matches
from course_utils.i18n import N_
from course_utils.solutions import ch06_project_segmentation as ref

_FILL = 0.37
"""What a checker writes into parameters first, so that 'left alone' and 'changed' are both visible."""


def _classifier(seed: int, base_channels: int = 4) -> ref.ShapesClassifier:
    """A small classifier with random weights and random BatchNorm statistics (so that copying them shows)."""
    torch.manual_seed(seed)
    model = ref.ShapesClassifier(base_channels=base_channels)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def _segmenter(seed: int, base_channels: int = 4, num_classes: int = 3) -> ref.Segmenter:
    return ref.Segmenter(_classifier(seed, base_channels), num_classes)


def _listing(keys: list[str], limit: int = 2) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (and {len(keys) - limit} more)" if len(keys) > limit else shown


# --- ch6.segmenter ---------------------------------------------------------------------------------------------

_SEG_CALL = "Segmenter(classifier, num_classes=3)"


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


@exercise("ch6.segmenter", title="A segmenter on a pretrained classifier's trunk", names=["Segmenter"], points=2)
def _check_segmenter(Segmenter: Any) -> str:  # noqa: N803 - the learner's class
    expect_module_class(Segmenter, "Segmenter")
    classifier = _classifier(seed=1)
    trunk = {k: v.clone() for k, v in classifier.state_dict().items() if not k.startswith("fc.")}
    reference = ref.Segmenter(copy.deepcopy(classifier), 3).eval()
    with step(f"calling {_SEG_CALL}"):
        model = Segmenter(classifier, 3)
    expect(isinstance(model, nn.Module), f"{_SEG_CALL} must build an nn.Module (got {describe(model)}).")
    with step("listing the segmenter's state dict"):
        state = model.state_dict()
    fc = [k for k in state if k.split(".")[-2:-1] == ["fc"] or ".fc." in f".{k}"]
    expect(
        not fc,
        f"The segmenter still holds the classifier's head ({_listing(fc)}): a segmenter never uses it, and an "
        "unused parameter makes DistributedDataParallel fail and wastes optimizer state.",
        "Keep only the trunk: the stem and the three stages, in self.encoder (not the pool and the fc).",
    )
    missing = [f"encoder.{k}" for k in trunk if f"encoder.{k}" not in state]
    if missing:
        found = [k for k in state if k.endswith("." + missing[0].split(".", 1)[-1])]
        why = "the trunk must sit in self.encoder under the classifier's names, so that its checkpoint loads into it."
        raise Fail(
            f"The segmenter's state dict has no {missing[0]} (it has {found[0]}): {why}"
            if found
            else f"The segmenter's state dict has no {missing[0]}: {why}",
            "self.encoder = nn.ModuleDict({'stem': classifier.stem, 'stage1': classifier.stage1, ...}).",
        )
    fresh = [k for k, v in trunk.items() if not torch.equal(state[f"encoder.{k}"], v)]
    expect(
        not fresh,
        f"The segmenter's encoder.{fresh[0] if fresh else ''} differs from the classifier's {fresh[0] if fresh else ''}"
        ": the encoder must be the classifier's trunk, with the weights it learned, not a new one.",
        "Take the modules from the classifier you are given (classifier.stem, classifier.stage1, ...).",
    )
    # The decoder and the head: the names the rest of the project uses.
    ref_state = reference.state_dict()
    absent = [k for k in ref_state if k not in state]
    extra = [k for k in state if k not in ref_state]
    if absent or extra:
        parts = [f"no {_listing(absent)}"] if absent else []
        parts += [f"unexpected {_listing(extra)}"] if extra else []
        raise Fail(
            f"The segmenter's state dict has {parts[0]} and {parts[1]}."
            if len(parts) == 2
            else f"The segmenter's state dict has {parts[0]}.",
            "self.decoder = nn.ModuleDict({'up1': Up(8C, 4C), 'up2': Up(4C, 2C), 'up3': Up(2C, C), 'refine': "
            "ResidualBlock(C, C)}) and self.head = OutConv(C, num_classes), with chapter 2's parts.",
        )
    for key, value in ref_state.items():
        expect(
            state[key].shape == value.shape,
            f"In the segmenter, {key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}.",
            "up1 = Up(8C, 4C), up2 = Up(4C, 2C), up3 = Up(2C, C), with C = classifier.channels[0].",
        )
    with step("loading the reference weights into the segmenter"):
        model.load_state_dict(ref_state)
    model.eval()
    x = _images()
    with torch.no_grad(), step("calling segmenter(x) on x of shape (2, 3, 32, 32)"):
        out = model(x)
        expected = reference(x)
    expect(
        isinstance(out, torch.Tensor),
        f"segmenter(x) must return a tensor of logits (got {describe(out)}).",
        "forward returns self.head(...), one tensor.",
    )
    expect(
        tuple(out.shape) == (2, 3, 32, 32),
        f"segmenter(x) returned shape {tuple(out.shape)}, expected (2, 3, 32, 32): one score per class and pixel.",
        "Go back up three times (up1, up2, up3), each with its skip, so the output has the input's H and W.",
    )
    if matches(out, expected.softmax(dim=1)):
        raise Fail(
            "segmenter(x) returns probabilities (a softmax over the classes): cross_entropy wants logits.",
            "Return self.head(x) with no activation after it.",
        )
    if not matches(out, expected):
        raise Fail(
            f"segmenter(x) differs from the reference (largest difference {(out - expected).abs().max().item():.3g})"
            " with the same weights.",
            "In forward: stem, stage1, stage2, stage3; then up1(x, skip from stage2), up2(x, skip from stage1), "
            "up3(x, skip from the stem); then refine, then head.",
        )
    model.train()
    with step("backpropagating through the segmenter"):
        model(x).sum().backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    expect(
        not unused,
        f"{unused[0] if unused else ''} gets no gradient: forward never uses it.",
        "Every part of the segmenter must be on the path from the input to the logits.",
    )
    return (
        "Segmenter keeps the classifier's trunk (its weights, under encoder.), drops its head, and matches the "
        "reference decoder and head: (2, 3, 32, 32) logits, and every parameter gets a gradient."
    )


check_segmenter = make_check("ch6.segmenter")


# --- ch6.load_encoder ------------------------------------------------------------------------------------------


class _Payload:
    """Pickles as a call that creates a marker file: it shows whether a loader runs code hidden in a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",))


_REPORT_KEYS = ("loaded", "unused", "missing")


def _expect_report(report: Any, expected: dict[str, list[str]], call: str) -> None:
    expect(
        isinstance(report, dict) and set(_REPORT_KEYS) <= set(report),
        f"{call} must return a dict with the keys loaded, unused and missing (got {describe(report)}).",
        "Return {'loaded': [...], 'unused': [...], 'missing': [...]}, each a sorted list of keys.",
    )
    for name in _REPORT_KEYS:
        value = report[name]
        expect(
            isinstance(value, list | tuple) and all(isinstance(k, str) for k in value),
            f"report[{name!r}] must be a list of keys (got {describe(value)}).",
            "Each entry of the report is a sorted list of state-dict keys.",
        )
    unused = sorted(k.removeprefix("encoder.") for k in report["unused"])
    found = {"loaded": list(report["loaded"]), "unused": unused, "missing": list(report["missing"])}
    meaning = {
        "loaded": "the segmenter's keys that were filled from the checkpoint",
        "unused": "the checkpoint's keys that were not loaded (the classifier's fc)",
        "missing": "the segmenter's keys that the checkpoint did not fill (decoder and head)",
    }
    for name in _REPORT_KEYS:
        wrong = [k for k in found[name] if k not in expected[name]]
        lacking = [k for k in expected[name] if k not in found[name]]
        if wrong or lacking:
            detail = f"has {_listing(wrong)}, which it should not" if wrong else f"lacks {_listing(lacking)}"
            raise Fail(f"report[{name!r}] {detail}.", f"report[{name!r}] lists {meaning[name]}.")
        expect(
            found[name] == sorted(found[name]) or name == "unused",
            f"report[{name!r}] has the right keys but is not sorted.",
            "Return sorted(...) lists, so that reports compare equal from run to run.",
        )


@exercise("ch6.load_encoder", title="Load what fits, report what did not", names=["load_encoder"], points=2)
def _check_load_encoder(load_encoder: Any) -> str:
    expect_function(load_encoder, "load_encoder", "load_encoder(model, path)")
    source = _classifier(seed=1)
    checkpoint = source.state_dict()
    model = _segmenter(seed=2)
    before = copy.deepcopy(model.state_dict())
    expected_loaded = sorted(f"encoder.{k}" for k in checkpoint if not k.startswith("fc."))
    expected = {
        "loaded": expected_loaded,
        "unused": sorted(k for k in checkpoint if k.startswith("fc.")),
        "missing": sorted(k for k in before if k not in expected_loaded),
    }
    call = "load_encoder(segmenter, path)"
    with tempfile.TemporaryDirectory(prefix="course_ch6_") as scratch:
        path = Path(scratch) / "classifier.pt"
        torch.save(checkpoint, path)
        try:
            with step(f"calling {call} with a classifier's checkpoint"):
                report = load_encoder(model, str(path))
        except Fail as failure:
            cause = str(failure.__context__)
            if "Unexpected key" in cause or "Missing key" in cause:
                raise Fail(
                    f"{call} raised RuntimeError: the checkpoint's keys and the segmenter's do not all match "
                    "(strict loading).",
                    "Load only what fits: add the 'encoder.' prefix, then keep the entries whose key and shape "
                    "match (chapter 4's load_matching), or load into model.encoder with strict=False.",
                ) from None
            raise
        state = model.state_dict()
        # Only entries that differ between the checkpoint and the model show a copy (fresh BatchNorms agree).
        telling = [k for k in expected_loaded if not torch.equal(before[k], checkpoint[k.removeprefix("encoder.")])]
        copied = [k for k in telling if torch.equal(state[k], checkpoint[k.removeprefix("encoder.")])]
        if not copied:
            raise Fail(
                f"After {call} the encoder holds none of the checkpoint's weights: its keys are encoder.stem..., "
                "the checkpoint's are stem... .",
                "Add the prefix before loading: {'encoder.' + key: value for key, value in state.items()}.",
            )
        left = [k for k in telling if k not in copied]
        expect(
            not left,
            f"After {call} the segmenter's {left[0] if left else ''} was not loaded, although it fits.",
            "Load every entry whose key and shape match; buffers (running_mean, ...) too.",
        )
        changed = [k for k in expected["missing"] if not torch.equal(state[k], before[k])]
        expect(
            not changed,
            f"After {call} the segmenter's {changed[0] if changed else ''} changed: what the checkpoint does not "
            "fill must stay as it was.",
            "Do not re-initialize or reset the decoder or the head when loading the encoder.",
        )
        _expect_report(report, expected, call)

        marker = Path(scratch) / "payload-ran"
        hidden = Path(scratch) / "hidden.pt"
        torch.save({**checkpoint, "note": _Payload(marker)}, hidden)
        try:
            with step(f"calling {call} on a file that hides code"):
                load_encoder(_segmenter(seed=2), str(hidden))
        except Fail:
            pass  # refusing the file is right; the marker tells whether its code ran
        expect(
            not marker.exists(),
            f"{call} ran code hidden in a checkpoint (our harmless payload created a file): it loads with "
            "weights_only=False.",
            "torch.load(path, map_location='cpu', weights_only=True): a checkpoint from elsewhere is data, not code.",
        )
    return (
        f"load_encoder fills the {len(expected_loaded)} encoder entries, leaves the decoder and head alone, reports "
        "fc as unused and the new parts as missing, and never runs code from the file."
    )


check_load_encoder = make_check("ch6.load_encoder")


# --- ch6.init_decoder ------------------------------------------------------------------------------------------

_FREQUENCIES = (0.88, 0.05, 0.04, 0.03)


def _filled_segmenter() -> ref.Segmenter:
    """A segmenter with 4 classes and base 16 (so a decoder conv has 73,728 weights), decoder and head filled."""
    model = _segmenter(seed=3, base_channels=16, num_classes=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith("encoder."):
                parameter.fill_(_FILL)
    return model


@exercise("ch6.init_decoder", title="Initialize the new parts on purpose", names=["init_decoder"], points=2)
def _check_init_decoder(init_decoder: Any) -> str:
    expect_function(init_decoder, "init_decoder", "init_decoder(model, class_frequencies)")
    model = _filled_segmenter()
    encoder_before = copy.deepcopy(model.encoder.state_dict())
    parameters_before = dict(model.named_parameters())
    frequencies = torch.tensor(_FREQUENCIES)
    given = frequencies.clone()
    call = "init_decoder(model, class_frequencies)"
    with step(f"calling {call} with frequencies {list(_FREQUENCIES)}"):
        init_decoder(model, frequencies)
    expect(
        torch.equal(frequencies, given),
        f"{call} changed the class_frequencies tensor it was given (now "
        f"{[round(v, 3) for v in frequencies.tolist()]}).",
        "Compute with out-of-place operations (frequencies.log(), not frequencies.log_()).",
    )
    encoder_after = model.encoder.state_dict()
    changed = [k for k, v in encoder_before.items() if not torch.equal(encoder_after[k], v)]
    expect(
        not changed,
        f"{call} changed the pretrained encoder (encoder.{changed[0] if changed else ''}): it would throw away "
        "what the classifier learned.",
        "Initialize model.decoder and model.head only: model.decoder.apply(init_weights), not model.apply(...).",
    )
    after = dict(model.named_parameters())
    for name, parameter in parameters_before.items():
        expect(
            after.get(name) is parameter,
            f"After {call}, {name} is a new Parameter object (or gone): an optimizer built before would not see it.",
            "Fill the existing parameters in place (nn.init.*_ functions, or copy_ under torch.no_grad()).",
        )
        expect(parameter.requires_grad, f"After {call}, {name} no longer requires grad.")
    decoder = model.decoder
    weight = decoder.up1.conv.double_conv[0].weight.detach()
    out_channels, _, kh, kw = weight.shape
    expected_std = math.sqrt(2.0 / (out_channels * kh * kw))
    fan_in_std = math.sqrt(2.0 / (weight.shape[1] * kh * kw))
    std = weight.double().std().item()
    if torch.equal(weight, torch.full_like(weight, _FILL)):
        raise Fail(
            f"{call} left the decoder's convolutions as they were (decoder.up1's first conv is still {_FILL}).",
            "model.decoder.apply(init_weights), with chapter 5's init_weights (Kaiming fan_out for Conv2d).",
        )
    if abs(std - fan_in_std) < 0.04 * fan_in_std:
        raise Fail(
            f"decoder.up1's first conv has std {std:.4f}: Kaiming with fan_in; fan_out was asked (std "
            f"{expected_std:.4f}).",
            "chapter 5's init_weights: kaiming_normal_(weight, mode='fan_out', nonlinearity='relu').",
        )
    expect(
        abs(std - expected_std) < 0.04 * expected_std,
        f"decoder.up1's first conv has std {std:.4f}, expected {expected_std:.4f} = sqrt(2 / fan_out).",
        "model.decoder.apply(init_weights), with chapter 5's init_weights (Kaiming fan_out for Conv2d).",
    )
    refine = decoder.refine
    if bool((refine.bn1.weight == 0).all()) and not bool((refine.bn2.weight == 0).all()):
        raise Fail(
            "decoder.refine.bn1.weight is zero, bn2.weight is not: the block's last BatchNorm is bn2.",
            "chapter 5's zero_init_residual(model.decoder), which zeroes bn2.weight.",
        )
    expect(
        bool((refine.bn2.weight == 0).all()),
        "decoder.refine.bn2.weight is not zero: the residual block does not start as its shortcut.",
        "chapter 5's zero_init_residual(model.decoder), after init_weights (which sets BatchNorm weights to 1).",
    )
    expect(
        bool((refine.bn1.weight == 1).all()) and bool((decoder.up1.conv.double_conv[1].weight == 1).all()),
        "The decoder's other BatchNorm weights must be 1 (init_weights), only refine.bn2.weight 0.",
        "model.decoder.apply(init_weights), then zero_init_residual(model.decoder).",
    )
    head_weight = model.head.conv.weight.detach()
    head_std = head_weight.double().std().item()
    expect(
        not torch.equal(head_weight, torch.full_like(head_weight, _FILL)) and head_std <= 0.02,
        f"The head's weight has std {head_std:.3f} (mean {head_weight.mean().item():.3f}): it must start tiny "
        "(std 0.01) or zero, so that the bias alone sets the first predictions.",
        "nn.init.normal_(model.head.conv.weight, std=0.01).",
    )
    bias = model.head.conv.bias.detach().double()
    log_prior = frequencies.double().log()
    prior = bias.softmax(dim=0)
    if not torch.allclose(prior, frequencies.double(), atol=1e-4):
        prior_text = [round(v, 3) for v in prior.tolist()]
        hint = "Set the bias to the log of the frequencies: softmax(log p) = p."
        if torch.allclose(bias, frequencies.double(), atol=1e-6):
            hint = "The bias is the frequencies themselves; it must be their log: softmax(log p) = p."
        elif torch.allclose(bias, -log_prior, atol=1e-5):
            hint = "The bias is -log p: the sign is the wrong way round (the rarest class would start ahead)."
        elif torch.allclose(bias, (frequencies.double() / (1 - frequencies.double())).log(), atol=1e-5):
            hint = (
                "log(p / (1 - p)) is the prior bias for a sigmoid per class (focal-loss paper); the head's classes "
                "share one softmax, for which it is log p."
            )
        elif bool((bias == _FILL).all()):
            hint = "The head's bias was left as it was: set it to the log of the class frequencies."
        raise Fail(
            f"With the head's bias, the first predictions are {prior_text}, not the class frequencies "
            f"{list(_FREQUENCIES)}.",
            hint,
        )
    return (
        "init_decoder leaves the encoder alone, gives the decoder Kaiming fan_out with refine.bn2 at zero, and "
        "starts the head at the class prior (bias log p, tiny weights)."
    )


check_init_decoder = make_check("ch6.init_decoder")


# --- ch6.optimizer ---------------------------------------------------------------------------------------------


def _groups_by_parameter(optimizer: torch.optim.Optimizer) -> dict[int, list[float]]:
    found: dict[int, list[float]] = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            found.setdefault(id(parameter), []).append(group["lr"])
    return found


@exercise("ch6.optimizer", title="Freeze, then fine-tune with per-group learning rates", names=["make_optimizer"])
def _check_optimizer(make_optimizer: Any) -> str:
    expect_function(make_optimizer, "make_optimizer", "make_optimizer(model, lr, encoder_lr=None)")
    model = _segmenter(seed=4)
    encoder = dict(model.encoder.named_parameters())
    others = {n: p for n, p in model.named_parameters() if not n.startswith("encoder.")}
    call = "make_optimizer(model, lr=0.01, encoder_lr=None)"
    with step(f"calling {call}"):
        frozen = make_optimizer(model, 0.01, None)
    expect(
        isinstance(frozen, torch.optim.Optimizer),
        f"{call} must return a torch.optim optimizer (got {describe(frozen)}).",
        "return torch.optim.AdamW(...).",
    )
    trainable = [n for n, p in encoder.items() if p.requires_grad]
    expect(
        not trainable,
        f"After {call} the encoder's {trainable[0] if trainable else ''} still requires grad: it is not frozen "
        "(model.eval() and torch.no_grad() elsewhere do not freeze parameters).",
        "for p in model.encoder.parameters(): p.requires_grad_(False).",
    )
    lost = [n for n, p in others.items() if not p.requires_grad]
    expect(not lost, f"After {call}, {lost[0] if lost else ''} does not require grad: only the encoder is frozen.")
    lrs = _groups_by_parameter(frozen)
    outside = [n for n, p in others.items() if id(p) not in lrs]
    expect(
        not outside,
        f"The optimizer from {call} does not hold {outside[0] if outside else ''}: the decoder and the head must "
        "train.",
        "Pass the parameters of the model you are given, not of a global one: those outside model.encoder.",
    )
    wrong = [n for n, p in others.items() if lrs[id(p)] != [0.01]]
    expect(
        not wrong,
        f"In the optimizer from {call}, {wrong[0] if wrong else ''} has learning rate(s) "
        f"{lrs[id(others[wrong[0]])] if wrong else ''}, expected 0.01.",
        "Give the decoder and the head the learning rate lr.",
    )

    call = "make_optimizer(model, lr=0.01, encoder_lr=0.001)"
    try:
        with step(f"calling {call} (after freezing)"):
            tuned = make_optimizer(model, 0.01, 0.001)
    except Fail as failure:
        if "more than one parameter group" in str(failure.__context__):
            raise Fail(
                f"{call} puts some parameters in two groups (torch.optim refuses it).",
                "The second group is the parameters outside model.encoder, not model.parameters().",
            ) from None
        raise
    expect(
        isinstance(tuned, torch.optim.Optimizer),
        f"{call} must return a torch.optim optimizer (got {describe(tuned)}).",
    )
    still = [n for n, p in encoder.items() if not p.requires_grad]
    expect(
        not still,
        f"After {call} the encoder's {still[0] if still else ''} still does not require grad: unfreezing must turn "
        "gradients back on, or the encoder's group never learns.",
        "for p in model.encoder.parameters(): p.requires_grad_(True) when encoder_lr is given.",
    )
    lrs = _groups_by_parameter(tuned)
    outside = [n for n, p in model.named_parameters() if id(p) not in lrs]
    expect(
        not outside,
        f"The optimizer from {call} does not hold {outside[0] if outside else ''}: after unfreezing, every "
        "parameter trains.",
    )
    swapped = all(lrs[id(p)] == [0.01] for p in encoder.values()) and all(
        lrs[id(p)] == [0.001] for p in others.values()
    )
    expect(
        not swapped,
        f"In the optimizer from {call} the encoder has lr 0.01 and the decoder 0.001: the other way round.",
        "The pretrained encoder gets the small encoder_lr; the new decoder and head get lr.",
    )
    wrong = [n for n, p in encoder.items() if lrs[id(p)] != [0.001]]
    expect(
        not wrong,
        f"In the optimizer from {call}, encoder.{wrong[0] if wrong else ''} has learning rate(s) "
        f"{lrs[id(encoder[wrong[0]])] if wrong else ''}, expected 0.001.",
        "A parameter group of its own for the encoder: {'params': model.encoder.parameters(), 'lr': encoder_lr}.",
    )
    wrong = [n for n, p in others.items() if lrs[id(p)] != [0.01]]
    expect(
        not wrong,
        f"In the optimizer from {call}, {wrong[0] if wrong else ''} has learning rate(s) "
        f"{lrs[id(others[wrong[0]])] if wrong else ''}, expected 0.01.",
        "The decoder and the head keep the learning rate lr.",
    )
    return (
        "make_optimizer freezes the encoder (requires_grad off) and trains the rest at lr; unfrozen, it turns the "
        "encoder's gradients back on in a group of its own at encoder_lr."
    )


check_optimizer = make_check("ch6.optimizer")


# --- ch6.checkpoint --------------------------------------------------------------------------------------------

_SAVED_STEP = 3


def _tiny_run(seed: int, lr: float) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(
        [{"params": model[:2].parameters(), "lr": lr / 10}, {"params": model[3].parameters(), "lr": lr}]
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: ref.warmup_cosine(s, 12, warmup=4))
    return model, optimizer, scheduler


def _tiny_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(4)
    return [(torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)) for _ in range(6)]


def _tiny_train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batches: list) -> list[float]:
    model.train()
    losses = []
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def _read(path: Path, what: str) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise Fail(
            f"{what} does not load with torch.load(weights_only=True) ({type(error).__name__}: {first_line(error)}).",
            "Save state dicts (model, optimizer, scheduler) and the step, never the objects themselves.",
        ) from None


@exercise(
    "ch6.checkpoint",
    title="Save during training, resume exactly",
    names=["save_training_state", "load_training_state"],
    points=3,
)
def _check_checkpoint(save_training_state: Any, load_training_state: Any) -> str:
    expect_function(
        save_training_state, "save_training_state", "save_training_state(path, model, optimizer, scheduler, step)"
    )
    expect_function(
        load_training_state, "load_training_state", "load_training_state(path, model, optimizer, scheduler)"
    )
    batches = _tiny_batches()
    save_call = f"save_training_state(path, model, optimizer, scheduler, step={_SAVED_STEP})"
    with tempfile.TemporaryDirectory(prefix="course_ch6_") as scratch:
        path = Path(scratch) / "last.pt"
        model, optimizer, scheduler = _tiny_run(seed=0, lr=0.05)
        _tiny_train(model, optimizer, scheduler, batches[:_SAVED_STEP])
        with step(f"calling {save_call}"):
            save_training_state(path, model, optimizer, scheduler, _SAVED_STEP)
        expect(path.is_file(), f"{save_call} did not create the file at path.")
        _read(path, "The file save_training_state wrote")
        saved_lr, saved_epoch = scheduler.get_last_lr(), scheduler.last_epoch
        uninterrupted = _tiny_train(model, optimizer, scheduler, batches[_SAVED_STEP:])

        fresh, fresh_optimizer, fresh_scheduler = _tiny_run(seed=1, lr=0.05)
        with step("calling load_training_state(path, new_model, new_optimizer, new_scheduler)"):
            done = load_training_state(str(path), fresh, fresh_optimizer, fresh_scheduler)
        expect(
            isinstance(done, numbers.Integral) and not isinstance(done, bool) and done == _SAVED_STEP,
            f"load_training_state returned {describe(done)}; the state was saved after step {_SAVED_STEP}.",
            "Store the step in the checkpoint and return int(checkpoint['step']): training goes on from there.",
        )
        expect(
            fresh_optimizer.state_dict()["state"],
            "After load_training_state the optimizer has no state (AdamW's moments and step counts are empty).",
            "Save optimizer.state_dict() and restore it with optimizer.load_state_dict(...).",
        )
        resumed_lr = fresh_scheduler.get_last_lr()
        expect(
            [round(v, 12) for v in resumed_lr] == [round(v, 12) for v in saved_lr]
            and fresh_scheduler.last_epoch == saved_epoch,
            f"After load_training_state the scheduler is at step {fresh_scheduler.last_epoch} with learning rates "
            f"{[round(v, 5) for v in resumed_lr]}; the saved one was at step {_SAVED_STEP} with "
            f"{[round(v, 5) for v in saved_lr]}: the schedule would restart.",
            "Save scheduler.state_dict() too, and restore it with scheduler.load_state_dict(...).",
        )
        with step("training the restored model, optimizer and scheduler"):
            resumed = _tiny_train(fresh, fresh_optimizer, fresh_scheduler, batches[_SAVED_STEP:])
        if resumed != uninterrupted:
            raise Fail(
                f"Resumed training gave the losses {', '.join(f'{v:.4f}' for v in resumed)}; uninterrupted "
                f"training gave {', '.join(f'{v:.4f}' for v in uninterrupted)}.",
                "Restore everything training changes: model (with its buffers), optimizer and scheduler.",
            )

        expect_failed_save_keeps_old_file(
            lambda: save_training_state(str(path), PoisonedModel(fresh), fresh_optimizer, fresh_scheduler, 6),
            path,
            "calling save_training_state on a model whose state cannot be written",
            "Write to a temporary file in the same folder, then os.replace(temporary, path) (chapter 4).",
        )
    return (
        "The training state restores model, optimizer, scheduler and step; resumed training matches uninterrupted "
        "training loss for loss; a failed save keeps the previous checkpoint."
    )


check_checkpoint = make_check("ch6.checkpoint")


# --- ch6.export ------------------------------------------------------------------------------------------------


def _export_model() -> ref.Segmenter:
    """A 3-class, base-4 segmenter (not the defaults), trained state faked, in channels-last memory format."""
    model = _segmenter(seed=5, base_channels=4, num_classes=3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.to(memory_format=torch.channels_last).train()


def _safetensors_keys(path: Path) -> list[str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return list(file.keys())
    except Exception:
        return None


@exercise("ch6.export", title="Ship it: safetensors plus a config", names=["export_model", "load_exported"], points=2)
def _check_export(export_model: Any, load_exported: Any) -> str:
    expect_function(export_model, "export_model", "export_model(model, folder)")
    expect_function(load_exported, "load_exported", "load_exported(folder)")
    model = _export_model()
    x = _images(2)
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x)
    with tempfile.TemporaryDirectory(prefix="course_ch6_") as scratch:
        folder = Path(scratch) / "shipped"
        try:
            with step("calling export_model(model, folder) on a model in channels-last memory format"):
                export_model(model, folder)
        except Fail as failure:
            if "non contiguous" in str(failure.__context__) or "contiguous" in failure.message:
                raise Fail(
                    "export_model failed: safetensors refuses non-contiguous tensors, and a model in channels-last "
                    "memory format (or one with shared storage) has them.",
                    "Save {key: value.contiguous() for key, value in model.state_dict().items()}.",
                ) from None
            raise
        weights, config = folder / ref.WEIGHTS_FILE, folder / ref.CONFIG_FILE
        files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        expect(
            weights.is_file() and config.is_file(),
            f"export_model must write {ref.WEIGHTS_FILE} and {ref.CONFIG_FILE} into the folder (found: "
            f"{', '.join(files) or N_('nothing')}).",
            "safetensors.torch.save_file(tensors, folder / 'model.safetensors'); json for the config.",
        )
        keys = _safetensors_keys(weights)
        expect(keys is not None, f"{ref.WEIGHTS_FILE} is not a safetensors file.", "Write it with save_file.")
        lacking = [k for k in model.state_dict() if k not in keys]
        expect(
            not lacking,
            f"{ref.WEIGHTS_FILE} lacks {_listing(lacking)}: without the BatchNorm buffers the shipped model cannot "
            "predict like the trained one.",
            "Save model.state_dict() (parameters and buffers), not named_parameters().",
        )
        try:
            parsed = json.loads(config.read_text(encoding="utf-8"))
        except Exception as error:
            raise Fail(
                f"{ref.CONFIG_FILE} is not valid JSON ({first_line(error)}).", "Write it with json.dumps."
            ) from None
        expect(
            isinstance(parsed, dict),
            f"{ref.CONFIG_FILE} must hold a JSON object (got {describe(parsed)}).",
            'A dict such as {"num_classes": 3, "base_channels": 4, ...}.',
        )
        try:
            with step("calling load_exported(folder)"):
                loaded = load_exported(str(folder))
        except Fail as failure:
            cause = str(failure.__context__)
            if "size mismatch" in cause or "Missing key" in cause or "Unexpected key" in cause:
                raise Fail(
                    "load_exported built a model that does not fit the exported weights (load_state_dict: size "
                    "mismatch or missing keys); we exported a 3-class segmenter with base_channels 4.",
                    "Build the model from what config.json says (num_classes, base_channels), not from defaults.",
                ) from None
            raise
        expect(
            isinstance(loaded, nn.Module),
            f"load_exported must return the rebuilt model (got {describe(loaded)}).",
            "return the model, after load_state_dict.",
        )
        expect(
            not loaded.training,
            "load_exported returned the model in training mode: its BatchNorm layers would normalize with each "
            "batch's statistics instead of the learned ones.",
            "Return model.eval(): a shipped model is for inference.",
        )
        with torch.no_grad(), step("calling the loaded model on x of shape (2, 3, 32, 32)"):
            out = loaded(x)
        expect(
            matches(out, expected, atol=1e-6),
            "The reloaded model's outputs differ from the exported model's "
            + (
                f"(largest difference {(out - expected).abs().max().item():.3g})."
                if isinstance(out, torch.Tensor) and out.shape == expected.shape
                else f"(got {describe(out)}, expected a tensor of shape {tuple(expected.shape)})."
            ),
            "Rebuild the architecture from config.json, load every tensor strictly, and return it in eval mode.",
        )
    return (
        "export_model writes model.safetensors (every tensor, buffers included) and config.json; load_exported "
        "rebuilds a 3-class, base-4 model from them, in eval mode, with identical outputs."
    )


check_export = make_check("ch6.export")
