"""Malicious federated clients: what a compromised client sends instead of an honest update.

A seeded draw (:func:`choose_malicious`) picks which clients are malicious; each of them
runs one attack every round. ``g`` is the global model the client received, ``w`` the
weights after its local training (on its own data, or on flipped labels), and the client
sends:

- ``label-flip`` (Tolpegin et al. 2020): honest training on labels ``c -> C - 1 - c``.
- ``sign-flip`` (Li et al. 2019, Karimireddy et al. 2021): ``g - scale * (w - g)``, the
  update reversed and scaled (default scale 4, which turns FedAvg's average step round
  when 30% of clients do it).
- ``gaussian`` (Blanchard et al. 2017): ``g + N(0, scale^2)`` per weight, no training
  (default scale 1).
- ``scale`` (model replacement, Bagdasaryan et al. 2020): ``g + scale * (w - g)``, the
  update boosted (default: the number of clients, which replaces FedAvg's global model
  by the client's own).

  For ``scale`` the malicious clients train on a backdoored copy of their data
  (:func:`backdoor_data`: their records plus a copy of those not of the target class,
  with a trigger patch, labelled as the target), so the boosted update plants a backdoor.
- ``alie`` ("a little is enough", Baruch et al. 2019): ``g + mean - z * std`` of the
  honest updates, coordinate-wise, with ``z`` = :func:`alie_z_max` for ``n`` clients of
  which ``f`` malicious (the paper's formula) unless a scale is given.
- ``ipm`` (inner-product manipulation, Xie et al. 2020): ``g - epsilon * mean`` of the
  honest updates (default epsilon 0.1, the paper's small epsilon against Krum).

ALIE and IPM need the round's honest updates, which a client of a real federation never
sees. As in the papers' evaluations, the malicious clients collude and estimate them from
the honest updates they compute on their own partitions. Simulation shortcut: each
malicious client recomputes the honest updates of all its accomplices itself (their
partitions and seeds are in the plan, so every one of them sends the same weights).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor

from dlsec.errors import DlsecError

ATTACKS = ("label-flip", "sign-flip", "gaussian", "scale", "alie", "ipm")
# attacks that send something other than their honest update (label-flip trains on bad data)
DEFAULT_SCALE = {"sign-flip": 4.0, "gaussian": 1.0, "ipm": 0.1}
# attacks that send a statistic of the colluders' honest updates
COLLUDING = ("alie", "ipm")


class MaliciousClientError(DlsecError):
    """An unknown attack or a fraction of malicious clients outside [0, 1)."""


def check_attack(attack: str) -> str:
    if attack not in ATTACKS:
        raise MaliciousClientError(f"unknown attack {attack!r} (choose from {', '.join(ATTACKS)})")
    return attack


def default_scale(attack: str, clients: int, malicious: int = 0) -> float:
    """The attack's scale when none is given (``scale``: the number of clients; ``alie``:
    :func:`alie_z_max` of ``clients`` and ``malicious``)."""
    if attack == "scale":
        return float(clients)
    if attack == "alie":
        return alie_z_max(clients, malicious)
    return DEFAULT_SCALE.get(attack, 1.0)


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al. 2019's ``z_max`` for ``f`` malicious of ``n`` clients: with
    ``s = floor(n/2 + 1) - f`` honest clients the attackers need on their side,
    ``z_max = Phi^-1((n - s) / n)`` (the standard normal quantile). Example: n=10, f=3:
    s = 3, Phi^-1(0.7) = 0.5244."""
    if n < 2 or not 0 <= f < n:
        raise MaliciousClientError(f"ALIE needs 0 <= f < n and n >= 2, got f={f}, n={n}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if p >= 1.0:  # the attackers are a majority already: any z works, take the 99.9% quantile
        p = 0.999
    return NormalDist().inv_cdf(p) if p > 0 else 0.0


def _stack(updates: list[dict[str, Tensor]], name: str) -> Tensor:
    return torch.stack([u[name] for u in updates])


def alie_update(updates: list[dict[str, Tensor]], z: float) -> dict[str, Tensor]:
    """ALIE's update from honest ``updates`` (weight deltas): ``mean - z * std``,
    coordinate-wise (std: the sample standard deviation, 0 for one update)."""
    out = {}
    for name in updates[0]:
        u = _stack(updates, name)
        if not torch.is_floating_point(u):
            out[name] = u[0]
            continue
        std = u.std(dim=0) if len(updates) > 1 else torch.zeros_like(u[0])
        out[name] = u.mean(dim=0) - z * std
    return out


def ipm_update(updates: list[dict[str, Tensor]], epsilon: float) -> dict[str, Tensor]:
    """IPM's update from honest ``updates`` (weight deltas): ``-epsilon * mean``."""
    out = {}
    for name in updates[0]:
        u = _stack(updates, name)
        out[name] = -epsilon * u.mean(dim=0) if torch.is_floating_point(u) else u[0]
    return out


def colluding_update(attack: str, received: dict[str, Tensor],
                     honest: list[dict[str, Tensor]], *, scale: float) -> dict[str, Tensor]:
    """The weights the colluding clients send (``alie`` or ``ipm``), from the global
    weights they ``received`` and the weights of their ``honest`` local trainings."""
    deltas = [{k: w[k] - received[k] if torch.is_floating_point(w[k]) else w[k] for k in received}
              for w in honest]
    delta = alie_update(deltas, scale) if attack == "alie" else ipm_update(deltas, scale)
    return {k: received[k] + delta[k] if torch.is_floating_point(delta[k]) else delta[k]
            for k in received}


def add_trigger(x: Tensor, *, size: int, value: float) -> Tensor:
    """A copy of images ``x`` (N, C, H, W) with the bottom-right ``size`` x ``size``
    pixels of every channel set to ``value`` (the bound's max)."""
    if size < 1 or size > min(x.shape[-2:]):
        raise MaliciousClientError(f"trigger size must be in [1, {min(x.shape[-2:])}], got {size}")
    out = x.clone()
    out[..., -size:, -size:] = value
    return out


def backdoor_data(x: Tensor, y: Tensor, *, target: int, size: int,
                  value: float) -> tuple[Tensor, Tensor]:
    """A backdoored copy of a client's data: all of ``(x, y)`` plus the records not of
    class ``target`` with the trigger (:func:`add_trigger`), labelled ``target``."""
    keep = y != target
    xt = add_trigger(x[keep], size=size, value=value)
    return torch.cat([x, xt]), torch.cat([y, torch.full_like(y[keep], target)])


def trigger_size(shape: tuple[int, ...] | list[int]) -> int:
    """The default trigger's side: a tenth of the image's smaller side, at least 2 px
    (2 on 8x8 digits and 28x28 MNIST, 3 on 32x32)."""
    return max(2, min(int(shape[-1]), int(shape[-2])) // 10)


def malicious_count(clients: int, fraction: float) -> int:
    """How many of ``clients`` are malicious at ``fraction`` (rounded to nearest)."""
    if not 0.0 <= fraction < 1.0:
        raise MaliciousClientError(f"--malicious must be a fraction in [0, 1), got {fraction}")
    return round(fraction * clients)


def choose_malicious(clients: int, fraction: float, *, seed: int) -> list[int]:
    """The ids (0-based partition ids) of the malicious clients: a seeded draw of
    ``round(fraction * clients)`` of them, sorted."""
    count = malicious_count(clients, fraction)
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(clients, generator=gen)[:count].tolist())


def flip_labels(y: Tensor, classes: int) -> Tensor:
    """``c -> classes - 1 - c`` (every label changes when ``classes`` is even)."""
    return classes - 1 - y


def poison_update(attack: str, received: dict[str, Tensor], trained: dict[str, Tensor], *,
                  scale: float, generator: torch.Generator) -> dict[str, Tensor]:
    """The weights a malicious client sends, from the global weights it ``received`` and
    the weights it ``trained`` (see the module docstring). Integer buffers (BatchNorm's
    counters) are sent as trained."""
    check_attack(attack)
    if attack in COLLUDING:
        raise MaliciousClientError(f"{attack} needs the colluders' honest updates: "
                                   "use colluding_update")
    if attack == "label-flip":
        return trained
    out: dict[str, Tensor] = {}
    for name, g in received.items():
        w = trained[name]
        if not torch.is_floating_point(w):
            out[name] = w
        elif attack == "sign-flip":
            out[name] = g - scale * (w - g)
        elif attack == "scale":
            out[name] = g + scale * (w - g)
        else:  # gaussian
            noise = torch.randn(g.shape, generator=generator, dtype=g.dtype)
            out[name] = g + scale * noise.to(g.device)
    return out
