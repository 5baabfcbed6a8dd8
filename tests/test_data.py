"""course_utils.data: the synthetic shapes segmentation set."""

import time

import pytest
import torch

from course_utils import data


def test_make_shapes_returns_images_and_masks_of_the_documented_shapes_and_types():
    images, masks = data.make_shapes(5, seed=0)
    assert images.shape == (5, 3, 64, 64) and images.dtype == torch.float32
    assert masks.shape == (5, 64, 64) and masks.dtype == torch.int64
    assert int(masks.min()) >= 0 and int(masks.max()) < data.NUM_CLASSES


def test_the_same_seed_gives_the_same_tensors():
    first = data.make_shapes(6, seed=42)
    second = data.make_shapes(6, seed=42)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_different_seeds_give_different_images():
    assert not torch.equal(data.make_shapes(2, seed=1)[0], data.make_shapes(2, seed=2)[0])


def test_tuple_seeds_work_and_differ_from_each_other():
    assert not torch.equal(data.make_shapes(2, seed=(0, 0))[1], data.make_shapes(2, seed=(0, 1))[1])


def test_every_image_has_at_least_one_shape_and_every_class_occurs():
    _, masks = data.make_shapes(64, seed=0)
    assert bool((masks.flatten(1) > 0).any(dim=1).all())
    assert set(masks.unique().tolist()) == set(range(data.NUM_CLASSES))


def test_masks_follow_the_shapes_brightness():
    images, masks = data.make_shapes(16, seed=0, noise=0.0)
    brightness = images.min(dim=1).values  # shapes have every channel >= 0.45, the background <= 0.3
    assert bool((brightness[masks > 0] >= 0.45).all())
    assert bool((brightness[masks == 0] <= 0.3).all())


def test_noise_has_the_requested_standard_deviation():
    clean, masks = data.make_shapes(16, seed=3, noise=0.0)
    noisy, same_masks = data.make_shapes(16, seed=3, noise=0.2)
    assert torch.equal(masks, same_masks)
    assert abs((noisy - clean).std().item() - 0.2) < 0.01


def test_image_size_scales_the_images():
    images, masks = data.make_shapes(2, seed=0, image_size=32)
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_images": -1}, "num_images"),
        ({"num_images": 1, "image_size": 8}, "image_size"),
        ({"num_images": 1, "noise": -0.1}, "noise"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.make_shapes(**kwargs)


def test_zero_images_is_an_empty_batch():
    images, masks = data.make_shapes(0)
    assert images.shape == (0, 3, 64, 64) and masks.shape == (0, 64, 64)


def test_generation_is_fast():
    data.make_shapes(8)
    start = time.perf_counter()
    data.make_shapes(256, seed=5)
    assert time.perf_counter() - start < 2.0


def test_shape_batches_yields_the_same_stream_for_the_same_seed():
    first = [masks for _, masks in data.shape_batches(4, seed=7, num_batches=3)]
    second = [masks for _, masks in data.shape_batches(4, seed=7, num_batches=3)]
    assert len(first) == 3
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])


def test_shape_batches_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="batch_size"):
        next(data.shape_batches(0))


def test_held_out_set_of_n_images_is_the_first_n_of_the_full_set():
    images, masks = data.held_out_set()
    assert images.shape == (data.HELD_OUT_SIZE, 3, 64, 64)
    some_images, some_masks = data.held_out_set(100)
    assert torch.equal(some_images, images[:100]) and torch.equal(some_masks, masks[:100])
    with pytest.raises(ValueError, match="num_images"):
        data.held_out_set(data.HELD_OUT_SIZE + 1)


def test_held_out_set_is_fixed_and_differs_from_the_training_stream():
    images, masks = data.held_out_set(8)
    again, _ = data.held_out_set(8)
    assert torch.equal(images, again) and masks.shape == (8, 64, 64)
    first_batch, _ = next(data.shape_batches(8, seed=0))
    assert not torch.equal(images, first_batch)
