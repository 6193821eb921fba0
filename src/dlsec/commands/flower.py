"""``dlsec flower``: a federation on Flower's deployment engine (SuperLink + SuperNodes).

``dlsec flower app DIR`` writes a Flower App project for one federation (the settings of
``dlsec federate``); ``dlsec flower run DIR --superlink HOST:PORT --ca-cert ca.pem``
submits it to a running SuperLink, follows its log and prints the global model's test
accuracy per round. An unreachable SuperLink, a failed TLS handshake or a missing
certificate are one-line errors before anything is submitted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dlsec.commands.federate import (
    AttackOpt,
    AttackScaleOpt,
    BackdoorTargetOpt,
    ClientBatchOpt,
    ClientLrOpt,
    ClipNormOpt,
    DpClipOpt,
    DpDeltaOpt,
    DpNoiseOpt,
    DpSideOpt,
    LocalEpochsOpt,
    MaliciousOpt,
    PartitionOpt,
    RootSizeOpt,
    RoundsOpt,
    StrategyOpt,
    dp_settings,
)
from dlsec.commands.options import SeedOpt, TestSizeOpt, count, number

flower_app = typer.Typer(help="Federations on Flower's deployment engine (SuperLink, SuperNodes).")


def register(app: typer.Typer) -> None:
    app.add_typer(flower_app, name="flower")


@flower_app.command("app")
def write_app(
    directory: Annotated[Path, typer.Argument(help="Project directory (created)")],
    dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | mnist | idx:DIR | npz:PATH (as the SuperNodes see it)")] = "digits",
    model: Annotated[str, typer.Option(help="A registered name or module:factory")] = "simplenet",
    clients: Annotated[int, count("SuperNodes (partition-id 0..clients-1)", low=2)] = 3,
    rounds: RoundsOpt = 5,
    strategy: StrategyOpt = "fedavg",
    malicious: MaliciousOpt = 0.0,
    attack: AttackOpt = "sign-flip",
    attack_scale: AttackScaleOpt = None,
    partition: PartitionOpt = "iid",
    local_epochs: LocalEpochsOpt = 1,
    lr: ClientLrOpt = 0.1,
    batch_size: ClientBatchOpt = 16,
    clip_norm: ClipNormOpt = None,
    root_size: RootSizeOpt = 100,
    backdoor_target: BackdoorTargetOpt = 0,
    dp_noise: DpNoiseOpt = None,
    dp_clip: DpClipOpt = None,
    dp_side: DpSideOpt = None,
    dp_delta: DpDeltaOpt = None,
    result_path: Annotated[str, typer.Option(
        "--result-path", help="Where the ServerApp writes its JSON, on the SuperLink's machine")] = "",
    seed: SeedOpt = 0,
    test_size: TestSizeOpt = 0.2,
) -> None:
    """Write a Flower App project (pyproject.toml naming dlsec's ServerApp and ClientApp)
    for one federation; the settings are checked first."""
    from dlsec.data import load_dataset
    from dlsec.files import check_output
    from dlsec.scenarios.federated import FederationCell, check_federation
    from dlsec.scenarios.flower_project import FederationSettings, write_project

    check_output(directory, kind="dir", option="DIRECTORY")
    dp = dp_settings(dp_noise, dp_clip, dp_side, dp_delta)
    ds = load_dataset(dataset, seed=seed, test_size=test_size)
    check_federation([FederationCell(strategy, malicious, attack, attack_scale)], clients=clients,
                     rounds=rounds, local_epochs=local_epochs, partition_spec=partition,
                     n_train=int(ds.y_train.shape[0]), clip_norm=clip_norm, root_size=root_size,
                     backdoor_target=backdoor_target, classes=len(ds.classes), **dp)
    settings = FederationSettings(
        dataset=dataset, test_size=test_size, seed=seed, architecture=model, clients=clients,
        rounds=rounds, strategy=strategy, malicious=malicious, attack=attack, scale=attack_scale,
        partition=partition, local_epochs=local_epochs, lr=lr, batch_size=batch_size,
        clip_norm=clip_norm, root_size=root_size, backdoor_target=backdoor_target,
        result_path=result_path, **dp)
    path = write_project(directory, settings)
    dp_note = "" if dp_noise is None else f", client-level DP z={dp_noise:g} ({dp['dp_side']} side)"
    typer.echo(f"wrote {path}: {strategy}, {clients} clients, {rounds} rounds"
               f"{f', {malicious:g} malicious ({attack})' if malicious else ''}"
               f"{dp_note}")
    typer.echo(f"start {clients} SuperNodes with --node-config 'partition-id=K num-partitions={clients}' "
               f"(K = 0..{clients - 1}), then: dlsec flower run {directory} --superlink HOST:PORT "
               "--ca-cert ca.pem")


@flower_app.command("run")
def run_app(
    directory: Annotated[Path, typer.Argument(help="Project directory (dlsec flower app)")],
    superlink: Annotated[str, typer.Option(help="The SuperLink's address HOST:PORT")],
    ca_cert: Annotated[Path | None, typer.Option(
        "--ca-cert", help="PEM CA certificate that signed the SuperLink's TLS certificate")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="No TLS (a SuperLink started with --insecure)")] = False,
    out: Annotated[Path | None, typer.Option(help="Write accuracy per round and the weights' sha256 as JSON here")] = None,
    timeout: Annotated[float, number("Give up after this many seconds", low=0.0, low_open=True)] = 3600.0,
) -> None:
    """Submit the federation to a SuperLink, wait for it and print the global model's
    test accuracy per round."""
    from dlsec.files import atomic_write_text, check_output
    from dlsec.scenarios.flower_project import DeploymentError, submit

    if (ca_cert is None) == (not insecure):
        raise DeploymentError("give --ca-cert (the CA of the SuperLink's TLS certificate) "
                              "or --insecure, one of the two")
    if out is not None:
        check_output(out, kind="file", option="--out")

    def on_round(server_round: int, rounds: int, accuracy: float, asr: float) -> None:
        typer.echo(f"  round {server_round:3d}/{rounds}  test accuracy {accuracy:.4f}"
                   f"  backdoor success {asr:.4f}")

    result = submit(directory, superlink=superlink, ca_cert=ca_cert, timeout=timeout,
                    on_round=on_round)
    typer.echo(f"final accuracy {result.accuracy[-1]:.4f} in {result.seconds:.1f} s; "
               f"weights sha256 {result.weights_sha256}")
    if result.epsilon is not None:
        typer.echo(f"client-level DP: epsilon {result.epsilon:.3g} at delta {result.delta:.3g}")
    if out is not None:
        atomic_write_text(out, json.dumps(result.to_dict(), indent=2))
