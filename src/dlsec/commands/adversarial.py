"""``dlsec adv-train``: adversarial training (PGD-AT, FGSM-RS, TRADES) from the command line.

``dlsec train --adversarial METHOD --eps E`` runs the same code. Both work under
``torchrun --nproc_per_node=N`` (DDP; only rank 0 writes files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dlsec.commands.options import DeviceOpt, SeedOpt, TestSizeOpt, ThreadsOpt, count, number
from dlsec.training import TrainConfig, TrainingError


def run_adversarial(
    dataset: Any,
    architecture: str,
    config: TrainConfig,
    *,
    method: str,
    eps: float | None,
    norm: str = "linf",
    steps: int | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> tuple[Any, Any, Any]:
    """Check the CLI's adversarial flags, then call :func:`adversarial_train`."""
    from dlsec.defenses.adversarial import METHODS, adversarial_train

    if method not in METHODS:
        raise TrainingError(
            f"unknown --adversarial method {method!r} (choose from {', '.join(METHODS)})"
        )
    if eps is None:
        raise TrainingError("--eps is required with --adversarial (the radius in input units)")
    return adversarial_train(
        dataset, architecture, method=method, eps=eps, config=config, steps=steps,
        norm=norm, progress=progress, **kwargs,  # type: ignore[arg-type]
    )


def register(app: typer.Typer) -> None:
    @app.command("adv-train")
    def adv_train(
        out: Annotated[
            Path, typer.Option(help="Directory for weights, card.json and history.json")
        ],
        eps: Annotated[float, number("Radius of the threat ball, in input units", low=0.0, low_open=True)],
        method: Annotated[str, typer.Option(help="pgd | fgsm-rs | trades")] = "pgd",
        norm: Annotated[str, typer.Option(help="linf | l2")] = "linf",
        attack_steps: Annotated[
            int | None,
            count("Attack steps per batch (default: pgd 10, fgsm-rs 1, trades 10)", "--attack-steps"),
        ] = None,
        alpha: Annotated[
            float | None,
            number("Attack step size (default: 2.5*eps/steps; fgsm-rs 1.25*eps)", low=0.0,
                   low_open=True),
        ] = None,
        beta: Annotated[float, number("TRADES weight of the robust term", low=0.0)] = 6.0,
        no_random_init: Annotated[
            bool, typer.Option("--no-random-init", help="PGD/FGSM start at the clean input")
        ] = False,
        no_monitor: Annotated[
            bool,
            typer.Option(
                "--no-monitor",
                help="No per-epoch PGD check (no rollback on catastrophic overfitting)",
            ),
        ] = False,
        dataset: Annotated[
            str, typer.Option(help="digits | fashion-mnist | mnist | idx:DIR | npz:PATH")
        ] = "digits",
        model: Annotated[
            str, typer.Option(help="A registered name or module:factory")
        ] = "simplenet",
        epochs: Annotated[int, count("Training epochs")] = 30,
        batch_size: Annotated[int, count("Batch size", "--batch-size")] = 64,
        lr: Annotated[float, number("Learning rate", low=0.0, low_open=True)] = 3e-3,
        optimizer: Annotated[str, typer.Option(help="adam | sgd")] = "adam",
        schedule: Annotated[str, typer.Option(help="cosine | step | none")] = "cosine",
        weight_decay: Annotated[float, number("Weight decay", "--weight-decay", low=0.0)] = 0.0,
        val_fraction: Annotated[
            float,
            number("Validation share of the training set", "--val-fraction", low=0.0, high=1.0,
                   high_open=True),
        ] = 0.1,
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        test_size: TestSizeOpt = 0.2,
        threads: ThreadsOpt = 0,
        quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    ) -> None:
        """Train a model adversarially and save it (weights, card with PGD accuracy, curves)."""
        from dlsec.commands.options import set_threads
        from dlsec.data import load_dataset
        from dlsec.files import atomic_write_text, check_output
        from dlsec.models import save
        from dlsec.training import is_main_process

        check_output(out, kind="dir", option="--out")
        tconf = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
            optimizer=optimizer, schedule=schedule,  # type: ignore[arg-type]
            weight_decay=weight_decay, val_fraction=val_fraction,
        )
        ds = load_dataset(dataset, seed=seed, test_size=test_size)
        set_threads(threads, device=device, architecture=model, dataset=ds)
        net, card, result = run_adversarial(
            ds, model, tconf, method=method, eps=eps, norm=norm, steps=attack_steps,
            alpha=alpha, beta=beta, random_init=not no_random_init, monitor=not no_monitor,
            progress=not quiet,
        )
        if not is_main_process():
            return
        save(net, card, out)
        atomic_write_text(out / "history.json", json.dumps(result.history, indent=2) + "\n")
        m = card.metrics
        typer.echo(
            f"saved {card.architecture} ({method}, eps {eps:g}) to {out}: test accuracy "
            f"{m['test_accuracy']:.4f}, PGD accuracy {m['test_pgd_accuracy']:.4f}"
        )
        if result.catastrophic_overfitting:
            typer.echo(
                f"catastrophic overfitting at epoch {result.collapse_epoch}: "
                f"rolled back to epoch {result.best_epoch}",
                err=True,
            )
