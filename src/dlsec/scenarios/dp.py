"""DP training, the front-ends' door to :mod:`dlsec.defenses.dp` (``dlsec train --dp``).

The command layer does not import the defenses; it calls :func:`dp_training`, which checks
nothing more than :func:`dlsec.defenses.dp.dp_train` does and runs it.

Example:
    >>> res = dp_training(load_dataset("digits"), "simplenet", TrainConfig(epochs=5),
    ...                   epsilon=3.0)                                  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.data import Dataset
from dlsec.defenses.dp import DPResult, dp_train
from dlsec.defenses.dp.training import ACCOUNTANTS
from dlsec.training import TrainConfig

__all__ = ["ACCOUNTANTS", "GRAD_SAMPLE_MODES", "dp_record_lines", "dp_training"]

GRAD_SAMPLE_MODES = ("auto", "ghost", "hooks")
"""The per-sample-gradient modes a front-end offers (``auto``: ghost clipping where the
layers allow it, else hooks; :func:`dlsec.defenses.dp.dp_train` takes ``None`` for it)."""

# how far above a gdp target the PRV epsilon may land before the user is told (PRV's own
# numerical error is below 1e-2 at the mesh Opacus uses)
_GDP_SLACK = 1.01


def dp_training(dataset: Dataset, architecture: str, config: TrainConfig, *,
                progress: bool = True, **settings: Any) -> DPResult:
    """Train ``architecture`` on ``dataset`` with DP-SGD; ``settings`` go to
    :func:`dlsec.defenses.dp.dp_train` (``epsilon``, ``delta``, ``noise_multiplier``,
    ``max_grad_norm``, ``fix``, ``accountant``, ``grad_sample_mode``).

    Opacus's GDP accountant is an approximation that can underestimate (Opacus warns so):
    its warning is replaced by one line in ``warnings`` when the PRV epsilon of the run
    exceeds the target it was trained to (measured on digits, 1 epoch, target 3: PRV 5.75).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="GDP accounting is experimental",
                                category=UserWarning)
        res = dp_train(dataset, architecture, config, progress=progress, **settings)
    dp = res.card.training["dp"]
    if dp.get("fixed_layers"):
        res.warnings.extend(_constant_group_norms(res.model, dataset.x_train[:2]))
    target = dp.get("target_epsilon")
    if dp.get("accountant") == "gdp" and target is not None and \
            dp["epsilon_prv"] > _GDP_SLACK * target:
        res.warnings.append(
            f"the gdp accountant's epsilon {target:g} underestimates this run: PRV gives "
            f"{dp['epsilon_prv']:.4g} (Opacus's GDP accounting is approximate; use prv)")
    return res


def _constant_group_norms(model: nn.Module, x: Tensor) -> list[str]:
    """A warning for each GroupNorm of ``model`` whose groups hold one value on ``x``: Opacus
    fixes BatchNorm1d(C) after a Linear layer into GroupNorm(C groups, C), which normalizes
    every feature to 0 and outputs its bias alone (measured: digits accuracy 0.10, chance)."""
    lonely: list[str] = []

    def watch(name: str) -> Any:
        def hook(module: nn.GroupNorm, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if inputs[0][0].numel() == module.num_groups:
                lonely.append(name)
        return hook

    handles = [m.register_forward_hook(watch(name)) for name, m in model.named_modules()
               if isinstance(m, nn.GroupNorm)]
    try:
        with torch.inference_mode():
            model(x.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return [f"layer {name} (GroupNorm from --dp-fix) normalizes groups of one value: it "
            "outputs its bias whatever the input (Opacus's fix suits BatchNorm over image "
            "channels, not features after a Linear layer); drop the layer or use LayerNorm"
            for name in lonely]


def dp_record_lines(training: dict[str, Any]) -> list[str] | None:
    """The lines ``dlsec privacy budget`` prints for a card's ``training`` record, or None
    when the model was not trained with DP."""
    dp = training.get("dp") if isinstance(training, dict) else None
    if not isinstance(dp, dict):
        return None
    order = ("epsilon_prv", "epsilon_rdp", "delta", "target_epsilon", "noise_multiplier",
             "max_grad_norm", "sample_rate", "training_records", "steps", "accountant", "grad_sample_mode",
             "fixed_layers")
    keys = [k for k in order if k in dp] + sorted(k for k in dp if k not in order)
    return [f"{k}: {_show(dp[k])}" for k in keys]


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v) or "none"
    return "none" if v is None else str(v)
