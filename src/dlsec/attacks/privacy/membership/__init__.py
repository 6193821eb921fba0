"""Membership inference: was this record in the model's training data?

Every attack returns a :class:`MembershipResult` with one score per record (higher =
member) and, given the ground truth, the metrics of :mod:`dlsec.attacks.privacy.metrics`.

* :func:`threshold_attack` (loss, confidence, entropy; :func:`loss_attack`) — thresholds
  on one signal (Yeom et al. 2018; Salem et al. 2019);
* :func:`shadow_attack` — shadow models and an attack classifier (Shokri et al. 2017);
* :func:`lira` — the likelihood-ratio attack, online and offline (Carlini et al. 2022);
* :func:`label_only_attack` — robustness to augmentation, labels only
  (Choquette-Choo et al. 2021).
"""

from dlsec.attacks.privacy.membership._base import (
    MembershipResult,
    ShadowModels,
    balanced_membership_set,
    logit_confidence,
    random_halves,
    train_shadow_models,
)
from dlsec.attacks.privacy.membership.label_only import label_only_attack
from dlsec.attacks.privacy.membership.lira import lira, lira_scores
from dlsec.attacks.privacy.membership.shadow import AttackClassifierConfig, shadow_attack
from dlsec.attacks.privacy.membership.threshold import loss_attack, threshold_attack

__all__ = [
    "AttackClassifierConfig",
    "MembershipResult",
    "ShadowModels",
    "balanced_membership_set",
    "label_only_attack",
    "lira",
    "lira_scores",
    "logit_confidence",
    "loss_attack",
    "random_halves",
    "shadow_attack",
    "threshold_attack",
    "train_shadow_models",
]
