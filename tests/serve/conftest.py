"""Real servers for the serve tests: a saved digits model, keys made by ``dlsec keys
create``, and ``dlsec serve`` in a subprocess on a port the OS picks (``--port 0``),
stopped by the fixture whatever the test did."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlsec.models import save
from dlsec.serve.store import KeyStore
from dlsec.training import TrainConfig, train_model

CLI = [sys.executable, "-m", "dlsec.cli"]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass
class Server:
    """A running ``dlsec serve``: its process and its URL."""

    proc: subprocess.Popen[str]
    url: str

    def stop(self) -> int:
        """Ctrl-C (SIGINT), then SIGKILL if it has not stopped in STOP_TIMEOUT_S; the exit
        code (negative: the signal that ended it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        return self.proc.returncode

    def kill9(self) -> None:
        """``kill -9``: no handler, no flush, no clean-up runs in the server."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def served_model_dir(digits, tmp_path_factory) -> Path:
    """A digits SimpleNet (3 epochs, seed 0) saved with dlsec's save."""
    model, card, _ = train_model(digits, "simplenet", TrainConfig(epochs=3, lr=3e-3, seed=0),
                                 progress=False)
    out = tmp_path_factory.mktemp("served") / "model"
    save(model, card, out)
    return out


def create_key(db: Path, *extra: str) -> tuple[str, str]:
    """``dlsec keys create --db DB --name test EXTRA...``: (key id, token)."""
    done = subprocess.run([*CLI, "keys", "create", "--db", str(db), "--name", "test", *extra],
                          capture_output=True, text=True, timeout=60, check=True)
    key_id, token = done.stdout.split()
    return key_id, token


@pytest.fixture
def keys() -> Callable[..., tuple[str, str]]:
    """``keys(db, *flags)``: a new key made by ``dlsec keys create``; (id, token)."""
    return create_key


def _start(model_dir: Path, db: Path, *extra: str) -> Server:
    proc = subprocess.Popen([*CLI, "serve", str(model_dir), "--db", str(db), "--port", "0", *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until the line, or EOF if it died
    m = re.search(r"on (http://127\.0\.0\.1:\d+) \(Ctrl-C stops\)", line)
    if m is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"dlsec serve did not start: {line}{proc.stderr.read()}")
    server = Server(proc, m.group(1))
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:  # the line is printed just before uvicorn serves the bound socket
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise AssertionError("dlsec serve bound its port but never answered /healthz")
        time.sleep(0.05)


@pytest.fixture
def dlsec_server() -> Iterator[Callable[..., Server]]:
    """``dlsec_server(model_dir, db, *flags)``: ``dlsec serve`` started in a subprocess and
    answering /healthz; every server it started is stopped (SIGINT, then SIGKILL) when the
    test ends."""
    started: list[Server] = []

    def start(model_dir: Path, db: Path, *extra: str) -> Server:
        server = _start(model_dir, db, *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@dataclass
class Uvicorn:
    """A served model in this process: its base URL and its key store."""

    url: str
    store: KeyStore


@pytest.fixture(scope="module")
def server(served_model_dir: Path, tmp_path_factory) -> Iterator[Uvicorn]:
    """``create_app`` over the saved digits model (server policy scores) under uvicorn in a
    thread on a free loopback port (:func:`dlsec.serve.background.serving`), one per test
    module; stopped (and its thread joined) when the module ends."""
    from dlsec.serve.app import create_app
    from dlsec.serve.background import serving

    store = KeyStore(tmp_path_factory.mktemp("served") / "keys.db")
    try:
        with serving(create_app(served_model_dir, store=store, policy="scores")) as url:
            yield Uvicorn(url, store)
    finally:
        store.close()


class Clock:
    """A monotonic clock a test moves by hand (``clock.now += 1``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path) -> Iterator[KeyStore]:
    """A fresh key database in the test's directory."""
    with KeyStore(tmp_path / "keys.db") as s:
        yield s


@pytest.fixture(scope="session")
def fit_thief() -> Callable[..., Any]:
    """``fit_thief(card, x, answers)``: the thief's SimpleNet fitted closely to the answers
    it bought (60 epochs of Adam at lr 1e-2, no validation hold-out: every answer fitted),
    labels or answered distributions; seeded, so the same answers give the same thief."""
    import torch

    from dlsec.models import build_model
    from dlsec.training import fit

    def thief(card: Any, x: Any, answers: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = build_model(card, factory="simplenet")
        config = TrainConfig(epochs=60, lr=1e-2, schedule="none", batch_size=32,
                             val_fraction=0.0, seed=1, measure_train_accuracy=False)
        fit(model, x, answers, config=config, progress=False)
        return model

    return thief
