"""Boundary restarts: APGD-CE and APGD-T run again, each from new random starts, on the
points still robust that came nearest the decision boundary.

Threat model: white-box, Linf or L2 ball of radius eps, inside the input bounds;
untargeted (targets are a search strategy, as in APGD-T).

Whether APGD fools a point that is barely robust depends on its random start: measured
on PGD-AT digits models, the points one seed fools and another does not are among the
survivors whose best iterate came nearest the boundary (the highest untargeted DLR
loss), and they are what separates two AutoAttack-style runs. The robustness ensemble
(:func:`dlsec.scenarios.whitebox.evaluate_robustness`) therefore gives that small share of
its survivors ``restarts`` more runs of APGD-CE and of APGD-T on each target, instead of
restarting every point as AutoAttack's "plus" version does.

The runs go side by side: each point is copied once per loss, target and restart, and
the copies run as one batch per loss (APGD-CE, then APGD-T on the points it left), so the
cost is that of the sequential runs without their per-iteration overhead; few copies stop
early, as the points already survived each attack once. A point counts as fooled when
any copy fools it (its first fooling copy is returned); otherwise the copy that came
nearest the boundary.

Example:
    >>> cand = boundary_restarts(model, x, y, norm="linf", eps=0.1,              # doctest: +SKIP
    ...                          bounds=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dlsec.attacks.core import AttackError, Norm
from dlsec.attacks.evasion import APGD, APGDT
from dlsec.attacks.evasion.apgd import RunRecord

# rows x input size of one batch of copies (a tensor of 16 MB in float32)
BATCH_ELEMENTS = 2**22


def boundary_restarts(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: Norm, eps: float,
    bounds: tuple[float, float], generator: torch.Generator | None = None, restarts: int = 2,
    n_targets: int = 9, steps: int = 100,
) -> Tensor:
    """``restarts`` more runs of APGD-CE and of APGD-T on each of ``n_targets`` targets
    (fewer when the model has fewer classes; none below the 4 the targeted DLR loss
    needs) for every point of ``x``; returns, per point, its first fooling iterate, else
    the iterate that came nearest the decision boundary."""
    if restarts < 1 or n_targets < 0 or steps < 1:
        raise AttackError("boundary restarts: restarts and steps must be >= 1, n_targets >= 0")
    record = RunRecord(x)
    if x.shape[0] == 0 or eps <= 0:
        return record.out
    with torch.inference_mode():
        order = model(x).argsort(dim=1, descending=True)
    n_t = min(n_targets, order.shape[1] - 1) if order.shape[1] >= 4 else 0
    pts = torch.arange(x.shape[0], device=x.device)
    ce = APGD(norm=norm, loss="ce", steps=steps)
    _copies(ce, model, x, y, pts.repeat_interleave(restarts), None, record, eps, bounds, generator)
    left = pts[~record.done]
    if n_t and left.numel():
        rows = left.repeat_interleave(n_t * restarts)
        ranks = torch.arange(1, n_t + 1, device=x.device).repeat_interleave(restarts)
        targets = order[rows, ranks.repeat(left.numel())]
        apgd_t = APGDT(norm=norm, steps=steps)
        _copies(apgd_t, model, x, y, rows, targets, record, eps, bounds, generator)
    return record.out


def _copies(
    attack: APGD, model: nn.Module, x: Tensor, y: Tensor, rows: Tensor, targets: Tensor | None,
    record: RunRecord, eps: float, bounds: tuple[float, float], generator: torch.Generator | None,
) -> None:
    """Run ``attack`` on the copies ``x[rows]`` (targeted loss on ``targets``, if given) in
    batches of at most :data:`BATCH_ELEMENTS` values, skipping points already fooled."""
    chunk = max(1, BATCH_ELEMENTS // max(1, x[0].numel()))
    for start in range(0, rows.numel(), chunk):
        pt = rows[start : start + chunk]
        tg = None if targets is None else targets[start : start + chunk]
        live = ~record.done[pt]
        pt, tg = pt[live], None if tg is None else tg[live]
        if pt.numel() == 0:
            continue
        adv, fooled, best, g = attack.run(
            model, x[pt], y[pt], eps=eps, bounds=bounds, generator=generator, loss_target=tg
        )
        record.add(model, y, pt, adv, fooled, best, g)
