"""Square Attack (Linf) through an oracle: schedule, stripes, success on digits, counting,
budgets and determinism."""

from __future__ import annotations

import pytest
import torch

from dlsec.attacks.blackbox import SquareAttack
from dlsec.attacks.blackbox.square import p_selection
from dlsec.attacks.evasion import ensemble as ens
from dlsec.threat import BaseOracle, LocalOracle
from dlsec.training import TrainConfig, train_model


class CountingOracle:
    """An independent oracle wrapper: counts rows itself and remembers, per id, whether
    the last answer was already a wrong label and whether it was queried after that."""

    def __init__(self, inner: BaseOracle, y: torch.Tensor) -> None:
        self.inner, self.y = inner, y
        self.output, self.num_classes = inner.output, inner.num_classes
        self.input_shape, self.bounds = inner.input_shape, inner.bounds
        self.rows = 0
        self.per_id = torch.zeros(len(y), dtype=torch.int64)
        self.fooled = torch.zeros(len(y), dtype=torch.bool)
        self.after_fooled = 0

    @property
    def queries_total(self) -> int:
        return self.inner.queries_total

    @property
    def remaining(self) -> int | None:
        return self.inner.remaining

    def query(self, x, *, ids=None):
        out = self.inner.query(x, ids=ids)
        self.rows += x.shape[0]
        self.per_id += torch.bincount(ids, minlength=len(self.y))
        self.after_fooled += int(self.fooled[ids].sum())
        wrong = out.argmax(1).cpu() != self.y[ids]
        self.fooled[ids[wrong]] = True
        return out

    def query_labels(self, x, *, ids=None):
        return self.query(x, ids=ids).argmax(1)

    def queries_for(self, ids):
        return self.inner.queries_for(ids)


@pytest.fixture(scope="module")
def net(digits):
    model, card, _ = train_model(
        digits, "simplenet", TrainConfig(epochs=30, lr=3e-3), progress=False
    )
    return model, card


@pytest.fixture(scope="module")
def points(digits, net):
    """100 test digits the model classifies correctly."""
    model, _ = net
    x, y = digits.x_test[:150], digits.y_test[:150]
    with torch.inference_mode():
        ok = model(x).argmax(1) == y
    return x[ok][:100], y[ok][:100]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_p_schedule_is_the_papers() -> None:
    # 10,000 iterations: p_init up to 10, halved after 10, 50, 200, ..., 8000
    assert p_selection(0.05, 0, 10_000) == 0.05
    assert p_selection(0.05, 10, 10_000) == 0.05
    assert p_selection(0.05, 11, 10_000) == 0.025
    assert p_selection(0.05, 200, 10_000) == 0.05 / 4
    assert p_selection(0.05, 201, 10_000) == 0.05 / 8
    assert p_selection(0.05, 9_999, 10_000) == 0.05 / 512
    # rescaled to the budget: iteration 2 of 1,000 is iteration 20 of 10,000
    assert p_selection(0.05, 1, 1_000) == 0.05
    assert p_selection(0.05, 2, 1_000) == 0.025
    assert p_selection(0.1, 500, 1_000) == 0.1 / 128


def test_initialisation_is_vertical_stripes_and_costs_one_query(net) -> None:
    model, card = net
    x = torch.full((6, 1, 8, 8), 0.5)
    y = torch.zeros(6, dtype=torch.int64)
    oracle = LocalOracle(model, card=card)
    res = SquareAttack(eps=0.1, max_queries=1)(oracle, x, y, generator=_gen())
    d = res.x_adv - x
    assert torch.allclose(d.abs(), torch.full_like(d, 0.1))
    assert torch.equal(d, d[:, :, :1, :].expand_as(d))  # constant down each column
    assert bool((d[:, 0, 0] > 0).any()) and bool((d[:, 0, 0] < 0).any())
    assert res.queries.tolist() == [1] * 6 and oracle.queries_total == 6


def test_square_linf_fools_digits_with_few_queries_and_counts_exactly(net, points) -> None:
    model, card = net
    x, y = points
    counter = CountingOracle(LocalOracle(model, card=card), y)
    res = SquareAttack(eps=0.2, max_queries=1000)(counter, x, y, generator=_gen())
    # the target: >= 90% success, median queries <= 100 (measured: 92%, 30)
    assert res.success_rate >= 0.9
    assert res.median_queries <= 100
    # inside the ball and the bounds; successes are real
    assert float(res.linf.max()) <= 0.2 + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    with torch.inference_mode():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(pred != y, res.success)
    # the attack's count is the oracle's and an independent counter's, per point too
    assert res.queries_total == counter.rows == counter.inner.queries_total
    assert torch.equal(res.queries, counter.per_id)
    assert torch.equal(counter.inner.queries_for(torch.arange(len(y))), res.queries)
    assert counter.after_fooled == 0  # a fooled point is never queried again
    assert bool((res.queries <= 1000).all())
    assert bool((res.queries[~res.success] == 1000).all())


def test_budgets_are_enforced(net, points) -> None:
    model, card = net
    x, y = points[0][:20], points[1][:20]
    oracle = LocalOracle(model, card=card)
    res = SquareAttack(eps=0.05, max_queries=7)(oracle, x, y, generator=_gen())
    assert int(res.queries.max()) <= 7 and oracle.queries_total == res.queries_total
    # a global oracle budget stops the attack without an error and without overspending
    capped = LocalOracle(model, card=card, budget=55)
    res = SquareAttack(eps=0.05, max_queries=1000)(capped, x, y, generator=_gen())
    assert capped.queries_total == res.queries_total == 55


def test_same_seed_same_result(net, points) -> None:
    model, card = net
    x, y = points[0][:30], points[1][:30]
    runs = [
        SquareAttack(eps=0.1, max_queries=200)(
            LocalOracle(model, card=card), x, y, generator=_gen(s)
        )
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert torch.equal(runs[0].queries, runs[1].queries)
    assert not torch.equal(runs[0].x_adv, runs[2].x_adv)


def test_square_is_a_black_box_ensemble_stage(net, points) -> None:
    model, _ = net
    stage = ens.get_stage("square")
    assert not stage.white_box
    assert ens.default_attacks() == ("apgd-ce", "apgd-t", "square")
    x, y = points[0][:20], points[1][:20]
    cand = stage.run(model, x, y, norm="linf", eps=0.2, bounds=(0.0, 1.0), generator=_gen())
    assert float((cand - x).abs().max()) <= 0.2 + 1e-6
    with torch.inference_mode():
        fooled = model(cand).argmax(1) != y
    assert float(fooled.double().mean()) >= 0.8
    # other norms are not Square's: the stage leaves the points alone
    same = stage.run(model, x, y, norm="l2", eps=1.0, bounds=(0.0, 1.0), generator=_gen())
    assert torch.equal(same, x)
