"""Chapter 3: the references pass, real mistakes fail with the intended message, and the chapter's claims hold."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torchvision
from torch import nn

from course_utils import checking
from course_utils.solutions import ch03_model_modification as ref


def run(exercise_id: str, **names: object) -> checking.CheckResult:
    return checking.run(exercise_id, names)


def expect_failure(result: checking.CheckResult, *fragments: str) -> None:
    assert result.status == "fail", result
    for fragment in fragments:
        assert fragment in result.message + (result.hint or ""), result


# --- the references -----------------------------------------------------------------------------------

REFERENCES = {
    "ch3.replace_head": {"replace_head": ref.replace_head},
    "ch3.swap_modules": {"swap_modules": ref.swap_modules},
    "ch3.freeze_backbone": {"freeze_backbone": ref.freeze_backbone},
    "ch3.extra_input": {"ResNetWithExtraInput": ref.ResNetWithExtraInput},
    "ch3.extra_output": {"ResNetWithFeatures": ref.ResNetWithFeatures},
}


@pytest.mark.parametrize("exercise_id", sorted(REFERENCES))
def test_reference_passes(exercise_id: str) -> None:
    result = checking.run(exercise_id, REFERENCES[exercise_id])
    assert result.status == "pass", result


def test_chapter_registers_the_five_exercises_of_the_issue() -> None:
    names = {ex.id: ex.names for ex in checking.chapter_exercises(3)}
    assert names == {exercise_id: tuple(value) for exercise_id, value in REFERENCES.items()}


@pytest.mark.parametrize("exercise_id", sorted(REFERENCES))
def test_each_check_takes_well_under_a_second(exercise_id: str) -> None:
    checking.run(exercise_id, REFERENCES[exercise_id])  # builds the cached models
    start = time.perf_counter()
    checking.run(exercise_id, REFERENCES[exercise_id])
    assert time.perf_counter() - start < 1.0


def test_checks_leave_the_thread_count_and_random_state_alone() -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for exercise_id, names in REFERENCES.items():
        checking.run(exercise_id, names)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_references_do_what_the_issue_says_on_resnet18() -> None:
    net = torchvision.models.resnet18(weights=None)
    assert ref.replace_head(net, 10) is net and (net.fc.in_features, net.fc.out_features) == (512, 10)
    assert ref.swap_modules(net, nn.BatchNorm2d, lambda bn: nn.GroupNorm(32, bn.num_features)) == 20
    assert ref.freeze_backbone(net) == ["fc.weight", "fc.bias"]
    x = torch.randn(2, 3, 64, 64)
    logits, features = ref.ResNetWithFeatures(net).eval()(x)
    assert logits.shape == (2, 10) and features.shape == (2, 512)
    assert ref.ResNetWithExtraInput(net, 3, 4)(x, torch.randn(2, 3)).shape == (2, 4)


# --- ch3.replace_head ---------------------------------------------------------------------------------


def test_replace_head_that_only_sets_out_features_fails() -> None:
    def replace_head(model, num_classes):
        model.fc.out_features = num_classes
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "changed fc.out_features", "(1000, 512)")


def test_replace_head_with_a_softmax_fails() -> None:
    def replace_head(model, num_classes):
        model.fc = nn.Sequential(nn.Linear(model.fc.in_features, num_classes), nn.Softmax(dim=1))
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "contains a Softmax", "CrossEntropyLoss")


def test_replace_head_with_512_hard_coded_fails_on_a_bottleneck_resnet() -> None:
    def replace_head(model, num_classes):
        model.fc = nn.Linear(512, num_classes)
        return model

    expect_failure(
        run("ch3.replace_head", replace_head=replace_head), "nn.Linear(2048, 3) (got nn.Linear(512, 3))", "in_features"
    )


def test_replace_head_without_return_fails() -> None:
    def replace_head(model, num_classes):
        model.fc = nn.Linear(model.fc.in_features, num_classes)

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "returned None")


def test_replace_head_that_changes_a_copy_fails() -> None:
    def replace_head(model, num_classes):
        model = copy.deepcopy(model)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "left the model it was given unchanged")


def test_replace_head_that_stacks_a_layer_on_the_logits_fails() -> None:
    def replace_head(model, num_classes):
        return nn.Sequential(model, nn.Linear(model.fc.out_features, num_classes))

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "stacked a new layer", "1000 logits")


def test_replace_head_that_returns_the_new_layer_fails() -> None:
    def replace_head(model, num_classes):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model.fc

    expect_failure(
        run("ch3.replace_head", replace_head=replace_head), "returned nn.Linear(512, 7) instead of the model"
    )


def test_replace_head_that_reinitializes_the_backbone_fails() -> None:
    def replace_head(model, num_classes):
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "also changed conv1.weight")


# --- ch3.swap_modules ---------------------------------------------------------------------------------


def test_swap_modules_over_top_level_children_only_fails() -> None:
    def swap_modules(model, old_type, make_new):
        count = 0
        for name, child in model.named_children():
            if isinstance(child, old_type):
                setattr(model, name, make_new(child))
                count += 1
        return count

    expect_failure(
        run("ch3.swap_modules", swap_modules=swap_modules), "replaced only the top-level nn.BatchNorm2d", "1 of 12"
    )


def test_swap_modules_with_setattr_on_dotted_names_fails() -> None:
    def swap_modules(model, old_type, make_new):
        count = 0
        for name, module in list(model.named_modules()):
            if isinstance(module, old_type):
                setattr(model, name, make_new(module))
                count += 1
        return count

    expect_failure(run("ch3.swap_modules", swap_modules=swap_modules), "dotted names", "set_submodule")


def test_swap_modules_that_counts_every_visited_module_fails() -> None:
    def swap_modules(model, old_type, make_new):
        count = 0
        for name, child in model.named_children():
            count += 1
            if isinstance(child, old_type):
                setattr(model, name, make_new(child))
            else:
                count += swap_modules(child, old_type, make_new)
        return count

    expect_failure(run("ch3.swap_modules", swap_modules=swap_modules), "replaced 12 modules but returned int")


def test_swap_modules_that_returns_nothing_fails() -> None:
    def swap_modules(model, old_type, make_new):
        for name, module in list(model.named_modules()):
            if name and isinstance(module, old_type):
                model.set_submodule(name, make_new(module))

    expect_failure(run("ch3.swap_modules", swap_modules=swap_modules), "returned None", "(12)")


def test_swap_modules_that_misses_subclasses_fails() -> None:
    def swap_modules(model, old_type, make_new):
        names = [name for name, module in model.named_modules() if name and type(module) is old_type]
        for name in names:
            model.set_submodule(name, make_new(model.get_submodule(name)))
        return len(names)

    expect_failure(
        run("ch3.swap_modules", swap_modules=swap_modules),
        "missed self_attn.out_proj",
        "NonDynamicallyQuantizableLinear",
        "isinstance",
    )


def test_swap_modules_on_a_copy_fails() -> None:
    def swap_modules(model, old_type, make_new):
        model = copy.deepcopy(model)
        return ref.swap_modules(model, old_type, make_new)

    expect_failure(run("ch3.swap_modules", swap_modules=swap_modules), "it changed a copy")


def test_swap_modules_that_recurses_into_the_new_module_fails() -> None:
    def swap_modules(model, old_type, make_new):
        count = 0
        for name, child in model.named_children():
            if isinstance(child, old_type):
                child = make_new(child)
                setattr(model, name, child)
                count += 1
            count += swap_modules(child, old_type, make_new)
        return count

    expect_failure(run("ch3.swap_modules", swap_modules=swap_modules), "recursed without end", "wraps the old module")


def test_swap_modules_that_calls_make_new_without_the_old_module_fails() -> None:
    def swap_modules(model, old_type, make_new):
        names = [name for name, module in model.named_modules() if name and isinstance(module, old_type)]
        for name in names:
            model.set_submodule(name, make_new())
        return len(names)

    expect_failure(run("ch3.swap_modules", swap_modules=swap_modules), "TypeError", "make_new(old)")


# --- ch3.freeze_backbone ------------------------------------------------------------------------------


def test_freeze_backbone_that_freezes_fc_too_fails() -> None:
    def freeze_backbone(model):
        model.requires_grad_(False)
        return [name for name, p in model.named_parameters() if p.requires_grad]

    expect_failure(run("ch3.freeze_backbone", freeze_backbone=freeze_backbone), "the head was frozen too")


def test_freeze_backbone_with_eval_fails() -> None:
    def freeze_backbone(model):
        model.eval()
        return ["fc.weight", "fc.bias"]

    expect_failure(run("ch3.freeze_backbone", freeze_backbone=freeze_backbone), "eval mode", "not which parameters")


def test_freeze_backbone_on_a_copy_fails() -> None:
    def freeze_backbone(model):
        model = copy.deepcopy(model)
        return ref.freeze_backbone(model)

    expect_failure(run("ch3.freeze_backbone", freeze_backbone=freeze_backbone), "still require grad", "not a copy")


def test_freeze_backbone_that_freezes_only_weights_fails() -> None:
    def freeze_backbone(model):
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.BatchNorm2d):
                module.weight.requires_grad = False
        return [name for name, p in model.named_parameters() if p.requires_grad]

    expect_failure(
        run("ch3.freeze_backbone", freeze_backbone=freeze_backbone), "still require grad (bn1.bias", "Biases"
    )


def test_freeze_backbone_that_returns_nothing_fails() -> None:
    def freeze_backbone(model):
        ref.freeze_backbone(model)

    expect_failure(run("ch3.freeze_backbone", freeze_backbone=freeze_backbone), "returned None")


def test_freeze_backbone_that_returns_parameters_fails() -> None:
    def freeze_backbone(model):
        ref.freeze_backbone(model)
        return [p for p in model.parameters() if p.requires_grad]

    expect_failure(run("ch3.freeze_backbone", freeze_backbone=freeze_backbone), "returned 2 tensors", "names")


def test_freeze_backbone_that_returns_the_frozen_names_fails() -> None:
    def freeze_backbone(model):
        ref.freeze_backbone(model)
        return [name for name, p in model.named_parameters() if not p.requires_grad]

    expect_failure(run("ch3.freeze_backbone", freeze_backbone=freeze_backbone), "expected the trainable ones")


def test_freeze_backbone_that_returns_short_names_fails() -> None:
    def freeze_backbone(model):
        ref.freeze_backbone(model)
        return [name for name, _ in model.fc.named_parameters()]

    expect_failure(run("ch3.freeze_backbone", freeze_backbone=freeze_backbone), "as model.named_parameters() does")


def test_freeze_backbone_that_replaces_fc_fails() -> None:
    def freeze_backbone(model):
        model.requires_grad_(False)
        model.fc = nn.Linear(model.fc.in_features, model.fc.out_features)
        return ["fc.weight", "fc.bias"]

    expect_failure(run("ch3.freeze_backbone", freeze_backbone=freeze_backbone), "replaced model.fc")


# --- ch3.extra_input ----------------------------------------------------------------------------------


class OntoLogits(nn.Module):
    """The circulating version: the extra input is concatenated onto the backbone's 1000-class logits."""

    def __init__(self, backbone, extra_features, num_classes):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.fc.out_features + extra_features, num_classes)

    def forward(self, image, extra):
        return self.head(torch.cat([self.backbone(image), extra], dim=1))


def test_extra_input_concatenated_onto_the_logits_fails() -> None:
    expect_failure(
        run("ch3.extra_input", ResNetWithExtraInput=OntoLogits), "1000 logits plus 3 extra", "pooled features"
    )


class SoftmaxHead(ref.ResNetWithExtraInput):
    def __init__(self, backbone, extra_features, num_classes):
        super().__init__(backbone, extra_features, num_classes)
        self.head = nn.Sequential(self.head, nn.Softmax(dim=1))


def test_extra_input_with_a_softmax_head_fails() -> None:
    expect_failure(run("ch3.extra_input", ResNetWithExtraInput=SoftmaxHead), "head contains a Softmax")


class SoftmaxForward(ref.ResNetWithExtraInput):
    def forward(self, image, extra):
        return super().forward(image, extra).softmax(dim=1)


def test_extra_input_returning_probabilities_fails() -> None:
    expect_failure(run("ch3.extra_input", ResNetWithExtraInput=SoftmaxForward), "returns probabilities")


class Hardcoded512(nn.Module):
    def __init__(self, backbone, extra_features, num_classes):
        super().__init__()
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head = nn.Linear(512 + extra_features, num_classes)

    def forward(self, image, extra):
        return self.head(torch.cat([self.backbone(image), extra], dim=1))


def test_extra_input_with_512_hard_coded_fails_on_a_bottleneck_resnet() -> None:
    expect_failure(
        run("ch3.extra_input", ResNetWithExtraInput=Hardcoded512), "nn.Linear(2050, 4) (got nn.Linear(514, 4))", "512"
    )


class ExtraFirst(ref.ResNetWithExtraInput):
    def forward(self, image, extra):
        return self.head(torch.cat([extra, self.backbone(image)], dim=1))


def test_extra_input_concatenated_in_the_wrong_order_fails() -> None:
    expect_failure(run("ch3.extra_input", ResNetWithExtraInput=ExtraFirst), "concatenates extra before")


class Unflattened(nn.Module):
    def __init__(self, backbone, extra_features, num_classes):
        super().__init__()
        self.trunk = nn.Sequential(*list(backbone.children())[:-1])
        self.head = nn.Linear(backbone.fc.in_features + extra_features, num_classes)

    def forward(self, image, extra):
        return self.head(torch.cat([self.trunk(image), extra], dim=1))


def test_extra_input_without_flatten_fails() -> None:
    expect_failure(run("ch3.extra_input", ResNetWithExtraInput=Unflattened), "RuntimeError", "flatten")


class HeadWithoutExtra(ref.ResNetWithExtraInput):
    def __init__(self, backbone, extra_features, num_classes):
        super().__init__(backbone, extra_features, num_classes)
        self.head = nn.Linear(self.head.in_features - extra_features, num_classes)


def test_extra_input_whose_head_ignores_the_extra_width_fails() -> None:
    expect_failure(run("ch3.extra_input", ResNetWithExtraInput=HeadWithoutExtra), "only the 512 image features")


class BackboneInAList(nn.Module):
    def __init__(self, backbone, extra_features, num_classes):
        super().__init__()
        in_features = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.parts = [backbone]  # a plain list: the backbone is not registered
        self.head = nn.Linear(in_features + extra_features, num_classes)

    def forward(self, image, extra):
        return self.head(torch.cat([self.parts[0](image), extra], dim=1))


def test_extra_input_with_an_unregistered_backbone_fails() -> None:
    expect_failure(run("ch3.extra_input", ResNetWithExtraInput=BackboneInAList), "not registered")


# --- ch3.extra_output ---------------------------------------------------------------------------------


class FeaturesAfterFc(nn.Module):
    """A hook on fc records its output instead of its input."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self._features = None
        backbone.fc.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._features = output

    def forward(self, x):
        logits = self.backbone(x)
        return logits, self._features


def test_extra_output_with_features_taken_after_fc_fails() -> None:
    expect_failure(run("ch3.extra_output", ResNetWithFeatures=FeaturesAfterFc), "taken after fc")


class LogitsOnly(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x)


def test_extra_output_returning_only_the_logits_fails() -> None:
    expect_failure(run("ch3.extra_output", ResNetWithFeatures=LogitsOnly), "returned a single tensor")


class Swapped(ref.ResNetWithFeatures):
    def forward(self, x):
        logits, features = super().forward(x)
        return features, logits


def test_extra_output_in_the_wrong_order_fails() -> None:
    expect_failure(run("ch3.extra_output", ResNetWithFeatures=Swapped), "returns (features, logits)")


class BeforePooling(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.trunk = nn.Sequential(*list(backbone.children())[:-2])

    def forward(self, x):
        return self.backbone(x), self.trunk(x)


def test_extra_output_with_features_before_pooling_fails() -> None:
    expect_failure(run("ch3.extra_output", ResNetWithFeatures=BeforePooling), "taken before pooling")


class NotFlattened(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.trunk = nn.Sequential(*list(backbone.children())[:-1])

    def forward(self, x):
        features = self.trunk(x)
        return self.backbone.fc(torch.flatten(features, 1)), features


def test_extra_output_with_unflattened_features_fails() -> None:
    expect_failure(run("ch3.extra_output", ResNetWithFeatures=NotFlattened), "flatten them to (2, 512)")


class MutatesBackbone(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.fc = backbone.fc
        backbone.fc = nn.Identity()
        self.backbone = backbone

    def forward(self, x):
        features = self.backbone(x)
        return self.fc(features), features


def test_extra_output_that_changes_the_given_backbone_fails() -> None:
    expect_failure(run("ch3.extra_output", ResNetWithFeatures=MutatesBackbone), "changed the backbone", "fc")


class RunsTwice(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        trunk = nn.Sequential(*list(self.backbone.children())[:-1], nn.Flatten(1))
        return self.backbone(x), trunk(x)


def test_extra_output_that_runs_the_backbone_twice_fails() -> None:
    expect_failure(run("ch3.extra_output", ResNetWithFeatures=RunsTwice), "ran the backbone 2 times")


class HookPerCall(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        seen = {}
        self.backbone.avgpool.register_forward_hook(lambda m, i, o: seen.update(features=torch.flatten(o, 1)))
        logits = self.backbone(x)
        return logits, seen["features"]


def test_extra_output_that_registers_a_hook_on_every_call_fails() -> None:
    expect_failure(run("ch3.extra_output", ResNetWithFeatures=HookPerCall), "registers another hook", "handle")


class DictOutput(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.extractor = create_feature_extractor(backbone, {"flatten": "features", "fc": "logits"})

    def forward(self, x):
        return self.extractor(x)


def test_extra_output_returning_the_extractor_dict_fails() -> None:
    expect_failure(run("ch3.extra_output", ResNetWithFeatures=DictOutput), "returned a dict", "out['logits']")


class ViaExtractor(DictOutput):
    def forward(self, x):
        out = self.extractor(x)
        return out["logits"], out["features"]


class ViaHook(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self._features = None
        self._handle = backbone.fc.register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs):
        self._features = inputs[0]

    def forward(self, x):
        logits = self.backbone(x)
        return logits, self._features


@pytest.mark.parametrize("solution", [ViaExtractor, ViaHook])
def test_extra_output_accepts_an_extractor_or_a_hook(solution: type) -> None:
    assert run("ch3.extra_output", ResNetWithFeatures=solution).status == "pass"


# --- facts the notebook teaches -----------------------------------------------------------------------


def test_convert_sync_batchnorm_changes_types_and_shares_parameters_and_buffers() -> None:
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        net.train()(torch.randn(2, 3, 32, 32))  # non-trivial running statistics and num_batches_tracked == 1
    originals = {name: m for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in originals.items()}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert converted is net  # the model passed in is changed in place
    assert len(originals) == 20
    for name, original in originals.items():
        sync = converted.get_submodule(name)
        assert type(sync) is nn.SyncBatchNorm
        assert sync.weight is original.weight and sync.bias is original.bias
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            assert getattr(sync, key) is getattr(original, key)
            assert torch.equal(getattr(sync, key), before[name][key])
        assert int(sync.num_batches_tracked) == 1
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())


def test_a_sequential_of_resnet_children_loses_the_flatten() -> None:
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        nn.Sequential(*net.children())(x)
    fixed = nn.Sequential(*list(net.children())[:-1], nn.Flatten(1), net.fc)
    with torch.no_grad():
        assert torch.allclose(fixed(x), net(x))
    assert fixed[0].weight is net.conv1.weight
