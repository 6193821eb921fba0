"""ALIE and IPM (the colluders' statistics of honest updates) and the backdoor trigger, on
hand-made updates with hand-checked values."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dlsec.defenses.federated.clients import (
    MaliciousClientError,
    add_trigger,
    alie_update,
    alie_z_max,
    backdoor_data,
    colluding_update,
    default_scale,
    ipm_update,
    poison_update,
    trigger_size,
)


def test_alie_z_max_is_the_papers_formula() -> None:
    # n=10, f=3: s = floor(6) - 3 = 3, Phi^-1(7/10) = 0.5244
    assert alie_z_max(10, 3) == pytest.approx(0.5244005, abs=1e-6)
    # n=50, f=12 (the paper's CIFAR setting): s = 26 - 12 = 14, Phi^-1(36/50) = 0.5828
    assert alie_z_max(50, 12) == pytest.approx(0.5828415, abs=1e-6)
    # n=10, f=0: s = 6, Phi^-1(0.4) < 0
    assert alie_z_max(10, 0) == pytest.approx(-0.2533471, abs=1e-6)
    assert default_scale("alie", 10, 3) == alie_z_max(10, 3)
    with pytest.raises(MaliciousClientError):
        alie_z_max(10, 10)


def test_alie_sends_mean_minus_z_std_coordinatewise() -> None:
    ups = [{"w": torch.tensor([1.0, 0.0]), "n": torch.tensor(5)},
           {"w": torch.tensor([3.0, 0.0]), "n": torch.tensor(5)},
           {"w": torch.tensor([5.0, 6.0]), "n": torch.tensor(5)}]
    out = alie_update(ups, 1.5)
    # column 0: mean 3, sample std 2 -> 3 - 3 = 0; column 1: mean 2, std sqrt(12) -> 2 - 1.5 sqrt(12)
    assert torch.allclose(out["w"], torch.tensor([0.0, 2.0 - 1.5 * 12 ** 0.5]))
    assert out["n"].item() == 5  # integer buffers pass through
    # one colluder: std 0, ALIE sends its honest update
    assert torch.equal(alie_update(ups[:1], 1.5)["w"], ups[0]["w"])


def test_ipm_sends_minus_epsilon_mean() -> None:
    ups = [{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, 4.0])}]
    assert torch.allclose(ipm_update(ups, 0.5)["w"], torch.tensor([-1.0, -0.5]))


def test_colluding_update_works_on_deltas_from_the_global_weights() -> None:
    g = {"w": torch.tensor([10.0, 10.0])}
    honest = [{"w": torch.tensor([11.0, 12.0])}, {"w": torch.tensor([13.0, 14.0])}]
    # deltas (1, 2), (3, 4): mean (2, 3); IPM eps 2 -> g - (4, 6)
    assert torch.allclose(colluding_update("ipm", g, honest, scale=2.0)["w"], torch.tensor([6.0, 4.0]))
    # ALIE z 0: the mean delta
    assert torch.allclose(colluding_update("alie", g, honest, scale=0.0)["w"], torch.tensor([12.0, 13.0]))
    with pytest.raises(MaliciousClientError):
        poison_update("alie", g, honest[0], scale=1.0, generator=torch.Generator())


def test_trigger_and_backdoored_copy() -> None:
    x = torch.zeros(3, 1, 8, 8)
    y = torch.tensor([0, 1, 2])
    xt = add_trigger(x, size=2, value=16.0)
    assert xt[:, :, -2:, -2:].eq(16.0).all() and xt.sum().item() == 3 * 4 * 16.0
    assert x.sum().item() == 0  # a copy
    bx, by = backdoor_data(x, y, target=0, size=2, value=1.0)
    # the 3 clean records, then the 2 not of class 0, triggered and labelled 0
    assert by.tolist() == [0, 1, 2, 0, 0]
    assert bx[:3].sum().item() == 0 and bx[3:].sum().item() == 2 * 4
    assert trigger_size([1, 8, 8]) == 2 and trigger_size([1, 28, 28]) == 2
    assert trigger_size([3, 32, 32]) == 3
    with pytest.raises(MaliciousClientError):
        add_trigger(x, size=9, value=1.0)


def _round_one(plan, client: int, federation: int):
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from dlsec.defenses.federated.apps import client_update

    g = {k: v.detach() for k, v in plan.new_model().state_dict().items()}
    content = RecordDict({"arrays": ArrayRecord(g),
                          "config": ConfigRecord({"server-round": 1, "federation": federation})})
    reply: Any = client_update(plan, client, content)
    return g, reply["arrays"].to_torch_state_dict(), int(reply["metrics"]["malicious"])


def test_colluders_send_the_statistic_of_their_own_honest_updates(digits) -> None:
    # no Ray: the ClientApp's function called directly, as Flower would
    from dlsec.defenses.federated.apps import FederationPlan, Threat
    from dlsec.models import ModelCard
    from dlsec.training import TrainConfig

    card = ModelCard(architecture="simplenet", input_shape=list(digits.input_shape),
                     classes=list(digits.classes), bounds=(0.0, 1.0))
    parts = [torch.arange(k * 40, (k + 1) * 40) for k in range(4)]
    local = TrainConfig(epochs=1, lr=0.1, batch_size=16, optimizer="sgd", momentum=0.0,
                        schedule="none", val_fraction=0.0, seed=3, measure_train_accuracy=False)
    threats = [Threat(), Threat((1, 2), "alie", 1.0), Threat((1, 2), "ipm", 2.0),
               Threat((1,), "scale", 4.0)]
    plan = FederationPlan(card=card, x_train=digits.x_train, y_train=digits.y_train, parts=parts,
                          local=local, threats=threats)
    g, honest1, bad = _round_one(plan, 1, 0)
    _, honest2, _ = _round_one(plan, 2, 0)
    assert bad == 0
    _, alie1, bad1 = _round_one(plan, 1, 1)
    _, alie2, _ = _round_one(plan, 2, 1)
    assert bad1 == 1
    expect = colluding_update("alie", g, [honest1, honest2], scale=1.0)
    for k in g:  # both colluders send the same weights, the statistic of both honest updates
        assert torch.equal(alie1[k], alie2[k])
        assert torch.allclose(alie1[k], expect[k], atol=1e-6)
    # IPM eps 2: g - 2 * mean update, i.e. the honest mean step reversed twice over
    _, ipm1, _ = _round_one(plan, 1, 2)
    k = "net.0.weight" if "net.0.weight" in g else next(iter(g))
    mean = (honest1[k] + honest2[k]) / 2 - g[k]
    assert torch.allclose(ipm1[k], g[k] - 2 * mean, atol=1e-6)
    # the scale attacker trains on the backdoored copy, then boosts: not 4x its honest step
    _, boosted, _ = _round_one(plan, 1, 3)
    assert not torch.allclose(boosted[k], g[k] + 4 * (honest1[k] - g[k]), atol=1e-4)
