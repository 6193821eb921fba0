"""What the privacy attacks share: their error, oracle checks, fresh models and image shifts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.errors import DlsecError
from dlsec.threat import Oracle
from dlsec.training import TrainConfig


class PrivacyAttackError(DlsecError):
    """Bad privacy-attack settings (wrong oracle output kind, empty data, bad sizes)."""


def require_scores(oracle: Oracle, attack: str) -> None:
    """Score-based attacks need probabilities; a label-only oracle cannot serve them."""
    if oracle.output == "label":
        raise PrivacyAttackError(
            f"{attack} needs class scores but the oracle returns labels only "
            "(use the label-only attack, or an oracle with output='scores')"
        )


def fresh_model(card: Any, seed: int) -> nn.Module:
    """An untrained network of ``card``'s architecture, initial weights drawn under ``seed``.

    The global RNG is left untouched (as in :func:`dlsec.training.train_model`).
    """
    from dlsec.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(card)


def train_config_from_card(card: Any, **overrides: Any) -> TrainConfig:
    """The target's own training recipe as recorded in its card (the attacker's best guess)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    known = {k: v for k, v in (card.training or {}).items() if k in names}
    known.update(overrides)
    return TrainConfig(**known)


def shift_images(x: Tensor, dx: int, dy: int, *, fill: float) -> Tensor:
    """Translate ``N x C x H x W`` images by ``dx`` columns and ``dy`` rows, filling with ``fill``."""
    if dx == 0 and dy == 0:
        return x
    if x.dim() != 4:
        raise PrivacyAttackError("shifts need N x C x H x W image inputs")
    out = torch.full_like(x, fill)
    h, w = x.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_y = slice(max(0, -dy), h - max(0, dy))
    dst_y = slice(max(0, dy), h - max(0, -dy))
    src_x = slice(max(0, -dx), w - max(0, dx))
    dst_x = slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def shift_grid(radius: int) -> list[tuple[int, int]]:
    """All integer shifts ``(dx, dy)`` with ``|dx| + |dy| <= radius``, the identity first."""
    grid = [(0, 0)]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dx, dy) != (0, 0) and abs(dx) + abs(dy) <= radius:
                grid.append((dx, dy))
    return grid


def check_shifts(shifts: Sequence[tuple[int, int]], x: Tensor) -> list[tuple[int, int]]:
    shifts = [(int(a), int(b)) for a, b in shifts] or [(0, 0)]
    if x.dim() != 4 and any(s != (0, 0) for s in shifts):
        raise PrivacyAttackError("shift augmentations need N x C x H x W image inputs")
    return shifts


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
