"""Adversarial training: ``pgd-at`` (Madry et al. 2018), ``trades`` (Zhang et al. 2019) and
``fgsm-rs`` (Wong et al. 2020) at the matrix's radius, with the model's own recipe (epochs,
learning rate, batch size) otherwise; the robustness monitor of
:func:`dlsec.defenses.adversarial.adversarial_train` keeps the best-PGD epoch on collapse."""

from __future__ import annotations

import dataclasses

from torch import nn

from dlsec.data import Dataset
from dlsec.models import ModelCard
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.defended import BuildSettings, Recipe, Trainer, register_defense
from dlsec.scenarios.hardening import adversarial_training

METHODS = {"pgd-at": "pgd", "trades": "trades", "fgsm-rs": "fgsm-rs"}


def _recipe(method: str, ctx: ScenarioContext, settings: BuildSettings) -> Recipe:
    def train(dataset: Dataset, seed: int) -> tuple[nn.Module, ModelCard]:
        config = dataclasses.replace(settings.train, seed=seed)
        model, card, _ = adversarial_training(
            dataset, ctx.card.architecture, config, method=method, eps=settings.eps,
            norm=settings.norm, progress=False, normalization=ctx.card.normalization)
        return model, card

    trainer: Trainer = train
    return Recipe(kind="training", train=trainer, retrain=trainer,
                  describe=f"{method} adversarial training at {settings.norm} eps "
                  f"{settings.eps:g}", settings={"method": method, "eps": settings.eps})


@register_defense("pgd-at", kind="training", summary="PGD adversarial training (Madry et al.)")
def pgd_at(ctx: ScenarioContext, parameter: str, settings: BuildSettings) -> Recipe:
    return _recipe("pgd", ctx, settings)


@register_defense("trades", kind="training", summary="TRADES (Zhang et al., beta 6)")
def trades(ctx: ScenarioContext, parameter: str, settings: BuildSettings) -> Recipe:
    return _recipe("trades", ctx, settings)


@register_defense("fgsm-rs", kind="training", summary="fast FGSM with a random start (Wong et al.)")
def fgsm_rs(ctx: ScenarioContext, parameter: str, settings: BuildSettings) -> Recipe:
    return _recipe("fgsm-rs", ctx, settings)
