"""Chapter 3: the references pass, real mistakes fail with the intended message, and the chapter's claims hold."""

from __future__ import annotations

import copy

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
    "ch3.freeze_until": {"freeze_until": ref.freeze_until},
    "ch3.extra_input": {"ResNetWithExtraInput": ref.ResNetWithExtraInput},
    "ch3.extra_output": {"ResNetWithFeatures": ref.ResNetWithFeatures},
    "ch3.bilinear_pool": {"bilinear_pool": ref.bilinear_pool},
}


@pytest.mark.parametrize("exercise_id", sorted(REFERENCES))
def test_reference_passes(exercise_id: str) -> None:
    result = checking.run(exercise_id, REFERENCES[exercise_id])
    assert result.status == "pass", result


def test_chapter_registers_the_six_exercises_of_the_issue() -> None:
    names = {ex.id: ex.names for ex in checking.chapter_exercises(3)}
    assert names == {exercise_id: tuple(value) for exercise_id, value in REFERENCES.items()}


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


def _last_linear(model):
    return [name for name, m in model.named_modules() if name and isinstance(m, nn.Linear)][-1]


def test_replace_head_that_only_knows_fc_fails_on_a_vgg() -> None:
    def replace_head(model, num_classes):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model

    expect_failure(
        run("ch3.replace_head", replace_head=replace_head), "on a VGG model raised AttributeError", "Not every model"
    )


def test_replace_head_that_takes_the_first_linear_fails() -> None:
    def replace_head(model, num_classes):
        name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][0]
        old = model.get_submodule(name)
        model.set_submodule(name, nn.Linear(old.in_features, num_classes).to(old.weight))
        return model

    expect_failure(
        run("ch3.replace_head", replace_head=replace_head), "replaced classifier.0, which is not the head", "last"
    )


def test_replace_head_with_setattr_on_a_dotted_name_fails() -> None:
    def replace_head(model, num_classes):
        name = _last_linear(model)
        old = model.get_submodule(name)
        setattr(model, name, nn.Linear(old.in_features, num_classes).to(old.weight))
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "dotted name 'classifier.6'", "set_submodule")


def test_replace_head_that_ignores_the_models_dtype_fails_on_the_float64_vit() -> None:
    def replace_head(model, num_classes):
        name = _last_linear(model)
        model.set_submodule(name, nn.Linear(model.get_submodule(name).in_features, num_classes))
        return model

    expect_failure(
        run("ch3.replace_head", replace_head=replace_head),
        "VisionTransformer in float64, the new head is in float32",
        "dtype=old.weight.dtype",
    )


def test_replace_head_that_replaces_the_whole_classifier_fails() -> None:
    def replace_head(model, num_classes):
        if hasattr(model, "fc"):
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        else:
            model.classifier = nn.Linear(model.classifier[-1].in_features, num_classes)
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "has no classifier.6 any more")


def test_replace_head_that_only_sets_out_features_fails() -> None:
    def replace_head(model, num_classes):
        model.get_submodule(_last_linear(model)).out_features = num_classes
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "changed fc.out_features", "(1000, 512)")


def test_replace_head_with_a_softmax_fails() -> None:
    def replace_head(model, num_classes):
        model.fc = nn.Sequential(nn.Linear(model.fc.in_features, num_classes), nn.Softmax(dim=1))
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "contains a Softmax", "CrossEntropyLoss")


def test_replace_head_with_512_hard_coded_fails_on_a_vgg() -> None:
    def replace_head(model, num_classes):
        model.set_submodule(_last_linear(model), nn.Linear(512, num_classes))
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "(got nn.Linear(512, 7))", "a ResNet's width")


def test_replace_head_without_return_fails() -> None:
    def replace_head(model, num_classes):
        ref.replace_head(model, num_classes)

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "returned None")


def test_replace_head_that_changes_a_copy_fails() -> None:
    def replace_head(model, num_classes):
        return ref.replace_head(copy.deepcopy(model), num_classes)

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "returned a different object")


def test_replace_head_that_stacks_a_layer_on_the_logits_fails() -> None:
    def replace_head(model, num_classes):
        return nn.Sequential(model, nn.Linear(model.fc.out_features, num_classes))

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "stacked a new layer", "1000 scores")


def test_replace_head_that_appends_a_layer_after_the_old_head_fails() -> None:
    def replace_head(model, num_classes):
        if hasattr(model, "fc"):
            return ref.replace_head(model, num_classes)
        model.classifier.append(nn.Linear(model.classifier[-1].out_features, num_classes))
        return model

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "added classifier.7", "after the old head")


def test_replace_head_that_returns_the_new_layer_fails() -> None:
    def replace_head(model, num_classes):
        ref.replace_head(model, num_classes)
        return model.get_submodule(_last_linear(model))

    expect_failure(
        run("ch3.replace_head", replace_head=replace_head), "returned nn.Linear(512, 7) instead of the model"
    )


def test_replace_head_that_reinitializes_the_backbone_fails() -> None:
    def replace_head(model, num_classes):
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
        return ref.replace_head(model, num_classes)

    expect_failure(run("ch3.replace_head", replace_head=replace_head), "also changed conv1.weight")


def _by_family(model, num_classes):
    """One branch per family, the layer built with .to(old.weight) (dtype and device in one call)."""
    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, num_classes).to(model.fc.weight)
    elif hasattr(model, "heads"):
        old = model.heads.head
        model.heads.head = nn.Linear(old.in_features, num_classes).to(old.weight)
    else:
        old = model.classifier[-1]
        model.classifier[-1] = nn.Linear(old.in_features, num_classes).to(old.weight)
    return model


def _by_parent(model, num_classes):
    """Walk named_modules() backwards and assign on the parent module."""
    for name, module in reversed(list(model.named_modules())):
        if isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            new = nn.Linear(module.in_features, num_classes, dtype=module.weight.dtype, device=module.weight.device)
            setattr(parent, child, new)
            return model
    raise ValueError("no Linear layer")


def _by_rebuilding_the_container(model, num_classes):
    """Rebuild the Sequential that holds the head; its other layers are the same objects."""
    name = _last_linear(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = parent.get_submodule(child)
    new = nn.Linear(old.in_features, num_classes, dtype=old.weight.dtype)
    if isinstance(parent, nn.Sequential) and child.isdigit():
        layers = list(parent)
        layers[int(child)] = new
        model.set_submodule(parent_name, nn.Sequential(*layers))
    else:
        model.set_submodule(name, new)
    return model


@pytest.mark.parametrize("solution", [_by_family, _by_parent, _by_rebuilding_the_container])
def test_replace_head_accepts_other_correct_styles(solution) -> None:
    assert run("ch3.replace_head", replace_head=solution).status == "pass"


@pytest.mark.parametrize(
    ("builder", "head"),
    [
        (lambda: torchvision.models.resnet18(weights=None), "fc"),
        (lambda: torchvision.models.mobilenet_v3_small(weights=None), "classifier.3"),
        (lambda: torchvision.models.mobilenet_v2(weights=None), "classifier.1"),
        (lambda: torchvision.models.efficientnet_b0(weights=None), "classifier.1"),
        (lambda: torchvision.models.convnext_tiny(weights=None), "classifier.2"),
        (lambda: torchvision.models.vit_b_16(weights=None), "heads.head"),
    ],
)
def test_reference_replace_head_finds_the_head_of_full_size_torchvision_models(builder, head) -> None:
    with torch.device("meta"):  # structure only: no memory, no initialization
        model = builder()
    old = model.get_submodule(head)
    assert ref.replace_head(model, 3) is model
    new = model.get_submodule(head)
    assert new is not old and (new.in_features, new.out_features) == (old.in_features, 3)
    assert new.weight.device.type == "meta"


def test_reference_replace_head_finds_vggs_head_and_keeps_the_rest() -> None:
    with torch.device("meta"):
        model = torchvision.models.vgg11(weights=None)
    layers = list(model.classifier)
    ref.replace_head(model, 5)
    assert model.classifier[6].out_features == 5 and model.classifier[6].in_features == 4096
    assert all(model.classifier[i] is layers[i] for i in range(6))


def test_reference_replace_head_refuses_a_model_without_a_linear_layer() -> None:
    with pytest.raises(ValueError, match="has no nn.Linear"):
        ref.replace_head(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), 3)
    with pytest.raises(ValueError, match="num_classes must be positive"):
        ref.replace_head(nn.Sequential(nn.Linear(3, 4)), 0)


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


# --- ch3.freeze_until ---------------------------------------------------------------------------------


def _split_groups(model, stages):
    groups = []
    for stage in stages:
        params = list(model.get_submodule(stage).parameters())
        groups.append({"params": [p for p in params if p.ndim >= 2]})
        groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


_ORDER = ["layer1", "layer2", "layer3", "layer4", "fc"]


def _freeze_parts(model, stage):
    if stage not in _ORDER:
        raise ValueError(f"unknown stage {stage!r}")
    first = _ORDER.index(stage)
    frozen = ["conv1", "bn1", *_ORDER[:first]]
    for name in frozen:
        model.get_submodule(name).requires_grad_(False)
    for name in _ORDER[first:]:
        model.get_submodule(name).requires_grad_(True)
    return frozen, _ORDER[first:]


def test_freeze_until_that_freezes_the_stage_itself_fails() -> None:
    def freeze_until(model, stage):
        first = _ORDER.index(stage)
        ref.freeze_until(model, _ORDER[first + 1])
        return _split_groups(model, _ORDER[first + 1 :])

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "layer3 was frozen too", "not layer3 itself")


def test_freeze_until_that_forgets_the_stem_fails() -> None:
    def freeze_until(model, stage):
        frozen, trainable = _freeze_parts(model, stage)
        model.conv1.requires_grad_(True)
        model.bn1.requires_grad_(True)
        return _split_groups(model, trainable)

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "still require grad (conv1.weight", "stem")


def test_freeze_until_that_only_calls_eval_on_the_batchnorm_layers_fails() -> None:
    def freeze_until(model, stage):
        frozen, trainable = _freeze_parts(model, stage)
        for name in frozen:
            for module in model.get_submodule(name).modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return _split_groups(model, trainable)

    expect_failure(
        run("ch3.freeze_until", freeze_until=freeze_until),
        "went back to training mode",
        "FrozenBatchNorm2d",
    )


def test_freeze_until_that_keeps_every_batchnorm_in_eval_fails() -> None:
    def freeze_until(model, stage):
        groups = ref.freeze_until(model, stage)
        for module in model.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = ref.EvalBatchNorm2d
        return groups

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "stages that train must train too")


def test_freeze_until_with_weight_decay_on_norm_weights_fails() -> None:
    def freeze_until(model, stage):
        _, trainable = _freeze_parts(model, stage)
        ref.freeze_until(model, stage)
        groups = []
        for name in trainable:
            named = list(model.get_submodule(name).named_parameters())
            groups.append({"params": [p for n, p in named if not n.endswith("bias")]})
            groups.append({"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0})
        return groups

    expect_failure(
        run("ch3.freeze_until", freeze_until=freeze_until), "layer3.0.bn1.weight (a norm weight)", "1-D parameters"
    )


def test_freeze_until_with_one_group_for_everything_fails() -> None:
    def freeze_until(model, stage):
        ref.freeze_until(model, stage)
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "whose weight decay is the optimizer default")


def test_freeze_until_that_mixes_stages_in_a_group_fails() -> None:
    def freeze_until(model, stage):
        ref.freeze_until(model, stage)
        params = [p for p in model.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "mixes layer3 and layer4", "learning rate")


def test_freeze_until_that_returns_frozen_parameters_fails() -> None:
    def freeze_until(model, stage):
        ref.freeze_until(model, stage)
        return _split_groups(model, ["layer2", "layer3", "layer4", "fc"])

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "holds layer2.0.conv1.weight, which is frozen")


def test_freeze_until_that_returns_generators_fails() -> None:
    def freeze_until(model, stage):
        ref.freeze_until(model, stage)
        return [{"params": model.get_submodule(name).parameters()} for name in ["layer3", "layer4", "fc"]]

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "not a list", "list(...)")


def test_freeze_until_that_forgets_a_stage_in_the_groups_fails() -> None:
    def freeze_until(model, stage):
        ref.freeze_until(model, stage)
        return _split_groups(model, ["layer3", "layer4"])

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "No group", "holds fc.weight")


def test_freeze_until_that_returns_nothing_fails() -> None:
    def freeze_until(model, stage):
        ref.freeze_until(model, stage)

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "returned None")


def test_freeze_until_that_accepts_an_unknown_stage_fails() -> None:
    def freeze_until(model, stage):
        order = ["layer1", "layer2", "layer3", "layer4", "fc"]
        first = order.index(stage) if stage in order else len(order)
        return ref.freeze_until(model, order[min(first, 4)])

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "freeze_until(resnet, 'layer5') returned")


def test_freeze_until_that_reinitializes_a_stage_fails() -> None:
    def freeze_until(model, stage):
        for module in model.layer4.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
        return ref.freeze_until(model, stage)

    expect_failure(run("ch3.freeze_until", freeze_until=freeze_until), "changed layer4.0.conv1.weight")


def _with_frozen_batchnorm(model, stage):
    """torchvision's FrozenBatchNorm2d in the frozen stages; groups by module type, with names."""
    frozen, trainable = _freeze_parts(model, stage)
    for name in frozen:
        part = model.get_submodule(name)
        for child_name, module in list(part.named_modules()):
            if isinstance(module, nn.BatchNorm2d):
                new = torchvision.ops.FrozenBatchNorm2d(module.num_features, eps=module.eps)
                new.load_state_dict(module.state_dict())
                if child_name:
                    part.set_submodule(child_name, new)
                else:
                    setattr(model, name, new)
    groups = []
    for name in trainable:
        decay, no_decay = [], []
        for module in model.get_submodule(name).modules():
            for pname, p in module.named_parameters(recurse=False):
                (no_decay if isinstance(module, nn.BatchNorm2d) or pname == "bias" else decay).append(p)
        groups += [{"params": decay, "name": name}, {"params": no_decay, "weight_decay": 0.0, "name": name + "-nd"}]
    return groups


def _keep_eval(module, args):
    module.eval()


def _with_pre_hooks(model, stage):
    """A forward pre-hook that switches each frozen BatchNorm to eval before it runs."""
    frozen, trainable = _freeze_parts(model, stage)
    for name in frozen:
        for module in model.get_submodule(name).modules():
            if isinstance(module, nn.BatchNorm2d):
                module.register_forward_pre_hook(_keep_eval)
    return _split_groups(model, trainable)


def _with_a_train_override(model, stage):
    """mmdetection's norm_eval idea: the model's own train() puts the frozen BatchNorm layers back in eval."""
    frozen, trainable = _freeze_parts(model, stage)
    frozen_bns = [m for n in frozen for m in model.get_submodule(n).modules() if isinstance(m, nn.BatchNorm2d)]
    plain_train = model.train

    def train(mode=True):
        plain_train(mode)
        for bn in frozen_bns:
            bn.eval()
        return model

    model.train = train
    model.train(model.training)
    return _split_groups(model, trainable)


@pytest.mark.parametrize("solution", [_with_frozen_batchnorm, _with_pre_hooks, _with_a_train_override])
def test_freeze_until_accepts_other_correct_styles(solution) -> None:
    assert run("ch3.freeze_until", freeze_until=solution).status == "pass"


def test_reference_freeze_until_on_resnet18_keeps_the_state_dict_and_unfreezes_again() -> None:
    net = torchvision.models.resnet18(weights=None)
    keys = list(net.state_dict())
    groups = ref.freeze_until(net, "layer3")
    assert [(g["stage"], "weight_decay" in g) for g in groups] == [
        ("layer3", False),
        ("layer3", True),
        ("layer4", False),
        ("layer4", True),
        ("fc", False),
        ("fc", True),
    ]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in net.parameters() if p.requires_grad
    )
    assert list(net.state_dict()) == keys
    net.train()
    assert not net.layer2[1].bn2.training and net.layer3[0].bn1.training
    assert isinstance(net.layer1[0].bn1, nn.BatchNorm2d)
    copy.deepcopy(net)  # the swapped class is a plain module-level class: copies and pickles work
    ref.freeze_until(net, "layer1")
    net.train()
    assert type(net.layer1[0].bn1) is nn.BatchNorm2d and net.layer1[0].bn1.training and not net.bn1.training
    assert net.layer1[0].conv1.weight.requires_grad and not net.conv1.weight.requires_grad
    with pytest.raises(ValueError, match="stage must be one of"):
        ref.freeze_until(net, "layer5")
    with pytest.raises(ValueError, match="must be a torchvision ResNet \\(a VGG has no conv1\\)"):
        ref.freeze_until(torchvision.models.VGG(nn.Sequential(nn.Conv2d(3, 512, 1)), init_weights=False), "layer3")


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


class LazyHead(nn.Module):
    """A correct answer in another style: an nn.LazyLinear head, a trunk without fc and an explicit flatten."""

    def __init__(self, backbone, extra_features, num_classes):
        super().__init__()
        self.trunk = nn.Sequential(*list(backbone.children())[:-1], nn.Flatten(1))
        self.head = nn.LazyLinear(num_classes)

    def forward(self, image, extra):
        return self.head(torch.cat([self.trunk(image), extra], dim=1))


class FcAsHeadInput(nn.Module):
    """Another correct style: keep the backbone whole, read its features with a pre-hook on fc."""

    def __init__(self, backbone, extra_features, num_classes):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.fc.in_features + extra_features, num_classes)

    def forward(self, image, extra):
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(image))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        features = net.avgpool(x).flatten(1)
        return self.head(torch.cat([features, extra], dim=1))


@pytest.mark.parametrize("solution", [LazyHead, FcAsHeadInput])
def test_extra_input_accepts_a_lazy_head_and_an_own_forward(solution) -> None:
    assert run("ch3.extra_input", ResNetWithExtraInput=solution).status == "pass"


class LazyOntoLogits(OntoLogits):
    def __init__(self, backbone, extra_features, num_classes):
        super().__init__(backbone, extra_features, num_classes)
        self.head = nn.LazyLinear(num_classes)


def test_extra_input_with_a_lazy_head_onto_the_logits_still_fails() -> None:
    expect_failure(run("ch3.extra_input", ResNetWithExtraInput=LazyOntoLogits), "1000 logits plus 3 extra")


class ScalarExtra(ref.ResNetWithExtraInput):
    """The seed's scalar extra input of shape (N,), concatenated without unsqueeze(1)."""

    def forward(self, image, extra):
        return self.head(torch.cat([self.backbone(image), extra[:, 0]], dim=1))


def test_extra_input_concatenating_a_1d_extra_fails_with_the_unsqueeze_hint() -> None:
    expect_failure(
        run("ch3.extra_input", ResNetWithExtraInput=ScalarExtra), "same number of dimensions", "unsqueeze(1)"
    )


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


class LazyHook(nn.Module):
    """A hook registered once, on the first call, with its handle kept."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self._handle = None
        self._features = None

    def _keep(self, module, inputs, output):
        self._features = torch.flatten(output, 1)

    def forward(self, x):
        if self._handle is None:
            self._handle = self.backbone.avgpool.register_forward_hook(self._keep)
        logits = self.backbone(x)
        return logits, self._features


class ViaChildren(nn.Module):
    """Shared trunk modules, an explicit flatten and the backbone's own fc."""

    def __init__(self, backbone):
        super().__init__()
        self.trunk = nn.Sequential(*list(backbone.children())[:-1], nn.Flatten(1))
        self.fc = backbone.fc

    def forward(self, x):
        features = self.trunk(x)
        return self.fc(features), features


@pytest.mark.parametrize("solution", [ViaExtractor, ViaHook, LazyHook, ViaChildren])
def test_extra_output_accepts_an_extractor_or_a_hook(solution: type) -> None:
    assert run("ch3.extra_output", ResNetWithFeatures=solution).status == "pass"


# --- ch3.bilinear_pool --------------------------------------------------------------------------------


def test_bilinear_pool_with_the_cookbooks_three_argument_reshape_fails() -> None:
    def bilinear_pool(x):
        n, d, h, w = x.shape
        x = torch.reshape(n, d, h * w)
        x = torch.bmm(x, torch.transpose(x, 1, 2)) / (h * w)
        x = torch.reshape(x, (n, d * d))
        x = torch.sign(x) * torch.sqrt(torch.abs(x) + 1e-5)
        return nn.functional.normalize(x)

    expect_failure(
        run("ch3.bilinear_pool", bilinear_pool=bilinear_pool),
        "TypeError: reshape() takes 2 positional arguments but 3 were given",
        "torch.reshape(x, (N, C, H * W))",
    )


def _pool(x, sqrt, normalize_dim=1, flatten=lambda x: x.flatten(2)):
    n, c = x.shape[:2]
    flat = flatten(x)
    b = (flat @ flat.transpose(1, 2) / flat.shape[2]).reshape(n, -1)
    return nn.functional.normalize(sqrt(b), dim=normalize_dim) if normalize_dim is not None else sqrt(b)


def _signed(b):
    return torch.sign(b) * torch.sqrt(b.abs() + 1e-5)


@pytest.mark.parametrize(
    ("solution", "fragment"),
    [
        (lambda x: _pool(x, torch.sqrt), "returned NaN"),
        (lambda x: _pool(x, lambda b: torch.sqrt(b.abs())), "no sign"),
        (lambda x: _pool(x, lambda b: b), "no signed square root"),
        (lambda x: _pool(x, _signed, normalize_dim=None), "no L2 normalization"),
        (lambda x: _pool(x, _signed, normalize_dim=0), "normalized over the batch"),
        (lambda x: _pool(x, lambda b: torch.sign(b) * torch.sqrt(b.abs())), "gradient"),
    ],
    ids=["plain-sqrt", "sqrt-of-abs", "no-sqrt", "no-normalize", "normalize-dim0", "no-eps"],
)
def test_bilinear_pool_mistakes_fail_with_their_name(solution, fragment) -> None:
    expect_failure(run("ch3.bilinear_pool", bilinear_pool=solution), fragment)


def test_bilinear_pool_over_positions_fails() -> None:
    def bilinear_pool(x):
        n = x.shape[0]
        flat = x.flatten(2)
        b = (flat.transpose(1, 2) @ flat).reshape(n, -1)
        return nn.functional.normalize(_signed(b), dim=1)

    expect_failure(run("ch3.bilinear_pool", bilinear_pool=bilinear_pool), "products of positions", "bmm")


def test_bilinear_pool_that_mixes_channels_and_positions_fails() -> None:
    def bilinear_pool(x):
        n, c, h, w = x.shape
        flat = x.reshape(n, h * w, c).transpose(1, 2)  # the right shape, the wrong numbers
        b = (flat @ flat.transpose(1, 2) / (h * w)).reshape(n, c * c)
        return nn.functional.normalize(_signed(b), dim=1)

    expect_failure(run("ch3.bilinear_pool", bilinear_pool=bilinear_pool), "differs from the reference", "mixing")


def test_bilinear_pool_with_view_fails_on_a_non_contiguous_input() -> None:
    def bilinear_pool(x):
        n, c, h, w = x.shape
        flat = x.view(n, c, h * w)
        b = torch.bmm(flat, flat.transpose(1, 2)).view(n, c * c) / (h * w)
        return nn.functional.normalize(_signed(b), dim=1)

    expect_failure(run("ch3.bilinear_pool", bilinear_pool=bilinear_pool), "non-contiguous", "reshape")


def test_bilinear_pool_that_returns_the_matrix_fails() -> None:
    def bilinear_pool(x):
        n, c = x.shape[:2]
        return ref.bilinear_pool(x).reshape(n, c, c)

    expect_failure(run("ch3.bilinear_pool", bilinear_pool=bilinear_pool), "flatten each C x C matrix")


def _by_einsum(features):
    n, c, h, w = features.shape
    b = torch.einsum("nchw,ndhw->ncd", features, features) / (h * w)
    b = b.flatten(1)
    b = b.sign() * (b.abs() + 1e-8).sqrt()
    return b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _by_loop(features):
    rows = []
    for f in features:  # (C, H, W)
        flat = f.flatten(1)
        b = (flat @ flat.T / flat.shape[1]).flatten()
        b = torch.sign(b) * torch.sqrt(b.abs().clamp_min(1e-10))
        rows.append(b / b.norm())
    return torch.stack(rows)


@pytest.mark.parametrize("solution", [_by_einsum, _by_loop])
def test_bilinear_pool_accepts_other_correct_styles(solution) -> None:
    assert run("ch3.bilinear_pool", bilinear_pool=solution).status == "pass"


def test_reference_bilinear_pool_has_unit_rows_and_a_bounded_gradient_at_zero() -> None:
    x = torch.randn(2, 8, 5, 3)
    out = ref.bilinear_pool(x)
    assert out.shape == (2, 64)
    assert torch.allclose(out.norm(dim=1), torch.ones(2))
    zero = torch.zeros(1, 2, 2, 2, requires_grad=True)
    ref.bilinear_pool(zero).sum().backward()
    assert torch.isfinite(zero.grad).all()
    with pytest.raises(ValueError, match=r"must have shape \(N, C, H, W\) \(got \(2, 8, 15\)\)"):
        ref.bilinear_pool(x.flatten(2))


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


def test_building_a_weights_enums_transforms_downloads_nothing(monkeypatch) -> None:
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    for module, name in ((torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    preprocess = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert preprocess.crop_size == [224] and preprocess.resize_size == [256]
    assert preprocess(torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)).shape == (3, 224, 224)


def test_syncbatchnorm_matches_batchnorm_in_training_mode_without_a_process_group() -> None:
    plain = torchvision.models.resnet18(weights=None).train()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain)).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), converted(x), atol=1e-5)
    assert torch.allclose(plain.layer4[1].bn2.running_var, converted.layer4[1].bn2.running_var, atol=1e-6)


def _two_group_rates(make_scheduler, steps: int = 6) -> list[tuple[float, float]]:
    weights = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [weights[0]], "lr": 1e-4}, {"params": [weights[1]], "lr": 1e-2}], lr=1)
    scheduler = make_scheduler(optimizer)
    rates = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rates.append(tuple(group["lr"] for group in optimizer.param_groups))
    return rates


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8),
        lambda opt: torch.optim.lr_scheduler.MultiplicativeLR(opt, lambda epoch: 0.9),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1 / (1 + epoch)),
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=4),
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[1e-4, 1e-2], total_steps=10),
    ],
    ids=["StepLR", "ExponentialLR", "MultiplicativeLR", "LambdaLR", "LinearLR", "OneCycleLR-per-group"],
)
def test_multiplicative_schedulers_keep_the_ratio_between_groups(make) -> None:
    for backbone, head in _two_group_rates(make):
        assert head / backbone == pytest.approx(100)


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10),
        lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-4, max_lr=1e-2, step_size_up=3),
    ],
    ids=["OneCycleLR", "CyclicLR"],
)
def test_cyclic_schedulers_with_one_max_lr_give_every_group_the_same_rate(make) -> None:
    for backbone, head in _two_group_rates(make):
        assert backbone == pytest.approx(head)


def test_cosine_annealing_ends_every_group_at_eta_min() -> None:
    rates = _two_group_rates(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6, eta_min=1e-5))
    assert rates[-1] == pytest.approx((1e-5, 1e-5))


def test_eval_changes_rrelu_and_instancenorm_with_running_stats_and_not_plain_instancenorm() -> None:
    x = torch.randn(2, 3, 4, 4) * 3 + 1
    rrelu = nn.RReLU()
    assert not torch.equal(rrelu.train()(-torch.ones(50)), rrelu.eval()(-torch.ones(50)))
    tracked = nn.InstanceNorm2d(3, track_running_stats=True)
    train_out = tracked.train()(x)
    assert not torch.allclose(train_out, tracked.eval()(x))
    plain = nn.InstanceNorm2d(3)
    assert torch.equal(plain.train()(x), plain.eval()(x))


def test_a_frozen_parameter_moves_with_momentum_only_when_grads_are_zeroed_not_cleared() -> None:
    moved = {}
    for set_to_none in (True, False):
        torch.manual_seed(0)
        layer = nn.Linear(4, 2)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
        layer(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        layer.weight.requires_grad_(False)
        before = layer.weight.detach().clone()
        optimizer.zero_grad(set_to_none=set_to_none)
        layer(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        moved[set_to_none] = not torch.equal(before, layer.weight)
    assert moved == {True: False, False: True}
