"""The shadow-model attack with an attack classifier (Shokri et al., S&P 2017).

Shokri, Stronati, Song, Shmatikov, "Membership Inference Attacks Against Machine
Learning Models": the attacker trains shadow models that imitate the target on data
of the same distribution, where it knows who was in each shadow's training set, then
trains an *attack classifier* that tells a member's prediction from a non-member's.
Here the shadows are trained on random halves of the attacker's pool
(:func:`~dlsec.attacks.privacy.membership._base.train_shadow_models`); the classifier
is one small MLP over the prediction's sorted top-``k`` log-probabilities, the
logit-scaled true-class confidence and the one-hot label (which lets it learn Shokri's
per-class rules in one model). It is trained with :func:`dlsec.training.fit`.

Threat model: black-box with class scores; the attacker has labeled data from the
target's distribution (disjoint from the records tested) and knows the architecture
and training recipe. One query per tested record.

Example:
    >>> res = shadow_attack(oracle, x, y, shadows=shadows, is_member=m)        # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dlsec.attacks.privacy.membership._base import (
    MembershipResult,
    ShadowModels,
    finish,
    logit_confidence,
    query_probabilities,
)
from dlsec.threat import Oracle
from dlsec.training import TrainConfig, fit, predict_logits


@dataclass
class AttackClassifierConfig:
    """The attack classifier: an MLP with one hidden layer, trained with Adam."""

    hidden: int = 64
    top_k: int = 3
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 128
    seed: int = 0


def attack_features(probs: Tensor, y: Tensor, *, num_classes: int, top_k: int) -> Tensor:
    """``[top-k sorted log p, phi(p, y), one-hot y]`` per row (float32)."""
    p = probs.double()
    k = min(top_k, num_classes)
    top = torch.log(p.topk(k, dim=1).values.clamp_min(1e-30))
    phi = logit_confidence(p, y).clamp(-50, 50).unsqueeze(1)
    onehot = torch.nn.functional.one_hot(y.to(p.device), num_classes).double()
    return torch.cat([top, phi, onehot], 1).float()


def shadow_attack(oracle: Oracle, x: Tensor, y: Tensor, *, shadows: ShadowModels,
                  is_member: Tensor | None = None, config: AttackClassifierConfig | None = None
                  ) -> MembershipResult:
    """Score records with an attack classifier trained on the shadows' in/out predictions."""
    cfg = config or AttackClassifierConfig()
    t0 = time.perf_counter()
    k = oracle.num_classes
    probs_sh = shadows.probabilities(shadows.x)[:, :, 0]  # [M, N, K]
    feats = torch.cat([
        attack_features(probs_sh[m], shadows.y, num_classes=k, top_k=cfg.top_k)
        for m in range(shadows.n_models)
    ])
    labels = shadows.keep.reshape(-1).long().to(feats.device)
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        clf = nn.Sequential(nn.Linear(feats.shape[1], cfg.hidden), nn.ReLU(),
                            nn.Linear(cfg.hidden, 2))
    tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                     val_fraction=0.0, device=str(feats.device))
    fit(clf, (feats - mean) / std, labels, config=tc, progress=False,
        description="attack classifier")
    before = oracle.queries_total
    probs = query_probabilities(oracle, x, attack="the shadow-model attack")
    queries = oracle.queries_total - before
    target = attack_features(probs.to(feats.device), y.to(feats.device), num_classes=k,
                             top_k=cfg.top_k)
    logits = predict_logits(clf, (target - mean) / std).double()
    scores = logits[:, 1] - logits[:, 0]
    return finish("shadow", scores, is_member, queries=queries, t0=t0,
                  n_shadows=shadows.n_models)
