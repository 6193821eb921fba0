"""Optimized label flipping: flip the labels whose flips hurt most, chosen on a surrogate.

Threat model: gray-box. The attacker controls the labels of a ``rate`` share of the
training set (as for random flipping) and owns a surrogate model trained on clean data of
the same task. Uniform label noise is spread thin and largely averaged away by training;
this attack concentrates it where it moves the decision boundary:

1. the surrogate gives each class ``c`` its most confusable class ``t(c)`` (the largest
   mean predicted probability of ``t`` over the samples labelled ``c``);
2. each sample gets the score ``log p_t(c)(x) - log p_c(x)`` (minus the margin: high means
   the sample already lies close to ``t(c)``);
3. samples are flipped ``c -> t(c)`` in decreasing score, greedily, never using a class
   both as a source and as a target (so flips of ``3 -> 8`` and ``8 -> 3`` do not cancel).
   Should the constraint run out of samples before the budget, the rest flip to their
   own ``t(c)`` in score order.

The boundary between ``c`` and ``t(c)`` is pushed into ``c``: test samples of ``c`` close
to ``t(c)`` are lost, which costs far more accuracy than the same number of random flips.
In the spirit of the greedy, surrogate-guided flips of Xiao, Xiao and Eckert, "Adversarial
Label Flips Attack on Support Vector Machines" (ECAI 2012), and the margin-based choice of
Paudice, Muñoz-González and Lupu, "Label Sanitization against Label Flipping Poisoning
Attacks" (2018).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dlsec.attacks.poisoning._base import PoisonResult, check_labels, check_rate, flipped


def flip_scores(surrogate: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(score, target)`` per sample: ``log p_t - log p_y`` and ``t = t(y)`` (see module)."""
    from dlsec.training import predict_logits

    logp = predict_logits(surrogate, x).log_softmax(1)
    y = y.to(logp.device)
    probs = logp.exp()
    confusion = torch.zeros(num_classes, num_classes, device=logp.device)
    confusion.index_add_(0, y, probs)
    confusion.fill_diagonal_(-1.0)
    class_target = confusion.argmax(1)
    target = class_target[y]
    score = logp.gather(1, target[:, None]).squeeze(1) - logp.gather(1, y[:, None]).squeeze(1)
    return score, target


def optimized_flip(x: Tensor, y: Tensor, *, rate: float, surrogate: nn.Module,
                   num_classes: int | None = None) -> PoisonResult:
    """Flip ``round(rate * N)`` labels chosen and relabelled by the surrogate (see module).

    Deterministic given the surrogate (no randomness: ties keep index order).

    Args:
        x, y: the training set (``x`` is returned unchanged).
        rate: share of the samples to flip, in ``[0, 1)``.
        surrogate: a model trained on clean data of the task (the attacker's own).
    """
    check_rate(rate)
    k = check_labels(y, num_classes)
    n = y.numel()
    budget = round(rate * n)
    score, target = flip_scores(surrogate, x, y, k)
    order = torch.sort(score.cpu(), descending=True, stable=True).indices.tolist()
    y_cpu, t_cpu = y.cpu().tolist(), target.cpu().tolist()
    sources: set[int] = set()
    targets: set[int] = set()
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= budget:
            break
        c, t = y_cpu[i], t_cpu[i]
        if c in targets or t in sources:
            continue
        sources.add(c)
        targets.add(t)
        chosen.append(i)
    if len(chosen) < budget:
        taken = set(chosen)
        chosen += [i for i in order if i not in taken][: budget - len(chosen)]
    idx = torch.tensor(chosen, dtype=torch.int64, device=y.device)
    pairs = sorted({(y_cpu[i], t_cpu[i]) for i in chosen})
    return flipped(x, y, idx, target.to(y.device)[idx], "optimized-flip",
                   {"rate": rate, "n_flipped": budget, "pairs": [list(p) for p in pairs]})
