"""DP training, the front-ends' door to :mod:`dlsec.defenses.dp` (``dlsec train --dp``).

The command layer does not import the defenses; it calls :func:`dp_training`, which checks
nothing more than :func:`dlsec.defenses.dp.dp_train` does and runs it.

Example:
    >>> res = dp_training(load_dataset("digits"), "simplenet", TrainConfig(epochs=5),
    ...                   epsilon=3.0)                                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from dlsec.data import Dataset
from dlsec.defenses.dp import DPResult, dp_train
from dlsec.training import TrainConfig


def dp_training(dataset: Dataset, architecture: str, config: TrainConfig, *,
                progress: bool = True, **settings: Any) -> DPResult:
    """Train ``architecture`` on ``dataset`` with DP-SGD; ``settings`` go to
    :func:`dlsec.defenses.dp.dp_train` (``epsilon``, ``delta``, ``noise_multiplier``,
    ``max_grad_norm``, ``fix``, ``accountant``, ``grad_sample_mode``)."""
    return dp_train(dataset, architecture, config, progress=progress, **settings)


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
