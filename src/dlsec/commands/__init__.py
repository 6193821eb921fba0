"""CLI commands of each capability, one module per area.

Each module defines ``register(app: typer.Typer) -> None`` that adds its commands (or a
sub-app) to the ``dlsec`` command; :func:`register_all` discovers every module here, so a
capability adds its commands without touching ``dlsec.cli``. :mod:`.options` holds the
options every command shares (it registers nothing). Commands raise
:class:`dlsec.errors.DlsecError` for user mistakes; the entry point turns that into one
line on stderr and exit code 2.
"""

from __future__ import annotations

import typer

from dlsec.plugins import import_submodules

SHARED = ("options",)  # modules of shared pieces, not commands


def register_all(app: typer.Typer) -> None:
    for module in import_submodules(__name__, __path__, skip=SHARED):
        module.register(app)
