"""What every scenario starts from: the model, its card, the data, the threat model, a seed.

:class:`ScenarioContext` is built once by a front-end (an audit section, a CLI command, a
benchmark) and handed to a scenario function. Its seed streams are named by strings
(``ctx.generator("blackbox/square")``, seeded by a hash of the run's seed and the name):
two uses cannot collide by accident, and a reader sees what each stream is for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.data import Dataset, stratified_split
from dlsec.models import ModelCard
from dlsec.threat import LocalOracle, ThreatModel

SEED_BITS = 63


def stream_seed(seed: int, stream: str) -> int:
    """The seed of the stream named ``stream`` in a run seeded ``seed``: the first 63 bits of
    ``sha256("<seed>/<stream>")``. Example: ``stream_seed(0, "a") != stream_seed(0, "b")``."""
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


@dataclass
class ScenarioContext:
    """Shared, read-only inputs of a scenario. Scenarios must not modify the model.

    ``threat`` carries what the attacker knows and may do (knowledge, norm, epsilons,
    targeted, bounds); its bounds are the card's unless the caller says otherwise.
    """

    model: nn.Module
    card: ModelCard
    dataset: Dataset
    threat: ThreatModel | None = None
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False

    def __post_init__(self) -> None:
        if self.threat is None:
            self.threat = ThreatModel.from_card(self.card)

    # -- randomness ------------------------------------------------------------------------
    def seed_for(self, stream: str) -> int:
        """The integer seed of the named stream (for APIs that take a seed, not a generator)."""
        return stream_seed(self.seed, stream)

    def generator(self, stream: str) -> torch.Generator:
        """A fresh CPU generator for the named stream; the same name gives the same numbers."""
        return torch.Generator().manual_seed(self.seed_for(stream))

    # -- the model's views ------------------------------------------------------------------
    def oracle(self, **kwargs: Any) -> LocalOracle:
        """A fresh black-box view of the model (see :class:`dlsec.threat.BaseOracle`)."""
        return LocalOracle(self.model, card=self.card, **kwargs)

    # -- data the threat needs ----------------------------------------------------------------
    def member_indices(self) -> Tensor:
        """Indices into the training split of the records the model trained on: the split
        minus the validation share the card's :class:`dlsec.models.TrainingRecord` states
        (the same stratified split, same seed, that :func:`dlsec.training.fit` took)."""
        record = self.card.training_record
        n = self.dataset.y_train.shape[0]
        if record.val_fraction <= 0 or n < 2:
            return torch.arange(n)
        idx, _ = stratified_split(
            self.dataset.y_train, test_size=record.val_fraction, seed=record.seed
        )
        return idx

    def attacker_split(self, n_attacked: int) -> tuple[Tensor, Tensor]:
        """The test split cut in two: the first ``n_attacked`` indices are the points under
        attack, the rest is data the attacker may hold (never the points it attacks)."""
        n = self.dataset.y_test.shape[0]
        k = max(0, min(int(n_attacked), n))
        return torch.arange(k), torch.arange(k, n)


__all__ = ["ScenarioContext", "stream_seed"]
