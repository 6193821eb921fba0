"""One entry point for every sanitizer: :func:`sanitize` computes what a method needs
(cross-validated probabilities, or features of a model trained on the suspect data) and
calls it. The CLI, the experiment API and the audit all go through here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from dlsec.defenses.sanitization._base import SanitizationError, SanitizationResult
from dlsec.training import TrainConfig

SANITIZERS = ("cleanlab", "knn", "loss", "spectral", "activation")
"""Method names: label-noise detectors first, backdoor (representation) detectors last."""


@dataclass
class SanitizerSettings:
    """Options of every method (each reads its own)."""

    folds: int = 5
    cleanlab_filter_by: str = "prune_by_noise_rate"
    knn_k: int = 10
    knn_threshold: float = 0.5
    loss_threshold: float | None = None
    spectral_rate: float = 0.33
    spectral_multiplier: float = 1.5
    activation_dims: int = 10
    activation_size_threshold: float = 0.35


def model_factory(architecture: str, *, input_shape: Sequence[int], classes: Sequence[str],
                  bounds: tuple[float, float] = (0.0, 1.0),
                  normalization: dict[str, list[float]] | None = None) -> Callable[[], nn.Module]:
    """A zero-argument builder of fresh, untrained networks of ``architecture``."""
    from dlsec.models import ModelCard, build_model

    card = ModelCard(architecture=architecture, input_shape=list(input_shape),
                     classes=list(classes), bounds=bounds, normalization=normalization)
    return lambda: build_model(card, factory=architecture)  # the caller named it


def sanitize(method: str, x: Tensor, y: Tensor, *, num_classes: int,
             make_model: Callable[[], nn.Module], config: TrainConfig,
             model: nn.Module | None = None, pred_probs: Tensor | None = None,
             settings: SanitizerSettings | None = None, seed: int = 0,
             progress: bool = False) -> SanitizationResult:
    """Run sanitizer ``method`` (one of :data:`SANITIZERS`) on the training set ``(x, y)``.

    ``cleanlab`` and ``loss`` use ``pred_probs`` (K-fold out-of-sample probabilities,
    computed here when not given); ``spectral`` and ``activation`` use the penultimate
    features of ``model`` (a model trained on ``(x, y)``, trained here when not given);
    ``knn`` works in input space.
    """
    from dlsec.defenses.sanitization.activation import activation_clustering
    from dlsec.defenses.sanitization.confident_learning import confident_learning
    from dlsec.defenses.sanitization.crossval import cross_val_probs, train_on
    from dlsec.defenses.sanitization.knn import knn_consistency
    from dlsec.defenses.sanitization.loss import loss_outliers
    from dlsec.defenses.sanitization.spectral import spectral_signatures
    from dlsec.models import penultimate_features

    s = settings or SanitizerSettings()
    if method not in SANITIZERS:
        raise SanitizationError(f"unknown sanitizer {method!r} (choose from {', '.join(SANITIZERS)})")
    if method == "knn":
        return knn_consistency(x, y, k=s.knn_k, threshold=s.knn_threshold)
    if method in ("cleanlab", "loss"):
        if pred_probs is None:
            pred_probs = cross_val_probs(x, y, make_model=make_model, config=config,
                                         num_classes=num_classes, folds=s.folds,
                                         progress=progress)
        if method == "cleanlab":
            return confident_learning(y, pred_probs, filter_by=s.cleanlab_filter_by)
        return loss_outliers(y, pred_probs, threshold=s.loss_threshold)
    if model is None:
        model = train_on(x, y, make_model=make_model, config=config, progress=progress)
    feats = penultimate_features(model, x)
    if method == "spectral":
        return spectral_signatures(feats, y, expected_rate=s.spectral_rate,
                                   multiplier=s.spectral_multiplier)
    return activation_clustering(feats, y, dims=s.activation_dims,
                                 size_threshold=s.activation_size_threshold, seed=seed)
