"""``sanitize:METHOD``: the training set cleaned by a sanitizer (confident learning
``cleanlab``, ``knn``, ``spectral``, ``activation``, ... from
:mod:`dlsec.defenses.sanitization`), then the model's own recipe on what it kept. On clean
data it removes what it finds suspicious anyway (the cost column shows what that costs); on
the poisoning columns' poisoned sets it removes the poisons it finds."""

from __future__ import annotations

import dataclasses

from torch import nn

from dlsec.data import Dataset
from dlsec.defenses.sanitization import SANITIZERS
from dlsec.models import ModelCard
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.defended import BuildSettings, DefenseError, Recipe, register_defense
from dlsec.scenarios.defended.reference import plain_trainer
from dlsec.scenarios.poisoning import sanitize_dataset


@register_defense("sanitize", kind="training", parameter="METHOD", default="cleanlab",
                  summary="the training set cleaned by a sanitizer, then the model's recipe")
def recipe(ctx: ScenarioContext, parameter: str, settings: BuildSettings) -> Recipe:
    method = parameter.lower()
    if method not in SANITIZERS:
        raise DefenseError(f"sanitize:{parameter}: unknown sanitizer (choose from "
                           f"{', '.join(SANITIZERS)})")
    plain = plain_trainer(ctx, settings)

    def train(dataset: Dataset, seed: int) -> tuple[nn.Module, ModelCard]:
        res, _ = sanitize_dataset(dataset, method, architecture=ctx.card.architecture,
                                  seed=seed)
        keep = res.keep()
        kept = dataclasses.replace(dataset, x_train=dataset.x_train[keep],
                                   y_train=dataset.y_train[keep])
        model, card = plain(kept, seed)
        card.training = {**card.training, "sanitized": {
            "method": method, "removed": res.n_flagged, "of": int(dataset.y_train.numel())}}
        return model, card

    return Recipe(kind="training", train=train, retrain=train,
                  describe=f"{method} sanitization, then the model's recipe",
                  settings={"method": method})
