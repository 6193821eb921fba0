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

import io
import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dlsec.data.core import (
    Dataset,
    DatasetError,
    check_directory,
    check_size,
    open_regular_file,
    validate_arrays,
)

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
    """File names accepted for one IDX file, in order of preference (see the module)."""
    stem, _, kind = canonical.rpartition("-idx")
    dotted = f"{stem}.idx{kind}"
    return [canonical, dotted, f"{canonical}.gz", f"{dotted}.gz"]


# Deflate cannot compress better than 1032:1; a gzip whose header declares more than
# this many bytes per compressed byte (plus slack for tiny files) is lying about its size.
_DEFLATE_MAX_RATIO = 1032
_READ_CHUNK = 1 << 20  # compressed bytes fed to zlib at a time
_OUT_CHUNK = 16 << 20  # most decompressed bytes held outside the result at a time


class _IdxStream:
    """The bytes of an IDX file, raw or gzip'd, read in order and never past a cap.

    Gzip'd data is inflated on demand with :func:`zlib.decompressobj` and
    ``max_length``, so a file that inflates to far more than its header declares
    costs no more memory than the declared size.
    """

    def __init__(self, fh: io.BufferedReader, path: Path, *, gz: bool) -> None:
        self._fh, self._path, self._gz = fh, path, gz
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz else None
        self._pending = b""  # compressed input not yet handed to the inflater

    def _corrupt(self, why: str) -> DatasetError:
        return DatasetError(f"{self._path}: corrupt gzip ({why})")

    def _inflate_some(self, limit: int) -> bytes:
        """Up to ``limit`` more decompressed bytes; b"" at the true end of the data."""
        while True:
            d = self._inflate
            assert d is not None
            if d.eof:  # one gzip member done: anything after it must be another member
                rest = d.unused_data + self._pending
                self._pending = b""
                if not rest:
                    rest = self._fh.read(_READ_CHUNK)
                if not rest:
                    return b""
                if rest[:2] != _GZIP_MAGIC:
                    raise self._corrupt("trailing garbage after the compressed data")
                self._inflate = d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._pending = rest
            data = d.unconsumed_tail or self._pending or self._fh.read(_READ_CHUNK)
            self._pending = b""
            if not data:
                raise self._corrupt("the compressed stream is cut off")
            try:
                out = d.decompress(data, limit)
            except zlib.error as exc:
                raise self._corrupt(str(exc)) from None
            if out:
                return out

    def read(self, n: int) -> bytearray:
        """Exactly ``n`` bytes, or fewer only at the end of the data."""
        buf = bytearray(n)
        if not self._gz:
            got = self._fh.readinto(buf)
            return buf if got == n else buf[:got]
        view, got = memoryview(buf), 0
        while got < n and (chunk := self._inflate_some(min(n - got, _OUT_CHUNK))):
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        view.release()
        return buf if got == n else buf[:got]

    def at_end(self) -> bool:
        """True when no data byte follows (a gzip stream is also checked to its CRC)."""
        if not self._gz:
            return not self._fh.read(1)
        return not self._inflate_some(1)


def _read_header(stream: _IdxStream, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Parse the magic number and dimensions: (shape, dtype, header length in bytes)."""
    head = bytes(stream.read(4))
    if len(head) < 4:
        raise DatasetError(
            f"{path}: truncated file ({len(head)} bytes, shorter than the 4-byte IDX header)"
        )
    zero, type_code, ndim = int.from_bytes(head[:2], "big"), head[2], head[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DatasetError(
            f"{path}: wrong magic number 0x{int.from_bytes(head, 'big'):08x} "
            "(not an IDX file; MNIST images start with 0x00000803, labels with 0x00000801)"
        )
    header_len = 4 + 4 * ndim
    dims = bytes(stream.read(4 * ndim))
    if len(dims) < 4 * ndim:
        raise DatasetError(
            f"{path}: truncated file ({4 + len(dims)} bytes, the header alone needs {header_len})"
        )
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    return shape, _IDX_DTYPES[type_code], header_len


def _check_declared(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, header_len: int, size: int, gz: bool,
    images: bool | None,
) -> None:
    """Everything the header alone can refute: kind, file size, the gzip's capacity, the cap."""
    if images is not None:
        _check_kind(shape, dtype, path, images=images)
    count = math.prod(shape)  # Python ints: a count cannot wrap around
    expected = count * dtype.itemsize
    if not gz and size - header_len != expected:
        actual = size - header_len
        if actual < expected:
            raise DatasetError(
                f"{path}: truncated file (header says shape {shape}, {expected} data "
                f"bytes, found {actual})"
            )
        raise DatasetError(
            f"{path}: {actual - expected} unexpected bytes after the data "
            f"(header says shape {shape}, {expected} data bytes)"
        )
    if gz and header_len + expected > _DEFLATE_MAX_RATIO * size + (1 << 16):
        raise DatasetError(
            f"{path}: header says shape {shape} ({expected:,} data bytes), more than "
            f"a {size:,}-byte gzip file can hold (corrupt or hostile header)"
        )
    check_size(count, 0, source=str(path), what=f"shape {shape}")


def _memory_need(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes to load one file: its data plus the float32 (images) or int64 (labels) copy."""
    count = math.prod(shape)
    return count * (dtype.itemsize + (8 if len(shape) == 1 else 4))


def read_idx_header(path: Path, *, images: bool | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an IDX file declares, checked as :func:`read_idx` does before
    reading data, reading only the file's first bytes."""
    _, shape, dtype = _read(Path(path), images, header_only=True)
    return shape, dtype


def read_idx(path: Path, *, images: bool | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a numpy array of its stored shape and type.

    The header's declared size (computed with Python ints, so a count that would wrap
    around cannot) is checked against the file's size, :data:`MAX_ELEMENTS` and the
    memory available before the data is read, and a gzip stream is inflated only up
    to that size. ``images`` True (False) requires uint8 N x H x W images (uint8 N
    labels), checked from the header alone. Raises :class:`DatasetError` naming the
    file for an unreadable file, corrupt gzip, bad magic number, or truncated or
    oversized data.
    """
    data, shape, dtype = _read(Path(path), images, header_only=False)
    return np.frombuffer(data, dtype=dtype, count=math.prod(shape)).reshape(shape)


def _read(
    path: Path, images: bool | None, *, header_only: bool
) -> tuple[bytearray, tuple[int, ...], np.dtype]:
    """The body of :func:`read_idx` (no data with ``header_only``): header checks, then the
    data."""
    fh, size = open_regular_file(path, expected="an IDX file")
    try:
        with fh:
            gz = path.suffix == ".gz" or fh.read(2) == _GZIP_MAGIC
            fh.seek(0)
            stream = _IdxStream(fh, path, gz=gz)
            shape, dtype, header_len = _read_header(stream, path)
            _check_declared(path, shape, dtype, header_len, size, gz, images)
            if header_only:
                return bytearray(), shape, dtype
            count = math.prod(shape)
            expected = count * dtype.itemsize
            check_size(count, _memory_need(shape, dtype), source=str(path), what=f"shape {shape}")
            data = stream.read(expected)
            if len(data) < expected:
                raise DatasetError(
                    f"{path}: truncated file (header says shape {shape}, {expected} data "
                    f"bytes, found {len(data)})"
                )
            if not stream.at_end():
                raise DatasetError(
                    f"{path}: unexpected bytes after the data "
                    f"(header says shape {shape}, {expected} data bytes)"
                )
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return data, shape, dtype


def find_idx_files(directory: Path) -> dict[str, Path]:
    """Map each role in :data:`IDX_FILES` to the file that holds it in ``directory``.

    Raises :class:`DatasetError` for a missing or empty directory, or naming every
    one of the four files that is missing.
    """
    directory = Path(directory)
    check_directory(directory, expected="a folder of IDX files")
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


def _check_kind(shape: tuple[int, ...], dtype: np.dtype, path: Path, *, images: bool) -> None:
    """Require uint8 N x H x W images or uint8 N labels, as MNIST stores them."""
    want_ndim, magic = (3, IMAGES_MAGIC) if images else (1, LABELS_MAGIC)
    if dtype != np.uint8 or len(shape) != want_ndim:
        found = 0x0800 | len(shape) if dtype == np.uint8 else None
        found_txt = f"0x{found:08x}" if found is not None else f"dtype {dtype}"
        what = "images" if images else "labels"
        raise DatasetError(
            f"{path}: wrong magic number for {what} ({found_txt}, expected 0x{magic:08x})"
        )


def _load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one images/labels pair."""
    x = read_idx(images_path, images=True)
    y = read_idx(labels_path, images=False)
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
    # every header checked, and the four declared sizes together against the memory
    # available, before any data is read
    need = 0
    for role, path in paths.items():
        shape, dtype = read_idx_header(path, images=role.endswith("images"))
        need += _memory_need(shape, dtype)
    check_size(0, need, source=str(directory), what="loading its four IDX files")
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
