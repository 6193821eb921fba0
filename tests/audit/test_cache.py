"""The run directory's cache: keyed on the data's content, checked on read, written as units.

Each test runs the two cheapest sections on the digits data (a few seconds), so every
case of a changed, edited, damaged or half-written cache is exercised end to end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from dlsec.audit import cache as cache_mod
from dlsec.audit.cache import CACHE_FORMAT, section_entry
from dlsec.audit.config import AuditConfig, ConfigError
from dlsec.audit.runner import run_audit
from dlsec.audit.sections import _SECTIONS, registry
from dlsec.data import load_dataset
from dlsec.errors import DlsecError
from dlsec.files import OutputError
from dlsec.models import ModelError

SECTIONS = ["dataset", "accuracy"]
EPOCHS = 3


def _audit(out: Path, *, console: Console | None = None, **kw):
    cfg = AuditConfig(out=str(out), epochs=EPOCHS, sections=SECTIONS, **kw)
    return run_audit(cfg, progress=False, console=console)


def _recording_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=400, highlight=False, color_system=None), buf


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strict_json(path: Path):
    """Parse as a browser would: NaN and Infinity are not JSON."""

    def refuse(token: str):
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished audit (dataset + accuracy on digits): (outcome, run dir)."""
    out = tmp_path_factory.mktemp("base") / "run"
    return _audit(out), out


@pytest.fixture
def run_copy(base, tmp_path: Path) -> Path:
    """A private copy of the finished run directory, to damage."""
    _, out = base
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    return dst


# -- keyed on the data's content -----------------------------------------------------------


def _write_digits_npz(path: Path, *, flip: float = 0.0) -> None:
    ds = load_dataset("digits", seed=0)
    x = torch.cat([ds.x_train, ds.x_test]).numpy()
    y = torch.cat([ds.y_train, ds.y_test]).numpy().copy()
    if flip:
        rng = np.random.default_rng(0)
        idx = rng.choice(len(y), size=int(flip * len(y)), replace=False)
        y[idx] = (y[idx] + rng.integers(1, 10, size=len(idx))) % 10  # always another class
    np.savez(path, x=x, y=y)


def test_replacing_the_data_file_retrains_and_recomputes(tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    _write_digits_npz(data)
    out = tmp_path / "run"
    clean = _audit(out, dataset=f"npz:{data}")
    model_sha = _sha(out / "model" / "model.safetensors")
    _write_digits_npz(data, flip=0.6)  # same name, 60% of the labels flipped
    flipped = _audit(out, dataset=f"npz:{data}")
    fresh = _audit(tmp_path / "fresh", dataset=f"npz:{data}")
    # the model was retrained and every section recomputed: the same report as a fresh run
    assert _sha(out / "model" / "model.safetensors") != model_sha
    assert flipped.report == fresh.report
    acc_clean = clean.report["metrics"]["accuracy.clean_accuracy"]
    acc_flipped = flipped.report["metrics"]["accuracy.clean_accuracy"]
    assert acc_clean > 0.8 and acc_flipped < acc_clean - 0.2  # noisy labels, test labels too


# -- cached sections are checked --------------------------------------------------------------


def test_an_edited_cached_metric_is_recomputed_and_the_gate_reads_the_true_value(
    base, run_copy: Path
) -> None:
    outcome, _ = base
    true_value = outcome.report["metrics"]["accuracy.clean_accuracy"]
    assert true_value < 0.99
    path = run_copy / "sections" / "accuracy.json"
    entry = json.loads(path.read_text())
    entry["result"]["metrics"]["clean_accuracy"] = 0.999  # edited by hand, digest untouched
    path.write_text(json.dumps(entry))
    console, buf = _recording_console()
    again = _audit(run_copy, console=console, fail_under=["accuracy.clean_accuracy=0.99"])
    assert "Clean accuracy: the cached result" in buf.getvalue() and "recomputing" in buf.getvalue()
    assert again.exit_code == 1
    assert again.report["gates"][0]["value"] == true_value
    assert json.loads(path.read_text())["result"]["metrics"]["clean_accuracy"] == true_value


def _forged_entry(path: Path) -> None:
    """A result of the wrong shape under the right key, with a matching digest."""
    entry = json.loads(path.read_text())
    path.write_text(json.dumps(section_entry(entry["key"], {"name": "accuracy", "metrics": [1]})))


def _nan_in_entry(path: Path) -> None:
    text = path.read_text()
    path.write_text(text.replace('"test_loss": ', '"test_loss": NaN, "x": ', 1))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_text("[1]"), id="json-list"),
        pytest.param(lambda p: p.write_text('{"key": '), id="truncated"),
        pytest.param(lambda p: p.write_bytes(b"\xff\xfe\x00binary"), id="binary"),
        pytest.param(_forged_entry, id="malformed-result-valid-key"),
        pytest.param(_nan_in_entry, id="nan-literal"),
        pytest.param(
            lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "sha256": "0" * 64})),
            id="wrong-digest",
        ),
    ],
)
def test_a_damaged_cached_section_is_recomputed(base, run_copy: Path, damage) -> None:
    outcome, _ = base
    path = run_copy / "sections" / "accuracy.json"
    damage(path)
    console, buf = _recording_console()
    again = _audit(run_copy, console=console)
    assert "damaged" in buf.getvalue() and "recomputing" in buf.getvalue()
    assert again.report == outcome.report
    entry = _strict_json(path)
    assert entry["format"] == CACHE_FORMAT and entry["result"]["name"] == "accuracy"


def test_an_intact_cache_is_reused_silently(base, run_copy: Path) -> None:
    outcome, _ = base
    before = {p.name: p.stat().st_mtime_ns for p in (run_copy / "sections").iterdir()}
    console, buf = _recording_console()
    again = _audit(run_copy, console=console)
    assert "damaged" not in buf.getvalue()
    assert {p.name: p.stat().st_mtime_ns for p in (run_copy / "sections").iterdir()} == before
    assert again.report == outcome.report


# -- the cached model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("train-key.json", '"x"'),
        ("train-key.json", '{"key": 1}'),
        ("card.json", b"\x89PNG\r\n\x1a\n\x00\x00binary"),
        ("card.json", "{}"),
        ("history.json", '{"epoch": 1}'),
        ("history.json", '[{"epoch": 1, "train_loss": "low"}]'),
        ("history.json", "[1, 2]"),
        ("model.safetensors", b"garbage"),
    ],
)
def test_a_damaged_cached_model_is_retrained(
    base, run_copy: Path, name: str, content: str | bytes
) -> None:
    outcome, out = base
    path = run_copy / "model" / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    console, buf = _recording_console()
    again = _audit(run_copy, console=console)
    assert "model: the cached model" in buf.getvalue() and "retraining" in buf.getvalue()
    assert again.report == outcome.report  # training is deterministic
    for f in ("model.safetensors", "train-key.json"):  # (history.json holds timings)
        assert (run_copy / "model" / f).read_bytes() == (out / "model" / f).read_bytes()


def test_a_model_directory_the_audit_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "model" / "mine.txt").write_text("precious")
    with pytest.raises(OutputError, match="not a model this audit trained"):
        _audit(out)
    assert (out / "model" / "mine.txt").read_text() == "precious"


class _Killed(BaseException):
    """Stands for a kill at one point of writing the model directory."""


def _crash_on(monkeypatch, target: str, *, nth: int = 1) -> None:
    calls = {"n": 0}
    if target == "save":
        real = cache_mod.save

        def fake_save(*a, **kw):
            real(*a, **kw)
            raise _Killed("after the weights and card")

        monkeypatch.setattr(cache_mod, "save", fake_save)
        return
    if target in ("history.json", "train-key.json"):
        real_write = cache_mod.write_json

        def fake_write(path, obj):
            if Path(path).name == target:
                raise _Killed(f"before {target}")
            real_write(path, obj)

        monkeypatch.setattr(cache_mod, "write_json", fake_write)
        return
    real_replace = cache_mod.os.replace

    def fake_replace(src, dst):  # counts directory renames only (files are written atomically)
        if Path(src).is_dir():
            calls["n"] += 1
            if calls["n"] == nth:
                raise _Killed(f"at directory rename {nth}")
        real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", fake_replace)


@pytest.mark.parametrize(
    ("target", "nth"),
    [("save", 1), ("history.json", 1), ("train-key.json", 1), ("rename", 1), ("rename", 2)],
)
def test_a_kill_while_writing_the_model_never_pairs_new_weights_with_the_old_key(
    base, run_copy: Path, monkeypatch, target: str, nth: int
) -> None:
    outcome, out = base
    old_weights = _sha(out / "model" / "model.safetensors")
    _crash_on(monkeypatch, target, nth=nth)
    with pytest.raises(_Killed):
        _audit(run_copy, lr=1e-3)  # other settings: trains a new model
    monkeypatch.undo()
    model = run_copy / "model"
    # the old unit, untouched (put back when the kill came between the two renames)
    assert _sha(model / "model.safetensors") == old_weights
    assert (model / "train-key.json").read_bytes() == (out / "model" / "train-key.json").read_bytes()
    assert not list(run_copy.glob(".model-*"))
    # the old settings again: the old model, reused
    again = _audit(run_copy)
    assert _sha(model / "model.safetensors") == old_weights
    assert again.report == outcome.report
    assert not list(run_copy.glob(".model-*"))


def test_temporaries_of_a_killed_run_are_removed(base, run_copy: Path) -> None:
    stale = run_copy / ".model-abc123.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    _audit(run_copy, lr=1e-3)
    assert not stale.exists() and not list(run_copy.glob(".model-*"))


# -- a failed run leaves no report ----------------------------------------------------------


def test_a_failed_run_leaves_no_stale_report(base, run_copy: Path, monkeypatch) -> None:
    assert (run_copy / "report.json").is_file() and (run_copy / "report.html").is_file()
    with pytest.raises(ConfigError, match="no such metric"):
        _audit(run_copy, fail_under=["accuracy.nope=1"])
    assert not (run_copy / "report.json").exists() and not (run_copy / "report.html").exists()

    _audit(run_copy)  # a report again
    spec = registry()["accuracy"]

    def boom(ctx, options):
        raise DlsecError("the section failed")

    monkeypatch.setitem(_SECTIONS, "accuracy", dataclasses.replace(spec, fn=boom, version=99))
    with pytest.raises(DlsecError, match="the section failed"):
        _audit(run_copy)
    assert not (run_copy / "report.json").exists() and not (run_copy / "report.html").exists()


def test_report_json_that_is_a_directory_is_one_error_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "report.json").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"report\.json is a directory"):
        _audit(out)
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]  # nothing else written


# -- user's model directories -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"epoch": 1}', ["history.json", "list of epochs"]),
        ('[{"epoch": 1, "train_loss": 0.5}]', ["history.json", "train_accuracy"]),
        ('[{"epoch": 1', ["history.json", "not valid JSON"]),
    ],
)
def test_a_model_dirs_bad_history_is_one_error_naming_the_file(
    base, tmp_path: Path, content: str, words: list[str]
) -> None:
    _, out = base
    model_dir = tmp_path / "m"
    shutil.copytree(out / "model", model_dir)
    (model_dir / "history.json").write_text(content)
    with pytest.raises(ModelError) as info:
        run_audit(AuditConfig(model_dir=str(model_dir), out=str(tmp_path / "r"), sections=SECTIONS),
                  progress=False)
    assert all(w in str(info.value) for w in words) and "\n" not in str(info.value)
    assert not (tmp_path / "r" / "report.json").exists()


def test_a_model_dirs_binary_card_is_one_error_naming_the_file(base, tmp_path: Path) -> None:
    _, out = base
    model_dir = tmp_path / "m"
    shutil.copytree(out / "model", model_dir)
    (model_dir / "card.json").write_bytes(b"\xff\xd8\xff\xe0 not a card")
    with pytest.raises(ModelError, match=r"card\.json"):
        run_audit(AuditConfig(model_dir=str(model_dir), out=str(tmp_path / "r"), sections=SECTIONS),
                  progress=False)
