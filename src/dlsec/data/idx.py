"""IDX files (the MNIST format, also used by Fashion-MNIST, KMNIST, EMNIST).

An IDX file is a 4-byte big-endian magic number -- two zero bytes, a type code
(``0x08`` = uint8) and the number of dimensions -- then one big-endian uint32 per
dimension, then the data. MNIST images are ``0x00000803`` (uint8, N x H x W) and
labels ``0x00000801`` (uint8, N).

A directory loaded by :func:`load_idx_dir` holds the four standard files

    train-images-idx3-ubyte  train-labels-idx1-ubyte
    t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

each either raw or gzip-compressed with a ``.gz`` suffix. The dotted spelling
some mirrors use (``train-images.idx3-ubyte``) is accepted too. Raw files are
preferred when both exist because they need no decompression.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dlsec.data.core import Dataset, DatasetError, validate_arrays

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# role -> canonical file name (without .gz)
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type code -> numpy dtype (big-endian where it matters)
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def candidate_names(canonical: str) -> list[str]:
    """File names accepted for one IDX file, in order of preference.

    ``train-images-idx3-ubyte`` -> itself, the dotted ``train-images.idx3-ubyte``,
    then both with ``.gz``.
    """
    stem, _, kind = canonical.rpartition("-idx")
    dotted = f"{stem}.idx{kind}"
    return [canonical, dotted, f"{canonical}.gz", f"{dotted}.gz"]


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a numpy array of its stored shape and type.

    The result is a read-only view of the file's bytes for uint8 data (no copy), so
    callers convert it before writing. Raises :class:`DatasetError` naming the file
    for an unreadable file, corrupt gzip, bad magic number, or truncated or
    oversized data.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected an IDX file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None

    if path.suffix == ".gz" or raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt gzip ({exc})") from None

    if len(raw) < 4:
        raise DatasetError(
            f"{path}: truncated file ({len(raw)} bytes, shorter than the 4-byte IDX header)"
        )
    zero, type_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DatasetError(
            f"{path}: wrong magic number 0x{int.from_bytes(raw[:4], 'big'):08x} "
            "(not an IDX file; MNIST images start with 0x00000803, labels with 0x00000801)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetError(
            f"{path}: truncated file ({len(raw)} bytes, the header alone needs {header_len})"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual < expected:
        raise DatasetError(
            f"{path}: truncated file (header says shape {shape}, {expected} data bytes, "
            f"found {actual})"
        )
    if actual > expected:
        raise DatasetError(
            f"{path}: {actual - expected} unexpected bytes after the data "
            f"(header says shape {shape}, {expected} data bytes)"
        )
    return np.frombuffer(
        raw, dtype=dtype, count=expected // dtype.itemsize, offset=header_len
    ).reshape(shape)


def find_idx_files(directory: Path) -> dict[str, Path]:
    """Map each role in :data:`IDX_FILES` to the file that holds it in ``directory``.

    Raises :class:`DatasetError` for a missing or empty directory, or naming every
    one of the four files that is missing.
    """
    directory = Path(directory)
    if not directory.exists():
        raise DatasetError(f"{directory}: directory not found")
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory (expected a folder of IDX files)")
    try:
        present = {p.name for p in directory.iterdir()}
    except OSError as exc:
        raise DatasetError(f"{directory}: cannot list ({exc.strerror or exc})") from None
    if not present:
        raise DatasetError(
            f"{directory}: directory is empty (expected {', '.join(IDX_FILES.values())}, "
            "raw or .gz)"
        )
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, canonical in IDX_FILES.items():
        name = next((n for n in candidate_names(canonical) if n in present), None)
        if name is None:
            missing.append(canonical)
        else:
            found[role] = directory / name
    if missing:
        raise DatasetError(f"{directory}: missing {', '.join(f'{m} (or {m}.gz)' for m in missing)}")
    return found


def _check_magic(array: np.ndarray, path: Path, *, images: bool) -> None:
    """Require uint8 N x H x W images or uint8 N labels, as MNIST stores them."""
    want_ndim, magic = (3, IMAGES_MAGIC) if images else (1, LABELS_MAGIC)
    if array.dtype != np.uint8 or array.ndim != want_ndim:
        found = 0x0800 | array.ndim if array.dtype == np.uint8 else None
        found_txt = f"0x{found:08x}" if found is not None else f"dtype {array.dtype}"
        what = "images" if images else "labels"
        raise DatasetError(
            f"{path}: wrong magic number for {what} ({found_txt}, expected 0x{magic:08x})"
        )


def _load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one images/labels pair."""
    x = read_idx(images_path)
    _check_magic(x, images_path, images=True)
    y = read_idx(labels_path)
    _check_magic(y, labels_path, images=False)
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{labels_path}: image/label count mismatch ({y.shape[0]} labels, "
            f"{x.shape[0]} images in {images_path.name})"
        )
    if x.shape[0] > 0 and (x.shape[1] == 0 or x.shape[2] == 0):
        raise DatasetError(f"{images_path}: images have zero size {x.shape[1:]}")
    return x, y


def _default_classes(y_train: np.ndarray, y_test: np.ndarray, labels_path: Path) -> tuple[str, ...]:
    """``"0".."9"`` when labels fit in ten classes, else ``"0"..str(max)`` if every class occurs.

    Labels above 9 with gaps below them (say 0..9 and 200) look like corruption rather
    than a bigger label set, so they are refused instead of inventing empty classes.
    """
    top = int(max(y_train.max(initial=0), y_test.max(initial=0)))
    if top <= 9:
        return tuple(str(i) for i in range(10))
    seen = np.unique(np.concatenate([y_train, y_test]))
    if seen.size != top + 1:
        raise DatasetError(
            f"{labels_path}: labels out of range (found {top} > 9 but only {seen.size} "
            "distinct labels; pass the class names to load a larger label set)"
        )
    return tuple(str(i) for i in range(top + 1))


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x H x W -> float32 N x 1 x H x W in [0, 1]; uint8 N -> int64 N."""
    xt = torch.from_numpy(x.astype(np.float32)).div_(255.0).unsqueeze(1)
    yt = torch.from_numpy(y.astype(np.int64))
    return xt, yt


def load_idx_dir(directory: Path, *, name: str, classes: Sequence[str] | None = None) -> Dataset:
    """Load an MNIST-style IDX directory (train + t10k) as a :class:`Dataset`.

    Images become float32 ``N x 1 x H x W`` tensors in [0, 1], labels int64.
    ``classes`` names the labels; by default ``"0".."9"`` (or ``"0"..max`` for a
    larger, gap-free label set). Every problem raises :class:`DatasetError` whose
    message starts with the offending file or directory.
    """
    directory = Path(directory)
    paths = find_idx_files(directory)
    x_train, y_train = _load_split(paths["train_images"], paths["train_labels"])
    x_test, y_test = _load_split(paths["test_images"], paths["test_labels"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{paths['test_images']}: image size {x_test.shape[1:]} differs from "
            f"{x_train.shape[1:]} in {paths['train_images'].name}"
        )
    if classes is not None:
        class_names = tuple(str(c) for c in classes)
        if not class_names:
            raise DatasetError(f"{directory}: the class list is empty")
    else:
        class_names = _default_classes(y_train, y_test, paths["train_labels"])
    for x, y, labels_path in (
        (x_train, y_train, paths["train_labels"]),
        (x_test, y_test, paths["test_labels"]),
    ):
        validate_arrays(x, y, source=str(labels_path), num_classes=len(class_names))

    xt_train, yt_train = _to_tensors(x_train, y_train)
    xt_test, yt_test = _to_tensors(x_test, y_test)
    return Dataset(
        name=name,
        x_train=xt_train,
        y_train=yt_train,
        x_test=xt_test,
        y_test=yt_test,
        classes=class_names,
        bounds=(0.0, 1.0),
        source=str(directory),
        extra={"files": {role: p.name for role, p in paths.items()}},
    )
