"""``dlsec attack``: runs on a saved model, writes the npz atomically, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlsec.cli import main
from dlsec.models import save


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, digits_net) -> Path:
    d = tmp_path_factory.mktemp("m")
    model, card = digits_net
    save(model, card, d)
    return d


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlsec.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_attack_writes_adversarials(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "adv.npz"
    proc = _run("attack", "pgd", "--model-dir", str(model_dir), "--eps", "0.1,0.2",
                "--samples", "100", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "eps 0.2: robust accuracy" in proc.stdout
    data = np.load(out, allow_pickle=False)
    assert data["x_adv"].shape == (2, 100, 1, 8, 8) and data["success"].shape == (2, 100)
    assert data["success"][1].mean() > 0.9  # eps 0.2 fools nearly everything
    assert np.abs(data["x_adv"][0] - data["x"]).max() <= 0.1 + 1e-6


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["attack", "nope", "--eps", "0.1"], "unknown attack 'nope'"),
        (["attack", "pgd", "--eps", "x"], "--eps: expected comma-separated numbers"),
        (["attack", "pgd", "--eps", "0.1", "--norm", "l7"], "norm must be linf or l2"),
        (["attack", "pgd", "--eps", "0.1", "--dataset", "fashion-mnist"], "do not fit the model"),
    ],
)
def test_attack_errors(model_dir: Path, args: list[str], words: str, capsys) -> None:
    assert main([*args, "--model-dir", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_evaluate_command(model_dir: Path, tmp_path: Path, capsys) -> None:
    import json

    out = tmp_path / "robust.json"
    args = ["evaluate", "--model-dir", str(model_dir), "--eps", "0.05,0.2", "--samples", "60",
            "--out", str(out), "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "eps 0.2: robust accuracy" in printed
    summary = json.loads(out.read_text())
    assert summary["eps"] == [0.05, 0.2]
    assert summary["robust_accuracy"][1] < 0.05 < summary["clean_accuracy"]
    assert summary["robust_accuracy"][0] < summary["clean_accuracy"]


@pytest.mark.parametrize("name", ["square", "simba"])
def test_black_box_attack_command(model_dir: Path, tmp_path: Path, capsys, name: str) -> None:
    out = tmp_path / f"{name}.npz"
    args = ["attack", name, "--model-dir", str(model_dir), "--eps", "0.2", "--samples", "60",
            "--max-queries", "500", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    spent = int(printed.split("queries spent ")[1].split()[0])
    data = np.load(out, allow_pickle=False)
    assert data["queries"].sum() == spent  # the attack's count is the oracle's count
    assert int(data["queries"].max()) <= 500
    assert data["success"][0].mean() >= 0.85
    assert np.abs(data["x_adv"][0] - data["x"]).max() <= 0.2 + 1e-6


def test_budget_for_a_query_attack_is_a_deprecated_max_queries(
    model_dir: Path, tmp_path: Path, capsys
) -> None:
    runs = {}
    for flag in ("--max-queries", "--budget"):
        out = tmp_path / f"{flag.strip('-')}.npz"
        args = ["attack", "square", "--model-dir", str(model_dir), "--eps", "0.1", "--samples",
                "30", flag, "200", "--out", str(out), "-q"]
        assert main(args) == 0
        runs[flag] = (np.load(out, allow_pickle=False), capsys.readouterr())
    new, old = runs["--max-queries"], runs["--budget"]
    assert old[1].err.strip().splitlines() == [
        "warning: --budget for square is deprecated: use --max-queries (queries per point); "
        "--budget is the oracle's total"
    ]
    assert "deprecated" not in new[1].err
    assert int(old[0]["queries"].max()) <= 200 < int(old[0]["queries"].sum())
    for key in ("x_adv", "success", "queries"):  # the same attack, the same seed
        assert np.array_equal(new[0][key], old[0][key]), key
    assert new[0]["success"].mean() >= 0.2  # it fooled points (14 of 30 when written)


def test_amp_flag_reaches_the_search_and_verdicts_stay_float32(model_dir: Path, tmp_path: Path,
                                                               capsys) -> None:
    import json

    out = tmp_path / "robust.json"
    assert main(["evaluate", "--model-dir", str(model_dir), "--eps", "0.2", "--samples", "40",
                 "--attacks", "apgd-ce", "--amp", "bf16", "--out", str(out), "-q"]) == 0
    summary = json.loads(out.read_text())
    assert summary["amp"] == "bf16"
    assert summary["robust_accuracy"][0] < 0.05 < summary["clean_accuracy"]  # it still attacks
    adv = tmp_path / "adv.npz"
    assert main(["attack", "pgd", "--model-dir", str(model_dir), "--eps", "0.2", "--samples",
                 "40", "--amp", "bf16", "--out", str(adv)]) == 0
    assert "bf16" in capsys.readouterr().out
    assert np.load(adv, allow_pickle=False)["success"].mean() > 0.9


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["evaluate", "--eps", "0.1", "--amp", "fp16"], "amp=fp16 needs a CUDA device"),
        (["attack", "pgd", "--eps", "0.1", "--amp", "fp16"], "amp=fp16 needs a CUDA device"),
        (["attack", "pgd", "--eps", "0.1", "--amp", "half"], "amp"),
        (["attack", "square", "--eps", "0.1", "--amp", "bf16"], "--amp: half precision is for"),
    ],
)
def test_amp_errors_are_one_line(model_dir: Path, tmp_path: Path, args: list[str], words: str,
                                 capsys) -> None:
    out = tmp_path / "never.npz"
    assert main([*args, "--model-dir", str(model_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
