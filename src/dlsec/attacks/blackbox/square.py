"""Square Attack, Linf and L2 (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack:
a query-efficient black-box adversarial attack via random search").

Threat model: black-box, score-based, untargeted, an Linf or L2 ball of radius ``eps``
inside the oracle's input bounds. Only :meth:`Oracle.query` is used.

Random search on the margin loss ``log s_y - max_{k != y} log s_k`` of the oracle's
scores: each iteration changes the perturbation inside one random square window and
keeps the candidate if the loss went down.

* **Linf** starts from vertical stripes of ``+-eps`` (one random sign per channel and
  column); an update redraws one ``s x s`` square (all channels) to ``+-eps`` (one sign
  per channel), ``s = round(sqrt(p * H * W))``; a draw that would leave the square as it
  is takes the opposite signs instead (the reference code redraws until the square
  changes: for one channel that is the same distribution, without the redraws).
* **L2** starts from a grid of ``H // 5``-sized tiles, each holding the paper's
  two-lobed pseudo-Gaussian bump with a random sign per channel, scaled to norm ``eps``.
  An update picks two windows of side ``s`` (odd, at least 3): the second window's
  perturbation is removed and its mass, together with the norm still unused, is spent on
  a new bump added to the first window's (normalised) perturbation; the whole
  perturbation is then rescaled to norm ``eps`` and clipped to the bounds.

The fraction ``p`` of pixels changed follows the paper's piecewise-constant schedule: it
starts at ``p_init`` (default 0.05 for Linf, 0.1 for L2, the paper's values) and halves
after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000 iterations, rescaled to
the query budget as the reference code does. Defaults: ``max_queries=10_000`` per point.

Queries: the initialization costs one query per point, each iteration one per point still
not fooled; a fooled point or one whose budget is spent is never queried again. A
candidate identical to an input already sent for the point is not sent again: such an
input never beats the current best (the best margin only decreases), so the outcome is
the same with fewer queries (on small images, late iterations often redraw a square tried
before). Each point remembers the last ``memory`` inputs it sent (default: all of them, up
to 4,096) as 64-bit fingerprints (:func:`fingerprint`).

Example:
    >>> oracle = LocalOracle(model, card=card)                        # doctest: +SKIP
    >>> res = SquareAttack(max_queries=1000)(oracle, x, y, eps=0.2,   # doctest: +SKIP
    ...                                      generator=torch.Generator().manual_seed(0))
    >>> sweep = SquareAttack(max_queries=1000)(oracle, x, y, eps=[0.1, 0.2])  # doctest: +SKIP
    >>> res.success_rate, res.median_queries                           # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dlsec.attacks.blackbox._base import (
    BlackBoxAttack,
    BlackBoxResult,
    _affordable,
    _margin,
    _result,
)
from dlsec.attacks.core import AttackError, Norm
from dlsec.attacks.registry import register_attack
from dlsec.threat import Oracle

# (fraction of the 10,000-iteration schedule, divisor of p_init) from the reference code
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256), (10000, 512))


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The paper's schedule: ``p`` at iteration ``it`` of ``n_iters`` (rescaled to 10,000)."""
    i = int(it / n_iters * 10000)
    for upper, div in _SCHEDULE:
        if i <= upper:
            return p_init / div
    return p_init


def _bump_rect(rows: int, cols: int) -> Tensor:
    """Nested rectangles around the centre, ring ``k`` adding ``1 / (k + 1)^2``; unit norm."""
    out = torch.zeros(rows, cols, dtype=torch.float64)
    if rows == 0 or cols == 0:
        return out
    cr, cc = rows // 2, cols // 2
    for k in range(max(cr + 1, cc + 1)):
        r0, c0 = max(cr - k, 0), max(cc - k, 0)
        out[r0 : min(cr - k + 2 * k + 1, rows), c0 : min(cc - k + 2 * k + 1, cols)] += 1.0 / (k + 1) ** 2
    return out / out.norm()


def l2_bump(s: int) -> Tensor:
    """The L2 Square Attack's ``s x s`` update: a positive and a negative pseudo-Gaussian
    lobe stacked vertically (top half ``+``, bottom half ``-``), unit L2 norm."""
    out = torch.cat([_bump_rect(s // 2, s), -_bump_rect(s - s // 2, s)])
    return (out / out.norm()).float()


def _windows(m: int, s: int, h: int, w: int, generator, gen_dev, dev) -> Tensor:
    """``m x 1 x h x w`` masks of one random ``s x s`` window per row."""
    top = torch.randint(0, max(h - s, 1), (m,), generator=generator, device=gen_dev)
    left = torch.randint(0, max(w - s, 1), (m,), generator=generator, device=gen_dev)
    top, left = top.to(dev).view(m, 1, 1, 1), left.to(dev).view(m, 1, 1, 1)
    ar_h = torch.arange(h, device=dev).view(1, 1, h, 1)
    ar_w = torch.arange(w, device=dev).view(1, 1, 1, w)
    return (ar_h >= top) & (ar_h < top + s) & (ar_w >= left) & (ar_w < left + s)


def _place(bump: Tensor, window: Tensor, flip: Tensor) -> Tensor:
    """Write ``bump`` (``s x s``, transposed where ``flip``) into each row's window."""
    m, _, h, w = window.shape
    s = bump.shape[0]
    out = torch.zeros(m, h, w, device=window.device, dtype=bump.dtype)
    vals = torch.where(flip.view(m, 1, 1), bump.t(), bump).reshape(m, s * s)
    out[window[:, 0]] = vals.reshape(-1)  # row-major window order matches the bump's
    return out.unsqueeze(1)


_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment and finalizer constants
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_OFFSETS: dict[tuple[int, str], Tensor] = {}


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(h: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` copies the sign bit)."""
    return (h >> k) & ((1 << (64 - k)) - 1)


def _mix(h: Tensor) -> Tensor:
    """splitmix64's finalizer on int64 bit patterns (a bijection of 64-bit words)."""
    h = (h ^ _shr(h, 30)) * _signed(_MIX1)
    h = (h ^ _shr(h, 27)) * _signed(_MIX2)
    return h ^ _shr(h, 31)


def _offsets(k: int, device: torch.device) -> Tensor:
    """The per-position constants of :func:`fingerprint`: word ``j`` gets ``mix(j * gamma)``."""
    key = (k, str(device))
    if key not in _OFFSETS:
        pos = torch.arange(1, k + 1, dtype=torch.int64, device=device)
        _OFFSETS[key] = _mix(pos * _signed(_GAMMA))
    return _OFFSETS[key]


def fingerprint(x: Tensor) -> Tensor:
    """64-bit fingerprints (``int64``) of the rows of ``x``: equal for equal inputs, on
    any CPU, any device and any batch composition.

    A row's bytes (floats with ``-0.0`` read as ``0.0``), zero-padded to whole 64-bit
    words, are read as words; word ``j`` is offset by a per-position constant and mixed
    with splitmix64's finalizer, and the row's fingerprint is the sum of the mixed words.
    Everything is integer arithmetic modulo ``2**64`` in elementwise operations and one
    sum, so nothing depends on rounding or on the order of a reduction, unlike a
    floating-point projection (the same input in two batch shapes can get two different
    floating-point dot products). Two different inputs share a fingerprint with
    probability about ``2**-64``.
    """
    flat = x.detach().flatten(1)
    if flat.is_floating_point():
        flat = flat + 0.0  # -0.0 + 0.0 is +0.0: the same number, one bit pattern
    if flat.element_size() > 8 or flat.is_complex():
        raise AttackError(f"cannot fingerprint inputs of dtype {flat.dtype}")
    per_word = 8 // flat.element_size()
    pad = -flat.shape[1] % per_word
    if pad:
        flat = torch.cat([flat, flat.new_zeros(flat.shape[0], pad)], 1)
    words = flat.contiguous().view(torch.int64)
    return _mix(words + _offsets(words.shape[1], words.device)).sum(1)


def _norm(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    return t.pow(2).sum(dims, keepdim=True).sqrt()


@register_attack("square")
@dataclass
class SquareAttack(BlackBoxAttack):
    """Score-based Square Attack, Linf or L2 (see the module docstring for the algorithm);
    ``eps`` (at call time) is the radius of the ball in ``norm``."""

    max_queries: int = 10_000
    p_init: float | None = None
    norm: Norm = "linf"
    memory: int | None = None

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise AttackError(f"SquareAttack supports the linf and l2 norms, got {self.norm!r}")
        if self.max_queries < 1:
            raise AttackError(f"max_queries must be >= 1, got {self.max_queries}")
        if self.p_init is None:
            self.p_init = 0.05 if self.norm == "linf" else 0.1
        if not 0 < self.p_init <= 1:
            raise AttackError(f"p_init must be in (0, 1], got {self.p_init}")

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, eps: float | None, ids: Tensor,
             generator: torch.Generator | None, **options: object) -> BlackBoxResult:
        assert eps is not None  # score-based: BlackBoxAttack checked it
        self._eps = eps
        if x.dim() != 4:
            raise AttackError(f"SquareAttack needs image batches N x C x H x W, "
                              f"got {tuple(x.shape)}")
        dev = x.device
        lo, hi = oracle.bounds
        n = x.shape[0]
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        self._gen, self._gen_dev = generator, gen_dev

        queries = torch.zeros(n, dtype=torch.int64, device=dev)
        x_best = (x + self._init(x)).clamp(lo, hi)
        margin = torch.full((n,), float("inf"), device=dev)
        fooled = torch.zeros(n, dtype=torch.bool, device=dev)
        # fingerprints of the inputs sent for each point; slot: how many were stored
        size = max(min(self.max_queries, 4096) if self.memory is None else self.memory, 1)
        seen = torch.zeros((n, size), dtype=torch.int64, device=dev)
        slot = torch.ones(n, dtype=torch.int64, device=dev)
        seen[:, 0] = fingerprint(x_best)
        held = torch.arange(size, device=dev)
        rows = _affordable(oracle, torch.arange(n, device=dev))
        if rows.numel():
            scores = oracle.query(x_best[rows], ids=ids[rows.cpu()]).to(dev)
            margin[rows] = _margin(scores, y[rows])
            fooled[rows] = scores.argmax(1) != y[rows]
            queries[rows] += 1
        for it in range(self.max_queries - 1 if eps > 0 else 0):
            rows = torch.nonzero(~fooled & (queries > 0) & (queries < self.max_queries)).flatten()
            rows = _affordable(oracle, rows)
            if rows.numel() == 0:
                break
            xr, best = x[rows], x_best[rows]
            p = p_selection(float(self.p_init), it, self.max_queries)  # type: ignore[arg-type]
            step = self._linf_step if self.norm == "linf" else self._l2_step
            x_new = step(xr, best - xr, p, lo, hi)
            tag = fingerprint(x_new)
            known = (seen[rows] == tag.unsqueeze(1)) & (held < slot[rows].unsqueeze(1))
            new = ~known.any(1)  # answers not yet known
            rows, x_new, tag = rows[new], x_new[new], tag[new]
            if rows.numel() == 0:
                continue
            scores = oracle.query(x_new, ids=ids[rows.cpu()]).to(dev)
            queries[rows] += 1
            new_margin = _margin(scores, y[rows])
            new_fooled = scores.argmax(1) != y[rows]
            better = (new_margin < margin[rows]) | new_fooled
            keep = rows[better]
            margin[keep] = new_margin[better]
            fooled[keep] = new_fooled[better]
            x_best[keep] = x_new[better]
            seen[rows, slot[rows] % seen.shape[1]] = tag
            slot[rows] += 1
        return _result(x, x_best, fooled, queries)

    # -- randomness ---------------------------------------------------------------------------
    def _signs(self, *shape: int, like: Tensor) -> Tensor:
        s = torch.randint(0, 2, shape, generator=self._gen, device=self._gen_dev)
        return (2 * s - 1).to(like.device, like.dtype)

    # -- initialization -----------------------------------------------------------------------
    def _init(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":
            return self._signs(n, c, 1, w, like=x) * self._eps
        # a grid of two-lobed bumps of side h // 5 with random signs per tile and channel
        s = max(h // 5, 1)
        delta = torch.zeros_like(x)
        start_h, start_w = (h - s * 5) // 2 if h >= 5 else 0, (w - s * 5) // 2 if w >= 5 else 0
        for top in range(max(start_h, 0), h, s):
            for left in range(max(start_w, 0), w, s):
                bump = l2_bump(s)
                bump = bump[: h - top, : w - left].to(x.device, x.dtype)
                sign = self._signs(n, c, 1, 1, like=x)
                delta[:, :, top : top + bump.shape[0], left : left + bump.shape[1]] += bump * sign
        return delta / _norm(delta, (1, 2, 3)).clamp_min(1e-12) * self._eps

    # -- one candidate per row ---------------------------------------------------------------
    def _linf_step(self, xr: Tensor, delta: Tensor, p: float, lo: float, hi: float) -> Tensor:
        m, c, h, w = xr.shape
        s = min(max(round(math.sqrt(p * h * w)), 1), max(min(h, w) - 1, 1))
        window = _windows(m, s, h, w, self._gen, self._gen_dev, xr.device)
        best = (xr + delta).clamp(lo, hi)
        signs = self._signs(m, c, 1, 1, like=xr)
        cand = torch.where(window, signs * self._eps, delta)
        moved = (((xr + cand).clamp(lo, hi) - best).abs() >= 1e-7) & window
        still = ~moved.flatten(1).any(1)
        if bool(still.any()):  # the square already holds these signs: the opposite ones move it
            flip = torch.where(still.view(m, 1, 1, 1), -signs, signs)
            cand = torch.where(window, flip * self._eps, delta)
        return (xr + cand).clamp(lo, hi)

    def _l2_step(self, xr: Tensor, delta: Tensor, p: float, lo: float, hi: float) -> Tensor:
        m, c, h, w = xr.shape
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 if s % 2 == 0 else s, max(min(h, w) - 1, 1))
        win1 = _windows(m, s, h, w, self._gen, self._gen_dev, xr.device)
        win2 = _windows(m, s, h, w, self._gen, self._gen_dev, xr.device)
        flip = torch.rand(m, generator=self._gen, device=self._gen_dev).to(xr.device) > 0.5
        norm_win1 = _norm(delta * win1, (2, 3))  # m x c x 1 x 1
        norm_img = _norm(delta, (1, 2, 3))  # m x 1 x 1 x 1
        norm_both = _norm(delta * (win1 | win2), (2, 3))  # m x c x 1 x 1
        bump = _place(l2_bump(s).to(xr.device, xr.dtype), win1, flip)
        new = bump * self._signs(m, c, 1, 1, like=xr) + delta * win1 / (1e-10 + norm_win1)
        budget = ((self._eps**2 - norm_img**2).clamp_min(0) / c + norm_both**2).sqrt()
        new = new / _norm(new, (2, 3)).clamp_min(1e-12) * budget
        cand = torch.where(win1, new, torch.where(win2, torch.zeros_like(delta), delta))
        cand = cand / _norm(cand, (1, 2, 3)).clamp_min(1e-12) * self._eps
        return (xr + cand).clamp(lo, hi)

