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

"A little is enough" (Baruch et al. 2019) and inner-product manipulation (Xie et al.
2020) need the honest updates of the round and are not here yet.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlsec.errors import DlsecError

ATTACKS = ("label-flip", "sign-flip", "gaussian", "scale")
# attacks that send something other than their honest update (label-flip trains on bad data)
DEFAULT_SCALE = {"sign-flip": 4.0, "gaussian": 1.0}


class MaliciousClientError(DlsecError):
    """An unknown attack or a fraction of malicious clients outside [0, 1)."""


def check_attack(attack: str) -> str:
    if attack not in ATTACKS:
        raise MaliciousClientError(f"unknown attack {attack!r} (choose from {', '.join(ATTACKS)})")
    return attack


def default_scale(attack: str, clients: int) -> float:
    """The attack's scale when none is given (``scale``: the number of clients)."""
    return float(clients) if attack == "scale" else DEFAULT_SCALE.get(attack, 1.0)


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
