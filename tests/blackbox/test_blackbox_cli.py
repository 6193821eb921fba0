"""``dlsec attack nes|hsja|boundary|transfer`` and Square L2: exact query accounting
printed and saved, measured effects, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlsec.cli import main
from dlsec.models import save


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bb_net) -> Path:
    d = tmp_path_factory.mktemp("m")
    model, card = bb_net
    save(model, card, d)
    return d


def _spent(printed: str) -> int:
    return int(printed.split("queries spent ")[1].split()[0])


@pytest.mark.parametrize("name,norm,eps", [("nes", "linf", "0.2"), ("square", "l2", "1.5")])
def test_score_based_commands(model_dir, tmp_path, capsys, name, norm, eps) -> None:
    out = tmp_path / f"{name}.npz"
    assert main(["attack", name, "--model-dir", str(model_dir), "--eps", eps, "--norm", norm,
                 "--samples", "40", "--max-queries", "600", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = np.load(out, allow_pickle=False)
    assert data["queries"].sum() == _spent(printed) and int(data["queries"].max()) <= 600
    assert data["success"][0].mean() >= 0.8
    d = (data["x_adv"][0] - data["x"]).reshape(40, -1)
    norms = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
    assert norms.max() <= float(eps) + 1e-4


def test_hsja_command_reports_distances_and_robust_accuracy(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "hsja.npz"
    assert main(["attack", "hsja", "--model-dir", str(model_dir), "--norm", "l2",
                 "--eps", "0.5,2.0", "--samples", "20", "--max-queries", "1000",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "labels oracle" in printed and "median l2 distance" in printed
    data = np.load(out, allow_pickle=False)
    assert data["queries"].sum() == _spent(printed) and int(data["queries"].max()) <= 1000
    l2 = np.linalg.norm((data["x_adv"] - data["x"]).reshape(20, -1), axis=1)
    assert np.allclose(l2[data["success"]], data["distance"][data["success"]], atol=1e-5)
    rob = [float(line.split("robust accuracy ")[1].split(",")[0])
           for line in printed.splitlines() if "robust accuracy" in line]
    assert rob[0] > rob[1]  # a larger radius leaves fewer points robust
    assert rob[1] <= 0.2  # L2 2.0 is far beyond the typical HSJA distance (~0.6)


def test_transfer_command(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "t.npz"
    assert main(["attack", "transfer", "--model-dir", str(model_dir), "--eps", "0.2",
                 "--surrogate", "graybox", "--craft", "pgd,mifgsm", "--samples", "60",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(0 training, 120 sending)" in printed  # gray-box: its own labels, 1 query/point
    data = np.load(out, allow_pickle=False)
    assert data["success"].shape == (1, 2, 60) and data["success"].mean() >= 0.5
    assert np.abs(data["x_adv"] - data["x"][None, None]).max() <= 0.2 + 1e-6


@pytest.mark.parametrize("args,message", [
    (["attack", "square"], "--eps"),
    (["attack", "boundary", "--norm", "linf"], "L2 attack"),
    (["attack", "hsja", "--max-queries", "0"], "--max-queries"),
    (["attack", "transfer", "--eps", "0.1", "--surrogate", "psychic"], "psychic"),
    (["attack", "transfer", "--eps", "0.1", "--craft", ","], "--craft"),
    (["attack", "nes", "--eps", "0.1", "--norm", "l1"], "--norm"),
])
def test_black_box_user_errors_are_one_line(model_dir, capsys, args, message) -> None:
    assert main([*args, "--model-dir", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
