"""``dlsec train --dp`` and ``dlsec privacy budget``: the round trip, and every bad input one
line on stderr, exit 2, nothing written."""

from __future__ import annotations

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
