"""dlsec's Flower apps for the deployment engine: the ``serverapp`` and ``clientapp``
components a Flower App project written by :func:`dlsec.scenarios.flower_project.write_project`
names (``dlsec.scenarios.federated_apps:server_app`` / ``:client_app``).

Each builds the federation from the run config exactly as
:func:`dlsec.scenarios.federated.run_federations` does for a simulation (the same
dataset split, partition, malicious draw, initial weights and client seeds, all from the
run's ``seed``), so a deployment and a simulation of the same settings give the same
global model (the same ``weights_sha256`` on the same machine).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dlsec.data import load_dataset
from dlsec.defenses.federated import choose_malicious, default_scale, parse_partition, partition
from dlsec.defenses.federated.apps import FederationPlan, Threat, make_strategy, root_trainer
from dlsec.defenses.federated.clients import trigger_size
from dlsec.defenses.federated.deployment import Deployment, RunConfig, deployment_apps
from dlsec.models import ModelCard
from dlsec.scenarios.context import stream_seed
from dlsec.scenarios.federated import FederationCell, check_federation, weights_digest
from dlsec.scenarios.flower_project import FederationSettings
from dlsec.training import TrainConfig, resolve_device


def build_deployment(run_config: RunConfig) -> Deployment:
    """The :class:`Deployment` of the settings in ``run_config`` (see
    :class:`~dlsec.scenarios.flower_project.FederationSettings`); the same seeds and draws as
    :func:`~dlsec.scenarios.federated.run_federations` (keep the two in step)."""
    s = FederationSettings.from_run_config(run_config)
    dataset = load_dataset(s.dataset, seed=s.seed, test_size=s.test_size)
    cell = FederationCell(s.strategy, s.malicious, s.attack, s.scale)
    check_federation([cell], clients=s.clients, rounds=s.rounds, local_epochs=s.local_epochs,
                     partition_spec=s.partition, n_train=int(dataset.y_train.shape[0]),
                     clip_norm=s.clip_norm, root_size=s.root_size,
                     backdoor_target=s.backdoor_target, classes=len(dataset.classes))
    dev = resolve_device("cpu")
    parts = partition(dataset.y_train, s.clients, parse_partition(s.partition),
                      seed=stream_seed(s.seed, "federated/partition"))
    card = ModelCard(architecture=s.architecture, input_shape=list(dataset.input_shape),
                     classes=list(dataset.classes),
                     bounds=(float(dataset.bounds[0]), float(dataset.bounds[1])), dataset=dataset.name)
    local = TrainConfig(epochs=s.local_epochs, lr=s.lr, batch_size=s.batch_size, optimizer="sgd",
                        momentum=0.0, schedule="none", val_fraction=0.0, device=str(dev),
                        seed=stream_seed(s.seed, "federated/clients") % 2**32,
                        measure_train_accuracy=False)
    bad = choose_malicious(s.clients, s.malicious, seed=stream_seed(s.seed, "federated/malicious"))
    scale = default_scale(s.attack, s.clients, len(bad)) if s.scale is None else s.scale
    threat = Threat(tuple(bad), s.attack if bad else None, scale)
    plan = FederationPlan(card=card, x_train=dataset.x_train, y_train=dataset.y_train, parts=parts,
                          local=local, threats=[threat],
                          init_seed=stream_seed(s.seed, "federated/init") % 2**32,
                          backdoor_target=s.backdoor_target,
                          trigger=trigger_size(list(dataset.input_shape)))
    root_train = None
    if s.strategy == "fltrust":
        gen = torch.Generator().manual_seed(stream_seed(s.seed, "federated/root") % 2**32)
        root = torch.randperm(int(dataset.y_train.shape[0]), generator=gen)[:s.root_size]
        root_train = root_trainer(plan, dataset.x_train[root], dataset.y_train[root])
    strategy = make_strategy(s.strategy, clients=s.clients, malicious=len(bad),
                             clip_norm=s.clip_norm, root_train=root_train)
    details = {"settings": s.to_run_config(), "key": cell.key, "malicious_clients": bad,
               "attack": threat.attack, "scale": scale,
               "client_sizes": [int(p.numel()) for p in parts]}
    return Deployment(plan=plan, strategy=strategy, rounds=s.rounds, x_test=dataset.x_test,
                      y_test=dataset.y_test,
                      result_path=Path(s.result_path) if s.result_path else None, details=details)


# Flower finds the components by parsing this file: plain ``name = ...`` assignments.
_APPS = deployment_apps(build_deployment, digest=weights_digest)
server_app = _APPS[0]
client_app = _APPS[1]
