"""The run directory's cache: the trained model and each finished section, checked on read.

A cache entry is reused only when it is intact and was made from the same inputs:

* ``<run>/model``: weights, card, ``history.json`` and ``train-key.json`` (the key of the
  settings and of the data's digest, and the weights' sha256), written as one unit under
  a temporary name and renamed onto ``model`` last, so a kill never leaves a model beside
  another run's key.
* ``<run>/sections/<name>.json``: ``{"format", "key", "result", "sha256"}``, where
  ``sha256`` covers the key and the result (canonical JSON). An entry that does not parse,
  has the wrong shape or whose content does not match its digest is recomputed, and the
  run says so. The digest catches damage and hand edits, not a forger with write access
  to the run directory (who could recompute it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dlsec.audit.result import SectionResult
from dlsec.errors import DlsecError
from dlsec.files import OutputError, atomic_write_text, current_umask
from dlsec.models import ModelCard, ModelError, save

CACHE_FORMAT = 2
"""Version of the section cache entries; older entries are recomputed."""

MODEL_DIR = "model"
TRAIN_KEY = "train-key.json"
HISTORY = "history.json"
_TEMP_PREFIX = f".{MODEL_DIR}-"
_TEMP_SUFFIX = ".tmp"


class CacheDamaged(Exception):
    """A cache file that cannot be used as it is (recompute it); the message says why."""


def canonical_json(obj: Any) -> str:
    """One spelling per value: sorted keys, no spaces, non-finite numbers refused."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def digest(obj: Any) -> str:
    """A short key for settings: sha256 of their canonical JSON (16 hex digits)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:16]


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically; NaN or infinity is a bug here (never written)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; :class:`FileNotFoundError` when absent, :class:`CacheDamaged`
    when it cannot be read as JSON (not UTF-8, not JSON, a directory, unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError:
        raise CacheDamaged("not UTF-8 text") from None
    except OSError as exc:
        raise CacheDamaged(exc.strerror or type(exc).__name__) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CacheDamaged(f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise CacheDamaged("not valid JSON (nested too deeply)") from None


# -- sections ----------------------------------------------------------------------------


def _content_sha256(key: str, result: dict[str, Any]) -> str:
    body = canonical_json({"format": CACHE_FORMAT, "key": key, "result": result})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def section_entry(key: str, result: dict[str, Any]) -> dict[str, Any]:
    """The cache file's content for a finished section (``result`` as plain JSON data)."""
    return {"format": CACHE_FORMAT, "key": key, "result": result,
            "sha256": _content_sha256(key, result)}


def read_entry(path: Path, key: str) -> Any | None:
    """The result of the cache entry at ``path`` (written as :func:`section_entry`) if it was
    made under ``key``; ``None`` when there is none, it belongs to other inputs or another
    dlsec version. :class:`CacheDamaged` when it cannot be trusted."""
    try:
        entry = read_json(path)
    except FileNotFoundError:
        return None
    if not isinstance(entry, dict) or not {"key", "result"} <= set(entry):
        raise CacheDamaged("not a cache entry")
    if entry.get("format") != CACHE_FORMAT:
        return None  # written by another dlsec version: recomputed quietly
    try:
        stated = entry.get("sha256")
        intact = isinstance(entry["key"], str) and stated == _content_sha256(
            entry["key"], entry["result"]
        )
    except (TypeError, ValueError):  # not JSON-able as it stands (e.g. NaN): not ours
        intact = False
    if not intact:
        raise CacheDamaged("its content does not match its sha256 (edited or corrupt)")
    if entry["key"] != key:
        return None  # other settings, data or model: recomputed
    return entry["result"]


def read_section(path: Path, key: str, name: str) -> SectionResult | None:
    """The cached result at ``path`` if it was made under ``key``; ``None`` when there is
    none or it belongs to other inputs. :class:`CacheDamaged` when it cannot be trusted."""
    plain = read_entry(path, key)
    if plain is None:
        return None
    try:
        result = SectionResult.from_dict(plain)
    except (TypeError, ValueError) as exc:
        raise CacheDamaged(f"malformed result ({exc})") from None
    if result.name != name:
        raise CacheDamaged(f"holds section {result.name!r}")
    return result


# -- the trained model ---------------------------------------------------------------------


@dataclass
class CachedModel:
    model: nn.Module
    card: ModelCard
    history: list[dict[str, Any]] | None


def check_history(data: Any, *, source: str) -> list[dict[str, Any]]:
    """A training history as ``dlsec train`` writes it: a list of per-epoch objects with
    numeric ``epoch``, ``train_loss``, ``train_accuracy`` (and ``val_loss``,
    ``val_accuracy`` in every epoch when the first has them). :class:`ModelError`
    naming ``source`` otherwise."""

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if not isinstance(data, list):
        raise ModelError(f"{source}: a training history must be a JSON list of epochs")
    required = ["epoch", "train_loss", "train_accuracy"]
    if data and isinstance(data[0], dict) and "val_loss" in data[0]:
        required += ["val_loss", "val_accuracy"]
    for i, epoch in enumerate(data):
        if not isinstance(epoch, dict) or not all(number(epoch.get(k)) for k in required):
            raise ModelError(
                f"{source}: epoch {i} of the training history needs numbers for "
                f"{', '.join(required)}"
            )
    return data


def read_history(path: Path) -> list[dict[str, Any]] | None:
    """``history.json`` beside a model, checked; ``None`` when there is none."""
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except CacheDamaged as exc:
        raise ModelError(f"{path}: {exc}") from None
    return check_history(data, source=str(path))


def check_model_dir(run_dir: Path) -> Path:
    """``<run>/model`` if it is free or holds a model this audit trained (it may be
    replaced); :class:`OutputError` when it is something else (never deleted)."""
    path = run_dir / MODEL_DIR
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputError(
            f"{path}: exists and is not the audit's model directory; remove it or choose another --out"
        )
    if path.is_dir() and any(path.iterdir()) and not (path / TRAIN_KEY).exists():
        raise OutputError(
            f"{path}: holds no {TRAIN_KEY}, so it is not a model this audit trained (it is "
            "never overwritten); remove it, audit it with --model-dir, or choose another --out"
        )
    return path


def remove_stale_temporaries(run_dir: Path) -> None:
    """Remove model directories a killed run left half-written or half-replaced."""
    for p in run_dir.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def read_train_key(model_dir: Path) -> dict[str, Any] | None:
    """``train-key.json``; ``None`` when absent, :class:`CacheDamaged` when malformed."""
    try:
        meta = read_json(model_dir / TRAIN_KEY)
    except FileNotFoundError:
        return None
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("key"), str)
        or not isinstance(meta.get("weights_sha256"), str)
    ):
        raise CacheDamaged(f"{TRAIN_KEY} is not a training key")
    return meta


def install_model(
    run_dir: Path,
    model: nn.Module,
    card: ModelCard,
    history: list[dict[str, Any]],
    key: str,
) -> Path:
    """Write the model directory as one unit: everything under a temporary name, the
    previous one moved aside, the new one renamed onto ``<run>/model``, the old removed.

    A kill at any point leaves either the previous unit, the new one, or none (the next
    run retrains); never new weights beside an old key or the reverse.
    """
    final = check_model_dir(run_dir)
    remove_stale_temporaries(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=run_dir))
    old: Path | None = None
    moved_aside = False
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the usual permissions
        card = save(model, card, tmp)
        write_json(tmp / HISTORY, history)
        write_json(tmp / TRAIN_KEY, {"key": key, "weights_sha256": card.weights_sha256})
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=run_dir))
            os.replace(final, old)  # a directory replaces an empty directory
            moved_aside = True
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved_aside and old is not None and not final.exists():
            with contextlib.suppress(OSError):
                os.replace(old, final)  # put the previous unit back
                old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_cached_model(model_dir: Path, key: str, load: Any) -> CachedModel | None:
    """The model in ``model_dir`` if its training key is ``key`` (``None`` when there is
    no model or it was trained on other settings or data); :class:`CacheDamaged` when it
    cannot be read as it stands. ``load(directory) -> (model, card)`` loads it."""
    if not model_dir.is_dir():
        return None
    meta = read_train_key(model_dir)
    if meta is None:
        with contextlib.suppress(OSError):
            if any(model_dir.iterdir()):
                raise CacheDamaged(f"no {TRAIN_KEY}")
        return None
    if meta["key"] != key:
        return None
    try:
        model, card = load(model_dir)
        history = read_history(model_dir / HISTORY)
    except DlsecError as exc:
        raise CacheDamaged(str(exc)) from None
    if history is None:
        raise CacheDamaged(f"no {HISTORY}")
    if card.weights_sha256 != meta["weights_sha256"]:
        raise CacheDamaged(f"the weights are not the ones {TRAIN_KEY} names")
    return CachedModel(model, card, history)
