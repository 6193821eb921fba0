"""Robust aggregation beyond Flower's own strategies: norm clipping and FLTrust.

Both are subclasses of Flower's :class:`~flwr.serverapp.strategy.FedAvg` (Message API):
``configure_train`` keeps the global weights it sends, ``aggregate_train`` works on the
clients' updates ``w_k - g`` (float tensors; integer buffers are taken from the first
reply), through the pure functions below.

- Norm clipping (Sun et al. 2019, "Can you really backdoor federated learning?"): each
  update is scaled to at most ``clip_norm`` in L2 norm (over all its float weights),
  then FedAvg (weighted by examples): ``g + sum_k n_k clip(u_k) / sum_k n_k``. With no
  bound given, the bound is the median of the round's update norms (an adaptive choice:
  a boosted update is cut to a typical honest one's norm).
- FLTrust (Cao et al. 2021): the server trains the global model on a small root dataset
  each round (update ``u_0``); client k's trust score is ``ReLU(cos(u_k, u_0))``, its
  update is rescaled to ``||u_0||``, and the new model is
  ``g + sum_k ts_k (||u_0|| / ||u_k||) u_k / sum_k ts_k`` (``g`` when every score is 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import Tensor

from dlsec.errors import DlsecError

Weights = dict[str, Tensor]
# the server's training on its root data: (global weights, round) -> trained weights
RootTrainer = Callable[[Weights, int], Weights]


class RobustStrategyError(DlsecError):
    """A bad parameter of a robust strategy (a bound that is not positive, no root data)."""


def _floats(w: Weights) -> list[str]:
    return [k for k, v in w.items() if torch.is_floating_point(v)]


def update_norm(update: Weights) -> float:
    """The L2 norm of an update over all its float tensors."""
    return float(torch.sqrt(sum(((v.double() ** 2).sum() for k, v in update.items()
                                 if torch.is_floating_point(v)), torch.tensor(0.0, dtype=torch.float64))))


def clip_update(update: Weights, bound: float) -> Weights:
    """``update * min(1, bound / ||update||)`` (float tensors; others unchanged)."""
    if bound <= 0:
        raise RobustStrategyError(f"clipping: the norm bound must be positive, got {bound:g}")
    norm = update_norm(update)
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: v * factor if torch.is_floating_point(v) else v for k, v in update.items()}


def clipped_mean(global_w: Weights, trained: list[Weights], examples: list[int],
                 bound: float | None) -> Weights:
    """Norm clipping's new global weights: ``g + sum_k n_k clip(w_k - g) / sum_k n_k``
    (``bound`` None: the median of the update norms, the lower middle one when even)."""
    updates = [{k: w[k] - global_w[k] for k in _floats(global_w)} for w in trained]
    if bound is None:
        norms = sorted(update_norm(u) for u in updates)
        bound = norms[(len(norms) - 1) // 2] or 1.0
    total = float(sum(examples))
    out = dict(trained[0])
    for k in _floats(global_w):
        acc = torch.zeros_like(global_w[k])
        for u, n in zip((clip_update(u, bound) for u in updates), examples, strict=True):
            acc = acc + u[k] * (n / total)
        out[k] = global_w[k] + acc
    return out


def fltrust_scores(updates: list[Weights], server_update: Weights) -> list[float]:
    """FLTrust's trust scores: ``ReLU(cos(u_k, u_0))``."""
    keys = _floats(server_update)
    flat0 = torch.cat([server_update[k].double().flatten() for k in keys])
    scores = []
    for u in updates:
        flat = torch.cat([u[k].double().flatten() for k in keys])
        cos = torch.nn.functional.cosine_similarity(flat, flat0, dim=0, eps=1e-12)
        scores.append(max(0.0, float(cos)))
    return scores


def fltrust_aggregate(global_w: Weights, trained: list[Weights], server_w: Weights) -> Weights:
    """FLTrust's new global weights (module docstring) from the clients' ``trained``
    weights and the server's own ``server_w`` (trained on the root data)."""
    keys = _floats(global_w)
    u0 = {k: server_w[k] - global_w[k] for k in keys}
    updates = [{k: w[k] - global_w[k] for k in keys} for w in trained]
    scores = fltrust_scores(updates, u0)
    norm0 = update_norm(u0)
    out = dict(trained[0]) if trained else dict(global_w)
    total = sum(scores)
    for k in keys:
        if total == 0:
            out[k] = global_w[k].clone()
            continue
        acc = torch.zeros_like(global_w[k])
        for u, ts in zip(updates, scores, strict=True):
            if ts > 0:
                acc = acc + (ts * norm0 / max(update_norm(u), 1e-12)) * u[k]
        out[k] = global_w[k] + acc / total
    return out


class _KeepsGlobal(FedAvg):
    """FedAvg that remembers the global weights it sends each round."""

    _global: Weights

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = {k: v.detach().cpu() for k, v in arrays.to_torch_state_dict().items()}
        return super().configure_train(server_round, arrays, config, grid)

    def _replies(self, replies: Iterable[Message]) -> tuple[list[Weights], list[int], list[Message]]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        trained = [{k: v.cpu() for k, v in cast(Any, m.content["arrays"]).to_torch_state_dict().items()}
                   for m in valid]
        examples = [int(cast(Any, m.content["metrics"][self.weighted_by_key])) for m in valid]
        return trained, examples, list(valid)

    def _metrics(self, valid: list[Message]) -> MetricRecord | None:
        return self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)


class NormClipping(_KeepsGlobal):
    """FedAvg of updates clipped to ``clip_norm`` (None: the round's median update norm)."""

    def __init__(self, *, clip_norm: float | None = None, **kwargs: Any) -> None:
        if clip_norm is not None and not clip_norm > 0:
            raise RobustStrategyError(f"clipping: --clip-norm must be positive, got {clip_norm:g}")
        super().__init__(**kwargs)
        self.clip_norm = clip_norm

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        trained, examples, valid = self._replies(replies)
        if not trained:
            return None, None
        new = clipped_mean(self._global, trained, examples, self.clip_norm)
        return ArrayRecord(new), self._metrics(valid)


class FLTrust(_KeepsGlobal):
    """FLTrust: client updates weighted by their cosine with the server's root-data update."""

    def __init__(self, *, root_train: RootTrainer | None = None, **kwargs: Any) -> None:
        if root_train is None:
            raise RobustStrategyError("fltrust needs a root dataset on the server (root_train)")
        super().__init__(**kwargs)
        self.root_train = root_train

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        trained, _, valid = self._replies(replies)
        if not trained:
            return None, None
        server_w = self.root_train(self._global, server_round)
        new = fltrust_aggregate(self._global, trained, server_w)
        return ArrayRecord(new), self._metrics(valid)
