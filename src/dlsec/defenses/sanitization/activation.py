"""Activation clustering: within a class, backdoor poisons form their own small cluster of
penultimate-layer activations.

Per class: reduce the activations to ``dims`` dimensions (PCA; the paper uses ICA, offered
as ``reduce="ica"``), split them with 2-means, and call the smaller cluster poisonous when
it holds at most ``size_threshold`` of the class. Score: ``1 - (size of the sample's
cluster / class size)``, so members of small clusters score high; samples are flagged
when their cluster was called poisonous. Reference: Chen et al., "Detecting Backdoor
Attacks on Deep Neural Networks by Activation Clustering" (SafeAI 2019); defaults follow
the paper and ART: ``dims = 10``, 2 clusters, relative size threshold 0.35.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from dlsec.defenses.sanitization._base import SanitizationError, SanitizationResult


def activation_clustering(features: Tensor, y: Tensor, *, dims: int = 10,
                          size_threshold: float = 0.35, reduce: Literal["pca", "ica"] = "pca",
                          seed: int = 0) -> SanitizationResult:
    """Cluster each class's activations in two and flag small clusters (see module).

    Args:
        features: ``N x F`` activations of a model trained on the suspect data.
        y: labels ``N``.
        dims: dimensions kept before clustering.
        size_threshold: the smaller cluster is poisonous at or below this share.
        reduce: ``"pca"`` (default) or ``"ica"`` (FastICA, as in the paper).
        seed: seeds k-means (and ICA).
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA

    if reduce not in ("pca", "ica"):
        raise SanitizationError(f"unknown reduction {reduce!r} (pca, ica)")
    if not 0.0 < size_threshold < 1.0:
        raise SanitizationError(f"size_threshold must be in (0, 1), got {size_threshold}")
    feats = features.detach().double().cpu().numpy()
    labels = y.cpu().numpy()
    scores = np.zeros(labels.size)
    mask = np.zeros(labels.size, dtype=bool)
    flagged_classes = []
    for c in np.unique(labels).tolist():
        idx = np.nonzero(labels == c)[0]
        if idx.size < 4:
            continue
        k = max(1, min(dims, idx.size - 1, feats.shape[1]))
        if reduce == "pca":
            low = PCA(n_components=k, svd_solver="full").fit_transform(feats[idx])
        else:
            low = FastICA(n_components=k, random_state=seed, max_iter=400).fit_transform(feats[idx])
        assign = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(low)
        sizes = np.bincount(assign, minlength=2) / idx.size
        scores[idx] = 1.0 - sizes[assign]
        small = int(np.argmin(sizes))
        if sizes[small] <= size_threshold:
            mask[idx[assign == small]] = True
            flagged_classes.append(int(c))
    return SanitizationResult(
        scores=torch.from_numpy(scores).float(), mask=torch.from_numpy(mask),
        method="activation",
        metadata={"dims": dims, "size_threshold": size_threshold, "reduce": reduce,
                  "flagged_classes": flagged_classes},
    )
