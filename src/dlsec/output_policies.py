"""Output policies: what a client receives for the class probabilities of its query.

One implementation for the :class:`dlsec.threat.BaseOracle` output kinds (what an attack
sees in a simulation) and for the model server (what a key is allowed to see), so a
simulated black-box attack and a served model degrade their answers identically.

Kinds (:data:`POLICY_KINDS`) and their spec strings (:meth:`OutputPolicy.parse`):

* ``scores``: the probabilities unchanged;
* ``topk:K``: the ``K`` largest probabilities kept in place, the others 0 (not renormalised);
* ``rounded:D``: every probability rounded to ``D`` decimals (not renormalised);
* ``topk-rounded:K,D``: ``topk:K``, then the kept probabilities rounded to ``D`` decimals
  (``topk-rounded:1,2``: the top class and its confidence to two decimals);
* ``label``: the predicted class only (an int64 tensor of shape ``(n,)``);
* ``noise:SIGMA``: Gaussian noise ``N(0, SIGMA^2)`` added to every score, clipped to
  ``[0, 1]`` and renormalised to sum to 1; the top-1 label is NOT preserved (a large
  ``SIGMA`` changes it);
* ``reverse-sigmoid:BETA,GAMMA``: the deceptive perturbation of Lee et al. (2019), top-1
  label preserved (see :meth:`OutputPolicy.apply`).

Notes:
    None of these hides the label, and only ``label`` hides the scores' ranking. Fresh
    ``noise`` per answer averages out: a client that sends the same input ``m`` times
    recovers the scores to about ``SIGMA / sqrt(m)``, so the server pairs it with rate
    limits and query logs. ``reverse-sigmoid`` is deterministic, so repeating a query
    gains nothing, but it keeps the top-1 label, which label-only extraction needs.

Example:
    >>> p = OutputPolicy.parse("topk:2")
    >>> p.apply(torch.tensor([[0.5, 0.3, 0.2]])).tolist()
    [[0.5, 0.30000001192092896, 0.0]]
    >>> OutputPolicy.parse(p.spec()) == p
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dlsec.errors import DlsecError

POLICY_KINDS: tuple[str, ...] = ("scores", "topk", "rounded", "topk-rounded", "label", "noise",
                                  "reverse-sigmoid")

SPEC_FORMS = ("scores, topk:K, rounded:DECIMALS, topk-rounded:K,DECIMALS, label, noise:SIGMA, "
              "reverse-sigmoid:BETA,GAMMA")

# probabilities are clamped away from 0 and 1 before the logit of the reverse sigmoid
_EPS = 1e-7


class PolicyError(DlsecError):
    """An output policy that cannot be built (unknown kind, bad parameter)."""


@dataclass(frozen=True)
class OutputPolicy:
    """How class probabilities are degraded before a client sees them.

    ``kind`` is one of :data:`POLICY_KINDS`; ``k`` is used by ``topk`` (>= 1),
    ``decimals`` by ``rounded`` (>= 0), ``sigma`` by ``noise`` (> 0), ``beta`` and
    ``gamma`` by ``reverse-sigmoid`` (``beta`` in ``(0, 1]``, ``gamma`` > 0; the defaults
    0.7 and 0.4 are ours, not the paper's). Parameters a kind does not use are
    ignored by :meth:`apply` and :meth:`spec`; two policies that differ only in them are
    still unequal as dataclasses, so compare ``spec()`` strings for "same behaviour".
    A bad value is a :class:`PolicyError` naming it.

    Example:
        >>> OutputPolicy.parse("reverse-sigmoid:0.5,0.2").spec()
        'reverse-sigmoid:0.5,0.2'
    """

    kind: str = "scores"
    k: int = 1
    decimals: int = 2
    sigma: float = 0.0
    beta: float = 0.7
    gamma: float = 0.4

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise PolicyError(f"unknown output policy {self.kind!r} (valid forms: {SPEC_FORMS})")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise PolicyError(f"topk needs an integer k >= 1, got {self.k!r}")
        if isinstance(self.decimals, bool) or not isinstance(self.decimals, int) or self.decimals < 0:
            raise PolicyError(f"rounded needs an integer number of decimals >= 0, got {self.decimals!r}")
        for name in ("sigma", "beta", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PolicyError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.sigma < 0 or (self.kind == "noise" and self.sigma <= 0):
            raise PolicyError(f"noise needs sigma > 0, got {self.sigma}")
        if not 0 < self.beta <= 1:
            raise PolicyError(f"reverse-sigmoid needs 0 < beta <= 1, got {self.beta}")
        if self.gamma <= 0:
            raise PolicyError(f"reverse-sigmoid needs gamma > 0, got {self.gamma}")

    # -- spec strings ---------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: str) -> OutputPolicy:
        """A policy from its spec string (``topk:3``, ``noise:0.05``, ...); the inverse of
        :meth:`spec`. A malformed spec is a one-line :class:`PolicyError` listing the
        valid forms."""
        kind, sep, arg = str(spec).strip().partition(":")
        kind = kind.strip().lower()
        bad = PolicyError(f"bad output policy {spec!r} (valid forms: {SPEC_FORMS})")
        if kind not in POLICY_KINDS:
            raise bad
        if kind in ("scores", "label"):
            if sep:
                raise bad
            return cls(kind=kind)
        if not arg.strip():
            raise bad
        try:
            if kind == "topk":
                return cls(kind=kind, k=int(arg))
            if kind == "rounded":
                return cls(kind=kind, decimals=int(arg))
            if kind == "noise":
                return cls(kind=kind, sigma=float(arg))
            parts = arg.split(",")
            if len(parts) != 2:
                raise bad
            if kind == "topk-rounded":
                return cls(kind=kind, k=int(parts[0]), decimals=int(parts[1]))
            return cls(kind=kind, beta=float(parts[0]), gamma=float(parts[1]))
        except ValueError:
            raise bad from None

    def spec(self) -> str:
        """The spec string; ``OutputPolicy.parse(p.spec())`` behaves as ``p`` (and equals
        it when the unused parameters are the defaults)."""
        if self.kind == "topk":
            return f"topk:{self.k}"
        if self.kind == "rounded":
            return f"rounded:{self.decimals}"
        if self.kind == "topk-rounded":
            return f"topk-rounded:{self.k},{self.decimals}"
        if self.kind == "noise":
            return f"noise:{self.sigma!r}"
        if self.kind == "reverse-sigmoid":
            return f"reverse-sigmoid:{self.beta!r},{self.gamma!r}"
        return self.kind

    # -- applying -------------------------------------------------------------------------
    @property
    def returns_labels(self) -> bool:
        """Whether :meth:`apply` returns labels (``(n,)`` int64) rather than scores."""
        return self.kind == "label"

    def apply(self, probs: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """What the client receives for class probabilities ``probs`` of shape ``(n, C)``:
        ``label`` gives an int64 ``(n,)`` tensor, every other kind a float ``(n, C)``
        tensor of ``probs``' dtype and device.

        ``noise`` draws its noise from ``generator`` (on the generator's device, then moved
        to ``probs``' device, so a seed gives the same answer on any device); without one it
        uses torch's global generator. A row whose every noisy score clips to 0 becomes
        uniform. Every other kind is deterministic.

        ``reverse-sigmoid`` follows Lee et al., "Defending Against NN Model Stealing Attacks
        Using Deceptive Perturbations" (IEEE S&P Workshops 2019), equations (3) and (4):
        ``r = beta * (sigmoid(gamma * logit(y)) - 1/2)`` and ``y' = alpha * (y - r)``, the
        perturbation subtracted from the probabilities ``y`` (clamped to
        ``[1e-7, 1 - 1e-7]`` for the logit), clipped to ``[0, 1]`` and renormalised by
        ``alpha`` to sum to 1.

        Notes:
            The paper presents the perturbation as keeping the top-1 label. The formula
            alone does so when ``beta * gamma <= 1`` and ``gamma >= 1`` (then
            ``y - r`` is increasing in ``y``), but for ``gamma < 1`` it is not monotone near
            0 and can lift a near-zero class above the top class of a flat distribution.
            So, after the formula, a row whose argmax moved has the values of its original
            top class and its new top class swapped: the label is always kept (up to exact
            ties), the set of values sent is the formula's, and the scores still differ
            from the model's. ``tests/test_output_policies.py`` measures both.
        """
        if probs.dim() != 2:
            raise PolicyError(f"output policies take probabilities of shape (n, C), got {tuple(probs.shape)}")
        if self.kind == "label":
            return probs.argmax(1)
        if self.kind == "topk":
            k = min(self.k, probs.shape[1])
            top = probs.topk(k, dim=1)
            return torch.zeros_like(probs).scatter_(1, top.indices, top.values)
        if self.kind in ("rounded", "topk-rounded"):
            if self.kind == "topk-rounded":
                probs = OutputPolicy(kind="topk", k=self.k).apply(probs)
            scale = 10.0**self.decimals
            return torch.round(probs * scale) / scale
        if self.kind == "noise":
            return self._noise(probs, generator)
        if self.kind == "reverse-sigmoid":
            return self._reverse_sigmoid(probs)
        return probs

    def _noise(self, probs: Tensor, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else probs.device
        noise = torch.randn(probs.shape, generator=generator, device=device, dtype=torch.float64)
        noisy = (probs.double() + self.sigma * noise.to(probs.device)).clamp(0.0, 1.0)
        total = noisy.sum(1, keepdim=True)
        uniform = torch.full_like(noisy, 1.0 / max(1, probs.shape[1]))
        out = torch.where(total > 0, noisy / total.clamp_min(1e-300), uniform)
        return out.to(probs.dtype)

    def _reverse_sigmoid(self, probs: Tensor) -> Tensor:
        y = probs.double()
        clamped = y.clamp(_EPS, 1 - _EPS)
        r = self.beta * (torch.sigmoid(self.gamma * torch.logit(clamped)) - 0.5)
        perturbed = (y - r).clamp(0.0, 1.0)
        total = perturbed.sum(1, keepdim=True)
        out = torch.where(total > 0, perturbed / total.clamp_min(1e-300), y)
        if out.shape[0] and out.shape[1]:
            was = y.argmax(1, keepdim=True)
            now = out.argmax(1, keepdim=True)
            at_was = out.gather(1, was)
            at_now = out.gather(1, now)
            out = out.scatter(1, was, at_now).scatter(1, now, at_was)
        return out.to(probs.dtype)


__all__ = ["POLICY_KINDS", "SPEC_FORMS", "OutputPolicy", "PolicyError"]
