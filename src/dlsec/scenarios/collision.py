"""Clean-label feature collision (Poison Frogs, Shafahi et al. 2018) over many targets: the
poisoning scenario's collision trials (:func:`dlsec.scenarios.poisoning.run_poisoning` and
``dlsec poison feature-collision`` run through here). The victim retrains only the last
layer of the audited model on its penultimate features, the paper's transfer-learning
setting.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.attacks.poisoning import feature_collision
from dlsec.attacks.poisoning._base import predictions
from dlsec.data import Dataset
from dlsec.models import last_linear, penultimate_features
from dlsec.training import TrainConfig, fit


@dataclass
class CollisionTrials:
    """Feature collision over many targets.

    ``rows``: one dict per target (test index, true class, base class, success, the
    feature distance between the first poison and the target, and the image distance
    between it and its base). ``poisons``: the first poison of each target, for display.
    """

    n_targets: int
    successes: int
    rows: list[dict[str, Any]]
    poisons: Tensor = field(repr=False)
    bases: Tensor = field(repr=False)
    targets: Tensor = field(repr=False)

    @property
    def success_rate(self) -> float:
        return self.successes / max(1, self.n_targets)


def run_collision_trials(dataset: Dataset, model: nn.Module, *, n_targets: int = 20,
                         n_poisons: int = 20, config: TrainConfig | None = None, steps: int = 200,
                         lr: float = 0.1, opacity: float = 0.0, beta: float | None = None,
                         generator: torch.Generator | None = None,
                         progress: bool = False) -> CollisionTrials:
    """Poison Frogs against ``n_targets`` random test samples, one poison set per target.

    Targets are test samples that ``model`` and the victim retrained *without* poisons
    both classify correctly; each gets a random other class as its base class. The victim
    (the paper's transfer-learning setting) re-trains the last layer, starting from
    ``model``'s, on the penultimate features of the clean training set plus the poisons.
    Success: the victim classifies the target as the base class. Defaults (measured on
    digits/SimpleNet, 128 features): 20 poisons per target, the head re-trained for 60
    epochs (Adam, lr 1e-2, batches of 256) — with 128 features instead of the paper's 2048
    one poison is rarely enough.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    config = config or TrainConfig(epochs=60, lr=1e-2, batch_size=256)
    ds = dataset
    device = next(model.parameters()).device
    base_head = last_linear(model)
    feats = penultimate_features(model, ds.x_train)

    def victim(x_extra: Tensor, y_extra: Tensor) -> nn.Module:
        head = copy.deepcopy(base_head)
        fx = torch.cat([feats, penultimate_features(model, x_extra)]) if len(y_extra) else feats
        fy = torch.cat([ds.y_train.to(device), y_extra.to(device)])
        fit(head, fx, fy, config=config, progress=False)
        out = copy.deepcopy(model)
        last_linear(out).load_state_dict(head.state_dict())
        return out

    control = victim(ds.x_train[:0], ds.y_train[:0])
    ok = (predictions(model, ds.x_test).cpu() == ds.y_test) & (
        predictions(control, ds.x_test).cpu() == ds.y_test
    )
    pool = torch.nonzero(ok).flatten()
    pool = pool[torch.randperm(pool.numel(), generator=g)][:n_targets]
    rows, poisons, bases, targets, successes = [], [], [], [], 0
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("feature collision targets", total=int(pool.numel()))
        for t in pool.tolist():
            true = int(ds.y_test[t])
            base_label = (true + int(torch.randint(1, ds.num_classes, (1,), generator=g))) % (
                ds.num_classes
            )
            res = feature_collision(ds.x_train, ds.y_train, model=model, target_x=ds.x_test[t],
                                    base_label=base_label, bounds=ds.bounds, n_poisons=n_poisons,
                                    steps=steps, lr=lr, opacity=opacity, beta=beta)
            extra_x, extra_y = res.x[res.mask], res.y[res.mask]
            won = res.success(victim(extra_x, extra_y), ds.x_test, ds.y_test) == 1.0  # type: ignore[misc]
            successes += int(won)
            f_p = penultimate_features(model, extra_x[:1])
            f_t = penultimate_features(model, ds.x_test[t : t + 1])
            base_img = ds.x_train[res.metadata["base_indices"][0]].cpu()
            rows.append({"test_index": t, "true": true, "base": base_label, "success": won,
                         "feature_distance": float((f_p - f_t).norm()),
                         "image_distance": float((extra_x[0].cpu() - base_img).norm())})
            poisons.append(extra_x[0].cpu())
            bases.append(base_img)
            targets.append(ds.x_test[t].cpu())
            bar.advance(task)
    empty = ds.x_test[:0].cpu()
    return CollisionTrials(
        n_targets=len(rows), successes=successes, rows=rows,
        poisons=torch.stack(poisons) if poisons else empty,
        bases=torch.stack(bases) if bases else empty,
        targets=torch.stack(targets) if targets else empty,
    )


__all__ = ["CollisionTrials", "run_collision_trials"]
