"""``dlsec attack square|simba|nes|hsja|boundary|transfer``: black-box attacks on a saved
model, seen only through an oracle (scores or labels), with exact query accounting.

The ``attack`` command itself lives in :mod:`dlsec.commands.evasion`; it hands the
black-box names to :func:`run_black_box`, which maps the flags onto the scenarios
(:mod:`dlsec.scenarios.blackbox`, :mod:`dlsec.scenarios.transfer`) and prints or writes
their results. With ``url`` the same attacks run against a served model through
:class:`dlsec.serve.HttpOracle` (:func:`dlsec.commands._target.remote_oracles`); the
server's budget running out is a one-line error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import typer

from dlsec.commands._target import (
    EvasionCommandError,
    check_samples,
    load_model_data,
    remote_context,
    remote_oracles,
    save_npz,
)

SCORE_BASED = ("square", "simba", "nes")
DECISION_BASED = ("hsja", "boundary")
BLACK_BOX = (*SCORE_BASED, *DECISION_BASED, "transfer")


def _curve(levels: list[int], rates: list[float]) -> str:
    return ", ".join(f"{b}: {r:.2f}" for b, r in zip(levels, rates, strict=True))


@contextmanager
def _query_bar(oracle: Any, label: str, total: int, show: bool) -> Iterator[None]:
    """A progress bar on stderr advanced by every query the oracle charges; ``total`` is
    the most the attack may spend (score-based attacks stop early on fooled points)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(label), BarColumn(),
               TextColumn("{task.completed:,.0f} queries (at most {task.total:,.0f})"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not show, transient=True) as bar:
        task = bar.add_task("", total=max(total, 1))
        oracle.on_query = lambda n: bar.advance(task, n)
        try:
            yield
        finally:
            oracle.on_query = None


def run_black_box(name: str, model_dir: Path | None, eps_list: list[float] | None, *, out: Path | None,
                  dataset: str | None, samples: int | None, seed: int, device: str,
                  max_queries: int, budget: int, norm: str, basis: str, surrogate: str, craft: str,
                  threads: int = 0, trust_code: bool = False, progress: bool = True,
                  url: str | None = None, api_key: str | None = None,
                  block_size: int | None = None, state: Path | None = None) -> None:
    """Run one black-box attack (see the module docstring) and print what it cost.

    ``max_queries``: per point (score- and decision-based attacks); ``budget``: the oracle
    answers a transfer surrogate may buy (an oracle total); ``block_size``: score- and
    decision-based attacks take the points in blocks of this many, each seeded from its
    index (what a run sharded under torchrun does); ``state``: a resume file, each
    finished block saved to it (under torchrun each rank its own
    ``<state>.rank<k>-of-<N>``); a rerun of the same command skips the saved blocks."""
    from dlsec.scenarios import ScenarioContext
    from dlsec.threat import ThreatModel

    if max_queries < 1:
        raise EvasionCommandError(f"--max-queries: must be >= 1, got {max_queries}")
    if budget < 1:
        raise EvasionCommandError(f"--budget: must be >= 1, got {budget}")
    if norm not in ("linf", "l2"):
        raise EvasionCommandError(f"--norm: must be linf or l2, got {norm!r}")
    if name not in DECISION_BASED and not eps_list:
        raise EvasionCommandError(f"--eps: {name} needs at least one epsilon")
    if name == "boundary" and norm != "l2":
        raise EvasionCommandError("--norm: the boundary attack is an L2 attack; pass --norm l2")
    check_samples(samples)
    if name == "transfer" and (block_size is not None or state is not None):
        raise EvasionCommandError("--block-size/--state: the transfer attack runs whole; "
                                  "blocks and resume are for the query attacks")
    if state is not None:
        _check_state(state, block_size)
    with ExitStack() as stack:
        if url is not None:
            factory = stack.enter_context(remote_oracles(url, api_key))
            ctx = remote_context(factory, dataset, seed=seed, progress=progress,
                                 knowledge="black-box", norm=norm, eps=tuple(eps_list or [0.0]))
        else:
            assert model_dir is not None
            model, card, ds = load_model_data(model_dir, dataset, device, threads=threads,
                                              trust_code=trust_code)
            threat = ThreatModel.from_card(card, knowledge="black-box", norm=norm,
                                           eps=tuple(eps_list or [0.0]))
            ctx = ScenarioContext(model=model, card=card, dataset=ds, threat=threat, seed=seed,
                                  device=ds.x_test.device, progress=progress)
        _run(ctx, name, eps_list, out=out, samples=samples, max_queries=max_queries,
             budget=budget, basis=basis, surrogate=surrogate, craft=craft, progress=progress,
             block_size=block_size, state=state)


def _check_state(state: Path, block_size: int | None) -> None:
    """Before any work: ``state`` (this rank's own file under torchrun) may be written,
    and a one-process run resumes only by blocks."""
    from dlsec.files import check_output
    from dlsec.scenarios.sharding import launched_shard
    from dlsec.scenarios.whitebox import check_state_file

    launched = launched_shard()
    if launched is None and block_size is None:
        raise EvasionCommandError("--state: a run resumes block by block; pass --block-size "
                                  "N too (or run sharded under torchrun)")
    check_output(state, kind="file", option="--state")
    check_state_file(state if launched is None else launched.state_path(state))


def _run(ctx: Any, name: str, eps_list: list[float] | None, *, out: Path | None,
         samples: int | None, max_queries: int, budget: int, basis: str, surrogate: str,
         craft: str, progress: bool, block_size: int | None = None,
         state: Path | None = None) -> None:
    import numpy as np

    ds = ctx.dataset
    n = len(ds.y_test) if samples is None else min(samples, len(ds.y_test))
    watch = _watch(progress)
    if name == "transfer":
        arrays = _transfer(ctx, n, eps_list or [], budget=budget, surrogate=surrogate,
                           craft=craft, watch=watch)
    else:
        from dlsec.scenarios.sharding import current_shard

        shard = current_shard(ctx.device)  # under torchrun: this rank's blocks of points
        if shard is not None and ctx.device.type == "cuda":
            import dataclasses

            import torch

            dev = torch.device("cuda", torch.cuda.current_device())
            ctx = dataclasses.replace(ctx, model=ctx.model.to(dev), device=dev)
        arrays = _query(ctx, name, n, eps_list or [], max_queries=max_queries,
                        basis=basis, watch=watch, shard=shard, block_size=block_size,
                        state=state)
        if shard is not None and not shard.is_main:
            return  # rank 0 prints and writes
    if out is not None:
        save_npz(out, {k: np.asarray(v) for k, v in arrays.items()})
        typer.echo(f"adversarials: {out}")


def _watch(show: bool) -> Any:
    return lambda oracle, label, total: _query_bar(oracle, label, total, show)


def _query(ctx: Any, name: str, n: int, eps_list: list[float], *, max_queries: int,
           basis: str, watch: Any, shard: Any = None, block_size: int | None = None,
           state: Path | None = None) -> dict[str, Any]:
    """A score- or decision-based attack through the scenario; printed (by rank 0 when
    sharded under torchrun), and the arrays."""
    import numpy as np

    def echo(text: str) -> None:
        if shard is None or shard.is_main:
            typer.echo(text)

    from dlsec.scenarios.blackbox import QueryOptions, ScenarioError, ladder, query_attacks

    decision = name in DECISION_BASED
    norm = ctx.threat.norm
    echo(f"{name} ({norm}) through a {'labels' if decision else 'scores'} oracle on "
               f"{n} points, at most {max_queries} queries per point")
    options = QueryOptions(attacks=(name,), samples=n, max_queries=max_queries,
                           settings={"simba": {"basis": basis}}, early_stop=False, watch=watch,
                           block_size=block_size, state_path=state)
    try:
        res = query_attacks(ctx, options, shard=shard)
    except ScenarioError as exc:
        raise EvasionCommandError(str(exc)) from exc
    if "block_size" in res.details:
        procs = 1 if shard is None else shard.world_size
        bs = res.details["block_size"]
        echo(f"  {procs} process(es), blocks of {bs} points "
             f"(one process reproduces it with --block-size {bs})")
    if "state" in res.details:
        st = res.details["state"]
        if st["replaced"] and (shard is None or shard.is_main):
            typer.echo(f"warning: --state {state} was saved for other settings; "
                       "started over (the file is replaced)", err=True)
        echo(f"  state {state}: {st['resumed_blocks']} finished block(s) resumed")
    sweep = res.artifacts["sweeps"][name]
    levels = ladder(max_queries)
    x, y = res.artifacts["x"], res.artifacts["y"]
    arrays: dict[str, Any] = {"x": x.cpu().numpy(), "y": y.cpu().numpy(),
                              "eps": np.array(eps_list)}
    if decision:
        run = sweep.results[0]
        dist = run.linf if norm == "linf" else run.l2
        found = run.trace_dist.amin(0) < float("inf")
        echo(f"  adversarial found for {float(found.double().mean()):.4f} of the points, "
                   f"median {norm} distance {float(np.median(dist[found].cpu().numpy())):.4g}, "
                   f"queries spent {sweep.queries_total}")
        arrays |= {"x_adv": run.x_adv.cpu().numpy(), "success": found.cpu().numpy(),
                   "queries": run.queries.cpu().numpy(), "distance": dist.cpu().numpy()}
    results = sweep.results if eps_list else []
    for e, r in zip(eps_list, results, strict=False):
        echo(f"  eps {e:g}: robust accuracy {1 - r.success_rate:.4f}, success rate "
                   f"{r.success_rate:.4f}" + ("" if decision else
                   f", median queries per success {r.median_queries:g}"))
        curve = r.success_at(levels, eps=e) if decision else r.success_at(levels)
        echo(f"    success by queries per point: {_curve(levels, curve)}")
    if not decision:
        echo(f"  queries spent {sweep.queries_total}")
        arrays |= {"x_adv": np.stack([r.x_adv.cpu().numpy() for r in results]),
                   "success": np.stack([r.success.cpu().numpy() for r in results]),
                   "queries": np.stack([r.queries.cpu().numpy() for r in results])}
    return arrays


def _transfer(ctx: Any, n: int, eps_list: list[float], *, budget: int, surrogate: str,
              craft: str, watch: Any) -> dict[str, Any]:
    """Train a surrogate (``--surrogate``), craft on it (``--craft``), send to the model."""
    import numpy as np

    from dlsec.scenarios.transfer import TransferOptions, transfer_threat

    crafts = tuple(c.strip() for c in craft.split(",") if c.strip())
    if not crafts:
        raise EvasionCommandError("--craft: name at least one white-box attack")
    res = transfer_threat(ctx, TransferOptions(strategies=(surrogate,), craft=crafts,
                                               samples=n, budget=budget, watch=watch))
    x, y = res.artifacts["x"], res.artifacts["y"]
    per_eps = res.artifacts["results"][surrogate]
    trained = res.artifacts["training_queries"][surrogate]
    total = int(res.metrics[f"transfer_{surrogate}_queries"])
    typer.echo(f"surrogate ({surrogate}) trained on {trained} oracle labels; "
               f"{len(y)} points attacked")
    for e, r in zip(eps_list, per_eps, strict=True):
        for c, one in r.results.items():
            typer.echo(f"  eps {e:g} {c}: transfer success rate {one.success_rate:.4f}")
    typer.echo(f"  queries spent {total} ({trained} training, {total - trained} sending)")
    shape = (len(eps_list), len(crafts))
    return {"x": x.cpu().numpy(), "y": y.cpu().numpy(), "eps": np.array(eps_list),
            "craft": np.array(crafts),
            "x_adv": np.stack([r.results[c].x_adv.cpu().numpy() for r in per_eps
                               for c in crafts]).reshape(*shape, *x.shape),
            "success": np.stack([r.results[c].success.cpu().numpy() for r in per_eps
                                 for c in crafts]).reshape(*shape, len(y))}
