"""One thread rule for every command (:func:`dlsec.training.configure_threads`): ``0``
gives a small model on CPU one thread, a count above 4 per CPU is refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from dlsec.cli import main
from dlsec.training import (
    SMALL_MODEL_PARAMETERS,
    TrainingError,
    check_threads,
    configure_threads,
    thread_limit,
)

CPU = torch.device("cpu")
SMALL = nn.Linear(64, 10)  # 650 parameters
BIG = nn.Linear(1000, 101)  # 101,101 parameters


def test_the_models_straddle_the_threshold() -> None:
    assert sum(p.numel() for p in SMALL.parameters()) < SMALL_MODEL_PARAMETERS
    assert sum(p.numel() for p in BIG.parameters()) >= SMALL_MODEL_PARAMETERS


def test_thread_limit_is_four_per_cpu() -> None:
    assert thread_limit() == 4 * (os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("threads", "model", "device", "expected"),
    [
        (0, SMALL, CPU, 1),  # a small model on CPU: one thread
        (0, BIG, CPU, "default"),  # a large one: torch's start-up default
        (0, None, CPU, "default"),  # nothing to count: torch's default
        (0, SMALL, torch.device("cuda"), "default"),  # GPU work: threads do not matter
        (3, SMALL, CPU, 3),  # asked for: that many, whatever the model
        (1, BIG, CPU, 1),
    ],
)
def test_configure_threads(threads: int, model, device, expected, monkeypatch) -> None:
    from dlsec import training

    # the suite runs with OMP_NUM_THREADS=1; a default of 3 tells the branches apart
    monkeypatch.setattr(training, "_DEFAULT_THREADS", 3)
    want = 3 if expected == "default" else expected
    torch.set_num_threads(2)
    assert configure_threads(threads, model=model, device=device) == want
    assert torch.get_num_threads() == want


@pytest.mark.parametrize("bad", [100_000, -1, "limit+1", True, 2.5])
def test_check_threads_refuses(bad) -> None:
    value = thread_limit() + 1 if bad == "limit+1" else bad
    before = torch.get_num_threads()
    with pytest.raises(TrainingError, match=r"--threads: must be 0 \(automatic\) or 1\.\."):
        configure_threads(value, model=SMALL, device=CPU)
    assert torch.get_num_threads() == before  # nothing was set
    assert check_threads(thread_limit()) == thread_limit()


def test_train_gives_a_small_model_one_thread(tmp_path: Path, capsys) -> None:
    torch.set_num_threads(2)
    assert main(["train", "--out", str(tmp_path / "m"), "--epochs", "1", "-q"]) == 0
    assert torch.get_num_threads() == 1  # as the audit does (it used to keep 2)
    assert main(["train", "--out", str(tmp_path / "m2"), "--epochs", "1", "-q",
                 "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2


def test_attack_counts_the_loaded_model(model_dir: Path, capsys) -> None:
    torch.set_num_threads(2)
    args = ["attack", "fgsm", "--model-dir", str(model_dir), "--eps", "0.1", "--samples", "5"]
    assert main(args) == 0
    assert torch.get_num_threads() == 1


def test_audit_threads_in_toml_are_checked(tmp_path: Path, monkeypatch, capsys, one_line_error) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audit.toml").write_text("threads = 100000\n")
    assert main(["audit", "--config", "audit.toml"]) == 2
    one_line_error(capsys.readouterr().err, "threads", "100000")
    assert not (tmp_path / "runs").exists()


def test_audit_of_a_model_directory_counts_the_loaded_model(
    model_dir: Path, tmp_path: Path, capsys
) -> None:
    torch.set_num_threads(2)
    args = ["audit", "--model-dir", str(model_dir), "--out", str(tmp_path / "r"), "-q",
            "--sections", "dataset"]
    assert main(args) == 0
    assert torch.get_num_threads() == 1
