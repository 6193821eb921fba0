"""The privacy scenarios: members from the card's training record, named seed streams,
attacks by name, extraction and inversion as the front-ends call them."""

from __future__ import annotations

import pytest
import torch

from dlsec.errors import DlsecError
from dlsec.output_policies import OutputPolicy
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios.extraction import ExtractionOptions, run_extraction
from dlsec.scenarios.inversion import InversionOptions, no_data, run_inversion
from dlsec.scenarios.membership import MembershipOptions, run_membership
from dlsec.training import TrainConfig, train_model


@pytest.fixture(scope="module")
def half_trained(digits):
    """A SimpleNet that saw only half the training split (the other half was its validation
    share): only the card's training record tells which half."""
    cfg = TrainConfig(epochs=3, lr=1e-2, val_fraction=0.5, seed=3, measure_train_accuracy=False)
    model, card, _ = train_model(digits, "simplenet", cfg, progress=False)
    return model, card


def _rows_in(x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    return (torch.cdist(x.flatten(1), pool.flatten(1)).min(1).values < 1e-6)


def test_members_are_the_records_the_card_names(digits, half_trained) -> None:
    model, card = half_trained
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0)
    idx = ctx.member_indices()
    assert idx.numel() == pytest.approx(len(digits.y_train) / 2, abs=10)
    res = run_membership(ctx, MembershipOptions(attacks=("loss", "confidence"), members=300))
    x, _, is_member = res.artifacts["records"]
    assert int(is_member.sum()) == int((~is_member).sum()) == res.details["members"] == 300
    val = torch.ones(len(digits.y_train), dtype=torch.bool)
    val[idx] = False
    assert _rows_in(x[is_member], digits.x_train[idx]).all()
    assert not _rows_in(x[is_member], digits.x_train[val]).any()  # never a validation record
    assert _rows_in(x[~is_member], digits.x_test).all()
    assert [r.queries for r in res.artifacts["results"]] == [600, 600]
    assert res.metrics["membership_auc"] == max(res.metrics["loss_auc"],
                                                res.metrics["confidence_auc"])
    assert set(res.figures["roc"]) == {"loss", "confidence"}
    again = run_membership(ctx, MembershipOptions(attacks=("loss", "confidence"), members=300))
    assert again.metrics == res.metrics
    other = run_membership(ScenarioContext(model=model, card=card, dataset=digits, seed=1),
                           MembershipOptions(attacks=("loss",), members=300))
    assert not torch.equal(other.artifacts["results"][0].scores,
                           res.artifacts["results"][0].scores)  # another seed, other records


def test_unknown_names_are_user_errors() -> None:
    with pytest.raises(DlsecError, match="unknown membership attack 'nope'"):
        MembershipOptions(attacks=("nope",))
    with pytest.raises(DlsecError, match="unknown extraction strategy"):
        ExtractionOptions(runs=(("psychic", "scores"),))
    with pytest.raises(DlsecError, match="oracle output"):
        ExtractionOptions(runs=(("natural", "logits"),))


def test_extraction_steals_within_its_budget(digits, trained_simplenet) -> None:
    model, card, _ = trained_simplenet
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0)
    res = run_extraction(ctx, ExtractionOptions(runs=(("natural", "scores"), ("active", "label")),
                                                budget=400, epochs=10, rounds=2))
    natural, active = res.artifacts["results"]
    assert natural.queries == active.queries == 400
    assert res.metrics["extraction_fidelity"] >= 0.8
    assert "extraction_fidelity_labels" in res.metrics
    assert res.details["held_out"] == len(digits.y_test) - len(digits.y_test) // 2
    assert list(res.figures["fidelity"]) == ["natural (scores)", "active (label)"]


def test_inversion_without_data(trained_simplenet) -> None:
    model, card, _ = trained_simplenet
    ctx = ScenarioContext(model=model, card=card, dataset=no_data(card), seed=0)
    res = run_inversion(ctx, InversionOptions(black_box_iters=0, evaluator=None))
    wb = res.artifacts["results"]["white-box"]
    assert (wb.confidence >= 0.99).all()  # the model is sure of its reconstructions
    grid = res.figures["reconstructions"]
    assert grid["images"].shape == (10, 1, 8, 8) and len(grid["labels"]) == 10
    assert res.metrics == {} and res.tables == []
    with pytest.raises(DlsecError):
        InversionOptions(white_box=False, black_box_iters=0)


def test_extraction_takes_any_output_policy(digits, trained_simplenet) -> None:
    from dlsec.scenarios.extraction import attacker_view
    from dlsec.threat import LocalOracle

    model, card, _ = trained_simplenet
    with pytest.raises(DlsecError, match=r"unknown oracle output 'topk:0' \(valid forms: ") as err:
        ExtractionOptions(runs=(("natural", "topk:0"),))
    assert "\n" not in str(err.value)
    # topk:1 renormalised by the attacker is exactly the one-hot label (p / p == 1.0)
    x = digits.x_test[:50]
    view = attacker_view(LocalOracle(model, card=card, output=OutputPolicy.parse("topk:1")))
    onehot = view.query(x)
    labels = LocalOracle(model, card=card, output="label").query(x)
    assert torch.equal(onehot, torch.nn.functional.one_hot(labels, 10).float())
    rounded = attacker_view(LocalOracle(model, card=card, output=OutputPolicy.parse("rounded:1")))
    assert (rounded.query(x).sum(1) - 1).abs().max() < 1e-6
    assert view.queries_total == 50  # the view charges the oracle's own counter
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0)
    runs = (("natural", "label"), ("natural", "topk:1"), ("natural", "noise:0.1"))
    res = run_extraction(ctx, ExtractionOptions(runs=runs, budget=300, epochs=10, rounds=2))
    label, top1, noisy = res.artifacts["results"]
    assert label.queries == top1.queries == noisy.queries == 300
    # one-hot soft targets train the same substitute as the labels, up to float rounding
    # of the two losses (measured: equal fidelity); chance is about 0.1
    assert abs(top1.fidelity - label.fidelity) <= 0.02 and label.fidelity > 0.6
    assert noisy.fidelity > 0.6 and noisy.output == "scores"
    assert [r[1] for r in res.tables[0].rows] == ["label", "topk:1", "noise:0.1"]
    assert res.metrics == {"extraction_fidelity_labels": round(label.fidelity, 6)}
    again = run_extraction(ctx, ExtractionOptions(runs=runs[2:], budget=300, epochs=10, rounds=2))
    assert again.artifacts["results"][0].fidelity == noisy.fidelity  # noise from the seed
