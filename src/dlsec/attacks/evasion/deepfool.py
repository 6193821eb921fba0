"""DeepFool (Moosavi-Dezfooli et al. 2016, "DeepFool: a simple and accurate method to fool
deep neural networks"): walk to the nearest linearized decision boundary, repeatedly.

Threat model: white-box, minimum-norm (no epsilon; ``minimal = True``): the result is a
small perturbation that crosses the boundary, which the epsilon sweep then projects.

At the current point, with ``f'_k = z_k - z_y`` and ``w'_k = grad f'_k`` for the
candidate classes ``k != y``, the closest linearized boundary is
``l = argmin_k |f'_k| / ||w'_k||_*`` (``*``: the dual norm, L2 for L2 and L1 for Linf),
and the step is ``r = |f'_l| / ||w'_l||_2^2 * w'_l`` (L2) or
``|f'_l| / ||w'_l||_1 * sign(w'_l)`` (Linf). Steps accumulate in ``r_tot`` and the
iterate is ``x + (1 + overshoot) r_tot``, clipped to the card's bounds, until the label
changes. On a linear binary model one step is the projection onto the hyperplane.
Coordinates of the iterate already at a bound whose gradient points out of the box are
left out of ``w'`` (the boundary is sought among the moves the box allows): without
this, clipping cancels part of every step and its overshoot, the iterates creep up to
the decision boundary and end on it, and about a quarter of the digits points were left
unfooled (or fooled only by a rounding error).

Defaults follow the paper's code: overshoot 0.02, at most 50 iterations, and the 10
classes with the highest clean logits as candidates (all of them for 10 classes). The
candidate gradients come from one vectorized backward pass per iteration
(``is_grads_batched``), over the whole batch; ``gradients`` counts one per candidate
class and iteration. Fooled points stop computing; a point never fooled is returned
unchanged.

Example:
    >>> res = DeepFool()(model, x, y, card=card)      # doctest: +SKIP
    >>> res.norms[0].median()                          # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dlsec.attacks.core import AttackError, Norm, batch_view
from dlsec.attacks.evasion._base import EvasionAttack, _BatchOutput
from dlsec.attacks.registry import register_attack


@register_attack("deepfool")
class DeepFool(EvasionAttack):
    """DeepFool, L2 (default) or Linf, untargeted.

    Args:
        norm: ``"l2"`` or ``"linf"``.
        steps: the most iterations per point (50).
        overshoot: the factor ``1 + overshoot`` on the accumulated step (0.02).
        candidates: classes considered, the true one included, by clean logit (10).
    """

    name = "deepfool"
    minimal = True

    def __init__(
        self, *, norm: Norm = "l2", steps: int = 50, overshoot: float = 0.02, candidates: int = 10
    ) -> None:
        if norm not in ("linf", "l2"):
            raise AttackError(f"deepfool: norm must be linf or l2, got {norm!r}")
        if steps < 1 or candidates < 2 or overshoot < 0:
            raise AttackError("deepfool: steps >= 1, candidates >= 2, overshoot >= 0")
        self.norm = norm
        self.steps = steps
        self.overshoot = overshoot
        self.candidates = candidates

    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, target: Tensor | None,
        bounds: tuple[float, float], generator: torch.Generator | None,
    ) -> _BatchOutput:
        if target is not None:
            raise AttackError("deepfool is untargeted; call it with targeted=False")
        n, dev = x.shape[0], x.device
        with torch.inference_mode():
            logits0 = model(x)
        k = min(self.candidates, logits0.shape[1]) - 1
        others = logits0.scatter(1, y[:, None], -torch.inf).topk(k, dim=1).indices
        classes = torch.cat([y[:, None], others], 1)  # [n, k + 1], the true class first
        eye = torch.eye(k, device=dev, dtype=x.dtype)

        out = x.clone()
        grads = torch.zeros(n, dtype=torch.int64, device=dev)
        r_tot = torch.zeros_like(x)
        act = torch.arange(n, device=dev)
        scale = 1 + self.overshoot
        for it in range(self.steps + 1):
            xa = (x[act] + scale * r_tot[act]).clamp(*bounds).requires_grad_(True)
            with torch.enable_grad():
                logits = model(xa)
                fooled = logits.argmax(1) != y[act]
                if bool(fooled.any()):
                    out[act[fooled]] = xa.detach()[fooled]
                keep = ~fooled
                if not bool(keep.any()) or it == self.steps:
                    break
                sel = logits.gather(1, classes[act])
                f = sel[:, 1:] - sel[:, :1]  # [m, k]
                m = act.numel()
                (jac,) = torch.autograd.grad(
                    f, xa, grad_outputs=eye[:, None, :].expand(k, m, k), is_grads_batched=True
                )  # [k, m, ...]: the gradient of f'_j for every point
            grads[act] += k
            f, w = f.detach()[keep], jac.transpose(0, 1)[keep].flatten(2)  # [m', k, D]
            # a coordinate at a bound cannot move further out (see the module docstring)
            at = xa.detach()[keep].flatten(1).unsqueeze(1)  # [m', 1, D]
            blocked = ((at <= bounds[0]) & (w < 0)) | ((at >= bounds[1]) & (w > 0))
            w = w.masked_fill(blocked, 0.0)
            act = act[keep]
            dual = w.norm(p=2, dim=2) if self.norm == "l2" else w.abs().sum(2)
            dist = f.abs() / dual.clamp_min(1e-12)
            best = dist.argmin(1)
            wl = w[torch.arange(act.numel(), device=dev), best]  # [m', D]
            fl = f.gather(1, best[:, None]).squeeze(1).abs()
            if self.norm == "l2":
                step = wl * batch_view(fl / wl.pow(2).sum(1).clamp_min(1e-12), wl)
            else:
                step = wl.sign() * batch_view(fl / wl.abs().sum(1).clamp_min(1e-12), wl)
            r_tot[act] += step.view(-1, *x.shape[1:])
        return _BatchOutput(out, out, grads)
