"""Dataset specs: ``digits``, ``cifar-synthetic``, ``fashion-mnist``, ``mnist``, ``idx:DIR``,
``npz:PATH``."""

from __future__ import annotations

import os
from pathlib import Path

from dlsec.data.core import Dataset, DatasetError

DATASET_NAMES = ("digits", "cifar-synthetic", "fashion-mnist", "mnist", "idx:DIR", "npz:PATH")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)


def default_data_dir() -> Path:
    """Where ``dlsec data fetch`` puts downloads by default ($DLSEC_DATA_DIR or ~/.cache/dlsec)."""
    env = os.environ.get("DLSEC_DATA_DIR")
    if env:
        return Path(env)
    try:
        return Path.home() / ".cache" / "dlsec"
    except RuntimeError:  # no $HOME and no password entry
        raise DatasetError(
            "cannot find a home directory for the dataset cache; set DLSEC_DATA_DIR"
        ) from None


def load_dataset(spec: str, *, seed: int = 0, test_size: float = 0.2) -> Dataset:
    """Load a dataset by spec. ``seed``/``test_size`` split datasets that ship no test set."""
    from dlsec.data.digits import load_digits
    from dlsec.data.idx import load_idx_dir
    from dlsec.data.npz import load_npz
    from dlsec.data.synthetic import SYNTHETIC_NAME, load_synthetic

    if spec == "digits":
        return load_digits(seed=seed, test_size=test_size)
    if spec == SYNTHETIC_NAME:
        return load_synthetic(seed=seed, test_size=test_size)
    if spec == "fashion-mnist":
        directory = Path(os.environ.get("DLSEC_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
        if not directory.is_dir():
            raise DatasetError(
                f"{directory}: Fashion-MNIST not found "
                "(install it with `apt-get install dataset-fashion-mnist`, or use idx:DIR)"
            )
        return load_idx_dir(directory, name="fashion-mnist", classes=FASHION_MNIST_CLASSES)
    if spec == "mnist":
        directory = default_data_dir() / "mnist"
        if not directory.is_dir():
            raise DatasetError(
                f"{directory}: MNIST not found (run `dlsec data fetch mnist --to {directory}`)"
            )
        return load_idx_dir(directory, name="mnist")
    if spec.startswith("idx:"):
        return load_idx_dir(Path(spec[4:]), name=f"idx:{spec[4:]}")
    if spec.startswith("npz:"):
        return load_npz(Path(spec[4:]), seed=seed, test_size=test_size)
    raise DatasetError(f"unknown dataset {spec!r} (choose from {', '.join(DATASET_NAMES)})")
