"""Models whose outputs a test can work out by hand (imported by tests in any folder:
``from hand_models import Linear``; pytest puts this folder on ``sys.path`` with the root
conftest)."""

from __future__ import annotations

import torch
from torch import nn


class Linear(nn.Module):
    """Logits ``x.flatten(1) @ w.T + b`` with the given weights ``w`` (K x D) and bias ``b``.

    Building it draws from torch's global generator once (``nn.Linear``'s initialisation,
    overwritten at once), as the copies it replaces did.
    """

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.lin.weight.copy_(w)
            self.lin.bias.copy_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def weights_sha256(model: nn.Module) -> str:
    """The sha256 of a model's parameters and buffers (names and bytes, in name order): two
    models are the same model exactly when these are equal."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
