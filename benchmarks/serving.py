"""Serving latency: ``dlsec serve`` with every protection on against a bare FastAPI endpoint
serving the same model with none, on loopback.

Usage: python benchmarks/serving.py [--quick] [--rounds R] [--requests N] [--clients 1,4]
Writes benchmarks/results/serving.md and serving.json (``--quick``: a smoke run written to
benchmarks/.cache/serving-quick.md and .json, never over the results).

* Model: a digits SimpleNet (``dlsec train``'s defaults for 10 epochs, seed 0), saved with
  dlsec's ``save``; inputs (1, 8, 8) float32, sent as ``.npy`` (``application/x-npy``).
* Protected: the ``dlsec serve`` command itself in a subprocess, with a key (Bearer) per
  run carrying a budget (checked and charged per request) and a rate limit high enough not
  to refuse, the query log (one SQLite row per answer, committed before it), extraction
  detection (PRADA and the OOD detector, reference: the training split) with
  ``--on-flag log`` (uniform random load looks like extraction: a throttled key would be
  refused, and this measures the cost of the checks, not of a refusal), the DAWN
  watermark (fraction 0.05) and Prometheus metrics.
* Bare: this script's ``--bare`` server: a FastAPI ``POST /v1/predict`` that reads the
  ``.npy`` body, runs the same model and returns the softmax as JSON; nothing else.
* The same uvicorn settings (``dlsec serve``'s: one process, log level warning, no access
  log, no server header, a socket bound to 127.0.0.1 port 0), one torch thread in each
  server, and the same client: :func:`dlsec.serve.loadgen.run_load`, 1 and 4 concurrent
  threads (``--clients``) with keep-alive httpx clients, ``--requests`` requests a run, seeded uniform
  inputs within the card's bounds.
* Keys-only: ``dlsec serve --detect none`` without the watermark, to say what detection
  and the watermark cost beside keys, budget, rate limit, log and metrics; protected-bg:
  protected with ``--detect-background`` (detectors in a worker thread after the answer).
* Runs are interleaved: in every round, for each client count and batch 1 and 64, the
  four servers one after the other (the order reversed every other round), after one
  warm-up run each. Each figure is the median over the rounds of the run's p50 / p99
  latency and requests/s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the servers (subprocesses) inherit it

import torch
from fastapi import FastAPI, Request

torch.set_num_threads(1)

from machine import describe, load_average, write_results  # noqa: E402  (benchmarks/machine.py)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "serving.md"
OUT_QUICK = HERE / ".cache" / "serving-quick.md"
BATCHES = (1, 64)
TARGET = 1.15  # the issue: protected p50 at most 1.15x bare at batch 64
WATERMARK, DETECT = 0.05, "prada,ood"
BUDGET = 10**12
KEYED = ("keys-only", "protected", "protected-bg")  # the dlsec serve servers (keyed)
LINE = re.compile(r"on (http://127\.0\.0\.1:\d+) \(Ctrl-C stops\)")


# -- the bare server (a subprocess of this script) --------------------------------------
def bare_app(model_dir: Path):
    """FastAPI ``POST /v1/predict``: ``.npy`` in, softmax JSON out; no checks of any kind."""
    import numpy as np

    from dlsec.models import load

    net, _ = load(model_dir, device="cpu")
    net.eval()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict:
        x = torch.from_numpy(np.load(io.BytesIO(await request.body()), allow_pickle=False))
        return {"outputs": _softmax(net, x)}

    return app


def _softmax(net: torch.nn.Module, x: torch.Tensor) -> list:
    with torch.inference_mode():
        out: list = torch.softmax(net(x).float(), dim=1).tolist()
    return out


def serve_bare(model_dir: Path) -> None:
    """Run the bare app the way ``dlsec serve`` runs its app (same uvicorn settings)."""
    import socket

    import uvicorn

    app = bare_app(model_dir)
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            access_log=False, server_header=False)
    port = sock.getsockname()[1]
    print(f"bare: {model_dir} on http://127.0.0.1:{port} (Ctrl-C stops)", file=sys.stderr,
          flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


# -- the benchmark -----------------------------------------------------------------------
def start(cmd: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = LINE.search(line)
    if m is None:
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    import httpx

    url = m.group(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/v1/predict", timeout=2)  # any answer: it serves
            return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server at {url} never answered")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def train_model(model_dir: Path) -> float:
    from dlsec.data import load_dataset
    from dlsec.models import save
    from dlsec.training import TrainConfig
    from dlsec.training import train_model as fit

    ds = load_dataset("digits", seed=0)
    model, card, _ = fit(ds, "simplenet", TrainConfig(epochs=10, lr=3e-3, seed=0, device="cpu"),
                         progress=False)
    save(model, card, model_dir)
    return float(card.metrics["test_accuracy"])


def one_run(url: str, token: str | None, batch: int, requests: int, clients: int,
            seed: int) -> dict:
    from dlsec.serve.loadgen import run_load

    rep = run_load(url, token, input_shape=(1, 8, 8), bounds=(0.0, 1.0), clients=clients,
                   requests=requests, batch=batch, encoding="npy", seed=seed, duration_s=300)
    counts = rep.counts()
    if counts != {200: requests}:
        raise SystemExit(f"{url} batch {batch}: not every request answered 200: {counts} "
                         f"{rep.errors[:3]}")
    return {"p50_ms": rep.percentile(50) * 1e3, "p99_ms": rep.percentile(99) * 1e3,
            "rps": rep.requests_per_second(), "seconds": rep.wall_seconds}


def _cells(clients: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(c, b) for c in clients for b in BATCHES]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--clients", default="1,4", help="concurrent clients, comma-separated")
    p.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # run the bare server
    args = p.parse_args()
    if args.bare is not None:
        serve_bare(args.bare)
        return 0
    if args.quick:
        args.rounds, args.requests = 2, 100
    clients = tuple(int(c) for c in args.clients.split(","))
    cells = _cells(clients)
    from dlsec.serve.store import KeyStore

    cmd = "python benchmarks/serving.py" + (" --quick" if args.quick else "")
    machine = describe(threads="1 torch thread in each server")
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="dlsec-serving-"))
    model_dir, db = work / "model", work / "keys.db"
    accuracy = train_model(model_dir)
    with KeyStore(db) as store:  # a fresh key for every run: PRADA's history starts empty
        tokens = {(k, r, cell): store.create(f"bench-{k}-{r}-{cell}", budget=BUDGET,
                                             rate=1e6)[1]
                  for k in KEYED for r in range(-1, args.rounds) for cell in cells}
    serve_cmd = [sys.executable, "-m", "dlsec.cli", "serve", str(model_dir), "--db", str(db),
                 "--port", "0", "--device", "cpu"]
    servers = {
        "bare": start([sys.executable, str(HERE / "serving.py"), "--bare", str(model_dir)]),
        "keys-only": start([*serve_cmd, "--detect", "none"]),
        "protected": start([*serve_cmd, "--detect", DETECT, "--on-flag", "log",
                            "--watermark", str(WATERMARK)]),
        "protected-bg": start([*serve_cmd, "--detect", DETECT, "--on-flag", "log",
                               "--watermark", str(WATERMARK), "--detect-background"]),
    }
    runs: dict[str, dict[tuple[int, int], list[dict]]] = {
        k: {cell: [] for cell in cells} for k in servers}
    try:
        for cell in cells:  # warm-up (round -1), not counted
            for kind, (_, url) in servers.items():
                one_run(url, tokens.get((kind, -1, cell)), cell[1], max(1, args.requests // 4),
                        cell[0], seed=1000 + cell[1])
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(servers)[::-1]
            for cell in cells:
                c, b = cell
                for kind in order:
                    res = one_run(servers[kind][1], tokens.get((kind, r, cell)), b,
                                  args.requests, c, seed=r)
                    runs[kind][cell].append(res)
                    print(f"round {r} clients {c} batch {b:>2} {kind:>9}: p50 "
                          f"{res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
                          f"{res['rps']:.0f} req/s", flush=True)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    with KeyStore(db, create=False) as store:
        logged = len(store.log_rows())
    total = time.perf_counter() - t0
    med = {k: {cell: {m: statistics.median(x[m] for x in runs[k][cell])
                      for m in ("p50_ms", "p99_ms", "rps")} for cell in cells} for k in runs}
    ratio = {k: {cell: med[k][cell]["p50_ms"] / med["bare"][cell]["p50_ms"] for cell in cells}
             for k in KEYED}
    head_cell = (clients[0], 64)
    met = ratio["protected"][head_cell] <= TARGET
    rows = []
    for cell in cells:
        for kind in servers:
            m = med[kind][cell]
            rel = "" if kind == "bare" else f"{ratio[kind][cell]:.2f}x"
            rows.append(f"| {cell[0]} | {cell[1]} | {kind} | {m['p50_ms']:.2f} | "
                        f"{m['p99_ms']:.2f} | {m['rps']:.0f} | {rel} |")
    table = ["| clients | batch | server | p50 ms | p99 ms | requests/s | p50 / bare |",
             "|---|---|---|---|---|---|---|", *rows]
    per_cell = "; ".join(f"{c} client{'s' if c > 1 else ''}, batch {b}: "
                         f"{ratio['protected'][(c, b)]:.2f}x (detection in the background "
                         f"{ratio['protected-bg'][(c, b)]:.2f}x, keys-only "
                         f"{ratio['keys-only'][(c, b)]:.2f}x)" for c, b in cells)
    verdict = (f"Protected p50 / bare p50: {per_cell}. The issue's target, at most {TARGET}x "
               f"at batch 64 ({head_cell[0]} client{'s' if head_cell[0] > 1 else ''}): "
               f"{'met' if met else 'not met'}.")
    hp, hb = med["protected"][head_cell], med["bare"][head_cell]
    hk = med["keys-only"][head_cell]
    lines = [
        "# Serving latency: dlsec serve, every protection on, against a bare endpoint", "",
        f"Command: `{cmd}`: {machine}. The whole script took {total:.0f} s; load average "
        f"at its end {load_average()} (a load above the cores means other jobs shared the "
        "machine: absolute milliseconds are not comparable across runs, the interleaved "
        "ratios are the figures).", "",
        f"Model: digits SimpleNet (10 epochs, seed 0, test accuracy {accuracy:.4f}), inputs "
        "(1, 8, 8) float32 sent as .npy, answers the softmax as JSON. Protected: `dlsec "
        f"serve --detect {DETECT} --on-flag log --watermark {WATERMARK}`, a Bearer key per "
        "run (a fresh PRADA history each run) with a budget and a rate limit that never "
        "refuses, the query log (one SQLite row per answer, committed before it) and "
        "Prometheus metrics. Keys-only: `dlsec serve --detect none` without the watermark "
        "(keys, budget, rate limit, query log, metrics): what detection and the watermark "
        "add. Protected-bg: protected with `--detect-background` (the detectors run in a "
        "worker thread after the answer; a flag takes effect a few requests later). Bare: a FastAPI endpoint that decodes the .npy and runs the same model, with "
        "the same uvicorn settings. Client: keep-alive httpx clients in threads "
        f"(dlsec.serve.loadgen), {args.requests} requests a run, seeded uniform inputs; "
        f"{args.rounds} interleaved rounds after a warm-up, the median of the rounds' "
        f"figures. Every request was answered 200; the dlsec servers logged {logged} "
        "answers.", "",
        *table, "", verdict, "",
        "<!-- readme: serving-latency -->",
        f"Serving overhead (loopback, digits SimpleNet, .npy, {head_cell[0]} client"
        f"{'s' if head_cell[0] > 1 else ''}, batch 64): `dlsec serve` with keys, budget, "
        f"rate limit, query log, PRADA + OOD detection and the DAWN watermark answers in "
        f"{hp['p50_ms']:.2f} ms p50 ({hp['rps']:.0f} requests/s) against "
        f"{hb['p50_ms']:.2f} ms ({hb['rps']:.0f} requests/s) for a bare FastAPI endpoint: "
        f"{ratio['protected'][head_cell]:.2f}x (target <= {TARGET}x: "
        f"{'met' if met else 'not met'}); with detection in a background thread "
        f"{med['protected-bg'][head_cell]['p50_ms']:.2f} ms "
        f"({ratio['protected-bg'][head_cell]:.2f}x); keys, budget, rate limit and log alone "
        f"{hk['p50_ms']:.2f} ms ({ratio['keys-only'][head_cell]:.2f}x). All cells: "
        f"{per_cell}. Command: `{cmd}` (benchmarks/results/serving.md).",
        "<!-- end readme: serving-latency -->", ""]
    text = "\n".join(lines)
    out = OUT_QUICK if args.quick else OUT
    write_results(out, text)
    key = lambda cell: f"{cell[0]}x{cell[1]}"  # noqa: E731  (clients x batch)
    raw = {"command": cmd, "machine": machine, "seconds": round(total, 1),
           "requests": args.requests, "rounds": args.rounds, "cells": "clients x batch",
           "model_test_accuracy": accuracy, "protections": {
               "detect": DETECT, "on_flag": "log", "watermark": WATERMARK,
               "budget": BUDGET, "rate": 1e6},
           "median": {k: {key(c): v for c, v in d.items()} for k, d in med.items()},
           "ratio_p50": {k: {key(c): v for c, v in d.items()} for k, d in ratio.items()},
           "target": TARGET, "target_cell": key(head_cell), "met": met,
           "runs": {k: {key(c): v for c, v in d.items()} for k, d in runs.items()},
           "logged": logged}
    write_results(out.with_suffix(".json"), json.dumps(raw, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
