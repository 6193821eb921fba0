"""The black-box evasion threat: an attacker who sees only the model's API.

* :func:`query_attacks`: score-based (Square, SimBA, NES, on the oracle's probabilities)
  and decision-based (HopSkipJump, Boundary, on labels only) attacks built by name, each
  run ONCE over the threat's epsilons (:class:`dlsec.attacks.blackbox.BlackBoxAttack`),
  with robust accuracy against the queries spent per point read off that run.
* :func:`evaluate`: the audit's view: the query attacks, the transfer attacks
  (:mod:`dlsec.scenarios.transfer`) and a white-box PGD on the same points and radius.
  Black-box attacks use less information than white-box ones, so when they fool clearly
  more points the gradients are masked and the white-box numbers overstate robustness.

The attacked points are the first ``samples`` test points (:meth:`ScenarioContext.
attacker_split`); each attack draws from the stream ``"blackbox/<attack>"``.

``shard=`` (under ``torchrun``, :func:`dlsec.scenarios.sharding.current_shard`) or
``QueryOptions.block_size``: the points are attacked in blocks, each with a generator
seeded from the attack's stream and the block's global index; a sharded run attacks its
own blocks and gathers the per-point results (success, queries, adversarials, traces) of
all blocks in order on every rank: the result of the one-process run with the same
blocks.

Example:
    >>> ctx = ScenarioContext(model, card, dataset, ThreatModel.from_card(card, eps=(0.1,)))
    >>> res = query_attacks(ctx, QueryOptions(attacks=("square",), max_queries=1000))  # doctest: +SKIP
    >>> res.metrics["square_robust_accuracy"]                                          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dlsec.attacks import attack_kind, attack_names, make_attack
from dlsec.attacks.blackbox import BlackBoxAttack, BlackBoxResult, BlackBoxSweep, median
from dlsec.attacks.evasion import EvasionAttack
from dlsec.errors import DlsecError
from dlsec.files import atomic_write_bytes
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.scenarios.sharding import Shard, block_ranges, block_seed
from dlsec.scenarios.transfer import TransferOptions, transfer_threat
from dlsec.scenarios.whitebox import check_state_file

# watch(oracle, label, most queries): a context the attack runs in (a CLI progress bar)
Watch = Callable[[Any, str, int], AbstractContextManager[Any]]


class ScenarioError(DlsecError):
    """Options a black-box scenario cannot run with."""


def query_attack_names() -> list[str]:
    """The registered score- and decision-based attacks."""
    return attack_names("score") + attack_names("decision")


def ladder(max_queries: int) -> list[int]:
    """Query counts a curve is read at: a 1-3-10 ladder up to ``max_queries``."""
    steps = [b for b in (10, 30, 100, 300, 1000, 3000, 10_000, 30_000) if b < max_queries]
    return [*steps, max_queries]


@dataclass
class QueryOptions:
    """``attacks``: score- or decision-based names; ``samples``: the first test points
    attacked; ``max_queries``: per point (every attack runs once at this budget);
    ``curve_queries``: queries per point the curves are read at (default :func:`ladder`);
    ``settings``: extra constructor settings per attack (e.g. ``{"simba": {"basis":
    "dct"}}``); ``early_stop``: decision-based attacks stop a point at the smallest eps
    (``False``: minimum-norm runs); ``watch``: a context each attack runs in;
    ``block_size``: attack the points in blocks of this many, each seeded from its index
    (the path a sharded run takes; see the module); ``state_path``: with blocks (or a
    shard), a file each finished block is saved to and a rerun resumes from (a sharded
    rank: its own ``<state>.rank<k>-of-<n>``; a file for other settings is replaced)."""

    attacks: Sequence[str] = ("square", "hsja")
    samples: int = 50
    max_queries: int = 1000
    curve_queries: Sequence[int] = ()
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    early_stop: bool = True
    watch: Watch | None = None
    block_size: int | None = None
    state_path: str | Path | None = None


def _points(ctx: ScenarioContext, samples: int) -> tuple[Tensor, Tensor]:
    idx, _ = ctx.attacker_split(samples)
    ds = ctx.dataset
    return ds.x_test[idx].to(ctx.device), ds.y_test[idx].to(ctx.device)


def _build(name: str, norm: str, max_queries: int, settings: Mapping[str, Any]) -> BlackBoxAttack:
    kind = attack_kind(name) if name in attack_names() else None
    if kind not in ("score", "decision"):
        raise ScenarioError(f"unknown query attack {name!r} (choose from "
                            f"{', '.join(query_attack_names())})")
    opts = {"max_queries": max_queries, **settings}
    if name != "simba":  # SimBA's eps is its step; it takes no norm
        opts.setdefault("norm", norm)
    attack = make_attack(name, **opts)
    assert isinstance(attack, BlackBoxAttack)
    return attack


def query_attacks(
    ctx: ScenarioContext, options: QueryOptions, *, shard: Shard | None = None
) -> ScenarioResult:
    """Run each of ``options.attacks`` over ``ctx.threat.eps`` (see the module; ``shard``:
    this rank's share of a sharded run, the whole result on every rank).

    Metrics per attack (at the last eps): ``<name>_robust_accuracy``, ``<name>_queries``
    (what it cost the oracle). ``figures["curves"][name]`` holds per eps the robust
    accuracy at each of ``curve_queries``; ``artifacts``: ``x``, ``y``, ``sweeps`` (a
    :class:`BlackBoxSweep` per attack) and ``correct`` (the model's clean verdicts)."""
    assert ctx.threat is not None
    eps, norm = [float(e) for e in ctx.threat.eps], ctx.threat.norm
    if options.max_queries < 1:
        raise ScenarioError(f"max_queries must be >= 1, got {options.max_queries}")
    levels = sorted(set(options.curve_queries or ladder(options.max_queries)))
    x, y = _points(ctx, options.samples)
    ids = torch.arange(len(y))
    if options.block_size is not None:
        shard = Shard(0, 1) if shard is None else shard
        shard = Shard(shard.rank, shard.world_size, options.block_size)
    if shard is not None:
        shard = shard.resolve(len(y))
    store: _BlockStore | None = None
    if options.state_path is not None:
        if shard is None:
            raise ScenarioError("state_path: a run resumes block by block; give block_size "
                                "(or run sharded) with it")
        path = Path(options.state_path)
        store = _BlockStore.open(shard.state_path(path) if shard.world_size > 1 else path,
                                 _fingerprint(ctx, options, x, y, shard.size))
    with torch.inference_mode():
        correct = ctx.model(x).argmax(1) == y
    metrics: dict[str, float] = {"clean_accuracy": round(float(correct.double().mean()), 6)}
    curves: dict[str, dict[float, list[float]]] = {}
    sweeps: dict[str, BlackBoxSweep] = {}
    rows: list[list[Any]] = []
    for name in options.attacks:
        attack = _build(name, norm, options.max_queries, options.settings.get(name, {}))
        decision = attack.kind == "decision"
        oracle = ctx.oracle(output="label" if decision else "scores")
        watch = options.watch if shard is None or shard.is_main else None
        watch = watch or (lambda *_: nullcontext())
        gen = ctx.generator(f"blackbox/{name}")
        minimum_norm = decision and not options.early_stop
        with watch(oracle, name, options.max_queries * len(y)):
            if shard is not None:
                sweep = _sharded_sweep(attack, oracle, x, y, ids, eps, gen, shard, minimum_norm,
                                       store=store, name=name)
            elif minimum_norm:
                run = attack(oracle, x, y, eps=None, ids=ids, generator=gen)
                sweep = BlackBoxSweep(eps, [run.at_eps(e) for e in eps], oracle.queries_total)
            else:
                sweep = attack(oracle, x, y, eps=eps, ids=ids, generator=gen)
        sweeps[name] = sweep
        curves[name] = {e: [round(1.0 - s, 6) for s in
                            r.success_at(levels, eps=None if r.trace_dist is None else e)]
                        for e, r in zip(eps, sweep.results, strict=True)}
        metrics[f"{name}_robust_accuracy"] = curves[name][eps[-1]][-1]
        spent = oracle.queries_total if shard is None else sweep.queries_total
        metrics[f"{name}_queries"] = float(spent)
        for e, r in zip(eps, sweep.results, strict=True):
            dist = r.linf if norm == "linf" else r.l2
            rows.append([name, "labels" if decision else "scores", e, options.max_queries,
                         round(1.0 - r.success_rate, 4), _num(_median_queries(r, e)),
                         _num(median(dist[r.success])), spent])
    tables = [Table(
        "Query attacks",
        ["attack", "oracle", "eps", "max queries per point", "robust accuracy",
         "median queries/success", f"median {norm} of successes", "queries spent"],
        rows, caption="Robust accuracy counts misclassified clean points as not robust.",
    )] if rows else []
    summary = f"{norm} eps {eps[-1]:g}: " + ", ".join(
        f"{n} {metrics[f'{n}_robust_accuracy']:.1%}" for n in options.attacks)
    details: dict[str, Any] = {"curve_queries": levels, "eps": eps, "norm": norm,
                               "curves": {n: c[eps[-1]] for n, c in curves.items()}}
    if shard is not None:
        details["block_size"] = shard.size
    if store is not None and shard is not None:
        details["state"] = {
            "resumed_blocks": sum(shard.gather_objects(store.resumed)),
            "replaced": any(shard.gather_objects(store.replaced)),
        }
    return ScenarioResult(
        name="blackbox", summary=summary, metrics=metrics, tables=tables,
        figures={"curves": curves, "curve_queries": levels, "norm": norm, "eps": eps},
        details=details, artifacts={"x": x, "y": y, "correct": correct, "sweeps": sweeps},
    )


def _sharded_sweep(
    attack: BlackBoxAttack, oracle: Any, x: Tensor, y: Tensor, ids: Tensor, eps: list[float],
    generator: torch.Generator, shard: Shard, minimum_norm: bool, *,
    store: _BlockStore | None = None, name: str = "",
) -> BlackBoxSweep:
    """This rank's blocks attacked one by one (each seeded from the attack's stream and the
    block's index; a block ``store`` holds is taken from it, a new one is saved to it), the
    blocks of every rank gathered and joined in order."""
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    lo, hi = shard.bounds(len(y))
    mine: list[tuple[list[BlackBoxResult], int]] = []
    for b, (start, stop) in enumerate(block_ranges(len(y), shard.size)):
        if not lo <= start < hi:
            continue
        saved = None if store is None else store.get(name, b)
        if saved is not None:
            mine.append(saved)
            continue
        gen = torch.Generator().manual_seed(block_seed(base, b))
        sl = slice(start, stop)
        before = oracle.queries_total
        if minimum_norm:
            runs = [attack(oracle, x[sl], y[sl], eps=None, ids=ids[sl], generator=gen)]
        else:
            runs = list(attack(oracle, x[sl], y[sl], eps=eps, ids=ids[sl], generator=gen).results)
        mine.append(([_moved(r, torch.device("cpu")) for r in runs], oracle.queries_total - before))
        if store is not None:
            store.put(name, b, *mine[-1])
    total = sum(shard.gather_objects(sum(q for _, q in mine)))
    local = [_join([runs[i] for runs, _ in mine], torch.device("cpu")) if mine else None
             for i in range(1 if minimum_norm else len(eps))]
    joined = [_moved(_gather_result(shard, r), x.device) for r in local]
    if minimum_norm:
        return BlackBoxSweep(eps, [joined[0].at_eps(e) for e in eps], total)
    return BlackBoxSweep(eps, joined, total)


_FIELDS = ("x_adv", "success", "queries", "linf", "l2")
_TRACES = (("trace_queries", 0.0), ("trace_dist", math.inf))  # and what an empty one holds


def _gather_result(shard: Shard, local: BlackBoxResult | None) -> BlackBoxResult:
    """The per-point results of every rank's blocks (``None``: this rank had none) in
    order: the tensors move with :meth:`Shard.gather`; only their dtypes and shapes (and
    the trace lengths, padded to the longest as :func:`_join` pads) as objects."""
    spec: dict[str, tuple[torch.dtype, tuple[int, ...]]] | None = None
    if local is not None:  # per field: dtype and the shape past the points (traces: rows)
        spec = {f: (getattr(local, f).dtype, tuple(getattr(local, f).shape[1:]))
                for f in _FIELDS}
        if local.trace_queries is not None:
            spec |= {f: (getattr(local, f).dtype, (int(getattr(local, f).shape[0]),))
                     for f, _ in _TRACES}
    specs = [s for s in shard.gather_objects(spec) if s is not None]
    if shard.world_size == 1:
        assert local is not None
        return local
    first = specs[0]
    if local is None:
        local = BlackBoxResult(*(torch.empty((0, *first[f][1]), dtype=first[f][0])
                                 for f in _FIELDS))
        if "trace_dist" in first:
            local.trace_queries, local.trace_dist = (
                torch.empty((0, 0), dtype=first[f][0]) for f, _ in _TRACES)
    parts = {f: shard.gather(getattr(local, f)) for f in _FIELDS}
    if "trace_dist" in first:
        rows = max(s["trace_dist"][1][0] for s in specs)
        for f, empty in _TRACES:
            parts[f] = shard.gather(_pad(getattr(local, f), rows, empty), dim=1)
    return BlackBoxResult(**parts)


class _BlockStore:
    """The finished blocks of one (rank's share of a) blocked query-attack run, per attack
    and global block index, written to ``path`` after each block (safetensors, plain
    tensors, atomically replaced) with the run's fingerprint: a rerun with the same
    settings takes them as they were (the same bytes), a file for other settings is
    replaced, and a file that is no saved state at all is refused (never overwritten)."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.tensors: dict[str, Tensor] = {}
        self.resumed = 0  # blocks taken from the file
        self.replaced = False  # the file was for other settings

    @classmethod
    def open(cls, path: Path, fingerprint: str) -> _BlockStore:
        from safetensors import SafetensorError, safe_open

        store = cls(path, fingerprint)
        if not check_state_file(path):  # AttackError for a file that is no state
            return store
        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("fingerprint") == fingerprint:
                    store.tensors = {k: fh.get_tensor(k) for k in fh.keys()}
                    return store
        except (SafetensorError, OSError):
            pass
        store.replaced = True
        return store

    def get(self, name: str, block: int) -> tuple[list[BlackBoxResult], int] | None:
        """The runs (one per eps, or one minimum-norm run) and queries of ``block``."""
        key = f"{name}/{block}"
        if f"{key}/spent" not in self.tensors:
            return None
        runs: list[BlackBoxResult] = []
        while f"{key}/{len(runs)}/x_adv" in self.tensors:
            t = {f: self.tensors[f"{key}/{len(runs)}/{f}"] for f in _FIELDS}
            traces = [self.tensors.get(f"{key}/{len(runs)}/{f}") for f, _ in _TRACES]
            runs.append(BlackBoxResult(**t, trace_queries=traces[0], trace_dist=traces[1]))
        self.resumed += 1
        return runs, int(self.tensors[f"{key}/spent"])

    def put(self, name: str, block: int, runs: list[BlackBoxResult], spent: int) -> None:
        """Add ``block`` and rewrite the file."""
        from safetensors.torch import save

        key = f"{name}/{block}"
        for i, r in enumerate(runs):
            for f in (*_FIELDS, *(f for f, _ in _TRACES)):
                t = getattr(r, f)
                if t is not None:
                    self.tensors[f"{key}/{i}/{f}"] = t.detach().cpu().contiguous()
        self.tensors[f"{key}/spent"] = torch.tensor([spent], dtype=torch.int64)
        meta = {"fingerprint": self.fingerprint, "version": _STATE_VERSION,
                "kind": "dlsec black-box blocks"}
        atomic_write_bytes(self.path, save(self.tensors, metadata=meta))


_STATE_VERSION = "1"


def _fingerprint(ctx: ScenarioContext, options: QueryOptions, x: Tensor, y: Tensor,
                 block: int) -> str:
    """What a saved block depends on: the attacks and their settings, the threat's eps
    and norm, the seed, the block size, the points and the model's weights."""
    assert ctx.threat is not None
    meta = {"attacks": list(options.attacks), "max_queries": options.max_queries,
            "settings": {k: dict(v) for k, v in options.settings.items()},
            "early_stop": options.early_stop, "eps": [float(e) for e in ctx.threat.eps],
            "norm": ctx.threat.norm, "seed": ctx.seed, "block": block, "v": _STATE_VERSION}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=repr).encode())
    weights = ctx.model.state_dict().items() if isinstance(ctx.model, torch.nn.Module) else []
    for t in (x, y, *(p for _, p in sorted(weights))):
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _moved(r: BlackBoxResult, device: torch.device) -> BlackBoxResult:
    def to(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().to(device)

    return BlackBoxResult(r.x_adv.detach().to(device), r.success.to(device),
                          r.queries.to(device), r.linf.to(device), r.l2.to(device),
                          to(r.trace_queries), to(r.trace_dist))


def _join(parts: list[BlackBoxResult], device: torch.device) -> BlackBoxResult:
    """Per-point results of consecutive blocks as one; traces (iterations x points) of
    different lengths are padded with their last row (the queries and best distance stay
    what they were when the block stopped)."""
    def cat(name: str) -> Tensor:
        return torch.cat([getattr(p, name) for p in parts]).to(device)

    traces: list[Tensor | None] = [None, None]
    if parts[0].trace_queries is not None:
        for k, name in enumerate(("trace_queries", "trace_dist")):
            ts = [getattr(p, name) for p in parts]
            t = max(int(a.shape[0]) for a in ts)
            traces[k] = torch.cat([_pad(a, t, 0.0 if k == 0 else math.inf) for a in ts],
                                  dim=1).to(device)
    return BlackBoxResult(cat("x_adv"), cat("success"), cat("queries"), cat("linf"), cat("l2"),
                          traces[0], traces[1])


def _pad(trace: Tensor, rows: int, empty: float) -> Tensor:
    """``trace`` (iterations x points) to ``rows`` rows, its last row repeated (``empty``
    where it has none)."""
    last = trace[-1:]
    if trace.shape[0] == 0:
        last = torch.full((1, trace.shape[1]), empty, dtype=trace.dtype)
    return torch.cat([trace, last.expand(rows - trace.shape[0], -1)])


def _median_queries(res: BlackBoxResult, eps: float) -> float:
    """Median queries per success; decision-based: until the adversarial was within eps."""
    if res.trace_dist is None:
        return res.median_queries
    spent = res.queries_to(eps)
    return median(spent[spent >= 0])


def _num(v: float) -> float | str:
    return "—" if v != v else round(v, 4)


def whitebox_fooled(ctx: ScenarioContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Points white-box PGD (40 steps, random start) fools at ``eps`` in the threat's norm."""
    assert ctx.threat is not None
    pgd = make_attack("pgd", norm=ctx.threat.norm, steps=40)
    assert isinstance(pgd, EvasionAttack)
    res = pgd(ctx.model, x, y, eps=[eps], card=ctx.card, generator=ctx.generator("blackbox/pgd"))
    return res.success[0].to(x.device)


def evaluate(ctx: ScenarioContext, query: QueryOptions, transfer: TransferOptions | None, *,
             masking_margin: float = 0.05) -> ScenarioResult:
    """Query attacks, transfer attacks and the white-box comparison at one eps (the
    threat's last): metrics, tables, figure data and a ``[gradient-masking]`` warning when
    black-box attacks leave ``masking_margin`` less robust accuracy than white-box PGD."""
    assert ctx.threat is not None
    eps = float(ctx.threat.eps[-1])
    result = query_attacks(ctx, query) if query.attacks else None
    x, y = _points(ctx, query.samples)
    if result is not None:  # the same points: not asked twice (a served model charges them)
        correct = result.artifacts["correct"]
    else:
        with torch.inference_mode():
            correct = ctx.model(x).argmax(1) == y
    metrics: dict[str, float] = {"clean_accuracy": round(float(correct.double().mean()), 6),
                                 "eps": eps}
    tables: list[Table] = []
    figures: dict[str, Any] = {}
    fooled = ~correct
    if result is not None:
        metrics |= result.metrics
        tables += result.tables
        figures["queries"] = result.figures
        for sweep in result.artifacts["sweeps"].values():
            fooled |= sweep.results[-1].success.to(fooled.device)
    best_transfer: dict[str, float] = {}
    if transfer is not None and transfer.strategies:
        t = transfer_threat(ctx, transfer)
        metrics |= t.metrics
        tables += t.tables
        figures["transfer"] = t.figures
        for strategy, mask in t.artifacts["fooled"].items():
            if mask.shape == fooled.shape:  # not when the attacker took half the points
                fooled |= mask.to(fooled.device)
            best_transfer[strategy] = t.metrics[f"transfer_{strategy}_success_rate"]
    bb_robust = float((~fooled).double().mean())
    if ctx.remote is not None:  # no weights: no white-box comparison
        metrics["blackbox_robust_accuracy"] = round(bb_robust, 6)
        summary = (f"{ctx.threat.norm} eps {eps:g}: black-box robust accuracy {bb_robust:.1%} "
                   f"on {len(y)} attacked test points (subset; remote target: no white-box "
                   "comparison, it needs the model's weights)")
        return ScenarioResult(name="blackbox", summary=summary, metrics=metrics, tables=tables,
                              figures=figures, details=dict(result.details) if result else {})
    wb_fooled = whitebox_fooled(ctx, x, y, eps) | ~correct
    wb_robust = float((~wb_fooled).double().mean())
    gap = wb_robust - bb_robust
    only_bb = int((fooled & ~wb_fooled).sum())
    metrics |= {"whitebox_robust_accuracy": round(wb_robust, 6),
                "blackbox_robust_accuracy": round(bb_robust, 6), "masking_gap": round(gap, 6)}
    warnings = []
    if gap > masking_margin:
        warnings.append(
            f"[gradient-masking] black-box attacks leave {bb_robust:.1%} robust at eps {eps:g} "
            f"but white-box PGD {wb_robust:.1%}: {only_bb} point(s) fall to black-box attacks "
            "only. The gradients mislead white-box attacks; trust the lower number."
        )
    tables.append(Table(
        "White-box vs black-box", ["view", f"robust accuracy at eps {eps:g}"],
        [["white-box PGD", wb_robust], ["all black-box attacks", bb_robust],
         ["points fooled by black-box only", only_bb]],
    ))
    summary = f"{ctx.threat.norm} eps {eps:g}: black-box robust accuracy {bb_robust:.1%} "
    summary += f"(white-box PGD {wb_robust:.1%}) on {len(y)} attacked test points (subset)"
    if query.attacks:
        strongest = min(query.attacks, key=lambda n: metrics[f"{n}_robust_accuracy"])
        summary += f"; strongest query attack {strongest}"
    if best_transfer:
        s, best = max(best_transfer.items(), key=lambda kv: kv[1])
        summary += f"; best transfer {s} {best:.1%}"
    details = dict(result.details) if result is not None else {}
    return ScenarioResult(name="blackbox", summary=summary, metrics=metrics, tables=tables,
                          figures=figures, warnings=warnings, details=details)


__all__ = ["QueryOptions", "ScenarioError", "evaluate", "ladder", "query_attack_names",
           "query_attacks", "whitebox_fooled"]
