"""How a federation's clients share a training set: IID, Dirichlet label skew, label shards.

Every scheme gives each training record to exactly one client and leaves no client empty.
All draws come from one seed, so the same seed gives the same partition.

- ``iid``: a seeded permutation cut into near-equal parts.
- ``dirichlet:ALPHA`` (Hsu et al. 2019): for each class, the share of that class each
  client gets is drawn from Dirichlet(ALPHA, ..., ALPHA). Small ALPHA (0.1) gives clients
  few classes; large ALPHA (100) approaches IID.
- ``shards:K`` (McMahan et al. 2017): the records sorted by label are cut into
  ``clients * K`` equal shards and each client gets K of them at random, so a client
  holds at most about K classes.

Example:
    >>> parts = partition(ds.y_train, 10, parse_partition("dirichlet:0.5"), seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dlsec.errors import DlsecError

SCHEMES = ("iid", "dirichlet:ALPHA", "shards:K")


class PartitionError(DlsecError):
    """A partition that cannot be made (bad scheme, too few records for the clients)."""


@dataclass(frozen=True)
class PartitionScheme:
    """``kind`` is ``iid``, ``dirichlet`` (with ``alpha``) or ``shards`` (with ``shards``
    per client)."""

    kind: str
    alpha: float = 0.0
    shards: int = 0

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "shards":
            return f"shards:{self.shards}"
        return self.kind


def parse_partition(spec: str) -> PartitionScheme:
    """``iid``, ``dirichlet:ALPHA`` (ALPHA > 0) or ``shards:K`` (K >= 1) as a scheme."""
    valid = f"use {', '.join(SCHEMES)}"
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "iid" and not arg:
        return PartitionScheme("iid")
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            raise PartitionError(f"partition {spec!r}: ALPHA must be a number ({valid})") from None
        if not (alpha > 0 and np.isfinite(alpha)):
            raise PartitionError(f"partition {spec!r}: Dirichlet alpha must be > 0 and finite, "
                                 f"got {arg}")
        return PartitionScheme("dirichlet", alpha=alpha)
    if kind == "shards":
        if not arg.isdigit() or int(arg) < 1:
            raise PartitionError(f"partition {spec!r}: K must be a whole number >= 1 ({valid})")
        return PartitionScheme("shards", shards=int(arg))
    raise PartitionError(f"unknown partition {spec!r} ({valid})")


def partition(labels: Tensor, clients: int, scheme: PartitionScheme | str, *,
              seed: int) -> list[Tensor]:
    """The training-set indices of each of ``clients`` clients (sorted int64 tensors).

    Every index ``0..len(labels)-1`` is in exactly one part and no part is empty.
    Raises :class:`PartitionError` for fewer records than clients (or than
    ``clients * K`` shards), or fewer than one client.
    """
    if isinstance(scheme, str):
        scheme = parse_partition(scheme)
    n = int(labels.shape[0])
    if clients < 1:
        raise PartitionError(f"clients must be at least 1, got {clients}")
    if n < clients:
        raise PartitionError(f"{n} training records cannot be shared by {clients} clients "
                             f"(every client needs at least one; use at most {n} clients)")
    gen = torch.Generator().manual_seed(seed)
    y = labels.detach().to("cpu", torch.int64)
    if scheme.kind == "iid":
        parts = list(torch.randperm(n, generator=gen).tensor_split(clients))
    elif scheme.kind == "dirichlet":
        parts = _dirichlet(y, clients, scheme.alpha, gen)
    elif scheme.kind == "shards":
        if n < clients * scheme.shards:
            raise PartitionError(
                f"{n} training records cannot be cut into {clients} x {scheme.shards} shards "
                f"(use fewer clients or shards: clients x K <= {n})")
        parts = _shards(y, clients, scheme.shards, gen)
    else:
        raise PartitionError(f"unknown partition {scheme.kind!r} (use {', '.join(SCHEMES)})")
    return [p.sort().values for p in parts]


def _dirichlet(y: Tensor, clients: int, alpha: float, gen: torch.Generator) -> list[Tensor]:
    rng = np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=gen)))
    buckets: list[list[Tensor]] = [[] for _ in range(clients)]
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        share = rng.dirichlet(np.full(clients, alpha))
        cuts = np.floor(np.cumsum(share)[:-1] * idx.numel()).astype(np.int64)
        for k, piece in enumerate(np.split(idx.numpy(), cuts)):
            buckets[k].append(torch.from_numpy(piece))
    parts = [torch.cat(b) if b else torch.empty(0, dtype=torch.int64) for b in buckets]
    # a small alpha can leave a client with nothing: it takes one random record of the
    # largest client (which keeps at least one), so every client trains
    for k in range(clients):
        if parts[k].numel() == 0:
            big = max(range(clients), key=lambda j: (parts[j].numel(), -j))
            pick = int(torch.randint(parts[big].numel(), (1,), generator=gen))
            parts[k] = parts[big][pick : pick + 1]
            parts[big] = torch.cat([parts[big][:pick], parts[big][pick + 1 :]])
    return parts


def _shards(y: Tensor, clients: int, per_client: int, gen: torch.Generator) -> list[Tensor]:
    shuffled = torch.randperm(y.numel(), generator=gen)
    by_label = shuffled[torch.sort(y[shuffled], stable=True).indices]
    shards = by_label.tensor_split(clients * per_client)
    order = torch.randperm(len(shards), generator=gen)
    return [torch.cat([shards[int(s)] for s in order[k * per_client : (k + 1) * per_client]])
            for k in range(clients)]


def label_counts(labels: Tensor, parts: list[Tensor], classes: int) -> Tensor:
    """``clients x classes`` counts of each label in each part."""
    y = labels.to("cpu", torch.int64)
    return torch.stack([torch.bincount(y[p], minlength=classes) for p in parts])
