"""Usage errors are one line (``error: ... (see dlsec COMMAND --help)``, exit 2), never a
boxed panel; ``--help`` still prints help; interrupts are exit 130."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from dlsec.cli import main
from dlsec.errors import DlsecError


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], ["missing command", "(see dlsec --help)"]),
        (["nosuch"], ["nosuch", "(see dlsec --help)"]),
        (["train", "--bogus"], ["--bogus", "(see dlsec train --help)"]),
        (["train"], ["--out", "(see dlsec train --help)"]),
        (["train", "--out"], ["--out", "(see dlsec train --help)"]),
        (["audit", "--epochs", "many"], ["--epochs", "(see dlsec audit --help)"]),
        (["attack"], ["Missing argument", "(see dlsec attack --help)"]),
        (["attack", "pgd", "--eps", "0.1"], ["--model-dir", "--url", "(see dlsec attack --help)"]),
        (["poison"], ["ommand", "(see dlsec poison --help)"]),
        (["poison", "nope"], ["nope", "(see dlsec poison --help)"]),
        (["poison", "random-flip", "--rate", "x", "--out", "p.npz"], ["--rate", "(see dlsec poison random-flip --help)"]),
        (["privacy"], ["ommand", "(see dlsec privacy --help)"]),
        (["data"], ["ommand", "(see dlsec data --help)"]),
        (["data", "info"], ["Missing argument", "(see dlsec data info --help)"]),
        (["train", "--out", "m", "extra"], ["extra", "(see dlsec train --help)"]),
    ],
)
def test_usage_errors_are_one_line(
    args: list[str], words: list[str], tmp_path: Path, monkeypatch, capsys, one_line_error
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err, *words)
    assert line.endswith("--help)")
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [[], ["--bogus"], ["train", "--epochs", "many", "--out", "m"]])
def test_usage_error_in_a_real_process_is_one_plain_line(args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dlsec.cli", *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not any(box in proc.stderr for box in "╭│╰"), proc.stderr  # no rich panel
    assert "Usage:" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["poison", "--help"],
                                  ["poison", "backdoor", "--help"], ["data", "info", "--help"]])
def test_help_still_prints_help(args: list[str], capsys) -> None:
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "Usage" in captured.out and captured.err == ""


def _raise(exc: BaseException):
    def fn(*args, **kwargs):
        raise exc

    return fn


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (typer.Abort(), 130, "interrupted"),  # Ctrl-C or end of input in a prompt
        (KeyboardInterrupt(), 130, None),  # typer ends the command with exit 130
        (DlsecError("first line\nsecond   line"), 2, "error: first line second line"),
    ],
)
def test_interrupts_and_errors_inside_a_command(
    exc: BaseException, code: int, line: str | None, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("dlsec.data.load_dataset", _raise(exc))
    assert main(["data", "info", "digits"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if line is not None:
        assert err.strip().splitlines() == [line]
