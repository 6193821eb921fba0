"""Transfer attacks through the oracle: the issue's target for a Jacobian-augmented
surrogate, exact query accounting and budgets, gray-box and Knockoff surrogates against a
random-sign baseline, full steps against stopping at the surrogate's boundary, determinism.

The target is a SimpleNet trained (as in test_square.py) on two thirds of the digits
training split; the attacker holds the other third (never seen by the target) and attacks
100 test digits the target classifies correctly.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dlsec.attacks.blackbox.transfer import (
    SURROGATE_STRATEGIES,
    Surrogate,
    train_surrogate,
    transfer_attack,
)
from dlsec.attacks.evasion import AttackError
from dlsec.data import stratified_split
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios.transfer import TransferOptions, transfer_threat
from dlsec.threat import BaseOracle, LocalOracle, OracleWrapper, ThreatModel
from dlsec.training import TrainConfig, train_model

EPS = 0.2  # the smallest of 0.1, 0.15, 0.2, ... where the Jacobian target holds reliably
ATTACKS = ("pgd", "mifgsm", "difgsm")


class CountingOracle(OracleWrapper):
    """An independent wrapper: counts the rows of every call itself, and per id."""

    def __init__(self, inner: BaseOracle, n_ids: int) -> None:
        super().__init__(inner)
        self.rows = 0
        self.per_id = torch.zeros(n_ids, dtype=torch.int64)

    def query(self, x, *, ids=None):
        self.rows += x.shape[0]
        if ids is not None:
            self.per_id += torch.bincount(torch.as_tensor(ids), minlength=len(self.per_id))
        return self.inner.query(x, ids=ids)


@pytest.fixture(scope="module")
def setting(digits):
    """(target, card, attacker's x, attacker's y): the splits are disjoint."""
    target_idx, attacker_idx = stratified_split(digits.y_train, test_size=1 / 3, seed=0)
    target_data = dataclasses.replace(
        digits, x_train=digits.x_train[target_idx], y_train=digits.y_train[target_idx]
    )
    model, card, _ = train_model(
        target_data, "simplenet", TrainConfig(epochs=30, lr=3e-3), progress=False
    )
    return model, card, digits.x_train[attacker_idx], digits.y_train[attacker_idx]


@pytest.fixture(scope="module")
def points(digits, setting):
    """100 test digits the target classifies correctly."""
    model = setting[0]
    x, y = digits.x_test[:150], digits.y_test[:150]
    with torch.inference_mode():
        ok = model(x).argmax(1) == y
    return x[ok][:100], y[ok][:100]


@pytest.fixture(scope="module")
def jacobian_run(setting, points):
    """A Jacobian surrogate from at most 6,400 labels of a label-only oracle, then transfer;
    the oracle's budget is exactly what the attack needs."""
    model, card, xa, _ = setting
    x, y = points
    inner = LocalOracle(model, card=card, output="label", budget=6400 + len(ATTACKS) * len(x))
    oracle = CountingOracle(inner, len(x))
    sur = train_surrogate(
        "jacobian",
        oracle,
        card=card,
        x_attacker=xa,
        budget=6400,
        generator=torch.Generator().manual_seed(0),
    )
    res = transfer_attack(
        oracle, sur, x, y, eps=EPS, attacks=ATTACKS, generator=torch.Generator().manual_seed(0)
    )
    return sur, res, oracle


def _random_sign_success(model, x, y, eps: float, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
    with torch.inference_mode():
        pred = model((x + eps * signs).clamp(0, 1)).argmax(1)
    return float((pred != y).double().mean())


def test_jacobian_surrogate_transfer_reaches_the_issue_target(setting, points, jacobian_run):
    model, _, _, _ = setting
    x, y = points
    sur, res, _ = jacobian_run
    assert sur.strategy == "jacobian" and sur.output == "label" and sur.queries == 6400
    rates = res.success_rate
    # the issue's target: >= 80% of correctly classified points at a stated Linf eps (0.2;
    # anchor: Papernot et al. 84.24% on MNIST at 0.3). Measured (seeds 0, 1, 2): PGD
    # 0.96 / 0.95 / 0.97, MI-FGSM 0.85 / 0.84 / 0.84, DI-FGSM 0.85 / 0.81 / 0.84;
    # random signs of the same size: 0.05.
    assert rates["pgd"] >= 0.85
    assert min(rates.values()) >= 0.75
    assert res.best_success_rate - _random_sign_success(model, x, y, EPS) >= 0.6
    # the verdicts are the target's, on adversarials inside the ball and the bounds
    for name, r in res.results.items():
        assert float(r.linf.max()) <= EPS + 1e-6
        assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
        with torch.inference_mode():
            assert torch.equal(model(r.x_adv).argmax(1) != y, r.success), name


def test_queries_are_training_plus_one_per_point_per_attack(points, jacobian_run):
    x, _ = points
    sur, res, oracle = jacobian_run
    n = len(x)
    assert res.queries_total == sur.queries + len(ATTACKS) * n
    assert oracle.inner.queries_total == res.queries_total == oracle.rows
    assert oracle.inner.remaining == 0  # the budget was exactly enough, and never exceeded
    for r in res.results.values():
        assert r.queries.tolist() == [1] * n
    # sending charged each point once per crafting attack (training used no point ids)
    assert oracle.per_id.tolist() == [len(ATTACKS)] * n
    assert oracle.inner.queries_for(torch.arange(n)).tolist() == [len(ATTACKS)] * n
    s = res.summary()
    assert s["queries_training"] == 6400 and s["queries_sending"] == len(ATTACKS) * n
    assert s["queries_total"] == 6400 + len(ATTACKS) * n


def test_full_steps_transfer_far_better_than_stopping_at_the_surrogate_boundary(
    setting, points, jacobian_run
):
    model, card, _, _ = setting
    x, y = points
    sur, full, _ = jacobian_run
    oracle = LocalOracle(model, card=card, output="label")
    early = transfer_attack(
        oracle,
        sur,
        x,
        y,
        eps=EPS,
        attacks=("pgd",),
        full_steps=False,
        generator=torch.Generator().manual_seed(0),
    )
    # measured: 0.96 with all 10 steps, about 0.6 stopping at the first iterate that fools
    # the surrogate (which it fools at least as often)
    assert full.success_rate["pgd"] - early.success_rate["pgd"] >= 0.2
    assert float(early.surrogate_success["pgd"].double().mean()) >= 0.9


@pytest.mark.parametrize("strategy", ["graybox", "knockoff"])
def test_graybox_and_knockoff_beat_random_signs(setting, points, strategy):
    model, card, xa, ya = setting
    x, y = points
    oracle = LocalOracle(model, card=card, output="scores")
    sur = train_surrogate(
        strategy,
        oracle,
        card=card,
        x_attacker=xa,
        y_attacker=ya,
        generator=torch.Generator().manual_seed(0),
    )
    assert sur.queries == (0 if strategy == "graybox" else 6400)
    assert oracle.queries_total == sur.queries
    res = transfer_attack(oracle, sur, x, y, eps=EPS, generator=torch.Generator().manual_seed(0))
    baseline = _random_sign_success(model, x, y, EPS)
    # measured at eps 0.2 (seeds 0, 1, 2): graybox 0.83-0.87, knockoff 0.81-0.93 for the best
    # crafting attack, every attack >= 0.75; random signs 0.05
    assert res.best_success_rate - baseline >= 0.6
    assert min(res.success_rate.values()) - baseline >= 0.5
    assert oracle.queries_total == sur.queries + 3 * len(x)


def test_a_short_budget_is_never_exceeded(setting, points):
    model, card, xa, ya = setting
    x, y = points
    sur = train_surrogate(
        "graybox", LocalOracle(model, card=card), card=card, x_attacker=xa, y_attacker=ya
    )
    oracle = LocalOracle(model, card=card, output="label", budget=2 * len(x) + 30)
    res = transfer_attack(oracle, sur, x, y, eps=EPS, attacks=("fgsm", "pgd", "mifgsm"))
    assert oracle.queries_total == oracle.budget
    assert res.results["fgsm"].queries_total == res.results["pgd"].queries_total == len(x)
    last = res.results["mifgsm"]
    assert last.queries.tolist() == [1] * 30 + [0] * (len(x) - 30)
    assert not bool(last.success[30:].any())  # not sent, not counted as fooled
    with pytest.raises(AttackError, match="allows only"):
        train_surrogate("jacobian", oracle, card=card, x_attacker=xa, budget=100)


def test_jacobian_on_a_score_oracle_learns_labels_only(setting):
    model, card, xa, _ = setting
    oracle = LocalOracle(model, card=card, output="scores", budget=400)
    sur = train_surrogate(
        "jacobian",
        oracle,
        card=card,
        x_attacker=xa,
        budget=400,
        seed_size=50,
        generator=torch.Generator().manual_seed(0),
    )
    assert sur.output == "label" and sur.queries == 400 == oracle.queries_total
    assert sur.training_size == 400


def test_transfer_scenario_same_seed_same_result(setting, digits):
    """The scenario: named seed streams per strategy, so the same run seed gives the same
    adversarials, another seed others, and a strategy does not depend on the others run."""
    model, card, _, _ = setting

    def once(seed: int, strategies=("jacobian", "graybox")):
        ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=seed,
                              threat=ThreatModel.from_card(card, eps=(EPS,)))
        return transfer_threat(ctx, TransferOptions(strategies=strategies, samples=40,
                                                    budget=400, surrogate_epochs=10))

    a, b, c = once(0), once(0), once(1)
    ra, rb, rc = (r.artifacts["results"] for r in (a, b, c))
    for s in ("jacobian", "graybox"):
        for name in ATTACKS:
            assert torch.equal(ra[s][0].results[name].x_adv, rb[s][0].results[name].x_adv)
            assert torch.equal(ra[s][0].results[name].success, rb[s][0].results[name].success)
    assert not torch.equal(ra["jacobian"][0].results["pgd"].x_adv,
                           rc["jacobian"][0].results["pgd"].x_adv)
    assert a.metrics["transfer_graybox_queries"] == 3 * 40  # its own labels, 1 per point sent
    assert a.metrics["transfer_jacobian_queries"] <= 400 + 3 * 40
    alone = once(0, ("graybox",)).artifacts["results"]
    assert torch.equal(alone["graybox"][0].results["difgsm"].x_adv,
                       ra["graybox"][0].results["difgsm"].x_adv)


def test_bad_settings_raise(setting, points):
    model, card, xa, _ = setting
    x, y = points
    oracle = LocalOracle(model, card=card, output="label")
    sur = Surrogate(model=model, strategy="given", queries=0, seconds=0.0)
    with pytest.raises(AttackError, match="strategy"):
        train_surrogate("shadow", oracle, card=card, x_attacker=xa)
    with pytest.raises(AttackError, match="eps"):
        transfer_attack(oracle, sur, x, y, eps=-0.1)
    with pytest.raises(AttackError, match="black-box"):
        transfer_attack(oracle, sur, x, y, eps=EPS, attacks=("square",))
    with pytest.raises(AttackError, match="unknown attack"):
        transfer_attack(oracle, sur, x, y, eps=EPS, attacks=("nope",))
    with pytest.raises(AttackError, match="minimum-norm"):
        transfer_attack(oracle, sur, x, y, eps=EPS, attacks=("deepfool",))
    with pytest.raises(AttackError, match="y_attacker"):
        train_surrogate("graybox", oracle, card=card, x_attacker=xa)
    with pytest.raises(AttackError, match="x_attacker"):
        train_surrogate("jacobian", oracle, card=card)
    assert oracle.queries_total == 0
    assert set(SURROGATE_STRATEGIES) == {"jacobian", "knockoff", "graybox"}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_jacobian_target_holds_for_other_seeds(setting, points, seed):
    model, card, xa, _ = setting
    x, y = points
    oracle = LocalOracle(model, card=card, output="label", budget=6400 + 3 * len(x))
    sur = train_surrogate(
        "jacobian", oracle, card=card, x_attacker=xa, generator=torch.Generator().manual_seed(seed)
    )
    res = transfer_attack(oracle, sur, x, y, eps=EPS, generator=torch.Generator().manual_seed(seed))
    assert res.success_rate["pgd"] >= 0.85
    assert min(res.success_rate.values()) >= 0.75
