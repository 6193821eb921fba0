"""scikit-learn's embedded digits: 1,797 8x8 images, no download, the default dataset."""

from __future__ import annotations

import torch

from dlsec.data.core import Dataset, stratified_split


def load_digits(*, seed: int = 0, test_size: float = 0.2) -> Dataset:
    """Digits as float32 ``N x 1 x 8 x 8`` tensors in [0, 1] with a stratified split by seed."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = torch.from_numpy(bunch.images).to(torch.float32).div_(16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target).to(torch.int64)
    train_idx, test_idx = stratified_split(y, test_size=test_size, seed=seed)
    return Dataset(
        name="digits",
        x_train=x[train_idx].contiguous(),
        y_train=y[train_idx].contiguous(),
        x_test=x[test_idx].contiguous(),
        y_test=y[test_idx].contiguous(),
        classes=tuple(str(i) for i in range(10)),
        bounds=(0.0, 1.0),
        source="sklearn.datasets.load_digits",
    )
