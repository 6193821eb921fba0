"""The ``dlsec`` command: parses flags, calls the library, prints, sets the exit code.

Exit codes: 0 success; 1 a ``--fail-under`` gate failed; 2 bad input or usage (one line
on stderr, no traceback); 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dlsec.errors import DlsecError

app = typer.Typer(
    name="dlsec",
    help="Attack deep-learning models the way real adversaries do, harden them, audit them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: fetch and inspect.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _split_csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command()
def audit(
    dataset: Annotated[str | None, typer.Option(help="digits | fashion-mnist | mnist | idx:DIR | npz:PATH")] = None,
    model: Annotated[str | None, typer.Option(help="Architecture to train: a registered name or module:factory")] = None,
    model_dir: Annotated[str | None, typer.Option("--model-dir", help="Audit a saved model (card.json + weights) instead of training one")] = None,
    out: Annotated[str | None, typer.Option(help="Run directory (default runs/<dataset>-<model>)")] = None,
    config: Annotated[Path | None, typer.Option(help="audit.toml with the same keys as these flags")] = None,
    fail_under: Annotated[list[str] | None, typer.Option("--fail-under", help="KEY=VALUE: exit 1 if metric KEY < VALUE (repeatable)")] = None,
    sections: Annotated[str | None, typer.Option(help="Comma-separated sections to run (default: all default sections)")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for splits, training and attacks")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs when the audit trains the model")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam | sgd")] = None,
    test_size: Annotated[float | None, typer.Option("--test-size", help="Test fraction for datasets without a test split")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (0: one for small models, else torch's default)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output")] = False,
) -> None:
    """Audit a model and write report.json and report.html (exit 1 if a gate fails)."""
    from dlsec.audit.config import load_config
    from dlsec.audit.report.terminal import print_summary
    from dlsec.audit.runner import run_audit

    overrides: dict[str, Any] = {
        "dataset": dataset, "model": model, "model-dir": model_dir, "out": out,
        "fail-under": fail_under or [], "sections": _split_csv(sections), "seed": seed,
        "device": device, "epochs": epochs, "batch-size": batch_size, "lr": lr,
        "optimizer": optimizer, "test-size": test_size, "threads": threads,
    }  # fmt: skip
    cfg = load_config(config, overrides)
    try:
        outcome = run_audit(cfg, progress=not quiet)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        raise typer.Exit(130) from None
    if not quiet:
        print_summary(outcome.report)
    typer.echo(f"report: {outcome.html_path}")
    typer.echo(f"json:   {outcome.json_path}")
    for gate in outcome.report["gates"]:
        if not gate["passed"]:
            typer.echo(
                f"FAIL: {gate['key']} = {gate['value']:.4g} < {gate['threshold']:g}", err=True
            )
    raise typer.Exit(outcome.exit_code)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Directory for weights, card.json and history.json")],
    dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | mnist | idx:DIR | npz:PATH")] = "digits",
    model: Annotated[str, typer.Option(help="A registered name or module:factory")] = "simplenet",
    epochs: Annotated[int, typer.Option()] = 30,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    lr: Annotated[float, typer.Option()] = 3e-3,
    optimizer: Annotated[str, typer.Option(help="adam | sgd")] = "adam",
    schedule: Annotated[str, typer.Option(help="cosine | step | none")] = "cosine",
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    val_fraction: Annotated[float, typer.Option("--val-fraction")] = 0.1,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience in epochs")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    test_size: Annotated[float, typer.Option("--test-size")] = 0.2,
    adversarial: Annotated[str | None, typer.Option(help="Adversarial training: pgd | fgsm-rs | trades")] = None,
    eps: Annotated[float | None, typer.Option(help="With --adversarial: the radius, in input units")] = None,
    norm: Annotated[str, typer.Option(help="With --adversarial: linf | l2")] = "linf",
    attack_steps: Annotated[int | None, typer.Option("--attack-steps", help="With --adversarial: attack steps per batch")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a model and save it (safetensors weights + JSON card + training curves)."""
    import json

    from dlsec.data import load_dataset
    from dlsec.files import atomic_write_text
    from dlsec.models import save
    from dlsec.training import TrainConfig, is_main_process, train_model

    tconf = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,  # type: ignore[arg-type]
        schedule=schedule, weight_decay=weight_decay, val_fraction=val_fraction,  # type: ignore[arg-type]
        patience=patience, seed=seed, device=device,
    )  # fmt: skip
    ds = load_dataset(dataset, seed=seed, test_size=test_size)
    if adversarial is not None:
        from dlsec.commands.adversarial import run_adversarial

        net, card, result = run_adversarial(
            ds, model, tconf, method=adversarial, eps=eps, norm=norm, steps=attack_steps,
            progress=not quiet,
        )  # fmt: skip
    else:
        net, card, result = train_model(ds, model, tconf, progress=not quiet)
    if not is_main_process():  # under torchrun only rank 0 writes
        return
    save(net, card, out)
    atomic_write_text(out / "history.json", json.dumps(result.history, indent=2) + "\n")
    typer.echo(
        f"saved {card.architecture} to {out} (test accuracy {card.metrics['test_accuracy']:.4f})"
    )


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset to download: mnist")],
    to: Annotated[Path | None, typer.Option(help="Target directory (default $DLSEC_DATA_DIR/<name>)")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="Mirror to download from")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Download a dataset's files, verify their sha256, resume partial downloads."""
    from dlsec.data import DatasetError
    from dlsec.data.fetch import fetch_mnist
    from dlsec.data.registry import default_data_dir

    if name != "mnist":
        raise DatasetError(f"unknown dataset to fetch {name!r} (choose from: mnist)")
    target = to or default_data_dir() / name
    kwargs: dict[str, Any] = {"progress": not quiet}
    if base_url:
        kwargs["base_url"] = base_url
    paths = fetch_mnist(target, **kwargs)
    typer.echo(f"{name}: {len(paths)} files verified in {target} (load it with --dataset idx:{target})")


@data_app.command("info")
def data_info(
    spec: Annotated[str, typer.Argument(help="digits | fashion-mnist | mnist | idx:DIR | npz:PATH")],
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Load a dataset, validate it and print its summary."""
    import json

    from dlsec.data import load_dataset

    typer.echo(json.dumps(load_dataset(spec, seed=seed).summary(), indent=2))


def _register_capabilities() -> None:
    from dlsec.commands import register_all

    register_all(app)


_register_capabilities()


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps user errors to one line and exit 2, never a traceback."""
    try:
        app(args=argv, prog_name="dlsec")
    except DlsecError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
