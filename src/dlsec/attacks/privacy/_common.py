"""What the privacy attacks share: their error, the oracle check and image shifts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dlsec.attacks.core import AttackError
from dlsec.threat import Oracle


class PrivacyAttackError(AttackError):
    """Bad privacy-attack settings (wrong oracle output kind, empty data, bad sizes)."""


def require_scores(oracle: Oracle, attack: str) -> None:
    """Score-based attacks need probabilities; a label-only oracle cannot serve them."""
    if oracle.output == "label":
        raise PrivacyAttackError(
            f"{attack} needs class scores but the oracle returns labels only "
            "(use the label-only attack, or an oracle with output='scores')"
        )


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
    r = range(-radius, radius + 1)
    return [(0, 0)] + [(dx, dy) for dy in r for dx in r if 0 < abs(dx) + abs(dy) <= radius]


def check_shifts(shifts: Sequence[tuple[int, int]], x: Tensor) -> list[tuple[int, int]]:
    shifts = [(int(a), int(b)) for a, b in shifts] or [(0, 0)]
    if x.dim() != 4 and any(s != (0, 0) for s in shifts):
        raise PrivacyAttackError("shift augmentations need N x C x H x W image inputs")
    return shifts

