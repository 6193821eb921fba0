"""Fixtures for the data tests: tiny IDX files written byte by byte."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(
    array: np.ndarray, *, magic: int | None = None, dims: tuple[int, ...] | None = None
) -> bytes:
    """Encode a uint8 array as IDX; ``magic``/``dims`` override the header to make bad files."""
    dims = array.shape if dims is None else dims
    magic = (0x0800 | len(dims)) if magic is None else magic
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, **header: object) -> Path:
    """Write ``array`` as an IDX file at ``path``, gzip'd when the name ends in ``.gz``."""
    data = idx_bytes(array, **header)  # type: ignore[arg-type]
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def idx_arrays() -> dict[str, np.ndarray]:
    """Deterministic tiny MNIST-like arrays: 6 train and 4 test images of 3x2 pixels."""
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, size=(6, 3, 2), dtype=np.uint8),
        "train_labels": np.array([0, 1, 2, 9, 4, 1], dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(4, 3, 2), dtype=np.uint8),
        "test_labels": np.array([3, 9, 0, 7], dtype=np.uint8),
    }


@pytest.fixture
def make_idx_dir(tmp_path: Path, idx_arrays: dict[str, np.ndarray]) -> Callable[..., Path]:
    """Return ``make(gz=False, skip=(), **overrides) -> directory`` writing the four files.

    An override maps a role (``train_images``...) to an array, or to raw ``bytes`` that
    are written verbatim under the role's file name (plus ``.gz`` when ``gz``).
    """
    counter = iter(range(1_000_000))

    def make(*, gz: bool = False, skip: tuple[str, ...] = (), **overrides: object) -> Path:
        directory = tmp_path / f"idx{next(counter)}"
        directory.mkdir()
        for role, name in IDX_NAMES.items():
            if role in skip:
                continue
            path = directory / (name + (".gz" if gz else ""))
            value = overrides.get(role, idx_arrays[role])
            if isinstance(value, bytes):
                path.write_bytes(value)
            else:
                write_idx(path, value)  # type: ignore[arg-type]
        return directory

    return make


@pytest.fixture
def idx_encode() -> Callable[..., bytes]:
    """The IDX encoder, ``idx_encode(array, magic=None, dims=None) -> bytes``."""
    return idx_bytes
