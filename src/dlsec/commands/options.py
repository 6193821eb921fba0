"""Options shared by every command, validated where they are parsed.

A number out of range is a usage error (one line, exit 2) before any work: counts are at
least 1, seeds are in ``0..SEED_MAX``, rates in [0, 1], and no float option takes ``nan``
or ``inf``. Thread counts follow :func:`dlsec.training.check_threads`, devices
:func:`dlsec.training.resolve_device`.

Example:
    >>> from typing import Annotated
    >>> def cmd(samples: Annotated[int | None, count("Attack the first N test points")] = None,
    ...         seed: SeedOpt = 0, threads: ThreadsOpt = 0) -> None: ...
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer

from dlsec.errors import DlsecError
from dlsec.training import SEED_MAX, check_threads, resolve_device


def number(help: str, *decls: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> Any:
    """A finite float option, optionally in a range (None passes)."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            lo = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
            hi = "" if high is None else f" {'<' if high_open else '<='} {high:g}"
            raise typer.BadParameter(f"{value:g} is not in the range {lo}x{hi}")
        return value

    return typer.Option(*decls, help=help, callback=check)


def _threads(value: int | None) -> int | None:
    if value is None:
        return value
    try:
        return check_threads(value)
    except DlsecError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--threads: ")) from None


def _device(value: str | None) -> str | None:
    if value is None:
        return value
    try:
        resolve_device(value)
    except DlsecError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def count(help: str, *decls: str, low: int = 1) -> Any:
    """An integer option that is at least ``low`` (default 1)."""
    return typer.Option(*decls, min=low, help=help)


def share(help: str, *decls: str) -> Any:
    """A share in [0, 1]."""
    return number(help, *decls, low=0.0, high=1.0)


def fraction(help: str, *decls: str) -> Any:
    """A test or validation fraction in (0, 1)."""
    return number(help, *decls, low=0.0, high=1.0, low_open=True, high_open=True)


def workers_option(trainings: str) -> Any:
    """``--workers N``: ``trainings`` (e.g. "Shadow models trained one by one") run as tasks
    on a local Ray cluster of N CPUs; the command builds its executor with
    :func:`dlsec.executor.make_executor`, which checks the value and Ray."""
    return count(f"{trainings} run as tasks on a local Ray cluster of N CPUs (needs "
                 "dlsec\\[ray]); 1: one after another here. Same results either way")


def ray_address_option(trainings: str) -> Any:
    """``--ray-address ADDR``: a running Ray cluster for ``trainings`` instead."""
    return typer.Option("--ray-address", help=f"HOST:PORT of a running Ray cluster for {trainings}")


SeedOpt = Annotated[int, typer.Option(min=0, max=SEED_MAX, help=f"Seed (0..{SEED_MAX})")]
ThreadsOpt = Annotated[
    int,
    typer.Option(
        callback=_threads,
        help="CPU threads (0: one for small models on CPU, else torch's default)",
    ),
]
DeviceOpt = Annotated[
    str, typer.Option(callback=_device, help="auto | cpu | cuda | cuda:N | mps")
]
TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="Allow a model card whose architecture is module:factory to import that module",
    ),
]
TestSizeOpt = Annotated[
    float, fraction("Test fraction for datasets without a test split", "--test-size")
]


def set_threads(
    threads: int, *, device: Any, model: Any = None, architecture: str | None = None,
    dataset: Any = None,
) -> int:
    """:func:`dlsec.training.configure_threads` for a command: with the model it computes
    with, or, before training one, the ``architecture`` the user named (built on ``dataset``
    only to count its parameters, without touching the global random state)."""
    import torch

    from dlsec.training import configure_threads

    dev = resolve_device(device)
    if model is None and architecture is not None and threads == 0 and dev.type == "cpu":
        from dlsec.models import build_network

        with torch.random.fork_rng(devices=[]):
            try:
                model = build_network(
                    architecture, input_shape=dataset.input_shape, num_classes=dataset.num_classes
                )
            except DlsecError:
                model = None  # the real build reports the problem
    return configure_threads(threads, model=model, device=dev)
