from __future__ import annotations

import pytest
import torch
from torch import nn

from dlsec.threat import (
    BaseOracle,
    BudgetExhausted,
    LocalOracle,
    Oracle,
    OracleError,
    OracleWrapper,
    ThreatModel,
    ThreatModelError,
)


class _Fixed(nn.Module):
    """Logits = x @ W for a fixed W: hand-checkable outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))

    def forward(self, x):
        return x @ self.w


def _oracle(**kw) -> LocalOracle:
    return LocalOracle(_Fixed(), num_classes=3, input_shape=(2,), bounds=(0.0, 1.0), **kw)


X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])


def test_threat_model_validation() -> None:
    tm = ThreatModel(norm="l2", eps=[0.5, 1.0], bounds=(-1, 1))
    assert tm.eps == (0.5, 1.0) and tm.bounds == (-1.0, 1.0)
    with pytest.raises(ThreatModelError, match="norm"):
        ThreatModel(norm="l3")  # type: ignore[arg-type]
    with pytest.raises(ThreatModelError, match="eps"):
        ThreatModel(eps=(-0.1,))
    with pytest.raises(ThreatModelError, match="bounds"):
        ThreatModel(bounds=(1.0, 0.0))
    with pytest.raises(ThreatModelError, match="knowledge"):
        ThreatModel(knowledge="grey")  # type: ignore[arg-type]


def test_threat_model_from_card_checks_strings_and_takes_the_cards_bounds() -> None:
    from dlsec.models import CardLike

    class Card:  # only what CardLike promises
        def __init__(self) -> None:
            self.bounds = (-1.0, 2.0)
            self.input_shape = [1, 8, 8]
            self.classes = [str(i) for i in range(10)]
            self.num_classes = 10

    card: CardLike = Card()
    tm = ThreatModel.from_card(card, knowledge="black-box", norm="l2", eps=0.5, targeted=True)
    assert (tm.knowledge, tm.norm, tm.eps, tm.targeted) == ("black-box", "l2", (0.5,), True)
    assert tm.bounds == (-1.0, 2.0)
    assert ThreatModel.from_card(card).eps == (0.1,)  # the defaults: white-box, linf, 0.1
    # strings from a config file or a flag are checked, naming the field
    with pytest.raises(ThreatModelError, match="norm must be one of linf, l2, l1, l0, got 'L2'"):
        ThreatModel.from_card(card, norm="L2")
    with pytest.raises(ThreatModelError, match="knowledge"):
        ThreatModel.from_card(card, knowledge="grey-box")
    with pytest.raises(ThreatModelError, match="eps must be numbers"):
        ThreatModel.from_card(card, eps=["0.1", "wide"])
    with pytest.raises(ThreatModelError, match="eps must be finite"):
        ThreatModel.from_card(card, eps=[])
    with pytest.raises(ThreatModelError, match="eps must be finite"):
        ThreatModel.from_card(card, eps=float("nan"))
    with pytest.raises(ThreatModelError, match="targeted"):
        ThreatModel.from_card(card, targeted="yes")  # type: ignore[arg-type]


def test_threat_model_radii() -> None:
    tm = ThreatModel(norm="l2", eps=(0.5, 2.0, 1.0), bounds=(0.0, 1.0))
    assert tm.largest_eps == 2.0
    one = tm.with_eps(0.25)
    assert one.eps == (0.25,) and (one.norm, one.bounds) == ("l2", (0.0, 1.0))
    assert tm.eps == (0.5, 2.0, 1.0)  # frozen: with_eps made a new one
    with pytest.raises(ThreatModelError, match="eps"):
        tm.with_eps(-1.0)
    with pytest.raises(AttributeError):
        tm.eps = (0.3,)  # type: ignore[misc]


def test_output_kinds_exact() -> None:
    probs = torch.softmax(X @ _Fixed().w.detach(), dim=1)
    assert torch.allclose(_oracle(output="scores").query(X), probs)
    top = _oracle(output="topk", top_k=1).query(X)
    assert (top > 0).sum(1).tolist() == [1, 1, 1]
    assert torch.allclose(top.max(1).values, probs.max(1).values)
    rounded = _oracle(output="rounded", decimals=1).query(X)
    assert torch.equal(rounded, torch.round(probs * 10) / 10)
    labels = _oracle(output="label").query(X)
    assert labels.tolist() == [0, 1, 0] and labels.dtype == torch.int64
    assert _oracle(output="scores").query_labels(X).tolist() == [0, 1, 0]


def test_counts_total_and_per_sample() -> None:
    o = _oracle()
    o.query(X, ids=torch.tensor([0, 1, 1]))
    o.query(X[:1])  # no ids: counted in the total only
    o.query(X[:2], ids=torch.tensor([5, 0]))
    assert o.queries_total == 6
    assert o.queries_for(torch.tensor([0, 1, 2, 5, 9])).tolist() == [2, 2, 0, 1, 0]
    state = o.state_dict()
    o2 = _oracle()
    o2.load_state_dict(state)
    assert o2.queries_total == 6


def test_budget_is_exact_and_typed() -> None:
    o = _oracle(budget=4)
    o.query(X)
    assert o.remaining == 1
    with pytest.raises(BudgetExhausted, match="3 of 4 spent, 3 more asked"):
        o.query(X)
    assert o.queries_total == 3  # the refused query cost nothing
    o.query(X[:1])
    assert o.remaining == 0
    with pytest.raises(BudgetExhausted):
        o.query(X[:1])
    ps = _oracle(per_sample_budget=2)
    ps.query(X[:2], ids=torch.tensor([0, 0]))
    with pytest.raises(BudgetExhausted, match="per-sample"):
        ps.query(X[:1], ids=torch.tensor([0]))


def test_on_query_sees_every_charged_row() -> None:
    o = _oracle(budget=4)
    seen: list[int] = []
    o.on_query = seen.append
    o.query(X)
    o.query_labels(X[:1])
    with pytest.raises(BudgetExhausted):
        o.query(X[:1])  # refused: not reported
    assert seen == [3, 1] and sum(seen) == o.queries_total


def test_wrapper_forwards_everything_and_labels_go_through_query() -> None:
    class Doubled(OracleWrapper):  # sends every row twice: watched through query alone
        def query(self, x, *, ids=None):
            return self.inner.query(torch.cat([x, x]))[: x.shape[0]]

    inner = _oracle(budget=10)
    w = Doubled(inner)
    assert isinstance(w, Oracle)
    assert (w.output, w.num_classes, w.input_shape, w.bounds) == ("scores", 3, (2,), (0.0, 1.0))
    assert w.query_labels(X).tolist() == [0, 1, 0]
    assert w.queries_total == inner.queries_total == 6 and w.remaining == 4
    assert OracleWrapper(_oracle(output="label")).query_labels(X).tolist() == [0, 1, 0]
    plain = OracleWrapper(inner)
    plain.query(X[:1], ids=torch.tensor([4]))
    assert plain.queries_for(torch.tensor([4])).tolist() == [1]


def test_bad_queries() -> None:
    o = _oracle()
    with pytest.raises(OracleError, match="shape"):
        o.query(torch.zeros(2, 3))
    with pytest.raises(OracleError, match="bounds"):
        o.query(torch.full((1, 2), 1.5))
    with pytest.raises(OracleError, match="NaN"):
        o.query(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(OracleError, match="batch"):
        o.query(torch.zeros(2))
    assert o.queries_total == 0


def test_batching_gives_same_answers() -> None:
    x = torch.rand(50, 2)
    a = _oracle(batch_size=7).query(x)
    b = _oracle(batch_size=1000).query(x)
    assert torch.allclose(a, b)


def test_local_oracle_is_an_oracle(trained_simplenet) -> None:
    model, card, _ = trained_simplenet
    o = LocalOracle(model, card=card, output="label")
    assert isinstance(o, Oracle) and isinstance(o, BaseOracle)
    assert o.input_shape == (1, 8, 8) and o.num_classes == 10 and o.bounds == (0.0, 1.0)
