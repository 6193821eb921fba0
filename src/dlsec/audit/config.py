"""Audit settings: defaults, then an ``audit.toml``, then command-line flags.

Every CLI flag has a TOML key of the same (hyphenated) name. A section with options
reads them from a TOML table named after the section, e.g. ``[evasion]``; the table's
keys are the fields of the section's options dataclass. The ``[scorecard]`` table sets
the scorecard's severity thresholds (:class:`dlsec.audit.scorecard.ScorecardThresholds`).
Unknown keys and values of the wrong type are rejected with an error naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from dlsec.audit.scorecard import ScorecardThresholds
from dlsec.errors import DlsecError


class ConfigError(DlsecError):
    """A bad audit setting; the message names the key."""


GATE_BOUNDS = ("lower", "upper")


@dataclass
class Gate:
    """``--fail-under KEY=VALUE``: fail (exit 1) when metric KEY is below VALUE.

    ``KEY:lower=VALUE`` (``:upper=``) compares the lower (upper) bound of the metric's 95%
    interval instead (``bound``), e.g. ``evasion.robust_accuracy@0.1:lower=0.4``; a bound
    gate on a metric without an interval is a usage error.
    """

    key: str
    threshold: float
    bound: str = "value"

    @property
    def label(self) -> str:
        """The gate's key as written: ``KEY`` or ``KEY:lower``."""
        return self.key if self.bound == "value" else f"{self.key}:{self.bound}"

    @classmethod
    def parse(cls, text: str) -> Gate:
        key, sep, value = text.partition("=")
        key = key.strip()
        bound = "value"
        for name in GATE_BOUNDS:
            if key.endswith(f":{name}"):
                key, bound = key[: -len(name) - 1].strip(), name
        if not sep or not key:
            raise ConfigError(
                f"fail-under: expected KEY=VALUE or KEY:lower=VALUE (or :upper), got {text!r}"
            )
        try:
            threshold = float(value)
        except ValueError:
            raise ConfigError(f"fail-under: {key}: {value!r} is not a number") from None
        if not math.isfinite(threshold):
            raise ConfigError(f"fail-under: {key}: threshold must be finite")
        return cls(key, threshold, bound)


DEFAULT_DATASET = "digits"
MAX_CONFIG_BYTES = 1 << 20
"""An audit.toml larger than this (1 MiB) is refused before it is read."""


@dataclass
class AuditConfig:
    """One audit's settings. Field names with ``_`` are spelled with ``-`` in TOML and flags.

    ``dataset`` None means "not given": the audit trains on :data:`DEFAULT_DATASET`, and
    a ``model-dir`` whose card names another dataset is refused (one line naming both)
    instead of being audited on data it was not trained on. Naming a dataset explicitly
    audits the model on it (the report then warns that the two differ).
    ``defenses`` (``--defenses none,pgd-at,dp:3,...``) adds the defense x attack matrix (the
    ``defenses`` section) to the sections run, as a ``[defenses]`` table does (its
    ``names`` are the same list; the flag wins); the table also holds the matrix's settings.
    ``trust-code`` lets a model directory's card name a ``module:factory`` architecture,
    whose module is imported to build the model (otherwise refused: a model directory
    someone sends you must not run code).
    ``workers`` (``--workers N``): independent trainings (shadow models, the matrix's rows
    and their retrains, the poisoning section's victims, folds and retrains, the DP sweep)
    on a local Ray cluster of N CPUs when N > 1; ``ray-address`` (``--ray-address``) on an
    existing cluster instead (:mod:`dlsec.executor`). Results are the same as with 1.
    """

    dataset: str | None = None
    model: str = "simplenet"
    model_dir: str | None = None
    out: str | None = None
    fail_under: list[str] = field(default_factory=list)
    sections: list[str] | None = None
    seed: int = 0
    device: str = "auto"
    test_size: float = 0.2
    epochs: int | None = None  # None: scaled to the training set (runner.audit_epochs)
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: str = "adam"
    threads: int = 0
    workers: int = 1
    ray_address: str | None = None
    trust_code: bool = False
    defenses: list[str] | None = None
    scorecard: dict[str, Any] = field(default_factory=dict)
    section_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from dlsec.training import SEED_MAX, thread_limit  # the limits every command checks

        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs: must be >= 1, got {self.epochs}")
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed: must be in 0..{SEED_MAX}, got {self.seed}")
        if self.batch_size < 1:
            raise ConfigError(f"batch-size: must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr: must be a positive number, got {self.lr}")
        if not 0 <= self.threads <= thread_limit():
            raise ConfigError(
                f"threads: must be 0 (automatic) or 1..{thread_limit()} (4 per CPU), "
                f"got {self.threads}"
            )
        if self.workers < 1:
            raise ConfigError(f"workers: must be >= 1, got {self.workers}")
        if self.ray_address is not None and not self.ray_address.strip():
            raise ConfigError("ray-address: empty address (HOST:PORT of a running Ray cluster)")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer: must be adam or sgd, got {self.optimizer!r}")
        if not 0.0 < self.test_size < 1.0:
            raise ConfigError(f"test-size: must be in (0, 1), got {self.test_size}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device: must be auto, cpu or cuda, got {self.device!r}")
        for text in self.fail_under:
            Gate.parse(text)
        if self.sections is not None and not self.sections:
            raise ConfigError("sections: empty list; name one or more sections, or leave it unset for all")
        if self.dataset is not None and not self.dataset.strip():
            raise ConfigError("dataset: empty name")
        self.scorecard_thresholds  # noqa: B018 (validates the [scorecard] table)
        if self.defenses is not None and not self.defenses:
            raise ConfigError("defenses: empty list; name one or more defenses (none, pgd-at, "
                              "dp:3, policy:label, ...)")

    @property
    def dataset_spec(self) -> str:
        """The dataset to load: ``dataset``, or :data:`DEFAULT_DATASET` when not given."""
        return self.dataset or DEFAULT_DATASET

    @property
    def section_names(self) -> list[str] | None:
        """The sections to run: ``sections`` (None: the default ones), plus the matrix
        (``defenses``) when ``--defenses`` names defenses or audit.toml has a
        ``[defenses]`` table (its ``names``, else the section's default rows)."""
        if "defenses" not in self.section_options:
            return self.sections
        from dlsec.audit.sections import registry

        names = self.sections or [n for n, s in registry().items() if s.default]
        return names if "defenses" in names else [*names, "defenses"]

    @property
    def scorecard_thresholds(self) -> ScorecardThresholds:
        """The scorecard's severity thresholds: the defaults, changed by the ``[scorecard]``
        table (ConfigError naming a bad key)."""
        thresholds: ScorecardThresholds = validate_options(
            "scorecard", ScorecardThresholds, self.scorecard)
        return thresholds

    @property
    def gates(self) -> list[Gate]:
        return [Gate.parse(t) for t in self.fail_under]

    @property
    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        source = Path(self.model_dir).name if self.model_dir else self.model
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.dataset_spec}-{source}").strip("-")
        return Path("runs") / slug

    def to_dict(self) -> dict[str, Any]:
        return {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


def _key(name: str) -> str:
    return name.replace("_", "-")


NON_SECTION_TABLES = ("scorecard",)
"""TOML tables that configure the report, not a section (``[scorecard]``: the thresholds
of :class:`dlsec.audit.scorecard.ScorecardThresholds`)."""
TOP_LEVEL_KEYS = tuple(_key(f.name) for f in dataclasses.fields(AuditConfig) if f.name != "section_options")


def _type_ok(value: Any, annotation: Any) -> bool:
    """Check a TOML value against a dataclass annotation (str, int, float, bool, lists, None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        return isinstance(value, list | tuple) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def validate_options(section: str, options_type: type, values: dict[str, Any]) -> Any:
    """Build a section's options dataclass from a TOML table, naming any bad key."""
    fields = {_key(f.name): f for f in dataclasses.fields(options_type)}
    hints = typing.get_type_hints(options_type)
    kwargs = {}
    for key, value in values.items():
        f = fields.get(key) or fields.get(_key(key))
        if f is None:
            raise ConfigError(
                f"[{section}] {key}: unknown key (known: {', '.join(sorted(fields)) or 'none'})"
            )
        if not _type_ok(value, hints[f.name]):
            raise ConfigError(f"[{section}] {key}: expected {_type_name(hints[f.name])}, got {value!r}")
        default = getattr(options_type(), f.name)
        kwargs[f.name] = tuple(value) if isinstance(default, tuple) else value
    try:
        return options_type(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[{section}] {exc}") from exc


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> AuditConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (CLI flags, None = unset)."""
    values: dict[str, Any] = {}
    section_options: dict[str, dict[str, Any]] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: config file larger than {MAX_CONFIG_BYTES >> 20} MiB")
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
        except RecursionError:
            raise ConfigError(f"{path}: not valid TOML (arrays or tables nested too deeply)") from None
        values, section_options = _split_toml(data, source=str(path))
    for key, value in (overrides or {}).items():
        if value is None or (key == "fail-under" and not value):
            continue  # unset (an empty --sections is an error, not "all")
        if key == "fail-under":  # gates from the file and the command line add up
            value = [*values.get("fail-under", []), *value]
        values[key] = value
    hints = typing.get_type_hints(AuditConfig)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{key}: unknown setting (known: {', '.join(TOP_LEVEL_KEYS)})")
        if not _type_ok(value, hints[name]):
            raise ConfigError(f"{key}: expected {_type_name(hints[name])}, got {value!r}")
        kwargs[name] = float(value) if hints[name] is float else value
    if kwargs.get("defenses") is not None:  # --defenses (or a top-level key) names the rows
        section_options["defenses"] = {**section_options.get("defenses", {}),
                                       "names": kwargs["defenses"]}
    _check_sections(kwargs.get("sections"), section_options)
    return AuditConfig(**kwargs, section_options=section_options)


def _split_toml(data: dict[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    from dlsec.audit.sections import registry

    values, tables = {}, {}
    known = registry()
    for key, value in data.items():
        if isinstance(value, dict) and key in NON_SECTION_TABLES:
            values[key] = value
        elif isinstance(value, dict):
            if key not in known:
                raise ConfigError(
                    f"{source}: [{key}]: unknown section (known: {', '.join(sorted(known))})"
                )
            tables[key] = value
        else:
            if key not in TOP_LEVEL_KEYS:
                raise ConfigError(f"{source}: {key}: unknown setting (known: {', '.join(TOP_LEVEL_KEYS)})")
            values[key] = value
    return values, tables


def _check_sections(names: list[str] | None, tables: dict[str, dict[str, Any]]) -> None:
    from dlsec.audit.sections import registry

    known = registry()
    for name in names or []:
        if name not in known:
            raise ConfigError(f"sections: unknown section {name!r} (known: {', '.join(sorted(known))})")
    for name, table in tables.items():
        spec = known[name]
        if spec.options is None:
            if table:
                raise ConfigError(f"[{name}]: this section takes no options")
            continue
        validate_options(name, spec.options, table)
