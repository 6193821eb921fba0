"""What the membership attacks share: the result type, per-sample signals, balanced
evaluation sets, and shadow models trained on random halves of a data pool.

Signals are computed from the probability vectors an :class:`~dlsec.threat.Oracle`
returns, so the same code scores a local model or a remote API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.attacks.privacy._common import (
    PrivacyAttackError,
    check_shifts,
    require_scores,
    shift_images,
)
from dlsec.attacks.privacy.metrics import MembershipMetrics, membership_metrics
from dlsec.attacks.surrogate import fresh_model
from dlsec.executor import Executor, SequentialExecutor
from dlsec.models import ModelCard
from dlsec.threat import Oracle
from dlsec.training import TrainConfig, fit, resolve_device

_TINY = 1e-300


@dataclass
class MembershipResult:
    """Per-sample membership scores (higher = member) and, with ground truth, the metrics.

    ``queries`` is the number of oracle queries the attack spent (rows sent), equal to
    the oracle's ``queries_total`` increase during the call.
    """

    attack: str
    scores: Tensor
    is_member: Tensor | None = None
    metrics: MembershipMetrics | None = None
    queries: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attack": self.attack, "queries": self.queries,
                               "seconds": round(self.seconds, 3)}
        if self.metrics is not None:
            out.update(self.metrics.to_dict())
        return out


def finish(attack: str, scores: Tensor, is_member: Tensor | None, *, queries: int, t0: float,
           **details: Any) -> MembershipResult:
    if is_member is not None:
        is_member = torch.as_tensor(is_member).bool().cpu()
    metrics = None if is_member is None else membership_metrics(scores.cpu(), is_member)
    return MembershipResult(attack=attack, scores=scores.detach().cpu(), is_member=is_member,
                            metrics=metrics, queries=queries, seconds=time.perf_counter() - t0,
                            details=details)


# -- signals -----------------------------------------------------------------------------------
def true_class_probability(probs: Tensor, y: Tensor) -> Tensor:
    return probs.gather(1, y.view(-1, 1).to(probs.device)).squeeze(1)


def cross_entropy_from_probs(probs: Tensor, y: Tensor) -> Tensor:
    """``-log p_y`` in float64 (probabilities may be exactly zero)."""
    return -torch.log(true_class_probability(probs.double(), y).clamp_min(_TINY))


def prediction_entropy(probs: Tensor) -> Tensor:
    """Shannon entropy of each probability vector (nats)."""
    p = probs.double()
    return -(p * torch.log(p.clamp_min(_TINY))).sum(1)


def logit_confidence(probs: Tensor, y: Tensor) -> Tensor:
    """LiRA's ``phi = log p_y - log sum_{k != y} p_k`` (float64): the other classes are summed
    because ``1 - p_y`` loses all precision once ``p_y`` rounds to one."""
    p = probs.double()
    py = true_class_probability(p, y)
    mask = torch.ones_like(p, dtype=torch.bool).scatter_(1, y.view(-1, 1).to(p.device), False)
    others = (p * mask).sum(1)
    return torch.log(py.clamp_min(_TINY)) - torch.log(others.clamp_min(_TINY))


def query_probabilities(oracle: Oracle, x: Tensor, *, attack: str,
                        batch_size: int = 4096) -> Tensor:
    """Probability vectors for ``x``, one oracle query per row, in batches."""
    require_scores(oracle, attack)
    parts = [oracle.query(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, oracle.num_classes)


# -- evaluation sets ---------------------------------------------------------------------------
def balanced_membership_set(x_members: Tensor, y_members: Tensor, x_nonmembers: Tensor,
                            y_nonmembers: Tensor, *, n: int | None = None,
                            generator: torch.Generator | None = None
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, is_member)`` with as many members as non-members (so chance is 50 %).

    ``n`` members and ``n`` non-members are drawn without replacement (default: as many
    as the smaller side has), members first.
    """
    k = min(len(y_members), len(y_nonmembers))
    n = k if n is None else min(int(n), k)
    if n < 1:
        raise PrivacyAttackError("a membership evaluation needs at least one member and one non-member")
    g = generator or torch.Generator().manual_seed(0)
    pick_in = torch.randperm(len(y_members), generator=g)[:n].sort().values
    pick_out = torch.randperm(len(y_nonmembers), generator=g)[:n].sort().values
    x = torch.cat([x_members[pick_in], x_nonmembers[pick_out]])
    y = torch.cat([y_members[pick_in], y_nonmembers[pick_out]])
    is_member = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    return x, y, is_member


# -- shadow models -----------------------------------------------------------------------------
def random_halves(n_models: int, n_samples: int, *, generator: torch.Generator) -> Tensor:
    """``keep[m, i]``: whether model ``m`` trains on sample ``i``. As in Carlini et al.'s code,
    every sample is kept by exactly ``n_models // 2`` random models (as many IN as OUT), so
    each model sees about half of the pool."""
    if n_models < 2:
        raise PrivacyAttackError(f"need at least 2 shadow models, got {n_models}")
    order = torch.rand(n_models, n_samples, generator=generator).argsort(0).argsort(0)
    return order < n_models // 2


@dataclass
class ShadowModels:
    """Models trained like the target on random halves of the attacker's pool ``x``, ``y``
    (``keep``: see :func:`random_halves`); the attacker owns them, so it may evaluate them."""

    models: list[nn.Module]
    keep: Tensor
    x: Tensor
    y: Tensor
    seconds: float = 0.0

    @property
    def n_models(self) -> int:
        return len(self.models)

    @torch.inference_mode()
    def probabilities(self, x: Tensor, *, shifts: Sequence[tuple[int, int]] = ((0, 0),),
                      fill: float = 0.0, batch_size: int = 4096) -> Tensor:
        """Softmax outputs ``[models, N, views, K]`` (float32, as an oracle would return)."""
        views = [shift_images(x, dx, dy, fill=fill) for dx, dy in check_shifts(shifts, x)]

        def softmax(model: nn.Module, xs: Tensor) -> Tensor:
            dev = next(model.parameters()).device
            return torch.cat([torch.softmax(model(xs[i : i + batch_size].to(dev)).float(), 1)
                              for i in range(0, xs.shape[0], batch_size)])

        return torch.stack([torch.stack([softmax(m.eval(), v) for v in views], 1)
                            for m in self.models])


class _StackedModels(nn.Module):
    """``M`` networks of one architecture run as one batched module (``torch.func``).

    It exists so :func:`dlsec.training.fit` can train all shadow models in one loop: its
    "inputs" are pool indices, and :func:`_stacked_loss` gives every model the mean
    cross-entropy over the records of the batch it keeps. The stacked parameters are
    independent, so Adam/SGD (element-wise) update each model exactly as if it were
    trained alone on batches of its own records.
    """

    x_pool: Tensor
    weights: Tensor

    def __init__(self, models: list[nn.Module], x_pool: Tensor, keep: Tensor) -> None:
        super().__init__()
        import copy

        self._base = [copy.deepcopy(models[0]).to("meta")]  # a list: not a submodule
        params, buffers = torch.func.stack_module_state(models)
        self._names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[k].detach()) for k in self._names])
        self._buffers_stacked = {k: v.detach() for k, v in buffers.items()}
        self.register_buffer("x_pool", x_pool, persistent=False)
        self.register_buffer("weights", keep.to(x_pool.dtype), persistent=False)

    def all_logits(self, x: Tensor) -> Tensor:
        base = self._base[0]
        params = dict(zip(self._names, self.stacked, strict=True))

        def one(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
            return torch.func.functional_call(base, (p, b), (x,))

        return torch.vmap(one, randomness="different")(params, self._buffers_stacked)

    def forward(self, idx: Tensor) -> Tensor:
        # the ensemble's mean logits: only what fit logs as "train accuracy"
        return self.all_logits(self.x_pool[idx]).mean(0)

    def unstack(self, models: list[nn.Module]) -> None:
        with torch.no_grad():
            for m, model in enumerate(models):
                state = {k: p[m] for k, p in zip(self._names, self.stacked, strict=True)}
                model.load_state_dict(state, strict=False)


def _stacked_loss(model: nn.Module, idx: Tensor, y: Tensor) -> Tensor:
    assert isinstance(model, _StackedModels)
    logits = model.all_logits(model.x_pool[idx])  # [M, B, K]
    m, b, k = logits.shape
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(m * b, k), y.repeat(m), reduction="none"
    ).view(m, b)
    w = model.weights[:, idx]
    return ((ce * w).sum(1) / w.sum(1).clamp_min(1.0)).sum()


ShadowTrainer = Callable[[nn.Module, Tensor, Tensor, TrainConfig], nn.Module]
"""``train_one(model, x, y, config) -> trained model``: how one shadow model is trained
(default: :func:`dlsec.training.fit`). A scenario passes another trainer (DP-SGD for a
DP-trained target) so the shadows follow the target's recipe; attacks know no defenses."""


def _fit_one(model: nn.Module, x: Tensor, y: Tensor, config: TrainConfig) -> nn.Module:
    fit(model, x, y, config=config, progress=False)
    return model


def _train_shadow(train_one: ShadowTrainer | None, model: nn.Module, x: Tensor, y: Tensor,
                  config: TrainConfig) -> nn.Module:
    """One shadow model's task (an :class:`dlsec.executor.Executor` runs it, here or in a
    Ray worker): trained by ``train_one`` (default: ``fit``), handed back on the CPU."""
    return (train_one or _fit_one)(model, x, y, config).cpu()


def train_shadow_models(x: Tensor, y: Tensor, *, card: ModelCard, n_models: int,
                        config: TrainConfig, generator: torch.Generator,
                        keep: Tensor | None = None, stacked: bool | None = None,
                        progress: bool = False,
                        train_one: ShadowTrainer | None = None,
                        executor: Executor | None = None) -> ShadowModels:
    """Train ``n_models`` networks of ``card``'s architecture on random halves of ``(x, y)``
    with :func:`dlsec.training.fit` under ``config``, model ``m`` under seed ``config.seed + m``.

    With ``stacked`` (the default for networks without batch norm) all models train at once
    (:class:`_StackedModels`): every batch of ``2 * config.batch_size`` pool records gives each
    model about ``config.batch_size`` of its own, so steps per epoch and the batch size match
    training each model alone on its half. Otherwise they train one after another.
    ``train_one`` (a :data:`ShadowTrainer`) replaces ``fit`` for each model; such shadows
    train one after another (``stacked=True`` with it is refused).

    One after another means one task per model on ``executor`` (default: a
    :class:`~dlsec.executor.SequentialExecutor` in this process; a Ray executor trains them
    in parallel with bit-identical weights). ``train_one`` then travels pickled: a
    module-level function or an instance of a module-level class.
    """
    import dataclasses

    from rich.progress import Progress

    t0 = time.perf_counter()
    n = int(y.numel())
    if n < 2:
        raise PrivacyAttackError("the shadow pool needs at least two samples")
    keep = random_halves(n_models, n, generator=generator) if keep is None else keep.bool()
    if keep.shape != (n_models, n):
        raise PrivacyAttackError(f"keep must be {n_models} x {n}, got {tuple(keep.shape)}")
    device = resolve_device(config.device)
    x, y = x.to(device), y.to(device)
    models = [fresh_model(card, config.seed + m).to(device) for m in range(n_models)]
    if train_one is not None and stacked:
        raise PrivacyAttackError("shadow models with their own trainer train one after another "
                                 "(stacked=True needs the plain fit)")
    if train_one is not None:
        stacked = False
    if stacked is None:
        batch_norm = nn.modules.batchnorm._BatchNorm
        stacked = not any(isinstance(mod, batch_norm) for mod in models[0].modules())
    if stacked:
        ens = _StackedModels(models, x, keep.to(device))
        cfg = dataclasses.replace(config, val_fraction=0.0, batch_size=2 * config.batch_size)
        fit(ens, torch.arange(n, device=device), y, config=cfg, batch_loss=_stacked_loss,
            progress=progress, description="shadow models")
        ens.unstack(models)
    else:
        tasks = []
        for m, model in enumerate(models):
            cfg = dataclasses.replace(config, seed=config.seed + m, val_fraction=0.0)
            idx = torch.nonzero(keep[m].to(device)).flatten()
            tasks.append((f"shadow/{cfg.seed}", (train_one, model.cpu(), x[idx].cpu(),
                                                  y[idx].cpu(), cfg)))
        with Progress(disable=not progress, transient=True) as bar:
            bar.add_task(f"shadow models ({n_models})", total=None)
            trained = (executor or SequentialExecutor()).map(_train_shadow, tasks)
        models = [model.to(device) for model in trained]
    for model in models:
        model.eval()
    return ShadowModels(models=models, keep=keep.cpu(), x=x, y=y,
                        seconds=time.perf_counter() - t0)
