"""Dataset.digest: a content hash (tensors, classes, bounds) that caches key on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from dlsec.data import Dataset, load_dataset
from dlsec.data.npz import load_npz


def _tiny() -> Dataset:
    return Dataset(
        name="tiny",
        x_train=torch.arange(8, dtype=torch.float32).reshape(4, 1, 1, 2) / 8,
        y_train=torch.tensor([0, 1, 0, 1]),
        x_test=torch.zeros(2, 1, 1, 2),
        y_test=torch.tensor([1, 0]),
        classes=("a", "b"),
    )


def _save(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(path, x=x, y=y)
    return path


def test_digest_is_sha256_hex_and_cached() -> None:
    ds = _tiny()
    d = ds.digest
    assert len(d) == 64 and int(d, 16) >= 0
    assert ds.__dict__["digest"] == d  # computed once, kept on the object
    assert ds.digest is d


def test_same_contents_same_digest_whatever_the_name_or_source() -> None:
    a = _tiny()
    b = dataclasses.replace(
        _tiny(), name="other", source="elsewhere", extra={"split": "x"},
        x_train=a.x_train.clone(),
    )
    assert a.digest == b.digest
    assert load_dataset("digits", seed=0).digest == load_dataset("digits", seed=0).digest


def test_each_part_of_the_contents_changes_the_digest() -> None:
    ds = _tiny()
    y = ds.y_train.clone()
    y[2] = 1  # one flipped label
    x = ds.x_train.clone()
    x[0, 0, 0, 0] = 0.5
    variants = [
        dataclasses.replace(ds, y_train=y),
        dataclasses.replace(ds, x_train=x),
        dataclasses.replace(ds, y_test=torch.tensor([0, 1])),
        dataclasses.replace(ds, classes=("a", "c")),
        dataclasses.replace(ds, bounds=(0.0, 2.0)),
        dataclasses.replace(ds, x_train=ds.x_train.reshape(4, 1, 2, 1)),  # same bytes, new shape
        dataclasses.replace(ds, y_train=ds.y_train.to(torch.int32)),  # same values, new dtype
        dataclasses.replace(ds, x_train=ds.x_test, x_test=ds.x_train),  # swapped splits
    ]
    digests = {ds.digest} | {v.digest for v in variants}
    assert len(digests) == len(variants) + 1


def test_digest_does_not_depend_on_memory_layout() -> None:
    ds = dataclasses.replace(_tiny(), x_train=torch.arange(24.0).reshape(2, 1, 3, 4))
    x_strided = ds.x_train.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x_strided.is_contiguous() and torch.equal(x_strided, ds.x_train)
    assert dataclasses.replace(ds, x_train=x_strided).digest == ds.digest


def test_replaced_file_with_flipped_labels_changes_the_digest(tmp_path: Path) -> None:
    """The issue's case: the same npz path, rewritten with 60% of its labels flipped."""
    rng = np.random.default_rng(0)
    x = rng.random((50, 4), dtype=np.float32)
    y = np.arange(50) % 5
    path = _save(tmp_path / "data.npz", x, y)
    before = load_npz(path, seed=0, test_size=0.2)
    again = load_npz(path, seed=0, test_size=0.2)
    assert before.digest == again.digest

    flipped = y.copy()
    idx = rng.permutation(50)[:30]
    flipped[idx] = (flipped[idx] + 1) % 5
    _save(path, x, flipped)
    after = load_npz(path, seed=0, test_size=0.2)
    assert after.name == before.name and after.source == before.source
    assert after.digest != before.digest

    one = y.copy()
    one[7] = (one[7] + 1) % 5
    _save(path, x, one)
    assert load_npz(path, seed=0, test_size=0.2).digest != before.digest


def test_digest_of_a_tiny_dataset_is_stable() -> None:
    """Pinned: a change of the digest's format silently invalidates every cache, so it is
    made on purpose (bump the "dlsec-dataset-v1" tag) and this value updated."""
    assert _tiny().digest == "8c037279819d3433b554ae95355b1227672760fc65c66933bff311373b68f247"
