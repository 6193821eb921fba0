"""A dlsec federation as a Flower App project, submitted to a SuperLink (the deployment
engine: ``flower-superlink`` and ``flower-supernode`` processes, on one machine or many).

:func:`write_project` writes the project directory: a ``pyproject.toml`` naming dlsec's
ServerApp and ClientApp (:mod:`dlsec.scenarios.federated_apps`) with the federation's
settings as the run config. :func:`submit` checks that the SuperLink answers (TCP, then a
TLS handshake against the given CA) before it runs ``flwr run --stream`` with a Flower
configuration of its own (``FLWR_HOME`` in a temporary directory: the user's
``~/.flwr`` is left alone), and returns the accuracy per round the ServerApp logged.

Example (SuperLink and SuperNodes already running, see the README)::

    write_project(Path("fed"), FederationSettings(clients=3, rounds=5, strategy="fedmedian",
                                                  malicious=0.34))
    result = submit(Path("fed"), superlink="10.0.0.1:9093", ca_cert=Path("ca.pem"))
    result.accuracy[-1]

Notes:
    The SuperLink and SuperNodes need dlsec (and Flower 1.42) in their Python
    environment: the Flower App carries no code, only the references to dlsec's apps, and
    the SuperLink runs with ``--disable-runtime-dependency-installation``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dlsec.errors import DlsecError

APP_COMPONENTS = {"serverapp": "dlsec.scenarios.federated_apps:server_app",
                  "clientapp": "dlsec.scenarios.federated_apps:client_app"}
CONNECTION = "dlsec"
ROUND_LINE = re.compile(r"dlsec round (\d+)/(\d+) accuracy ([0-9.]+) backdoor_asr ([0-9.]+)")
FINAL_LINE = re.compile(r"dlsec final accuracy ([0-9.]+) weights_sha256 ([0-9a-f]{64})")
DP_LINE = re.compile(r"dlsec client-level DP epsilon ([0-9.e+-]+|inf) delta ([0-9.e+-]+)")


OPTIONAL_FLOATS = ("scale", "clip_norm", "dp_noise", "dp_delta")  # 0 in a run config: None


class DeploymentError(DlsecError):
    """A deployment that cannot be submitted: an unreachable SuperLink, a missing or wrong
    certificate, a run that fails."""


@dataclass(frozen=True)
class FederationSettings:
    """One federation's settings, the run config of the Flower App (keys hyphenated:
    ``local-epochs``). The meanings are :func:`dlsec.scenarios.federated.run_federation`'s;
    in the run config ``scale``, ``clip-norm``, ``dp-noise`` and ``dp-delta`` 0 mean None (the
    attack's default scale, the round's median norm, no client-level DP, ``1/clients^1.1``)
    and ``result-path`` "" means no JSON on the server."""

    dataset: str = "digits"
    test_size: float = 0.2
    seed: int = 0
    architecture: str = "simplenet"
    clients: int = 3
    rounds: int = 5
    strategy: str = "fedavg"
    malicious: float = 0.0
    attack: str = "sign-flip"
    scale: float | None = None
    partition: str = "iid"
    local_epochs: int = 1
    lr: float = 0.1
    batch_size: int = 16
    clip_norm: float | None = None
    root_size: int = 100
    backdoor_target: int = 0
    dp_noise: float | None = None
    dp_clip: float = 0.3  # dlsec.scenarios.federated.DP_CLIP
    dp_side: str = "server"
    dp_delta: float | None = None
    result_path: str = ""

    def to_run_config(self) -> dict[str, Any]:
        """The run config (TOML-typed values: no None)."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            if k in OPTIONAL_FLOATS:
                v = 0.0 if v is None else float(v)
            out[k.replace("_", "-")] = v
        return out

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> FederationSettings:
        """The settings in a run config (missing keys: the defaults; unknown keys: an error)."""
        names = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in names:
                raise DeploymentError(f"unknown run-config key {key!r} (known: "
                                      f"{', '.join(sorted(k.replace('_', '-') for k in names))})")
            values[name] = value
        for name in OPTIONAL_FLOATS:
            if name in values:
                values[name] = float(values[name]) or None
        for name in ("seed", "clients", "rounds", "local_epochs", "batch_size", "root_size",
                     "backdoor_target"):
            if name in values:
                values[name] = int(values[name])
        for name in ("test_size", "malicious", "lr", "dp_clip"):
            if name in values:
                values[name] = float(values[name])
        return cls(**values)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_project(directory: Path, settings: FederationSettings, *,
                  name: str = "dlsec-federation") -> Path:
    """Write the Flower App project for ``settings`` in ``directory`` (created; an existing
    pyproject.toml there is replaced); return its pyproject.toml."""
    if directory.exists() and not directory.is_dir():
        raise DeploymentError(f"{directory}: not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in settings.to_run_config().items())
    text = (
        "# A dlsec federation as a Flower App (written by `dlsec flower app`).\n"
        "# The apps are dlsec's: the SuperLink and SuperNodes need dlsec installed.\n"
        "[build-system]\nrequires = [\"hatchling\"]\nbuild-backend = \"hatchling.build\"\n\n"
        f"[project]\nname = \"{name}\"\nversion = \"1.0.0\"\n"
        "description = \"dlsec federated learning under attack\"\nlicense = \"Apache-2.0\"\n"
        "dependencies = [\"flwr==1.42.0\"]\n\n"
        "[tool.hatch.build.targets.wheel]\npackages = [\".\"]\n\n"
        "[tool.flwr.app]\npublisher = \"dlsec\"\n\n"
        "[tool.flwr.app.components]\n"
        + "".join(f"{k} = \"{v}\"\n" for k, v in APP_COMPONENTS.items())
        + f"\n[tool.flwr.app.config]\n{config}\n")
    path = directory / "pyproject.toml"
    tmp = path.with_name(".pyproject.toml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port), or a one-line error."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeploymentError(f"--superlink must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def probe(address: str, ca_cert: Path | None, *, timeout: float = 5.0) -> None:
    """Raise a one-line :class:`DeploymentError` unless ``address`` accepts a TCP
    connection and (with ``ca_cert``) completes a TLS handshake whose certificate the CA
    signed for that host, all within ``timeout`` seconds."""
    host, port = parse_address(address)
    if ca_cert is not None and not ca_cert.is_file():
        raise DeploymentError(f"{ca_cert}: CA certificate not found")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise DeploymentError(f"cannot reach the SuperLink at {address}: "
                              f"{e.strerror or e.__class__.__name__}") from None
    with sock:
        if ca_cert is None:
            return
        try:
            context = ssl.create_default_context(cafile=str(ca_cert))
        except (ssl.SSLError, OSError) as e:
            raise DeploymentError(f"{ca_cert}: not a PEM CA certificate ({e})") from None
        try:
            with context.wrap_socket(sock, server_hostname=host):
                pass
        except (ssl.SSLError, ssl.CertificateError, OSError) as e:
            reason = getattr(e, "reason", None) or str(e)
            raise DeploymentError(f"cannot reach the SuperLink at {address}: TLS handshake "
                                  f"failed ({reason})") from None


@dataclass
class SubmittedRun:
    """What the ServerApp logged: test accuracy and backdoor success per round (round 0
    first), the client-level DP epsilon and delta (None without DP), the final weights'
    sha256, the wall time of ``flwr run`` and its output."""

    accuracy: list[float] = field(default_factory=list)
    backdoor_asr: list[float] = field(default_factory=list)
    epsilon: float | None = None
    delta: float | None = None
    weights_sha256: str = ""
    seconds: float = 0.0
    log: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "backdoor_asr": self.backdoor_asr,
                "final_accuracy": self.accuracy[-1] if self.accuracy else None,
                "epsilon": self.epsilon, "delta": self.delta,
                "weights_sha256": self.weights_sha256, "seconds": round(self.seconds, 2)}


def _flwr() -> str:
    here = Path(sys.executable).with_name("flwr")
    found = str(here) if here.is_file() else shutil.which("flwr")
    if not found:
        raise DeploymentError("the `flwr` command was not found: pip install 'dlsec[federated]'")
    return found


def flower_home(directory: Path, address: str, ca_cert: Path | None) -> Path:
    """A Flower configuration in ``directory`` (for ``FLWR_HOME``) whose default SuperLink
    connection is ``address`` (TLS against ``ca_cert``; None: insecure)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f"address = {_toml_value(address)}"]
    if ca_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {_toml_value(str(ca_cert.resolve()))}")
    (directory / "config.toml").write_text("\n".join(lines) + "\n")
    return directory


def submit(project: Path, *, superlink: str, ca_cert: Path | None,
           run_config: dict[str, Any] | None = None, timeout: float = 3600.0,
           on_round: Callable[[int, int, float, float], None] | None = None) -> SubmittedRun:
    """Submit the Flower App in ``project`` to the SuperLink's Control API at ``superlink``
    (``HOST:PORT``; TLS verified against ``ca_cert``, None: insecure), follow its log
    until the run ends and return what the ServerApp logged (``on_round(round, rounds,
    accuracy, backdoor_asr)`` as the lines come). ``run_config`` overrides settings.
    One-line errors: no project, an unreachable SuperLink, a failed TLS handshake, a run
    that ends without its final line."""
    if not (project / "pyproject.toml").is_file():
        raise DeploymentError(f"{project}: no pyproject.toml (write one with `dlsec flower app`)")
    probe(superlink, ca_cert)
    cmd = [_flwr(), "run", str(project.resolve()), CONNECTION, "--stream"]
    for k, v in (run_config or {}).items():
        cmd += ["--run-config", f"{k}={_toml_value(v)}"]
    result = SubmittedRun()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlsec-flwr-home-") as home:
        env = {**os.environ, "FLWR_HOME": str(flower_home(Path(home), superlink, ca_cert)),
               "NO_COLOR": "1"}
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) as proc:
            assert proc.stdout is not None
            lines: list[str] = []
            watchdog = threading.Timer(timeout, proc.kill)  # a silent stream ends too
            watchdog.start()
            try:
                for line in proc.stdout:
                    lines.append(line)
                    if m := ROUND_LINE.search(line):
                        result.accuracy.append(float(m.group(3)))
                        result.backdoor_asr.append(float(m.group(4)))
                        if on_round is not None:
                            on_round(int(m.group(1)), int(m.group(2)), float(m.group(3)),
                                     float(m.group(4)))
                    elif m := DP_LINE.search(line):
                        result.epsilon, result.delta = float(m.group(1)), float(m.group(2))
                    elif m := FINAL_LINE.search(line):
                        result.weights_sha256 = m.group(2)
                        break  # the run is over; Flower may take a while to end the stream
            finally:
                watchdog.cancel()
                try:
                    proc.wait(timeout=10 if result.weights_sha256 else 0.1)
                except subprocess.TimeoutExpired:
                    proc.terminate()
            code = proc.wait()
    result.seconds = time.perf_counter() - t0
    result.log = "".join(lines)
    if not result.weights_sha256 and result.seconds >= timeout:
        raise DeploymentError(f"the run on the SuperLink at {superlink} did not finish within "
                              f"{timeout:g} s")
    if not result.weights_sha256:
        text = [ln.strip(" │╭╮╰╯─\n") for ln in lines]
        said = [ln for ln in text if any(c.isalpha() for c in ln)]
        why = said[-1] if said else "no output"
        raise DeploymentError(f"the run on the SuperLink at {superlink} did not finish "
                              f"(`flwr run` exit status {code}): {why}")
    return result
