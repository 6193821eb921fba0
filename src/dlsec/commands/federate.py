"""``dlsec federate``: a Flower federation with malicious clients, from the shell.

Flags -> :func:`dlsec.scenarios.federated.run_federation` -> the global model's test
accuracy per round, printed (and written as JSON with ``--json``). Every setting is
checked before the simulation starts: an unknown strategy, attack or partition, more
malicious clients than the strategy tolerates, more clients than training records are
one-line errors. Under the ``scale`` attack the malicious clients plant a backdoor
(a trigger patch, ``--backdoor-target``) and its success rate is printed per round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dlsec.commands.options import DeviceOpt, SeedOpt, TestSizeOpt, count, number, share

STRATEGY_HELP = ("fedavg | fedprox | fedmedian | fedtrimmedavg | krum | multikrum | bulyan | "
                 "clipping (alias fedavg-clip) | fltrust")
ATTACK_HELP = "label-flip | sign-flip | gaussian | scale (plants a backdoor) | alie | ipm"


def register(app: typer.Typer) -> None:
    @app.command()
    def federate(
        dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | mnist | idx:DIR | npz:PATH")] = "digits",
        model: Annotated[str, typer.Option(help="A registered name or module:factory")] = "simplenet",
        clients: Annotated[int, count("Clients (each gets one partition)", low=2)] = 10,
        rounds: Annotated[int, count("Federated rounds")] = 20,
        strategy: Annotated[str, typer.Option(help=STRATEGY_HELP)] = "fedavg",
        malicious: Annotated[float, share("Fraction of malicious clients, in [0, 1)")] = 0.0,
        attack: Annotated[str, typer.Option(help=ATTACK_HELP)] = "sign-flip",
        attack_scale: Annotated[float | None, number(
            "The attack's scale (sign-flip 4, gaussian 1, scale: the number of clients, "
            "alie: z_max of Baruch et al., ipm: epsilon 0.1)",
            "--attack-scale", low=0.0, low_open=True)] = None,
        partition: Annotated[str, typer.Option(help="iid | dirichlet:ALPHA | shards:K")] = "iid",
        local_epochs: Annotated[int, count("Local epochs per round", "--local-epochs")] = 1,
        lr: Annotated[float, number("Clients' SGD learning rate", low=0.0, low_open=True)] = 0.1,
        batch_size: Annotated[int, count("Clients' batch size", "--batch-size")] = 16,
        workers: Annotated[int, count("Clients training at a time (Ray workers)")] = 1,
        clip_norm: Annotated[float | None, number(
            "clipping: the updates' L2 bound (default: the round's median norm)",
            "--clip-norm", low=0.0, low_open=True)] = None,
        root_size: Annotated[int, count("fltrust: the server's root training records",
                                        "--root-size")] = 100,
        backdoor_target: Annotated[int, count("scale attack: the backdoor's target class",
                                              "--backdoor-target", low=0)] = 0,
        seed: SeedOpt = 0,
        device: DeviceOpt = "cpu",
        test_size: TestSizeOpt = 0.2,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON here")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    ) -> None:
        """Train a model by federated learning on Flower's simulation engine, with a
        fraction of malicious clients, and print its test accuracy per round."""
        from dlsec.data import load_dataset
        from dlsec.files import atomic_write_text, check_output
        from dlsec.scenarios.federated import FederationCell, check_federation, run_federation

        if json_out is not None:
            check_output(json_out, kind="file", option="--json")
        cell = FederationCell(strategy, malicious, attack, attack_scale)
        check_federation([cell], clients=clients, rounds=rounds, partition_spec=partition,
                         clip_norm=clip_norm, root_size=root_size)
        ds = load_dataset(dataset, seed=seed, test_size=test_size)
        res = run_federation(ds, model, strategy=strategy, malicious=malicious, attack=attack,
                             scale=attack_scale, clients=clients, rounds=rounds,
                             partition_spec=partition, local_epochs=local_epochs, lr=lr,
                             batch_size=batch_size, seed=seed, device=device, workers=workers,
                             clip_norm=clip_norm, root_size=root_size,
                             backdoor_target=backdoor_target, progress=not quiet)
        cells = res.details["cells"][0]
        typer.echo(f"{strategy}, {clients} clients ({len(cells['malicious_clients'])} malicious"
                   f"{', ' + attack if cells['malicious_clients'] else ''}), partition "
                   f"{res.details['partition']}, {rounds} rounds in {cells['seconds']:.1f} s")
        asr = res.figures["backdoor_asr"] if "backdoor_asr" in res.metrics else None
        for r, acc in enumerate(res.figures["accuracy"]):
            tail = f"  backdoor success {asr[r]:.4f}" if asr is not None else ""
            typer.echo(f"  round {r:3d}  test accuracy {acc:.4f}{tail}")
        for w in res.warnings:
            typer.echo(f"warning: {w}", err=True)
        if json_out is not None:
            summary = {"metrics": res.metrics, "accuracy_per_round": res.figures["accuracy"],
                       "details": res.details}
            if asr is not None:
                summary["backdoor_asr_per_round"] = asr
            atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")
