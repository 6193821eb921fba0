"""A user's file that is not what it should be: one DatasetError line, never a traceback.

Pipes, symlink loops, directories where a file belongs, paths the OS refuses,
class names that are not text, odd gzip streams, a missing home directory.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dlsec.cli import main
from dlsec.data import DatasetError, load_dataset, stratified_split
from dlsec.data.idx import load_idx_dir, read_idx
from dlsec.data.npz import load_npz
from dlsec.data.registry import default_data_dir

IMAGES = struct.pack(">IIII", 0x803, 2, 2, 2) + bytes(range(8))
LABELS = struct.pack(">II", 0x801, 2) + bytes([0, 1])
NAMES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def _idx_dir(directory: Path) -> Path:
    directory.mkdir()
    for name in NAMES:
        (directory / name).write_bytes(IMAGES if "images" in name else LABELS)
    return directory


def _error(spec: str) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(spec)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


X4 = np.zeros((4, 2), dtype=np.float32)
Y4 = np.array([0, 1, 0, 1])


@pytest.mark.timeout(30)
def test_a_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "d.npz"
    os.mkfifo(fifo)  # opening it for reading would wait forever for a writer
    assert _error(f"npz:{fifo}") == f"{fifo}: not a regular file, expected a .npz file"
    directory = _idx_dir(tmp_path / "idx")
    (directory / NAMES[3]).unlink()
    os.mkfifo(directory / NAMES[3])
    message = _error(f"idx:{directory}")
    assert message == f"{directory / NAMES[3]}: not a regular file, expected an IDX file"


def test_a_device_is_refused(tmp_path: Path) -> None:
    assert _error("npz:/dev/zero") == "/dev/zero: not a regular file, expected a .npz file"


def test_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "a.npz").symlink_to(tmp_path / "b.npz")
    (tmp_path / "b.npz").symlink_to(tmp_path / "a.npz")
    message = _error(f"npz:{tmp_path / 'a.npz'}")
    assert message.startswith(f"{tmp_path / 'a.npz'}: cannot read (") and "symbolic" in message
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    message = _error(f"idx:{tmp_path / 'loop'}")
    assert message.startswith(f"{tmp_path / 'loop'}: cannot read (") and "symbolic" in message
    directory = _idx_dir(tmp_path / "idx")
    (directory / NAMES[0]).unlink()
    (directory / NAMES[0]).symlink_to(directory / NAMES[0])
    message = _error(f"idx:{directory}")
    assert message.startswith(f"{directory / NAMES[0]}: cannot read (") and "symbolic" in message


def test_directories_where_files_belong(tmp_path: Path) -> None:
    (tmp_path / "d.npz").mkdir()
    assert (
        _error(f"npz:{tmp_path / 'd.npz'}")
        == f"{tmp_path / 'd.npz'}: is a directory, expected a .npz file"
    )
    directory = _idx_dir(tmp_path / "idx")
    (directory / NAMES[1]).unlink()
    (directory / NAMES[1]).mkdir()
    assert (
        _error(f"idx:{directory}")
        == f"{directory / NAMES[1]}: is a directory, expected an IDX file"
    )


def test_file_where_the_idx_directory_belongs(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    assert (
        _error(f"idx:{tmp_path / 'f'}")
        == f"{tmp_path / 'f'}: not a directory (expected a folder of IDX files)"
    )


@pytest.mark.parametrize("kind", ["npz", "idx"])
def test_paths_the_os_refuses(tmp_path: Path, kind: str) -> None:
    message = _error(f"{kind}:{tmp_path}/a\0b")
    assert "cannot read" in message and "null" in message
    long = tmp_path / ("x" * 5000)
    assert "cannot read" in _error(f"{kind}:{long}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", x=X4, y=Y4)
    path.chmod(0)
    assert _error(f"npz:{path}") == f"{path}: cannot read (Permission denied)"


@pytest.mark.parametrize(
    "classes,words",
    [
        (np.array([b"ok", b"\xff\xfe"]), ["'classes' entry 1", "not UTF-8"]),
        (np.array(["ok", "two\nlines"]), ["'classes' entry 1", "control characters"]),
        (np.array(["nul\0in", "ok"]), ["'classes' entry 0", "control characters"]),
        (
            np.frombuffer(struct.pack("<4I", 0x61, 0, 0xD800, 0), dtype="<U2"),
            ["entry 1", "Unicode"],
        ),
        (np.frombuffer(struct.pack(">2I", 0x110000, 0x62), dtype=">U1"), ["entry 0", "Unicode"]),
    ],
    ids=["bytes-not-utf8", "newline", "nul", "surrogate", "beyond-unicode"],
)
def test_class_names_that_are_not_text(
    tmp_path: Path, classes: np.ndarray, words: list[str]
) -> None:
    path = _npz(tmp_path / "d.npz", x=X4, y=Y4, classes=classes)
    message = _error(f"npz:{path}")
    assert message.startswith(str(path))
    for word in words:
        assert word in message, message


def test_utf8_bytes_class_names_are_decoded(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", x=X4, y=Y4, classes=np.array([b"chat", "Löwe".encode()]))
    ds = load_npz(path, seed=0, test_size=0.5)
    assert ds.classes == ("chat", "Löwe")


@pytest.mark.parametrize(
    "bounds", [np.array([0 + 1j, 1 + 0j]), np.array([False, True]), np.array(["0", "1"])],
    ids=["complex", "bool", "str"],
)
def test_bounds_of_the_wrong_type(tmp_path: Path, bounds: np.ndarray) -> None:
    path = _npz(tmp_path / "d.npz", x=X4, y=Y4, bounds=bounds)
    assert "'bounds' must be 2 numbers" in _error(f"npz:{path}")


def test_samples_of_zero_size(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", x=np.zeros((4, 0), dtype=np.float32), y=Y4)
    assert "'x' samples have zero size" in _error(f"npz:{path}")


def test_seed_beyond_what_torch_takes() -> None:
    with pytest.raises(DatasetError, match="seed"):
        stratified_split(np.zeros(4), test_size=0.5, seed=2**64)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="seed 18446744073709551616 is out of range"):
        load_dataset("digits", seed=2**64)


def test_member_without_npy_suffix_loads_as_np_load_does(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, array in {"x": X4 + 0.5, "y": Y4}.items():
            buf = io.BytesIO()
            np.save(buf, array)
            zf.writestr(key, buf.getvalue())
    ds = load_npz(path, seed=0, test_size=0.5)
    assert sorted(ds.y_train.tolist() + ds.y_test.tolist()) == [0, 0, 1, 1]
    assert float(ds.x_train.sum() + ds.x_test.sum()) == 4.0


def test_multi_member_gzip_loads_and_trailing_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(IMAGES[:10]) + gzip.compress(IMAGES[10:]))
    assert read_idx(path).tolist() == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    path.write_bytes(gzip.compress(IMAGES) + b"junk")
    with pytest.raises(DatasetError, match=r"corrupt gzip \(trailing garbage"):
        read_idx(path)
    path.write_bytes(gzip.compress(IMAGES)[:-4])  # the size trailer cut off
    with pytest.raises(DatasetError, match="corrupt gzip"):
        read_idx(path)


def test_gzip_with_a_wrong_crc_is_refused(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(IMAGES))
    data[-8] ^= 0xFF  # the CRC-32 of the uncompressed data
    directory = _idx_dir(tmp_path / "idx")
    (directory / NAMES[0]).unlink()
    (directory / f"{NAMES[0]}.gz").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="corrupt gzip"):
        load_idx_dir(directory, name="t")


def test_no_home_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("DLSEC_DATA_DIR", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(DatasetError, match="set DLSEC_DATA_DIR"):
        default_data_dir()


def test_cli_data_info_on_a_symlink_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.npz").symlink_to(tmp_path / "a.npz")
    assert main(["data", "info", f"npz:{tmp_path / 'a.npz'}"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'a.npz'}: cannot read")
    assert captured.out == ""
