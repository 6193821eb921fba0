"""``dlsec federate``: a Flower federation with malicious clients, from the shell.

Flags -> :func:`dlsec.scenarios.federated.run_federation` -> the global model's test
accuracy per round, printed (and written as JSON with ``--json``). Every setting is
checked before the simulation starts: an unknown strategy, attack or partition, more
malicious clients than the strategy tolerates, more clients than training records are
one-line errors. Under the ``scale`` attack the malicious clients plant a backdoor
(a trigger patch, ``--backdoor-target``) and its success rate is printed per round.
With ``--dp-noise Z`` the strategy runs inside Flower's fixed-clipping DP wrapper
(client-level DP, DP-FedAvg) and the client-level epsilon is printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dlsec.commands.options import DeviceOpt, SeedOpt, TestSizeOpt, count, number, share

STRATEGY_HELP = ("fedavg | fedprox | fedmedian | fedtrimmedavg | krum | multikrum | bulyan | "
                 "clipping (alias fedavg-clip) | fltrust")
ATTACK_HELP = "label-flip | sign-flip | gaussian | scale (plants a backdoor) | alie | ipm"


# the options `dlsec federate` shares with `dlsec flower app`
RoundsOpt = Annotated[int, count("Federated rounds")]
StrategyOpt = Annotated[str, typer.Option(help=STRATEGY_HELP)]
MaliciousOpt = Annotated[float, share("Fraction of malicious clients, in [0, 1)")]
AttackOpt = Annotated[str, typer.Option(help=ATTACK_HELP)]
AttackScaleOpt = Annotated[float | None, number(
    "The attack's scale (sign-flip 4, gaussian 1, scale: the number of clients, "
    "alie: z_max of Baruch et al., ipm: epsilon 0.1)",
    "--attack-scale", low=0.0, low_open=True)]
PartitionOpt = Annotated[str, typer.Option(help="iid | dirichlet:ALPHA | shards:K")]
LocalEpochsOpt = Annotated[int, count("Local epochs per round", "--local-epochs")]
ClientLrOpt = Annotated[float, number("Clients' SGD learning rate", low=0.0, low_open=True)]
ClientBatchOpt = Annotated[int, count("Clients' batch size", "--batch-size")]
ClipNormOpt = Annotated[float | None, number(
    "clipping: the updates' L2 bound (default: the round's median norm)",
    "--clip-norm", low=0.0, low_open=True)]
RootSizeOpt = Annotated[int, count("fltrust: the server's root training records", "--root-size")]
BackdoorTargetOpt = Annotated[int, count("scale attack: the backdoor's target class",
                                        "--backdoor-target", low=0)]
DpNoiseOpt = Annotated[float | None, typer.Option(
    "--dp-noise", help="Client-level DP: the noise multiplier z (noise std z*C/clients on "
    "the aggregate, Flower's fixed-clipping DP wrapper); off by default")]
DpClipOpt = Annotated[float | None, typer.Option(
    "--dp-clip", help="Client-level DP: the clipping norm C of each update "
    "[default: 0.3, about the median for SimpleNet on digits]")]
DpSideOpt = Annotated[str | None, typer.Option(
    "--dp-side", help="Client-level DP: who clips, server | client (Flower's "
    "fixedclipping_mod; malicious clients skip it) [default: server]")]
DpDeltaOpt = Annotated[float | None, typer.Option(
    "--dp-delta", help="Client-level DP: the delta of the epsilon reported "
    "[default: 1/clients^1.1]")]


def dp_settings(dp_noise: float | None, dp_clip: float | None, dp_side: str | None,
                dp_delta: float | None) -> dict[str, Any]:
    """The client-level DP keywords of the federation scenarios from the ``--dp-*`` flags
    (defaults filled in); a ``--dp-*`` flag without ``--dp-noise`` is a one-line error."""
    from dlsec.scenarios.federated import DP_CLIP, FederatedScenarioError

    given = [flag for flag, v in (("--dp-clip", dp_clip), ("--dp-side", dp_side),
                                  ("--dp-delta", dp_delta)) if v is not None]
    if dp_noise is None and given:
        raise FederatedScenarioError(f"{', '.join(given)} without --dp-noise: client-level DP "
                                     "is on only with a noise multiplier (e.g. --dp-noise 1)")
    return {"dp_noise": dp_noise, "dp_clip": DP_CLIP if dp_clip is None else dp_clip,
            "dp_side": dp_side or "server", "dp_delta": dp_delta}


def register(app: typer.Typer) -> None:
    @app.command()
    def federate(
        dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | mnist | idx:DIR | npz:PATH")] = "digits",
        model: Annotated[str, typer.Option(help="A registered name or module:factory")] = "simplenet",
        clients: Annotated[int, count("Clients (each gets one partition)", low=2)] = 10,
        rounds: RoundsOpt = 20,
        strategy: StrategyOpt = "fedavg",
        malicious: MaliciousOpt = 0.0,
        attack: AttackOpt = "sign-flip",
        attack_scale: AttackScaleOpt = None,
        partition: PartitionOpt = "iid",
        local_epochs: LocalEpochsOpt = 1,
        lr: ClientLrOpt = 0.1,
        batch_size: ClientBatchOpt = 16,
        workers: Annotated[int, count("Clients training at a time (Ray workers)")] = 1,
        clip_norm: ClipNormOpt = None,
        root_size: RootSizeOpt = 100,
        backdoor_target: BackdoorTargetOpt = 0,
        dp_noise: DpNoiseOpt = None,
        dp_clip: DpClipOpt = None,
        dp_side: DpSideOpt = None,
        dp_delta: DpDeltaOpt = None,
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
        dp = dp_settings(dp_noise, dp_clip, dp_side, dp_delta)
        cell = FederationCell(strategy, malicious, attack, attack_scale)
        check_federation([cell], clients=clients, rounds=rounds, partition_spec=partition,
                         clip_norm=clip_norm, root_size=root_size, **dp)
        ds = load_dataset(dataset, seed=seed, test_size=test_size)
        res = run_federation(ds, model, strategy=strategy, malicious=malicious, attack=attack,
                             scale=attack_scale, clients=clients, rounds=rounds,
                             partition_spec=partition, local_epochs=local_epochs, lr=lr,
                             batch_size=batch_size, seed=seed, device=device, workers=workers,
                             clip_norm=clip_norm, root_size=root_size,
                             backdoor_target=backdoor_target, progress=not quiet, **dp)
        cells = res.details["cells"][0]
        typer.echo(f"{strategy}, {clients} clients ({len(cells['malicious_clients'])} malicious"
                   f"{', ' + attack if cells['malicious_clients'] else ''}), partition "
                   f"{res.details['partition']}, {rounds} rounds in {cells['seconds']:.1f} s")
        asr = res.figures["backdoor_asr"] if "backdoor_asr" in res.metrics else None
        for r, acc in enumerate(res.figures["accuracy"]):
            tail = f"  backdoor success {asr[r]:.4f}" if asr is not None else ""
            typer.echo(f"  round {r:3d}  test accuracy {acc:.4f}{tail}")
        if res.details.get("dp"):
            d = res.details["dp"]
            c = next(iter(d["cells"].values()))
            typer.echo(f"client-level DP ({d['side']}-side clipping C = {d['clipping_norm']:g}, "
                       f"z = {c['noise_multiplier']:g}, noise std {c['noise_std']:.4g}): "
                       f"epsilon {res.metrics['epsilon']:.3f} at delta {d['delta']:.3g} after "
                       f"{c['releases']} rounds ({d['accountant']}, sample rate {d['sample_rate']:g})")
        for w in res.warnings:
            typer.echo(f"warning: {w}", err=True)
        if json_out is not None:
            summary = {"metrics": res.metrics, "accuracy_per_round": res.figures["accuracy"],
                       "details": res.details}
            if asr is not None:
                summary["backdoor_asr_per_round"] = asr
            atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")
