"""ModelCard: everything an attack or a report needs to know about a model besides weights.

A card read from a file is checked field by field before anything uses it: a wrong type
or value is a :class:`ModelError` of one line naming the file and the field. Reading a
card never imports anything; its ``architecture`` is only a string until
:func:`dlsec.models.build_model` is asked to build it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dlsec import __version__
from dlsec.models.registry import ModelError, check_input_shape

CARD_SCHEMA_VERSION = 1
MAX_CARD_BYTES = 1 << 20
MAX_CLASSES = 100_000
MAX_SEED = 2**32 - 1  # what torch, numpy and scikit-learn all accept (dlsec.training.SEED_MAX)

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

# Types of the training-recipe keys dlsec reads back (see dlsec.training.TrainConfig).
_TRAINING_TYPES: dict[str, tuple[type, ...]] = {
    "epochs": (int,), "batch_size": (int,), "step_every": (int,), "seed": (int,),
    "patience": (int, type(None)), "best_epoch": (int, type(None)),
    "lr": (int, float), "momentum": (int, float), "weight_decay": (int, float),
    "step_gamma": (int, float), "val_fraction": (int, float),
    "optimizer": (str,), "schedule": (str,), "device": (str,), "restore_best": (bool,),
    "amp": (str,),
}


@runtime_checkable
class CardLike(Protocol):
    """What attacks read from a model card: the input contract (a :class:`ModelCard` is one)."""

    @property
    def bounds(self) -> tuple[float, float]: ...

    @property
    def input_shape(self) -> list[int]: ...

    @property
    def classes(self) -> list[str]: ...

    @property
    def num_classes(self) -> int: ...


@dataclass(frozen=True)
class TrainingRecord:
    """The typed view of a card's ``training`` record: what attacks and scenarios read from it.

    ``settings`` holds every recorded training setting (the keys of
    :class:`dlsec.training.TrainConfig` among them); the named fields are the ones whose
    meaning other code depends on, with their defaults when the card does not say.
    """

    seed: int = 0
    val_fraction: float = 0.0
    epochs_rule: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, training: dict[str, Any] | None) -> TrainingRecord:
        t = dict(training or {})
        return cls(
            seed=int(t.get("seed", 0) or 0),
            val_fraction=float(t.get("val_fraction", 0.0) or 0.0),
            epochs_rule=str(t["epochs_rule"]) if t.get("epochs_rule") else None,
            settings=t,
        )


@dataclass
class ModelCard:
    """Architecture, input contract, provenance and metrics of a saved model.

    ``bounds`` is the valid input range (attacks clip to it; nothing assumes [0, 1]).
    ``normalization`` is ``{"mean": [...], "std": [...]}`` applied inside the model,
    or ``None``.
    """

    architecture: str
    input_shape: list[int]
    classes: list[str]
    bounds: tuple[float, float] = (0.0, 1.0)
    normalization: dict[str, list[float]] | None = None
    dataset: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    weights_file: str = "model.safetensors"
    weights_sha256: str = ""
    dlsec_version: str = __version__
    schema_version: int = CARD_SCHEMA_VERSION
    # Not saved: where the card was read from, and the ``module:factory`` architecture
    # this card object may import because the caller consented (never read from a file;
    # lost on ``dataclasses.replace``).
    _source: str | None = field(default=None, init=False, repr=False, compare=False)
    _allowed_code: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def training_record(self) -> TrainingRecord:
        """The training record, typed (see :class:`TrainingRecord`)."""
        return TrainingRecord.from_dict(self.training)

    def with_architecture(self, architecture: str) -> ModelCard:
        """A copy of this card for an ``architecture`` the caller names (its own choice, so
        a ``module:factory`` one may be built without further consent)."""
        card = dataclasses.replace(self, architecture=architecture)
        card._source = self._source
        card._allowed_code = architecture
        return card

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("_")}
        d["bounds"] = list(self.bounds)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "card") -> ModelCard:
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelError(f"{source}: unknown model card key(s): {', '.join(map(str, unknown))}")
        for key in ("architecture", "input_shape", "classes", "weights_sha256"):
            if key not in d:
                raise ModelError(f"{source}: model card lacks {key!r}")
        checked = _checked_fields(d, source)
        card = cls(**checked)
        card._source = source
        return card

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "card") -> ModelCard:
        if isinstance(text, bytes):
            if len(text) > MAX_CARD_BYTES:
                raise ModelError(f"{source}: {len(text):,} bytes, more than a model card may hold")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ModelError(
                    f"{source}: not UTF-8 text (byte {exc.start}); a model card is JSON"
                ) from exc
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        except RecursionError as exc:
            raise ModelError(f"{source}: not a model card (JSON nested too deeply)") from exc
        if not isinstance(d, dict):
            raise ModelError(f"{source}: a model card must be a JSON object")
        return cls.from_dict(d, source=source)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite_numbers(v: Any) -> bool:
    return isinstance(v, list) and all(_number(x) and math.isfinite(x) for x in v)


# The DP-SGD record (``training["dp"]``, written by :func:`dlsec.defenses.dp.dp_train`):
# each key dlsec reads back, and the values it may take. Other keys pass unchecked.
_DP_NUMBERS: dict[str, tuple[float, float, bool, bool]] = {
    # key: (low, high, low open, high open); epsilons may be infinite (no noise)
    "epsilon_prv": (0.0, math.inf, False, False), "epsilon_rdp": (0.0, math.inf, False, False),
    "delta": (0.0, 1.0, True, True), "noise_multiplier": (0.0, math.inf, False, True),
    "max_grad_norm": (0.0, math.inf, True, True), "sample_rate": (0.0, 1.0, True, False),
}


def _check_dp_record(dp: Any, bad: Callable[[str, str], ModelError]) -> None:
    """One-line :class:`ModelError` (through ``bad``) for a damaged DP record: a number out
    of its range, a count that is not an integer, ``fixed_layers`` (the layers Opacus's
    ``ModuleValidator.fix`` replaced, which loading replaces again) not a list of names."""
    if not isinstance(dp, dict):
        raise bad("training", "key 'dp' must be an object (the DP-SGD record)")
    for key, (low, high, low_open, high_open) in _DP_NUMBERS.items():
        if key not in dp:
            continue
        v = dp[key]
        ok = _number(v) and not math.isnan(v) and (v > low if low_open else v >= low) and (
            v < high if high_open else v <= high)
        if not ok:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            raise bad("training", f"key 'dp.{key}' must be a number in {lo}{low:g}, {high:g}{hi}, "
                      f"got {json.dumps(v)[:40]}")
    if dp.get("target_epsilon") is not None and not (
            _number(dp["target_epsilon"]) and math.isfinite(dp["target_epsilon"])
            and dp["target_epsilon"] > 0):
        raise bad("training", "key 'dp.target_epsilon' must be null or a number > 0")
    for key, low in (("steps", 0), ("training_records", 1)):
        v = dp.get(key, low)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise bad("training", f"key 'dp.{key}' must be an integer >= {low}, "
                      f"got {json.dumps(v)[:40]}")
    for key in ("accountant", "grad_sample_mode"):
        if key in dp and not isinstance(dp[key], str):
            raise bad("training", f"key 'dp.{key}' must be a string")
    fixed = dp.get("fixed_layers", [])
    if not isinstance(fixed, list) or not all(isinstance(x, str) and x for x in fixed):
        raise bad("training", "key 'dp.fixed_layers' must be a list of layer names (the "
                  "layers Opacus's ModuleValidator.fix replaced)")


def _checked_fields(d: dict[str, Any], source: str) -> dict[str, Any]:
    """``d`` with each field's type and value checked (one-line ModelError naming it)."""

    def bad(key: str, why: str) -> ModelError:
        return ModelError(f"{source}: field {key!r} {why}")

    out = dict(d)
    arch = d["architecture"]
    if not isinstance(arch, str) or not arch.strip() or len(arch) > 500:
        raise bad("architecture", "must be a non-empty string (a built-in name or module:factory)")
    shape = check_input_shape(d["input_shape"], what=f"{source}: field 'input_shape'")
    out["input_shape"] = list(shape)

    classes = d["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "must be a list of strings (the class names)")
    if not classes or len(classes) > MAX_CLASSES:
        raise bad("classes", f"must name between 1 and {MAX_CLASSES:,} classes, got {len(classes)}")
    if len(set(classes)) != len(classes):
        raise bad("classes", "names a class twice")

    if "bounds" in d:
        b = d["bounds"]
        if not _finite_numbers(b) or len(b) != 2:
            raise bad("bounds", "must be [low, high], two finite numbers")
        if not b[0] < b[1]:
            raise bad("bounds", f"must satisfy low < high, got {b}")
        out["bounds"] = (float(b[0]), float(b[1]))

    norm = d.get("normalization")
    if norm is not None:
        channels = shape[0]
        if not isinstance(norm, dict) or set(norm) != {"mean", "std"}:
            raise bad("normalization", 'must be null or {"mean": [...], "std": [...]}')
        mean, std = norm["mean"], norm["std"]
        if not _finite_numbers(mean) or not _finite_numbers(std):
            raise bad("normalization", "mean and std must be lists of finite numbers")
        if len(mean) != len(std) or len(mean) not in {1, channels}:
            counts = "1 value" if channels == 1 else f"1 or {channels} values"
            raise bad(
                "normalization",
                f"mean and std need {counts} each (one per channel: the first size of input "
                f"shape {list(shape)}), got {len(mean)} and {len(std)}",
            )
        if min(std) <= 0:
            raise bad("normalization", "std values must be > 0")
        out["normalization"] = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}

    for key in ("dataset", "dlsec_version"):
        if key in d and not isinstance(d[key], str):
            raise bad(key, "must be a string")

    training = d.get("training", {})
    if not isinstance(training, dict):
        raise bad("training", "must be an object (the training settings)")
    for key, types in _TRAINING_TYPES.items():
        v = training.get(key)
        if key in training and (
            not isinstance(v, types) or (isinstance(v, bool) and bool not in types)
        ):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise bad("training", f"key {key!r} must be {names}, got {json.dumps(v)[:40]}")
        if isinstance(v, float) and not math.isfinite(v):
            raise bad("training", f"key {key!r} must be finite")
    seed = training.get("seed", 0)
    if not 0 <= seed <= MAX_SEED:
        raise bad("training", f"key 'seed' must be between 0 and {MAX_SEED}, got {seed}")
    if "dp" in training:
        _check_dp_record(training["dp"], bad)

    metrics = d.get("metrics", {})
    if not isinstance(metrics, dict) or not all(v is None or _number(v) for v in metrics.values()):
        raise bad("metrics", "must be an object of numbers")

    wf = d.get("weights_file", "model.safetensors")
    if (
        not isinstance(wf, str)
        or wf in ("", ".", "..")
        or any(c in wf for c in "/\\\0:")
        or len(wf) > 255
    ):
        raise bad("weights_file", "must be a file name in the model directory (no path)")

    digest = d["weights_sha256"]
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise bad(
            "weights_sha256",
            "must be the weights file's sha256 (64 hex digits); "
            "without it the weights cannot be checked",
        )
    out["weights_sha256"] = digest.lower()

    version = d.get("schema_version", CARD_SCHEMA_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad("schema_version", "must be an integer")
    if version > CARD_SCHEMA_VERSION:
        raise bad(
            "schema_version",
            f"is {version}: written by a newer dlsec (this one reads {CARD_SCHEMA_VERSION})",
        )
    return out
