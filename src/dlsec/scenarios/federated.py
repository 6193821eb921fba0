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
    MaliciousClientError,
    check_attack,
    choose_malicious,
    default_scale,
    malicious_count,
    parse_partition,
    partition,
)
from dlsec.defenses.federated.clients import trigger_size
from dlsec.errors import DlsecError
from dlsec.models import ModelCard
from dlsec.scenarios.context import stream_seed
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.training import TrainConfig, resolve_device

STRATEGY_NAMES = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan",
                  "clipping", "fedavg-clip", "fltrust")
DP_CLIP = 0.3
"""Client-level DP's default clipping norm: about the median L2 norm of a SimpleNet
client's update on digits (one local epoch of SGD at lr 0.1, batches of 16: 0.28-0.41
over 20 rounds). Another model or dataset needs its own (``dp_clip``)."""


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
    dp_noise: float | None = None

    @property
    def key(self) -> str:
        """``fedavg`` for an honest federation, ``krum_sign-flip_0.3`` otherwise
        (``krum_alie_0.3_x1.5`` with a scale given); ``_dp1`` appended under client-level
        DP with its own noise multiplier ``dp_noise`` (z = 1)."""
        dp = "" if self.dp_noise is None else f"_dp{self.dp_noise:g}"
        if self.malicious == 0:
            return self.strategy + dp
        tail = "" if self.scale is None else f"_x{self.scale:g}"
        return f"{self.strategy}_{self.attack}_{self.malicious:g}{tail}{dp}"


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
                     n_train: int | None = None, clip_norm: float | None = None,
                     root_size: int = 100, backdoor_target: int = 0,
                     classes: int | None = None, dp_noise: float | None = None,
                     dp_clip: float = DP_CLIP, dp_side: str = "server",
                     dp_delta: float | None = None) -> None:
    """Every setting a federation needs, checked before any work (one-line errors):
    strategies, attacks, fractions the strategies tolerate, the partition, counts,
    clipping's bound, FLTrust's root data, the backdoor's target class (when ``classes``
    is given), (when ``n_train`` is given) at least one training record per client, and
    client-level DP's noise multipliers (``dp_noise`` and the cells'), clipping norm, side
    and delta."""
    tolerance_error = _apps().tolerance_error
    from dlsec.defenses.federated.client_dp import ClientDPError, check_client_dp

    try:
        for z in {dp_noise, *(c.dp_noise for c in cells)}:
            check_client_dp(z, dp_clip, dp_side, dp_delta)
    except ClientDPError as e:
        raise FederatedScenarioError(str(e)) from None
    parse_partition(partition_spec)
    if clip_norm is not None and not clip_norm > 0:
        raise FederatedScenarioError(f"--clip-norm must be positive, got {clip_norm:g}")
    if any(c.strategy == "fltrust" for c in cells):
        if root_size < 1:
            raise FederatedScenarioError(f"fltrust needs --root-size of at least 1, got {root_size}")
        if n_train is not None and root_size > n_train:
            raise FederatedScenarioError(f"--root-size {root_size} exceeds the {n_train} "
                                         "training records")
    if classes is not None and not 0 <= backdoor_target < classes:
        raise FederatedScenarioError(f"--backdoor-target must be a class in [0, {classes}), "
                                     f"got {backdoor_target}")
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


@dataclass
class FederationSetup:
    """What :func:`plan_federations` builds: the plan both Flower apps read (partition,
    local settings, one threat per cell), each cell's Flower strategy and noise multiplier
    (None: no DP), the partition scheme, the device, and FLTrust's root size (0: unused)."""

    plan: Any
    threats: list[Any]
    strategies: list[Any]
    noises: list[float | None]
    scheme: Any
    device: torch.device
    root_size: int


def plan_federations(dataset: Dataset, architecture: str, cells: Sequence[FederationCell], *,
                     clients: int, partition_spec: str = "iid", local_epochs: int = 1,
                     lr: float = 0.1, batch_size: int = 16, seed: int = 0, device: str = "cpu",
                     clip_norm: float | None = None, root_size: int = 100,
                     backdoor_target: int = 0, dp_noise: float | None = None,
                     dp_clip: float = DP_CLIP, dp_side: str = "server") -> FederationSetup:
    """The federations of ``cells`` (settings as in :func:`run_federations`, checked there
    by :func:`check_federation` first): one function for a simulation and for Flower's
    deployment engine (:func:`dlsec.scenarios.federated_apps.build_deployment`), so both draw
    the same partition, malicious clients, initial weights, client seeds and DP noise from
    ``seed`` and give the same global model."""
    apps = _apps()
    FederationPlan, Threat, make_strategy = apps.FederationPlan, apps.Threat, apps.make_strategy
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
    threats = []
    for cell in cells:
        bad = choose_malicious(clients, cell.malicious, seed=stream_seed(seed, "federated/malicious"))
        try:
            scale = default_scale(cell.attack, clients, len(bad)) if cell.scale is None else cell.scale
        except MaliciousClientError as e:
            raise FederatedScenarioError(str(e)) from None
        threats.append(Threat(tuple(bad), cell.attack if bad else None, scale))
    plan = FederationPlan(card=card, x_train=dataset.x_train, y_train=dataset.y_train, parts=parts,
                          local=local, threats=threats,
                          init_seed=stream_seed(seed, "federated/init") % 2**32,
                          backdoor_target=backdoor_target,
                          trigger=trigger_size(list(dataset.input_shape)))
    plan.new_model()  # an architecture that cannot be built fails here, in one line
    root_train = None
    if any(c.strategy == "fltrust" for c in cells):
        gen = torch.Generator().manual_seed(stream_seed(seed, "federated/root") % 2**32)
        root = torch.randperm(int(dataset.y_train.shape[0]), generator=gen)[:root_size]
        root_train = apps.root_trainer(plan, dataset.x_train[root], dataset.y_train[root])
    from dlsec.defenses.federated.client_dp import ClientDP

    noises = [dp_noise if c.dp_noise is None else c.dp_noise for c in cells]
    strategies = [make_strategy(c.strategy, clients=clients, malicious=len(t.malicious),
                                clip_norm=clip_norm, root_train=root_train,
                                dp=None if z is None else ClientDP(z, dp_clip, dp_side),
                                dp_seed=stream_seed(seed, "federated/dp"))
                  for c, t, z in zip(cells, threats, noises, strict=True)]
    return FederationSetup(plan=plan, threats=threats, strategies=strategies, noises=noises,
                           scheme=scheme, device=dev,
                           root_size=root_size if root_train is not None else 0)


def run_federations(dataset: Dataset, architecture: str, cells: Sequence[FederationCell], *,
                    clients: int = 10, rounds: int = 20, partition_spec: str = "iid",
                    local_epochs: int = 1, lr: float = 0.1, batch_size: int = 16,
                    seed: int = 0, device: str = "cpu", workers: int = 1,
                    clip_norm: float | None = None, root_size: int = 100,
                    backdoor_target: int = 0, dp_noise: float | None = None,
                    dp_clip: float = DP_CLIP, dp_side: str = "server",
                    dp_delta: float | None = None, progress: bool = True) -> ScenarioResult:
    """Run each cell as its own federation on Flower's simulation engine (one start).

    Clients train with SGD (``lr``, no momentum, ``local_epochs`` per round, batches of
    ``batch_size``) on their partition; the server evaluates the global model on the test
    split after every round. Metrics: ``<cell.key>_accuracy`` (final test accuracy) per
    cell; figures: ``accuracy_per_round`` (cell key -> list, round 0 first).

    Every cell's global model is also scored for a backdoor (test images not of
    ``backdoor_target`` with the trigger patch, classified as the target): cells of the
    ``scale`` attack, whose clients plant it, get the metric ``<cell.key>_backdoor_asr``
    (final round); the figure ``backdoor_asr_per_round`` has every cell's curve (an
    honest cell's: the baseline). ``clipping`` takes ``clip_norm`` (None: the round's
    median update norm); ``fltrust`` trains on ``root_size`` training records drawn with
    the seed (the server's root data; the clients keep theirs too).

    Client-level DP (DP-FedAvg, :mod:`dlsec.defenses.federated.client_dp`): a cell with a
    noise multiplier (its own ``dp_noise``, else this ``dp_noise``) runs its strategy inside
    Flower's fixed-clipping DP wrapper (updates clipped to ``dp_clip``, clipped by the
    server or, ``dp_side="client"``, by the honest clients with Flower's mod; noise of std
    ``z * dp_clip / clients`` on the aggregate). Metrics ``<cell.key>_epsilon`` per DP cell
    and ``epsilon`` (the largest: the weakest guarantee), at ``dp_delta`` (None:
    1/clients^1.1), from Opacus's RDP accountant with sample rate 1 (every client trains
    every round), one step per round and the effective noise multiplier (z scaled by the
    partition sizes' weighting); details ``dp`` record them.
    """
    from rich.progress import Progress

    simulate = _apps().simulate
    check_federation(cells, clients=clients, rounds=rounds, local_epochs=local_epochs,
                     partition_spec=partition_spec, n_train=int(dataset.y_train.shape[0]),
                     clip_norm=clip_norm, root_size=root_size, backdoor_target=backdoor_target,
                     classes=len(dataset.classes), dp_noise=dp_noise, dp_clip=dp_clip,
                     dp_side=dp_side, dp_delta=dp_delta)
    setup = plan_federations(dataset, architecture, cells, clients=clients,
                             partition_spec=partition_spec, local_epochs=local_epochs, lr=lr,
                             batch_size=batch_size, seed=seed, device=device, clip_norm=clip_norm,
                             root_size=root_size, backdoor_target=backdoor_target,
                             dp_noise=dp_noise, dp_clip=dp_clip, dp_side=dp_side)
    plan, threats, strategies, noises = setup.plan, setup.threats, setup.strategies, setup.noises
    scheme, dev, parts = setup.scheme, setup.device, plan.parts
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
    curves, asr = {}, {}
    for cell, run, threat in zip(cells, runs, threats, strict=True):
        result.metrics[f"{cell.key}_accuracy"] = run.accuracy[-1]
        curves[cell.key] = run.accuracy
        asr[cell.key] = run.backdoor_asr
        if threat.backdoor:
            result.metrics[f"{cell.key}_backdoor_asr"] = run.backdoor_asr[-1]
        if run.failures:
            result.warnings.append(f"{cell.key}: {run.failures} client replies failed")
    result.figures["accuracy_per_round"] = curves
    result.figures["backdoor_asr_per_round"] = asr
    result.tables.append(Table(
        title="Test accuracy of the global model per round",
        columns=["round", *curves], rows=[[r, *(round(c[r], 4) for c in curves.values())]
                                          for r in range(rounds + 1)],
        caption=f"{clients} clients, partition {scheme}, {local_epochs} local epoch(s) per round"))
    result.details = {
        "clients": clients, "rounds": rounds, "partition": str(scheme),
        "client_sizes": [int(p.numel()) for p in parts], "local_epochs": local_epochs, "lr": lr,
        "batch_size": batch_size, "seed": seed, "device": str(dev), "clip_norm": clip_norm,
        "root_size": setup.root_size,
        "backdoor_target": backdoor_target, "trigger_size": plan.trigger,
        "cells": [{"key": c.key, "strategy": c.strategy, "malicious_fraction": c.malicious,
                   "malicious_clients": list(t.malicious), "attack": t.attack, "scale": t.scale,
                   "seconds": round(r.seconds, 2)} for c, t, r in zip(cells, threats, runs, strict=True)],
    }
    _account(result, cells, noises, strategies, parts=parts, clip=dp_clip, side=dp_side,
             delta=dp_delta)
    result.artifacts["weights"] = [r.weights for r in runs]  # one per cell, in order
    result.summary = "; ".join(f"{c.key}: {r.accuracy[-1]:.3f}" for c, r in zip(cells, runs, strict=True))
    return result


def _account(result: ScenarioResult, cells: Sequence[FederationCell],
             noises: Sequence[float | None], strategies: Sequence[Any], *,
             parts: Sequence[torch.Tensor], clip: float, side: str,
             delta: float | None) -> None:
    """The client-level epsilon of each DP cell (its noisy releases counted by its
    wrapper) into ``result``: metrics, ``details["dp"]``, a warning where the aggregate is
    not a mean (the sensitivity the epsilon assumes does not hold)."""
    from dlsec.defenses.federated.client_dp import (
        MEAN_AGGREGATES,
        client_epsilon,
        default_delta,
        effective_noise,
    )

    if all(z is None for z in noises):
        result.details["dp"] = None
        return
    delta = default_delta(len(parts)) if delta is None else delta
    sizes = [float(p.numel()) for p in parts]
    per_cell = {}
    for cell, z, strategy in zip(cells, noises, strategies, strict=True):
        if z is None:
            continue
        z_eff = effective_noise(z, sizes)
        steps = int(strategy.releases)
        eps = client_epsilon(noise_multiplier=z_eff, sample_rate=1.0, rounds=steps,
                             delta=delta) if steps else 0.0
        result.metrics[f"{cell.key}_epsilon"] = eps
        per_cell[cell.key] = {"noise_multiplier": z, "effective_noise_multiplier": z_eff,
                              "noise_std": z * clip / len(parts), "releases": steps,
                              "epsilon": eps}
        if cell.strategy not in MEAN_AGGREGATES:
            result.warnings.append(
                f"{cell.key}: epsilon {eps:.3g} assumes a mean aggregate; {cell.strategy} "
                f"is not one (its sensitivity to one client differs), so the bound is not proven")
    result.metrics["epsilon"] = max(c["epsilon"] for c in per_cell.values())
    result.details["dp"] = {"clipping_norm": clip, "side": side, "delta": delta,
                            "sample_rate": 1.0, "accountant": "opacus rdp",
                            "level": "client (DP-FedAvg, McMahan et al. 2018)", "cells": per_cell}


def run_federation(dataset: Dataset, architecture: str, *, strategy: str = "fedavg",
                   malicious: float = 0.0, attack: str = "sign-flip", scale: float | None = None,
                   **settings: object) -> ScenarioResult:
    """One federation (see :func:`run_federations` for ``settings``, ``dp_noise`` among
    them: then the metric ``epsilon``); adds the metric
    ``final_accuracy`` (and ``backdoor_asr`` under the ``scale`` attack) and the figures
    ``accuracy`` and ``backdoor_asr`` (the curves, round 0 first)."""
    cell = FederationCell(strategy, malicious, attack, scale)
    result = run_federations(dataset, architecture, [cell], **settings)  # type: ignore[arg-type]
    result.metrics["final_accuracy"] = result.metrics[f"{cell.key}_accuracy"]
    result.figures["backdoor_asr"] = result.figures["backdoor_asr_per_round"][cell.key]
    if f"{cell.key}_backdoor_asr" in result.metrics:
        result.metrics["backdoor_asr"] = result.metrics[f"{cell.key}_backdoor_asr"]
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
