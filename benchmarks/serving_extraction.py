"""Serving vs extraction: what each output policy leaves a thief, what it costs a benign
user, and when extraction detection fires against a real server.

Usage: python benchmarks/serving_extraction.py [--quick] [--budget N]
Writes benchmarks/results/serving_extraction.md and .json (``--quick``: 1,000 queries, to
benchmarks/.cache/serving_extraction-quick.md and .json so it never replaces the results).

Victim: SimpleNet on scikit-learn's digits trained as the default audit trains it (30
epochs of Adam, lr 3e-3, seed 0). The attacker holds half of the test split (unlabeled);
fidelity (agreement with the victim's labels) is measured on the other half, as
``dlsec.scenarios.extraction.run_extraction`` does.

1. Policy table: for every output policy of ``POLICIES`` (the ``OutputPolicy`` defaults
   where it has them: reverse-sigmoid beta 0.7, gamma 0.4; noise has no default sigma, two
   are shown), every extraction strategy of dlsec (random, natural, jacobian, active) at
   ``--budget`` queries (10,000) through ``run_extraction``; the table shows the strongest
   strategy per policy (the highest final fidelity) with its Wilson 95 % interval, and
   what a benign user gets: the served answers' argmax against the true labels on the
   whole test split (and, for noise, how often the top-1 label differs from the model's).
2. Detection: a real server, ``dlsec.serve.app.create_app`` under uvicorn on a free
   loopback port, running its own detectors (``detect=("prada", "ood")``, ``on_flag="log"``
   so a flagged client keeps being answered and its whole curve is measured; the OOD
   reference is the training split), one key per client, queried through ``HttpOracle`` by
   each strategy (scores key, ``--budget`` queries) and by two benign clients replaying
   data the model serves (the held-out test split, and the training split), 8 rows a
   request. The server observes per request, so its flag comes at the end of the request
   holding the decisive row (extraction requests carry up to 1,024 rows); the same
   detectors (``Prada`` delta 0.9, ``OodShare``) also watch each client's HttpOracle
   traffic beside it one row at a time, which gives the exact query count. The fidelity
   "by then" is the extraction curve's last checkpoint at or before the server's flag.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

THREADS = 1
torch.set_num_threads(THREADS)

from machine import describe, load_average, write_results  # noqa: E402  (benchmarks/machine.py)

from dlsec.attacks.surrogate import STRATEGIES  # noqa: E402
from dlsec.data import load_dataset  # noqa: E402
from dlsec.intervals import wilson_interval  # noqa: E402
from dlsec.output_policies import OutputPolicy  # noqa: E402
from dlsec.scenarios import ScenarioContext  # noqa: E402
from dlsec.scenarios.extraction import ExtractionOptions, run_extraction  # noqa: E402
from dlsec.serve.detection import OodReference, OodShare, Prada  # noqa: E402
from dlsec.serve.http_oracle import HttpOracle  # noqa: E402
from dlsec.serve.store import KeyStore  # noqa: E402
from dlsec.threat import LocalOracle, OracleWrapper  # noqa: E402
from dlsec.training import TrainConfig, train_model  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "serving_extraction.md"
OUT_QUICK = HERE / ".cache" / "serving_extraction-quick.md"
SEED = 0
POLICIES = ("scores", "topk:3", "topk:1", "rounded:1", "noise:0.1", "noise:0.3",
            f"reverse-sigmoid:{OutputPolicy().beta},{OutputPolicy().gamma}", "label")
EPOCHS, ROUNDS = 10, 5  # substitute training per checkpoint, checkpoints (the audit: 10, 3)
JACOBIAN_SEED = 100  # extract's seed_size: no checkpoint of the detection runs comes before it


def detect_rounds(budget: int) -> int:
    """Checkpoints budget / 2^k for as long as they stay >= JACOBIAN_SEED (a finer curve
    for "fidelity by the time of the flag", without starving Jacobian's seed set)."""
    rounds = 1
    while (budget >> rounds) >= JACOBIAN_SEED:
        rounds += 1
    return rounds


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _ci(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{_pct(k / n)} [{_pct(lo)}, {_pct(hi)}]"


# -- 1. the policy table ----------------------------------------------------------------------
def policy_table(ctx: ScenarioContext, budget: int, lines: list[str]) -> list[dict[str, Any]]:
    ds = ctx.dataset
    runs = tuple((s, p) for p in POLICIES for s in STRATEGIES)
    t0 = time.perf_counter()
    res = run_extraction(ctx, ExtractionOptions(runs=runs, budget=budget, epochs=EPOCHS,
                                                rounds=ROUNDS))
    seconds = time.perf_counter() - t0
    n_eval = int(res.details["held_out"])
    x, y = ds.x_test, ds.y_test
    clean = LocalOracle(ctx.model, card=ctx.card).query_labels(x)
    out: list[dict[str, Any]] = []
    lines += ["## Every output policy: fidelity left to a thief, accuracy left to a user", "",
              f"{budget:,} queries per run, every strategy of dlsec per policy "
              f"({', '.join(STRATEGIES)}; substitute retrained {EPOCHS} epochs at "
              f"{ROUNDS} checkpoints); fidelity on {n_eval} held-out inputs, benign "
              f"accuracy on the whole test split ({len(y)} inputs), Wilson 95 % intervals. "
              f"The {len(runs)} extraction runs took {seconds:.0f} s.", "",
              "| policy | strongest strategy | fidelity % [95 % CI] | its accuracy % | "
              "other strategies' fidelity % | benign accuracy % [95 % CI] | top-1 changed % |",
              "|---|---|---|---|---|---|---|"]
    results = res.artifacts["results"]
    for p in POLICIES:
        mine = [(s, r) for (s, q), r in zip(runs, results, strict=True) if q == p]
        best_s, best = max(mine, key=lambda sr: sr[1].fidelity)
        k_fid = round(best.fidelity * n_eval)
        served = LocalOracle(ctx.model, card=ctx.card, output=OutputPolicy.parse(p),
                             seed=SEED).query_labels(x)
        k_acc = int((served == y).sum())
        changed = int((served != clean).sum())
        others = ", ".join(f"{s} {_pct(r.fidelity)}" for s, r in mine if s != best_s)
        lines.append(f"| `{p}` | {best_s} | {_ci(k_fid, n_eval)} | {_pct(best.accuracy)} | "
                     f"{others} | {_ci(k_acc, len(y))} | "
                     f"{_ci(changed, len(y)) if changed else '0'} |")
        out.append({"policy": p, "strongest": best_s, "fidelity": best.fidelity,
                    "fidelity_n": n_eval, "substitute_accuracy": best.accuracy,
                    "by_strategy": {s: {"fidelity": r.fidelity, "accuracy": r.accuracy,
                                        "curve": r.curve} for s, r in mine},
                    "benign_accuracy": k_acc / len(y), "benign_n": len(y),
                    "top1_changed": changed / len(y)})
        print(f"  {p}: {best_s} {best.fidelity:.4f}, benign {k_acc / len(y):.4f}", flush=True)
    lines.append("")
    return out


# -- 2. detection against a real server --------------------------------------------------------
class _Watched(OracleWrapper):
    """Feeds every row a client sends, with the served label, to its own detectors, one
    row at a time until each has flagged."""

    def __init__(self, inner: Any, reference: OodReference) -> None:
        super().__init__(inner)
        self.detectors: dict[str, Prada | OodShare] = {"prada": Prada(),
                                                      "ood": OodShare(reference)}

    def watch(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        for det in self.detectors.values():
            if det.state.flagged_at is not None:
                continue
            for i in range(x.shape[0]):
                det.observe(x[i : i + 1], labels[i : i + 1])
                if det.state.flagged_at is not None:
                    # rows before this batch were counted; flagged_at is within the client
                    break

    def query(self, x: torch.Tensor, *, ids: torch.Tensor | None = None) -> torch.Tensor:
        out = self.inner.query(x, ids=ids)
        self.watch(x.detach().cpu(), out.argmax(1).cpu() if out.dim() == 2 else out.cpu())
        return out

    def flags(self) -> dict[str, int | None]:
        return {name: det.state.flagged_at for name, det in self.detectors.items()}


class _ServedContext(ScenarioContext):
    """The scenario's context whose oracles are HttpOracles of a running server, one new
    key per oracle, each watched by its own detectors."""

    url: str = ""
    store: Any = None
    reference: Any = None
    watched: list[_Watched]

    key_ids: list[str]

    def oracle(self, **kwargs: Any) -> Any:
        budget = kwargs.get("budget")
        record, token = self.store.create(f"thief-{len(self.watched)}", budget=budget)
        self.key_ids.append(record.id)
        watched = _Watched(HttpOracle(self.url, token, budget=budget), self.reference)
        self.watched.append(watched)
        return watched


def _fidelity_by(curve: list[dict[str, float]], at: int | None) -> str:
    if at is None:
        return "never flagged"
    before = [c for c in curve if c["queries"] <= at]
    if not before:
        c = curve[0]
        return (f"before the first checkpoint; {_pct(c['fidelity'])} at "
                f"{int(c['queries']):,}")
    c = before[-1]
    return f"{_pct(c['fidelity'])} (checkpoint {int(c['queries']):,})"


def detection(model: Any, card: Any, ds: Any, budget: int, db: Path,
              lines: list[str]) -> dict[str, Any]:
    from dlsec.serve.app import create_app
    from dlsec.serve.background import serving

    store = KeyStore(db)
    reference = OodReference(ds.x_train)
    app = create_app((model, card), store=store, policy="scores", seed=SEED,
                     detect=("prada", "ood"), on_flag="log", reference=ds.x_train)
    stack = ExitStack()
    url = stack.enter_context(serving(app))  # uvicorn on 127.0.0.1, a free port
    out: dict[str, Any] = {"url_host": "127.0.0.1", "clients": {}}
    t0 = time.perf_counter()
    try:
        ctx = _ServedContext(model=model, card=card, dataset=ds, seed=SEED)
        ctx.url, ctx.store, ctx.reference, ctx.watched, ctx.key_ids = url, store, reference, [], []
        runs = tuple((s, "scores") for s in STRATEGIES)
        res = run_extraction(ctx, ExtractionOptions(runs=runs, budget=budget, epochs=EPOCHS,
                                                    rounds=detect_rounds(budget)))
        def served_flags(key_id: str) -> dict[str, int | None]:
            events = {d["detector"]: int(d["queries"]) for d in store.detections(key_id)}
            return {name: events.get(name) for name in ("prada", "ood")}

        for (s, _), r, w, key_id in zip(runs, res.artifacts["results"], ctx.watched,
                                        ctx.key_ids, strict=True):
            out["clients"][s] = {"queries": r.queries, "flags": w.flags(), "curve": r.curve,
                                 "server_flags": served_flags(key_id), "fidelity": r.fidelity}
        g = torch.Generator().manual_seed(SEED)
        for name, x in (("benign (test split)", ds.x_test), ("benign (train split)", ds.x_train)):
            record, token = store.create(name.replace(" ", "-").replace("(", "").replace(")", ""))
            w = _Watched(HttpOracle(url, token), reference)
            order = torch.randperm(len(x), generator=g)
            for start in range(0, len(x), 8):  # a user's small requests
                w.query(x[order[start : start + 8]])
            out["clients"][name] = {"queries": w.queries_total, "flags": w.flags(),
                                    "server_flags": served_flags(record.id)}
        rows_logged = sum(r["rows"] for r in store.log_rows())
    finally:
        stack.close()
        store.close()
    seconds = time.perf_counter() - t0
    sent = sum(c["queries"] for c in out["clients"].values())
    out.update(seconds=seconds, rows_logged=rows_logged, rows_sent=sent)
    lines += ["## Extraction vs a benign client, through a real server", "",
              f"`create_app` under uvicorn on 127.0.0.1 (a free port), scores policy, one key "
              f"per client, every client through `HttpOracle`; each strategy spends "
              f"{budget:,} queries (substitute checkpoints at "
              f"{', '.join(str(int(c['queries'])) for c in res.artifacts['results'][0].curve)}). "
              "The server runs PRADA (delta 0.9, 100 distances before the first test) and the "
              "OOD-share detector (reference: the training split) per key and request, "
              "on_flag=log; the same detectors beside each HttpOracle, fed row by row, give "
              "the exact query (in brackets). Benign clients send 8 rows a request. "
              f"The server logged {rows_logged:,} rows for {sent:,} sent; the section took "
              f"{seconds:.0f} s.", "",
              "| client | queries | server's PRADA flag at [row-exact] | fidelity by then % | "
              "server's OOD flag at [row-exact] | fidelity by then % | final fidelity % |",
              "|---|---|---|---|---|---|---|"]

    def at(server: int | None, exact: int | None) -> str:
        return "never" if server is None and exact is None else (
            f"{'never' if server is None else f'{server:,}'} "
            f"[{'never' if exact is None else f'{exact:,}'}]")

    for name, c in out["clients"].items():
        flags, served = c["flags"], c["server_flags"]
        if "curve" in c:
            lines.append(f"| {name} | {c['queries']:,} | {at(served['prada'], flags['prada'])} | "
                         f"{_fidelity_by(c['curve'], served['prada'])} | "
                         f"{at(served['ood'], flags['ood'])} | "
                         f"{_fidelity_by(c['curve'], served['ood'])} | {_pct(c['fidelity'])} |")
        else:
            lines.append(f"| {name} | {c['queries']:,} | {at(served['prada'], flags['prada'])} | - | "
                         f"{at(served['ood'], flags['ood'])} | - | - |")
    lines.append("")
    return out


def readme_block(table: list[dict[str, Any]], detect: dict[str, Any], budget: int,
                 cmd: str) -> list[str]:
    """The README's summary: one row per policy, one line on detection."""
    rows = ["<!-- readme: serving-extraction -->",
            f"| output policy | strongest thief | its fidelity at {budget:,} queries % [95% CI] "
            "| benign accuracy % [95% CI] |", "|---|---|---|---|"]
    for r in table:
        k = round(r["fidelity"] * r["fidelity_n"])
        kb = round(r["benign_accuracy"] * r["benign_n"])
        rows.append(f"| `{r['policy']}` | {r['strongest']} | {_ci(k, r['fidelity_n'])} | "
                    f"{_ci(kb, r['benign_n'])} |")
    flagged = []
    for name, c in detect["clients"].items():
        sf = c["server_flags"]
        got = [f"{d.upper() if d == 'ood' else 'PRADA'} at query {sf[d]:,}"
               for d in ("prada", "ood") if sf[d] is not None]
        flagged.append(f"{name}: {', '.join(got) if got else 'never flagged'}")
    rows += ["", f"Detection through a real server (PRADA + OOD share, {budget:,} queries per "
             f"thief): {'; '.join(flagged)}. Command: `{cmd}` "
             "(benchmarks/results/serving_extraction.md).",
             "<!-- end readme: serving-extraction -->", ""]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 queries: a smoke run")
    ap.add_argument("--budget", type=int, default=10_000, help="queries per extraction run")
    args = ap.parse_args()
    budget = 1000 if args.quick else args.budget
    cmd = ".venv/bin/python benchmarks/serving_extraction.py" + (
        " --quick" if args.quick else (f" --budget {budget}" if budget != 10_000 else ""))
    machine = describe(threads=THREADS)
    t0 = time.perf_counter()
    ds = load_dataset("digits", seed=SEED)
    model, card, _ = train_model(ds, "simplenet", TrainConfig(epochs=30, lr=3e-3, seed=SEED),
                                 progress=False)
    ctx = ScenarioContext(model=model, card=card, dataset=ds, seed=SEED)
    lines: list[str] = []
    table = policy_table(ctx, budget, lines)
    out = OUT_QUICK if args.quick else OUT
    db = HERE / ".cache" / "serving_extraction-keys.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    detect = detection(model, card, ds, budget, db, lines)
    total = time.perf_counter() - t0
    head = ["# Serving vs extraction: output policies and detection", "",
            f"Command: `{cmd}`: {machine}. The whole script took {total:.0f} s; load average "
            f"at its end {load_average()}.", ""]
    block = readme_block(table, detect, budget, cmd)
    text = "\n".join(head + block + lines).rstrip() + "\n"
    write_results(out, text)
    raw = {"command": cmd, "seconds": round(total, 1), "budget": budget, "seed": SEED,
           "machine": machine, "policies": table, "detection": detect}
    write_results(out.with_suffix(".json"), json.dumps(raw, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
