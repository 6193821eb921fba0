"""NPZ loading: shapes, scaling, bounds, splits, and every error naming the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dlsec.data.core import DatasetError
from dlsec.data.npz import load_npz


def _save(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _labels(n: int, k: int = 3) -> np.ndarray:
    return np.arange(n) % k


def _expect_error(path: Path, *words: str) -> str:
    with pytest.raises(DatasetError) as info:
        load_npz(path, seed=0, test_size=0.25)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def test_uint8_images_scaled_and_channel_added(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(12, 4, 5), dtype=np.uint8)
    y = _labels(12)
    xt = rng.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    path = _save(tmp_path / "d.npz", x=x, y=y, x_test=xt, y_test=np.array([0, 1, 2]))
    ds = load_npz(path, seed=0, test_size=0.25)
    assert ds.x_train.shape == (12, 1, 4, 5) and ds.x_test.shape == (3, 1, 4, 5)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(x.astype(np.float32) / 255.0))
    assert torch.equal(ds.x_test[:, 0], torch.from_numpy(xt.astype(np.float32) / 255.0))
    assert ds.y_train.tolist() == y.tolist() and ds.y_test.tolist() == [0, 1, 2]
    assert ds.classes == ("0", "1", "2")
    assert ds.bounds == (0.0, 1.0)
    assert ds.source == str(path)


def test_nchw_kept_and_classes_read(tmp_path: Path) -> None:
    x = np.full((6, 3, 2, 2), 0.5, dtype=np.float32)
    path = _save(
        tmp_path / "d.npz", x=x, y=_labels(6, 2), x_test=x[:2], y_test=np.array([1, 0]),
        classes=np.array(["cat", "dog"]),
    )
    ds = load_npz(path, seed=0, test_size=0.25)
    assert ds.x_train.shape == (6, 3, 2, 2)
    assert ds.classes == ("cat", "dog")


def test_flat_features_with_bounds_and_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-3, 3, size=(48, 7))
    y = _labels(48, 4)
    path = _save(tmp_path / "d.npz", x=x, y=y, bounds=np.array([-3.0, 3.0]))
    ds = load_npz(path, seed=5, test_size=0.25)
    assert ds.bounds == (-3.0, 3.0)
    assert ds.x_train.shape == (36, 7) and ds.x_test.shape == (12, 7)
    assert ds.x_train.dtype == torch.float32
    # the split is stratified and deterministic in the seed
    assert torch.bincount(ds.y_test).tolist() == [3, 3, 3, 3]
    again = load_npz(path, seed=5, test_size=0.25)
    assert torch.equal(ds.x_test, again.x_test)
    other = load_npz(path, seed=6, test_size=0.25)
    assert not torch.equal(ds.x_test, other.x_test)
    # every row appears exactly once across train and test
    rows = torch.cat([ds.x_train, ds.x_test]).double()
    assert sorted(map(tuple, rows.tolist())) == sorted(
        map(tuple, torch.from_numpy(x).float().double().tolist())
    )


def test_float_outside_default_bounds_says_pass_bounds(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.full((4, 2), 2.0), y=_labels(4, 2))
    _expect_error(path, "outside the bounds", "`bounds`")


def test_float_outside_given_bounds(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "d.npz", x=np.full((4, 2), -2.0), y=_labels(4, 2), bounds=np.array([-1, 1])
    )
    _expect_error(path, "outside the bounds")


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "none.npz", "not found")


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"this is no zip archive")
    _expect_error(path, "not a valid .npz")


def test_plain_npy_is_not_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3))
    _expect_error(path, "not a valid .npz")


def test_pickled_object_array_is_refused(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "d.npz", x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1])
    )
    _expect_error(path, "'x'", "unpickling")


def test_pickle_file_is_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(pickle.dumps({"x": 1}))
    _expect_error(path, "not a valid .npz")


@pytest.mark.parametrize("missing", ["x", "y"])
def test_missing_required_array(tmp_path: Path, missing: str) -> None:
    arrays = {"x": np.zeros((4, 2)), "y": _labels(4, 2)}
    del arrays[missing]
    path = _save(tmp_path / "d.npz", **arrays)
    _expect_error(path, "missing array", repr(missing))


def test_test_arrays_come_in_pairs(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((4, 2)), y=_labels(4, 2), x_test=np.zeros((2, 2)))
    _expect_error(path, "'x_test'", "'y_test'")


def test_count_mismatch(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((4, 2)), y=_labels(5, 2))
    _expect_error(path, "count mismatch")


def test_test_count_mismatch(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "d.npz", x=np.zeros((4, 2)), y=_labels(4, 2),
        x_test=np.zeros((3, 2)), y_test=_labels(2, 2),
    )
    _expect_error(path, "count mismatch", "x_test")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path: Path, bad: float) -> None:
    x = np.zeros((4, 2))
    x[1, 1] = bad
    path = _save(tmp_path / "d.npz", x=x, y=_labels(4, 2))
    _expect_error(path, "NaN or inf")


def test_labels_out_of_range_for_classes(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 2, 1]),
        classes=np.array(["a", "b"]),
    )
    _expect_error(path, "out of range")


def test_negative_labels(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array([0, -1, 1, 0]))
    _expect_error(path, "out of range", "< 0")


def test_non_integer_labels(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array([0.0, 0.5, 1.0, 1.0]))
    _expect_error(path, "integers")


def test_string_labels(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array(["a", "b", "a", "b"]))
    _expect_error(path, "integers")


def test_empty(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((0, 2)), y=np.zeros(0, dtype=np.int64))
    _expect_error(path, "empty")


def test_bad_shape(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros(4), y=_labels(4, 2))
    _expect_error(path, "N x D")


def test_bad_bounds_array(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((4, 2)), y=_labels(4, 2), bounds=np.array([1.0]))
    _expect_error(path, "'bounds'")


def test_integer_inputs_other_than_uint8(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((4, 2), dtype=np.int64), y=_labels(4, 2))
    _expect_error(path, "uint8", "float")


def test_too_small_to_split(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((2, 2)), y=np.array([0, 1]))
    _expect_error(path, "split")
