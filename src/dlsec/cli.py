"""The ``dlsec`` command: parses flags, calls the library, prints, sets the exit code.

Exit codes: 0 success; 1 a ``--fail-under`` gate failed; 2 bad input or usage (one line
on stderr, no traceback); 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

# Ctrl-C while Python imports torch and the commands (seconds) would print a traceback of
# the import; until main() starts it ends the process quietly instead (exit 130). Nothing
# heavy may be imported above this block.
import os
import signal
import sys
from typing import Any


def _interrupted_at_start_up(signum: int, frame: object) -> None:
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def _start_up_sigint(install: bool) -> None:
    """Install the start-up handler (only over Python's default one: a background job's
    ignored SIGINT stays ignored), or put Python's default back once imports are done."""
    ours: Any = _interrupted_at_start_up
    old, new = (signal.default_int_handler, ours) if install else (ours, signal.default_int_handler)
    if signal.getsignal(signal.SIGINT) is old:
        try:
            signal.signal(signal.SIGINT, new)
        except ValueError:  # not the main thread: signals cannot be set there
            pass


_start_up_sigint(True)

from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

from dlsec.commands.options import SeedOpt  # noqa: E402
from dlsec.errors import DlsecError  # noqa: E402
from dlsec.training import SEED_MAX  # noqa: E402

app = typer.Typer(
    name="dlsec",
    help="Attack deep-learning models the way real adversaries do, harden them, audit them.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: fetch, inspect and generate.")
app.add_typer(data_app, name="data")


def _split_csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command()
def audit(
    dataset: Annotated[str | None, typer.Option(help="digits | cifar-synthetic | fashion-mnist | mnist | idx:DIR | npz:PATH")] = None,
    model: Annotated[str | None, typer.Option(help="Architecture to train: a registered name or module:factory")] = None,
    model_dir: Annotated[str | None, typer.Option("--model-dir", help="Audit a saved model (card.json + weights) instead of training one")] = None,
    out: Annotated[str | None, typer.Option(help="Run directory (default runs/<dataset>-<model>)")] = None,
    config: Annotated[Path | None, typer.Option(help="audit.toml with the same keys as these flags")] = None,
    fail_under: Annotated[list[str] | None, typer.Option("--fail-under", help="KEY=VALUE: exit 1 if metric KEY < VALUE; KEY:lower=VALUE (or :upper) compares the bound of its 95% interval (repeatable)")] = None,
    sections: Annotated[str | None, typer.Option(help="Comma-separated sections to run (default: all default sections)")] = None,
    defenses: Annotated[str | None, typer.Option(help="Comma-separated defenses to build and attack, one matrix row each: none, pgd-at, trades, fgsm-rs, dp:EPS, sanitize:METHOD, policy:SPEC")] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=SEED_MAX, help="Seed for splits, training and attacks")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs when the audit trains the model")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam | sgd")] = None,
    test_size: Annotated[float | None, typer.Option("--test-size", help="Test fraction for datasets without a test split")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (0: one for small models, else torch's default)")] = None,
    workers: Annotated[int | None, typer.Option(help="Independent trainings (shadow models, matrix rows and retrains, poisoning victims, folds and retrains, DP sweep) on a local Ray cluster of N CPUs (needs dlsec\\[ray]); 1: one after another")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="HOST:PORT of a running Ray cluster for the independent trainings")] = None,
    trust_code: Annotated[bool, typer.Option("--trust-code", help="Let --model-dir's card name a module:factory architecture (imports and runs that module)")] = False,
    url: Annotated[str | None, typer.Option("--url", help="Audit a model served by dlsec serve, black-box (needs --dataset)")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="The key for --url (default: the DLSEC_API_KEY variable)", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output")] = False,
) -> None:
    """Audit a model and write report.json and report.html (exit 1 if a gate fails).

    ``--url`` audits a served model through its API: the sections that need the model's
    weights or training data are skipped, and the report says why.
    """
    from contextlib import ExitStack

    from dlsec.audit.config import load_config
    from dlsec.audit.report.terminal import print_summary
    from dlsec.audit.runner import run_audit
    from dlsec.commands._target import remote_oracles
    from dlsec.files import check_output

    overrides: dict[str, Any] = {
        "dataset": dataset, "model": model, "model-dir": model_dir, "out": out,
        "fail-under": fail_under or [], "sections": _split_csv(sections),
        "defenses": _split_csv(defenses), "seed": seed,
        "device": device, "epochs": epochs, "batch-size": batch_size, "lr": lr,
        "optimizer": optimizer, "test-size": test_size, "threads": threads,
        "workers": workers, "ray-address": ray_address,
        "trust-code": True if trust_code else None,
    }
    cfg = load_config(config, overrides)
    if url is not None and (cfg.model_dir or model is not None):
        raise DlsecError("--url audits a served model: drop --model-dir and --model")
    if url is not None and cfg.dataset is None:
        raise DlsecError("--dataset: required with --url (the server does not say which data "
                         "its model learned from)")
    check_output(cfg.run_dir, kind="dir", option="--out")
    try:
        with ExitStack() as stack:
            remote = stack.enter_context(remote_oracles(url, api_key)) if url else None
            outcome = run_audit(cfg, progress=not quiet, remote=remote, url=url or "")
    except KeyboardInterrupt:
        _told_interrupted.append(True)
        typer.echo("interrupted: rerun the same command to resume", err=True)
        raise typer.Exit(130) from None
    if not quiet:
        print_summary(outcome.report)
    typer.echo(f"report: {outcome.html_path}")
    typer.echo(f"json:   {outcome.json_path}")
    for gate in outcome.report["gates"]:
        if not gate["passed"]:
            shown = (
                f"= {gate['value']:.4g} < {gate['threshold']:g}" if gate["value"] is not None
                else f"is null ({gate.get('reason', 'not a number')})"
            )
            bound = f":{gate['bound']}" if "bound" in gate else ""
            typer.echo(f"FAIL: {gate['key']}{bound} {shown}", err=True)
    raise typer.Exit(outcome.exit_code)


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
    from dlsec.files import check_output

    if name != "mnist":
        raise DatasetError(f"unknown dataset to fetch {name!r} (choose from: mnist)")
    target = check_output(to or default_data_dir() / name, kind="dir", option="--to")
    kwargs: dict[str, Any] = {"progress": not quiet}
    if base_url is not None:  # an empty --base-url is an error, not the default mirror
        kwargs["base_url"] = base_url
    paths = fetch_mnist(target, **kwargs)
    typer.echo(f"{name}: {len(paths)} files verified in {target} (load it with --dataset idx:{target})")


@data_app.command("info")
def data_info(
    spec: Annotated[str, typer.Argument(help="digits | cifar-synthetic | fashion-mnist | mnist | idx:DIR | npz:PATH")],
    seed: SeedOpt = 0,
) -> None:
    """Load a dataset, validate it and print its summary."""
    import json

    from dlsec.data import load_dataset

    typer.echo(json.dumps(load_dataset(spec, seed=seed).summary(), indent=2))


@data_app.command("make-synthetic")
def data_make_synthetic(
    out: Annotated[Path, typer.Option("--out", help="The .npz file to write")],
    shape: Annotated[str, typer.Option(help="C,H,W of each image")] = "3,32,32",
    classes: Annotated[int, typer.Option(help="Number of classes")] = 10,
    n: Annotated[int, typer.Option("--n", help="Number of samples (balanced over the classes)")] = 2000,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Store x as N x H x W x C")] = False,
    seed: SeedOpt = 0,
) -> None:
    """Write a generated, learnable image dataset (coloured, oriented textures + noise) as .npz."""
    from dlsec.data.synthetic import write_synthetic
    from dlsec.files import check_output

    target = check_output(out, kind="file", option="--out")
    summary = write_synthetic(target, n=n, shape=_parse_shape(shape), classes=classes,
                              seed=seed, channels_last=channels_last)
    typer.echo(f"{target}: {summary} (load it with --dataset npz:{target})")


def _parse_shape(text: str) -> tuple[int, ...]:
    from dlsec.data import DatasetError

    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise DatasetError(f"--shape: expected C,H,W integers such as 3,32,32, got {text!r}") from None


from dlsec.commands import register_all  # noqa: E402

register_all(app)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _usage_error(message: str, command_path: str) -> int:
    typer.echo(f"error: {_one_line(message)} (see {command_path} --help)", err=True)
    return 2


def _command_path(args: list[str]) -> str:
    """``dlsec`` followed by the (sub)command names at the start of ``args``."""
    command: Any = typer.main.get_command(app)
    path = ["dlsec"]
    for arg in args:
        sub = getattr(command, "commands", {}).get(arg)
        if sub is None:
            break
        command, path = sub, [*path, arg]
    return " ".join(path)


# set by a command that has already said it was interrupted (and how to resume)
_told_interrupted: list[bool] = []


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps user errors to one line and exit 2, never a traceback.

    A usage error (no command, an unknown flag, a missing or malformed value) is one line
    ``error: ... (see dlsec COMMAND --help)``, exit 2; ``--help`` prints help, exit 0; a
    :class:`DlsecError` is one line ``error: ...``, exit 2; Ctrl-C ends with exit 130
    (a long command says how to resume).
    """
    _start_up_sigint(False)  # imports done: Ctrl-C is a KeyboardInterrupt again
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        return _usage_error("missing command", "dlsec")
    # typer >= 0.20 carries its own copy of click; older ones use click itself
    click_errors = sys.modules[typer.BadParameter.__module__]
    try:
        rv = app(args=args, prog_name="dlsec", standalone_mode=False)
    except DlsecError as exc:
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except click_errors.UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        path = ctx.command_path if ctx is not None else _command_path(args)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group named without a command
            return _usage_error("missing command", path)
        return _usage_error(exc.format_message(), path)
    except click_errors.ClickException as exc:
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):  # Abort: Ctrl-C or end of input in a prompt
        typer.echo("interrupted", err=True)
        return 130
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if rv == 130 and not _told_interrupted:
        # typer >= 0.20 turns a Ctrl-C inside a command into a silent exit 130
        typer.echo("interrupted", err=True)
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
