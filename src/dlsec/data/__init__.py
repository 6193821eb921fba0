"""Datasets: the embedded digits, IDX files (MNIST, Fashion-MNIST) and NPZ arrays.

Every loader returns a :class:`Dataset` of float32 tensors inside ``bounds`` with
int64 labels, or raises :class:`DatasetError` naming the file and the problem.

Example:
    >>> from dlsec.data import load_dataset
    >>> ds = load_dataset("digits", seed=0)
    >>> ds.x_train.shape[1:]
    torch.Size([1, 8, 8])
"""

from __future__ import annotations

from dlsec.data.core import Dataset, DatasetError, stratified_split, validate_arrays
from dlsec.data.registry import DATASET_NAMES, load_dataset

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "DatasetError",
    "load_dataset",
    "stratified_split",
    "validate_arrays",
]
