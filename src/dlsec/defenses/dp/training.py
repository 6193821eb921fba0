"""DP-SGD (Abadi et al. 2016) on Opacus 1.6's ``PrivacyEngine``, trained by dlsec's ``fit``.

Opacus makes the model, optimizer and data loader private; dlsec's one training loop runs
them through its seams: ``make_optimizer`` hands back Opacus's ``DPOptimizer`` (per-sample
clipping to ``max_grad_norm`` and Gaussian noise), ``batch_loss`` goes through Opacus's
ghost-clipping criterion where the layers allow it, and ``sampler`` draws Opacus's Poisson
batches (each record in a batch independently with probability ``q``), the sampling the
accountant's guarantee assumes. Fixed-size shuffled batches with a Poisson accountant would
be a silent privacy bug.

Example:
    >>> from dlsec.data import load_dataset
    >>> from dlsec.defenses.dp import dp_train
    >>> from dlsec.training import TrainConfig
    >>> ds = load_dataset("digits")
    >>> res = dp_train(ds, "simplenet", TrainConfig(epochs=5, lr=1e-2), epsilon=3.0)
    >>> res.card.training["dp"]["epsilon_prv"] <= 3.0
    True

Notes:
    The noise and the sampler are seeded (``config.seed``) so runs reproduce; that is not
    Opacus's ``secure_mode`` (a cryptographically secure generator), which a deployment
    that publishes the model should use instead.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from dlsec.defenses.dp.canaries import (
    Canaries,
    GradientCanaryHook,
    canary_record,
    input_canary_scores,
    with_input_canaries,
)
from dlsec.errors import DlsecError
from dlsec.training import (
    BatchLoss,
    TrainConfig,
    TrainResult,
    cross_entropy_loss,
    default_optimizer,
    distributed_context,
    evaluate,
    fit,
    resolve_device,
)

log = logging.getLogger(__name__)

ACCOUNTANTS = ("prv", "rdp", "gdp")
GradSampleMode = Literal["ghost", "hooks"]


class DPError(DlsecError):
    """Bad differential-privacy settings, or a model DP-SGD cannot train."""


@dataclass
class DPResult:
    """A DP-trained model, its card (``card.training["dp"]``), the history, and the lines
    worth telling the user (which per-sample-gradient mode and why; warnings)."""

    model: nn.Module
    card: Any
    result: TrainResult
    mode_line: str
    warnings: list[str] = field(default_factory=list)
    # the accountant's history: (noise multiplier, sample rate, steps) per make_private
    accountant_history: list[tuple[float, float, int]] = field(default_factory=list)
    # planted canaries (``dp_train(canaries=...)``): a score per canary, "input" and/or
    # "gradient" (higher = more likely included), and the gradient canaries added per step
    canary_scores: dict[str, Tensor] = field(default_factory=dict)
    canary_additions: list[int] = field(default_factory=list)


def _check(epsilon: float | None, delta: float, noise_multiplier: float | None,
           max_grad_norm: float, accountant: str, grad_sample_mode: str | None) -> None:
    if epsilon is None and noise_multiplier is None:
        raise DPError("give a target epsilon or a noise multiplier")
    if epsilon is not None and noise_multiplier is not None:
        raise DPError("give a target epsilon or a noise multiplier, not both")
    if epsilon is not None and not (math.isfinite(epsilon) and epsilon > 0):
        raise DPError(f"epsilon must be > 0, got {epsilon:g}")
    if not (0.0 < delta < 1.0):
        raise DPError(f"delta must be in (0, 1), got {delta:g}")
    if noise_multiplier is not None and not (math.isfinite(noise_multiplier)
                                             and noise_multiplier >= 0):
        raise DPError(f"noise multiplier must be >= 0, got {noise_multiplier:g}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise DPError(f"max-grad-norm must be > 0, got {max_grad_norm:g}")
    if accountant not in ACCOUNTANTS:
        raise DPError(f"unknown accountant {accountant!r} (choose from {', '.join(ACCOUNTANTS)})")
    if grad_sample_mode not in ("ghost", "hooks", None):
        raise DPError(f"unknown grad_sample_mode {grad_sample_mode!r} (ghost, hooks or auto)")


def _trainable_leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if not list(m.children()) and any(p.requires_grad for p in m.parameters(recurse=False))]


def _validate(model: nn.Module, *, fix: bool) -> tuple[nn.Module, list[str]]:
    """``model`` checked by Opacus's ``ModuleValidator``: unsupported layers refused with
    their names, or (``fix``) replaced (BatchNorm -> GroupNorm); returns the replaced ones."""
    from opacus.validators import ModuleValidator

    bad = [(name or "<model>", type(m).__name__) for name, m in model.named_modules()
           if not list(m.children()) and ModuleValidator.validate(m, strict=False)]
    if not bad and not ModuleValidator.validate(model, strict=False):
        return model, []
    if not fix:
        names = ", ".join(f"{n} ({t})" for n, t in bad) or "the model"
        raise DPError(f"DP-SGD cannot train layer(s) {names}: per-sample gradients need "
                      "layers that do not mix samples (use --dp-fix to replace BatchNorm "
                      "with GroupNorm)")
    fixed = ModuleValidator.fix(model)
    left = ModuleValidator.validate(fixed, strict=False)
    if left:
        raise DPError(f"DP-SGD cannot train this model even after fixing: {str(left[0]).splitlines()[0]}")
    after = dict(fixed.named_modules())
    return fixed, [f"{n}: {t} -> {type(after[n]).__name__}" if n in after else f"{n}: {t}"
                   for n, t in bad]


def _choose_mode(model: nn.Module, requested: GradSampleMode | None) -> tuple[GradSampleMode, str]:
    """Ghost clipping (Li et al. 2022; Opacus's ``grad_sample_mode="ghost"``: per-sample
    gradient norms without per-sample gradients) where every trainable layer has a ghost
    norm sampler or an Opacus grad sampler (the ghost module instantiates per-sample
    gradients for the latter, e.g. Conv2d; measured faster than hooks all the same: 348
    against 524 ms per digits epoch of SmallCNN), else Opacus's hooks (functorch for layers
    Opacus has no sampler for); the line says which and why."""
    from opacus.grad_sample import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping as Ghost

    leaves = _trainable_leaves(model)
    per_sample = [f"{n} ({type(m).__name__})" for n, m in leaves
                  if type(m) not in Ghost.NORM_SAMPLERS and type(m) in GradSampleModule.GRAD_SAMPLERS]
    unknown = [f"{n} ({type(m).__name__})" for n, m in leaves
               if type(m) not in Ghost.NORM_SAMPLERS and type(m) not in GradSampleModule.GRAD_SAMPLERS]
    why = ("; per-sample gradients for " + ", ".join(per_sample)) if per_sample else ""
    if requested == "hooks":
        return "hooks", "per-sample gradients: hooks (requested)"
    if requested == "ghost":
        return "ghost", f"per-sample gradients: ghost clipping (requested{why})"
    if unknown:
        return "hooks", (f"per-sample gradients: hooks (Opacus has no ghost or per-sample "
                         f"sampler for {', '.join(unknown)})")
    if per_sample:
        return "ghost", f"per-sample gradients: ghost clipping (norms where Opacus has them{why})"
    return "ghost", "per-sample gradients: ghost clipping (every trainable layer is ghost-clippable)"


def poisson_sampler(n: int, sample_rate: float, generator: torch.Generator) -> Any:
    """Opacus's Poisson sampler over ``n`` records: ``1/sample_rate`` batches per epoch,
    each record in each batch independently with probability ``sample_rate``."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    return UniformWithReplacementSampler(num_samples=n, sample_rate=sample_rate,
                                         generator=generator)


def dp_train(
    dataset: Any,
    architecture: str,
    config: TrainConfig,
    *,
    epsilon: float | None = None,
    delta: float = 1e-5,
    noise_multiplier: float | None = None,
    max_grad_norm: float = 1.0,
    accountant: str = "prv",
    fix: bool = False,
    grad_sample_mode: GradSampleMode | None = None,
    model: nn.Module | None = None,
    canaries: Canaries | None = None,
    progress: bool = True,
) -> DPResult:
    """Train ``architecture`` on ``dataset`` with DP-SGD; return the model, its card
    (``card.training["dp"]``: epsilon under PRV and RDP, delta, noise multiplier, clipping
    norm, sample rate, steps, accountant, per-sample-gradient mode, fixed layers) and the
    history.

    ``epsilon``: a target over ``config.epochs`` (Opacus's ``make_private_with_epsilon``
    finds the noise multiplier); else ``noise_multiplier``. The expected batch is
    ``config.batch_size`` (sample rate ``1/ceil(n/batch_size)``, Opacus's rule). Sampling
    and noise are seeded by ``config.seed``. ``model`` trains a prebuilt network (its card
    names ``architecture``) instead of building one. Errors are :class:`DPError`, raised
    before any training.

    ``canaries`` (:mod:`dlsec.defenses.dp.canaries`) plants a one-run audit's canaries in
    this run: the included input canaries are appended to the training records after the
    train/validation split (the sample rate and ``training_records`` count them), the
    included gradient canaries are Poisson-sampled at the run's sample rate and added to the
    clipped sum before Opacus's noise; ``DPResult.canary_scores`` holds their scores and
    ``card.training["dp"]["canaries"]`` their counts. ``noise_multiplier=0`` (clipping
    without noise, e.g. for an audit's no-privacy reference) records epsilon as infinite.
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from dlsec.data import stratified_split
    from dlsec.models import ModelCard, build_model

    _check(epsilon, delta, noise_multiplier, max_grad_norm, accountant, grad_sample_mode)
    device = resolve_device(config.device)
    if distributed_context(device) is not None:
        raise DPError("DP-SGD does not run under torchrun yet (one process only): Opacus's "
                      "DPDDP and a per-rank Poisson sampler are still to come")
    if config.amp != "off":
        raise DPError(f"DP-SGD trains in float32 only (amp={config.amp!r}): per-sample "
                      "gradients and their clipping are not checked under autocast; use amp=off")
    card = ModelCard(architecture=architecture, input_shape=list(dataset.input_shape),
                     classes=list(dataset.classes), bounds=tuple(dataset.bounds),
                     dataset=dataset.name)
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(card, factory=architecture)
    model, fixed = _validate(model, fix=fix)
    mode, mode_line = _choose_mode(model, grad_sample_mode)
    log.info(mode_line)

    x_tr, y_tr, x_val, y_val = dataset.x_train, dataset.y_train, None, None
    if config.val_fraction > 0:
        tr_idx, val_idx = stratified_split(y_tr, test_size=config.val_fraction, seed=config.seed)
        x_tr, y_tr, x_val, y_val = x_tr[tr_idx], y_tr[tr_idx], x_tr[val_idx], y_tr[val_idx]
    canaries = canaries or Canaries()
    x_tr, y_tr = with_input_canaries(x_tr, y_tr, canaries.input)
    n = int(x_tr.shape[0])
    notes: list[str] = []
    if delta >= 1.0 / n:
        notes.append(f"delta {delta:g} >= 1/n = {1.0 / n:.3g} ({n} training records): a "
                        "mechanism that publishes one record outright meets it; use delta < 1/n")
    model.to(device)
    sample_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed ^ 0x5DEECE66D)
    loader = DataLoader(TensorDataset(x_tr, y_tr), batch_size=config.batch_size,
                        generator=sample_gen)
    kwargs: dict[str, Any] = dict(
        module=model, optimizer=default_optimizer(model, config), data_loader=loader,
        max_grad_norm=max_grad_norm, noise_generator=noise_gen, grad_sample_mode=mode,
        criterion=nn.CrossEntropyLoss(), poisson_sampling=True,
    )
    with warnings.catch_warnings():
        for quiet in _OPACUS_NOISE:
            warnings.filterwarnings("ignore", message=quiet, category=UserWarning)
        engine = PrivacyEngine(accountant=accountant)
        return _private_fit(engine, kwargs, model=model, card=card, dataset=dataset,
                            config=config, data=(x_tr, y_tr, x_val, y_val), epsilon=epsilon,
                            delta=delta, accountant=accountant, mode=mode,
                            mode_line=mode_line, fixed=fixed, notes=notes, progress=progress,
                            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                            canaries=canaries)


# Opacus's warnings that say nothing to a dlsec user: the secure-RNG reminder (the module
# notes say it), the full-backward-hook notice of ghost clipping, RDP's alpha range.
_OPACUS_NOISE = ("Secure RNG turned off", "Full backward hook is firing",
                 "Optimal order is the largest alpha")


def _private_fit(engine: Any, kwargs: dict[str, Any], *, model: nn.Module, card: Any,
                 dataset: Any, config: TrainConfig,
                 data: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
                 epsilon: float | None, delta: float, accountant: str, mode: GradSampleMode,
                 mode_line: str, fixed: list[str], notes: list[str], progress: bool,
                 noise_multiplier: float | None, max_grad_norm: float,
                 canaries: Canaries) -> DPResult:
    from opacus.accountants import RDPAccountant

    x_tr, y_tr, x_val, y_val = data
    n = int(x_tr.shape[0])
    try:
        if epsilon is not None:
            made = engine.make_private_with_epsilon(
                target_epsilon=epsilon, target_delta=delta, epochs=config.epochs, **kwargs)
        else:
            made = engine.make_private(noise_multiplier=noise_multiplier, **kwargs)
    except ValueError as e:
        if epsilon is None:
            raise
        raise DPError(f"target epsilon {epsilon:g} (delta {delta:g}) is unreachable in "
                      f"{config.epochs} epochs of batch {config.batch_size} on {n} records "
                      f"({str(e).splitlines()[0]}): raise epsilon or lower the epochs") from None
    batch_loss: BatchLoss = cross_entropy_loss
    if mode == "ghost":
        private, optimizer, criterion, dp_loader = made

        def ghost_loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            # Opacus's DPTensorFastGradientClipping: its backward() runs ghost clipping's
            # two passes; fit only calls backward() and detach() on it
            return cast(Tensor, criterion(m(x), y))

        batch_loss = ghost_loss
    else:
        private, optimizer, dp_loader = made
    sampler = dp_loader.batch_sampler
    hook = (GradientCanaryHook(canaries.gradient, optimizer, sample_rate=sampler.sample_rate,
                               clip=max_grad_norm) if canaries.gradient is not None else None)

    def batches(epoch: int) -> Iterator[list[int]]:
        return iter(sampler)

    try:
        result = fit(private, x_tr, y_tr, config=config, x_val=x_val, y_val=y_val,
                     batch_loss=batch_loss, make_optimizer=lambda m, c: optimizer,
                     sampler=batches, progress=progress, description="DP training")
    finally:
        if hook is not None:
            hook.remove()
        private.remove_hooks()
        for p in model.parameters():
            p.grad_sample = None  # type: ignore[attr-defined]
    rdp = RDPAccountant()
    rdp.history = list(engine.accountant.history)
    test = evaluate(model, dataset.x_test, dataset.y_test)
    noiseless = float(optimizer.noise_multiplier) == 0.0  # no privacy: PRV cannot say inf
    card.training = {**config.to_dict(), "best_epoch": result.best_epoch, "dp": {
        "epsilon_prv": math.inf if noiseless else
        float(engine.get_epsilon(delta)) if accountant == "prv" else
        float(_prv_epsilon(engine.accountant.history, delta)),
        "epsilon_rdp": math.inf if noiseless else float(rdp.get_epsilon(delta)),
        "delta": delta,
        "noise_multiplier": float(optimizer.noise_multiplier),
        "max_grad_norm": max_grad_norm,
        "sample_rate": float(sampler.sample_rate),
        "training_records": n,
        "steps": int(sum(steps for _, _, steps in engine.accountant.history)),
        "accountant": accountant,
        "target_epsilon": epsilon,
        "grad_sample_mode": mode,
        "fixed_layers": fixed,
        **({"canaries": canary_record(canaries)} if canaries.input or canaries.gradient else {}),
    }}
    card.metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"]}
    if result.history:
        last = result.history[result.best_epoch - 1] if result.best_epoch else result.history[-1]
        for key in ("train_accuracy", "val_accuracy"):
            if key in last:
                card.metrics[key] = last[key]
    scores: dict[str, Tensor] = {}
    if canaries.input is not None:
        scores["input"] = input_canary_scores(model.eval(), canaries.input)
    if hook is not None:
        scores["gradient"] = hook.scores
    return DPResult(model=model.eval(), card=card, result=result, mode_line=mode_line,
                    warnings=notes, accountant_history=list(engine.accountant.history),
                    canary_scores=scores, canary_additions=hook.additions if hook else [])


def _prv_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    prv = PRVAccountant()
    prv.history = list(history)
    return float(prv.get_epsilon(delta))
