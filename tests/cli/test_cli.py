"""The CLI: one-line errors with exit 2, gates with exit 1, and no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlsec.cli import main


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dlsec.cli", *args], capture_output=True, text=True, cwd=cwd,
        timeout=300,
    )


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["audit", "--dataset", "nosuch"], ["unknown dataset 'nosuch'"]),
        (["audit", "--dataset", "idx:/nonexistent/dir"], ["/nonexistent/dir"]),
        (["audit", "--model", "nosuchnet"], ["unknown model 'nosuchnet'", "simplenet"]),
        (["audit", "--model-dir", "/nonexistent/model"], ["model directory not found"]),
        (["audit", "--config", "/nonexistent/a.toml"], ["config file not found"]),
        (["audit", "--fail-under", "accuracy"], ["expected KEY=VALUE"]),
        (["audit", "--epochs", "0"], ["epochs"]),
        (["train", "--out", "x", "--optimizer", "rmsprop"], ["optimizer"]),
        (["data", "fetch", "cifar"], ["unknown dataset to fetch"]),
    ],
)
def test_user_errors_are_one_line(
    args: list[str], words: list[str], tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0]


def test_user_error_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    _one_line_error(run("audit", "--dataset", "nosuch", cwd=tmp_path), "unknown dataset")


def test_usage_error_exit_2(tmp_path: Path) -> None:
    proc = run("audit", "--epochs", "many", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_then_audit_with_gate(tmp_path: Path) -> None:
    proc = run("train", "--out", "m", "--epochs", "3", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["architecture"] == "simplenet" and len(card["weights_sha256"]) == 64
    assert len(json.loads((tmp_path / "m" / "history.json").read_text())) == 3
    args = ["audit", "--model-dir", "m", "--out", "r", "-q", "--sections", "dataset,accuracy"]
    passing = run(*args, "--fail-under", "accuracy.clean_accuracy=0.5", cwd=tmp_path)
    assert passing.returncode == 0, passing.stderr
    assert "report.html" in passing.stdout
    failing = run(*args, "--fail-under", "accuracy.clean_accuracy=1.01", cwd=tmp_path)
    assert failing.returncode == 1
    assert "FAIL: accuracy.clean_accuracy" in failing.stderr
    unknown = run(*args, "--fail-under", "accuracy.bogus=1", cwd=tmp_path)
    _one_line_error(unknown, "no such metric", "accuracy.clean_accuracy")


def test_main_returns_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--dataset", "nope"]) == 2
    assert "error: unknown dataset" in capsys.readouterr().err
    assert main(["--help"]) == 0
