"""The one-run empirical privacy audit of a training run (Steinke, Nasr, Jagielski 2023):
canaries planted in one real training run, scored, turned into an epsilon lower bound.

:func:`one_run_audit` trains ``architecture`` once on ``dataset`` (DP-SGD at ``epsilon``,
or the undefended model when ``epsilon`` is None) with ``m`` canaries of each asked kind,
each included with probability 1/2, and bounds epsilon from each kind's guesses
(:mod:`dlsec.attacks.privacy.one_run`). Input-space canaries are black-box (the final
model's loss on them), gradient canaries white-box (every privatised gradient); see
:mod:`dlsec.defenses.dp.canaries`. Every audit is valid alone at ``confidence``: a DP run's
bound above the accountant's epsilon (beyond the confidence's share of runs) is a bug in
the training, the sampler or the accountant.

The undefended model (``epsilon=None``) trains through plain :func:`dlsec.training.fit`
with the input canaries; gradient canaries need Opacus's optimizer, so they run in a second
training with clipping and noise multiplier 0 (epsilon infinite), labelled so in
``details["gradient_run"]``.

Seeds come from ``config.seed`` through named streams: ``dp-audit/input-canaries``,
``dp-audit/gradient-canaries``, ``dp-audit/gradient-sampling``.

Example:
    >>> res = one_run_audit(load_dataset("digits"), "simplenet",
    ...                     TrainConfig(epochs=15, lr=0.05), epsilon=3.0)   # doctest: +SKIP
    >>> res.audits["gradient"].epsilon_lower_bound <= res.epsilon_accountant  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dlsec.attacks.privacy.one_run import OneRunAudit, audit_from_scores
from dlsec.data import Dataset
from dlsec.defenses.dp import (
    Canaries,
    CanaryError,
    dp_train,
    gradient_canaries,
    input_canaries,
    train_with_input_canaries,
)
from dlsec.defenses.dp.canaries import check_count, default_guesses, input_canary_scores
from dlsec.scenarios.context import stream_seed
from dlsec.training import TrainConfig

CANARY_KINDS = ("input", "gradient")


@dataclass
class OneRunResult:
    """One audited run: the model and card (the DP model, or the undefended one), its test
    accuracy, the accountant's PRV epsilon (None: undefended), an audit per canary kind and
    JSON-ready details (m, k, correct guesses, seconds, which run each kind came from)."""

    model: nn.Module
    card: Any
    test_accuracy: float
    epsilon_accountant: float | None
    audits: dict[str, OneRunAudit] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def _check(canaries: tuple[str, ...], m: int, k: int | None, confidence: float,
           delta: float) -> int:
    kinds = tuple(canaries)
    if not kinds:
        raise CanaryError("no canary kind asked (choose from input, gradient)")
    bad = [c for c in kinds if c not in CANARY_KINDS]
    if bad:
        raise CanaryError(f"unknown canary kind {bad[0]!r} (choose from {', '.join(CANARY_KINDS)})")
    check_count(m)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= m):
        raise CanaryError(f"k = {k!r} guesses: must be an integer in 2..m (m = {m})")
    if not 0.0 < confidence < 1.0:
        raise CanaryError(f"confidence must be in (0, 1), got {confidence:g}")
    if not 0.0 < delta < 1.0:
        raise CanaryError(f"delta must be in (0, 1), got {delta:g}")
    return m


def _audit(scores: torch.Tensor, included: torch.Tensor, k: int, *, delta: float,
           confidence: float) -> OneRunAudit:
    k_plus = (k + 1) // 2
    return audit_from_scores(scores, included.cpu(), k_plus=k_plus, k_minus=k - k_plus,
                             delta=delta, confidence=confidence)


def one_run_audit(dataset: Dataset, architecture: str, config: TrainConfig, *,
                  epsilon: float | None, canaries: tuple[str, ...] = CANARY_KINDS,
                  m: int = 1000, k: int | None = None, confidence: float = 0.95,
                  delta: float = 1e-5, progress: bool = True, input_kind: str = "noise",
                  **dp_settings: Any) -> OneRunResult:
    """Train once with ``m`` canaries of each kind in ``canaries`` and bound epsilon.

    ``epsilon``: the DP target (PRV accountant, ``delta``); None audits the undefended
    model. ``k``: guesses per kind (half "in" for the highest scores, half "out" for the
    lowest), fixed before training; default a tenth of ``m`` for input canaries and a fifth
    for gradient canaries. ``dp_settings`` go to :func:`dlsec.defenses.dp.dp_train`
    (``max_grad_norm``, ``accountant``, ``grad_sample_mode``, ``fix``). Bad settings raise
    a :class:`dlsec.defenses.dp.CanaryError` (or ``DPError``) before any training.
    """
    kinds = tuple(canaries)
    _check(kinds, m, k, confidence, delta)
    t0 = time.perf_counter()
    seed = config.seed
    planted_in = (input_canaries(dataset, m, kind=input_kind, val_fraction=config.val_fraction,
                                 seed=seed,
                                 generator=torch.Generator().manual_seed(
                                     stream_seed(seed, "dp-audit/input-canaries")))
                  if "input" in kinds else None)
    planted_grad = None
    if "gradient" in kinds:
        from dlsec.models import ModelCard, build_model

        card = ModelCard(architecture=architecture, input_shape=list(dataset.input_shape),
                         classes=list(dataset.classes), bounds=(float(dataset.bounds[0]), float(dataset.bounds[1])))
        shape_model = build_model(card, factory=architecture)
        planted_grad = gradient_canaries(
            shape_model, m, sampling_seed=stream_seed(seed, "dp-audit/gradient-sampling"),
            generator=torch.Generator().manual_seed(stream_seed(seed, "dp-audit/gradient-canaries")))
    guesses = {kind: k if k is not None else default_guesses(m, kind) for kind in kinds}
    details: dict[str, Any] = {"m": m, "k": guesses, "confidence": confidence, "delta": delta,
                               "epsilon_target": epsilon, "input_kind": input_kind}
    scores: dict[str, torch.Tensor] = {}
    if epsilon is None:
        details["gradient_run"] = "clipped, noise multiplier 0 (epsilon = infinity)"
        model = card_out = None
        accuracy = math.nan
        if planted_in is not None:
            model, card_out, _ = train_with_input_canaries(dataset, architecture, config,
                                                          planted_in, progress=progress)
            scores["input"] = input_canary_scores(model, planted_in)
            accuracy = float(card_out.metrics["test_accuracy"])
        if planted_grad is not None:
            res = dp_train(dataset, architecture, config, noise_multiplier=0.0, delta=delta,
                           canaries=Canaries(gradient=planted_grad), progress=progress,
                           **dp_settings)
            scores["gradient"] = res.canary_scores["gradient"]
            details["gradient_run_test_accuracy"] = float(res.card.metrics["test_accuracy"])
            if model is None:
                model, card_out = res.model, res.card
                accuracy = float(res.card.metrics["test_accuracy"])
        epsilon_accountant = None
    else:
        res = dp_train(dataset, architecture, config, epsilon=epsilon, delta=delta,
                       canaries=Canaries(input=planted_in, gradient=planted_grad),
                       progress=progress, **dp_settings)
        model, card_out, scores = res.model, res.card, res.canary_scores
        accuracy = float(res.card.metrics["test_accuracy"])
        epsilon_accountant = float(res.card.training["dp"]["epsilon_prv"])
        details["sample_rate"] = float(res.card.training["dp"]["sample_rate"])
        details["noise_multiplier"] = float(res.card.training["dp"]["noise_multiplier"])
    planted = {"input": planted_in, "gradient": planted_grad}
    audits = {}
    for kind in kinds:
        p = planted[kind]
        assert p is not None
        audits[kind] = _audit(scores[kind], p.included, guesses[kind], delta=delta,
                              confidence=confidence)
    details["seconds"] = round(time.perf_counter() - t0, 2)
    assert model is not None
    return OneRunResult(model=model, card=card_out, test_accuracy=accuracy,
                        epsilon_accountant=epsilon_accountant, audits=audits, details=details)


__all__ = ["CANARY_KINDS", "OneRunResult", "one_run_audit"]
