"""The Dataset type, its error, validation and the deterministic split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dlsec.errors import DlsecError


class DatasetError(DlsecError):
    """A dataset could not be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors plus what a model card needs to know about them.

    ``x_*`` are float32 tensors shaped ``N x C x H x W`` (or ``N x D`` for flat
    features) with values inside ``bounds``; ``y_*`` are int64 class indices.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]
    bounds: tuple[float, float] = (0.0, 1.0)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def digest(self) -> str:
        """sha256 (hex) of the contents: the four tensors (dtype, shape, bytes), classes, bounds.

        Two datasets with the same digest hold the same data whatever their name or
        source, so caches key on it. Computed once per object (tensors are treated as
        immutable: code that edits one in place builds a new Dataset).
        """
        h = hashlib.sha256(b"dlsec-dataset-v1\0")
        for key in ("x_train", "y_train", "x_test", "y_test"):
            _hash_tensor(h, key, getattr(self, key))
        meta = {"classes": list(self.classes), "bounds": [float(b).hex() for b in self.bounds]}
        h.update(json.dumps(meta, sort_keys=True).encode("utf-8"))
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        counts_train = torch.bincount(self.y_train, minlength=self.num_classes).tolist()
        counts_test = torch.bincount(self.y_test, minlength=self.num_classes).tolist()
        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "bounds": list(self.bounds),
            "classes": list(self.classes),
            "n_train": int(self.y_train.numel()),
            "n_test": int(self.y_test.numel()),
            "class_counts_train": counts_train,
            "class_counts_test": counts_test,
        }


def _hash_tensor(h: Any, key: str, t: Tensor) -> None:
    """Feed one tensor's name, dtype, shape and raw bytes (contiguous, on the CPU) to ``h``."""
    t = t.detach().to("cpu").contiguous()
    h.update(f"{key}:{t.dtype}:{tuple(t.shape)}\0".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def validate_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    source: str,
    num_classes: int | None = None,
) -> None:
    """Raise :class:`DatasetError` for the problems a user's data typically has."""
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{source}: image/label count mismatch ({x.shape[0]} inputs, {y.shape[0]} labels)"
        )
    if x.shape[0] == 0:
        raise DatasetError(f"{source}: the dataset is empty")
    if y.ndim != 1:
        raise DatasetError(f"{source}: labels must be a 1-D array, got shape {tuple(y.shape)}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(x.shape[0], -1).any(axis=1).sum())
        raise DatasetError(f"{source}: {bad} input(s) contain NaN or inf")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise DatasetError(f"{source}: labels contain NaN or inf")
        if not np.all(y == np.round(y)):
            raise DatasetError(f"{source}: labels must be integers")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise DatasetError(f"{source}: labels out of range (found {int(y.min())} < 0)")
    if num_classes is not None and y.max() >= num_classes:
        raise DatasetError(
            f"{source}: labels out of range (found {int(y.max())}, expected 0..{num_classes - 1})"
        )


def stratified_split(
    y: Tensor, *, test_size: float, seed: int
) -> tuple[Tensor, Tensor]:
    """Deterministic stratified split: (train_idx, test_idx), sorted, same seed -> same split."""
    if not 0.0 < test_size < 1.0:
        raise DatasetError(f"test size must be in (0, 1), got {test_size}")
    g = torch.Generator().manual_seed(seed)
    train_parts, test_parts = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = round(idx.numel() * test_size)
        n_test = min(max(n_test, 1 if idx.numel() > 1 else 0), idx.numel() - 1)
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    return torch.sort(torch.cat(train_parts)).values, torch.sort(torch.cat(test_parts)).values
