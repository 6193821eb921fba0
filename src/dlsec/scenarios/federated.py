"""Federated learning under attack: Flower federations with malicious clients, the front-ends'
door to :mod:`dlsec.defenses.federated` (``dlsec federate``).

A federation is a partition of the training set over ``clients`` clients, ``rounds``
rounds of one of Flower's strategies, and a seeded share of malicious clients running one
attack. :func:`run_federations` runs several such cells (same partition, same clients,
same malicious draw per fraction) in one start of Flower's simulation engine, whose
start-up (Ray) costs far more than a small federation's rounds.

Example:
    >>> res = run_federation(load_dataset("digits"), "simplenet", clients=10, rounds=20,
    ...                      strategy="krum", malicious=0.3, attack="sign-flip")  # doctest: +SKIP
    >>> res.metrics["final_accuracy"]                                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dlsec.data import Dataset
from dlsec.defenses.federated import (
    check_attack,
    choose_malicious,
    default_scale,
    malicious_count,
    parse_partition,
    partition,
)
from dlsec.errors import DlsecError
from dlsec.models import ModelCard
from dlsec.scenarios.context import stream_seed
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.training import TrainConfig, resolve_device

STRATEGY_NAMES = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


class FederatedScenarioError(DlsecError):
    """Bad settings of a federation (counts, rates)."""


@dataclass(frozen=True)
class FederationCell:
    """One federation: a strategy against ``malicious`` (a fraction of the clients)
    running ``attack`` (ignored at fraction 0) with ``scale`` (None: the attack's default)."""

    strategy: str
    malicious: float = 0.0
    attack: str = "sign-flip"
    scale: float | None = None

    @property
    def key(self) -> str:
        """``fedavg`` for an honest federation, ``krum_sign-flip_0.3`` otherwise."""
        if self.malicious == 0:
            return self.strategy
        return f"{self.strategy}_{self.attack}_{self.malicious:g}"


def _apps() -> Any:
    """:mod:`dlsec.defenses.federated.apps`, or a one-line error when Flower (an optional
    extra, it brings Ray) is not installed."""
    try:
        from dlsec.defenses.federated import apps
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("flwr", "ray"):
            raise
        raise FederatedScenarioError(
            "federated learning needs Flower: pip install 'dlsec[federated]' "
            "(flwr[simulation]==1.42.0, with Ray)") from None
    return apps


def check_federation(cells: Sequence[FederationCell], *, clients: int, rounds: int,
                     local_epochs: int = 1, partition_spec: str = "iid",
                     n_train: int | None = None) -> None:
    """Every setting a federation needs, checked before any work (one-line errors):
    strategies, attacks, fractions the strategies tolerate, the partition, counts, and
    (when ``n_train`` is given) at least one training record per client."""
    tolerance_error = _apps().tolerance_error
    parse_partition(partition_spec)
    if clients < 2:
        raise FederatedScenarioError(f"--clients must be at least 2, got {clients}")
    if n_train is not None and n_train < clients:
        raise FederatedScenarioError(
            f"{n_train} training records cannot be shared by {clients} clients (every client "
            f"needs at least one; use at most {n_train} clients)")
    if rounds < 1 or local_epochs < 1:
        raise FederatedScenarioError("--rounds and --local-epochs must be at least 1")
    for cell in cells:
        if cell.strategy not in STRATEGY_NAMES:
            raise FederatedScenarioError(f"unknown strategy {cell.strategy!r} (choose from "
                                         f"{', '.join(STRATEGY_NAMES)})")
        check_attack(cell.attack)
        reason = tolerance_error(cell.strategy, clients, malicious_count(clients, cell.malicious))
        if reason:
            raise FederatedScenarioError(reason)


def run_federations(dataset: Dataset, architecture: str, cells: Sequence[FederationCell], *,
                    clients: int = 10, rounds: int = 20, partition_spec: str = "iid",
                    local_epochs: int = 1, lr: float = 0.1, batch_size: int = 16,
                    seed: int = 0, device: str = "cpu", workers: int = 1,
                    progress: bool = True) -> ScenarioResult:
    """Run each cell as its own federation on Flower's simulation engine (one start).

    Clients train with SGD (``lr``, no momentum, ``local_epochs`` per round, batches of
    ``batch_size``) on their partition; the server evaluates the global model on the test
    split after every round. Metrics: ``<cell.key>_accuracy`` (final test accuracy) per
    cell; figures: ``accuracy_per_round`` (cell key -> list, round 0 first).
    """
    from rich.progress import Progress

    apps = _apps()
    FederationPlan, Threat, make_strategy, simulate = (
        apps.FederationPlan, apps.Threat, apps.make_strategy, apps.simulate)
    check_federation(cells, clients=clients, rounds=rounds, local_epochs=local_epochs,
                     partition_spec=partition_spec, n_train=int(dataset.y_train.shape[0]))
    scheme = parse_partition(partition_spec)
    dev = resolve_device(device)
    parts = partition(dataset.y_train, clients, scheme, seed=stream_seed(seed, "federated/partition"))
    card = ModelCard(architecture=architecture, input_shape=list(dataset.input_shape),
                     classes=list(dataset.classes),
                     bounds=(float(dataset.bounds[0]), float(dataset.bounds[1])), dataset=dataset.name)
    local = TrainConfig(epochs=local_epochs, lr=lr, batch_size=batch_size, optimizer="sgd",
                        momentum=0.0, schedule="none", val_fraction=0.0, device=str(dev),
                        seed=stream_seed(seed, "federated/clients") % 2**32,
                        measure_train_accuracy=False)
    threats, strategies = [], []
    for cell in cells:
        bad = choose_malicious(clients, cell.malicious, seed=stream_seed(seed, "federated/malicious"))
        scale = default_scale(cell.attack, clients) if cell.scale is None else cell.scale
        threats.append(Threat(tuple(bad), cell.attack if bad else None, scale))
        strategies.append(make_strategy(cell.strategy, clients=clients, malicious=len(bad)))
    plan = FederationPlan(card=card, x_train=dataset.x_train, y_train=dataset.y_train, parts=parts,
                          local=local, threats=threats,
                          init_seed=stream_seed(seed, "federated/init") % 2**32)
    plan.new_model()  # an architecture that cannot be built fails here, in one line
    gpus = 1.0 / max(1, workers) if dev.type == "cuda" else 0.0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("federating", total=len(cells) * (rounds + 1))

        def on_round(i: int, server_round: int, accuracy: float) -> None:
            bar.update(task, advance=1, description=f"{cells[i].key}: round {server_round}/"
                       f"{rounds}, accuracy {accuracy:.3f}")

        runs = simulate(plan, strategies, rounds=rounds, x_test=dataset.x_test,
                        y_test=dataset.y_test, workers=workers, gpus_per_client=gpus,
                        on_round=on_round)
    result = ScenarioResult(name="federated")
    curves = {}
    for cell, run in zip(cells, runs, strict=True):
        result.metrics[f"{cell.key}_accuracy"] = run.accuracy[-1]
        curves[cell.key] = run.accuracy
        if run.failures:
            result.warnings.append(f"{cell.key}: {run.failures} client replies failed")
    result.figures["accuracy_per_round"] = curves
    result.tables.append(Table(
        title="Test accuracy of the global model per round",
        columns=["round", *curves], rows=[[r, *(round(c[r], 4) for c in curves.values())]
                                          for r in range(rounds + 1)],
        caption=f"{clients} clients, partition {scheme}, {local_epochs} local epoch(s) per round"))
    result.details = {
        "clients": clients, "rounds": rounds, "partition": str(scheme),
        "client_sizes": [int(p.numel()) for p in parts], "local_epochs": local_epochs, "lr": lr,
        "batch_size": batch_size, "seed": seed, "device": str(dev),
        "cells": [{"key": c.key, "strategy": c.strategy, "malicious_fraction": c.malicious,
                   "malicious_clients": list(t.malicious), "attack": t.attack, "scale": t.scale,
                   "seconds": round(r.seconds, 2)} for c, t, r in zip(cells, threats, runs, strict=True)],
    }
    result.artifacts["weights"] = [r.weights for r in runs]  # one per cell, in order
    result.summary = "; ".join(f"{c.key}: {r.accuracy[-1]:.3f}" for c, r in zip(cells, runs, strict=True))
    return result


def run_federation(dataset: Dataset, architecture: str, *, strategy: str = "fedavg",
                   malicious: float = 0.0, attack: str = "sign-flip", scale: float | None = None,
                   **settings: object) -> ScenarioResult:
    """One federation (see :func:`run_federations` for ``settings``); adds the metric
    ``final_accuracy`` and the figure ``accuracy`` (the curve, round 0 first)."""
    cell = FederationCell(strategy, malicious, attack, scale)
    result = run_federations(dataset, architecture, [cell], **settings)  # type: ignore[arg-type]
    result.metrics["final_accuracy"] = result.metrics[f"{cell.key}_accuracy"]
    result.figures["accuracy"] = result.figures["accuracy_per_round"][cell.key]
    return result


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """sha256 of the weights' bytes in key order (same seed, same digest)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(weights[k].contiguous().numpy().tobytes())
    return h.hexdigest()
