"""Chapter 6: the references pass their checks, real mistakes fail with the intended message, answers in other
styles pass, and the project's helpers (the committed classifier, resuming, shipping) work for real."""

import copy
import io
import json
import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from course_utils import artifacts, checking, pretrained_classifier
from course_utils.paths import DATA_DIR, REPO_DIR
from course_utils.solutions import ch02_model_blocks as ch2
from course_utils.solutions import ch04_save_and_load as ch4
from course_utils.solutions import ch05_initialization as ch5
from course_utils.solutions import ch06_project_segmentation as ref


def _run(exercise_id: str, **names) -> checking.CheckResult:
    return checking.run(exercise_id, names)


def _expect_fail(result: checking.CheckResult, *fragments: str) -> None:
    assert result.status == "fail", str(result)
    for fragment in fragments:
        assert fragment in result.message + " " + (result.hint or ""), str(result)


@pytest.mark.parametrize("exercise_id", [ex.id for ex in checking.chapter_exercises(6)])
def test_the_reference_passes(exercise_id):
    ex = checking.registry()[exercise_id]
    result = checking.run(exercise_id, {name: getattr(ref, name) for name in ex.names})
    assert result.status == "pass", str(result)


def test_the_chapter_has_at_least_five_checked_exercises():
    assert len(checking.chapter_exercises(6)) >= 5


# --- ch6.segmenter ------------------------------------------------------------------------------------------


class _SegmenterBase(nn.Module):
    """The reference layout, with hooks for one mistake at a time."""

    skips = ("skip2", "skip1", "skip0")
    softmax = False
    refine = True

    def __init__(self, classifier, num_classes):
        super().__init__()
        c1, c2, c3, c4 = classifier.channels
        self.encoder = nn.ModuleDict(
            OrderedDict(
                stem=classifier.stem, stage1=classifier.stage1, stage2=classifier.stage2, stage3=classifier.stage3
            )
        )
        self.decoder = nn.ModuleDict(
            OrderedDict(up1=ch2.Up(c4, c3), up2=ch2.Up(c3, c2), up3=ch2.Up(c2, c1), refine=ch2.ResidualBlock(c1, c1))
        )
        self.head = ch2.OutConv(c1, num_classes)

    def forward(self, x):
        skips = {}
        skips["skip0"] = self.encoder.stem(x)
        skips["skip1"] = self.encoder.stage1(skips["skip0"])
        skips["skip2"] = self.encoder.stage2(skips["skip1"])
        x = self.encoder.stage3(skips["skip2"])
        x = self.decoder.up1(x, skips[self.skips[0]])
        x = self.decoder.up2(x, skips[self.skips[1]])
        x = self.decoder.up3(x, skips[self.skips[2]])
        if self.refine:
            x = self.decoder.refine(x)
        logits = self.head(x)
        return logits.softmax(dim=1) if self.softmax else logits


def test_a_segmenter_in_the_reference_layout_passes():
    assert _run("ch6.segmenter", Segmenter=_SegmenterBase).status == "pass"


def test_a_segmenter_that_copies_the_classifier_and_deletes_its_head_passes():
    class Segmenter(_SegmenterBase):
        def __init__(self, classifier, num_classes):
            super().__init__(classifier, num_classes)
            trunk = copy.deepcopy(classifier)
            del trunk.fc, trunk.pool
            self.encoder = trunk  # the same keys: encoder.stem..., encoder.stage1...

    assert _run("ch6.segmenter", Segmenter=Segmenter).status == "pass"


def test_a_segmenter_with_a_sequential_encoder_passes():
    class Segmenter(_SegmenterBase):
        def __init__(self, classifier, num_classes):
            super().__init__(classifier, num_classes)
            names = ("stem", "stage1", "stage2", "stage3")
            self.encoder = nn.Sequential(OrderedDict((n, getattr(classifier, n)) for n in names))

        def forward(self, x):
            skips = []
            for stage in self.encoder:
                x = stage(x)
                skips.append(x)
            x = self.decoder.up1(skips[3], skips[2])
            x = self.decoder.up2(x, skips[1])
            x = self.decoder.up3(x, skips[0])
            return self.head(self.decoder.refine(x))

    assert _run("ch6.segmenter", Segmenter=Segmenter).status == "pass"


def test_a_segmenter_that_keeps_the_classifiers_fc_fails():
    class Segmenter(_SegmenterBase):
        def __init__(self, classifier, num_classes):
            super().__init__(classifier, num_classes)
            self.encoder = classifier  # pool and fc come along

    _expect_fail(_run("ch6.segmenter", Segmenter=Segmenter), "still holds the classifier's head", "encoder.fc.weight")


def test_a_segmenter_with_a_fresh_encoder_fails():
    class Segmenter(_SegmenterBase):
        def __init__(self, classifier, num_classes):
            super().__init__(ref.ShapesClassifier(base_channels=classifier.channels[0]), num_classes)

    _expect_fail(_run("ch6.segmenter", Segmenter=Segmenter), "differs from the classifier's", "not a new one")


def test_a_segmenter_with_the_trunk_under_other_names_fails():
    class Segmenter(_SegmenterBase):
        def __init__(self, classifier, num_classes):
            super().__init__(classifier, num_classes)
            self.backbone = self.encoder
            del self.encoder

        def forward(self, x):
            self.encoder = self.backbone
            return super().forward(x)

    _expect_fail(_run("ch6.segmenter", Segmenter=Segmenter), "has no encoder.stem", "it has backbone.stem")


def test_a_segmenter_with_the_skips_in_the_wrong_order_fails():
    class Segmenter(_SegmenterBase):
        skips = ("skip0", "skip1", "skip2")

    _expect_fail(_run("ch6.segmenter", Segmenter=Segmenter), "raised RuntimeError")


def test_a_segmenter_that_skips_the_refine_block_fails():
    class Segmenter(_SegmenterBase):
        refine = False

    _expect_fail(_run("ch6.segmenter", Segmenter=Segmenter), "differs from the reference", "then refine")


def test_a_segmenter_that_returns_probabilities_fails():
    class Segmenter(_SegmenterBase):
        softmax = True

    _expect_fail(_run("ch6.segmenter", Segmenter=Segmenter), "returns probabilities")


def test_a_segmenter_that_stops_at_half_resolution_fails():
    class Segmenter(_SegmenterBase):
        def forward(self, x):
            return F.max_pool2d(super().forward(x), 2)  # a stray pooling: one Up short of the input's size

    _expect_fail(_run("ch6.segmenter", Segmenter=Segmenter), "returned shape (2, 3, 16, 16)")


def test_segmenter_stub_is_not_attempted():
    class Segmenter(nn.Module):
        def __init__(self, classifier, num_classes):
            raise NotImplementedError

    assert _run("ch6.segmenter", Segmenter=Segmenter).status == "not_attempted"


# --- ch6.load_encoder ---------------------------------------------------------------------------------------


def test_load_encoder_into_the_encoder_with_strict_false_passes():
    def load_encoder(model, path):
        state = torch.load(path, weights_only=True)
        result = model.encoder.load_state_dict(state, strict=False)
        loaded = sorted(f"encoder.{k}" for k in state if k not in result.unexpected_keys)
        return {
            "loaded": loaded,
            "unused": sorted(result.unexpected_keys),
            "missing": sorted(k for k in model.state_dict() if k not in loaded),
        }

    assert _run("ch6.load_encoder", load_encoder=load_encoder).status == "pass"


def test_load_encoder_without_the_prefix_fails():
    def load_encoder(model, path):
        state = torch.load(path, weights_only=True)
        skipped = ch4.load_matching(model, state)
        return {"loaded": [], "unused": skipped, "missing": sorted(model.state_dict())}

    _expect_fail(
        _run("ch6.load_encoder", load_encoder=load_encoder), "holds none of the checkpoint's weights", "'encoder.'"
    )


def test_load_encoder_that_loads_strictly_fails():
    def load_encoder(model, path):
        state = torch.load(path, weights_only=True)
        model.load_state_dict({f"encoder.{k}": v for k, v in state.items()})

    _expect_fail(_run("ch6.load_encoder", load_encoder=load_encoder), "strict loading", "load_matching")


def test_load_encoder_that_swaps_unused_and_missing_fails():
    def load_encoder(model, path):
        report = ref.load_encoder(model, path)
        return {"loaded": report["loaded"], "unused": report["missing"], "missing": report["unused"]}

    _expect_fail(_run("ch6.load_encoder", load_encoder=load_encoder), "report['unused'] has decoder.")


def test_load_encoder_that_returns_nothing_fails():
    def load_encoder(model, path):
        ref.load_encoder(model, path)

    _expect_fail(_run("ch6.load_encoder", load_encoder=load_encoder), "must return a dict", "got None")


def test_load_encoder_that_reinitializes_the_decoder_fails():
    def load_encoder(model, path):
        model.decoder.apply(ch5.init_weights)
        return ref.load_encoder(model, path)

    _expect_fail(_run("ch6.load_encoder", load_encoder=load_encoder), "changed: what the checkpoint does not fill")


def test_load_encoder_with_weights_only_false_runs_hidden_code_and_fails():
    def load_encoder(model, path):
        state = torch.load(path, weights_only=False)
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        return ref.load_encoder(model, buffer)

    _expect_fail(_run("ch6.load_encoder", load_encoder=load_encoder), "ran code hidden in a checkpoint")


def test_load_encoder_stub_is_not_attempted():
    def load_encoder(model, path):
        raise NotImplementedError

    assert _run("ch6.load_encoder", load_encoder=load_encoder).status == "not_attempted"


# --- ch6.init_decoder ---------------------------------------------------------------------------------------


def _init_decoder_with(apply_to="decoder", zero=True, bias=None, head_std=0.01):
    def init_decoder(model, class_frequencies):
        (model if apply_to == "model" else model.decoder).apply(ch5.init_weights)
        if zero:
            ch5.zero_init_residual(model.decoder)
        nn.init.normal_(model.head.conv.weight, std=head_std)
        with torch.no_grad():
            model.head.conv.bias.copy_(bias(class_frequencies) if bias else class_frequencies.log())

    return init_decoder


def test_init_decoder_with_a_zero_head_weight_and_a_shifted_bias_passes():
    def init_decoder(model, class_frequencies):
        for module in model.decoder.modules():
            ch5.init_weights(module)
        for module in model.decoder.modules():
            if isinstance(module, ch2.ResidualBlock):
                nn.init.zeros_(module.bn2.weight)
        nn.init.zeros_(model.head.conv.weight)
        with torch.no_grad():  # softmax does not change when every logit moves by the same amount
            model.head.conv.bias.copy_(torch.log(class_frequencies / class_frequencies.max()))

    assert _run("ch6.init_decoder", init_decoder=init_decoder).status == "pass"


def test_init_decoder_applied_to_the_whole_model_fails():
    _expect_fail(
        _run("ch6.init_decoder", init_decoder=_init_decoder_with(apply_to="model")),
        "changed the pretrained encoder",
        "not model.apply",
    )


def test_init_decoder_with_the_frequencies_as_bias_fails():
    _expect_fail(_run("ch6.init_decoder", init_decoder=_init_decoder_with(bias=lambda p: p)), "must be their log")


def test_init_decoder_with_the_sigmoid_prior_fails():
    _expect_fail(
        _run("ch6.init_decoder", init_decoder=_init_decoder_with(bias=lambda p: torch.log(p / (1 - p)))),
        "prior bias for a sigmoid",
    )


def test_init_decoder_with_the_sign_of_the_prior_flipped_fails():
    _expect_fail(_run("ch6.init_decoder", init_decoder=_init_decoder_with(bias=lambda p: -p.log())), "sign")


def test_init_decoder_without_zero_init_residual_fails():
    _expect_fail(_run("ch6.init_decoder", init_decoder=_init_decoder_with(zero=False)), "refine.bn2.weight is not zero")


def test_init_decoder_with_a_default_size_head_fails():
    _expect_fail(_run("ch6.init_decoder", init_decoder=_init_decoder_with(head_std=1.0)), "must start tiny")


def test_init_decoder_that_takes_the_log_in_place_fails():
    def init_decoder(model, class_frequencies):
        _init_decoder_with(bias=lambda p: p.log_())(model, class_frequencies)

    _expect_fail(_run("ch6.init_decoder", init_decoder=init_decoder), "changed the class_frequencies tensor")


def test_init_decoder_that_replaces_the_head_bias_fails():
    def init_decoder(model, class_frequencies):
        _init_decoder_with()(model, class_frequencies)
        model.head.conv.bias = nn.Parameter(class_frequencies.log())

    _expect_fail(_run("ch6.init_decoder", init_decoder=init_decoder), "head.conv.bias is a new Parameter")


def test_init_decoder_stub_is_not_attempted():
    def init_decoder(model, class_frequencies):
        raise NotImplementedError

    assert _run("ch6.init_decoder", init_decoder=init_decoder).status == "not_attempted"


# --- ch6.optimizer ------------------------------------------------------------------------------------------


def test_make_optimizer_with_sgd_and_filtered_parameters_passes():
    def make_optimizer(model, lr, encoder_lr=None):
        model.encoder.requires_grad_(encoder_lr is not None)
        if encoder_lr is None:
            return torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=lr, momentum=0.9)
        groups = [
            {"params": list(model.encoder.parameters()), "lr": encoder_lr},
            {"params": list(model.decoder.parameters()) + list(model.head.parameters())},
        ]
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)

    assert _run("ch6.optimizer", make_optimizer=make_optimizer).status == "pass"


def test_make_optimizer_that_freezes_with_eval_fails():
    def make_optimizer(model, lr, encoder_lr=None):
        if encoder_lr is None:
            model.encoder.eval()
            return torch.optim.AdamW(model.parameters(), lr=lr)
        return ref.make_optimizer(model, lr, encoder_lr)

    _expect_fail(_run("ch6.optimizer", make_optimizer=make_optimizer), "still requires grad", "requires_grad_(False)")


def test_make_optimizer_that_never_unfreezes_fails():
    def make_optimizer(model, lr, encoder_lr=None):
        model.encoder.requires_grad_(False)
        rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
        if encoder_lr is None:
            return torch.optim.AdamW(rest, lr=lr)
        return torch.optim.AdamW([{"params": model.encoder.parameters(), "lr": encoder_lr}, {"params": rest}], lr=lr)

    _expect_fail(_run("ch6.optimizer", make_optimizer=make_optimizer), "still does not require grad")


def test_make_optimizer_with_the_learning_rates_swapped_fails():
    def make_optimizer(model, lr, encoder_lr=None):
        if encoder_lr is None:
            return ref.make_optimizer(model, lr)
        return ref.make_optimizer(model, encoder_lr, lr)

    _expect_fail(_run("ch6.optimizer", make_optimizer=make_optimizer), "the other way round")


def test_make_optimizer_with_every_parameter_in_the_second_group_fails():
    def make_optimizer(model, lr, encoder_lr=None):
        if encoder_lr is None:
            return ref.make_optimizer(model, lr)
        model.requires_grad_(True)
        groups = [{"params": model.encoder.parameters(), "lr": encoder_lr}, {"params": model.parameters()}]
        return torch.optim.AdamW(groups, lr=lr)

    _expect_fail(_run("ch6.optimizer", make_optimizer=make_optimizer), "in two groups", "not model.parameters()")


def test_make_optimizer_that_trains_a_global_model_fails():
    other = ref.new_segmenter(base_channels=4)

    def make_optimizer(model, lr, encoder_lr=None):
        ref.make_optimizer(model, lr, encoder_lr)  # the right requires_grad flags...
        return ref.make_optimizer(other, lr, encoder_lr)  # ...but another model's parameters

    _expect_fail(_run("ch6.optimizer", make_optimizer=make_optimizer), "does not hold decoder.", "not of a global")


def test_make_optimizer_stub_is_not_attempted():
    def make_optimizer(model, lr, encoder_lr=None):
        raise NotImplementedError

    assert _run("ch6.optimizer", make_optimizer=make_optimizer).status == "not_attempted"


# --- ch6.checkpoint -----------------------------------------------------------------------------------------


def _check_checkpoint(save, load) -> checking.CheckResult:
    return checking.run("ch6.checkpoint", {"save_training_state": save, "load_training_state": load})


def test_a_checkpoint_built_on_chapter_4s_atomic_save_passes():
    def save(path, model, optimizer, scheduler, step):
        ch4.save_checkpoint(path, model, optimizer, step)  # atomic; model, optimizer, epoch
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["scheduler"] = scheduler.state_dict()
        ch4_like = path.with_name(path.name + ".part") if hasattr(path, "with_name") else f"{path}.part"
        torch.save(checkpoint, ch4_like)
        os.replace(ch4_like, path)

    def load(path, model, optimizer, scheduler):
        epoch = ch4.load_checkpoint(path, model, optimizer)
        scheduler.load_state_dict(torch.load(path, weights_only=True)["scheduler"])
        return epoch

    assert _check_checkpoint(save, load).status == "pass"


def test_a_checkpoint_without_the_scheduler_fails():
    def save(path, model, optimizer, scheduler, step):
        ch4.save_checkpoint(path, model, optimizer, step)

    def load(path, model, optimizer, scheduler):
        return ch4.load_checkpoint(path, model, optimizer)

    _expect_fail(_check_checkpoint(save, load), "the schedule would restart", "scheduler.state_dict()")


def test_a_checkpoint_without_the_optimizer_fails():
    def save(path, model, optimizer, scheduler, step):
        torch.save({"model": model.state_dict(), "scheduler": scheduler.state_dict(), "step": step}, path)

    def load(path, model, optimizer, scheduler):
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        scheduler.load_state_dict(state["scheduler"])
        return state["step"]

    _expect_fail(_check_checkpoint(save, load), "optimizer has no state")


def test_a_checkpoint_that_returns_the_next_step_fails():
    def load(path, model, optimizer, scheduler):
        return ref.load_training_state(path, model, optimizer, scheduler) + 1

    _expect_fail(_check_checkpoint(ref.save_training_state, load), "returned int 4", "after step 3")


def test_a_checkpoint_of_whole_objects_fails():
    def save(path, model, optimizer, scheduler, step):
        torch.save({"model": model, "optimizer": optimizer, "step": step}, path)

    _expect_fail(_check_checkpoint(save, ref.load_training_state), "does not load with torch.load(weights_only=True)")


def test_a_checkpoint_written_in_place_is_destroyed_by_a_failed_save():
    def save(path, model, optimizer, scheduler, step):  # the reference's layout, written straight over the file
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save({**state, "scheduler": scheduler.state_dict(), "epoch": step}, path)

    _expect_fail(_check_checkpoint(save, ref.load_training_state), "left the previous checkpoint unreadable")


def test_checkpoint_stubs_are_not_attempted():
    def save(path, model, optimizer, scheduler, step):
        raise NotImplementedError

    assert _check_checkpoint(save, save).status == "not_attempted"


# --- ch6.export ---------------------------------------------------------------------------------------------


def _check_export(export, load) -> checking.CheckResult:
    return checking.run("ch6.export", {"export_model": export, "load_exported": load})


def test_an_export_with_another_config_layout_passes():
    from safetensors.torch import load_model, save_model

    def export(model, folder):
        os.makedirs(folder, exist_ok=True)
        contiguous = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        save_model(contiguous, os.path.join(folder, "model.safetensors"))
        config = {"segmenter": {"num_classes": model.head.conv.out_channels}, "channels": list(model_channels(model))}
        with open(os.path.join(folder, "config.json"), "w") as file:
            json.dump(config, file)

    def model_channels(model):
        return [model.encoder.stem.double_conv[0].out_channels]

    def load(folder):
        with open(os.path.join(folder, "config.json")) as file:
            config = json.load(file)
        model = ref.Segmenter(ref.ShapesClassifier(config["channels"][0]), config["segmenter"]["num_classes"])
        load_model(model, os.path.join(folder, "model.safetensors"))
        model.eval()
        return model

    assert _check_export(export, load).status == "pass"


def test_an_export_of_the_raw_state_dict_fails_on_channels_last():
    def export(model, folder):
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        save_file(model.state_dict(), os.path.join(folder, "model.safetensors"))

    _expect_fail(_check_export(export, ref.load_exported), "non-contiguous", "value.contiguous()")


def test_an_export_of_the_parameters_only_fails():
    def export(model, folder):
        from safetensors.torch import save_file

        ref.export_model(model, folder)
        params = {k: v.detach().contiguous() for k, v in model.named_parameters()}
        save_file(params, os.path.join(folder, "model.safetensors"))

    _expect_fail(_check_export(export, ref.load_exported), "lacks encoder.stem.double_conv.1.running_mean")


def test_load_exported_in_training_mode_fails():
    def load(folder):
        return ref.load_exported(folder).train()

    _expect_fail(_check_export(ref.export_model, load), "in training mode", "model.eval()")


def test_load_exported_with_the_default_architecture_fails():
    def load(folder):
        from safetensors.torch import load_file

        model = ref.new_segmenter()  # 4 classes, base 8: not what was exported
        model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
        return model.eval()

    _expect_fail(_check_export(ref.export_model, load), "does not fit the exported weights", "config.json")


def test_load_exported_with_strict_false_and_the_wrong_architecture_fails():
    def load(folder):
        from safetensors.torch import load_file

        model = ref.new_segmenter(num_classes=3, base_channels=4)
        state = {k: v for k, v in load_file(os.path.join(folder, "model.safetensors")).items() if "decoder" not in k}
        model.load_state_dict(state, strict=False)
        return model.eval()

    _expect_fail(_check_export(ref.export_model, load), "outputs differ from the exported model's")


def test_export_stubs_are_not_attempted():
    def export(model, folder):
        raise NotImplementedError

    assert _check_export(export, export).status == "not_attempted"


# --- the project's helpers, for real ------------------------------------------------------------------------


def test_the_committed_classifier_is_listed_verified_and_small():
    path = artifacts.verify(ref.CLASSIFIER_FILE)
    entry = artifacts.read_manifest()[ref.CLASSIFIER_FILE]
    assert entry["regenerate"] == pretrained_classifier.REGENERATE == "python -m course_utils.pretrained_classifier"
    assert path.stat().st_size < 1_000_000
    state = torch.load(path, weights_only=True, map_location="cpu")
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    assert entry["metadata"]["constructor_kwargs"] == ref.CLASSIFIER_KWARGS


def test_the_committed_classifier_tells_which_shapes_an_image_holds():
    model = ref.load_classifier()
    images, masks = ref.held_out_set(128)
    assert ref.classifier_accuracy(model, images, masks).min().item() >= 0.95


def test_load_encoder_on_the_committed_classifier_loads_the_trunk_and_reports_fc():
    torch.manual_seed(0)
    model = ref.new_segmenter()
    report = ref.load_encoder(model, DATA_DIR / ref.CLASSIFIER_FILE)
    assert report["unused"] == ["fc.bias", "fc.weight"]
    assert all(k.startswith(("decoder.", "head.")) for k in report["missing"])
    assert len(report["loaded"]) + len(report["missing"]) == len(model.state_dict())
    classifier = ref.load_classifier()
    assert torch.equal(
        model.encoder.stage3.maxpool_conv[1].double_conv[0].weight,
        classifier.stage3.maxpool_conv[1].double_conv[0].weight,
    )


def test_init_decoder_starts_the_predictions_at_the_class_prior():
    torch.manual_seed(0)
    model = ref.new_segmenter()
    _, masks = next(ref.shape_batches(32, seed=99))
    frequencies = ref.class_frequencies(masks)
    ref.init_decoder(model, frequencies)
    images, masks = ref.held_out_set(16)
    with torch.no_grad():
        probabilities = model.eval()(images).softmax(dim=1).mean(dim=(0, 2, 3))
    assert torch.allclose(probabilities, frequencies, atol=0.02)
    loss = F.cross_entropy(model(images), masks).item()
    assert loss < 0.6 < torch.log(torch.tensor(4.0)).item()  # the prior's entropy, not ln 4


def test_make_optimizer_freezes_then_unfreezes():
    model = ref.new_segmenter(base_channels=4)
    frozen = ref.make_optimizer(model, 1e-2)
    assert len(frozen.param_groups) == 1 and not any(p.requires_grad for p in model.encoder.parameters())
    tuned = ref.make_optimizer(model, 1e-2, 1e-3)
    assert [g["lr"] for g in tuned.param_groups] == [1e-3, 1e-2]
    assert all(p.requires_grad for p in model.parameters())


def test_set_train_mode_keeps_a_frozen_encoder_in_eval_mode():
    model = ref.new_segmenter(base_channels=4)
    ref.make_optimizer(model, 1e-2)
    ref.set_train_mode(model)
    assert model.decoder.training and not model.encoder.training
    ref.make_optimizer(model, 1e-2, 1e-3)
    ref.set_train_mode(model)
    assert model.encoder.training


def test_warmup_cosine_warms_up_then_decays_to_the_floor():
    values = [ref.warmup_cosine(s, 50, warmup=10, floor=0.1) for s in range(60)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[50] == pytest.approx(0.1) and values[59] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))


def test_latest_checkpoint_picks_the_highest_step_and_reports_an_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no step_"):
        ref.latest_checkpoint(tmp_path)
    for step in (5, 40, 100):
        (tmp_path / f"step_{step:04d}.pt").write_bytes(b"")
    assert ref.latest_checkpoint(tmp_path).name == "step_0100.pt"
    assert ref.checkpoint_step(tmp_path / "step_0040.pt") == 40


def test_save_training_state_leaves_no_temporary_file(tmp_path):
    model, optimizer, scheduler = _tiny()
    ref.save_training_state(tmp_path / "step_0001.pt", model, optimizer, scheduler, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["step_0001.pt"]


def _tiny():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


@pytest.mark.slow
def test_training_resumed_after_a_crash_matches_the_uninterrupted_run_exactly(tmp_path):
    settings = {"steps": 12, "freeze_steps": 4, "batch_size": 4, "seed": 3, "checkpoint_every": 4}
    torch.manual_seed(0)
    start = ref.new_segmenter(base_channels=4)
    uninterrupted = copy.deepcopy(start)
    ref.train_segmenter(uninterrupted, **settings, checkpoint_dir=tmp_path / "a")
    crashed = copy.deepcopy(start)
    with pytest.raises(ref.SimulatedCrash):
        ref.train_segmenter(crashed, **settings, checkpoint_dir=tmp_path / "b", crash_after=6)
    resumed = ref.new_segmenter(base_channels=4)  # a fresh process would start from a new model
    history = ref.train_segmenter(resumed, **settings, checkpoint_dir=tmp_path / "b", resume=True)
    # Resumed after step 4, the last checkpoint before the crash: the end of the frozen phase.
    assert history["step"][0] == 5
    assert ref.same_state(resumed, uninterrupted)
    assert [p.name for p in sorted((tmp_path / "b").iterdir())] == ["step_0004.pt", "step_0008.pt", "step_0012.pt"]


@pytest.mark.slow
def test_an_exported_model_reloads_in_a_fresh_process_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = ref.new_segmenter(base_channels=4)
    ref.train_segmenter(model, steps=3, batch_size=4)
    ref.export_model(model, tmp_path)
    checksum, _ = ref.output_checksum(model)
    code = (
        "import sys; from course_utils.solutions import ch06_project_segmentation as ref; "
        "print(repr(ref.output_checksum(ref.load_exported(sys.argv[1]))[0]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == checksum
    config = json.loads((tmp_path / ref.CONFIG_FILE).read_text())
    assert config["num_classes"] == 4 and config["base_channels"] == 4


def test_init_decoder_refuses_a_class_that_never_occurs():
    model = ref.new_segmenter(base_channels=4)
    with pytest.raises(ValueError, match="must all be positive"):
        ref.init_decoder(model, torch.tensor([0.9, 0.1, 0.0, 0.0]))


def test_load_encoder_reports_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        ref.load_encoder(ref.new_segmenter(base_channels=4), tmp_path / "absent.pt")


def test_load_exported_reports_a_folder_without_a_config(tmp_path):
    with pytest.raises(FileNotFoundError):
        ref.load_exported(tmp_path)
