"""Attack sections' automatic settings: the digits defaults on small inputs, cheaper
auxiliary work (never a weaker attack) on large ones, and what the report states."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dlsec.audit.config import ConfigError, validate_options
from dlsec.audit.sections._scale import LARGE_INPUT_VALUES, auto, input_values, is_large, size_note
from dlsec.audit.sections.evasion_blackbox import (
    BlackBoxOptions,
    _settings,
    _surrogate_epochs,
)
from dlsec.audit.sections.poisoning import PoisoningOptions, sizes
from dlsec.audit.sections.privacy import PrivacyOptions
from dlsec.data import Dataset
from dlsec.models import ModelCard
from dlsec.scenarios.extraction import EXTRACTION_EVAL
from dlsec.scenarios.inversion import evaluator_epochs
from dlsec.scenarios.poisoning import Sizes, subsample

DIGITS = ModelCard("simplenet", input_shape=[1, 8, 8], classes=[str(i) for i in range(10)])
FASHION = ModelCard("smallcnn", input_shape=[1, 28, 28], classes=[str(i) for i in range(10)])


def _dataset(n_train: int, n_test: int, side: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(
        name="synthetic", x_train=torch.rand(n_train, 1, side, side, generator=g),
        y_train=torch.arange(n_train) % 10, x_test=torch.rand(n_test, 1, side, side, generator=g),
        y_test=torch.arange(n_test) % 10, classes=tuple(str(i) for i in range(10)),
        bounds=(0.0, 1.0),
    )


def test_input_size_rule() -> None:
    assert (input_values(DIGITS), input_values(FASHION)) == (64, 784)
    assert LARGE_INPUT_VALUES == 256
    assert not is_large(DIGITS) and is_large(FASHION)
    assert is_large(dataclasses.replace(DIGITS, input_shape=[1, 16, 17]))  # 272 values
    assert not is_large(dataclasses.replace(DIGITS, input_shape=[1, 16, 16]))  # 256 values
    assert auto(0, DIGITS, small=10, large=3) == 10
    assert auto(0, FASHION, small=10, large=3) == 3
    assert auto(7, FASHION, small=10, large=3) == 7  # the user's value wins
    assert size_note(FASHION) == "defaults for large inputs (784 values per input; large: more than 256)"


def test_poisoning_settings_by_input_size() -> None:
    assert sizes(PoisoningOptions(), DIGITS) == Sizes(10, 2000, None)
    large = sizes(PoisoningOptions(), FASHION)
    assert large == Sizes(3, 1000, 1000, sanitize_every_rate=False)
    explicit = PoisoningOptions(epochs=5, max_train=500, max_test=300)
    assert sizes(explicit, FASHION) == Sizes(5, 500, 300, sanitize_every_rate=False)
    o = PoisoningOptions(rates=[0.4, 0.2])
    assert [large.label_sanitizers(o, r) for r in o.rates] == [[], ["cleanlab"]]
    small = sizes(o, DIGITS)
    assert [small.label_sanitizers(o, r) for r in o.rates] == [["cleanlab"], ["cleanlab"]]
    ds = subsample(_dataset(3000, 2500, 28), 1000, torch.Generator().manual_seed(0), 2000)
    assert (ds.y_train.numel(), ds.y_test.numel()) == (1000, 2000)
    assert torch.bincount(ds.y_train).tolist() == [100] * 10  # stratified
    text = Sizes(3, 1000, 2000, sanitize_every_rate=False).text(ds, size_note(FASHION))
    assert text.startswith("each victim trains for 3 epochs on 1000 training samples (at most 1000) "
                           "and is scored on 2000 test samples; label sanitizers run at the "
                           "lowest rate only; defaults for large inputs")
    kept = subsample(_dataset(300, 80, 8), 2000, torch.Generator().manual_seed(0), None)
    assert (kept.y_train.numel(), kept.y_test.numel()) == (300, 80)  # untouched
    text = small.text(kept, size_note(DIGITS))
    assert "the whole test set; label sanitizers run at every rate" in text


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max-train": 5}, "max-train and max-test must be >= 10 (0: automatic)"),
        ({"max-test": -1}, "max-train and max-test must be >= 10"),
        ({"epochs": -1}, "epochs and batch-size must be >= 1"),
    ],
)
def test_poisoning_options_refused(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"\[poisoning\] " + message.replace("(", r"\(").replace(")", r"\)")):
        validate_options("poisoning", PoisoningOptions, table)


def test_blackbox_surrogate_settings_by_input_size() -> None:
    assert _surrogate_epochs(BlackBoxOptions(), DIGITS) == 30
    assert _surrogate_epochs(BlackBoxOptions(), FASHION) == 10
    assert _surrogate_epochs(BlackBoxOptions(surrogate_epochs=25), FASHION) == 25
    with pytest.raises(ConfigError, match="surrogate-epochs must be >= 1"):
        validate_options("blackbox", BlackBoxOptions, {"surrogate-epochs": -2})
    ds = _dataset(100, 10_000, 28)
    assert _settings(BlackBoxOptions(), FASHION, ds, 50) == (
        "50 attacked test points; transfer surrogates train for 10 epochs on at most 1600 oracle "
        "answers (gray-box: on 1600 labelled test records after the attacked ones); defaults "
        "for large inputs (784 values per input; large: more than 256)")
    small = _dataset(100, 360, 8)
    assert "gray-box: on 310 labelled test records" in _settings(BlackBoxOptions(), DIGITS, small, 50)
    assert "train for 30 epochs" in _settings(BlackBoxOptions(), DIGITS, small, 50)


def test_privacy_evaluator_epochs() -> None:
    assert EXTRACTION_EVAL == 2000
    assert evaluator_epochs(PrivacyOptions().evaluator_epochs, 1437) == 10
    assert evaluator_epochs(0, 60_000) == 1
    assert evaluator_epochs(PrivacyOptions(evaluator_epochs=4).evaluator_epochs, 60_000) == 4
    with pytest.raises(ConfigError, match="evaluator-epochs must be >= 1"):
        validate_options("privacy", PrivacyOptions, {"evaluator-epochs": -1})
