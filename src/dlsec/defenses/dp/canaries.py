"""Canaries for the one-run privacy audit (Steinke, Nasr, Jagielski, NeurIPS 2023), planted
in one real training run and scored after it.

The estimator is :mod:`dlsec.attacks.privacy.one_run`; this module makes its inputs. Each of
``m`` canaries is included independently with probability 1/2
(:func:`~dlsec.attacks.privacy.one_run.draw_inclusions`); the run trains on the included
ones only; a score per canary (higher = "more likely included") is turned into guesses and
an epsilon lower bound. Two kinds, each a valid audit on its own, both in one run if wanted:

* **Input-space canaries** (black-box: the auditor sees the final model only),
  :func:`input_canaries`. The default kind is ``"noise"``: inputs drawn uniformly within
  the card's bounds, each with a uniformly random label. They lie far from the data, so the
  real records hardly move the model's loss on them and an included one is memorised on its
  own; nothing is set aside from the data, so any ``m`` fits a small dataset. The
  alternative ``"mislabeled"`` takes images of the validation split (in no model's training
  data; never the test split, which measures accuracy) with a random *wrong* label; it is
  capped at the validation split's size (144 on digits) and measured no tighter there
  (undefended SimpleNet, m=140, k=14, seeds 0-3: bounds 1.43/1.43/0.14/0.86 against
  0.14/0.86/1.43/1.43 for noise canaries; noise at m=400, k=40: 1.30/0.57/0.97/1.30).
  Score: the model's negative cross-entropy
  on the canary's label (:func:`input_canary_scores`). The included canaries are appended to
  the training records of the run (after the train/validation split, so the real records
  stay those :meth:`dlsec.scenarios.context.ScenarioContext.member_indices` finds): the
  DP accountant's ``n`` and sample rate include them, and the DP guarantee covers them.
* **Gradient canaries** (white-box: the auditor controls the loop and sees every privatised
  gradient), :func:`gradient_canaries`. Dirac canaries: canary ``i`` is a gradient equal to
  ``C`` (the clipping norm ``max_grad_norm``) at one coordinate of the model's trainable
  parameters (distinct coordinates, drawn at random) and 0 elsewhere, so it is a valid
  clipped per-sample gradient. :class:`GradientCanaryHook` wraps the Opacus optimizer's own
  ``add_noise``: at every step each included canary is Poisson-sampled with the run's
  sample rate and added to the clipped sum (``p.summed_grad``, where both Opacus's hooks
  optimizer and its ghost-clipping optimizer keep it before noising), then Opacus adds the
  noise; the hook reads the noised gradient at the canary coordinates. Score: the sum over
  steps of that noised coordinate (independent of the optimizer, Adam or SGD).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> c = input_canaries(load_dataset("digits"), 200, generator=g)    # doctest: +SKIP
    >>> c.x.shape, int(c.included.sum()) > 0                              # doctest: +SKIP
    (torch.Size([200, 1, 8, 8]), True)

Notes:
    The guesses depend on the trained model (or the privatised gradients) and on the
    canaries, never on the inclusions, and ``k`` is fixed before training: the estimator's
    validity conditions. The per-step canary sampling uses its own seeded generator (the
    run's data sampling is untouched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.attacks.privacy.one_run import draw_inclusions
from dlsec.errors import DlsecError
from dlsec.training import TrainConfig, TrainResult, evaluate, fit, predict_logits

INPUT_KINDS = ("noise", "mislabeled")


class CanaryError(DlsecError):
    """Bad canary settings (count, kind, guesses)."""


@dataclass(frozen=True)
class InputCanaries:
    """``m`` input-space canaries: inputs ``x``, labels ``y``, which are ``included``."""

    x: Tensor
    y: Tensor
    included: Tensor
    kind: str

    @property
    def m(self) -> int:
        return int(self.included.numel())


@dataclass(frozen=True)
class GradientCanaries:
    """``m`` Dirac gradient canaries: flat ``coordinates`` into the concatenated trainable
    parameters (in ``model.parameters()`` order), which are ``included``, and the seed of
    their per-step Poisson sampling."""

    coordinates: Tensor
    included: Tensor
    sampling_seed: int

    @property
    def m(self) -> int:
        return int(self.included.numel())


@dataclass(frozen=True)
class Canaries:
    """What :func:`dlsec.defenses.dp.dp_train` plants in one run (either, or both)."""

    input: InputCanaries | None = None
    gradient: GradientCanaries | None = None


def check_count(m: int) -> int:
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise CanaryError(f"the number of canaries m must be an integer >= 2, got {m!r}")
    return m


def input_canaries(dataset: Any, m: int, *, generator: torch.Generator, kind: str = "noise",
                   val_fraction: float = 0.1, seed: int = 0) -> InputCanaries:
    """``m`` input-space canaries for ``dataset``, each included with probability 1/2.

    ``kind="noise"``: uniform inputs within ``dataset.bounds`` with uniform labels.
    ``kind="mislabeled"``: the first ``m`` records (in a seeded order) of the validation
    split that ``val_fraction``/``seed`` cut (the split :func:`dlsec.training.fit`'s callers
    take), each with a uniformly drawn wrong label; at most the split's size.
    """
    check_count(m)
    if kind not in INPUT_KINDS:
        raise CanaryError(f"unknown input canary kind {kind!r} (choose from {', '.join(INPUT_KINDS)})")
    n_classes = len(dataset.classes)
    included = draw_inclusions(m, generator=generator)
    if kind == "noise":
        lo, hi = (float(b) for b in dataset.bounds)
        shape = (m, *dataset.x_train.shape[1:])
        x = lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=dataset.x_train.dtype)
        y = torch.randint(n_classes, (m,), generator=generator)
    else:
        from dlsec.data import stratified_split

        if val_fraction <= 0:
            raise CanaryError("mislabeled canaries come from the validation split: val_fraction must be > 0")
        _, val_idx = stratified_split(dataset.y_train, test_size=val_fraction, seed=seed)
        if m > val_idx.numel():
            raise CanaryError(f"m = {m} mislabeled canaries but the validation split holds only "
                          f"{val_idx.numel()} records (use fewer, or noise canaries)")
        pick = val_idx[torch.randperm(val_idx.numel(), generator=generator)[:m]]
        x = dataset.x_train[pick].clone()
        shift = torch.randint(1, n_classes, (m,), generator=generator)
        y = (dataset.y_train[pick] + shift) % n_classes
    return InputCanaries(x=x, y=y.to(dataset.y_train.dtype), included=included, kind=kind)


def gradient_canaries(model: nn.Module, m: int, *, generator: torch.Generator,
                      sampling_seed: int) -> GradientCanaries:
    """``m`` Dirac canaries on distinct random coordinates of ``model``'s trainable
    parameters, each included with probability 1/2."""
    check_count(m)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if m > total:
        raise CanaryError(f"m = {m} gradient canaries but the model has only {total} parameters")
    included = draw_inclusions(m, generator=generator)
    coordinates = torch.randperm(total, generator=generator)[:m]
    return GradientCanaries(coordinates=coordinates, included=included,
                            sampling_seed=int(sampling_seed))


def with_input_canaries(x: Tensor, y: Tensor, canaries: InputCanaries | None) -> tuple[Tensor, Tensor]:
    """The training records ``(x, y)`` with the included canaries appended after them."""
    if canaries is None:
        return x, y
    keep = canaries.included.to(canaries.x.device)
    return (torch.cat([x, canaries.x[keep].to(x.device, x.dtype)]),
            torch.cat([y, canaries.y[keep].to(y.device, y.dtype)]))


def input_canary_scores(model: nn.Module, canaries: InputCanaries) -> Tensor:
    """Negative cross-entropy of ``model`` on each canary's label (float64, on the CPU)."""
    logits = predict_logits(model, canaries.x)
    loss = F.cross_entropy(logits.double(), canaries.y.to(logits.device), reduction="none")
    return (-loss).cpu()


class GradientCanaryHook:
    """Plants :class:`GradientCanaries` in a Opacus ``DPOptimizer`` (hooks or ghost
    clipping) by wrapping that instance's ``add_noise``; :attr:`scores` is the sum over
    steps of the noised gradient at each canary's coordinate; :attr:`additions` counts the
    canaries added at each step (for checking the sampling)."""

    def __init__(self, canaries: GradientCanaries, optimizer: Any, *, sample_rate: float,
                 clip: float) -> None:
        params = list(optimizer.params)
        sizes = torch.tensor([p.numel() for p in params])
        ends = torch.cumsum(sizes, 0)
        if int(canaries.coordinates.max()) >= int(ends[-1]):
            raise CanaryError(f"gradient canary coordinate {int(canaries.coordinates.max())} "
                          f"outside the model's {int(ends[-1])} trainable parameters")
        which = torch.searchsorted(ends, canaries.coordinates, right=True)
        offset = canaries.coordinates - torch.cat([torch.zeros(1, dtype=ends.dtype), ends[:-1]])[which]
        device = params[0].device
        self._groups = [(params[i], (which == i).nonzero().flatten(), offset[which == i].to(device))
                        for i in range(len(params)) if bool((which == i).any())]
        self._included = canaries.included.cpu()
        self._gen = torch.Generator().manual_seed(canaries.sampling_seed)
        self._q, self._clip = float(sample_rate), float(clip)
        self.scores = torch.zeros(canaries.m, dtype=torch.float64)
        self.additions: list[int] = []
        self._original = optimizer.add_noise
        optimizer.add_noise = self._add_noise
        self._optimizer = optimizer

    def _add_noise(self) -> None:
        sampled = self._included & (torch.rand(self._included.numel(), generator=self._gen) < self._q)
        self.additions.append(int(sampled.sum()))
        for p, idx, off in self._groups:
            hits = sampled[idx].to(off.device)
            if bool(hits.any()):
                delta = torch.zeros(p.numel(), dtype=p.summed_grad.dtype, device=p.summed_grad.device)
                delta.index_add_(0, off[hits], torch.full((int(hits.sum()),), self._clip,
                                                          dtype=delta.dtype, device=delta.device))
                p.summed_grad = p.summed_grad + delta.view_as(p.summed_grad)
        self._original()
        for p, idx, off in self._groups:
            self.scores[idx] += p.grad.detach().reshape(-1)[off].double().cpu()

    def remove(self) -> None:
        """Give the optimizer its own ``add_noise`` back."""
        self._optimizer.add_noise = self._original


def train_with_input_canaries(dataset: Any, architecture: str, config: TrainConfig,
                              canaries: InputCanaries, *, progress: bool = True
                              ) -> tuple[nn.Module, Any, TrainResult]:
    """The undefended run: :func:`dlsec.training.fit` on the same train/validation split as
    :func:`dlsec.training.train_model`, with the included canaries appended to the training
    records; the card's ``training["canaries"]`` says how many."""
    from dlsec.data import stratified_split
    from dlsec.models import ModelCard, build_model

    card = ModelCard(architecture=architecture, input_shape=list(dataset.input_shape),
                     classes=list(dataset.classes), bounds=tuple(dataset.bounds),
                     dataset=dataset.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(card, factory=architecture)
    x_tr, y_tr, x_val, y_val = dataset.x_train, dataset.y_train, None, None
    if config.val_fraction > 0:
        tr_idx, val_idx = stratified_split(y_tr, test_size=config.val_fraction, seed=config.seed)
        x_tr, y_tr, x_val, y_val = x_tr[tr_idx], y_tr[tr_idx], x_tr[val_idx], y_tr[val_idx]
    x_all, y_all = with_input_canaries(x_tr, y_tr, canaries)
    result = fit(model, x_all, y_all, config=config, x_val=x_val, y_val=y_val,
                 progress=progress, description="training (with canaries)")
    test = evaluate(model, dataset.x_test, dataset.y_test)
    card.training = {**config.to_dict(), "best_epoch": result.best_epoch,
                     "canaries": canary_record(Canaries(input=canaries))}
    card.metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"]}
    return model, card, result


def canary_record(canaries: Canaries) -> dict[str, Any]:
    """The card's record of the planted canaries: count, included, kind."""
    out: dict[str, Any] = {}
    if canaries.input is not None:
        out["input"] = {"m": canaries.input.m, "included": int(canaries.input.included.sum()),
                        "kind": canaries.input.kind}
    if canaries.gradient is not None:
        out["gradient"] = {"m": canaries.gradient.m,
                           "included": int(canaries.gradient.included.sum()), "kind": "dirac"}
    return out


def default_guesses(m: int, kind: str) -> int:
    """Guesses made by default (half "in", half "out"), fixed by ``m`` alone before training:
    a tenth of the canaries for input canaries, a fifth for gradient canaries (measured on
    digits, see the README)."""
    return max(2, math.floor(m * (0.2 if kind == "gradient" else 0.1)))


__all__ = [
    "INPUT_KINDS",
    "Canaries",
    "CanaryError",
    "GradientCanaries",
    "GradientCanaryHook",
    "InputCanaries",
    "canary_record",
    "check_count",
    "default_guesses",
    "gradient_canaries",
    "input_canaries",
    "input_canary_scores",
    "train_with_input_canaries",
    "with_input_canaries",
]
