"""Sanity checks of a robustness evaluation: the known signs of gradient masking.

A gradient attack that fails tells you about the model only when its gradients are
informative. Following AutoAttack's checks (Croce & Hein 2020) and Carlini et al. 2019
("On Evaluating Adversarial Robustness"), each check returns human-readable warnings
(empty when all is well); :func:`dlsec.scenarios.whitebox.evaluate_robustness` puts them
in its report. Each warning starts with a short code in brackets so tools can match it:

- ``[probabilities]`` the model returns probabilities (rows in [0, 1] summing to 1), not
  logits: the softmax saturates and cross-entropy gradients vanish.
- ``[random]`` two forward passes on the same input differ: a randomized model needs
  expectation over transformation, not a plain gradient attack.
- ``[gradients]`` the input gradient is zero or not finite on many points (a
  non-differentiable or saturated input stage, e.g. quantization).
- ``[curve]`` robust accuracy does not fall as epsilon grows.
- ``[large-eps]`` a large epsilon (half the input range in every coordinate) does not
  bring accuracy to about 0%: the attack, not the model, is failing.
- ``[weaker-attack]`` a weaker attack (FGSM, PGD) fools points the stronger ones missed.
- ``[black-box]`` a black-box stage fools points the white-box stages missed.

The checks are meant to cost little next to the evaluation they check (AutoAttack's cost
it a few forward passes): the ensemble runs them on a few points, hands
:func:`model_checks` the clean logits it computed anyway, and runs the large-epsilon
attack only on the check points its own stages left robust (a point fooled inside a
smaller ball is fooled inside the large one).

Example:
    >>> warnings = model_checks(model, x, y)                               # doctest: +SKIP
    >>> warnings += large_eps_check(model, x, y, norm="linf", bounds=(0, 1))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from dlsec.attacks.core import Norm, input_gradient, margin_loss, module_mode
from dlsec.attacks.evasion import FGSM, PGD


def _forward(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def check_probabilities(logits: Tensor, *, tol: float = 1e-4) -> list[str]:
    """Warn when every output row lies in [0, 1] and sums to 1 (within ``tol``)."""
    if logits.numel() == 0:
        return []
    in_range = bool((logits.min() >= -tol) & (logits.max() <= 1 + tol))
    sums_to_one = bool(((logits.sum(1) - 1).abs() <= tol).all())
    if in_range and sums_to_one:
        return [
            "[probabilities] the model's outputs are probabilities (each row in [0, 1], "
            "summing to 1), not logits; gradient attacks on them underestimate the risk. "
            "Evaluate the model without its final softmax."
        ]
    return []


def check_deterministic(
    model: nn.Module, x: Tensor, *, tol: float = 1e-4, reference: Tensor | None = None
) -> list[str]:
    """Warn when two forward passes on the same inputs differ by more than ``tol``
    relative to the outputs' norm (a randomized model). ``reference``: the outputs of an
    earlier pass on ``x``, if at hand (then this costs one pass); it may come from
    another batch shape, whose rounding differs far below ``tol``."""
    a = _forward(model, x) if reference is None else reference.to(x.device)
    b = _forward(model, x)
    scale = a.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-10)
    diff = float(((a - b) / scale).flatten(1).norm(dim=1).max()) if a.numel() else 0.0
    if not diff <= tol:  # NaN differs too
        return [
            f"[random] two forward passes on the same inputs differ (relative difference "
            f"{diff:.2g}): the model is randomized, so a plain gradient attack is not a "
            "reliable test; use expectation over transformation."
        ]
    return []


def check_gradients(
    model: nn.Module, x: Tensor, y: Tensor, *, max_fraction: float = 0.01
) -> list[str]:
    """Warn when the input gradient of the logit margin is zero or not finite on more
    than ``max_fraction`` of the points (the margin, unlike cross-entropy, does not
    underflow on confident points, so a zero gradient means the model hides it)."""
    if x.shape[0] == 0:
        return []
    _, grad, logits = input_gradient(model, x, lambda z: margin_loss(z, y))
    flat = grad.flatten(1)
    bad = (flat.abs().sum(1) == 0) | ~torch.isfinite(flat).all(1) | ~torch.isfinite(logits).all(1)
    share = float(bad.double().mean())
    if share > max_fraction:
        return [
            f"[gradients] the input gradient is zero or not finite on {int(bad.sum())} of "
            f"{x.shape[0]} points ({share:.0%}): gradient attacks cannot work there "
            "(a non-differentiable or saturating input stage?); their robust accuracy is "
            "an upper bound only."
        ]
    return []


def model_checks(
    model: nn.Module, x: Tensor, y: Tensor, *, logits: Tensor | None = None
) -> list[str]:
    """The checks that need only the model: probabilities, randomness, gradients.

    ``logits``: the model's outputs on ``x`` if already computed (e.g. the evaluation's
    clean pass); the checks then cost one forward pass and one gradient on ``x``.
    """
    with module_mode(model, training=False):
        first = _forward(model, x) if logits is None else logits
        out = check_probabilities(first)
        out += check_deterministic(model, x, reference=first)
        return out + check_gradients(model, x, y)


def check_curve(
    eps: Sequence[float], robust_accuracy: Sequence[float], *, tol: float = 1e-9
) -> list[str]:
    """Warn when robust accuracy rises with epsilon, or does not fall at all over a sweep
    whose largest epsilon is at least twice its smallest (and accuracy is above 5%)."""
    pairs = sorted(zip(eps, robust_accuracy, strict=True))
    if len(pairs) < 2:
        return []
    out = []
    rises = [(*p, *q) for p, q in itertools.pairwise(pairs) if q[1] > p[1] + tol]
    if rises:
        e0, a0, e1, a1 = rises[0]
        out.append(
            f"[curve] robust accuracy rises with epsilon ({a0:.1%} at eps {e0:g}, "
            f"{a1:.1%} at eps {e1:g}): the attack is unreliable."
        )
    (e_lo, a_lo), (e_hi, a_hi) = pairs[0], pairs[-1]
    if not rises and e_lo > 0 and e_hi >= 2 * e_lo and a_lo > 0.05 and a_hi >= a_lo - tol:
        out.append(
            f"[curve] robust accuracy does not fall as epsilon grows ({a_lo:.1%} at eps "
            f"{e_lo:g}, {a_hi:.1%} at eps {e_hi:g}): a sign of gradient masking."
        )
    return out


def large_eps(norm: str, bounds: tuple[float, float], shape: Sequence[int]) -> float:
    """An epsilon that should fool any model: half the input range in every coordinate
    (Linf), or the L2 length of that perturbation."""
    half = 0.5 * (bounds[1] - bounds[0])
    return half if norm == "linf" else half * math.sqrt(math.prod(shape))


def large_eps_check(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: str, bounds: tuple[float, float],
    max_accuracy: float = 0.05, steps: int = 20, known_fooled: Tensor | None = None,
) -> list[str]:
    """Run a small PGD (``steps`` steps on the logit margin, from the clean point, each
    point dropped once fooled) at :func:`large_eps`; warn when accuracy stays above
    ``max_accuracy``. ``known_fooled``: points already misclassified or fooled inside a
    ball no larger than that (so inside it too); only the others are attacked."""
    if x.shape[0] == 0:
        return []
    eps = large_eps(norm, bounds, x.shape[1:])
    todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    if known_fooled is not None:
        todo &= ~known_fooled.to(x.device)
    robust = 0
    if bool(todo.any()):
        attack = PGD(norm=cast(Norm, norm), steps=steps, random_start=False, loss="margin")
        robust = int((~attack(model, x[todo], y[todo], eps=eps, bounds=bounds).success[0]).sum())
    acc = robust / x.shape[0]
    if acc > max_accuracy:
        return [
            f"[large-eps] at a large epsilon ({eps:g}, half the input range per coordinate) "
            f"a {steps}-step PGD leaves {acc:.1%} accuracy (expected about 0%): the attacks "
            "fail for a reason other than robustness (gradient masking?)."
        ]
    return []


def weaker_attack_check(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str,
    bounds: tuple[float, float], generator: torch.Generator | None = None,
    stronger: str = "the ensemble",
) -> list[str]:
    """Run FGSM and a 10-step PGD on points a stronger attack left robust at ``eps``;
    warn when either fools any of them."""
    if x.shape[0] == 0 or eps <= 0:
        return []
    out = []
    weak = {"FGSM": FGSM(norm=cast(Norm, norm)), "PGD-10": PGD(norm=cast(Norm, norm), steps=10)}
    for label, attack in weak.items():
        res = attack(model, x, y, eps=eps, bounds=bounds, generator=generator)
        fooled = int(res.success[0].sum())
        if fooled:
            out.append(
                f"[weaker-attack] at eps {eps:g}, {label} fooled {fooled} of {x.shape[0]} "
                f"points that {stronger} did not: the stronger attacks are being misled "
                "(gradient masking?); treat the robust accuracy as an upper bound."
            )
    return out
