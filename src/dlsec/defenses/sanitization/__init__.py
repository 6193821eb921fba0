"""Data sanitization: each sanitizer returns a suspicion score per training sample and a
mask of the samples to remove (:class:`SanitizationResult`), scored against an attack's
mask with :func:`detection_metrics`.

=============================== ===================================== ==================
function                        finds                                 needs
=============================== ===================================== ==================
:func:`confident_learning`      flipped / injected labels (cleanlab)  K-fold probs
:func:`knn_consistency`         labels their neighbours disagree with inputs
:func:`loss_outliers`           high out-of-sample loss               K-fold probs
:func:`spectral_signatures`     backdoor poisons                      a trained model
:func:`activation_clustering`   backdoor poisons                      a trained model
=============================== ===================================== ==================

The cost is named too: every sanitizer removes clean samples along with poisons, and the
poisoning scenario (:func:`dlsec.scenarios.poisoning.run_poisoning_experiment`) measures the
accuracy after retraining on what is kept.

Example:
    >>> from dlsec.defenses.sanitization import sanitize, model_factory
    >>> res = sanitize("knn", x, y, num_classes=10, make_model=build, config=cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from dlsec.defenses.sanitization._base import (
    Detection,
    SanitizationError,
    SanitizationResult,
    detection_metrics,
)
from dlsec.defenses.sanitization.activation import activation_clustering
from dlsec.defenses.sanitization.confident_learning import confident_learning
from dlsec.defenses.sanitization.crossval import cross_val_probs, stratified_folds, train_on
from dlsec.defenses.sanitization.dispatch import (
    SANITIZERS,
    SanitizerSettings,
    model_factory,
    sanitize,
)
from dlsec.defenses.sanitization.knn import knn_consistency
from dlsec.defenses.sanitization.loss import loss_outliers
from dlsec.defenses.sanitization.spectral import spectral_signatures

__all__ = ["SANITIZERS", "Detection", "SanitizationError", "SanitizationResult",
           "SanitizerSettings", "activation_clustering", "confident_learning", "cross_val_probs",
           "detection_metrics", "knn_consistency", "loss_outliers", "model_factory", "sanitize",
           "spectral_signatures", "stratified_folds", "train_on"]
