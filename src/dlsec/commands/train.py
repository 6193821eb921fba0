"""``dlsec train``: train a model and save it; ``--adversarial METHOD --eps E`` trains it
adversarially (PGD-AT, FGSM-RS, TRADES; :mod:`dlsec.scenarios.hardening`).

``dlsec adv-train`` is the deprecated name of ``dlsec train --adversarial`` (kept for one
release): it prints one warning line on stderr and runs the same code. Both work under
``torchrun --nproc_per_node=N`` (DDP; only rank 0 writes files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dlsec.commands.options import DeviceOpt, SeedOpt, TestSizeOpt, ThreadsOpt, count, number
from dlsec.training import TrainConfig, TrainingError, TrainResult

OutOpt = Annotated[Path, typer.Option(help="Directory for weights, card.json and history.json")]
DatasetOpt = Annotated[str, typer.Option(help="digits | cifar-synthetic | fashion-mnist | mnist | idx:DIR | npz:PATH")]
ModelOpt = Annotated[str, typer.Option(help="A registered name or module:factory")]
EpochsOpt = Annotated[int, count("Training epochs")]
BatchOpt = Annotated[int, count("Batch size", "--batch-size")]
LrOpt = Annotated[float, number("Learning rate", low=0.0, low_open=True)]
OptimizerOpt = Annotated[str, typer.Option(help="adam | sgd")]
ScheduleOpt = Annotated[str, typer.Option(help="cosine | step | none")]
DecayOpt = Annotated[float, number("Weight decay", "--weight-decay", low=0.0)]
ValOpt = Annotated[
    float,
    number("Validation share of the training set", "--val-fraction", low=0.0, high=1.0,
           high_open=True),
]
NormOpt = Annotated[str | None, typer.Option(help="With --adversarial: linf | l2 (default linf)")]
StepsOpt = Annotated[
    int | None,
    count("With --adversarial: attack steps per batch (default: pgd 10, fgsm-rs 1, trades 10)",
          "--attack-steps"),
]
AlphaOpt = Annotated[
    float | None,
    number("With --adversarial: attack step size (default: 2.5*eps/steps; fgsm-rs 1.25*eps)",
           low=0.0, low_open=True),
]
BetaOpt = Annotated[
    float | None, number("With --adversarial trades: weight of the robust term (default 6)", low=0.0)
]
NoRandomInitOpt = Annotated[
    bool,
    typer.Option("--no-random-init", help="With --adversarial: PGD/FGSM start at the clean input"),
]
NoMonitorOpt = Annotated[
    bool,
    typer.Option("--no-monitor", help="With --adversarial: no per-epoch PGD check (no rollback "
                 "on catastrophic overfitting)"),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q")]
DpOpt = Annotated[bool, typer.Option("--dp", help="Train with DP-SGD (Opacus; Poisson sampling)")]
EpsilonOpt = Annotated[
    float | None,
    number("With --dp: target epsilon over the epochs (default 3 unless --noise-multiplier)",
           low=0.0, low_open=True),
]
DeltaOpt = Annotated[
    float | None,
    number("With --dp: delta (default 1e-5; keep it below 1/n)", low=0.0, high=1.0,
           low_open=True, high_open=True),
]
GradNormOpt = Annotated[
    float | None,
    number("With --dp: per-sample clipping norm (default 1.0)", "--max-grad-norm", low=0.0,
           low_open=True),
]
NoiseOpt = Annotated[
    float | None,
    number("With --dp: noise multiplier instead of a target epsilon (> 0; 0 adds no noise, "
           "no privacy)", "--noise-multiplier", low=0.0, low_open=True),
]
AccountantOpt = Annotated[
    str | None, typer.Option(help="With --dp: prv | rdp | gdp (default prv; the other "
                             "epsilon is computed beside it)")
]
GradModeOpt = Annotated[
    str | None, typer.Option("--grad-sample-mode", help="With --dp: auto | ghost | hooks "
                             "(default auto: ghost clipping where the layers allow it)")
]
DpFixOpt = Annotated[
    bool, typer.Option("--dp-fix", help="With --dp: replace BatchNorm with GroupNorm (Opacus)")
]


def _dp_settings(
    dp: bool, *, adversarial: str | None, epsilon: float | None, delta: float | None,
    max_grad_norm: float | None, noise_multiplier: float | None, dp_fix: bool,
    accountant: str | None = None, grad_sample_mode: str | None = None,
) -> dict[str, Any]:
    """The keywords of :func:`dlsec.scenarios.dp.dp_training`; a DP flag without ``--dp``
    (or ``--dp`` with ``--adversarial``) is an error, never silently ignored."""
    given = {"--epsilon": epsilon is not None, "--delta": delta is not None,
             "--max-grad-norm": max_grad_norm is not None,
             "--noise-multiplier": noise_multiplier is not None, "--dp-fix": dp_fix,
             "--accountant": accountant is not None,
             "--grad-sample-mode": grad_sample_mode is not None}
    if not dp:
        stray = [flag for flag, on in given.items() if on]
        if stray:
            raise TrainingError(f"{', '.join(stray)} only apply with --dp")
        return {}
    from dlsec.scenarios.dp import ACCOUNTANTS, GRAD_SAMPLE_MODES

    if accountant is not None and accountant not in ACCOUNTANTS:
        raise TrainingError(f"--accountant: unknown accountant {accountant!r} (choose from "
                            f"{', '.join(ACCOUNTANTS)})")
    if grad_sample_mode is not None and grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise TrainingError(f"--grad-sample-mode: unknown mode {grad_sample_mode!r} (choose "
                            f"from {', '.join(GRAD_SAMPLE_MODES)})")
    if adversarial is not None:
        raise TrainingError("--dp and --adversarial cannot be combined (choose one defense)")
    if epsilon is not None and noise_multiplier is not None:
        raise TrainingError("--epsilon and --noise-multiplier exclude each other (give one)")
    return {
        "epsilon": epsilon if noise_multiplier is not None or epsilon is not None else 3.0,
        "noise_multiplier": noise_multiplier,
        "delta": 1e-5 if delta is None else delta,
        "max_grad_norm": 1.0 if max_grad_norm is None else max_grad_norm,
        "fix": dp_fix,
        "accountant": accountant or "prv",
        "grad_sample_mode": None if grad_sample_mode in (None, "auto") else grad_sample_mode,
    }


def _adversarial_settings(
    adversarial: str | None, *, eps: float | None, norm: str | None, attack_steps: int | None,
    alpha: float | None, beta: float | None, no_random_init: bool, no_monitor: bool,
) -> dict[str, Any]:
    """The keywords of :func:`dlsec.scenarios.hardening.adversarial_training`; a flag that
    only applies with ``--adversarial`` is an error without it (never silently ignored)."""
    given = {
        "--eps": eps is not None, "--norm": norm is not None,
        "--attack-steps": attack_steps is not None, "--alpha": alpha is not None,
        "--beta": beta is not None, "--no-random-init": no_random_init,
        "--no-monitor": no_monitor,
    }
    if adversarial is None:
        stray = [flag for flag, on in given.items() if on]
        if stray:
            raise TrainingError(f"{', '.join(stray)} only apply with --adversarial METHOD")
        return {}
    settings: dict[str, Any] = {
        "method": adversarial, "eps": eps, "norm": norm or "linf", "steps": attack_steps,
        "random_init": not no_random_init, "monitor": not no_monitor,
    }
    if alpha is not None:
        settings["alpha"] = alpha
    if beta is not None:
        settings["beta"] = beta
    return settings


def _train(
    *, out: Path, dataset: str, model: str, config: TrainConfig, test_size: float, threads: int,
    quiet: bool, adversarial: dict[str, Any], dp: dict[str, Any] | None = None,
) -> None:
    """Load the data, train (adversarially when ``adversarial`` holds settings), save."""
    from dlsec.commands.options import set_threads
    from dlsec.data import load_dataset
    from dlsec.files import atomic_write_text, check_output
    from dlsec.models import save
    from dlsec.training import is_main_process, train_model

    check_output(out, kind="dir", option="--out")
    ds = load_dataset(dataset, seed=config.seed, test_size=test_size)
    set_threads(threads, device=config.device, architecture=model, dataset=ds)
    result: TrainResult
    if dp:
        from dlsec.scenarios.dp import dp_training

        res = dp_training(ds, model, config, progress=not quiet, **dp)
        for line in res.warnings:
            typer.echo(f"warning: {line}", err=True)
        typer.echo(res.mode_line, err=True)
        net, card, result = res.model, res.card, res.result
    elif adversarial:
        from dlsec.scenarios.hardening import adversarial_training

        net, card, result = adversarial_training(ds, model, config, progress=not quiet,
                                                 **adversarial)
    else:
        net, card, result = train_model(ds, model, config, progress=not quiet)
    if not is_main_process():  # under torchrun only rank 0 writes
        return
    save(net, card, out)
    atomic_write_text(out / "history.json", json.dumps(result.history, indent=2) + "\n")
    m = card.metrics
    if dp:
        rec = card.training["dp"]
        typer.echo(
            f"saved {card.architecture} (DP-SGD, epsilon {rec['epsilon_prv']:.4g} PRV / "
            f"{rec['epsilon_rdp']:.4g} RDP, delta {rec['delta']:g}; {rec['accountant']} "
            f"accountant, noise multiplier {rec['noise_multiplier']:.4g}) to {out}: test "
            f"accuracy {m['test_accuracy']:.4f}"
        )
        return
    if not adversarial:
        typer.echo(f"saved {card.architecture} to {out} (test accuracy {m['test_accuracy']:.4f})")
        return
    typer.echo(
        f"saved {card.architecture} ({adversarial['method']}, eps {adversarial['eps']:g}) to "
        f"{out}: test accuracy {m['test_accuracy']:.4f}, PGD accuracy {m['test_pgd_accuracy']:.4f}"
    )
    collapse = getattr(result, "collapse_epoch", None)
    if collapse is not None:
        typer.echo(
            f"catastrophic overfitting at epoch {collapse}: rolled back to epoch "
            f"{result.best_epoch}",
            err=True,
        )


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        out: OutOpt,
        dataset: DatasetOpt = "digits",
        model: ModelOpt = "simplenet",
        epochs: EpochsOpt = 30,
        batch_size: BatchOpt = 64,
        lr: LrOpt = 3e-3,
        optimizer: OptimizerOpt = "adam",
        schedule: ScheduleOpt = "cosine",
        weight_decay: DecayOpt = 0.0,
        val_fraction: ValOpt = 0.1,
        patience: Annotated[int | None, count("Early stopping patience in epochs")] = None,
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        test_size: TestSizeOpt = 0.2,
        adversarial: Annotated[
            str | None, typer.Option(help="Adversarial training: pgd | fgsm-rs | trades")
        ] = None,
        eps: Annotated[
            float | None,
            number("With --adversarial: the radius, in input units", low=0.0, low_open=True),
        ] = None,
        norm: NormOpt = None,
        attack_steps: StepsOpt = None,
        alpha: AlphaOpt = None,
        beta: BetaOpt = None,
        no_random_init: NoRandomInitOpt = False,
        no_monitor: NoMonitorOpt = False,
        threads: ThreadsOpt = 0,
        quiet: QuietOpt = False,
        dp: DpOpt = False,
        epsilon: EpsilonOpt = None,
        delta: DeltaOpt = None,
        max_grad_norm: GradNormOpt = None,
        noise_multiplier: NoiseOpt = None,
        dp_fix: DpFixOpt = False,
        accountant: AccountantOpt = None,
        grad_sample_mode: GradModeOpt = None,
        amp: Annotated[str, typer.Option(help="Mixed precision: off | bf16 | fp16 (CUDA only)")] = "off",
    ) -> None:
        """Train a model and save it (weights, card, curves); --adversarial trains it
        adversarially, --dp with DP-SGD."""
        dp_settings = _dp_settings(
            dp, adversarial=adversarial, epsilon=epsilon, delta=delta,
            max_grad_norm=max_grad_norm, noise_multiplier=noise_multiplier, dp_fix=dp_fix,
            accountant=accountant, grad_sample_mode=grad_sample_mode,
        )
        settings = _adversarial_settings(
            adversarial, eps=eps, norm=norm, attack_steps=attack_steps, alpha=alpha, beta=beta,
            no_random_init=no_random_init, no_monitor=no_monitor,
        )
        config = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
            optimizer=optimizer, schedule=schedule,  # type: ignore[arg-type]
            weight_decay=weight_decay, val_fraction=val_fraction, patience=patience,
            amp=amp,  # type: ignore[arg-type]
        )
        _train(out=out, dataset=dataset, model=model, config=config, test_size=test_size,
               threads=threads, quiet=quiet, adversarial=settings, dp=dp_settings)

    @app.command("adv-train")
    def adv_train(
        out: OutOpt,
        eps: Annotated[
            float, number("Radius of the threat ball, in input units", low=0.0, low_open=True)
        ],
        method: Annotated[str, typer.Option(help="pgd | fgsm-rs | trades")] = "pgd",
        norm: NormOpt = None,
        attack_steps: StepsOpt = None,
        alpha: AlphaOpt = None,
        beta: BetaOpt = None,
        no_random_init: NoRandomInitOpt = False,
        no_monitor: NoMonitorOpt = False,
        dataset: DatasetOpt = "digits",
        model: ModelOpt = "simplenet",
        epochs: EpochsOpt = 30,
        batch_size: BatchOpt = 64,
        lr: LrOpt = 3e-3,
        optimizer: OptimizerOpt = "adam",
        schedule: ScheduleOpt = "cosine",
        weight_decay: DecayOpt = 0.0,
        val_fraction: ValOpt = 0.1,
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        test_size: TestSizeOpt = 0.2,
        threads: ThreadsOpt = 0,
        quiet: QuietOpt = False,
    ) -> None:
        """Deprecated: use dlsec train --adversarial METHOD (same flags; --method is --adversarial)."""
        typer.echo(
            "warning: dlsec adv-train is deprecated: use dlsec train --adversarial "
            f"{method} (--method becomes --adversarial; the other flags are the same)",
            err=True,
        )
        train(
            out=out, dataset=dataset, model=model, epochs=epochs, batch_size=batch_size, lr=lr,
            optimizer=optimizer, schedule=schedule, weight_decay=weight_decay,
            val_fraction=val_fraction, patience=None, seed=seed, device=device,
            test_size=test_size, adversarial=method, eps=eps, norm=norm,
            attack_steps=attack_steps, alpha=alpha, beta=beta, no_random_init=no_random_init,
            no_monitor=no_monitor, threads=threads, quiet=quiet,
        )
