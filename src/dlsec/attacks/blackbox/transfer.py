"""Transfer attacks: craft adversarials on a surrogate the attacker trained, send them to the
target through the :class:`dlsec.threat.Oracle` once each.

Papernot, McDaniel, Goodfellow, Jha, Celik & Swami, "Practical Black-Box Attacks against
Machine Learning" (AsiaCCS 2017): adversarials crafted on a substitute model fool the
target too. How the surrogate is obtained is the *strategy* (each one a threat model):

* ``"jacobian"`` (black-box, labels only): Papernot et al.'s substitute training. A seed
  set of ``seed_size`` records drawn from ``x_attacker`` is labelled by the oracle; each
  round trains on the set and doubles it with ``x + lam * sign(d z_label / dx)`` (the
  sign flipped every ``tau`` rounds), labelled by the oracle, until ``budget`` labels are
  spent (with the defaults: 150 -> 300 -> ... -> 4,800, then a random 1,600 of the next
  4,800). The oracle is seen through a label-only view; :func:`~dlsec.attacks.surrogate.extract`.
* ``"knockoff"`` (black-box): Orekondy, Schiele & Fritz, "Knockoff Nets" (CVPR 2019): the
  surrogate learns the oracle's answers (probabilities when it gives them, labels
  otherwise) on ``budget`` out-of-distribution natural images (random patches of two
  photographs, :func:`~dlsec.attacks.surrogate.natural_image_patches`, or the
  attacker's own ``x_pool``).
* ``"graybox"`` (gray-box): the attacker holds labelled data of the same distribution
  (``x_attacker``, ``y_attacker``, e.g. a split disjoint from the target's training set)
  and trains its own surrogate with :func:`dlsec.training.fit`. No oracle query.

The surrogate's architecture is the card's (the attacker's guess), or ``architecture``.

Crafting (:func:`transfer_attack`): each white-box attack crafts one adversarial per point
on the surrogate (its own cross-entropy, the oracle's bounds), sent to the target once; nothing
else touches the target.

**Full steps on the surrogate.** dlsec's white-box attacks keep, for each point, the first
iterate that fools the model they attack and stop there. That is the right answer for a
white-box evaluation, but an adversarial just across the *surrogate's* decision boundary
rarely transfers (measured on digits, Jacobian surrogate, eps 0.2: 59% transfer for PGD
stopped at the surrogate's boundary, 95% with all its steps). With ``full_steps`` (the
default) the crafting attacks are built with ``last_iterate=True``: every point takes
every step and the final iterate is sent (20 steps gave the same transfer rates on digits).

Example:
    >>> oracle = LocalOracle(target, card=card, output="label", budget=7_000)   # doctest: +SKIP
    >>> sur = train_surrogate("jacobian", oracle, card=card, x_attacker=x_att,
    ...                       generator=torch.Generator().manual_seed(0))        # doctest: +SKIP
    >>> res = transfer_attack(oracle, sur, x, y, eps=0.2)                       # doctest: +SKIP
    >>> res.success_rate, res.queries_total                                     # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import Tensor, nn

from dlsec.attacks.blackbox._base import BlackBoxResult, _affordable, _check_oracle, _result, median
from dlsec.attacks.core import AttackError
from dlsec.attacks.evasion._base import EvasionAttack
from dlsec.attacks.registry import attack_kind, make_attack
from dlsec.attacks.surrogate import SURROGATE_STRATEGIES, Surrogate, train_surrogate
from dlsec.threat import Oracle
from dlsec.training import predict_logits

DEFAULT_ATTACKS: tuple[str, ...] = ("pgd", "mifgsm", "difgsm")


# -- crafting and sending ----------------------------------------------------------------------
@dataclass
class TransferResult:
    """Transfer of adversarials crafted on one surrogate, per crafting attack.

    ``results[name]``: the target's verdicts as a :class:`BlackBoxResult` (``queries``: 1
    per point sent, 0 for a point the oracle's budget could not pay for);
    ``surrogate_success[name]``: whether the adversarial fools the surrogate itself;
    ``surrogate_queries``: the oracle queries spent training the surrogate.
    """

    strategy: str
    eps: float
    norm: str
    results: dict[str, BlackBoxResult]
    surrogate_success: dict[str, Tensor]
    surrogate_queries: int
    surrogate_seconds: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> dict[str, float]:
        return {name: r.success_rate for name, r in self.results.items()}

    @property
    def best_success_rate(self) -> float:
        return max(self.success_rate.values(), default=0.0)

    @property
    def queries_sent(self) -> int:
        return sum(r.queries_total for r in self.results.values())

    @property
    def queries_total(self) -> int:
        """Training plus sending: everything this attack cost the oracle."""
        return self.surrogate_queries + self.queries_sent

    def summary(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "eps": self.eps,
            "norm": self.norm,
            "success_rate": self.success_rate,
            "best_success_rate": self.best_success_rate,
            "surrogate_success_rate": {
                k: float(v.double().mean()) if v.numel() else 0.0
                for k, v in self.surrogate_success.items()
            },
            "queries_training": self.surrogate_queries,
            "queries_sending": self.queries_sent,
            "queries_total": self.queries_total,
            "median_linf": {k: median(r.linf) for k, r in self.results.items()},
            "median_l2": {k: median(r.l2) for k, r in self.results.items()},
            "seconds_training": round(self.surrogate_seconds, 3),
            "seconds_crafting": round(self.seconds, 3),
        }


def _crafting_attack(name: str, norm: str, steps: int, full_steps: bool,
                     options: Mapping[str, Any]) -> EvasionAttack:
    if attack_kind(name) != "white-box":
        raise AttackError(f"{name} is a black-box attack; transfer crafting needs a white-box one")
    kwargs = {"norm": norm, **options}
    if full_steps and "last_iterate" in inspect.signature(type(make_attack(name))).parameters:
        kwargs.setdefault("last_iterate", True)
    attack = make_attack(name, **kwargs)
    if "steps" not in options and "steps" in inspect.signature(type(attack)).parameters:
        attack = make_attack(name, steps=steps, **kwargs)
    if not isinstance(attack, EvasionAttack) or attack.minimal:
        raise AttackError(f"{name} is a minimum-norm attack; transfer crafting needs an "
                          "eps-bounded one (fgsm, bim, pgd, mifgsm, difgsm, apgd)")
    return attack


@overload
def transfer_attack(oracle: Oracle, surrogate: Surrogate | nn.Module, x: Tensor, y: Tensor, *,
                    eps: float, norm: str = ..., attacks: Sequence[str] = ...,
                    steps: int = ..., ids: Tensor | None = ...,
                    generator: torch.Generator | None = ..., full_steps: bool = ...,
                    attack_options: Mapping[str, Mapping[str, Any]] | None = ...,
                    batch_size: int = ...) -> TransferResult: ...


@overload
def transfer_attack(oracle: Oracle, surrogate: Surrogate | nn.Module, x: Tensor, y: Tensor, *,
                    eps: Sequence[float], norm: str = ..., attacks: Sequence[str] = ...,
                    steps: int = ..., ids: Tensor | None = ...,
                    generator: torch.Generator | None = ..., full_steps: bool = ...,
                    attack_options: Mapping[str, Mapping[str, Any]] | None = ...,
                    batch_size: int = ...) -> list[TransferResult]: ...


def transfer_attack(oracle: Oracle, surrogate: Surrogate | nn.Module, x: Tensor, y: Tensor, *,
                    eps: float | Sequence[float], norm: str = "linf",
                    attacks: Sequence[str] = DEFAULT_ATTACKS, steps: int = 10,
                    ids: Tensor | None = None, generator: torch.Generator | None = None,
                    full_steps: bool = True,
                    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
                    batch_size: int = 1024) -> TransferResult | list[TransferResult]:
    """Craft on ``surrogate`` with each of ``attacks``, send each adversarial to ``oracle`` once.

    Args:
        oracle: the target (any output kind: only labels are used).
        surrogate: a :class:`Surrogate` (its training queries are added to the cost) or a
            plain module.
        x, y: the points and their true labels (pass points the target gets right).
        eps: the radius in ``norm`` (``"linf"`` or ``"l2"``), in input units; a list
            crafts every radius in one call per attack and returns one result per eps.
        attacks: registered white-box attack names (default ``pgd``, ``mifgsm``,
            ``difgsm``); ``steps`` (default 10) goes to those that take steps.
        ids: per-point sample ids for the oracle's per-sample counts (default ``0..N-1``).
        generator: the attacks' randomness (PGD's random start, DI's transforms); seed 0.
        full_steps: craft with all the attack's steps and send the last iterate (see the
            module) instead of stopping at the first iterate that fools the surrogate.
        attack_options: extra constructor options per attack name.
        batch_size: points crafted together.
    """
    one = isinstance(eps, int | float)
    eps_list = [eps] if isinstance(eps, int | float) else list(eps)
    if not eps_list or any(isinstance(e, bool) or not isinstance(e, int | float)
                           or not math.isfinite(e) or e < 0 for e in eps_list):
        raise AttackError(f"eps must be finite numbers >= 0, got {eps!r}")
    if norm not in ("linf", "l2"):
        raise AttackError(f"norm must be linf or l2, got {norm!r}")
    names = list(attacks)
    if not names or len(set(names)) != len(names):
        raise AttackError(f"attacks must be distinct names, at least one, got {names}")
    if steps < 1 or batch_size < 1:
        raise AttackError("steps and batch_size must be >= 1")
    ids = _check_oracle(oracle, x, y, ids, scores=False)
    options = attack_options or {}
    crafters = {name: _crafting_attack(name, norm, steps, full_steps, options.get(name, {}))
                for name in names}
    if isinstance(surrogate, Surrogate):
        model, strategy = surrogate.model, surrogate.strategy
        train_q, train_s = surrogate.queries, surrogate.seconds
    else:
        model, strategy, train_q, train_s = surrogate, "given", 0, 0.0
    t0 = time.perf_counter()
    g = generator or torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    was_training = model.training
    model.eval()
    results: list[dict[str, BlackBoxResult]] = [{} for _ in eps_list]
    on_surrogate: list[dict[str, Tensor]] = [{} for _ in eps_list]
    try:
        for name, attack in crafters.items():
            res = attack(model, x, y, eps=[float(e) for e in eps_list], bounds=oracle.bounds,
                         generator=g, batch_size=batch_size, reuse=False)
            for k in range(len(eps_list)):
                x_adv = res.x_adv[k]
                on_surrogate[k][name] = predict_logits(model, x_adv).argmax(1) != y
                results[k][name] = _send(oracle, x, x_adv, y, ids)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    out = [TransferResult(strategy=strategy, eps=float(e), norm=norm, results=results[k],
                          surrogate_success=on_surrogate[k], surrogate_queries=train_q,
                          surrogate_seconds=train_s, seconds=seconds,
                          details={"steps": steps, "full_steps": full_steps})
           for k, e in enumerate(eps_list)]
    return out[0] if one else out


def _send(oracle: Oracle, x: Tensor, x_adv: Tensor, y: Tensor, ids: Tensor) -> BlackBoxResult:
    """Send each adversarial once (as far as the oracle's budget pays); the verdicts."""
    n, device = x.shape[0], x.device
    rows = _affordable(oracle, torch.arange(n, device=device))
    success = torch.zeros(n, dtype=torch.bool, device=device)
    queries = torch.zeros(n, dtype=torch.int64, device=device)
    if rows.numel():
        labels = oracle.query_labels(x_adv[rows], ids=ids[rows.cpu()])
        success[rows] = labels.to(device) != y[rows]
        queries[rows] = 1
    return _result(x, x_adv, success, queries)

__all__ = [
    "DEFAULT_ATTACKS",
    "SURROGATE_STRATEGIES",
    "Surrogate",
    "TransferResult",
    "train_surrogate",
    "transfer_attack",
]
