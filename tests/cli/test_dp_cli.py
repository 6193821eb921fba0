"""``dlsec train --dp`` and ``dlsec privacy budget``: the round trip, and every bad input one
line on stderr, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path

import pytest

from dlsec.cli import main

FAST = ["--epochs", "2", "--lr", "0.01", "--schedule", "none", "-q"]


def test_train_dp_then_budget_round_trip(tmp_path: Path, capsys) -> None:
    out = tmp_path / "dp"
    assert main(["train", "--out", str(out), "--dp", "--epsilon", "3", "--delta", "1e-5",
                 "--max-grad-norm", "1.0", *FAST]) == 0
    io = capsys.readouterr()
    assert "DP-SGD, epsilon" in io.out and "per-sample gradients: ghost" in io.err
    assert {p.name for p in out.iterdir()} >= {"card.json", "history.json"}
    assert main(["privacy", "budget", "--model-dir", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    record = dict(line.strip().split(": ", 1) for line in lines[1:])
    assert float(record["epsilon_prv"]) <= 3.0 + 0.05
    assert float(record["epsilon_rdp"]) > 0 and record["delta"] == "1e-05"
    assert record["max_grad_norm"] == "1" and int(record["steps"]) > 0
    assert record["accountant"] == "prv" and record["fixed_layers"] == "none"


def test_budget_of_a_model_trained_without_dp(model_dir: Path, capsys) -> None:
    assert main(["privacy", "budget", "--model-dir", str(model_dir)]) == 0
    assert "not trained with differential privacy" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "words"), [
    (["--dp", "--epsilon", "0"], "'--epsilon': 0 is not in the range"),
    (["--dp", "--epsilon", "-2"], "'--epsilon': -2 is not in the range"),
    (["--dp", "--delta", "1"], "'--delta': 1 is not in the range 0 < x < 1"),
    (["--dp", "--delta", "0"], "'--delta': 0 is not in the range 0 < x < 1"),
    (["--dp", "--max-grad-norm", "0"], "'--max-grad-norm': 0 is not in the range"),
    (["--dp", "--epsilon", "0.0001"], "target epsilon 0.0001 (delta 1e-05) is unreachable"),
    (["--dp", "--adversarial", "pgd", "--eps", "0.1"], "--dp and --adversarial"),
    (["--dp", "--epsilon", "3", "--noise-multiplier", "1"], "exclude each other"),
    (["--epsilon", "3"], "--epsilon only apply with --dp"),
    (["--dp-fix"], "--dp-fix only apply with --dp"),
])
def test_bad_dp_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys, args, words) -> None:
    out = tmp_path / "never"
    assert main(["train", "--out", str(out), *args, "--epochs", "1", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not out.exists()


def test_delta_above_one_over_n_warns_and_trains(tmp_path: Path, capsys) -> None:
    out = tmp_path / "dp"
    assert main(["train", "--out", str(out), "--dp", "--noise-multiplier", "1", "--delta",
                 "0.01", *FAST]) == 0
    err = capsys.readouterr().err
    assert "warning: delta 0.01 >= 1/n" in err
    assert (out / "card.json").is_file()


# -- --dp-fix models reload; the fix record is checked ----------------------------------------

BN_FACTORY = """
import torch.nn as nn

def build(num_classes, in_channels, height, width):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * height * width, num_classes))

def build_1d(num_classes, in_channels, height, width):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * height * width, 16),
                         nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes))
"""


@pytest.fixture(scope="module")
def bn_factory(tmp_path_factory) -> str:
    """``module:build``, a conv net with BatchNorm2d, importable in this module's tests."""
    module = f"dlsec_dp_bn_{uuid.uuid4().hex[:12]}"
    lib = tmp_path_factory.mktemp("lib")
    (lib / f"{module}.py").write_text(BN_FACTORY)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(lib))
        yield f"{module}:build"
    sys.modules.pop(module, None)


@pytest.fixture(scope="module")
def trained_fixed(tmp_path_factory, bn_factory: str) -> Path:
    """A model trained with --dp --dp-fix (BatchNorm2d -> GroupNorm), saved once."""
    out = tmp_path_factory.mktemp("fixed") / "model"
    assert main(["train", "--out", str(out), "--model", bn_factory, "--dp", "--dp-fix",
                 "--epsilon", "3", "--epochs", "2", "--lr", "0.05", "-q"]) == 0
    return out  # no warning of a lonely GroupNorm here: see the BatchNorm1d test


@pytest.fixture
def fixed_model(trained_fixed: Path, tmp_path: Path) -> Path:
    """A copy of :func:`trained_fixed` this test may damage."""
    import shutil

    return Path(shutil.copytree(trained_fixed, tmp_path / "fixed"))


def _card(model_dir: Path) -> dict:
    return json.loads((model_dir / "card.json").read_text())


def test_a_dp_fix_model_reloads_with_its_training_accuracy(fixed_model: Path, tmp_path: Path,
                                                           capsys) -> None:
    from torch import nn

    from dlsec.models import load

    card = _card(fixed_model)
    assert card["training"]["dp"]["fixed_layers"] == ["1: BatchNorm2d -> GroupNorm"]
    trained = card["metrics"]["test_accuracy"]
    assert trained > 0.5  # measured 0.92 after 2 epochs at epsilon 3 (chance 0.10)
    model, _ = load(fixed_model, trust_code=True)
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    from dlsec.data import load_dataset
    from dlsec.scenarios.dp import _constant_group_norms

    # GroupNorm over 8 channels of 8 x 8: groups of 64 values, no warning
    assert _constant_group_norms(model, load_dataset("digits").x_train[:2]) == []
    run = tmp_path / "audit"
    assert main(["audit", "--model-dir", str(fixed_model), "--trust-code", "--sections",
                 "accuracy", "--out", str(run), "-q"]) == 0, capsys.readouterr().err
    audited = json.loads((run / "report.json").read_text())["metrics"]["accuracy.clean_accuracy"]
    assert abs(audited - trained) <= 1.5 / 359  # the same 359 test digits: at most one flip


@pytest.mark.parametrize(("fixed_layers", "words"), [
    (["1: BatchNorm2d -> LayerNorm"], ["'1: BatchNorm2d -> LayerNorm'", "1: BatchNorm2d -> GroupNorm"]),
    (["3: BatchNorm2d -> GroupNorm"], ["is not what Opacus's ModuleValidator.fix does"]),
    ("1", ["'dp.fixed_layers' must be a list of layer names"]),
    ([1], ["'dp.fixed_layers' must be a list of layer names"]),
])
def test_a_damaged_fix_record_is_one_line(fixed_model: Path, capsys, one_line_error,
                                          fixed_layers, words) -> None:
    card = _card(fixed_model)
    card["training"]["dp"]["fixed_layers"] = fixed_layers
    (fixed_model / "card.json").write_text(json.dumps(card))
    capsys.readouterr()
    assert main(["privacy", "membership", "--model-dir", str(fixed_model), "--trust-code",
                 "--attack", "loss", "--members", "20"]) == 2
    one_line_error(capsys.readouterr().err, *words)


def test_a_fixed_batchnorm1d_that_zeroes_its_features_is_warned_about(
        tmp_path: Path, bn_factory: str, capsys) -> None:
    out = tmp_path / "bn1d"
    assert main(["train", "--out", str(out), "--model", bn_factory.replace(":build", ":build_1d"),
                 "--dp", "--dp-fix", "--noise-multiplier", "1", *FAST]) == 0
    err = capsys.readouterr().err
    warning = [ln for ln in err.splitlines() if ln.startswith("warning: layer 2 (GroupNorm")]
    assert len(warning) == 1 and "outputs its bias whatever the input" in warning[0]
    assert _card(out)["metrics"]["test_accuracy"] < 0.2  # measured 0.10: chance


def test_a_fix_record_on_a_model_without_the_layer_is_refused(model_dir: Path, tmp_path: Path,
                                                              capsys, one_line_error) -> None:
    import shutil

    copy = tmp_path / "plain"
    shutil.copytree(model_dir, copy)
    card = _card(copy)
    card["training"]["dp"] = {"fixed_layers": ["2: BatchNorm1d -> GroupNorm"]}
    (copy / "card.json").write_text(json.dumps(card))
    assert main(["privacy", "membership", "--model-dir", str(copy), "--attack", "loss",
                 "--members", "20"]) == 2
    one_line_error(capsys.readouterr().err, "'2: BatchNorm1d -> GroupNorm'",
                   "it replaces nothing")


def test_batchnorm_without_dp_fix_names_the_layer_and_leaves_the_dir_unchanged(
        tmp_path: Path, bn_factory: str, model_dir: Path, capsys, one_line_error) -> None:
    import shutil

    out = tmp_path / "existing"
    shutil.copytree(model_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["train", "--out", str(out), "--model", bn_factory, "--dp", "--epsilon", "3",
                 "--epochs", "1", "-q"]) == 2
    one_line_error(capsys.readouterr().err, "1 (BatchNorm2d)", "--dp-fix")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- --accountant, --grad-sample-mode ------------------------------------------------------------

def test_accountant_and_grad_sample_mode_reach_the_card(tmp_path: Path, capsys) -> None:
    out = tmp_path / "rdp"
    assert main(["train", "--out", str(out), "--dp", "--epsilon", "3", "--accountant", "rdp",
                 "--grad-sample-mode", "hooks", *FAST]) == 0
    io = capsys.readouterr()
    assert "per-sample gradients: hooks (requested)" in io.err
    dp = _card(out)["training"]["dp"]
    assert dp["accountant"] == "rdp" and dp["grad_sample_mode"] == "hooks"
    assert dp["epsilon_rdp"] <= 3.0 + 0.05 and dp["epsilon_prv"] <= dp["epsilon_rdp"] + 0.05
    # both epsilons and the accountant on the saved line
    assert f"epsilon {dp['epsilon_prv']:.4g} PRV / {dp['epsilon_rdp']:.4g} RDP" in io.out
    assert "rdp accountant" in io.out


def test_the_gdp_accountant_warns_when_prv_says_more(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gdp"
    assert main(["train", "--out", str(out), "--dp", "--epsilon", "3", "--accountant", "gdp",
                 *FAST]) == 0
    err = capsys.readouterr().err
    dp = _card(out)["training"]["dp"]
    assert dp["accountant"] == "gdp"
    # measured: PRV 5.0 for a gdp target of 3 (2 epochs, digits): GDP underestimates
    assert dp["epsilon_prv"] > 3.3
    warning = [ln for ln in err.splitlines() if ln.startswith("warning: the gdp accountant")]
    assert len(warning) == 1 and "underestimates" in warning[0]
    assert "GDP accounting is experimental" not in err  # Opacus's own warning replaced


# -- bad input: one line, exit 2, nothing written ----------------------------------------------

@pytest.mark.parametrize(("args", "words"), [
    (["--dp", "--epsilon", "nan"], "'--epsilon': nan is not a finite number"),
    (["--dp", "--epsilon", "inf"], "'--epsilon': inf is not a finite number"),
    (["--dp", "--delta", "1.5"], "'--delta': 1.5 is not in the range 0 < x < 1"),
    (["--dp", "--delta", "-1"], "'--delta': -1 is not in the range 0 < x < 1"),
    (["--dp", "--max-grad-norm", "-1"], "'--max-grad-norm': -1 is not in the range"),
    (["--dp", "--noise-multiplier", "-1"], "'--noise-multiplier': -1 is not in the range"),
    (["--dp", "--noise-multiplier", "0"], "'--noise-multiplier': 0 is not in the range 0 < x"),
    (["--dp", "--epsilon", "0.001"], "target epsilon 0.001 (delta 1e-05) is unreachable in 1 epochs"),
    (["--dp", "--accountant", "moments"], "--accountant: unknown accountant 'moments'"),
    (["--dp", "--grad-sample-mode", "ew"], "--grad-sample-mode: unknown mode 'ew'"),
    (["--accountant", "rdp"], "--accountant only apply with --dp"),
    (["--grad-sample-mode", "ghost"], "--grad-sample-mode only apply with --dp"),
    (["--noise-multiplier", "1", "--delta", "1e-6"], "--delta, --noise-multiplier only apply with --dp"),
])
def test_more_bad_dp_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys, one_line_error,
                                                          args, words) -> None:
    out = tmp_path / "never"
    assert main(["train", "--out", str(out), *args, "--epochs", "1", "-q"]) == 2
    one_line_error(capsys.readouterr().err, words)
    assert not out.exists()


@pytest.mark.parametrize(("key", "value", "words"), [
    ("dp", "yes", "key 'dp' must be an object"),
    ("delta", 2.0, "key 'dp.delta' must be a number in (0, 1), got 2.0"),
    ("epsilon_prv", "3", "key 'dp.epsilon_prv' must be a number"),
    ("epsilon_rdp", -1, "key 'dp.epsilon_rdp' must be a number in [0, inf]"),
    ("noise_multiplier", None, "key 'dp.noise_multiplier' must be a number"),
    ("steps", 2.5, "key 'dp.steps' must be an integer >= 0, got 2.5"),
    ("max_grad_norm", 0, "key 'dp.max_grad_norm' must be a number in (0, inf)"),
    ("sample_rate", 1.5, "key 'dp.sample_rate' must be a number in (0, 1]"),
])
def test_budget_of_a_damaged_dp_record_is_one_line(model_dir: Path, tmp_path: Path, capsys,
                                                   one_line_error, key, value, words) -> None:
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(model_dir, copy)
    card = _card(copy)
    good = {"epsilon_prv": 3.0, "epsilon_rdp": 3.4, "delta": 1e-5, "noise_multiplier": 1.0,
            "max_grad_norm": 1.0, "sample_rate": 0.05, "steps": 20, "fixed_layers": []}
    card["training"]["dp"] = value if key == "dp" else {**good, key: value}
    (copy / "card.json").write_text(json.dumps(card))
    assert main(["privacy", "budget", "--model-dir", str(copy)]) == 2
    one_line_error(capsys.readouterr().err, "card.json", words)


def test_budget_of_a_missing_dir_is_one_line(tmp_path: Path, capsys, one_line_error) -> None:
    assert main(["privacy", "budget", "--model-dir", str(tmp_path / "nowhere")]) == 2
    one_line_error(capsys.readouterr().err, "nowhere", "model directory not found")
    assert not (tmp_path / "nowhere").exists()


# -- reproducibility -------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_dp_weights(tmp_path: Path, capsys) -> None:
    def weights(name: str, seed: int) -> str:
        out = tmp_path / name
        assert main(["train", "--out", str(out), "--dp", "--noise-multiplier", "1", "--seed",
                     str(seed), "--epochs", "1", "--lr", "0.01", "--schedule", "none",
                     "-q"]) == 0
        digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
        assert _card(out)["weights_sha256"] == digest
        return digest

    a, b, c = weights("a", 1), weights("b", 1), weights("c", 2)
    assert a == b  # bit-identical weights: the Poisson batches and the noise are seeded
    assert a != c
