"""``none``: the audited model as it is, the matrix's reference row. Its poisoning columns
retrain the same architecture with the model's own recipe (its card's training record)."""

from __future__ import annotations

import dataclasses

from torch import nn

from dlsec.data import Dataset
from dlsec.models import ModelCard
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.defended import BuildSettings, Recipe, register_defense
from dlsec.training import train_model


def plain_trainer(ctx: ScenarioContext, settings: BuildSettings):  # -> Trainer
    """The model's own recipe (``settings.train``) on any dataset, seeded by ``seed``."""

    def train(dataset: Dataset, seed: int) -> tuple[nn.Module, ModelCard]:
        config = dataclasses.replace(settings.train, seed=seed)
        model, card, _ = train_model(dataset, ctx.card.architecture, config,
                                     normalization=ctx.card.normalization, progress=False)
        return model, card

    return train


@register_defense("none", kind="reference", summary="the audited model, undefended")
def recipe(ctx: ScenarioContext, parameter: str, settings: BuildSettings) -> Recipe:
    return Recipe(kind="reference", describe="the audited model, undefended",
                  retrain=plain_trainer(ctx, settings))
