"""The defense x attack matrix: every defended variant of the model under the same attacks.

Rows are defenses (:mod:`dlsec.scenarios.defended`: ``none``, ``pgd-at``, ``dp:3``,
``sanitize:cleanlab``, ``policy:label-only``, ...), columns are measurements
(:mod:`dlsec.scenarios.matrix_columns`). Each row's model is built once (trained by the
defense's recipe, or the audited model seen through a serving policy); each group of
columns is one experiment on it:

* ``clean``: accuracy of what the row's API answers on the whole test set;
* ``whitebox``: the AutoAttack-style ensemble on the first ``samples`` test points at
  ``eps`` (white-box: a serving policy does not change it, the row measures that);
* ``blackbox``: Square (scores) or HopSkipJump (when the API answers labels only) through
  the row's API, ``max_queries`` per point, on the same points;
* ``transfer``: a Jacobian-augmented surrogate (Papernot et al. 2017) trained on
  ``transfer_budget`` labels from the API (every policy answers labels), PGD adversarials
  crafted on it and sent once, on the same points;
* ``poisoning`` (rows that train): the defense's own training on two poisoned copies of the
  training set, the same for every row: a BadNets backdoor (``backdoor_rate``, success on
  triggered test inputs of other classes) and optimized label flips (``flip_rate``, chosen
  against the undefended model; damage = the row's clean accuracy minus its accuracy after);
* ``membership``: LiRA (offline, ``shadows`` shadow models trained with the row's recipe, as
  its card records it) on ``members`` training records and as many test records, through
  the row's API (label-only attack when it answers labels only);
* ``inversion``: black-box MI-Face through the API, the reconstructions scored by an
  independent model (share recognised as their class; needs scores);
* ``extraction``: a thief (``extraction_strategy``, default ``natural``: Knockoff Nets on
  natural inputs, which learns from scores when the API gives them) with
  ``extraction_budget`` queries, fidelity on held-out test inputs;
* the cost: training time (s) of the row, and its clean accuracy against ``none``'s.

Each row's model and each (row, group) result go through a :class:`MatrixStore`, so a front-end
can cache them on disk and resume (the audit's ``defenses`` section does). Every rate comes
with its 95% interval (Wilson; bootstrap for AUC and TPR; Newcombe's for the flip damage).
Seeds: every row trains with the model's own seed (same initial weights); attacks use the
context's named streams, so two rows face the same random choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from torch import nn

from dlsec.attacks.surrogate import train_config_from_card
from dlsec.data import Dataset
from dlsec.errors import DlsecError
from dlsec.executor import Executor, SequentialExecutor, Task
from dlsec.intervals import interval_record, membership_intervals, rate_record, wilson_interval
from dlsec.models import ModelCard
from dlsec.scenarios.context import RemoteTargetError, ScenarioContext
from dlsec.scenarios.defended import (
    BuildSettings,
    DefenseSpec,
    Recipe,
    Trainer,
    parse_defenses,
)
from dlsec.scenarios.matrix_columns import COLUMNS
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.threat import ThreatModel

GROUPS: dict[str, tuple[str, ...]] = {
    "clean": ("clean_accuracy",),
    "whitebox": ("whitebox_robust_accuracy",),
    "blackbox": ("blackbox_robust_accuracy",),
    "transfer": ("transfer_success",),
    "poisoning": ("backdoor_success", "label_flip_damage"),
    "membership": ("membership_auc", "membership_tpr_at_1_fpr"),
    "inversion": ("inversion_accuracy",),
    "extraction": ("extraction_fidelity",),
}
"""Experiments and the columns each fills (``train_seconds`` comes from building the row)."""
STATE_VERSION = 1


@dataclass
class MatrixOptions:
    """What every row is attacked with (the ``[defenses]`` table's keys but ``names``).

    ``eps`` (input units; 0: a tenth of the bounds' range for linf, 1.0 for l2) is both the
    attacks' radius and the adversarial trainings'; ``groups``: the experiments to run
    (:data:`GROUPS`, all by default)."""

    eps: float = 0.0
    norm: str = "linf"
    samples: int = 100
    max_queries: int = 1000
    transfer_budget: int = 1000
    backdoor_rate: float = 0.05
    backdoor_target: int = 0
    flip_rate: float = 0.2
    members: int = 200
    shadows: int = 8
    inversion_iters: int = 100
    extraction_budget: int = 1000
    extraction_strategy: str = "natural"
    groups: tuple[str, ...] = tuple(GROUPS)

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm: must be linf or l2, got {self.norm!r}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError("eps: must be finite and >= 0 (0: automatic)")
        if min(self.samples, self.max_queries, self.transfer_budget, self.members,
               self.extraction_budget) < 1 or self.shadows < 2 or self.inversion_iters < 1:
            raise ValueError("samples, max-queries, transfer-budget, members, "
                             "extraction-budget and inversion-iters must be >= 1, shadows >= 2")
        if not (0 < self.flip_rate < 1 and 0 < self.backdoor_rate < 1):
            raise ValueError("flip-rate and backdoor-rate: each in (0, 1)")
        if self.backdoor_target < 0:
            raise ValueError("backdoor-target: must be >= 0")
        from dlsec.scenarios.extraction import STRATEGIES

        if self.extraction_strategy not in STRATEGIES:
            raise ValueError(f"extraction-strategy: unknown {self.extraction_strategy!r} "
                             f"(choose from {list(STRATEGIES)})")
        bad = [g for g in self.groups if g not in GROUPS]
        if bad or not self.groups:
            raise ValueError(f"groups: unknown {bad} (choose from {list(GROUPS)})")

    def radius(self, bounds: tuple[float, float]) -> float:
        if self.eps:
            return float(self.eps)
        return round((0.1 if self.norm == "linf" else 1.0) * (bounds[1] - bounds[0]), 6)


class MatrixStore(Protocol):
    """Where rows' models and cells' results are kept between runs (see :class:`MemoryStore`)."""

    def model(self, key: str, build: Callable[[], tuple[nn.Module, ModelCard, float]]
              ) -> tuple[nn.Module, ModelCard, float]: ...

    def cell(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]: ...


@dataclass
class MemoryStore:
    """Keeps everything in memory for one run (the default)."""

    models: dict[str, tuple[nn.Module, ModelCard, float]] = field(default_factory=dict)
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    def model(self, key: str, build: Callable[[], tuple[nn.Module, ModelCard, float]]
              ) -> tuple[nn.Module, ModelCard, float]:
        if key not in self.models:
            self.models[key] = build()
        return self.models[key]

    def cell(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self.cells:
            self.cells[key] = compute()
        return self.cells[key]


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Row:
    """One defended variant: its spec, recipe, model and what each column measured."""

    spec: DefenseSpec
    recipe: Recipe
    model: nn.Module
    card: ModelCard
    seconds: float
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.text


def cell(value: float | None, record: dict[str, Any] | None = None, note: str = "") -> dict[str, Any]:
    """One measured column: ``value`` (None: not measured, ``note`` says why), its interval."""
    return {"value": None if value is None else float(value), "interval": record, "note": note}


# -- the experiments --------------------------------------------------------------------------
def _labels_only(row: Row) -> bool:
    return row.recipe.kind == "serving" and row.recipe.policy.returns_labels


def _clean(ctx: ScenarioContext, row: Row, opt: MatrixOptions, shared: _Shared) -> dict[str, Any]:
    ds = ctx.dataset
    labels = ctx.oracle(output="label").query(ds.x_test.to(ctx.device)).cpu()
    hits = int((labels == ds.y_test).sum())
    n = int(ds.y_test.numel())
    return {"clean_accuracy": cell(hits / n, rate_record(hits / n, n),
                                   f"what the API answers, {n} test points")}


def _whitebox(ctx: ScenarioContext, row: Row, opt: MatrixOptions, shared: _Shared) -> dict[str, Any]:
    from dlsec.scenarios.whitebox import ensemble_evaluation

    res = ensemble_evaluation(ctx, samples=opt.samples, checks=False)
    n = int(res.artifacts["y"].numel())
    value = res.metrics[f"robust_accuracy@{shared.eps:g}"]
    return {"whitebox_robust_accuracy": cell(value, rate_record(value, n),
                                             f"ensemble ({' -> '.join(res.details['attacks'])}) "
                                             f"on {n} test points")}


def _blackbox(ctx: ScenarioContext, row: Row, opt: MatrixOptions, shared: _Shared) -> dict[str, Any]:
    from dlsec.scenarios.blackbox import QueryOptions, query_attacks

    attack = "hsja" if _labels_only(row) else "square"
    res = query_attacks(ctx, QueryOptions(attacks=(attack,), samples=opt.samples,
                                          max_queries=opt.max_queries))
    n = min(opt.samples, int(ctx.dataset.y_test.numel()))
    value = res.metrics[f"{attack}_robust_accuracy"]
    return {"blackbox_robust_accuracy": cell(value, rate_record(value, n),
                                             f"{attack}, {opt.max_queries} queries per point, "
                                             f"{n} test points")}


def _transfer(ctx: ScenarioContext, row: Row, opt: MatrixOptions, shared: _Shared) -> dict[str, Any]:
    from dlsec.scenarios.transfer import TransferOptions, transfer_threat

    res = transfer_threat(ctx, TransferOptions(strategies=("jacobian",), craft=("pgd",),
                                               samples=opt.samples, budget=opt.transfer_budget))
    n = min(opt.samples, int(ctx.dataset.y_test.numel()))
    value = res.metrics["transfer_jacobian_success_rate"]
    return {"transfer_success": cell(value, rate_record(value, n),
                                     f"Jacobian-augmented surrogate (Papernot et al.) on "
                                     f"{opt.transfer_budget} labels, PGD, {n} test points")}


def _poisoning(ctx: ScenarioContext, row: Row, opt: MatrixOptions, shared: _Shared) -> dict[str, Any]:
    if row.recipe.retrain is None:
        why = "not applicable: a serving policy does not change training (see none)"
        return {"backdoor_success": cell(None, note=why), "label_flip_damage": cell(None, note=why)}
    ds = ctx.dataset
    out: dict[str, Any] = {}
    backdoor = shared.poison("backdoor")
    model = shared.retrained(row, "backdoor").to(ctx.device)
    asr = backdoor.result.success(model, ds.x_test, ds.y_test)
    n = int((ds.y_test != opt.backdoor_target).sum())
    out["backdoor_success"] = cell(asr, rate_record(asr, n),
                                   f"BadNets trigger on {opt.backdoor_rate:.0%} of the training "
                                   f"set; {n} triggered test inputs")
    model = shared.retrained(row, "optimized-flip").to(ctx.device)
    from dlsec.training import evaluate

    n_test = int(ds.y_test.numel())
    after = float(evaluate(model, ds.x_test, ds.y_test)["accuracy"])
    before = float(evaluate(row.model, ds.x_test, ds.y_test)["accuracy"])
    lo, hi = difference_interval(round(before * n_test), n_test, round(after * n_test), n_test)
    out["label_flip_damage"] = cell(before - after, interval_record(lo, hi, n_test, "newcombe"),
                                    f"optimized flips of {opt.flip_rate:.0%} of the labels; "
                                    f"accuracy {before:.1%} -> {after:.1%} on {n_test} test points")
    return out


def _membership(ctx: ScenarioContext, row: Row, opt: MatrixOptions, shared: _Shared) -> dict[str, Any]:
    from dlsec.scenarios.membership import MembershipOptions, run_membership

    attack = "label-only" if _labels_only(row) else "lira-offline"
    res = run_membership(ctx, MembershipOptions(attacks=(attack,), members=opt.members,
                                                shadows=opt.shadows))
    result = res.artifacts["results"][0]
    records = membership_intervals(result.scores, result.is_member, {"tpr_at_1_fpr": 0.01},
                                   generator=ctx.generator(f"matrix/{row.name}/bootstrap"))
    members = int(result.is_member.bool().sum())
    others = int(result.is_member.numel()) - members
    how = (f"{attack}" + (f", {opt.shadows} shadows with the row's recipe" if attack != "label-only"
                          else "") + f", {members} members + {others} "
           "non-members")
    return {"membership_auc": cell(result.metrics.auc, records.get("auc"), how),
            "membership_tpr_at_1_fpr": cell(result.metrics.tpr_at_1_fpr,
                                            records.get("tpr_at_1_fpr"), how)}


def _inversion(ctx: ScenarioContext, row: Row, opt: MatrixOptions, shared: _Shared) -> dict[str, Any]:
    from dlsec.scenarios.inversion import InversionOptions, run_inversion

    if _labels_only(row):
        return {"inversion_accuracy": cell(None, note="the API answers labels only: MI-Face "
                                           "has no confidence to climb")}
    res = run_inversion(ctx, InversionOptions(white_box=False, black_box_iters=opt.inversion_iters))
    value = res.metrics["inversion_black_box_eval_accuracy"]
    n = int(ctx.card.num_classes)
    return {"inversion_accuracy": cell(value, rate_record(value, n),
                                       f"black-box MI-Face, {opt.inversion_iters} iterations, one "
                                       f"reconstruction per class ({n}), scored by an independent "
                                       "model")}


def _extraction(ctx: ScenarioContext, row: Row, opt: MatrixOptions, shared: _Shared) -> dict[str, Any]:
    from dlsec.scenarios.extraction import ExtractionOptions, run_extraction

    output = "label" if _labels_only(row) else "scores"
    res = run_extraction(ctx, ExtractionOptions(runs=((opt.extraction_strategy, output),),
                                                budget=opt.extraction_budget, epochs=10))
    key = "extraction_fidelity_labels" if output == "label" else "extraction_fidelity"
    value = res.metrics[key]
    n = int(res.details["held_out"])
    return {"extraction_fidelity": cell(value, rate_record(value, n),
                                        f"{opt.extraction_strategy} thief, "
                                        f"{opt.extraction_budget} queries "
                                        f"({output}), agreement on {n} held-out test inputs")}


EXPERIMENTS: dict[str, Callable[[ScenarioContext, Row, MatrixOptions, _Shared], dict[str, Any]]] = {
    "clean": _clean, "whitebox": _whitebox, "blackbox": _blackbox, "transfer": _transfer,
    "poisoning": _poisoning, "membership": _membership, "inversion": _inversion,
    "extraction": _extraction,
}


def difference_interval(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) for ``hits_a/n_a - hits_b/n_b``
    from the two Wilson 95% intervals. Newcombe's example: 56/70 - 48/80 gives
    ``(0.0524, 0.3339)``."""
    p, q = hits_a / n_a, hits_b / n_b
    l1, u1 = wilson_interval(hits_a, n_a)
    l2, u2 = wilson_interval(hits_b, n_b)
    d = p - q
    return (d - math.sqrt((p - l1) ** 2 + (u2 - q) ** 2),
            d + math.sqrt((u1 - p) ** 2 + (q - l2) ** 2))


@dataclass
class _Poisoned:
    result: Any
    dataset: Dataset


RETRAINS = ("backdoor", "optimized-flip")
"""The poisoned training sets every training row is retrained on (the poisoning columns)."""


@dataclass
class _Shared:
    """What every row shares: the settings, the radius, the poisoned training sets and the
    rows' retrains on them (built ahead as executor tasks by :meth:`retrain_all`)."""

    ctx: ScenarioContext
    settings: BuildSettings
    opt: MatrixOptions
    eps: float
    _poisons: dict[str, _Poisoned] = field(default_factory=dict)
    _retrained: dict[str, nn.Module] = field(default_factory=dict)

    def poison(self, attack: str) -> _Poisoned:
        from dlsec.scenarios.poisoning import poison_dataset

        if attack not in self._poisons:
            ds = self.ctx.dataset
            if attack == "backdoor":
                res = poison_dataset("backdoor", ds, seed=self.ctx.seed, rate=self.opt.backdoor_rate,
                                     target=self.opt.backdoor_target)
            else:
                res = poison_dataset("optimized-flip", ds, seed=self.ctx.seed,
                                     surrogate=self.ctx.model, rate=self.opt.flip_rate)
            self._poisons[attack] = _Poisoned(res, dataclasses.replace(ds, x_train=res.x,
                                                                       y_train=res.y))
        return self._poisons[attack]

    def retrain_task(self, row: Row, attack: str) -> Task:
        """The executor task that retrains ``row``'s defense on the ``attack`` set."""
        return (f"matrix/{row.name}/retrain/{attack}",
                (row.recipe.retrain, self.poison(attack).dataset, self.settings.train.seed))

    def retrain_all(self, rows: Sequence[Row], executor: Executor) -> None:
        """Every retrain of ``rows`` (on each of :data:`RETRAINS`) in one map on ``executor``."""
        tasks = [self.retrain_task(row, attack) for row in rows for attack in RETRAINS]
        models = executor.map(_retrain, tasks)
        self._retrained |= {name: model for (name, _), model in zip(tasks, models, strict=True)}

    def retrained(self, row: Row, attack: str) -> nn.Module:
        """``row``'s defense retrained on the ``attack`` set: built ahead by
        :meth:`retrain_all`, else here as the same task (the same model either way)."""
        name, args = self.retrain_task(row, attack)
        if name not in self._retrained:
            return SequentialExecutor().map(_retrain, [(name, args)])[0]
        return self._retrained.pop(name)


def _retrain(retrain: Trainer, dataset: Dataset, seed: int) -> nn.Module:
    """One retrain (an executor's task, here or in a Ray worker): the model on the CPU."""
    model, _ = retrain(dataset, seed)
    return model.cpu()


# -- the matrix -------------------------------------------------------------------------------
def run_matrix(ctx: ScenarioContext, defenses: Sequence[str], options: MatrixOptions | None = None,
               *, store: MatrixStore | None = None,
               executor: Executor | None = None) -> ScenarioResult:
    """Every defense in ``defenses`` (specs, :func:`dlsec.scenarios.defended.parse_defenses`)
    built and attacked; ``details["matrix"]`` is the table as data (columns, and per row its
    cells with value, interval and a note), the metrics are ``<column>@<defense>``.
    ``store`` keeps rows' models and results (default: in memory). The independent
    trainings are tasks on ``executor`` (default: ``ctx.executor``): first the rows that
    train and are not in ``store`` (one map), then every retrain on the poisoned sets whose
    poisoning cell ``store`` lacks (tasks ``matrix/<row>/retrain/<attack>``, one map); each
    row's experiments run here with that executor in their context (the membership
    shadows of DP and adversarially trained rows are its tasks too)."""
    opt = options or MatrixOptions()
    specs = parse_defenses(list(defenses))
    store = store or MemoryStore()
    card, ds = ctx.card, ctx.dataset
    eps = opt.radius((float(card.bounds[0]), float(card.bounds[1])))
    if opt.backdoor_target >= ds.num_classes:
        raise DlsecError(f"[defenses] backdoor-target: {opt.backdoor_target} is not a class of "
                         f"{ds.name} (0..{ds.num_classes - 1})")
    train = train_config_from_card(card, device=str(ctx.device))
    settings = BuildSettings(train=train, eps=eps, norm=opt.norm, progress=False)
    shared = _Shared(ctx, settings, opt, eps)
    base = {"v": STATE_VERSION, "weights": card.weights_sha256, "data": ds.digest,
            "seed": ctx.seed, "options": dataclasses.asdict(opt), "train": train.to_dict()}
    recipes = [(spec, spec.recipe(ctx, settings)) for spec in specs]  # bad parameters first
    steps = len(recipes) * (1 + len(opt.groups))
    keys = [digest({**base, "row": spec.family.name, "parameter": spec.parameter})
            for spec, _ in recipes]
    executor = executor or ctx.executor
    built = _build_rows(store, [(k, r) for k, (_, r) in zip(keys, recipes, strict=True)], ds,
                        settings.train.seed, executor)
    with _progress(ctx.progress, steps) as advance:
        rows: list[Row] = []
        for row_key, (spec, recipe) in zip(keys, recipes, strict=True):
            advance(f"{spec.text}: building")
            if recipe.train is None:
                model, vcard, seconds = ctx.model, card, 0.0
            else:
                def build(fn: Any = recipe.train, key: str = row_key
                          ) -> tuple[nn.Module, ModelCard, float]:
                    if key in built:
                        return built.pop(key)
                    return _build_row(fn, ds, settings.train.seed)

                model, vcard, seconds = store.model(row_key, build)
                model.to(ctx.device)
            model.eval()
            rows.append(Row(spec, recipe, model, vcard, seconds))
        cells = [{group: digest({"row": row_key, "group": group,
                                 "model": row.card.weights_sha256}) for group in opt.groups}
                 for row_key, row in zip(keys, rows, strict=True)]
        if "poisoning" in opt.groups:
            shared.retrain_all([row for row, keyed in zip(rows, cells, strict=True)
                                if row.recipe.retrain is not None
                                and not _stored(store, keyed["poisoning"])], executor)
        for row, keyed in zip(rows, cells, strict=True):
            threat = ThreatModel.from_card(row.card, norm=opt.norm, eps=(eps,))
            vctx = ScenarioContext(model=row.model, card=row.card, dataset=ds, threat=threat,
                                   seed=ctx.seed, device=ctx.device, progress=False,
                                   served=row.recipe.policy if row.recipe.kind == "serving"
                                   else None, executor=executor)
            for group in opt.groups:
                advance(f"{row.name}: {group}")
                measure = partial(_measure, group, vctx, row, opt, shared)
                row.cells.update(store.cell(keyed[group], measure))
            row.cells["train_seconds"] = cell(round(row.seconds, 3), None,
                                              "training the row's model (0: no training)")
    return _result(rows, opt, eps)


class _NotStored(Exception):
    """Raised by the probe build of :func:`_build_rows`: the store does not hold the row."""


def _not_stored() -> tuple[nn.Module, ModelCard, float]:
    raise _NotStored


def _not_computed() -> dict[str, Any]:
    raise _NotStored


def _stored(store: MatrixStore, key: str) -> bool:
    """Whether ``store`` holds cell ``key`` (its ``cell`` asked with a compute that refuses)."""
    try:
        store.cell(key, _not_computed)
    except _NotStored:
        return False
    return True


def _build_row(train: Any, dataset: Dataset, seed: int) -> tuple[nn.Module, ModelCard, float]:
    """One row's build (an executor's task, here or in a Ray worker): the model on the CPU,
    its card, the seconds it took."""
    t0 = time.perf_counter()
    model, card = train(dataset, seed)
    return model.cpu(), card, time.perf_counter() - t0


def _build_rows(store: MatrixStore, rows: list[tuple[str, Recipe]], dataset: Dataset, seed: int,
                executor: Executor) -> dict[str, tuple[nn.Module, ModelCard, float]]:
    """The rows that train and that ``store`` does not hold (its ``model`` asked with a
    build that refuses), built as tasks on ``executor``; by row key."""
    missing: dict[str, Any] = {}
    for key, recipe in rows:
        if recipe.train is None or key in missing:
            continue
        try:
            store.model(key, _not_stored)
        except _NotStored:
            missing[key] = recipe.train
    results = executor.map(_build_row, [(f"matrix/{key}", (train, dataset, seed))
                                        for key, train in missing.items()])
    return dict(zip(missing, results, strict=True))


def _measure(group: str, ctx: ScenarioContext, row: Row, opt: MatrixOptions,
             shared: _Shared) -> dict[str, Any]:
    try:
        return EXPERIMENTS[group](ctx, row, opt, shared)
    except RemoteTargetError as exc:  # a view the row's API does not give
        return {key: cell(None, note=f"not measurable: {exc}") for key in GROUPS[group]}


class _progress:
    """A rich progress bar over the matrix's steps (silent without ``show``)."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total

    def __enter__(self) -> Callable[[str], None]:
        if not self.show:
            return lambda text: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("defense matrix", total=self.total)

        def advance(text: str) -> None:
            self._bar.update(task, advance=1, description=f"matrix: {text}")

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.show:
            self._bar.__exit__(*exc)


def _result(rows: list[Row], opt: MatrixOptions, eps: float) -> ScenarioResult:
    measured = {k for g in opt.groups for k in GROUPS[g]} | {"train_seconds"}
    columns = [c for c in COLUMNS if c.key in measured]
    metrics: dict[str, float] = {}
    intervals: dict[str, Any] = {}
    data_rows: list[dict[str, Any]] = []
    for row in rows:
        cells = {c.key: row.cells[c.key]["value"] for c in columns}
        notes = {c.key: row.cells[c.key]["note"] for c in columns if row.cells[c.key]["note"]}
        for c in columns:
            entry = row.cells[c.key]
            if entry["value"] is not None:
                metrics[f"{c.key}@{row.name}"] = entry["value"]
                if entry["interval"] is not None:
                    intervals[f"{c.key}@{row.name}"] = entry["interval"]
        data_rows.append({"defense": row.name, "kind": row.recipe.kind,
                          "describe": row.recipe.describe, "cells": cells, "notes": notes})
    table = Table(
        "Defense x attack matrix", ["defense", *[c.label for c in columns]],
        [[r["defense"], *[r["cells"][c.key] for c in columns]] for r in data_rows],
        caption=f"One row per defended variant, the same attacks on each ({opt.norm} eps "
        f"{eps:g}, {opt.samples} attacked test points).")
    none = next((r for r in data_rows if r["defense"] == "none"), None)
    summary = f"{len(rows)} defended variants x {len(columns)} measurements"
    if none is not None:
        best = _best(data_rows, none, "whitebox_robust_accuracy", higher=True)
        if best:
            summary += f"; white-box robust accuracy best with {best}"
    return ScenarioResult(
        name="defenses", summary=summary, metrics=metrics, tables=[table],
        details={"matrix": {"columns": [c.to_dict() for c in columns], "rows": data_rows},
                 "intervals": intervals, "eps": eps, "norm": opt.norm,
                 "options": dataclasses.asdict(opt)},
        artifacts={"rows": rows})


def _best(rows: list[dict[str, Any]], none: dict[str, Any], key: str, *, higher: bool) -> str:
    have = [r for r in rows if r["cells"].get(key) is not None]
    if not have or none["cells"].get(key) is None:
        return ""
    top = max(have, key=lambda r: r["cells"][key] if higher else -r["cells"][key])
    return f"{top['defense']} ({top['cells'][key]:.1%}, none {none['cells'][key]:.1%})"


__all__ = ["EXPERIMENTS", "GROUPS", "MatrixOptions", "MatrixStore", "MemoryStore", "Row",
           "difference_interval", "run_matrix"]
