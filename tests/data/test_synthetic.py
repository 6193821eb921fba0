"""cifar-synthetic and ``dlsec data make-synthetic``; NPZ inputs stored channels last."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dlsec.cli import main
from dlsec.data import DatasetError, load_dataset
from dlsec.data.core import stratified_split
from dlsec.data.npz import load_npz
from dlsec.data.synthetic import SYNTHETIC_SIZE, make_synthetic, write_synthetic


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


def test_same_seed_same_bytes_and_balanced_labels() -> None:
    x1, y1 = make_synthetic(50, seed=3)
    x2, y2 = make_synthetic(50, seed=3)
    x3, _ = make_synthetic(50, seed=4)
    assert (x1.shape, x1.dtype, y1.dtype) == ((50, 3, 32, 32), np.uint8, np.int64)
    assert _digest(x1) == _digest(x2) and _digest(y1) == _digest(y2)
    assert _digest(x1) != _digest(x3)
    assert np.bincount(y1).tolist() == [5] * 10


def test_classes_differ_by_texture_not_only_colour() -> None:
    """Classes k and k + 5 share a base colour: their mean colours agree to within the
    jitter, while their stripe orientations differ (a horizontal-difference energy test)."""
    x, y = make_synthetic(400, seed=0)
    xf = x.astype(np.float64) / 255
    mean_colour = np.stack([xf[y == k].mean(axis=(0, 2, 3)) for k in range(10)])
    assert np.abs(mean_colour[0] - mean_colour[5]).max() < 0.03
    assert np.abs(mean_colour[0] - mean_colour[1]).max() > 0.3
    # class 0: stripes at angle 0 vary along x only; class 5 (angle pi/2) along y only
    def along(k: int, axis: int) -> float:
        return float(np.abs(np.diff(xf[y == k], axis=axis)).mean())
    assert along(0, 3) > 1.2 * along(0, 2)
    assert along(5, 2) > 1.2 * along(5, 3)


def test_registered_dataset_is_seed_zero_split_by_the_run_seed() -> None:
    ds = load_dataset("cifar-synthetic", seed=1, test_size=0.2)
    assert tuple(ds.x_train.shape[1:]) == (3, 32, 32)
    assert (ds.x_train.shape[0], ds.x_test.shape[0]) == (SYNTHETIC_SIZE * 4 // 5, SYNTHETIC_SIZE // 5)
    assert torch.bincount(ds.y_test).tolist() == [SYNTHETIC_SIZE // 50] * 10
    x, y = make_synthetic(SYNTHETIC_SIZE, seed=0)
    train_idx, test_idx = stratified_split(torch.from_numpy(y), test_size=0.2, seed=1)
    # the generator's bytes scaled into [0, 1], split by the run's seed
    assert torch.equal(ds.x_test, torch.from_numpy(x[test_idx.numpy()]).float() / 255)
    assert torch.equal(ds.y_train, torch.from_numpy(y[train_idx.numpy()]))


def test_channels_last_npz_is_moved_to_channels_first(tmp_path: Path) -> None:
    x = np.zeros((4, 2, 5, 3), dtype=np.uint8)  # N x H x W x C
    x[1, 0, 4, 2] = 255  # sample 1, row 0, column 4, channel 2
    path = tmp_path / "c.npz"
    np.savez(path, x=x, y=np.array([0, 1, 0, 1]), x_test=x[:2], y_test=np.array([0, 1]))
    ds = load_npz(path, seed=0, test_size=0.5)
    assert tuple(ds.x_train.shape) == (4, 3, 2, 5)
    assert ds.x_train.is_contiguous()
    assert torch.nonzero(ds.x_train).tolist() == [[1, 2, 0, 4]]
    assert ds.x_train[1, 2, 0, 4].item() == 1.0


def test_channels_first_stays_when_both_axes_look_like_channels(tmp_path: Path) -> None:
    x = np.zeros((4, 3, 4, 3), dtype=np.float32)  # N x C x H x W with W = 3
    x[0, 1, 2, 0] = 0.5
    path = tmp_path / "c.npz"
    np.savez(path, x=x, y=np.array([0, 1, 0, 1]), x_test=x[:2], y_test=np.array([0, 1]))
    ds = load_npz(path, seed=0, test_size=0.5)
    assert tuple(ds.x_train.shape) == (4, 3, 4, 3)
    assert torch.nonzero(ds.x_train).tolist() == [[0, 1, 2, 0]]


def test_written_file_loads_the_same_either_layout(tmp_path: Path) -> None:
    first = write_synthetic(tmp_path / "a.npz", n=60, seed=2)
    write_synthetic(tmp_path / "b.npz", n=60, seed=2, channels_last=True)
    assert "60 samples" in first and "3x32x32" in first
    a = load_npz(tmp_path / "a.npz", seed=0, test_size=0.25)
    b = load_npz(tmp_path / "b.npz", seed=0, test_size=0.25)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.classes == tuple(f"pattern{k}" for k in range(10))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"n": 5}, "--n must lie in 10.."), ({"n": 20, "classes": 1}, "--classes"),
     ({"n": 20, "shape": (3, 2, 2)}, "4 x 4"), ({"n": 20, "shape": (32, 32)}, "C,H,W")],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, words: str) -> None:
    with pytest.raises(DatasetError, match=words):
        make_synthetic(**kwargs)


def test_cli_make_synthetic_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.npz"
    assert main(["data", "make-synthetic", "--n", "40", "--shape", "3,16,16", "--classes", "4",
                 "--out", str(out)]) == 0
    assert main(["data", "info", f"npz:{out}"]) == 0
    text = capsys.readouterr().out
    info = json.loads(text[text.index("{"):])
    assert info["input_shape"] == [3, 16, 16] and info["n_train"] == 32
    assert info["class_counts_test"] == [2, 2, 2, 2]
    assert main(["data", "make-synthetic", "--n", "3", "--out", str(tmp_path / "x.npz")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: synthetic data: --n"), lines
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_a_small_cnn_learns_it_in_three_epochs() -> None:
    from dlsec.training import TrainConfig, evaluate, train_model

    ds = load_dataset("cifar-synthetic", seed=0)
    model, _, _ = train_model(ds, "smallcnn", TrainConfig(epochs=3, seed=0, device="cpu"),
                              progress=False)
    # measured 0.897 on 400 test points (chance: 0.1)
    assert evaluate(model, ds.x_test, ds.y_test)["accuracy"] > 0.8


def test_cifar10_as_keras_saves_it_loads(tmp_path: Path) -> None:
    """CIFAR-10 as ``keras.datasets.cifar10.load_data()`` returns it: uint8 channels-last
    images and ``N x 1`` labels, saved with ``np.savez``."""
    x, y = make_synthetic(30, seed=5)
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    path = tmp_path / "cifar10.npz"
    np.savez(path, x=x_last[:20], y=y[:20, None].astype(np.uint8), x_test=x_last[20:],
             y_test=y[20:, None].astype(np.uint8))
    ds = load_npz(path, seed=0, test_size=0.2)
    assert tuple(ds.x_train.shape) == (20, 3, 32, 32) and ds.y_test.dtype == torch.int64
    assert torch.equal(ds.x_test, torch.from_numpy(x[20:]).float() / 255)
    assert torch.equal(ds.y_train, torch.from_numpy(y[:20]))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=x_last, y=np.stack([y, y], 1))
    with pytest.raises(DatasetError, match="1-D"):
        load_npz(bad, seed=0, test_size=0.2)
