"""Flower's deployment engine: a real ``flower-superlink`` with TLS (a CA and certificates
made here) and SuperNode authentication, three registered ``flower-supernode`` processes
(one malicious) and one unregistered, on loopback; the run's global model is the
simulation's, bit for bit. Fast tests: the Flower App project writer, the one-line
errors of an unreachable SuperLink, a missing CA and a TLS handshake against the wrong
CA (a TLS server in a thread)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dlsec.cli import main
from dlsec.scenarios.flower_project import (
    APP_COMPONENTS,
    DeploymentError,
    FederationSettings,
    flower_home,
    probe,
    submit,
    write_project,
)

BIN = Path(sys.executable).parent


# -- a throw-away PKI ---------------------------------------------------------------------------
def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          signer: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_pki(directory: Path, name: str = "ca") -> dict[str, Path]:
    """A CA (``<name>.pem``) and a server certificate it signed for 127.0.0.1/localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _cert(f"dlsec test {name}", ca_key, x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, f"dlsec test {name}")]), ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _cert("localhost", key, ca.subject, ca_key, ca=False)
    paths = {"ca": directory / f"{name}.pem", "cert": directory / f"{name}-server.pem",
             "key": directory / f"{name}-server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


def make_node_key(directory: Path, name: str) -> Path:
    """A SuperNode's P-384 key pair in OpenSSH format (``name`` and ``name.pub``)."""
    key = ec.generate_private_key(ec.SECP384R1())
    (directory / name).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    (directory / f"{name}.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return directory / name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- fast tests ----------------------------------------------------------------------------------
def test_project_names_dlsec_apps_and_round_trips_settings(tmp_path: Path) -> None:
    from flwr.cli.config_utils import load_and_validate

    settings = FederationSettings(clients=4, rounds=2, strategy="krum", malicious=0.25,
                                  attack="alie", scale=1.5, partition="dirichlet:0.5",
                                  clip_norm=None, result_path="/x/r.json")
    path = write_project(tmp_path / "fed", settings)
    doc = tomllib.loads(path.read_text())
    assert doc["tool"]["flwr"]["app"]["components"] == APP_COMPONENTS
    config = doc["tool"]["flwr"]["app"]["config"]
    assert config["strategy"] == "krum" and config["clients"] == 4 and config["scale"] == 1.5
    assert config["clip-norm"] == 0.0 and config["partition"] == "dirichlet:0.5"
    assert FederationSettings.from_run_config(config) == settings
    loaded, _ = load_and_validate(path)  # Flower itself accepts it (components found)
    assert loaded["tool"]["flwr"]["app"]["components"]["clientapp"].endswith(":client_app")
    with pytest.raises(DeploymentError, match="unknown run-config key 'rouns'"):
        FederationSettings.from_run_config({**config, "rouns": 3})


def test_flower_home_names_the_connection(tmp_path: Path) -> None:
    home = flower_home(tmp_path / "home", "10.0.0.1:9093", tmp_path / "ca.pem")
    conn = tomllib.loads((home / "config.toml").read_text())["superlink"]
    assert conn["default"] == "dlsec"
    assert conn["dlsec"] == {"address": "10.0.0.1:9093",
                             "root-certificates": str((tmp_path / "ca.pem").resolve())}


def test_cli_app_writes_project_and_rejects_bad_settings(tmp_path: Path, capsys, one_line_error) -> None:
    assert main(["flower", "app", str(tmp_path / "ok"), "--strategy", "fedmedian", "--clients", "3",
                 "--rounds", "2", "--malicious", "0.34"]) == 0
    config = tomllib.loads((tmp_path / "ok" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert (config["strategy"], config["clients"], config["rounds"], config["malicious"]) == \
        ("fedmedian", 3, 2, 0.34)
    capsys.readouterr()
    assert main(["flower", "app", str(tmp_path / "bad"), "--strategy", "krum", "--clients", "3",
                 "--malicious", "0.34"]) == 2
    one_line_error(capsys.readouterr().err, "krum tolerates", "1 of 3")
    assert not (tmp_path / "bad").exists()


def test_unreachable_superlink_is_one_line_within_seconds(tmp_path: Path, capsys, one_line_error) -> None:
    pki = make_pki(tmp_path)
    write_project(tmp_path / "fed", FederationSettings())
    port = free_port()  # nothing listens there
    out = tmp_path / "never.json"
    t0 = time.perf_counter()
    assert main(["flower", "run", str(tmp_path / "fed"), "--superlink", f"127.0.0.1:{port}",
                 "--ca-cert", str(pki["ca"]), "--out", str(out)]) == 2
    assert time.perf_counter() - t0 < 10
    one_line_error(capsys.readouterr().err, f"cannot reach the SuperLink at 127.0.0.1:{port}",
                   "Connection refused")
    assert not out.exists()
    assert main(["flower", "run", str(tmp_path / "fed"), "--superlink", f"127.0.0.1:{port}",
                 "--ca-cert", str(tmp_path / "nope.pem")]) == 2
    one_line_error(capsys.readouterr().err, "nope.pem: CA certificate not found")
    assert main(["flower", "run", str(tmp_path / "fed"), "--superlink", "127.0.0.1",
                 "--ca-cert", str(pki["ca"])]) == 2
    one_line_error(capsys.readouterr().err, "--superlink must be HOST:PORT, got '127.0.0.1'")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, Path]]]:
    """A TLS server on loopback (certificate of CA ``ca``) accepting one handshake at a time."""
    pki = make_pki(tmp_path / "good")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["cert"], pki["key"])
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}", pki
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_probe_verifies_the_superlink_certificate(tmp_path: Path, tls_server) -> None:
    address, pki = tls_server
    probe(address, pki["ca"])  # the right CA: no error
    other = make_pki(tmp_path / "other", name="other-ca")
    with pytest.raises(DeploymentError, match=r"TLS handshake failed .*CERTIFICATE_VERIFY_FAILED"):
        probe(address, other["ca"])


# -- the real deployment ---------------------------------------------------------------------
SETTINGS = FederationSettings(dataset="digits", architecture="simplenet", clients=3, rounds=3,
                              strategy="fedmedian", malicious=0.34, attack="sign-flip", seed=0)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process we started and its descendants (Flower detaches its
    SuperExec into a session of its own), then SIGKILL what is left."""
    pids = [p for proc in procs for p in (proc.pid, *_descendants(proc.pid))]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """SuperLink (TLS, SuperNode auth) + 3 registered SuperNodes + 1 unregistered; the
    simulation of the same federation (honest and malicious) runs while they start; then
    the run is submitted."""
    from dlsec.data import load_dataset
    from dlsec.scenarios.federated import FederationCell, run_federations, weights_digest

    d = tmp_path_factory.mktemp("deploy")
    pki = make_pki(d)
    keys = [make_node_key(d, f"node{k}") for k in range(4)]
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_HOME": str(flower_home(d / "home", address, pki["ca"]))}
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (d / f"{name}.log").open("w")
        proc = subprocess.Popen(["timeout", "-k", "5", "400", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=d, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        t0 = time.perf_counter()
        start("superlink", str(BIN / "flower-superlink"), "--ssl-certfile", str(pki["cert"]),
              "--ssl-keyfile", str(pki["key"]), "--ssl-ca-certfile", str(pki["ca"]),
              "--enable-supernode-auth", "--disable-runtime-dependency-installation",
              "--database", str(d / "state.db"), "--host", "127.0.0.1", "--port", str(port))
        deadline = time.monotonic() + 120
        while True:
            try:
                probe(address, pki["ca"], timeout=2)
                break
            except DeploymentError:
                assert time.monotonic() < deadline, (d / "superlink.log").read_text()[-2000:]
                time.sleep(0.5)
        registrations = [subprocess.Popen(
            ["timeout", "120", str(BIN / "flwr"), "supernode", "register", f"{key}.pub", "dlsec"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            for key in keys[:3]]
        for r in registrations:
            text = r.communicate()[0]
            assert r.returncode == 0 and "registered successfully" in text, text
        nodes = [start(f"node{k}", str(BIN / "flower-supernode"), "--superlink", address,
                       "--root-certificates", str(pki["ca"]),
                       "--auth-supernode-private-key", str(keys[k]),
                       "--node-config", f"partition-id={min(k, 2)} num-partitions=3",
                       "--port", str(free_port()))
                 for k in range(4)]  # node3: a key nobody registered, posing as partition 2
        ready = time.perf_counter() - t0
        ds = load_dataset(SETTINGS.dataset, seed=SETTINGS.seed, test_size=SETTINGS.test_size)
        sim = run_federations(ds, SETTINGS.architecture,
                              [FederationCell("fedmedian"),
                               FederationCell("fedmedian", SETTINGS.malicious, SETTINGS.attack)],
                              clients=SETTINGS.clients, rounds=SETTINGS.rounds, seed=SETTINGS.seed,
                              progress=False)
        project = d / "fed"
        write_project(project, FederationSettings(**{**SETTINGS.__dict__,
                                                     "result_path": str(d / "server.json")}))
        t1 = time.perf_counter()
        run = submit(project, superlink=address, ca_cert=pki["ca"], timeout=300)
        yield {"dir": d, "run": run, "sim": sim, "rogue": nodes[3], "nodes": nodes,
               "run_seconds": time.perf_counter() - t1, "setup_seconds": ready,
               "sim_digests": [weights_digest(w) for w in sim.artifacts["weights"]]}
    finally:
        _stop(procs)


@pytest.mark.slow
def test_deployment_with_tls_and_auth_matches_the_simulation(deployment) -> None:
    import json

    run, sim = deployment["run"], deployment["sim"]
    print(f"SuperLink + 4 SuperNodes up and 3 keys registered in {deployment['setup_seconds']:.1f} s; "
          f"`flwr run` of {len(run.accuracy) - 1} rounds {deployment['run_seconds']:.1f} s; "
          f"final accuracy {run.accuracy[-1]:.4f}")
    honest, attacked = sim.details["cells"][0]["key"], sim.details["cells"][1]["key"]
    assert sim.details["cells"][1]["malicious_clients"] == [1]  # the seeded draw: one of three
    # the deployed federation is the simulated malicious one: same global model, bit for bit
    assert run.weights_sha256 == deployment["sim_digests"][1]
    assert len(run.accuracy) == 4
    assert abs(run.accuracy[-1] - sim.metrics[f"{attacked}_accuracy"]) < 0.01
    for got, want in zip(run.accuracy, sim.figures["accuracy_per_round"][attacked], strict=True):
        assert abs(got - want) < 1e-5
    assert run.accuracy[-1] > 0.5  # the median held against one sign-flipper
    # the malicious SuperNode mattered: the honest federation ends elsewhere
    assert deployment["sim_digests"][0] != deployment["sim_digests"][1]
    assert sim.figures["accuracy_per_round"][honest] != sim.figures["accuracy_per_round"][attacked]
    # ... and reported itself: the weighted mean of the clients' 'malicious' flags is 1/3
    assert "'malicious': 0.333" in run.log
    # the ServerApp's own JSON (written atomically by the SuperLink's ServerApp process)
    server = json.loads((deployment["dir"] / "server.json").read_text())
    assert server["weights_sha256"] == run.weights_sha256
    assert server["malicious_clients"] == [1] and server["attack"] == "sign-flip"
    assert server["accuracy"] == pytest.approx(run.accuracy, abs=1e-5)


@pytest.mark.slow
def test_unregistered_supernode_is_refused(deployment) -> None:
    rogue = deployment["rogue"]
    assert rogue.wait(timeout=30) != 0  # Flower exit code 305, seen as 305 % 256
    log = (deployment["dir"] / "node3.log").read_text()
    assert "Failed to activate SuperNode" in log
    assert "Receiving: train message" not in log  # it never got work
    for k in range(3):
        assert "Receiving: train message" in (deployment["dir"] / f"node{k}.log").read_text()
    assert "No SuperNode found with the given public key" in \
        (deployment["dir"] / "superlink.log").read_text()


def test_build_deployment_follows_the_run_config(tmp_path: Path) -> None:
    import torch

    from dlsec.scenarios.federated import FederatedScenarioError
    from dlsec.scenarios.federated_apps import build_deployment

    config = FederationSettings(clients=3, rounds=2, strategy="fedmedian", malicious=0.34,
                                result_path=str(tmp_path / "r.json")).to_run_config()
    dep = build_deployment(config)
    assert dep.rounds == 2 and dep.result_path == tmp_path / "r.json"
    assert type(dep.strategy).__name__ == "FedMedian"
    # seed 0 draws partition 1 as the sign-flipper (run_federations draws the same: slow test)
    assert dep.details["malicious_clients"] == [1] and dep.plan.threats[0].attack == "sign-flip"
    assert dep.plan.threats[0].scale == 4.0  # sign-flip's default scale
    everyone = torch.cat(dep.plan.parts).sort().values
    assert torch.equal(everyone, torch.arange(int(dep.plan.y_train.shape[0])))  # a partition
    again = build_deployment(config)  # same run config, same initial weights
    w1, w2 = dep.plan.new_model().state_dict(), again.plan.new_model().state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    other = build_deployment({**config, "seed": 1})
    assert not all(torch.equal(w1[k], v) for k, v in other.plan.new_model().state_dict().items())
    with pytest.raises(FederatedScenarioError, match=r"krum tolerates .* 1 of 3 is too many"):
        build_deployment({**config, "strategy": "krum"})


def test_deployment_carries_client_level_dp(tmp_path: Path, capsys, one_line_error) -> None:
    """--dp-* reach the deployed federation: Flower's DP wrapper around the strategy, the
    planned epsilon (Opacus's accountant at the effective z, one release per round), the
    settings round trip; a --dp-* flag without --dp-noise is one line, nothing written."""
    from flwr.serverapp.strategy import (
        DifferentialPrivacyClientSideFixedClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    from dlsec.defenses.federated.client_dp import client_epsilon, default_delta, effective_noise
    from dlsec.scenarios.federated_apps import build_deployment

    settings = FederationSettings(clients=3, rounds=4, dp_noise=2.0, dp_clip=0.5)
    config = settings.to_run_config()
    assert config["dp-noise"] == 2.0 and config["dp-delta"] == 0.0  # 0: the default delta
    assert FederationSettings.from_run_config(config) == settings
    dep = build_deployment(config)
    assert isinstance(dep.strategy, DifferentialPrivacyServerSideFixedClipping)
    dp = dep.details["dp"]
    sizes = [float(p.numel()) for p in dep.plan.parts]
    assert dp["delta"] == default_delta(3) and dp["clipping_norm"] == 0.5 and dp["proven"]
    expected = client_epsilon(noise_multiplier=effective_noise(2.0, sizes), sample_rate=1.0,
                              rounds=4, delta=default_delta(3))
    assert dp["epsilon"] == pytest.approx(expected, rel=1e-9) and 0 < dp["epsilon"] < 50
    more_noise = build_deployment({**config, "dp-noise": 4.0}).details["dp"]["epsilon"]
    assert more_noise < dp["epsilon"] / 1.5  # twice the noise, a much smaller epsilon
    client_side = build_deployment({**config, "dp-side": "client"})
    assert isinstance(client_side.strategy, DifferentialPrivacyClientSideFixedClipping)
    assert build_deployment(FederationSettings(clients=3).to_run_config()).details["dp"] is None

    assert main(["flower", "app", str(tmp_path / "dp"), "--clients", "3", "--dp-noise", "1",
                 "--dp-side", "client"]) == 0
    assert "client-level DP z=1 (client side)" in capsys.readouterr().out
    written = tomllib.loads((tmp_path / "dp" / "pyproject.toml").read_text())
    assert written["tool"]["flwr"]["app"]["config"]["dp-side"] == "client"
    assert main(["flower", "app", str(tmp_path / "nodp"), "--dp-clip", "1"]) == 2
    one_line_error(capsys.readouterr().err, "--dp-clip without --dp-noise")
    assert not (tmp_path / "nodp").exists()
