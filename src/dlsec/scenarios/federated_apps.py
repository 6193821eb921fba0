"""dlsec's Flower apps for the deployment engine: the ``serverapp`` and ``clientapp``
components a Flower App project written by :func:`dlsec.scenarios.flower_project.write_project`
names (``dlsec.scenarios.federated_apps:server_app`` / ``:client_app``).

Each builds the federation from the run config with
:func:`dlsec.scenarios.federated.plan_federations`, as a simulation does (the same
dataset split, partition, malicious draw, initial weights, client seeds and DP noise, all
from the run's ``seed``), so a deployment and a simulation of the same settings give the same
global model (the same ``weights_sha256`` on the same machine).
"""

from __future__ import annotations

from pathlib import Path

from dlsec.data import load_dataset
from dlsec.defenses.federated.client_dp import (
    MEAN_AGGREGATES,
    client_epsilon,
    default_delta,
    effective_noise,
)
from dlsec.defenses.federated.deployment import Deployment, RunConfig, deployment_apps
from dlsec.scenarios.federated import (
    FederationCell,
    check_federation,
    plan_federations,
    weights_digest,
)
from dlsec.scenarios.flower_project import FederationSettings


def _planned_dp(s: FederationSettings, sizes: list[float]) -> dict[str, object] | None:
    """The client-level DP of a run that completes its rounds (one noisy release per
    round; see :func:`dlsec.scenarios.federated.run_federations`), None without DP."""
    if s.dp_noise is None:
        return None
    delta = default_delta(s.clients) if s.dp_delta is None else s.dp_delta
    z_eff = effective_noise(s.dp_noise, sizes)
    eps = client_epsilon(noise_multiplier=z_eff, sample_rate=1.0, rounds=s.rounds, delta=delta)
    return {"noise_multiplier": s.dp_noise, "effective_noise_multiplier": z_eff,
            "clipping_norm": s.dp_clip, "side": s.dp_side, "delta": delta, "epsilon": eps,
            "proven": s.strategy in MEAN_AGGREGATES, "accountant": "opacus rdp"}


def build_deployment(run_config: RunConfig) -> Deployment:
    """The :class:`Deployment` of the settings in ``run_config`` (see
    :class:`~dlsec.scenarios.flower_project.FederationSettings`): the plan, seeds and draws
    of :func:`~dlsec.scenarios.federated.plan_federations`, as a simulation has them."""
    s = FederationSettings.from_run_config(run_config)
    dataset = load_dataset(s.dataset, seed=s.seed, test_size=s.test_size)
    cell = FederationCell(s.strategy, s.malicious, s.attack, s.scale)
    check_federation([cell], clients=s.clients, rounds=s.rounds, local_epochs=s.local_epochs,
                     partition_spec=s.partition, n_train=int(dataset.y_train.shape[0]),
                     clip_norm=s.clip_norm, root_size=s.root_size,
                     backdoor_target=s.backdoor_target, classes=len(dataset.classes),
                     dp_noise=s.dp_noise, dp_clip=s.dp_clip, dp_side=s.dp_side,
                     dp_delta=s.dp_delta)
    setup = plan_federations(dataset, s.architecture, [cell], clients=s.clients,
                             partition_spec=s.partition, local_epochs=s.local_epochs, lr=s.lr,
                             batch_size=s.batch_size, seed=s.seed, device="cpu",
                             clip_norm=s.clip_norm, root_size=s.root_size,
                             backdoor_target=s.backdoor_target, dp_noise=s.dp_noise,
                             dp_clip=s.dp_clip, dp_side=s.dp_side)
    plan, threat = setup.plan, setup.threats[0]
    details = {"settings": s.to_run_config(), "key": cell.key,
               "malicious_clients": list(threat.malicious), "attack": threat.attack,
               "scale": threat.scale, "client_sizes": [int(p.numel()) for p in plan.parts],
               "dp": _planned_dp(s, [float(p.numel()) for p in plan.parts])}
    return Deployment(plan=plan, strategy=setup.strategies[0], rounds=s.rounds,
                      x_test=dataset.x_test, y_test=dataset.y_test,
                      result_path=Path(s.result_path) if s.result_path else None, details=details)


# Flower finds the components by parsing this file: plain ``name = ...`` assignments.
_APPS = deployment_apps(build_deployment, digest=weights_digest)
server_app = _APPS[0]
client_app = _APPS[1]
