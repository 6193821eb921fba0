"""``dlsec attack square|simba|nes|hsja|boundary|transfer``: black-box attacks on a saved
model, seen only through an oracle (scores or labels), with exact query accounting.

The ``attack`` command itself lives in :mod:`dlsec.commands.evasion`; it hands the
black-box names to :func:`run_black_box`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from dlsec.commands._target import EvasionCommandError, load_target, save_npz

SCORE_BASED = ("square", "simba", "nes")
DECISION_BASED = ("hsja", "boundary")
BLACK_BOX = (*SCORE_BASED, *DECISION_BASED, "transfer")


def _budgets(budget: int) -> list[int]:
    """Query budgets a success curve is read at: a 1-3-10 ladder up to ``budget``."""
    ladder = [b for b in (10, 30, 100, 300, 1000, 3000, 10_000, 30_000) if b < budget]
    return [*ladder, budget]


def _curve(budgets: list[int], rates: list[float]) -> str:
    return ", ".join(f"{b}: {r:.2f}" for b, r in zip(budgets, rates, strict=True))


@contextmanager
def _query_bar(oracle: Any, label: str, total: int, show: bool) -> Iterator[None]:
    """A progress bar on stderr advanced by every query the oracle charges; ``total`` is
    the most the attack may spend (score-based attacks stop early on fooled points)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed:,.0f} queries (at most {task.total:,.0f})"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not show, transient=True) as bar:
        task = bar.add_task("", total=max(total, 1))
        oracle.on_query = lambda n: bar.advance(task, n)
        try:
            yield
        finally:
            oracle.on_query = None


def _score_attack(name: str, eps: float, *, norm: str, budget: int, basis: str) -> Any:
    from dlsec.attacks.blackbox import NESAttack, SimBA, SquareAttack

    if name == "square":
        return SquareAttack(eps=eps, norm=norm, max_queries=budget)  # type: ignore[arg-type]
    if name == "nes":
        return NESAttack(eps=eps, norm=norm, max_queries=budget)  # type: ignore[arg-type]
    return SimBA(eps=eps, basis=basis, max_queries=budget)  # type: ignore[arg-type]


def run_black_box(
    name: str,
    model_dir: Path,
    eps_list: list[float] | None,
    *,
    out: Path | None,
    dataset: str | None,
    samples: int | None,
    seed: int,
    device: str,
    budget: int,
    norm: str,
    basis: str,
    surrogate: str,
    craft: str,
    threads: int = 0,
    trust_code: bool = False,
    progress: bool = True,
) -> None:
    """Run one black-box attack (see the module docstring) and print what it cost."""
    import numpy as np
    import torch

    from dlsec.threat import LocalOracle

    if budget < 1:
        raise EvasionCommandError(f"--budget: must be >= 1, got {budget}")
    if norm not in ("linf", "l2"):
        raise EvasionCommandError(f"--norm: must be linf or l2, got {norm!r}")
    if name not in DECISION_BASED and not eps_list:
        raise EvasionCommandError(f"--eps: {name} needs at least one epsilon")
    model, card, x, y = load_target(model_dir, dataset, device, samples, threads=threads,
                                    trust_code=trust_code)
    ids = torch.arange(len(y))
    arrays: dict[str, Any] = {"x": x.cpu().numpy(), "y": y.cpu().numpy()}

    if name in DECISION_BASED:
        _decision_based(name, model, card, x, y, eps_list or [], arrays, budget=budget,
                        norm=norm, seed=seed, progress=progress)
    elif name == "transfer":
        _transfer(model, card, x, y, eps_list or [], arrays, budget=budget, norm=norm,
                  seed=seed, surrogate=surrogate, craft=craft, dataset=dataset,
                  progress=progress)
    else:
        typer.echo(f"{name} ({norm}) through a scores oracle on {len(y)} points, "
                   f"budget {budget} per point")
        advs, successes, queries = [], [], []
        for e in eps_list or []:
            attack = _score_attack(name, e, norm=norm, budget=budget, basis=basis)
            oracle = LocalOracle(model, card=card, output="scores")
            with _query_bar(oracle, f"{name} eps={e:g}", budget * len(y), progress):
                res = attack(oracle, x, y, ids=ids, generator=torch.Generator().manual_seed(seed))
            typer.echo(
                f"  eps {e:g}: robust accuracy {1 - res.success_rate:.4f}, success rate "
                f"{res.success_rate:.4f}, median queries per success {res.median_queries:g}, "
                f"queries spent {oracle.queries_total}"
            )
            typer.echo(f"    success by queries per point: {_curve(_budgets(budget), res.success_at(_budgets(budget)))}")
            advs.append(res.x_adv.cpu().numpy())
            successes.append(res.success.cpu().numpy())
            queries.append(res.queries.cpu().numpy())
        arrays |= {"eps": np.array(eps_list), "x_adv": np.stack(advs),
                   "success": np.stack(successes), "queries": np.stack(queries)}
    if out is not None:
        save_npz(out, arrays)
        typer.echo(f"adversarials: {out}")


def _decision_based(name: str, model, card, x, y, eps_list: list[float], arrays: dict, *,
                    budget: int, norm: str, seed: int, progress: bool) -> None:
    """HopSkipJump / Boundary through a labels oracle: the smallest adversarials found."""
    import numpy as np
    import torch

    from dlsec.attacks.blackbox import median
    from dlsec.attacks.blackbox.boundary import BoundaryAttack
    from dlsec.attacks.blackbox.hsja import HopSkipJump
    from dlsec.threat import LocalOracle

    if name == "boundary" and norm != "l2":
        raise EvasionCommandError("--norm: the boundary attack is an L2 attack; pass --norm l2")
    attack: Any = (HopSkipJump(norm=norm, max_queries=budget) if name == "hsja"  # type: ignore[arg-type]
                   else BoundaryAttack(max_queries=budget))
    oracle = LocalOracle(model, card=card, output="label")
    typer.echo(f"{name} ({norm}) through a labels oracle on {len(y)} points, "
               f"budget {budget} per point")
    with _query_bar(oracle, name, budget * len(y), progress):
        res = attack(oracle, x, y, ids=torch.arange(len(y)),
                     generator=torch.Generator().manual_seed(seed))
    dist = res.linf if norm == "linf" else res.l2
    med = median(dist[res.success])
    typer.echo(f"  adversarial found for {res.success_rate:.4f} of the points, median {norm} "
               f"distance {med:.4g}, queries spent {oracle.queries_total}")
    for e in eps_list:
        (rate,) = res.success_at([budget], eps=e)
        typer.echo(f"  eps {e:g}: robust accuracy {1 - rate:.4f}, success rate {rate:.4f}")
        curve = res.success_at(_budgets(budget), eps=e)
        typer.echo(f"    success by queries per point: {_curve(_budgets(budget), curve)}")
    arrays |= {"x_adv": res.x_adv.cpu().numpy(), "success": res.success.cpu().numpy(),
               "queries": res.queries.cpu().numpy(), "distance": dist.cpu().numpy(),
               "eps": np.array(eps_list)}


def _transfer(model, card, x, y, eps_list: list[float], arrays: dict, *, budget: int,
              norm: str, seed: int, surrogate: str, craft: str, dataset: str | None,
              progress: bool) -> None:
    """Train a surrogate (``--surrogate``), craft on it (``--craft``), send to the model."""
    import numpy as np
    import torch

    from dlsec.attacks.blackbox.transfer import train_surrogate, transfer_attack
    from dlsec.data import load_dataset
    from dlsec.threat import LocalOracle

    crafts = tuple(c.strip() for c in craft.split(",") if c.strip())
    if not crafts:
        raise EvasionCommandError("--craft: name at least one white-box attack")
    seed_split = int(card.training.get("seed", 0)) if isinstance(card.training, dict) else 0
    ds = load_dataset(dataset or card.dataset, seed=seed_split)
    # the attacker's own data: test points not attacked here (never the training data)
    x_att, y_att = ds.x_test[len(y):].to(x.device), ds.y_test[len(y):].to(x.device)
    if len(y_att) == 0:  # no --samples: attack the first half, the attacker holds the rest
        half = len(y) // 2
        x_att, y_att, x, y = x[half:], y[half:], x[:half], y[:half]
        arrays |= {"x": x.cpu().numpy(), "y": y.cpu().numpy()}
    # Papernot et al.'s substitute learns from labels, Knockoff Nets from probabilities
    oracle = LocalOracle(model, card=card, output="scores" if surrogate == "knockoff" else "label")
    g = torch.Generator().manual_seed(seed)
    with _query_bar(oracle, f"{surrogate} surrogate", budget, progress):
        sur = train_surrogate(surrogate, oracle, card=card, x_attacker=x_att,
                              y_attacker=y_att if surrogate == "graybox" else None,
                              budget=budget, generator=g)
    trained = oracle.queries_total
    typer.echo(f"surrogate ({surrogate}) trained on {trained} oracle labels; "
               f"{len(y)} points attacked")
    advs, successes = [], []
    for e in eps_list:
        res = transfer_attack(oracle, sur, x, y, eps=e, norm=norm, attacks=crafts,
                              ids=torch.arange(len(y)), generator=g)
        for c, r in res.results.items():
            typer.echo(f"  eps {e:g} {c}: transfer success rate {r.success_rate:.4f}")
            advs.append(r.x_adv.cpu().numpy())
            successes.append(r.success.cpu().numpy())
    typer.echo(f"  queries spent {oracle.queries_total} ({trained} training, "
               f"{oracle.queries_total - trained} sending)")
    arrays |= {"eps": np.array(eps_list), "craft": np.array(crafts),
               "x_adv": np.stack(advs).reshape(len(eps_list), len(crafts), *x.shape),
               "success": np.stack(successes).reshape(len(eps_list), len(crafts), len(y))}
