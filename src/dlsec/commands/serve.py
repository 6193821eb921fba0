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
import math
import socket
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from torch import Tensor

from dlsec.commands.options import DeviceOpt, TrustCodeOpt
from dlsec.errors import DlsecError
from dlsec.output_policies import OutputPolicy
from dlsec.serve.detection import DEFAULT_DELTA, DETECTOR_NAMES
from dlsec.serve.limits import RequestLimits
from dlsec.serve.store import KeyStore, check_limits
from dlsec.serve.watermark import MIN_SECRET_BYTES

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


def _watermark_secret(fraction: float | None, path: Path | None) -> bytes | None:
    """Check ``--watermark`` and read ``--watermark-secret-file`` (never echoed)."""
    if fraction is None:
        if path is not None:
            raise ServeCommandError("--watermark-secret-file needs --watermark FRACTION")
        return None
    if not 0.0 < fraction < 1.0:
        raise ServeCommandError(f"--watermark must be a fraction in (0, 1), got {fraction}")
    if path is None:
        return None
    try:
        secret = path.read_bytes()
    except OSError as exc:
        raise ServeCommandError(f"cannot read --watermark-secret-file {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ServeCommandError(f"--watermark-secret-file {path}: the secret must be at least "
                                f"{MIN_SECRET_BYTES} bytes")
    return secret


ON_FLAG = ("log", "throttle", "block")  # dlsec.serve.app.ON_FLAG_ACTIONS (app imports fastapi)
THROTTLE_RATE = 0.2  # dlsec.serve.app.DEFAULT_THROTTLE_RATE


def _detectors(spec: str) -> tuple[str, ...]:
    """``--detect prada,ood`` as names; ``none`` (or empty) for no detection."""
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if names in ((), ("none",)):
        return ()
    for name in names:
        if name not in DETECTOR_NAMES:
            raise ServeCommandError(f"--detect: unknown detector {name!r} (choose from "
                                    f"{', '.join(DETECTOR_NAMES)}, comma-separated, or none)")
    if len(set(names)) != len(names):
        raise ServeCommandError(f"--detect names a detector twice: {spec}")
    return names


def _check_detection(on_flag: str, throttle_rate: float, prada_delta: float) -> None:
    if on_flag not in ON_FLAG:
        raise ServeCommandError(f"--on-flag must be one of {', '.join(ON_FLAG)}, got {on_flag!r}")
    if not (math.isfinite(throttle_rate) and throttle_rate > 0):
        raise ServeCommandError(f"--throttle-rate must be a finite number of requests per "
                                f"second > 0, got {throttle_rate}")
    if not 0 < prada_delta <= 1:
        raise ServeCommandError(f"--prada-delta must be in (0, 1], got {prada_delta}")


def _reference(path: Path | None, model_dir: Path, names: tuple[str, ...]) -> Tensor | None:
    """The ``ood`` detector's benign sample: ``--reference FILE.npy``, else the training
    split of the dataset the card names (when it loads offline)."""
    if "ood" not in names:
        if path is not None:
            raise ServeCommandError("--reference is only used by --detect ood")
        return None
    if path is not None:
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ServeCommandError(f"cannot read --reference {path}: {exc}") from None
        if arr.dtype.kind not in "fiu" or arr.ndim < 2 or arr.shape[0] < 2:
            raise ServeCommandError(f"--reference {path}: need a numeric array of at least 2 "
                                    f"rows, got dtype {arr.dtype} shape {arr.shape}")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    from dlsec.data import load_dataset
    from dlsec.models.io import read_card

    card = read_card(model_dir)
    if not card.dataset:
        raise ServeCommandError("--detect ood needs --reference FILE.npy (the model's card "
                                "names no dataset)")
    try:
        return load_dataset(card.dataset).x_train
    except DlsecError as exc:
        raise ServeCommandError(f"--detect ood needs --reference FILE.npy (the card's dataset "
                                f"{card.dataset!r} does not load here: {exc})") from None


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
    detect: Annotated[str, typer.Option("--detect", help=f"Extraction detectors, comma-separated: {', '.join(DETECTOR_NAMES)}, or none")] = "prada",
    on_flag: Annotated[str, typer.Option("--on-flag", help="What a flagged key gets: log | throttle (at most --throttle-rate requests/s) | block (403)")] = "throttle",
    throttle_rate: Annotated[float, typer.Option("--throttle-rate", help="Requests per second of a flagged key under --on-flag throttle")] = THROTTLE_RATE,
    prada_delta: Annotated[float, typer.Option("--prada-delta", help="PRADA flags a key while the Shapiro-Wilk W of its query distances is below this")] = DEFAULT_DELTA,
    reference: Annotated[Path | None, typer.Option("--reference", help="Benign inputs (.npy, rows in the model's input shape) for --detect ood; default: the training split of the card's dataset")] = None,
    detect_background: Annotated[bool, typer.Option("--detect-background", help="Run the detectors in a worker thread after each answer (lower latency; a flag takes effect a few requests later)")] = False,
    device: DeviceOpt = "auto",
    trust_code: TrustCodeOpt = False,
    watermark: Annotated[float | None, typer.Option("--watermark", metavar="FRACTION", help="DAWN: answer this fraction of each key's distinct inputs with a wrong, consistent label and record it for dlsec ownership (default off: each mark is a wrong answer to a benign client too)")] = None,
    watermark_secret_file: Annotated[Path | None, typer.Option("--watermark-secret-file", help="The watermark's HMAC secret (at least 16 bytes); default: drawn once and kept in the database")] = None,
) -> None:
    """Serve a saved model over HTTP: API keys, rate limits, budgets, a query log."""
    # every flag is checked before the model is loaded or a port is bound
    default_policy = OutputPolicy.parse(policy)
    check_limits(rate=rate, burst=burst, budget=None)
    limits = RequestLimits(max_body_bytes=max_body_bytes, max_rows=max_rows)
    names = _detectors(detect)
    _check_detection(on_flag, throttle_rate, prada_delta)
    ref = _reference(reference, model_dir, names)
    secret = _watermark_secret(watermark, watermark_secret_file)
    try:
        import uvicorn

        from dlsec.serve.app import create_app
        from dlsec.serve.ledger import ServedWatermark, WatermarkLedger
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _SERVE_MODULES:
            raise ServeCommandError(
                f"dlsec serve needs the serve extra ({exc.name} is missing): "
                "pip install 'dlsec[serve]'") from None
        raise
    with KeyStore(db, create=False) as store:
        marks = None
        if watermark is not None:
            marks = ServedWatermark(WatermarkLedger(db), fraction=watermark, secret=secret)
        app = create_app(model_dir, store=store, policy=default_policy, limits=limits,
                         rate=rate, burst=burst, device=device, trust_code=trust_code,
                         watermark=marks, detect=names, on_flag=on_flag,
                         throttle_rate=throttle_rate, prada_delta=prada_delta, reference=ref,
                         detect_background=detect_background)
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
            if marks is not None:
                marks.ledger.close()
    typer.echo("dlsec serve: stopped", err=True)
