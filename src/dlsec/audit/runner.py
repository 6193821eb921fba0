"""Run an audit: get the model, run the sections (resuming from cache), write the report.

Resume: the trained model and every finished section are cached in the run directory
under a key made of everything their result depends on. Rerunning an interrupted audit
with the same settings recomputes nothing that finished and yields the same report.
All files are written atomically, so a kill at any moment leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dlsec import __version__
from dlsec.audit.config import AuditConfig, ConfigError
from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult
from dlsec.audit.sections import SectionSpec, selected
from dlsec.data import Dataset, load_dataset
from dlsec.errors import DlsecError
from dlsec.files import atomic_write_text
from dlsec.models import ModelCard, ModelError, load, save
from dlsec.training import TrainConfig, configure_threads, resolve_device, train_model

REPORT_SCHEMA_VERSION = 1


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


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def train_config(config: AuditConfig) -> TrainConfig:
    return TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,  # type: ignore[arg-type]
        seed=config.seed,
        device=config.device,
    )


def obtain_model(
    config: AuditConfig,
    dataset: Dataset,
    *,
    device: torch.device,
    progress: bool,
    console: Console,
) -> tuple[torch.nn.Module, ModelCard, list[dict[str, float]] | None]:
    """Load ``model-dir``, or train ``model`` on the dataset (cached in ``<run>/model``)."""
    if config.model_dir:
        model, card = load(config.model_dir, device=device)
        history = _read_json(Path(config.model_dir) / "history.json")
        _check_compatible(card, dataset, source=config.model_dir)
        return model, card, history
    tconf = train_config(config)
    key = _digest(
        {"v": __version__, "dataset": config.dataset, "test_size": config.test_size,
         "model": config.model, "train": tconf.to_dict()}
    )  # fmt: skip
    model_dir = config.run_dir / "model"
    meta = _read_json(model_dir / "train-key.json")
    if meta and meta.get("key") == key:
        try:
            model, card = load(model_dir, device=device)
            console.print(f"[dim]model: reusing trained {card.architecture} from {model_dir}[/dim]")
            return model, card, _read_json(model_dir / "history.json")
        except ModelError:
            pass  # a damaged cache is retrained below
    tconf.device = str(device)
    model, card, result = train_model(
        dataset, config.model, tconf, progress=progress, description=f"training {config.model}"
    )
    card.training["device"] = config.device
    save(model, card, model_dir)
    _write_json(model_dir / "history.json", result.history)
    _write_json(model_dir / "train-key.json", {"key": key})
    console.print(
        f"model: trained {card.architecture} in {result.seconds:.1f} s, "
        f"test accuracy {card.metrics['test_accuracy']:.4f}"
    )
    return model, card, result.history


def _check_compatible(card: ModelCard, dataset: Dataset, *, source: str) -> None:
    if tuple(card.input_shape) != tuple(dataset.input_shape):
        raise ModelError(
            f"{source}: model input {tuple(card.input_shape)} does not match dataset "
            f"{dataset.name} input {tuple(dataset.input_shape)}"
        )
    if card.num_classes != dataset.num_classes:
        raise ModelError(
            f"{source}: model has {card.num_classes} classes, dataset {dataset.name} has "
            f"{dataset.num_classes}"
        )


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


def section_key(spec: SectionSpec, config: AuditConfig, card: ModelCard) -> str:
    return _digest(
        {
            "section": spec.name,
            "version": spec.version,
            "dlsec": __version__,
            "options": config.section_options.get(spec.name, {}),
            "dataset": config.dataset,
            "test_size": config.test_size,
            "seed": config.seed,
            "weights": card.weights_sha256,
            "card": card.to_dict(),
        }
    )


def run_audit(
    config: AuditConfig, *, progress: bool = True, console: Console | None = None
) -> AuditOutcome:
    """Run every selected section and write ``report.json`` and ``report.html``."""
    from dlsec.audit.config import validate_options
    from dlsec.audit.report import render_html

    console = console or Console(stderr=True, quiet=not progress)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, seed=config.seed, test_size=config.test_size)
    _set_threads(config, dataset, device)
    model, card, history = obtain_model(config, dataset, device=device, progress=progress, console=console)
    if config.model_dir:
        _set_threads(config, dataset, device, model)
    model.eval()
    ctx = AuditContext(
        config=config, dataset=dataset, model=model, card=card, device=device,
        run_dir=run_dir, history=history, progress=progress,
    )  # fmt: skip
    cache_dir = run_dir / "sections"
    for spec in selected(config.sections):
        key = section_key(spec, config, card)
        cache_path = cache_dir / f"{spec.name}.json"
        cached = _read_json(cache_path)
        if cached and cached.get("key") == key:
            ctx.results[spec.name] = SectionResult.from_dict(cached["result"])
            console.print(f"[dim]{spec.title}: cached[/dim]")
            continue
        options = None
        if spec.options is not None:
            options = validate_options(spec.name, spec.options, config.section_options.get(spec.name, {}))
        t0 = time.perf_counter()
        result = spec.fn(ctx, options)
        result.name, result.title = spec.name, spec.title
        # what is cached is what a resumed run reads back: normalize through JSON now, so a
        # fresh run and a resumed one produce the same report (tuples become lists, etc.)
        try:
            plain = json.loads(json.dumps(result.to_dict()))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"section {spec.name!r} returned a value JSON cannot hold: {exc}") from exc
        result = SectionResult.from_dict(plain)
        ctx.results[spec.name] = result
        _write_json(cache_path, {"key": key, "result": plain})
        console.print(f"{spec.title}: done in {time.perf_counter() - t0:.1f} s")
    report = build_report(config, dataset, card, list(ctx.results.values()))
    json_path, html_path = run_dir / "report.json", run_dir / "report.html"
    _write_json(json_path, report)
    atomic_write_text(html_path, render_html(report))
    return AuditOutcome(report, run_dir, json_path, html_path)


def build_report(
    config: AuditConfig, dataset: Dataset, card: ModelCard, results: list[SectionResult]
) -> dict[str, Any]:
    """The versioned, machine-readable report (what report.json holds)."""
    metrics = {f"{r.name}.{k}": v for r in results for k, v in r.metrics.items()}
    gates = []
    for gate in config.gates:
        if gate.key not in metrics:
            raise ConfigError(
                f"fail-under: {gate.key}: no such metric (available: {', '.join(sorted(metrics))})"
            )
        value = metrics[gate.key]
        gates.append(
            {"key": gate.key, "threshold": gate.threshold, "value": value, "passed": value >= gate.threshold}
        )
    source = Path(config.model_dir).name if config.model_dir else card.architecture
    return {
        "schema": "dlsec.report",
        "schema_version": REPORT_SCHEMA_VERSION,
        "dlsec_version": __version__,
        "title": f"dlsec audit: {source} on {dataset.name}",
        "config": {k: v for k, v in config.to_dict().items() if k != "out"},
        "dataset": dataset.summary(),
        "model": card.to_dict(),
        "sections": [r.to_dict() for r in results],
        "metrics": metrics,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
    }
