"""Looking inside a model: the last linear layer and the features that feed it.

Spectral signatures, activation clustering and feature collision work in the feature space
that enters the model's last ``nn.Linear``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dlsec.models.registry import ModelError

__all__ = ["last_linear", "penultimate", "penultimate_features"]


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` (in registration order): its input is the feature
    space that spectral signatures, activation clustering and feature collision work in."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ModelError("the model has no nn.Linear layer to take features from")
    return found[-1]


def penultimate(model: nn.Module, x: Tensor, *, layer: nn.Module | None = None) -> Tensor:
    """The input of ``layer`` (default: the last linear layer) for ``x``, differentiable."""
    layer = layer or last_linear(model)
    captured: list[Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        captured.append(inputs[0])

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def penultimate_features(
    model: nn.Module,
    x: Tensor,
    *,
    layer: nn.Module | None = None,
    batch_size: int = 1024,
) -> Tensor:
    """Penultimate-layer features of ``x`` in batches, on the model's device (no grad)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = [
            penultimate(model, x[i : i + batch_size].to(device), layer=layer)
            for i in range(0, x.shape[0], batch_size)
        ]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=device)
