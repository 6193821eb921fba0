"""Hostile files: each is refused with a one-line DatasetError before anything big is allocated.

The files are built in a temporary folder (a 2 MB gzip that inflates to 2 GiB costs
2 MB to write: one deflate block of a MiB of zeros, repeated). All of them are loaded
in one child process whose address space is capped at 1 GiB above what it uses after
its imports, so a loader that tried to allocate what a file declares would fail with
a MemoryError (reported as such, failing the test) instead of passing quietly; the
child also reports its peak resident memory after each file.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
MIB = 1 << 20


def _idx_header(*dims: int, magic: int | None = None) -> bytes:
    magic = (0x0800 | len(dims)) if magic is None else magic
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)


def gzip_of_zeros(prefix: bytes, zero_mib: int) -> bytes:
    """A gzip of ``prefix`` then ``zero_mib`` MiB of zeros, built in about a millisecond.

    After a full flush deflate's output for a MiB of zeros is always the same block, so
    it is compressed once and repeated. The trailer's CRC is left wrong: a loader that
    reads to the end fails there, one that stops at the declared size never gets there.
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(b"\0" * MIB) + comp.flush(zlib.Z_FULL_FLUSH)
    return GZIP_HEADER + head + block * zero_mib + comp.flush(zlib.Z_FINISH) + b"\0" * 8


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def raw_zip(path: Path, members: dict[str, tuple[bytes, int, int]]) -> Path:
    """A zip written by hand so its directory can lie: name -> (deflate data, claimed size, crc)."""
    local, central = b"", b""
    for name, (data, size, crc) in members.items():
        n = name.encode()
        offset = len(local)
        fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0, crc, len(data), size)
        local += b"PK\x03\x04" + fields + struct.pack("<HH", len(n), 0) + n + data
        central += (
            b"PK\x01\x02" + struct.pack("<H", 20) + fields
            + struct.pack("<HHHHHII", len(n), 0, 0, 0, 0, 0, offset) + n
        )
    end = b"PK\x05\x06" + struct.pack(
        "<HHHHIIH", 0, 0, len(members), len(members), len(central), len(local), 0
    )
    path.write_bytes(local + central + end)
    return path


def deflate_of_zeros(prefix: bytes, zero_mib: int) -> bytes:
    """Raw deflate (as in a zip) of ``prefix`` then ``zero_mib`` MiB of zeros."""
    return gzip_of_zeros(prefix, zero_mib)[len(GZIP_HEADER) : -8]


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _idx_dir(root: Path, name: str, **files: bytes) -> Path:
    """A folder of the four MNIST files: tiny valid ones, some replaced by ``files``."""
    directory = root / name
    directory.mkdir()
    valid = {
        "train-images-idx3-ubyte": _idx_header(2, 2, 2) + bytes(8),
        "train-labels-idx1-ubyte": _idx_header(2) + bytes([0, 1]),
        "t10k-images-idx3-ubyte": _idx_header(2, 2, 2) + bytes(8),
        "t10k-labels-idx1-ubyte": _idx_header(2) + bytes([1, 0]),
    }
    for file_name, data in files.items():
        valid.pop(file_name.removesuffix(".gz"), None)
        valid[file_name] = data
    for file_name, data in valid.items():
        (directory / file_name).write_bytes(data)
    return directory


# case -> (builder(tmp) -> spec for load_dataset, words the message must hold)
def _cases(root: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    x4 = np.zeros((4, 2), dtype=np.float32)
    two_labels = npy_bytes(np.array([0, 1]))
    mnist_images = _idx_header(60000, 28, 28)
    cases: dict[str, tuple[Path, tuple[str, ...]]] = {
        # labels whose size would drive an allocation (bincount, one class name per label)
        "uint64-label-2^33": (
            _npz(root / "u64.npz", x=x4, y=np.array([0, 1, 2, 2**33], dtype=np.uint64)),
            ("labels out of range", "8589934592", "100,000 classes"),
        ),
        "uint64-label-max": (
            _npz(root / "u64max.npz", x=x4, y=np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64)),
            ("labels out of range", "18446744073709551615"),
        ),
        "int64-label-negative-huge": (
            _npz(root / "neg.npz", x=x4, y=np.array([0, 1, -(2**40), 1], dtype=np.int64)),
            ("labels out of range", "-1099511627776 < 0"),
        ),
        "float-label-1e300": (
            _npz(root / "f.npz", x=x4, y=np.array([0.0, 1.0, 1e300, 1.0])),
            ("labels out of range", "1e+300"),
        ),
        "uint64-test-label": (
            _npz(
                root / "u64test.npz",
                x=x4,
                y=np.array([0, 1, 0, 1]),
                x_test=x4,
                y_test=np.array([0, 2**35, 0, 1], dtype=np.uint64),
            ),
            ("'y_test'", "labels out of range", "34359738368"),
        ),
        # an npz member whose npy header declares far more than the member holds
        "npz-shape-beyond-member": (
            raw_zip(
                root / "shape.npz",
                {
                    "x.npy": (
                        deflate_of_zeros(npy_header((2, 1 << 40)), 0),
                        len(npy_header((2, 1 << 40))),
                        zlib.crc32(npy_header((2, 1 << 40))),
                    ),
                    "y.npy": (
                        deflate_of_zeros(two_labels, 0),
                        len(two_labels),
                        zlib.crc32(two_labels),
                    ),
                },
            ),
            ("array 'x'", "(2, 1099511627776)", "corrupt or hostile archive"),
        ),
        # a zip bomb: 2 GiB of zeros in 2 MB, the directory honest about it
        "npz-zip-bomb": (
            raw_zip(
                root / "bomb.npz",
                {
                    "x.npy": (
                        deflate_of_zeros(npy_header((1 << 31,), "|u1"), 2048),
                        len(npy_header((1 << 31,), "|u1")) + (1 << 31),
                        0,
                    )
                },
            ),
            ("array 'x'", "2,147,483,648 values", "more than dlsec loads"),
        ),
        # a zip directory that claims a tiny member inflates to 4 GiB
        "npz-lying-directory": (
            raw_zip(
                root / "lie.npz",
                {"x.npy": (deflate_of_zeros(npy_header((1 << 29,), "<f4"), 1), 3 << 30, 0)},
            ),
            ("array 'x'", "inflate", "corrupt or hostile archive"),
        ),
        "npz-too-many-classes": (
            raw_zip(
                root / "classes.npz",
                {
                    "classes.npy": (
                        deflate_of_zeros(npy_header((1 << 26,), "<U8"), 2048),
                        len(npy_header((1 << 26,), "<U8")) + (2 << 30),
                        0,
                    )
                },
            ),
            ("'classes'", "at most 100,000"),
        ),
        # IDX: a header whose count product would wrap around a 64-bit integer
        "idx-count-wraps": (
            _idx_dir(
                root,
                "wrap",
                **{
                    "train-images-idx3-ubyte": _idx_header(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
                    + bytes(64)
                },
            ),
            ("train-images-idx3-ubyte", "truncated", "79228162458924105385300197375 data bytes"),
        ),
        "idx-gz-count-wraps": (
            _idx_dir(
                root,
                "wrapgz",
                **{
                    "train-images-idx3-ubyte.gz": gzip_of_zeros(
                        _idx_header(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), 2
                    )
                },
            ),
            ("train-images-idx3-ubyte.gz", "more than a", "gzip file can hold"),
        ),
        "idx-size-disagrees-with-file": (
            _idx_dir(root, "short", **{"train-labels-idx1-ubyte": _idx_header(1 << 31) + b"\0"}),
            ("train-labels-idx1-ubyte", "truncated", "2147483648 data bytes, found 1"),
        ),
        # the 2 MB gzip that inflates to 2 GiB, under an MNIST-sized header ...
        "idx-gz-bomb-small-header": (
            _idx_dir(
                root, "bomb", **{"train-images-idx3-ubyte.gz": gzip_of_zeros(mnist_images, 2048)}
            ),
            ("train-images-idx3-ubyte.gz", "unexpected bytes after the data"),
        ),
        # ... and under a header that declares all of it
        "idx-gz-bomb-honest-header": (
            _idx_dir(
                root,
                "bomb2",
                **{
                    "t10k-images-idx3-ubyte.gz": gzip_of_zeros(
                        _idx_header(2048 * MIB // 784, 28, 28), 2048
                    )
                },
            ),
            ("t10k-images-idx3-ubyte.gz", "values", "more than dlsec loads"),
        ),
        # within the caps, but more than this process may allocate (1 GiB left)
        "idx-gz-beyond-memory": (
            _idx_dir(
                root,
                "big",
                **{"train-images-idx3-ubyte.gz": gzip_of_zeros(_idx_header(1 << 29, 1, 1), 512)},
            ),
            ("needs about", "GiB of memory", "available"),
        ),
    }
    return {
        name: (("npz:" if path.suffix == ".npz" else "idx:") + str(path), words)
        for name, (path, words) in cases.items()
    }


CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from dlsec.data import DatasetError, load_dataset

    def kib(key):
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith(key))

    cap = kib("VmSize:") * 1024 + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    for name, spec in json.loads(sys.argv[1]).items():
        try:
            load_dataset(spec)
            kind, message = "loaded", ""
        except DatasetError as exc:
            kind, message = "DatasetError", str(exc)
        except BaseException as exc:  # what the test must never see
            kind, message = type(exc).__name__, str(exc)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        out[name] = {"kind": kind, "message": message, "grown_mib": grown / 1024}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("hostile")
    cases = _cases(root)
    specs = {name: spec for name, (spec, _) in cases.items()}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(specs)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    for name, (spec, words) in cases.items():
        results[name].update(spec=spec, words=words)
    return results


CASE_NAMES = [
    "uint64-label-2^33", "uint64-label-max", "int64-label-negative-huge", "float-label-1e300",
    "uint64-test-label", "npz-shape-beyond-member", "npz-zip-bomb", "npz-lying-directory",
    "npz-too-many-classes", "idx-count-wraps", "idx-gz-count-wraps",
    "idx-size-disagrees-with-file", "idx-gz-bomb-small-header", "idx-gz-bomb-honest-header",
    "idx-gz-beyond-memory",
]


def test_every_case_is_listed(tmp_path: Path) -> None:
    assert sorted(_cases(tmp_path)) == sorted(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_file_is_refused_in_one_line_without_allocating(
    hostile: dict[str, dict], name: str
) -> None:
    result = hostile[name]
    assert result["kind"] == "DatasetError", result
    message = result["message"]
    assert "\n" not in message and message
    path = result["spec"].split(":", 1)[1]
    assert message.startswith(path), message
    for word in result["words"]:
        assert word in message, f"{word!r} not in {message!r}"
    # the largest legitimate buffer here is the MNIST-sized 47 MB of the small-header bomb
    assert result["grown_mib"] < 150, result
