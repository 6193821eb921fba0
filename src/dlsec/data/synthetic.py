"""A generated, seeded image dataset the size of CIFAR-10 (no download): ``cifar-synthetic``.

Each class is a coloured, oriented sinusoidal texture: a base colour from a palette of
five (so colour alone tells two classes apart at best), a stripe orientation and a
frequency of its own. Every sample draws its own phase, contrast and colour jitter, and
per-pixel Gaussian noise is added; values are quantized to 8 bits like a real photo
dataset. A small CNN learns it to over 80% test accuracy in a few epochs, so an audit
on it exercises 3 x 32 x 32 inputs (3,072 values per input, 3.9x Fashion-MNIST's
784 and 48x the digits' 64) with a model that has learnt something.

The same ``seed`` gives the same bytes on every machine (NumPy's PCG64 and float64
arithmetic, then rounding to uint8).

Example:
    >>> x, y = make_synthetic(20, seed=0)
    >>> x.shape, x.dtype, y[:5].tolist()   # doctest: +SKIP
    ((20, 3, 32, 32), dtype('uint8'), [...])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlsec.data.core import Dataset, DatasetError

SYNTHETIC_NAME = "cifar-synthetic"
SYNTHETIC_SIZE = 2000
"""Samples in the registered ``cifar-synthetic`` (generated with seed 0, split by the run's seed)."""

MAX_SYNTHETIC = 1_000_000
_PALETTE = np.array(
    [[0.8, 0.25, 0.2], [0.2, 0.7, 0.3], [0.25, 0.35, 0.85], [0.8, 0.75, 0.2], [0.6, 0.3, 0.75]]
)


def _check(n: int, shape: Sequence[int], classes: int) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < 1:
        raise DatasetError(f"synthetic data: shape must be C,H,W with positive sizes, got {list(shape)}")
    c, h, w = (int(s) for s in shape)
    if h < 4 or w < 4:
        raise DatasetError(f"synthetic data: images need at least 4 x 4 pixels, got {h} x {w}")
    if not 2 <= classes <= 100:
        raise DatasetError(f"synthetic data: --classes must lie in 2..100, got {classes}")
    if not classes <= n <= MAX_SYNTHETIC:
        raise DatasetError(
            f"synthetic data: --n must lie in {classes}..{MAX_SYNTHETIC:,} "
            f"(at least one sample per class), got {n}"
        )
    if n * c * h * w > 2**31:
        raise DatasetError(f"synthetic data: {n} x {c} x {h} x {w} values is too large")
    return c, h, w


def make_synthetic(
    n: int,
    *,
    shape: Sequence[int] = (3, 32, 32),
    classes: int = 10,
    seed: int = 0,
    noise: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8, ``N x C x H x W``) and balanced int64 labels ``0..classes-1``.

    Class ``k``: colour ``palette[k % 5]`` (channels past the third repeat the mean),
    stripes at angle ``pi * k / classes`` with ``2 + k % 4`` cycles across the image.
    """
    c, h, w = _check(n, shape, classes)
    if not (0 <= noise <= 1 and math.isfinite(noise)):
        raise DatasetError(f"synthetic data: noise must lie in [0, 1], got {noise}")
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes).astype(np.int64)
    colours = _PALETTE[np.arange(classes) % len(_PALETTE)]  # K x 3
    if c != 3:  # grey (one channel) or extra channels: the palette's mean, or tiled
        colours = np.resize(colours.mean(1, keepdims=True) if c == 1 else colours, (classes, c))
    angle = math.pi * np.arange(classes) / classes
    cycles = 2.0 + np.arange(classes) % 4
    yy, xx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy  # K x H x W
    phase = rng.uniform(0, 2 * math.pi, size=n)
    contrast = rng.uniform(0.2, 0.35, size=n)
    jitter = rng.normal(0.0, 0.05, size=(n, c))
    stripes = np.sin(2 * math.pi * cycles[y, None, None] * proj[y] + phase[:, None, None])
    x = (colours[y] + jitter)[:, :, None, None] + (contrast[:, None, None] * stripes)[:, None]
    x = x + rng.normal(0.0, noise, size=(n, c, h, w))
    return np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8), y


def load_synthetic(*, seed: int, test_size: float) -> Dataset:
    """The registered ``cifar-synthetic``: :data:`SYNTHETIC_SIZE` samples of seed 0,
    split stratified by ``seed`` (the same split rule as an ``npz:`` file)."""
    import torch

    from dlsec.data.core import stratified_split

    x, y = make_synthetic(SYNTHETIC_SIZE, seed=0)
    xt = torch.from_numpy(x.astype(np.float32) / np.float32(255.0))
    yt = torch.from_numpy(y)
    train_idx, test_idx = stratified_split(yt, test_size=test_size, seed=seed)
    return Dataset(
        name=SYNTHETIC_NAME,
        x_train=xt[train_idx].contiguous(),
        y_train=yt[train_idx].contiguous(),
        x_test=xt[test_idx].contiguous(),
        y_test=yt[test_idx].contiguous(),
        classes=tuple(f"pattern{k}" for k in range(int(yt.max()) + 1)),
        bounds=(0.0, 1.0),
        source=f"generated (dlsec.data.synthetic, {SYNTHETIC_SIZE} samples, seed 0)",
        extra={"split": f"stratified(seed={seed}, test_size={test_size})"},
    )


def write_synthetic(
    path: Path,
    *,
    n: int,
    shape: Sequence[int] = (3, 32, 32),
    classes: int = 10,
    seed: int = 0,
    channels_last: bool = False,
) -> str:
    """Write :func:`make_synthetic`'s arrays to ``path`` as an ``.npz`` the NPZ loader reads
    (``x`` uint8, ``y``, ``classes``), atomically; returns a one-line summary."""
    from dlsec.files import atomic_open

    x, y = make_synthetic(n, shape=shape, classes=classes, seed=seed)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    names = np.array([f"pattern{k}" for k in range(classes)])
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, x=x, y=y, classes=names)
    return f"{n} samples, x {'x'.join(str(d) for d in x.shape)} uint8, {classes} classes, seed {seed}"
