"""Run an audit: get the model, run the sections (resuming from cache), write the report.

A served model (``remote``: ``dlsec audit --url``) is audited black-box: only the sections
that need no weights run (:data:`REMOTE_SECTIONS`), the others are listed as skipped with
the reason, and every query is charged by the server.

Resume: the trained model and every finished section are cached in the run directory
under a key made of everything their result depends on (settings, the data's digest, the
model's weights); see :mod:`dlsec.audit.cache`. Rerunning an interrupted audit with the
same settings and data recomputes nothing that finished and yields the same report. A
damaged cache file is recomputed (and the run says so). All files are written
atomically; a run starts by removing the previous report, and writes the new one only at
the end, so a failed run leaves no report a gate could read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from dlsec import __version__
from dlsec.audit.cache import (
    CacheDamaged,
    check_model_dir,
    digest,
    install_model,
    load_cached_model,
    read_history,
    read_section,
    remove_stale_temporaries,
    section_entry,
    write_json,
)
from dlsec.audit.config import AuditConfig, ConfigError, Gate
from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, replace_non_finite
from dlsec.audit.scorecard import build_scorecard
from dlsec.audit.sections import SectionSpec, selected
from dlsec.data import Dataset, load_dataset
from dlsec.errors import DlsecError
from dlsec.executor import make_executor
from dlsec.files import atomic_write_text, check_output
from dlsec.models import ModelCard, ModelError, load, read_card
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios.context import OracleFactory
from dlsec.training import (
    AUTO_TRAINING_SAMPLES,
    TrainConfig,
    configure_threads,
    resolve_device,
    scaled_epochs,
    train_model,
)

REPORT_SCHEMA_VERSION = 3
"""2: ``metrics`` values may be ``null`` (a non-finite number, explained in
``non_finite``); top-level ``warnings``. 3: ``intervals`` (``{"<section>.<key>": {"lower",
"upper", "n", "method", ...}}``, also per section) and gates on a bound (``"bound"``);
later, additively: ``scorecard`` (one row per threat; not read by gates).
Reports of versions 1 and 2 (no intervals) are still read by :func:`check_report`."""


@dataclass
class AuditOutcome:
    """The report dict, where it was written, and the exit code (0 pass, 1 a gate failed)."""

    report: dict[str, Any]
    run_dir: Path
    json_path: Path
    html_path: Path

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


@dataclass
class _Obtained:
    model: torch.nn.Module
    card: ModelCard
    history: list[dict[str, Any]] | None
    warnings: list[str] = field(default_factory=list)


def audit_epochs(config: AuditConfig, n_train: int) -> int:
    """``epochs``, or when unset :func:`scaled_epochs` of the training set. The model card
    records the rule (``training.epochs_rule``)."""
    if config.epochs is not None:
        return config.epochs
    return scaled_epochs(n_train)


def train_config(config: AuditConfig, dataset: Dataset) -> TrainConfig:
    return TrainConfig(
        epochs=audit_epochs(config, len(dataset.y_train)), batch_size=config.batch_size,
        lr=config.lr, optimizer=config.optimizer,  # type: ignore[arg-type]
        seed=config.seed, device=config.device,
    )


def train_key(config: AuditConfig, dataset: Dataset) -> str:
    """What the trained model depends on: the data (by content), the architecture, training."""
    return digest(
        {"v": __version__, "dataset": config.dataset_spec, "data": dataset.digest,
         "test_size": config.test_size, "model": config.model,
         "train": train_config(config, dataset).to_dict()}
    )


def obtain_model(
    config: AuditConfig,
    dataset: Dataset,
    *,
    device: torch.device,
    progress: bool,
    console: Console,
    notices: Console | None = None,
) -> _Obtained:
    """Load ``model-dir``, or train ``model`` on the dataset (cached in ``<run>/model``).

    A model directory's card may name a ``module:factory`` architecture only with the
    user's consent (``trust-code``, or ``model`` naming the same factory): nothing is
    imported before :func:`dlsec.models.load` has decided.
    """
    notices = notices or console
    if config.model_dir:
        source = config.model_dir
        warnings = _check_compatible(config, read_card(source), dataset, source=source)
        model, card = load(
            source, device=device, trust_code=config.trust_code, factory=config.model
        )
        return _Obtained(model, card, read_history(Path(source) / "history.json"), warnings)
    key = train_key(config, dataset)
    run_dir = config.run_dir
    model_dir = check_model_dir(run_dir)
    remove_stale_temporaries(run_dir)
    try:
        cached = load_cached_model(
            model_dir, key,
            lambda d: load(d, device=device, trust_code=config.trust_code, factory=config.model),
        )
    except CacheDamaged as exc:
        notices.print(
            f"model: the cached model in {escape(str(model_dir))} is damaged "
            f"({escape(str(exc))}); retraining"
        )
        cached = None
    if cached is not None:
        console.print(
            f"[dim]model: reusing trained {cached.card.architecture} from {model_dir}[/dim]"
        )
        return _Obtained(cached.model, cached.card, cached.history)
    tconf = train_config(config, dataset)
    tconf.device = str(device)
    model, card, result = train_model(
        dataset, config.model, tconf, progress=progress, description=f"training {config.model}"
    )
    card.training["device"] = config.device
    if config.epochs is None:
        card.training["epochs_rule"] = (
            f"chosen by the audit: about {AUTO_TRAINING_SAMPLES:,} training samples "
            f"({len(dataset.y_train):,} per epoch, 1 to 30 epochs); set epochs to choose"
        )
    install_model(run_dir, model, card, result.history, key)
    console.print(
        f"model: trained {card.architecture} for {tconf.epochs} epoch"
        f"{'' if tconf.epochs == 1 else 's'}"
        f"{'' if config.epochs is not None else ' (scaled to the training set)'} in "
        f"{result.seconds:.1f} s, "
        f"test accuracy {card.metrics['test_accuracy']:.4f}"
    )
    return _Obtained(model, card, result.history)


def _check_compatible(
    config: AuditConfig, card: ModelCard, dataset: Dataset, *, source: str
) -> list[str]:
    """Refuse a model directory the dataset does not fit, in one line naming both.

    A card whose dataset differs from the audit's is refused when the dataset was not
    named (the default would silently audit the model on data it never saw); named
    explicitly, it is audited, with a warning. Returns the warnings.
    """
    origin = f" from {card.dataset!r}" if card.dataset else ""
    if tuple(card.input_shape) != tuple(dataset.input_shape):
        raise ModelError(
            f"model dir {source} takes inputs of shape {tuple(card.input_shape)}{origin}, "
            f"dataset {dataset.name} has {tuple(dataset.input_shape)}"
        )
    if card.num_classes != dataset.num_classes:
        raise ModelError(
            f"model dir {source} has {card.num_classes} classes{origin}, dataset "
            f"{dataset.name} has {dataset.num_classes}"
        )
    if not card.dataset or card.dataset == dataset.name:
        return []
    if config.dataset is None:
        raise ModelError(
            f"model dir {source} was trained on {card.dataset!r}, but no dataset was named "
            f"and the default is {dataset.name!r}: pass --dataset {card.dataset} to audit it "
            f"on its own data, or --dataset {dataset.name} to audit it on that one"
        )
    warning = f"the model was trained on {card.dataset!r} and is audited on {dataset.name!r}"
    if list(card.classes) != list(dataset.classes):
        warning += " (their class names differ)"
    return [warning]


def _set_threads(
    config: AuditConfig, dataset: Dataset, device: torch.device, model: torch.nn.Module | None = None
) -> None:
    """CPU threads for this audit: :func:`dlsec.training.configure_threads` (the rule every
    command follows). An architecture the user named (``--model``) is built here to count
    its parameters; a model directory's model is counted once loaded (``model``), never
    built from its card just to count."""
    net = model
    if net is None and config.threads == 0 and not config.model_dir and device.type == "cpu":
        from dlsec.models import build_network

        try:
            net = build_network(
                config.model, input_shape=dataset.input_shape, num_classes=dataset.num_classes
            )
        except DlsecError:
            net = None  # the real build reports the problem
    configure_threads(config.threads, model=net, device=device)


def section_key(spec: SectionSpec, config: AuditConfig, card: ModelCard, dataset: Dataset) -> str:
    return digest(
        {"section": spec.name, "version": spec.version, "dlsec": __version__,
         "options": config.section_options.get(spec.name, {}), "dataset": config.dataset_spec,
         "data": dataset.digest, "test_size": config.test_size, "seed": config.seed,
         "weights": card.weights_sha256, "card": card.to_dict()}
    )


def _prepare_outputs(run_dir: Path) -> tuple[Path, Path]:
    """Check the outputs before any work and remove the previous report: a run that
    fails must not leave an earlier run's verdict for a gate to read."""
    check_output(run_dir, kind="dir", option="--out")
    json_path, html_path = run_dir / "report.json", run_dir / "report.html"
    for path in (json_path, html_path):
        check_output(path, kind="file", option="--out")
    for path in (json_path, html_path):
        path.unlink(missing_ok=True)
    return json_path, html_path


def _plain_result(result: SectionResult, spec: SectionSpec) -> dict[str, Any]:
    """The result as plain JSON data, as a resumed run reads it back (tuples become
    lists, ...), with each non-finite number replaced by null and a warning per metric."""
    result.name, result.title = spec.name, spec.title
    try:
        plain = json.loads(json.dumps(result.to_dict()))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"section {spec.name!r} returned a value JSON cannot hold: {exc}") from exc
    plain, found = replace_non_finite(plain)
    if found:
        plain["non_finite"] = {**plain.get("non_finite", {}), **found}
        for path, why in found.items():
            if path.startswith("metrics."):
                plain["warnings"].append(
                    f"metric {path[len('metrics.'):]} is {why}, not a finite number: report.json "
                    "holds null for it and a gate on it fails"
                )
        others = [p for p in found if not p.startswith("metrics.")]
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            plain["warnings"].append(
                f"{len(others)} table or detail value(s) are not finite numbers, written as "
                f"null: {shown}"
            )
    return plain


def run_audit(
    config: AuditConfig, *, progress: bool = True, console: Console | None = None,
    remote: OracleFactory | None = None, url: str = "",
) -> AuditOutcome:
    """Run every selected section and write ``report.json`` and ``report.html``.

    Progress goes to ``console`` (stderr, silent without ``progress``); warnings and
    notices of damaged cache files are printed even without progress. ``remote`` (an
    oracle factory of the model served at ``url``) audits that model black-box
    (:data:`REMOTE_SECTIONS`); every other selected section is listed as skipped, with
    its reason, in the report and the summary.
    """
    from dlsec.audit.config import validate_options
    from dlsec.audit.report import render_html

    notices = console or Console(stderr=True, highlight=False, soft_wrap=True)
    console = console or Console(stderr=True, quiet=not progress)
    run_dir = config.run_dir
    executor = make_executor(config.workers, config.ray_address)  # no Ray, a bad address: now
    json_path, html_path = _prepare_outputs(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset_spec, seed=config.seed, test_size=config.test_size)
    if remote is not None:
        sctx = ScenarioContext.for_remote(remote, dataset, architecture=REMOTE_ARCHITECTURE,
                                          seed=config.seed, progress=progress)
        got = _Obtained(sctx.model, sctx.card, None)
        configure_threads(config.threads, model=None, device=device)
    else:
        _set_threads(config, dataset, device)
        got = obtain_model(
            config, dataset, device=device, progress=progress, console=console, notices=notices
        )
    model, card = got.model, got.card
    if config.model_dir:
        _set_threads(config, dataset, device, model)
    model.eval()
    ctx = AuditContext(
        config=config, dataset=dataset, model=model, card=card, device=device,
        run_dir=run_dir, history=got.history, progress=progress, remote=remote,
    )
    with executor:  # stops a Ray cluster it started, also on an error
        ctx.executor = executor
        cache_dir = run_dir / "sections"
        skipped: list[dict[str, str]] = []
        for spec in selected(config.section_names):
            if remote is not None and spec.name not in REMOTE_SECTIONS:
                reason = remote_skip_reason(spec)
                skipped.append({"section": spec.name, "title": spec.title, "reason": reason})
                ctx.results[spec.name] = SectionResult(
                    name=spec.name, title=spec.title, summary=f"skipped: {reason}",
                    details={"skipped": reason})
                console.print(f"[dim]{spec.title}: skipped ({escape(reason)})[/dim]")
                continue
            key = section_key(spec, config, card, dataset)
            if remote is not None:  # the served model, not a card's weights, is what was audited
                key = digest({"section": key, "url": url})
            cache_path = cache_dir / f"{spec.name}.json"
            try:
                cached = read_section(cache_path, key, spec.name)
            except CacheDamaged as exc:
                notices.print(
                    f"{spec.title}: the cached result {escape(str(cache_path))} is damaged "
                    f"({escape(str(exc))}); recomputing"
                )
                cached = None
            if cached is not None:
                ctx.results[spec.name] = cached
                console.print(f"[dim]{spec.title}: cached[/dim]")
                continue
            options = None
            if spec.options is not None:
                table = config.section_options.get(spec.name, {})
                options = validate_options(spec.name, spec.options, table)
            t0 = time.perf_counter()
            plain = _plain_result(spec.fn(ctx, options), spec)
            ctx.results[spec.name] = SectionResult.from_dict(plain)
            write_json(cache_path, section_entry(key, plain))
            console.print(f"{spec.title}: done in {time.perf_counter() - t0:.1f} s")
    report = build_report(config, dataset, card, list(ctx.results.values()), warnings=got.warnings)
    if remote is not None:
        report |= {"title": f"dlsec audit: {url} on {dataset.name}", "skipped": skipped,
                   "model": {"url": url, "input_shape": list(card.input_shape),
                             "classes": list(card.classes), "bounds": list(card.bounds),
                             "remote": True}}
    for warning in report["warnings"]:
        notices.print(f"warning: {escape(warning)}")
    atomic_write_text(html_path, render_html(report))
    write_json(json_path, report)  # last: its presence means the run finished
    return AuditOutcome(report, run_dir, json_path, html_path)


# what an audit of a served model (``--url``) runs: no weights, no training data, no card
REMOTE_SECTIONS = ("dataset", "blackbox")
REMOTE_ARCHITECTURE = "simplenet"  # the attacker's guess, for transfer surrogates
_REMOTE_SKIPS = {
    "model": "needs the model's card and weights; the server reports only its input contract",
    "training": "needs the model's training history",
    "accuracy": "needs the model's logits (test loss); the black-box section measures the "
                "served model's clean accuracy on its points",
    "evasion": "needs the model's weights: white-box evasion",
    "poisoning": "retrains the model: needs its architecture, training data and recipe",
    "privacy": "needs the model's weights and training record (which records it trained on)",
    "dp": "retrains the model with DP-SGD: needs its architecture and training data",
    "federated": "trains federated models: needs the architecture and training data",
}


def remote_skip_reason(spec: SectionSpec) -> str:
    """Why a section is skipped when the model is only reachable through its API."""
    return _REMOTE_SKIPS.get(spec.name, f"needs the model's weights: {spec.title.lower()}")


def build_report(
    config: AuditConfig,
    dataset: Dataset,
    card: ModelCard,
    results: list[SectionResult],
    *,
    warnings: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """The versioned, machine-readable report (what report.json holds).

    ``metrics`` is a flat map of ``"<section>.<key>"`` to a number, or to ``null`` when
    the value was not finite; ``non_finite`` says which (``"NaN"``, ``"Infinity"``,
    ``"-Infinity"``). A gate on a null metric fails. The report holds no NaN or infinity.
    ``scorecard`` rates each threat (:func:`dlsec.audit.scorecard.build_scorecard`, under
    the config's ``[scorecard]`` thresholds); a bound gate on an unresolved interval adds
    a warning naming it.
    """
    metrics = {f"{r.name}.{k}": v for r in results for k, v in r.metrics.items()}
    non_finite = {
        f"{r.name}.{path[len('metrics.'):]}": why
        for r in results
        for path, why in r.non_finite.items()
        if path.startswith("metrics.")
    }
    warnings = list(warnings)
    if non_finite:
        listed = ", ".join(f"{k} ({v})" for k, v in non_finite.items())
        warnings.append(
            f"{len(non_finite)} metric(s) are not finite numbers and are written as null: {listed}"
        )
    intervals = {f"{r.name}.{k}": v for r in results for k, v in r.intervals.items()}
    gates = evaluate_gates(config.gates, metrics, intervals, non_finite)
    warnings += unresolved_gate_warnings(config.gates, intervals)
    source = Path(config.model_dir).name if config.model_dir else card.architecture
    report = {
        "schema": "dlsec.report",
        "schema_version": REPORT_SCHEMA_VERSION,
        "dlsec_version": __version__,
        "title": f"dlsec audit: {source} on {dataset.name}",
        "config": {k: v for k, v in config.to_dict().items() if k != "out"}
        | {"dataset": config.dataset_spec},
        "dataset": dataset.summary(),
        "model": card.to_dict(),
        "sections": [r.to_dict() for r in results],
        "metrics": metrics,
        "non_finite": non_finite,
        "intervals": intervals,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
        "warnings": warnings,
    }
    report["scorecard"] = build_scorecard(report, config.scorecard_thresholds)
    report, found = replace_non_finite(report)  # the card, the dataset summary, the config
    if found:
        shown = ", ".join(f"{k} ({v})" for k, v in list(found.items())[:5])
        report["warnings"].append(f"non-finite numbers written as null: {shown}")
    return report


def unresolved_gate_warnings(gates: list[Gate], intervals: dict[str, Any]) -> list[str]:
    """One warning per bound gate (``KEY:lower=``, ``KEY:upper=``) whose interval is flagged
    ``unresolved`` (a TPR at an FPR too small for the non-members measured: see
    :func:`dlsec.intervals.fpr_resolved`): the bound it compares rests on too few points."""
    return [
        f"gate {gate.label} uses the interval of {gate.key}, which is unresolved (too few "
        "non-members for its false-positive rate): its bound rests on a handful of points"
        for gate in gates
        if gate.bound != "value" and (intervals.get(gate.key) or {}).get("unresolved")
    ]


def evaluate_gates(
    gates: list[Gate], metrics: dict[str, Any], intervals: dict[str, Any],
    non_finite: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Each gate's entry: ``key``, ``bound``, ``threshold``, ``value`` (the metric or its
    interval's bound) and ``passed`` (``value >= threshold``; a null value fails, with a
    ``reason``).

    Raises:
        ConfigError: a gate names no metric, or a bound of a metric without an interval.
    """
    entries = []
    for gate in gates:
        if gate.key not in metrics:
            raise ConfigError(
                f"fail-under: {gate.key}: no such metric (available: {', '.join(sorted(metrics))})"
            )
        value = metrics[gate.key]
        if gate.bound != "value":
            record = intervals.get(gate.key)
            if record is None:
                having = ", ".join(sorted(intervals)) or "none"
                raise ConfigError(
                    f"fail-under: {gate.label}: {gate.key} has no interval to take a bound of "
                    f"(metrics with intervals: {having})"
                )
            value = record[gate.bound]
        entry: dict[str, Any] = {"key": gate.key, "threshold": gate.threshold, "value": value}
        if gate.bound != "value":
            entry["bound"] = gate.bound  # absent: the metric itself (as in schema 2)
        if value is None:
            why = (non_finite or {}).get(gate.key, "missing")
            entry |= {"passed": False, "reason": f"{gate.key} is {why}, not a number"}
        else:
            entry["passed"] = value >= gate.threshold
        entries.append(entry)
    return entries


def check_report(report: dict[str, Any], gates: list[Gate]) -> list[dict[str, Any]]:
    """:func:`evaluate_gates` on a report read back from ``report.json``, of any schema
    version up to :data:`REPORT_SCHEMA_VERSION` (1 and 2 have no intervals: a bound gate
    on them is the usual error naming none).

    Raises:
        ConfigError: not a dlsec report, a newer schema, or a gate it cannot answer.
    """
    version = report.get("schema_version") if isinstance(report, dict) else None
    if not isinstance(report, dict) or report.get("schema") != "dlsec.report":
        raise ConfigError("not a dlsec report (no \"schema\": \"dlsec.report\")")
    if not isinstance(version, int) or not 1 <= version <= REPORT_SCHEMA_VERSION:
        raise ConfigError(
            f"report schema version {version!r} is not one this dlsec reads "
            f"(1..{REPORT_SCHEMA_VERSION})"
        )
    metrics = report.get("metrics") or {}
    intervals = report.get("intervals") or {} if version >= 3 else {}
    return evaluate_gates(gates, metrics, intervals, report.get("non_finite") or {})
