"""Numbers out of range, devices this machine lacks, and settings an attack cannot take:
one line on stderr, exit 2, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlsec.cli import main
from dlsec.training import SEED_MAX, TrainingError, resolve_device

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
NO_MPS = pytest.mark.skipif(
    getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    reason="this machine has MPS",
)

ATTACK = ["attack", "pgd", "--model-dir", "{model}", "--eps", "0.1"]
EVALUATE = ["evaluate", "--model-dir", "{model}", "--eps", "0.1"]
COLLIDE = ["poison", "feature-collision", "--out", "{tmp}/p.npz"]
CASES = [
    # (arguments, words in the one line)
    ([*ATTACK, "--samples", "0"], ["--samples"]),
    ([*ATTACK, "--samples", "-5"], ["--samples"]),  # used to attack all but the last five
    ([*ATTACK, "--seed", str(2**64)], ["--seed"]),
    ([*ATTACK, "--seed", str(SEED_MAX + 1)], ["--seed"]),
    ([*ATTACK, "--seed", "-1"], ["--seed"]),
    ([*ATTACK, "--steps", "0"], ["--steps"]),
    ([*ATTACK, "--threads", "100000"], ["--threads", "0 (automatic)"]),
    ([*ATTACK, "--threads", "-1"], ["--threads"]),
    ([*ATTACK, "--device", "meta"], ["--device", "unsupported device 'meta'"]),
    pytest.param([*ATTACK, "--device", "mps"], ["--device", "MPS is not available"], marks=NO_MPS),
    pytest.param([*ATTACK, "--device", "cuda"], ["--device", "no CUDA GPU"], marks=NO_CUDA),
    ([*ATTACK, "--device", "gpu"], ["--device", "unknown device 'gpu'"]),
    (["attack", "pgd", "--model-dir", "{model}", "--eps", "nan"], ["--eps", "finite"]),
    (["attack", "pgd", "--model-dir", "{model}", "--eps", "0.1,inf"], ["--eps", "finite"]),
    (["attack", "pgd", "--model-dir", "{model}", "--eps", "-0.1"], ["--eps"]),
    (["attack", "square", "--model-dir", "{model}", "--eps", "0.1", "--budget", "0"], ["--budget"]),
    (["attack", "cw", "--model-dir", "{model}", "--eps", "0.5", "--norm", "linf"], ["cw is an l2 attack", "'linf'"]),
    ([*EVALUATE, "--samples", "0"], ["--samples"]),
    ([*EVALUATE, "--threads", "100000"], ["--threads"]),
    (["evaluate", "--model-dir", "{model}", "--eps", "inf"], ["--eps", "finite"]),
    (["train", "--out", "{tmp}/m", "--epochs", "0"], ["--epochs"]),
    (["train", "--out", "{tmp}/m", "--batch-size", "0"], ["--batch-size"]),
    (["train", "--out", "{tmp}/m", "--lr", "0"], ["--lr"]),
    (["train", "--out", "{tmp}/m", "--lr", "nan"], ["--lr", "not a finite number"]),
    (["train", "--out", "{tmp}/m", "--weight-decay", "-1"], ["--weight-decay"]),
    (["train", "--out", "{tmp}/m", "--val-fraction", "1"], ["--val-fraction"]),
    (["train", "--out", "{tmp}/m", "--test-size", "0"], ["--test-size"]),
    (["train", "--out", "{tmp}/m", "--test-size", "1.5"], ["--test-size"]),
    (["train", "--out", "{tmp}/m", "--patience", "0"], ["--patience"]),
    (["train", "--out", "{tmp}/m", "--adversarial", "pgd", "--eps", "0"], ["--eps"]),
    (["train", "--out", "{tmp}/m", "--adversarial", "pgd", "--eps", "0.1", "--attack-steps", "0"], ["--attack-steps"]),
    (["train", "--out", "{tmp}/m", "--device", "meta"], ["--device"]),
    (["train", "--out", "{tmp}/m", "--threads", "100000"], ["--threads"]),
    (["train", "--out", "{tmp}/m", "--adversarial", "pgd", "--eps", "nan"], ["--eps", "not a finite number"]),
    (["train", "--out", "{tmp}/m", "--adversarial", "pgd", "--eps", "0.1", "--alpha", "0"], ["--alpha"]),
    (["train", "--out", "{tmp}/m", "--adversarial", "trades", "--eps", "0.1", "--beta", "inf"], ["--beta"]),
    (["adv-train", "--out", "{tmp}/m", "--eps", "nan"], ["--eps", "not a finite number"]),
    (["poison", "random-flip", "--out", "{tmp}/p.npz", "--rate", "1.5"], ["--rate"]),
    (["poison", "random-flip", "--out", "{tmp}/p.npz", "--rate", "-0.1"], ["--rate"]),
    (["poison", "label-flip", "--out", "{tmp}/p.npz", "--rate", "nan"], ["--rate"]),
    (["poison", "targeted-flip", "--out", "{tmp}/p.npz", "--source", "1", "--target", "7", "--rate", "2"], ["--rate"]),
    (["poison", "inject", "--out", "{tmp}/p.npz", "--rate", "inf"], ["--rate"]),
    (["poison", "backdoor", "--out", "{tmp}/p.npz", "--trigger-size", "0"], ["--trigger-size"]),
    (["poison", "backdoor", "--out", "{tmp}/p.npz", "--seed", "-2"], ["--seed"]),
    ([*COLLIDE, "--n-poisons", "0"], ["--n-poisons"]),
    ([*COLLIDE, "--steps", "0"], ["--steps"]),
    ([*COLLIDE, "--opacity", "2"], ["--opacity"]),
    ([*COLLIDE, "--epochs", "0"], ["--epochs"]),
    (["poison", "optimized-flip", "--out", "{tmp}/p.npz", "--threads", "100000"], ["--threads"]),
    (["sanitize", "--dataset", "digits", "--out", "{tmp}/s.npz", "--folds", "1"], ["--folds"]),
    (["sanitize", "--dataset", "digits", "--out", "{tmp}/s.npz", "--folds", "100000"], ["--folds", "2..1438", "100000"]),
    (["sanitize", "--dataset", "digits", "--out", "{tmp}/s.npz", "--epochs", "0"], ["--epochs"]),
    (["privacy", "membership", "--model-dir", "{model}", "--members", "0"], ["--members"]),
    (["privacy", "membership", "--model-dir", "{model}", "--shadows", "0"], ["--shadows"]),
    (["privacy", "membership", "--model-dir", "{model}", "--shadows", "1"], ["--shadows"]),
    (["privacy", "membership", "--model-dir", "{model}", "--test-size", "1"], ["--test-size"]),
    (["privacy", "invert", "--model-dir", "{model}", "--max-iter", "0"], ["--max-iter"]),
    (["extract", "--model-dir", "{model}", "--budget", "0"], ["--budget"]),
    (["extract", "--model-dir", "{model}", "--threads", "100000"], ["--threads"]),
    (["data", "info", "digits", "--seed", "-1"], ["--seed"]),
    (["audit", "--seed", str(2**64)], ["--seed"]),
    (["audit", "--threads", "100000"], ["threads"]),
]


def _boom(*args, **kwargs):
    raise AssertionError("work began before the flags were checked")


@pytest.mark.parametrize(("args", "words"), CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_out_of_range_is_one_line_before_any_work(
    args: list[str], words: list[str], model_dir: Path, tmp_path: Path, monkeypatch, capsys,
    one_line_error,
) -> None:
    for work in ("dlsec.models.load", "dlsec.audit.runner.run_audit",
                 "dlsec.defenses.sanitization.sanitize", "dlsec.scenarios.poisoning.sanitize",
                 "dlsec.training.fit"):
        monkeypatch.setattr(work, _boom)
    monkeypatch.chdir(tmp_path)
    assert main([a.format(model=model_dir, tmp=tmp_path) for a in args]) == 2
    one_line_error(capsys.readouterr().err, *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", [str(10**21), "10", "-1"])
def test_target_class_out_of_range_before_the_attack(
    target: str, model_dir: Path, monkeypatch, capsys, one_line_error
) -> None:
    monkeypatch.setattr("dlsec.attacks.evasion._base.EvasionAttack.__call__", _boom)
    args = [*ATTACK, "--targeted", "--target", target]
    assert main([a.format(model=model_dir) for a in args]) == 2
    one_line_error(capsys.readouterr().err, "--target", "0..9", target)


@pytest.mark.parametrize(
    ("device", "words"),
    [
        ("meta", "unsupported device 'meta'"),
        ("xla", "unsupported device 'xla'"),
        ("gpu", "unknown device 'gpu'"),
        ("", "unknown device ''"),
        pytest.param("mps", "MPS is not available", marks=NO_MPS),
        pytest.param("cuda", "no CUDA GPU", marks=NO_CUDA),
        pytest.param("cuda:1", "no CUDA GPU", marks=NO_CUDA),
    ],
)
def test_resolve_device_refuses(device: str, words: str) -> None:
    with pytest.raises(TrainingError, match=words):
        resolve_device(device)


def test_resolve_device_accepts_what_the_machine_has() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("meta")).type == "meta"  # a device object is the caller's
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        assert resolve_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
        with pytest.raises(TrainingError, match=f"has {n} CUDA GPU"):
            resolve_device(f"cuda:{n}")


def test_the_largest_seed_is_accepted(tmp_path: Path, capsys) -> None:
    import json

    assert main(["data", "info", "digits", "--seed", str(SEED_MAX)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "digits"
