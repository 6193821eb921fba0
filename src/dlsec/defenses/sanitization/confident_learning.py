"""Confident learning: labels whose out-of-sample probabilities disagree with them.

Finds mislabeled samples (label flipping, injected mislabeled samples) with cleanlab's
``find_label_issues`` on K-fold cross-validated probabilities: it estimates the joint
distribution of given and true labels and prunes, per class, the samples least likely
to carry their given label. Reference: Northcutt, Jiang and Chuang, "Confident Learning:
Estimating Uncertainty in Dataset Labels" (JAIR 2021). Score: ``1 - p(given label)``
(cleanlab's self-confidence), higher = more suspicious. Default ``filter_by`` is
cleanlab's own (``"prune_by_noise_rate"``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dlsec.defenses.sanitization._base import SanitizationError, SanitizationResult


def confident_learning(
    y: Tensor, pred_probs: Tensor, *, filter_by: str = "prune_by_noise_rate"
) -> SanitizationResult:
    """Flag label issues with ``cleanlab.filter.find_label_issues``.

    Args:
        y: given labels ``N`` (int64).
        pred_probs: ``N x K`` out-of-sample probabilities (see
            :func:`~dlsec.defenses.sanitization.cross_val_probs`).
        filter_by: cleanlab's pruning rule (``prune_by_noise_rate``, ``prune_by_class``,
            ``both``, ``confident_learning``, ``predicted_neq_given``).
    """
    from cleanlab.filter import find_label_issues

    if pred_probs.shape[0] != y.numel():
        raise SanitizationError(f"{pred_probs.shape[0]} probability rows for {y.numel()} labels")
    labels = y.cpu().numpy().astype(np.int64)
    probs = pred_probs.detach().cpu().double().numpy()
    probs = probs / probs.sum(1, keepdims=True)
    issues = find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
    self_conf = probs[np.arange(labels.size), labels]
    return SanitizationResult(
        scores=torch.from_numpy(1.0 - self_conf).float(),
        mask=torch.from_numpy(np.asarray(issues, dtype=bool)),
        method="cleanlab",
        metadata={"filter_by": filter_by},
    )
