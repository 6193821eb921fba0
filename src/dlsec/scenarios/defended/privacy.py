"""``dp:EPSILON``: DP-SGD (Opacus, Poisson sampling) to the target epsilon at delta 1e-5,
with the DP section's recipe (:class:`dlsec.scenarios.dp_sweep.DPSweepOptions`: Adam, clipping
norm 1, 15 epochs). Membership shadows of a DP row train with DP-SGD too (its card says so)."""

from __future__ import annotations

import math

from torch import nn

from dlsec.data import Dataset
from dlsec.models import ModelCard
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.defended import BuildSettings, DefenseError, Recipe, register_defense
from dlsec.scenarios.dp_sweep import DPSweepOptions
from dlsec.training import TrainConfig


@register_defense("dp", kind="training", parameter="EPSILON",
                  summary="DP-SGD (Opacus) to a target epsilon at delta 1e-5")
def recipe(ctx: ScenarioContext, parameter: str, settings: BuildSettings) -> Recipe:
    from dlsec.scenarios.dp import dp_training

    try:
        epsilon = float(parameter)
    except ValueError:
        epsilon = math.nan
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise DefenseError(f"dp:{parameter}: epsilon must be a number > 0 (e.g. dp:3)")
    opt = DPSweepOptions()

    def train(dataset: Dataset, seed: int) -> tuple[nn.Module, ModelCard]:
        config = TrainConfig(epochs=opt.epochs, lr=opt.lr, batch_size=opt.batch_size,
                             seed=seed, device=settings.train.device)
        res = dp_training(dataset, ctx.card.architecture, config, epsilon=epsilon,
                          delta=opt.delta, max_grad_norm=opt.max_grad_norm, progress=False)
        return res.model, res.card

    return Recipe(kind="training", train=train, retrain=train,
                  describe=f"DP-SGD to epsilon {epsilon:g} (delta {opt.delta:g}, clipping "
                  f"{opt.max_grad_norm:g}, {opt.epochs} epochs, Adam lr {opt.lr:g})",
                  settings={"epsilon": epsilon, "delta": opt.delta})
