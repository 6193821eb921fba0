"""Flower federations on digits: honest FedAvg learns, 30% sign-flipping clients break
FedAvg while Krum and the median hold, and the same seed gives the same weights.

All federations of this module share one start of Flower's simulation engine (a
module-scoped fixture): Ray's start-up (tens of seconds on a loaded 2-core machine) costs
far more than the rounds (about 0.4 s per round of 10 clients).
"""

from __future__ import annotations

import pytest

from dlsec.data import Dataset
from dlsec.scenarios.federated import FederationCell, run_federations, weights_digest

pytestmark = pytest.mark.slow  # Flower's simulation engine starts Ray: tens of seconds

CELLS = [FederationCell("fedavg"), FederationCell("fedavg"),
         FederationCell("fedavg", 0.3, "sign-flip"), FederationCell("krum", 0.3, "sign-flip"),
         FederationCell("fedmedian", 0.3, "sign-flip")]


@pytest.fixture(scope="module")
def federations(digits: Dataset):
    return run_federations(digits, "simplenet", CELLS, clients=10, rounds=10, seed=0,
                           workers=2, progress=False)


def test_honest_fedavg_learns_digits(federations) -> None:
    curve = federations.figures["accuracy_per_round"]["fedavg"]
    assert len(curve) == 11 and curve[0] < 0.3  # round 0: the untrained model
    # measured: 0.134 at round 0, 0.886 after 10 rounds (10 IID clients, SGD lr 0.1)
    assert curve[-1] >= 0.80, curve
    assert not federations.warnings


def test_same_seed_same_weights(federations) -> None:
    # two federations with the same settings in one run: Ray returns the replies in any
    # order, the strategies sort them, so the weights are bit-identical
    details = federations.details["cells"]
    assert details[0]["key"] == details[1]["key"] == "fedavg"
    w = federations.artifacts["weights"]
    assert weights_digest(w[0]) == weights_digest(w[1])
    assert weights_digest(w[0]) != weights_digest(w[2])  # the digest sees the weights


def test_sign_flip_breaks_fedavg_but_not_krum_or_median(federations) -> None:
    m = federations.metrics
    clean = m["fedavg_accuracy"]
    # measured: FedAvg 0.886 clean, 0.100 with 3 of 10 clients sign-flipping (scale 4);
    # Krum 0.894, median 0.877 under the same attack
    assert m["fedavg_sign-flip_0.3_accuracy"] <= clean - 0.5, m
    for robust in ("krum", "fedmedian"):
        assert m[f"{robust}_sign-flip_0.3_accuracy"] >= 0.75, m
    cells = {c["key"]: c for c in federations.details["cells"]}
    assert len(cells["krum_sign-flip_0.3"]["malicious_clients"]) == 3
