"""Models: SimpleNet (the seed's MLP), SmallCNN, a registry, and safe model files.

Example:
    >>> from dlsec.models import ModelCard, build_model
    >>> card = ModelCard("simplenet", input_shape=[1, 8, 8], classes=[str(i) for i in range(10)])
    >>> build_model(card)(torch.zeros(2, 1, 8, 8)).shape  # doctest: +SKIP
    torch.Size([2, 10])
"""

from __future__ import annotations

from dlsec.models.card import CardLike, ModelCard, TrainingRecord
from dlsec.models.features import last_linear, penultimate, penultimate_features
from dlsec.models.io import build_model, inner_network, load, read_card, read_state_dict, save
from dlsec.models.nets import Normalized, SimpleNet, SmallCNN
from dlsec.models.registry import (
    FACTORY_ARGUMENTS,
    ModelError,
    build_network,
    check_code_allowed,
    model_names,
    register_model,
    resolve_factory,
)

__all__ = [
    "FACTORY_ARGUMENTS",
    "CardLike",
    "ModelCard",
    "ModelError",
    "Normalized",
    "SimpleNet",
    "SmallCNN",
    "TrainingRecord",
    "build_model",
    "build_network",
    "check_code_allowed",
    "inner_network",
    "last_linear",
    "load",
    "model_names",
    "penultimate",
    "penultimate_features",
    "read_card",
    "read_state_dict",
    "register_model",
    "resolve_factory",
    "save",
]
