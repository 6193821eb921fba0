"""Architectures by name, plus user factories given as ``module:factory``.

A factory is called as ``factory(input_shape=..., num_classes=...)`` and returns an
``nn.Module`` producing logits. Register your own with :func:`register_model`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence

from torch import nn

from dlsec.errors import DlsecError
from dlsec.models.nets import SimpleNet, SmallCNN, flat_size

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}


class ModelError(DlsecError):
    """A model could not be built, saved or loaded."""


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory(input_shape=..., num_classes=...)`` buildable by ``name``."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = factory
        return factory

    return deco


def model_names() -> list[str]:
    return sorted(_MODELS)


@register_model("simplenet")
def _simplenet(*, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return SimpleNet(flat_size(input_shape), 128, num_classes)


@register_model("smallcnn")
def _smallcnn(*, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ModelError(f"smallcnn needs C x H x W inputs, got shape {tuple(input_shape)}")
    c, h, w = input_shape
    return SmallCNN(c, h, w, num_classes)


def resolve_factory(architecture: str) -> ModelFactory:
    """A registered name, or ``package.module:factory`` imported from the user's path."""
    if architecture in _MODELS:
        return _MODELS[architecture]
    if ":" in architecture:
        module_name, _, attr = architecture.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelError(f"model {architecture!r}: cannot import {module_name!r} ({exc})") from exc
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ModelError(f"model {architecture!r}: {module_name} has no callable {attr!r}")
        return factory
    raise ModelError(
        f"unknown model {architecture!r} (choose from {', '.join(model_names())}, "
        "or give module:factory)"
    )


def build_network(architecture: str, *, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build an untrained network (without the normalization wrapper)."""
    factory = resolve_factory(architecture)
    params = inspect.signature(factory).parameters
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, object] = {}
    if accepts_kwargs or "input_shape" in params:
        kwargs["input_shape"] = tuple(input_shape)
    if accepts_kwargs or "num_classes" in params:
        kwargs["num_classes"] = num_classes
    net = factory(**kwargs)
    if not isinstance(net, nn.Module):
        raise ModelError(f"model {architecture!r}: factory returned {type(net).__name__}, not nn.Module")
    return net
