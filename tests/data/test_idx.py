"""IDX loading: exact values from tiny hand-written files, every error, real Fashion-MNIST."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dlsec.data.core import DatasetError
from dlsec.data.idx import load_idx_dir, read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _expect_error(directory: Path, *words: str, classes: tuple[str, ...] | None = None) -> str:
    with pytest.raises(DatasetError) as info:
        load_idx_dir(directory, name="t", classes=classes)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


@pytest.mark.parametrize("gz", [False, True])
def test_loads_exact_values(
    make_idx_dir: Callable[..., Path], idx_arrays: dict[str, np.ndarray], gz: bool
) -> None:
    directory = make_idx_dir(gz=gz)
    ds = load_idx_dir(directory, name="tiny")
    assert ds.name == "tiny"
    assert ds.source == str(directory)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.shape == (6, 1, 3, 2) and ds.x_test.shape == (4, 1, 3, 2)
    expected = torch.from_numpy(idx_arrays["train_images"].astype(np.float32) / 255.0)
    assert torch.equal(ds.x_train[:, 0], expected)
    expected = torch.from_numpy(idx_arrays["test_images"].astype(np.float32) / 255.0)
    assert torch.equal(ds.x_test[:, 0], expected)
    assert ds.y_train.tolist() == [0, 1, 2, 9, 4, 1]
    assert ds.y_test.tolist() == [3, 9, 0, 7]
    assert ds.classes == tuple(str(i) for i in range(10))
    assert ds.bounds == (0.0, 1.0)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0


def test_dotted_names_and_custom_classes(
    make_idx_dir: Callable[..., Path], idx_arrays: dict[str, np.ndarray]
) -> None:
    directory = make_idx_dir(gz=True)
    for path in list(
        directory.iterdir()
    ):  # train-images-idx3-ubyte.gz -> train-images.idx3-ubyte.gz
        path.rename(directory / path.name.replace("-idx", ".idx"))
    classes = tuple(f"c{i}" for i in range(10))
    ds = load_idx_dir(directory, name="dotted", classes=classes)
    assert ds.classes == classes
    assert ds.y_train.tolist() == idx_arrays["train_labels"].tolist()


def test_raw_preferred_over_gz(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir()
    (directory / "train-images-idx3-ubyte.gz").write_bytes(b"not even gzip")
    ds = load_idx_dir(directory, name="t")
    assert ds.extra["files"]["train_images"] == "train-images-idx3-ubyte"


def test_larger_gap_free_label_set(
    make_idx_dir: Callable[..., Path], idx_arrays: dict[str, np.ndarray]
) -> None:
    x = np.zeros((12, 3, 2), dtype=np.uint8)
    directory = make_idx_dir(train_images=x, train_labels=np.arange(12, dtype=np.uint8))
    ds = load_idx_dir(directory, name="t")
    assert ds.classes == tuple(str(i) for i in range(12))


def test_read_idx_returns_stored_array(tmp_path: Path, idx_encode: Callable[..., bytes]) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a.idx.gz"
    path.write_bytes(gzip.compress(idx_encode(array)))
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    assert np.array_equal(out, array)


def test_wrong_magic_number(make_idx_dir: Callable[..., Path], idx_arrays: dict) -> None:
    # a labels file where the images should be
    directory = make_idx_dir(train_images=idx_arrays["train_labels"])
    message = _expect_error(directory, "train-images-idx3-ubyte", "wrong magic number")
    assert message.startswith(str(directory / "train-images-idx3-ubyte"))


def test_garbage_is_wrong_magic_number(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir(test_labels=b"hello, this is not IDX at all")
    _expect_error(directory, "t10k-labels-idx1-ubyte", "wrong magic number")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file(
    make_idx_dir: Callable[..., Path], idx_encode: Callable[..., bytes], gz: bool
) -> None:
    images = np.zeros((6, 3, 2), dtype=np.uint8)
    data = idx_encode(images)[:-7]  # header still says 6 images
    directory = make_idx_dir(gz=gz, train_images=gzip.compress(data) if gz else data)
    message = _expect_error(directory, "train-images-idx3-ubyte", "truncated")
    assert message.startswith(str(directory / "train-images-idx3-ubyte"))


def test_truncated_header(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir(train_labels=b"\x00\x00\x08\x01\x00")
    _expect_error(directory, "train-labels-idx1-ubyte", "truncated")


def test_trailing_bytes(
    make_idx_dir: Callable[..., Path], idx_encode: Callable[..., bytes]
) -> None:
    labels = np.zeros(4, dtype=np.uint8)
    directory = make_idx_dir(test_labels=idx_encode(labels) + b"\x00\x00")
    _expect_error(directory, "t10k-labels-idx1-ubyte", "unexpected bytes")


def test_count_mismatch(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir(train_labels=np.array([0, 1, 2, 3, 4], dtype=np.uint8))
    _expect_error(directory, "train-labels-idx1-ubyte", "count mismatch", "train-images-idx3-ubyte")


def test_labels_out_of_range_for_classes(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir()  # labels go up to 9
    _expect_error(directory, "train-labels-idx1-ubyte", "out of range", classes=("a", "b", "c"))


def test_test_labels_out_of_range_for_classes(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir(
        train_labels=np.array([0, 1, 0, 1, 0, 1], dtype=np.uint8),
        test_labels=np.array([0, 1, 5, 1], dtype=np.uint8),
    )
    _expect_error(directory, "t10k-labels-idx1-ubyte", "out of range", classes=("a", "b"))


def test_labels_above_nine_with_gaps_are_out_of_range(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir(train_labels=np.array([0, 1, 2, 200, 4, 1], dtype=np.uint8))
    _expect_error(directory, "train-labels-idx1-ubyte", "out of range", "200")


def test_missing_directory(tmp_path: Path) -> None:
    message = _expect_error(tmp_path / "nope", "nope", "not found")
    assert message.startswith(str(tmp_path / "nope"))


def test_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x")
    _expect_error(path, str(path), "not a directory")


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _expect_error(tmp_path / "empty", "empty", "train-images-idx3-ubyte")


def test_missing_one_file_names_it(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir(gz=True, skip=("test_labels",))
    message = _expect_error(directory, str(directory), "missing", "t10k-labels-idx1-ubyte")
    assert "train-images" not in message and "t10k-images" not in message


@pytest.mark.parametrize(
    "payload",
    [b"\x1f\x8b\x08\x00garbage garbage garbage", b"plainly not gzip"],
    ids=["bad-stream", "not-gzip"],
)
def test_corrupt_gzip(make_idx_dir: Callable[..., Path], payload: bytes) -> None:
    directory = make_idx_dir(gz=True, test_images=payload)
    message = _expect_error(directory, "t10k-images-idx3-ubyte.gz", "corrupt gzip")
    assert message.startswith(str(directory / "t10k-images-idx3-ubyte.gz"))


def test_cut_off_gzip(make_idx_dir: Callable[..., Path], idx_encode: Callable[..., bytes]) -> None:
    data = gzip.compress(idx_encode(np.arange(255, dtype=np.uint8).reshape(5, 17, 3)))
    directory = make_idx_dir(gz=True, test_images=data[: len(data) // 2])
    _expect_error(directory, "t10k-images-idx3-ubyte.gz", "corrupt gzip")


def test_image_size_differs_between_splits(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir(test_images=np.zeros((4, 5, 5), dtype=np.uint8))
    _expect_error(directory, "t10k-images-idx3-ubyte", "differs")


def test_empty_split(make_idx_dir: Callable[..., Path]) -> None:
    directory = make_idx_dir(
        test_images=np.zeros((0, 3, 2), dtype=np.uint8),
        test_labels=np.zeros(0, dtype=np.uint8),
    )
    _expect_error(directory, "t10k-labels-idx1-ubyte", "empty")


def test_real_fashion_mnist() -> None:
    """The Debian ``dataset-fashion-mnist`` package; CI installs it, so no skip here."""
    ds = load_idx_dir(FASHION_MNIST_DIR, name="fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert sorted(ds.y_train.unique().tolist()) == list(range(10))
    assert sorted(ds.y_test.unique().tolist()) == list(range(10))
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
