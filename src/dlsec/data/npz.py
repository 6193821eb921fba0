"""A user's own data as a NumPy ``.npz`` archive (loaded without ever unpickling).

Arrays in the archive:

=========== ========= ==========================================================
name        required  meaning
=========== ========= ==========================================================
``x``       yes       inputs: ``N x H x W`` (a channel axis is added),
                      ``N x C x H x W``, ``N x H x W x C`` (channels last, as
                      CIFAR-10's NumPy and Keras copies store it: moved to
                      ``N x C x H x W``), or ``N x D`` flat features; uint8
                      (scaled by 1/255 into [0, 1]) or float (used as is)
``y``       yes       integer class labels ``0..K-1``, shape ``N`` (or ``N x 1``)
``x_test``  no        a held-out test set; without it the data is split
``y_test``  no        stratified by ``seed`` and ``test_size``
``classes`` no        class names, strings, length ``K``
``bounds``  no        ``[lo, hi]``: the valid input range of float ``x``
                      (default ``[0, 1]``)
=========== ========= ==========================================================

A 4-D ``x`` is read as channels last when its last axis has 1, 3 or 4 entries (grey,
RGB, RGBA) and its second axis does not; otherwise as channels first. CIFAR-10 as
``x = N x 32 x 32 x 3`` uint8 with ``y`` (and ``x_test``/``y_test``) therefore loads
as it is. A flat ``N x 3072`` row (CIFAR-10's pickled batches) is taken as features:
reshape it to ``N x 3 x 32 x 32`` first.
"""

from __future__ import annotations

import math
import unicodedata
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from dlsec.data.core import (
    MAX_CLASSES,
    Dataset,
    DatasetError,
    check_size,
    label_range,
    open_regular_file,
    stratified_split,
    validate_arrays,
)

_KNOWN = ("x", "y", "x_test", "y_test", "classes", "bounds")


_NPY_HEADER_MAX = 10_000  # bytes of an .npy header (numpy's own default limit)
_DEFLATE_MAX_RATIO = 1032  # deflate cannot compress better than this
_READ_ERRORS = (
    OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
    NotImplementedError, KeyError,
)


def _member(zf: zipfile.ZipFile, key: str) -> zipfile.ZipInfo | None:
    """The archive entry holding array ``key`` (``key.npy``, or plain ``key`` as np.load allows)."""
    names = set(zf.namelist())
    for name in (f"{key}.npy", key):
        if name in names:
            return zf.getinfo(name)
    return None


def _declared(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, path: Path, archive_size: int
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the member's .npy header, checked against the member's sizes.

    Reads only the header: refuses object arrays (pickle), a shape whose data would
    not fit in the member, and a member the zip directory says inflates beyond what
    its compressed bytes can hold (a lying directory or a zip bomb).
    """
    where = f"{path}: array {key!r}"
    if (
        info.compress_size > archive_size
        or (info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size)
        or (
            info.compress_type == zipfile.ZIP_DEFLATED
            and info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + (1 << 16)
        )
    ):
        raise DatasetError(
            f"{where}: the zip directory says {info.compress_size:,} compressed bytes inflate "
            f"to {info.file_size:,}, which the file cannot hold (corrupt or hostile archive)"
        )
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp, _NPY_HEADER_MAX)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp, _NPY_HEADER_MAX)
        else:
            raise DatasetError(f"{where}: unsupported .npy format version {version}")
        header_len = fp.tell()
    if dtype.hasobject:
        raise DatasetError(
            f"{where} cannot be loaded without unpickling (dtype {dtype}); "
            "store plain numeric/string arrays"
        )
    if any(d < 0 for d in shape):
        raise DatasetError(f"{where}: negative dimension in its shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if nbytes > info.file_size - header_len:
        raise DatasetError(
            f"{where}: header says shape {shape} of {dtype} ({nbytes:,} bytes) but the "
            f"archive member holds {max(info.file_size - header_len, 0):,} (corrupt or "
            "hostile archive)"
        )
    return shape, dtype


def _open(path: Path) -> dict[str, np.ndarray]:
    """Read every known array of the archive into memory; never unpickle.

    Every member's declared shape is checked (against its zip entry, the caps of
    :mod:`dlsec.data.core` and the memory available) before any array is allocated.
    """
    fh, archive_size = open_regular_file(path, expected="a .npz file")
    with fh:
        if not zipfile.is_zipfile(fh):
            raise DatasetError(f"{path}: not a valid .npz archive (not a zip file)")
        arrays: dict[str, np.ndarray] = {}
        try:
            with zipfile.ZipFile(fh) as zf:
                names = [n.removesuffix(".npy") for n in zf.namelist()]
                members = {k: m for k in _KNOWN if (m := _member(zf, k)) is not None}
                need = 0
                for key, info in members.items():
                    shape, dtype = _declared(zf, info, key, path, archive_size)
                    count = math.prod(shape)
                    check_size(count, 0, source=f"{path}: array {key!r}", what=f"shape {shape}")
                    if key == "classes" and (len(shape) != 1 or shape[0] > MAX_CLASSES):
                        raise DatasetError(
                            f"{path}: 'classes' must be a 1-D array of at most "
                            f"{MAX_CLASSES:,} names, got shape {shape}"
                        )
                    # the array, then its float32 copy (and the split's) or int64 labels
                    need += count * (
                        dtype.itemsize + (8 if key in ("x", "x_test", "y", "y_test") else 0)
                    )
                check_size(0, need, source=str(path), what="loading its arrays")
                for key, info in members.items():
                    with zf.open(info) as fp:
                        arrays[key] = np.lib.format.read_array(
                            fp, allow_pickle=False, max_header_size=_NPY_HEADER_MAX
                        )
        except DatasetError:
            raise
        except MemoryError:
            raise DatasetError(f"{path}: not enough memory to load the arrays") from None
        except _READ_ERRORS as exc:
            raise DatasetError(f"{path}: not a valid .npz archive ({exc})") from None
    for key in ("x", "y"):
        if key not in arrays:
            found = ", ".join(repr(n) for n in names) or "none"
            raise DatasetError(f"{path}: missing array {key!r} (arrays found: {found})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise DatasetError(f"{path}: has {have!r} but no {lack!r}; give both or neither")
    return arrays


def _bounds(arrays: dict[str, np.ndarray], path: Path) -> tuple[float, float] | None:
    """The ``bounds`` array as (lo, hi), or None when absent."""
    if "bounds" not in arrays:
        return None
    b = arrays["bounds"]
    if b.shape != (2,) or b.dtype.kind not in "iuf":
        raise DatasetError(
            f"{path}: 'bounds' must be 2 numbers [lo, hi], got shape {b.shape} dtype {b.dtype}"
        )
    lo, hi = float(b[0]), float(b[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise DatasetError(f"{path}: 'bounds' must be finite with lo < hi, got [{lo}, {hi}]")
    return lo, hi


def _class_name(value: object, index: int, path: Path) -> str:
    """One class name as text, or a one-line error: not UTF-8, or control characters
    (a newline in a name would break every one-line message and table showing it)."""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: 'classes' entry {index} is not UTF-8 text") from None
    else:
        text = str(value)
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text):
        raise DatasetError(
            f"{path}: 'classes' entry {index} ({text.encode('utf-8', 'backslashreplace')!r}) "
            "contains control characters"
        )
    return text


def _classes(arrays: dict[str, np.ndarray], path: Path) -> tuple[str, ...] | None:
    """The ``classes`` array as a tuple of str, or None when absent."""
    if "classes" not in arrays:
        return None
    c = arrays["classes"]
    if c.ndim != 1 or c.dtype.kind not in "US" or c.size == 0:
        raise DatasetError(
            f"{path}: 'classes' must be a non-empty 1-D array of strings, "
            f"got shape {c.shape} dtype {c.dtype}"
        )
    if c.dtype.kind == "U" and c.dtype.itemsize:
        # code points numpy would crash on (above U+10FFFF) or cannot encode (surrogates)
        codes = np.frombuffer(c.tobytes(), dtype=np.dtype("u4").newbyteorder(c.dtype.byteorder))
        bad = (codes > 0x10FFFF) | ((codes >= 0xD800) & (codes <= 0xDFFF))
        if bad.any():
            index = int(np.flatnonzero(bad)[0]) // (c.dtype.itemsize // 4)
            raise DatasetError(f"{path}: 'classes' entry {index} is not valid Unicode text")
    names = tuple(_class_name(v, i, path) for i, v in enumerate(c.tolist()))
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: 'classes' has duplicate names")
    return names


CHANNELS = (1, 3, 4)
"""Channel counts that mark the last axis of a 4-D ``x`` as channels (grey, RGB, RGBA)."""


def channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a 4-D input shape is ``N x H x W x C`` (see the module's note)."""
    return len(shape) == 4 and shape[3] in CHANNELS and shape[1] not in CHANNELS


def _inputs(x: np.ndarray, key: str, path: Path, bounds: tuple[float, float] | None) -> np.ndarray:
    """Check dtype, shape and range of one input array; return float32 in bounds."""
    if x.ndim not in (2, 3, 4):
        raise DatasetError(
            f"{path}: {key!r} must be N x D, N x H x W or N x C x H x W, got shape {x.shape}"
        )
    if 0 in x.shape[1:]:
        raise DatasetError(f"{path}: {key!r} samples have zero size (shape {x.shape})")
    if x.dtype == np.uint8:
        if bounds is not None and bounds != (0.0, 1.0):
            raise DatasetError(
                f"{path}: {key!r} is uint8, which is scaled into [0, 1], but 'bounds' says "
                f"{list(bounds)}; drop the 'bounds' array or store float inputs"
            )
        xf = x.astype(np.float32)
        xf /= np.float32(255.0)
        return xf
    if not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"{path}: {key!r} must be uint8 (0..255) or float, got dtype {x.dtype}")
    xf = x.astype(np.float32, copy=False)
    if not np.isfinite(xf).all():
        bad = int((~np.isfinite(xf)).reshape(xf.shape[0], -1).any(axis=1).sum())
        raise DatasetError(f"{path}: {key!r}: {bad} input(s) contain NaN or inf")
    lo, hi = bounds if bounds is not None else (0.0, 1.0)
    if xf.size and (xf.min() < lo or xf.max() > hi):
        raise DatasetError(
            f"{path}: {key!r} values lie in [{xf.min():g}, {xf.max():g}], outside the bounds "
            f"[{lo:g}, {hi:g}]; pass a `bounds` array [lo, hi] in the .npz with the valid "
            "input range"
        )
    return xf


def load_npz(path: Path, *, seed: int, test_size: float) -> Dataset:
    """Load ``x``/``y`` (and optional test set, classes, bounds) from an .npz file.

    Without ``x_test``/``y_test`` the data is split stratified by ``seed`` into
    ``1 - test_size`` train and ``test_size`` test. Every problem raises
    :class:`DatasetError` whose message starts with the file path.
    """
    path = Path(path)
    arrays = _open(path)
    bounds = _bounds(arrays, path)
    class_names = _classes(arrays, path)

    pairs = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for xk, yk in pairs:
        x, y = arrays[xk], arrays[yk]
        if x.ndim == 0 or y.ndim == 0:
            raise DatasetError(f"{path}: {xk!r} and {yk!r} must be arrays, not scalars")
        if y.ndim == 2 and y.shape[1] == 1:  # N x 1 labels (Keras's CIFAR-10 copy)
            y = y[:, 0]
        source = f"{path}: {xk!r}/{yk!r}" if xk != "x" else str(path)
        validate_arrays(x, y, source=source, num_classes=len(class_names) if class_names else None)
        xs.append(_inputs(x, xk, path, bounds))
        ys.append(y.astype(np.int64))
    if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
        raise DatasetError(
            f"{path}: 'x_test' sample shape {xs[1].shape[1:]} differs from 'x' {xs[0].shape[1:]}"
        )
    if class_names is None:  # labels were checked to lie in 0..MAX_CLASSES-1
        top = max(label_range(y, source=str(path))[1] for y in ys)
        class_names = tuple(str(i) for i in range(top + 1))

    tensors_x = [torch.from_numpy(x) for x in xs]
    tensors_x = [t.permute(0, 3, 1, 2) if channels_last(tuple(t.shape)) else t for t in tensors_x]
    tensors_x = [t.unsqueeze(1) if t.ndim == 3 else t for t in tensors_x]
    tensors_y = [torch.from_numpy(y) for y in ys]
    if len(tensors_x) == 2:
        x_train, x_test = tensors_x
        y_train, y_test = tensors_y
        split = "file"
    else:
        train_idx, test_idx = stratified_split(tensors_y[0], test_size=test_size, seed=seed)
        if test_idx.numel() == 0 or train_idx.numel() == 0:
            raise DatasetError(
                f"{path}: too few samples per class ({tensors_y[0].numel()} in all) to split "
                "into train and test; add x_test/y_test or more data"
            )
        x_train, x_test = tensors_x[0][train_idx], tensors_x[0][test_idx]
        y_train, y_test = tensors_y[0][train_idx], tensors_y[0][test_idx]
        split = f"stratified(seed={seed}, test_size={test_size})"
    return Dataset(
        name=f"npz:{path}",
        x_train=x_train.contiguous(),
        y_train=y_train.contiguous(),
        x_test=x_test.contiguous(),
        y_test=y_test.contiguous(),
        classes=class_names,
        bounds=bounds if bounds is not None else (0.0, 1.0),
        source=str(path),
        extra={"split": split},
    )
