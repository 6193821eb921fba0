"""Adversarial training: exact steps on hand-checkable models, the measured robustness gain
on digits SimpleNet, catastrophic-overfitting rollback, seeds, the CLI and DDP (torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dlsec.attacks.evasion import PGD
from dlsec.cli import main
from dlsec.defenses.adversarial import (
    FastFGSMLoss,
    PGDTrainingLoss,
    RobustnessMonitor,
    TradesLoss,
    adversarial_train,
)
from dlsec.models import load
from dlsec.training import DistributedContext, TrainConfig, TrainingError, _rank_slice

EPS = 0.2  # digits SimpleNet: undefended PGD-40 accuracy 1.9% here, the "below 5%"
BOUNDS = (0.0, 1.0)
HERE = Path(__file__).resolve().parent


def strong_pgd_accuracy(model: torch.nn.Module, ds) -> float:
    """PGD-40 with 2 random restarts, stronger than the attack any model trained on."""
    attack = PGD(steps=40, restarts=2)
    gen = torch.Generator().manual_seed(123)
    res = attack(model, ds.x_test, ds.y_test, eps=EPS, bounds=BOUNDS, generator=gen)
    return res.robust_accuracy[0]


@pytest.fixture(scope="module")
def undefended_pgd(trained_simplenet, digits) -> float:
    return strong_pgd_accuracy(trained_simplenet[0], digits)


def _train(digits, method: str, **kw):
    cfg = kw.pop("config", None) or TrainConfig(epochs=10, lr=1e-2, batch_size=128)
    return adversarial_train(digits, "simplenet", method=method, eps=EPS, config=cfg,
                             progress=False, **kw)


@pytest.fixture(scope="module")
def pgd_at(digits):
    return _train(digits, "pgd", config=TrainConfig(epochs=10, lr=1e-2, batch_size=64))


# -- exact steps on a linear model ---------------------------------------------------------------
def _linear() -> torch.nn.Linear:
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, -1.0, 2.0],
                                         [-1.0, 0.5, 2.0, -0.5]]))
        model.bias.copy_(torch.tensor([0.1, -0.2, 0.0]))
    return model


def _ce_input_grad(model: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # d CE / d x for logits W x + b: W^T (softmax - onehot), per sample
    p = F.softmax(x @ model.weight.T + model.bias, dim=1)
    return (p - F.one_hot(y, 3).float()) @ model.weight


def test_fgsm_step_is_the_closed_form() -> None:
    model = _linear()
    x = torch.tensor([[0.5, 0.02, 0.9, 0.3], [0.1, 0.6, 0.99, 0.0]])
    y = torch.tensor([0, 2])
    loss = PGDTrainingLoss(eps=0.1, bounds=BOUNDS, steps=1, alpha=0.1, random_init=False)
    expected = (x + 0.1 * _ce_input_grad(model, x, y).detach().sign()).clamp(0, 1)
    assert torch.allclose(loss.adversarial(model, x, y), expected, atol=1e-7)
    got = float(loss(model, x, y).detach())
    assert got == pytest.approx(float(F.cross_entropy(model(expected), y).detach()))


def test_fgsm_rs_starts_uniformly_and_steps_125_eps() -> None:
    model, eps = _linear(), 0.1
    x = torch.tensor([[0.5, 0.02, 0.9, 0.3], [0.1, 0.6, 0.99, 0.0]])
    y = torch.tensor([1, 0])
    loss = FastFGSMLoss(eps=eps, bounds=BOUNDS, generator=torch.Generator().manual_seed(3))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    start = (x + (2 * u - 1) * eps).clamp(0, 1)
    moved = start + 1.25 * eps * _ce_input_grad(model, start, y).detach().sign()
    expected = (x + (moved - x).clamp(-eps, eps)).clamp(0, 1)
    assert loss.settings()["alpha"] == pytest.approx(1.25 * eps)
    assert torch.allclose(loss.adversarial(model, x, y), expected, atol=1e-7)


def test_trades_loss_is_ce_plus_beta_kl() -> None:
    model = _linear()
    x = torch.rand(8, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 3

    def make(beta: float) -> TradesLoss:
        return TradesLoss(
            eps=0.1, bounds=BOUNDS, beta=beta, generator=torch.Generator().manual_seed(5)
        )

    with torch.no_grad():
        ce = float(F.cross_entropy(model(x), y))
    assert float(make(0.0)(model, x, y).detach()) == pytest.approx(ce)
    x_adv = make(6.0).adversarial(model, x)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6 and float(x_adv.min()) >= 0.0
    with torch.no_grad():
        p, log_q = F.softmax(model(x), 1), F.log_softmax(model(x_adv), 1)
        kl = float((p * (p.log() - log_q)).sum(1).mean())
        # the inner maximisation moved away from f(x): far above the KL at its start
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        log_q0 = F.log_softmax(model(x + 0.001 * noise), 1)
        kl0 = float((p * (p.log() - log_q0)).sum(1).mean())
    assert float(make(6.0)(model, x, y).detach()) == pytest.approx(ce + 6.0 * kl, rel=1e-5)
    assert kl > 100 * kl0


# -- measured effect on digits SimpleNet -----------------------------------------------------
def test_pgd_at_raises_pgd_accuracy_by_30pp(pgd_at, digits, undefended_pgd) -> None:
    model, card, result = pgd_at
    robust = strong_pgd_accuracy(model, digits)
    assert undefended_pgd < 0.05  # measured 0.019
    assert robust >= undefended_pgd + 0.30  # measured 0.440 (+42 pp)
    assert card.metrics["test_accuracy"] > 0.85  # measured 0.939
    adv = card.training["adversarial"]
    assert (adv["method"], adv["eps"], adv["norm"], adv["steps"]) == ("pgd", EPS, "linf", 10)
    assert adv["alpha"] == pytest.approx(2.5 * EPS / 10) and adv["random_init"] is True
    assert card.metrics["test_pgd_accuracy"] == pytest.approx(robust, abs=0.03)
    pgd_per_epoch = [h["val_pgd_accuracy"] for h in result.history]
    assert len(pgd_per_epoch) == 10 and pgd_per_epoch[-1] > pgd_per_epoch[0] + 0.1
    assert result.best_epoch == max(
        range(1, 11), key=lambda e: (pgd_per_epoch[e - 1], e)
    )  # the best-PGD epoch was kept (ties to the later one)
    assert result.collapse_epoch is None and not result.catastrophic_overfitting


@pytest.mark.parametrize(("method", "gain"), [("fgsm-rs", 0.25), ("trades", 0.30)])
def test_fgsm_rs_and_trades_raise_pgd_accuracy(digits, undefended_pgd, method, gain) -> None:
    # measured: FGSM-RS 0.357 (+34 pp, 10 one-step epochs), TRADES 0.423 (+40 pp)
    model, card, _ = _train(digits, method)
    assert strong_pgd_accuracy(model, digits) >= undefended_pgd + gain
    assert card.metrics["test_accuracy"] > 0.85
    assert card.training["adversarial"]["method"] == method


# -- catastrophic overfitting --------------------------------------------------------------------
class _Scripted(RobustnessMonitor):
    """The monitor's rule on scripted (PGD, FGSM) accuracies instead of real attacks."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        super().__init__(
            torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), eps=0.1, bounds=BOUNDS
        )
        self.script = script

    def robust_accuracy(self, model):
        return self.script.pop(0)


def test_collapse_rule() -> None:
    model = _linear()
    steady = _Scripted([(0.30, 0.35), (0.38, 0.45), (0.25, 0.50), (0.40, 0.48)])
    assert [steady(e, model, {}) for e in range(1, 5)] == [False] * 4  # a 13 pp dip is noise
    assert steady.best_epoch == 4 and steady.collapse_epoch is None
    drop = _Scripted([(0.30, 0.35), (0.38, 0.45), (0.17, 0.60)])
    record: dict[str, float] = {}
    assert [drop(e, model, record) for e in range(1, 4)] == [False, False, True]
    assert drop.collapse_epoch == 3 and drop.best_epoch == 2
    assert record == {"val_pgd_accuracy": 0.17, "val_fgsm_accuracy": 0.60,
                      "catastrophic_overfitting": 1.0}
    # about 0 under PGD while FGSM accuracy is high: collapsed even without a good epoch
    never = _Scripted([(0.01, 0.70)])
    assert never(1, model, {}) is True and never.best_state is None


def test_collapse_stops_and_rolls_back_to_the_best_epoch(digits) -> None:
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def collapse_at_4(epoch, model, record):
        if epoch == 4:  # a forced collapse: flip the output layer, PGD accuracy -> ~0
            with torch.no_grad():
                model.fc2.weight.neg_()
                model.fc2.bias.neg_()
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    cfg = TrainConfig(epochs=8, lr=1e-2, batch_size=128)
    model, card, result = _train(digits, "fgsm-rs", config=cfg, on_epoch_end=collapse_at_4)
    hist = result.history
    assert len(hist) == 4 and result.stopped_early and result.collapse_epoch == 4
    assert [h["catastrophic_overfitting"] for h in hist] == [0.0, 0.0, 0.0, 1.0]
    assert hist[3]["val_pgd_accuracy"] < 0.05 < max(h["val_pgd_accuracy"] for h in hist[:3]) - 0.2
    best = max(range(1, 4), key=lambda e: (hist[e - 1]["val_pgd_accuracy"], e))
    assert result.best_epoch == best and card.training["best_epoch"] == best
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[best][key]), key
    assert card.training["adversarial"]["collapse_epoch"] == 4
    assert card.metrics["test_pgd_accuracy"] > 0.2  # the rolled-back model is robust again


# -- seeds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_same_seed_same_weights(digits, method) -> None:
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=128, seed=4)
    m1, c1, _ = _train(digits, method, config=cfg)
    m2, c2, _ = _train(digits, method, config=cfg)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert c1.metrics == c2.metrics
    m3, _, _ = _train(digits, method, config=cfg, seed=5)  # only the attack's seed differs
    assert not torch.equal(m1.fc1.weight, m3.fc1.weight)


def test_bad_settings_are_user_errors(digits) -> None:
    with pytest.raises(TrainingError, match="unknown adversarial training method"):
        _train(digits, "free")
    with pytest.raises(TrainingError, match="eps"):
        FastFGSMLoss(eps=0.0, bounds=BOUNDS)
    with pytest.raises(TrainingError, match="exactly one step"):
        _train(digits, "fgsm-rs", steps=3)
    with pytest.raises(TrainingError, match="norm"):
        PGDTrainingLoss(eps=0.1, bounds=BOUNDS, norm="l1")


# -- CLI -------------------------------------------------------------------------------------
def test_cli_train_adversarial(tmp_path, capsys) -> None:
    out = tmp_path / "m"
    args = ["train", "--out", str(out), "--adversarial", "fgsm-rs", "--eps", "0.2",
            "--epochs", "3", "--lr", "0.01", "--quiet"]
    assert main(args) == 0
    _, card = load(out)
    assert card.training["adversarial"]["method"] == "fgsm-rs"
    assert card.training["adversarial"]["eps"] == pytest.approx(0.2)
    assert 0.0 < card.metrics["test_pgd_accuracy"] < card.metrics["test_accuracy"]
    assert len(json.loads((out / "history.json").read_text())) == 3
    assert main(["train", "--out", str(out), "--adversarial", "pgd", "--quiet"]) == 2
    assert "--eps is required" in capsys.readouterr().err


def test_cli_train_adversarial_l2_trades_and_stray_flags(tmp_path, capsys, one_line_error) -> None:
    out = tmp_path / "t"
    args = ["train", "--out", str(out), "--adversarial", "trades", "--norm", "l2", "--eps",
            "1.0", "--attack-steps", "3", "--beta", "4", "--epochs", "2", "--quiet"]
    assert main(args) == 0
    assert "PGD accuracy" in capsys.readouterr().out
    _, card = load(out)
    adv = card.training["adversarial"]
    assert (adv["method"], adv["norm"], adv["steps"], adv["beta"]) == ("trades", "l2", 3, 4.0)
    assert main(["train", "--out", str(out), "--eps", "0.1", "--adversarial", "free", "-q"]) == 2
    one_line_error(capsys.readouterr().err, "'free'", "pgd, fgsm-rs, trades")
    # a flag of adversarial training without --adversarial is an error, not silently ignored
    assert main(["train", "--out", str(out), "--eps", "0.1", "--no-monitor", "-q"]) == 2
    one_line_error(capsys.readouterr().err, "--eps, --no-monitor", "--adversarial")


def test_cli_adv_train_is_a_deprecated_alias(tmp_path, capsys) -> None:
    """``dlsec adv-train`` warns in one line and trains the same weights as ``dlsec train
    --adversarial`` with the same flags."""
    common = ["--eps", "0.2", "--epochs", "2", "--lr", "0.01", "--alpha", "0.1", "-q"]
    assert main(["train", "--out", str(tmp_path / "new"), "--adversarial", "fgsm-rs", *common]) == 0
    new_err = capsys.readouterr().err
    assert main(["adv-train", "--out", str(tmp_path / "old"), "--method", "fgsm-rs", *common]) == 0
    err = capsys.readouterr().err
    assert "deprecated" not in new_err
    assert err.splitlines() == [
        "warning: dlsec adv-train is deprecated: use dlsec train --adversarial fgsm-rs "
        "(--method becomes --adversarial; the other flags are the same)"
    ]
    (m_new, c_new), (m_old, c_old) = load(tmp_path / "new"), load(tmp_path / "old")
    assert c_old.training == c_new.training and c_old.metrics == c_new.metrics
    for key, value in m_new.state_dict().items():
        assert torch.equal(m_old.state_dict()[key], value), key
    # a user mistake through the alias: the warning, then the one error line
    assert main(["adv-train", "--out", str(tmp_path / "x"), "--eps", "0.1", "--method", "free",
                 "-q"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("warning: dlsec adv-train is deprecated")
    assert lines[1].startswith("error: unknown adversarial training method 'free'")


def test_deprecated_module_name_warns_and_resolves_to_the_package() -> None:
    import importlib

    import dlsec.defenses.adversarial as package

    sys.modules.pop("dlsec.defenses.adversarial_training", None)
    with pytest.warns(DeprecationWarning, match="import dlsec.defenses.adversarial"):
        old = importlib.import_module("dlsec.defenses.adversarial_training")
    assert old.adversarial_train is package.adversarial_train
    assert old.METHODS is package.METHODS and sorted(old.__all__) == sorted(package.__all__)


# -- DDP -------------------------------------------------------------------------------------
def test_rank_slice_shards_a_global_batch() -> None:
    idx = torch.tensor([4, 0, 3, 1, 2])
    shards = [_rank_slice(idx, DistributedContext(r, 2, torch.device("cpu"))) for r in (0, 1)]
    assert [s.tolist() for s in shards] == [[4, 3, 2], [0, 1]]
    tail = [
        _rank_slice(torch.tensor([7]), DistributedContext(r, 2, torch.device("cpu")))
        for r in (0, 1)
    ]
    assert [t.tolist() for t in tail] == [[7], [7]]  # padded: both ranks join the all-reduce


def _torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path) -> None:
    out = tmp_path / "ddp"
    proc = _torchrun(str(HERE / "ddp_worker.py"), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(s[7:]) for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
    assert sorted(line["rank"] for line in lines) == [0, 1] and lines[0]["world"] == 2
    # each rank took its half of every global batch of the same permutation
    a, b = (set(line["seen"]) for line in lines)
    assert len(lines[0]["seen"]) == len(lines[1]["seen"]) == 50
    assert not a & b and a | b == set(range(100))
    # gradients were averaged (same weights) and evaluation agrees on every rank
    assert lines[0]["weights"] == lines[1]["weights"]
    assert lines[0]["history"] == lines[1]["history"] and lines[0]["metrics"] == lines[1]["metrics"]
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.safetensors"]
    _, card = load(out)
    assert card.metrics["test_accuracy"] > 0.8
    assert card.metrics == pytest.approx(lines[0]["metrics"])


@pytest.mark.slow
def test_ddp_cli_train_adversarial_pgd(tmp_path) -> None:
    out = tmp_path / "cli"
    proc = _torchrun("-m", "dlsec.cli", "train", "--out", str(out), "--adversarial", "pgd",
                     "--eps", "0.2", "--epochs", "3", "--lr", "0.01", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("saved simplenet") == 1  # rank 0 only
    _, card = load(out)
    assert card.training["adversarial"]["method"] == "pgd"
    assert card.metrics["test_accuracy"] > 0.8 and card.metrics["test_pgd_accuracy"] > 0.2
