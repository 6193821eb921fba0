"""The Dataset type, its error, validation and the deterministic split."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dlsec.errors import DlsecError


class DatasetError(DlsecError):
    """A dataset could not be read; the message names the file and the problem."""


# Hard limits on what a file may ask dlsec to allocate, checked against the sizes a
# file declares (IDX header, npy header, zip directory) before anything is allocated.
MAX_ELEMENTS = 1 << 30  # values in one array: 4 GiB as float32
MAX_CLASSES = 100_000  # labels 0..MAX_CLASSES-1 (ImageNet-21k has 21,841 classes)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read(64).strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process can still allocate, as far as the OS tells; None when unknown.

    The smallest of: the kernel's MemAvailable, what is left of the cgroup's memory
    limit (containers: the OOM killer acts on it), and what is left of the address
    space limit (``ulimit -v``).
    """
    left: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    left.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            left.append(max(limit - usage, 0))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = 0
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmSize:"):
                        used = int(line.split()[1]) * 1024
                        break
            left.append(max(soft - used, 0))
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return min(left) if left else None


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def check_size(elements: int, need: int, *, source: str, what: str) -> None:
    """Refuse, before allocating, an array of ``elements`` values needing ``need`` bytes.

    ``elements`` above :data:`MAX_ELEMENTS`, or ``need`` above the memory this
    process can still get, raise :class:`DatasetError` (rather than a MemoryError or
    the OOM killer later).
    """
    if elements > MAX_ELEMENTS:
        raise DatasetError(
            f"{source}: {what} declares {elements:,} values, more than dlsec loads "
            f"({MAX_ELEMENTS:,}, 4 GiB as float32)"
        )
    free = available_memory()
    if free is not None and need > free:
        raise DatasetError(
            f"{source}: {what} needs about {_gib(need)} of memory, only {_gib(free)} is available"
        )


def _os_reason(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).rstrip(".")


def _stat(path: Path, what: str) -> os.stat_result:
    """``os.stat``, or a one-line error naming ``path`` and the problem."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read ({_os_reason(exc)})") from None


def check_directory(path: Path, *, expected: str) -> None:
    """A one-line error unless ``path`` is a directory (see :func:`_stat`; ``expected`` says
    what was wanted)."""
    st = _stat(path, "directory")
    if not stat.S_ISDIR(st.st_mode):
        raise DatasetError(f"{path}: not a directory (expected {expected})")


def open_regular_file(path: Path, *, expected: str) -> tuple[io.BufferedReader, int]:
    """Open a user's file for reading: (binary file, size in bytes), or a one-line error.

    Names the file and the problem for a missing file, a directory, a device or pipe
    (which could block or never end), a symlink loop, no permission, or a path the OS
    refuses (a NUL byte, a name too long). ``expected`` says what was wanted
    ("an IDX file").
    """
    st = _stat(path, "file")
    if stat.S_ISDIR(st.st_mode):
        raise DatasetError(f"{path}: is a directory, expected {expected}")
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"{path}: not a regular file, expected {expected}")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({_os_reason(exc)})") from None
    return fh, st.st_size


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
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)


def label_range(y: np.ndarray, *, source: str) -> tuple[int, int]:
    """(smallest, largest) label as Python ints (no overflow, no wrap-around of uint64).

    Raises :class:`DatasetError` unless the labels are integers (an integer dtype, or
    floats with integral values); allocates nothing sized by the labels' values.
    """
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise DatasetError(f"{source}: labels contain NaN or inf")
        if not np.all(y == np.round(y)):
            raise DatasetError(f"{source}: labels must be integers")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if y.size == 0:
        return 0, -1
    return int(y.min()), int(y.max())


def _label(value: int) -> str:
    """A label for a message: exact, or in scientific notation when absurdly long."""
    return str(value) if abs(value) < 10**21 else f"{float(value):.3g}"


def validate_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    source: str,
    num_classes: int | None = None,
) -> None:
    """Raise :class:`DatasetError` for the problems a user's data typically has.

    Labels must lie in ``0..num_classes-1`` (or ``0..MAX_CLASSES-1`` when the
    classes are not given), checked on their own dtype before any conversion.
    """
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{source}: image/label count mismatch ({x.shape[0]} inputs, {y.shape[0]} labels)"
        )
    if x.shape[0] == 0:
        raise DatasetError(f"{source}: the dataset is empty")
    if y.ndim != 1:
        raise DatasetError(f"{source}: labels must be a 1-D array, got shape {tuple(y.shape)}")
    lo, hi = label_range(y, source=source)
    if lo < 0:
        raise DatasetError(f"{source}: labels out of range (found {_label(lo)} < 0)")
    if num_classes is not None and hi >= num_classes:
        raise DatasetError(
            f"{source}: labels out of range (found {_label(hi)}, expected 0..{num_classes - 1})"
        )
    if hi >= MAX_CLASSES:
        raise DatasetError(
            f"{source}: labels out of range (found {_label(hi)}; dlsec supports at most "
            f"{MAX_CLASSES:,} classes, labels 0..{MAX_CLASSES - 1})"
        )
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(x.shape[0], -1).any(axis=1).sum())
        raise DatasetError(f"{source}: {bad} input(s) contain NaN or inf")


def stratified_split(y: Tensor, *, test_size: float, seed: int) -> tuple[Tensor, Tensor]:
    """Deterministic stratified split: (train_idx, test_idx), sorted, same seed -> same split."""
    if not 0.0 < test_size < 1.0:
        raise DatasetError(f"test size must be in (0, 1), got {test_size}")
    if not -(2**63) <= seed < 2**64:  # what torch.Generator.manual_seed accepts
        raise DatasetError(f"seed {seed} is out of range (at most 2**64 - 1)")
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
