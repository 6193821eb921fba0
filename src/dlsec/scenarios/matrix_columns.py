"""The columns of the defense x attack matrix and the threats they measure.

One row per defended variant of the model (:mod:`dlsec.scenarios.defended`), one column per
measurement; :data:`THREATS` are the seed's threats the scorecard rates, each read off one
column of the matrix (``primary``) and, without a matrix, off a metric of the audit's own
sections. Front-ends (the audit's ``defenses`` section, the scorecard, the report) read
these definitions instead of repeating them.

Example:
    >>> COLUMN["membership_auc"].better
    'lower'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One measurement of every row: ``key`` (the metric is ``defenses.<key>@<defense>``),
    ``label`` (the table header), ``threat`` (a :data:`THREATS` key, None for cost and
    reference columns), ``better`` (``higher`` or ``lower``), ``unit`` (``rate``: a share
    in [0, 1] with an interval; ``auc``: an ROC AUC with a bootstrap interval;
    ``difference``: a drop in accuracy; ``seconds``)."""

    key: str
    label: str
    threat: str | None
    better: str
    unit: str = "rate"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS: tuple[Column, ...] = (
    Column("clean_accuracy", "clean accuracy", None, "higher"),
    Column("whitebox_robust_accuracy", "white-box robust accuracy", "whitebox", "higher"),
    Column("blackbox_robust_accuracy", "black-box robust accuracy", "blackbox", "higher"),
    Column("transfer_success", "transfer success", "transfer", "lower"),
    Column("backdoor_success", "backdoor success", "backdoor", "lower"),
    Column("label_flip_damage", "label-flip damage", "poisoning", "lower", "difference"),
    Column("membership_auc", "membership AUC", "membership", "lower", "auc"),
    Column("membership_tpr_at_1_fpr", "membership TPR @ 1% FPR", "membership", "lower"),
    Column("inversion_accuracy", "inversion accuracy", "inversion", "lower"),
    Column("extraction_fidelity", "extraction fidelity", "extraction", "lower"),
    Column("train_seconds", "training time (s)", None, "lower", "seconds"),
)
COLUMN: dict[str, Column] = {c.key: c for c in COLUMNS}


@dataclass(frozen=True)
class Threat:
    """A threat of the seed as the scorecard rates it: ``primary`` is its matrix column."""

    key: str
    label: str
    primary: str


THREATS: tuple[Threat, ...] = (
    Threat("whitebox", "white-box evasion", "whitebox_robust_accuracy"),
    Threat("blackbox", "black-box evasion", "blackbox_robust_accuracy"),
    Threat("transfer", "transfer evasion", "transfer_success"),
    Threat("poisoning", "poisoning (label flips)", "label_flip_damage"),
    Threat("backdoor", "backdoor", "backdoor_success"),
    Threat("membership", "membership inference", "membership_auc"),
    Threat("inversion", "model inversion", "inversion_accuracy"),
    Threat("extraction", "model extraction", "extraction_fidelity"),
)

__all__ = ["COLUMN", "COLUMNS", "THREATS", "Column", "Threat"]
