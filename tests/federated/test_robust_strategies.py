"""Norm clipping (Sun et al. 2019) and FLTrust (Cao et al. 2021) on hand-made updates
(exact values), their registration in make_strategy, and their parameter errors."""

from __future__ import annotations

import pytest
import torch

from dlsec.defenses.federated.apps import FederationError, make_strategy
from dlsec.defenses.federated.strategies import (
    FLTrust,
    NormClipping,
    RobustStrategyError,
    clip_update,
    clipped_mean,
    fltrust_aggregate,
    fltrust_scores,
    update_norm,
)
from dlsec.scenarios.federated import FederatedScenarioError, FederationCell, check_federation

G = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0]), "steps": torch.tensor(7)}


def _w(w: list[float], b: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(w), "b": torch.tensor([b]), "steps": torch.tensor(9)}


def test_clip_update_scales_to_the_bound() -> None:
    u = {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}  # norm 5 over all tensors
    assert update_norm(u) == pytest.approx(5.0)
    c = clip_update(u, 1.0)
    assert torch.allclose(c["w"], torch.tensor([0.6, 0.0])) and torch.allclose(c["b"], torch.tensor([0.8]))
    assert torch.equal(clip_update(u, 10.0)["w"], u["w"])  # inside the bound: unchanged
    with pytest.raises(RobustStrategyError):
        clip_update(u, 0.0)


def test_clipped_mean_is_fedavg_of_clipped_updates() -> None:
    # updates: (3, 0 | 4) norm 5, (0, 1 | 0) norm 1, weighted 1:3
    trained = [_w([4.0, 1.0], 4.0), _w([1.0, 2.0], 0.0)]
    new = clipped_mean(G, trained, [1, 3], bound=1.0)
    # clipped: (0.6, 0 | 0.8), (0, 1 | 0); mean 1/4, 3/4: (0.15, 0.75 | 0.2)
    assert torch.allclose(new["w"], torch.tensor([1.15, 1.75]))
    assert torch.allclose(new["b"], torch.tensor([0.2]))
    assert new["steps"].item() == 9  # integer buffers from the first reply
    # no bound: the median norm of (5, 1) is the lower one, 1 -> same
    assert torch.allclose(clipped_mean(G, trained, [1, 3], None)["w"], new["w"])
    # a boosted update (x100) moves the clipped mean no further than the bound
    boosted = [_w([301.0, 1.0], 400.0), _w([1.0, 2.0], 0.0)]
    assert torch.allclose(clipped_mean(G, boosted, [1, 3], 1.0)["w"], new["w"])


def test_fltrust_scores_rescales_and_weights() -> None:
    server = _w([2.0, 1.0], 0.0)  # u0 = (1, 0 | 0), norm 1
    trained = [_w([3.0, 1.0], 0.0),    # u = (2, 0 | 0): cos 1, rescaled (1, 0 | 0)
               _w([2.0, 2.0], 0.0),    # u = (1, 1 | 0): cos 1/sqrt2, rescaled (1, 1)/sqrt2
               _w([-9.0, 1.0], 0.0)]   # u = (-10, 0 | 0): cos -1 -> score 0
    scores = fltrust_scores([{"w": t["w"] - G["w"], "b": t["b"]} for t in trained],
                            {"w": server["w"] - G["w"], "b": server["b"]})
    assert scores == pytest.approx([1.0, 2 ** -0.5, 0.0])
    new = fltrust_aggregate(G, trained, server)
    s = 2 ** -0.5
    # (1 * (1, 0) + s * (s, s)) / (1 + s) = (1.5, 0.5) / (1 + s)
    expect = torch.tensor([1.0 + 1.5 / (1 + s), 1.0 + 0.5 / (1 + s)])
    assert torch.allclose(new["w"], expect, atol=1e-6)
    # every client against the server: the global model stays
    assert torch.equal(fltrust_aggregate(G, trained[2:], server)["w"], G["w"])


def test_strategies_registered_by_name_with_one_line_errors() -> None:
    assert isinstance(make_strategy("clipping", clients=10, malicious=1, clip_norm=2.0), NormClipping)
    assert isinstance(make_strategy("fedavg-clip", clients=10, malicious=1), NormClipping)
    trust = make_strategy("fltrust", clients=10, malicious=3, root_train=lambda w, r: w)
    assert isinstance(trust, FLTrust)
    with pytest.raises(FederationError, match="clip-norm must be positive"):
        make_strategy("clipping", clients=10, malicious=1, clip_norm=-1.0)
    with pytest.raises(FederationError, match="root"):
        make_strategy("fltrust", clients=10, malicious=1)
    cells = [FederationCell("fltrust", 0.3, "alie")]
    check_federation(cells, clients=10, rounds=1)
    with pytest.raises(FederatedScenarioError, match="root-size"):
        check_federation(cells, clients=10, rounds=1, root_size=0)
    with pytest.raises(FederatedScenarioError, match="clip-norm"):
        check_federation([FederationCell("clipping")], clients=10, rounds=1, clip_norm=0.0)
    with pytest.raises(FederatedScenarioError, match="backdoor-target"):
        check_federation(cells, clients=10, rounds=1, backdoor_target=10, classes=10)


# -- one shared simulation (Ray starts once for the module) -------------------------------------
SIM_CELLS = [FederationCell("fedavg", 0.1, "scale"), FederationCell("clipping", 0.1, "scale"),
             FederationCell("fltrust", 0.1, "scale")]
# ALIE against Krum and the median is measured in the README (no effect at 10 clients,
# so no test here: an assertion of "no effect" would pass for an attack that does nothing)


@pytest.fixture(scope="module")
def robust_federations(digits):
    from dlsec.scenarios.federated import run_federations

    return run_federations(digits, "simplenet", SIM_CELLS, clients=10, rounds=10, seed=0,
                           workers=2, progress=False)


@pytest.mark.slow
def test_backdoor_planted_under_fedavg_cut_by_clipping_and_fltrust(robust_federations) -> None:
    m = robust_federations.metrics
    # measured (digits, simplenet, 10 IID clients, 1 boosting client x10, 10 rounds):
    # backdoor success FedAvg 0.994, norm clipping (median bound) 0.019, FLTrust 0.000;
    # main accuracy 0.838 / 0.880 / 0.880
    assert m["fedavg_scale_0.1_backdoor_asr"] >= 0.8, m
    assert m["clipping_scale_0.1_backdoor_asr"] <= m["fedavg_scale_0.1_backdoor_asr"] - 0.6, m
    assert m["fltrust_scale_0.1_backdoor_asr"] <= 0.3, m
    for key in ("clipping_scale_0.1", "fltrust_scale_0.1"):
        assert m[f"{key}_accuracy"] >= 0.8, m
    curve = robust_federations.figures["backdoor_asr_per_round"]["fedavg_scale_0.1"]
    assert len(curve) == 11 and curve[0] <= 0.3  # round 0: the untrained model
    assert "krum_backdoor_asr" not in m  # only the scale attack's cells report it
