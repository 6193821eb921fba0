"""``dlsec serve``: one saved model behind the zero-trust HTTP API (:mod:`dlsec.serve.app`).

``dlsec serve MODEL_DIR --db keys.db`` loads the model the safe way (safetensors and a
JSON card, the weights' sha256 checked, nothing unpickled; a card naming a
``module:factory`` architecture is refused unless ``--trust-code``), opens an existing
key database (``dlsec keys create --db keys.db --name ...`` makes one; a missing one is
refused rather than created empty) and runs uvicorn until Ctrl-C. Every route but
``/healthz`` and ``/openapi.json`` needs a key. It listens on 127.0.0.1 by default; any
other host prints a warning line (the API is then reachable from the network, still only
with a key). The server needs the ``serve`` extra: ``pip install 'dlsec[serve]'``.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated

import typer

from dlsec.commands.options import DeviceOpt, TrustCodeOpt
from dlsec.errors import DlsecError
from dlsec.output_policies import OutputPolicy
from dlsec.serve.limits import RequestLimits
from dlsec.serve.store import KeyStore, check_limits

_SERVE_MODULES = ("fastapi", "starlette", "uvicorn", "prometheus_client", "pydantic")


class ServeCommandError(DlsecError):
    """dlsec serve cannot start (missing extra, bad flag)."""


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost`` or a loopback address)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (bound here, so a port in use is one line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        raise ServeCommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(
    model_dir: Annotated[Path, typer.Argument(help="A saved model: card.json + weights (dlsec train --out)")],
    db: Annotated[Path, typer.Option("--db", help="The key database (create it with: dlsec keys create --db PATH)")],
    host: Annotated[str, typer.Option(help="Address to listen on (not 127.0.0.1: reachable from the network)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one)")] = 8000,
    policy: Annotated[str, typer.Option(help="Output policy of keys without their own: scores | topk:K | rounded:D | label | noise:SIGMA | reverse-sigmoid:BETA,GAMMA")] = "scores",
    rate: Annotated[float | None, typer.Option(help="Requests per second of keys without their own rate (default unlimited)")] = None,
    burst: Annotated[int | None, typer.Option(help="Bucket size in requests (default ceil(rate))")] = None,
    max_rows: Annotated[int, typer.Option("--max-rows", help="Inputs per request at most (413 beyond)")] = RequestLimits.max_rows,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Request body bytes at most (413 beyond)")] = RequestLimits.max_body_bytes,
    device: DeviceOpt = "auto",
    trust_code: TrustCodeOpt = False,
) -> None:
    """Serve a saved model over HTTP: API keys, rate limits, budgets, a query log."""
    # every flag is checked before the model is loaded or a port is bound
    default_policy = OutputPolicy.parse(policy)
    check_limits(rate=rate, burst=burst, budget=None)
    limits = RequestLimits(max_body_bytes=max_body_bytes, max_rows=max_rows)
    try:
        import uvicorn

        from dlsec.serve.app import create_app
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _SERVE_MODULES:
            raise ServeCommandError(
                f"dlsec serve needs the serve extra ({exc.name} is missing): "
                "pip install 'dlsec[serve]'") from None
        raise
    with KeyStore(db, create=False) as store:
        app = create_app(model_dir, store=store, policy=default_policy, limits=limits,
                         rate=rate, burst=burst, device=device, trust_code=trust_code)
        if not is_loopback(host):
            typer.echo(f"warning: listening on {host}, reachable from the network; every "
                       "request but /healthz still needs an API key", err=True)
        sock = _listen(host, port)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                access_log=False, server_header=False)
        server = uvicorn.Server(config)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"dlsec serve: {model_dir} on http://{shown}:{bound} (Ctrl-C stops)", err=True)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: a clean stop
            pass
        finally:
            sock.close()
    typer.echo("dlsec serve: stopped", err=True)
