"""A federation on Flower's deployment engine: a SuperLink and SuperNodes as real processes.

In deployment, Flower imports a ServerApp and a ClientApp by reference
(``module:attribute`` in the Flower App's pyproject.toml) inside its SuperExec
subprocesses, and every setting arrives as the run config (``context.run_config``).
:func:`deployment_apps` turns a builder (run config -> :class:`Deployment`) into the two
apps: the same :func:`~dlsec.defenses.federated.apps.make_server_app` and
:func:`~dlsec.defenses.federated.apps.client_update` the simulation runs, so a deployment
and a simulation of the same plan train the same clients with the same seeds. The
ServerApp writes what it saw (accuracy, loss and backdoor success per round, the final
weights' sha256) as JSON to the deployment's ``result_path`` (temporary file renamed).

Notes:
    A SuperNode's partition is its ``--node-config partition-id=K``; the ClientApp trusts
    it, as Flower does. A malicious SuperNode in a real deployment runs whatever code it
    likes; here the plan names the malicious partitions and the honest ClientApp code
    plays them, so a deployment reproduces a simulated attack bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as flower
from torch import Tensor

from dlsec.defenses.federated.apps import (
    FederationError,
    FederationPlan,
    FederationRun,
    client_update,
    make_server_app,
)
from dlsec.defenses.federated.client_dp import clipping_mod
from dlsec.files import atomic_write_text

RunConfig = dict[str, Any]


@dataclass
class Deployment:
    """One federation as the deployed apps need it: the plan (one threat), its strategy,
    the server's test split, the round count, where the ServerApp writes its JSON (None:
    nowhere) and what else goes into that JSON (``details``)."""

    plan: FederationPlan
    strategy: flower.Strategy
    rounds: int
    x_test: Tensor
    y_test: Tensor
    result_path: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


def run_payload(run: FederationRun, deployment: Deployment, digest: str) -> dict[str, Any]:
    """The JSON the ServerApp writes: curves (round 0 first), final values, the digest."""
    return {"accuracy": run.accuracy, "loss": run.loss, "backdoor_asr": run.backdoor_asr,
            "final_accuracy": run.accuracy[-1] if run.accuracy else None,
            "rounds": deployment.rounds, "failures": run.failures,
            "seconds": round(run.seconds, 3), "weights_sha256": digest,
            **deployment.details}


def deployment_apps(build: Callable[[RunConfig], Deployment], *,
                    digest: Callable[[dict[str, Tensor]], str],
                    threads: int = 1) -> tuple[ServerApp, ClientApp]:
    """A ServerApp and a ClientApp for Flower's deployment engine, each building its
    :class:`Deployment` from the run config with ``build`` (the ClientApp keeps the last
    one: a SuperNode's ClientApp process serves one run). The ServerApp logs each
    round's accuracy (``flwr run --stream`` shows it) and writes the result JSON;
    ``digest`` names the final weights."""
    cache: dict[str, Deployment] = {}

    def cached(config: RunConfig) -> Deployment:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in cache:
            cache.clear()
            cache[key] = build(config)
        return cache[key]

    def honest(msg: Message, context: Context) -> bool:
        """Under client-side DP only honest clients clip (a malicious one runs its own code)."""
        threat = cached(dict(context.run_config)).plan.threats[0]
        partition_id = int(cast(Any, context.node_config.get("partition-id", -1)))
        return not (threat.attack is not None and partition_id in threat.malicious)

    server = ServerApp()
    client = ClientApp(mods=[clipping_mod(honest)])

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        deployment = build(dict(context.run_config))
        runs = [FederationRun()]

        def on_round(_: int, server_round: int, accuracy: float) -> None:
            log(INFO, "dlsec round %d/%d accuracy %.6f backdoor_asr %.6f", server_round,
                deployment.rounds, accuracy, runs[0].backdoor_asr[-1])

        inner = make_server_app(deployment.plan, [deployment.strategy], rounds=deployment.rounds,
                                x_test=deployment.x_test, y_test=deployment.y_test, runs=runs,
                                on_round=on_round)
        inner(grid, context)
        run = runs[0]
        if len(run.accuracy) != deployment.rounds + 1:
            raise RuntimeError(f"the federation stopped after {max(0, len(run.accuracy) - 1)} "
                               f"of {deployment.rounds} rounds")
        payload = run_payload(run, deployment, digest(run.weights))
        if deployment.result_path is not None:
            atomic_write_text(deployment.result_path, json.dumps(payload, indent=2))
        dp = deployment.details.get("dp")
        if dp:  # before the final line: the submitter stops reading there
            log(INFO, "dlsec client-level DP epsilon %.6g delta %.6g", dp["epsilon"], dp["delta"])
        log(INFO, "dlsec final accuracy %.6f weights_sha256 %s", run.accuracy[-1],
            payload["weights_sha256"])

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        deployment = cached(dict(context.run_config))
        partition_id = int(cast(Any, context.node_config.get("partition-id", -1)))
        if not 0 <= partition_id < len(deployment.plan.parts):
            raise FederationError(
                f"this SuperNode's partition-id is {partition_id}: start it with --node-config "
                f"'partition-id=K num-partitions={len(deployment.plan.parts)}', K in "
                f"0..{len(deployment.plan.parts) - 1}")
        return Message(content=client_update(deployment.plan, partition_id, msg.content), reply_to=msg)

    return server, client
