"""What every audit section reads: the model, its card, the data, settings, earlier results.

A remote audit (``dlsec audit --url``) has ``remote`` set: the oracle factory of the served
model; ``model`` is then a :class:`dlsec.scenarios.context.RemoteModel` (labels only, no
weights) and ``card`` the server's input contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dlsec.audit.config import AuditConfig
from dlsec.audit.result import SectionResult
from dlsec.data import Dataset
from dlsec.executor import Executor, SequentialExecutor
from dlsec.models import ModelCard
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios.context import OracleFactory
from dlsec.threat import ThreatModel


@dataclass
class AuditContext:
    """Shared, read-only inputs of the sections. Sections must not modify the model.
    ``executor``: where independent trainings run (``--workers``, ``--ray-address``);
    every :meth:`scenario` carries it."""

    config: AuditConfig
    dataset: Dataset
    model: nn.Module
    card: ModelCard
    device: torch.device
    run_dir: Path
    history: list[dict[str, float]] | None = None
    results: dict[str, SectionResult] = field(default_factory=dict)
    progress: bool = True
    remote: OracleFactory | None = None
    executor: Executor = field(default_factory=SequentialExecutor)

    def scenario(self, threat: ThreatModel | None = None) -> ScenarioContext:
        """The context a scenario runs in: this audit's model, card, data, seed and device."""
        return ScenarioContext(
            model=self.model, card=self.card, dataset=self.dataset, threat=threat,
            seed=self.config.seed, device=self.device, progress=self.progress,
            remote=self.remote, executor=self.executor,
        )
