"""Deterministic synthetic data: noisy images of circles, squares and triangles with their masks.

The segmentation set of chapter 2 is drawn, not downloaded: every image is a flat random background with one
to three non-overlapping shapes in random colours, plus Gaussian noise. The mask labels each pixel with the
class of the shape that covers it (0 is the background). Colours are random, so a model must tell the classes
apart by their outline, not by their colour.

    >>> images, masks = make_shapes(8, seed=0)
    >>> images.shape, masks.shape
    (torch.Size([8, 3, 64, 64]), torch.Size([8, 64, 64]))

The same arguments always give the same tensors: NumPy's PCG64 generator, seeded with ``seed``, draws every
random number. The draws depend on ``num_images`` too, so ``make_shapes(8, seed)`` is not the first 8 images of
``make_shapes(16, seed)``; :func:`held_out_set` slices one fixed set instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

CLASS_NAMES: tuple[str, ...] = ("background", "circle", "square", "triangle")
"""Class names by mask label."""
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 64
HELD_OUT_SEED = 1_000_003
"""The seed of the held-out set that every chapter evaluates on (no training batch uses it)."""
HELD_OUT_SIZE = 256

_MIN_SIZE, _MAX_SIZE = 7.0, 13.0  # radius of the circle that holds the shape, in pixels at 64x64
_MAX_SHAPES = 3
_PLACEMENT_TRIES = 20


def make_shapes(
    num_images: int,
    seed: int | tuple[int, ...] = 0,
    *,
    image_size: int = IMAGE_SIZE,
    noise: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a batch of noisy shape images and their segmentation masks.

    Args:
        num_images: how many images to draw.
        seed: the seed (an int or a tuple of ints); the same seed gives the same tensors.
        image_size: height and width of the square images; shapes scale with it.
        noise: the standard deviation of the Gaussian noise added to every pixel.

    Returns:
        ``(images, masks)``: images of shape ``(N, 3, H, W)``, float32, values about in [0, 1]; masks of shape
        ``(N, H, W)``, int64, with labels ``0 .. NUM_CLASSES - 1`` (see :data:`CLASS_NAMES`).

    Raises:
        ValueError: for a negative ``num_images``, an ``image_size`` under 16 or a negative ``noise``.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be zero or more (got {num_images})")
    if image_size < 16:
        raise ValueError(f"image_size must be 16 or more (got {image_size})")
    if noise < 0:
        raise ValueError(f"noise must be zero or more (got {noise})")
    rng = np.random.default_rng(seed)
    scale = image_size / IMAGE_SIZE
    # Slots: up to _MAX_SHAPES shapes per image; label 0 marks an empty slot.
    labels = np.zeros((num_images, _MAX_SHAPES), dtype=np.int64)
    centres = np.zeros((num_images, _MAX_SHAPES, 2))
    radii = np.ones((num_images, _MAX_SHAPES))
    angles = rng.uniform(0, 2 * np.pi, size=(num_images, _MAX_SHAPES))
    colours = rng.uniform(0.45, 1.0, size=(num_images, _MAX_SHAPES, 3))
    backgrounds = rng.uniform(0.0, 0.3, size=(num_images, 1, 1, 1))
    counts = rng.integers(1, _MAX_SHAPES + 1, size=num_images)
    for n in range(num_images):
        placed = 0
        for _ in range(_PLACEMENT_TRIES):
            if placed == counts[n]:
                break
            radius = rng.uniform(_MIN_SIZE, _MAX_SIZE) * scale
            centre = rng.uniform(radius + 1, image_size - radius - 1, size=2)
            distances = np.hypot(*(centres[n, :placed] - centre).T)
            # A square's corners reach 1.2 radii from its centre: keep shapes that far apart, plus a gap.
            if np.all(distances > 1.2 * (radii[n, :placed] + radius) + 2):
                labels[n, placed] = rng.integers(1, NUM_CLASSES)
                centres[n, placed] = centre
                radii[n, placed] = radius
                placed += 1
    covered = _rasterize(labels, centres, radii, angles, image_size)  # (N, K, H, W)
    masks = (covered * labels[:, :, None, None]).max(axis=1)  # (N, H, W); shapes never overlap
    images = np.broadcast_to(backgrounds, (num_images, 3, image_size, image_size)).astype(np.float32)
    for k in range(_MAX_SHAPES):
        images = np.where(covered[:, k, None], colours[:, k, :, None, None].astype(np.float32), images)
    images += rng.standard_normal(size=images.shape, dtype=np.float32) * np.float32(noise)
    return torch.from_numpy(images), torch.from_numpy(masks)


def _rasterize(
    labels: np.ndarray, centres: np.ndarray, radii: np.ndarray, angles: np.ndarray, image_size: int
) -> np.ndarray:
    """A boolean mask per slot, (N, K, H, W): the pixels that each slot's shape covers."""
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    dx = coords[None, None, None, :] - centres[..., 0, None, None].astype(np.float32)  # (N, K, 1, W)
    dy = coords[None, None, :, None] - centres[..., 1, None, None].astype(np.float32)  # (N, K, H, 1)
    r = radii[..., None, None].astype(np.float32)
    circle = dx**2 + dy**2 <= r**2
    # A square a little smaller than its circle, so both cover about the same area.
    square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    # An equilateral triangle turned by `angle`: inside the half-planes of its three edges.
    triangle = np.ones_like(circle)
    for k in range(3):
        normal = (angles[..., None, None] + np.pi / 3 + k * 2 * np.pi / 3).astype(np.float32)
        triangle &= dx * np.cos(normal) + dy * np.sin(normal) <= 0.6 * r  # corners at 1.2 r, like the square's
    by_label = np.stack([np.zeros_like(circle), circle, square, triangle])  # (4, N, K, H, W)
    return np.take_along_axis(by_label, labels[None, :, :, None, None], axis=0)[0]


def shape_batches(
    batch_size: int, seed: int = 0, *, num_batches: int | None = None, noise: float = 0.1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield fresh training batches of :func:`make_shapes`, batch ``i`` drawn with the seed ``(seed, i)``.

    Args:
        batch_size: images per batch.
        seed: the stream's seed; the same seed gives the same sequence of batches.
        num_batches: stop after this many batches (``None``: never stop).
        noise: passed on to :func:`make_shapes`.

    Yields:
        ``(images, masks)`` as :func:`make_shapes` returns them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    index = 0
    while num_batches is None or index < num_batches:
        yield make_shapes(batch_size, seed=(seed, index), noise=noise)
        index += 1


def held_out_set(num_images: int = HELD_OUT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` images and masks of the held-out set that every evaluation uses.

    The set is ``make_shapes(HELD_OUT_SIZE, seed=HELD_OUT_SEED)``, so ``held_out_set(128)`` is the first half of
    ``held_out_set()``.

    Raises:
        ValueError: unless ``0 <= num_images <= HELD_OUT_SIZE``.
    """
    if not 0 <= num_images <= HELD_OUT_SIZE:
        raise ValueError(f"num_images must be between 0 and {HELD_OUT_SIZE} (got {num_images})")
    images, masks = make_shapes(HELD_OUT_SIZE, seed=HELD_OUT_SEED)
    if num_images == HELD_OUT_SIZE:
        return images, masks
    return images[:num_images].clone(), masks[:num_images].clone()
