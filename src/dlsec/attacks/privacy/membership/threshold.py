"""Threshold attacks: loss (Yeom et al.), confidence and entropy of the prediction.

Yeom, Giacomelli, Fredrikson, Jha, "Privacy Risk in Machine Learning: Analyzing the
Connection to Overfitting" (CSF 2018): a sample is called a member when the target's
loss on it is below a threshold, because training drives member losses down. The
confidence variant thresholds the true-class probability, the entropy variant the
entropy of the prediction (Salem et al., "ML-Leaks", NDSS 2019; it needs no label).

Threat model: black-box, the oracle returns class scores; the attacker knows the
label of each record it tests (except for entropy). One query per tested record.
The result carries per-sample scores; the ROC over all thresholds gives the metrics,
so no threshold has to be calibrated (Yeom's own choice of a single threshold is the
target's mean training loss).
"""

from __future__ import annotations

import time
from typing import Literal

from torch import Tensor

from dlsec.attacks.privacy._common import PrivacyAttackError
from dlsec.attacks.privacy.membership._base import (
    MembershipResult,
    cross_entropy_from_probs,
    finish,
    prediction_entropy,
    query_probabilities,
    true_class_probability,
)
from dlsec.threat import Oracle

Signal = Literal["loss", "confidence", "entropy"]
SIGNALS: tuple[str, ...] = ("loss", "confidence", "entropy")


def threshold_attack(oracle: Oracle, x: Tensor, y: Tensor, *, signal: Signal = "loss",
                     is_member: Tensor | None = None) -> MembershipResult:
    """Score each record by one signal of the target's prediction (higher = member).

    ``loss``: ``-CE(p, y)``; ``confidence``: ``p_y``; ``entropy``: ``-H(p)``.
    """
    if signal not in SIGNALS:
        raise PrivacyAttackError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    t0 = time.perf_counter()
    before = oracle.queries_total
    probs = query_probabilities(oracle, x, attack=f"the {signal} attack")
    if signal == "loss":
        scores = -cross_entropy_from_probs(probs, y)
    elif signal == "confidence":
        scores = true_class_probability(probs.double(), y)
    else:
        scores = -prediction_entropy(probs)
    return finish(signal, scores, is_member, queries=oracle.queries_total - before, t0=t0)


def loss_attack(oracle: Oracle, x: Tensor, y: Tensor, *, is_member: Tensor | None = None
                ) -> MembershipResult:
    """Yeom et al.'s loss-threshold attack (see :func:`threshold_attack`)."""
    return threshold_attack(oracle, x, y, signal="loss", is_member=is_member)

