"""The audit end to end: report files, sections, gates, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlsec.audit.config import AuditConfig, ConfigError
from dlsec.audit.runner import run_audit
from dlsec.audit.sections import registry, selected

FAST = {"epochs": 3}
FOUNDATION = ["dataset", "model", "training", "accuracy"]


def _audit(out: Path, **kw) -> object:
    return run_audit(AuditConfig(out=str(out), **{**FAST, **kw}), progress=False)


def test_sections_registry_has_the_foundation_sections() -> None:
    names = list(registry())
    assert names[:4] == ["dataset", "model", "training", "accuracy"]
    assert [s.name for s in selected(["accuracy", "dataset"])] == ["dataset", "accuracy"]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    return _audit(out), out


def test_report_files_and_schema(audited) -> None:
    outcome, out = audited
    report = json.loads((out / "report.json").read_text())
    assert report == outcome.report
    assert report["schema"] == "dlsec.report" and report["schema_version"] == 3
    assert [s["name"] for s in report["sections"]][:4] == ["dataset", "model", "training", "accuracy"]
    acc = report["metrics"]["accuracy.clean_accuracy"]
    assert 0.85 < acc <= 1.0
    assert report["model"]["weights_sha256"] and report["dataset"]["n_test"] == 359
    # the confusion matrix is consistent with the accuracy
    cm = next(s for s in report["sections"] if s["name"] == "accuracy")["details"]["confusion_matrix"]
    assert sum(cm[i][i] for i in range(10)) / sum(map(sum, cm)) == pytest.approx(acc)
    html = (out / "report.html").read_text()
    n_figures = sum(len(s["figures"]) for s in report["sections"])
    assert n_figures >= 6 and html.count("data:image/png;base64,") == n_figures
    assert not list(out.rglob("*.tmp"))  # atomic writes leave nothing behind
    assert outcome.exit_code == 0


@pytest.mark.slow
def test_rerun_uses_cache_and_gives_identical_report(audited, tmp_path: Path) -> None:
    outcome, out = audited
    before = {p: p.stat().st_mtime_ns for p in (out / "sections").iterdir()}
    model_mtime = (out / "model" / "model.safetensors").stat().st_mtime_ns
    again = _audit(out)
    assert {p: p.stat().st_mtime_ns for p in (out / "sections").iterdir()} == before
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == model_mtime
    assert again.report == outcome.report


@pytest.mark.slow
def test_a_fresh_run_gives_the_same_report_byte_for_byte(audited, tmp_path: Path) -> None:
    """An independent fresh run yields the very same report (deterministic end to end)."""
    outcome, out = audited
    fresh = _audit(tmp_path / "fresh")
    assert fresh.report == outcome.report
    assert (tmp_path / "fresh" / "report.html").read_bytes() == (out / "report.html").read_bytes()


@pytest.mark.browser
def test_real_report_renders_in_chromium(audited) -> None:
    from browser import check_report_renders

    outcome, out = audited
    seen = check_report_renders(out / "report.html")
    n_figures = sum(len(s["figures"]) for s in outcome.report["sections"])
    assert seen["title"] == outcome.report["title"]
    assert seen["n_images"] == n_figures and not seen["broken_images"]
    assert not seen["console_errors"]


def test_fail_under_gates(audited, tmp_path: Path) -> None:
    _, out = audited
    ok = _audit(out, fail_under=["accuracy.clean_accuracy=0.5"])
    assert ok.exit_code == 0 and ok.report["gates"][0]["passed"]
    bad = _audit(out, fail_under=["accuracy.clean_accuracy=0.999", "dataset.n_test=1"])
    assert bad.exit_code == 1 and not bad.report["passed"]
    assert [g["passed"] for g in bad.report["gates"]] == [False, True]
    with pytest.raises(ConfigError, match="no such metric"):
        _audit(out, fail_under=["accuracy.nope=1"])


def test_audit_a_saved_model(audited, tmp_path: Path) -> None:
    first, out = audited
    outcome = run_audit(
        AuditConfig(model_dir=str(out / "model"), out=str(tmp_path / "r"), sections=FOUNDATION),
        progress=False,
    )
    assert outcome.report["metrics"]["accuracy.clean_accuracy"] == pytest.approx(
        first.report["metrics"]["accuracy.clean_accuracy"]
    )


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dlsec.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
@pytest.mark.slow
def test_killed_audit_resumes(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    args = ["audit", "--out", str(out), "--epochs", "40", "--quiet",
            "--sections", ",".join(FOUNDATION)]
    proc = _cli(*args)
    _wait_for(out / "model" / "train-key.json", proc)  # training finished, sections running
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT and proc.returncode != 0:
        assert proc.returncode == 130 and "rerun the same command to resume" in err
        assert "Traceback" not in err
    done = {p.name: p.stat().st_mtime_ns for p in (out / "sections").glob("*.json")}
    model_mtime = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert not list(out.rglob("*.tmp"))
    rerun = _cli(*args)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == model_mtime
    after = {p.name: p.stat().st_mtime_ns for p in (out / "sections").glob("*.json")}
    assert all(after[name] == mtime for name, mtime in done.items())
    reference = run_audit(
        AuditConfig(out=str(tmp_path / "ref"), epochs=40, sections=FOUNDATION), progress=False
    )
    assert json.loads((out / "report.json").read_text()) == reference.report
