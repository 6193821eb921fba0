"""The defense x attack matrix (scenarios/defended, scenarios/matrix, the audit's defenses
section): defenses by name, the experiments' measured effects, caching and resume, and the
command line's errors. The interactions the issue names (DP lowers membership leakage,
serving policies lower extraction fidelity but not white-box robustness) are in
test_matrix_interactions.py (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlsec.errors import DlsecError
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios.defended import DefenseError, known, parse_defense, parse_defenses
from dlsec.scenarios.matrix import (
    GROUPS,
    MatrixOptions,
    MemoryStore,
    difference_interval,
    run_matrix,
)
from dlsec.scenarios.matrix_columns import COLUMNS, THREATS


def test_defenses_by_name() -> None:
    listed = known()
    assert listed.startswith("none, ")  # the reference first, then training, then serving
    for name in ("pgd-at", "trades", "fgsm-rs", "dp:EPSILON", "sanitize:METHOD", "policy:SPEC"):
        assert name in listed
    assert parse_defense("sanitize").parameter == "cleanlab"  # the default sanitizer
    assert parse_defense(" DP:3 ").family.name == "dp"
    for bad, words in (("bogus", ("unknown defense", "pgd-at")), ("dp", ("needs a parameter",)),
                       ("pgd-at:3", ("takes no parameter",))):
        with pytest.raises(DefenseError) as err:
            parse_defense(bad)
        assert all(w in str(err.value) for w in words)
    with pytest.raises(DefenseError, match="named twice"):
        parse_defenses(["none", "pgd-at", "none"])
    with pytest.raises(DefenseError, match="one or more"):
        parse_defenses([])


def test_recipes_check_their_parameters(digits, digits_net) -> None:
    from dlsec.scenarios.defended import BuildSettings
    from dlsec.training import TrainConfig

    model, card = digits_net
    ctx = ScenarioContext(model=model, card=card, dataset=digits)
    settings = BuildSettings(train=TrainConfig(), eps=0.1)
    assert parse_defense("policy:label-only").recipe(ctx, settings).policy.spec() == "label"
    assert parse_defense("policy:top1-rounded").recipe(ctx, settings).policy.spec() == \
        "topk-rounded:1,2"
    assert parse_defense("policy:noise:0.1").recipe(ctx, settings).policy.spec() == "noise:0.1"
    for bad in ("dp:0", "dp:abc", "dp:inf", "sanitize:bogus", "policy:softmax"):
        with pytest.raises(DefenseError, match=bad.split(":")[0]):
            parse_defense(bad).recipe(ctx, settings)


def test_columns_and_threats_fit_together() -> None:
    keys = {c.key for c in COLUMNS}
    assert {t.primary for t in THREATS} <= keys
    assert {k for cols in GROUPS.values() for k in cols} | {"train_seconds"} == keys
    assert len(THREATS) == 8


def test_newcombe_difference_interval() -> None:
    # Newcombe (1998), Statistics in Medicine 17, table II example (56/70 - 48/80): method 10
    lo, hi = difference_interval(56, 70, 48, 80)
    assert abs(lo - 0.0524) < 5e-5 and abs(hi - 0.3339) < 5e-5
    lo, hi = difference_interval(5, 10, 5, 10)
    assert lo < 0 < hi and abs(lo + hi) < 1e-12  # symmetric around no difference


def test_options_are_checked() -> None:
    for bad in ({"norm": "l1"}, {"samples": 0}, {"shadows": 1}, {"flip_rate": 1.0},
                {"groups": ("bogus",)}, {"groups": ()}, {"extraction_strategy": "x"}):
        with pytest.raises(ValueError):
            MatrixOptions(**bad)  # type: ignore[arg-type]


def test_serving_rows_share_the_weights_and_degrade_the_api(digits, digits_net) -> None:
    """A serving policy changes what the API answers, not the model: white-box robust
    accuracy and clean accuracy are the undefended row's exactly; label-only answers make
    the black-box attack decision-based and leave MI-Face and training-time columns n/a."""
    model, card = digits_net
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0)
    opt = MatrixOptions(samples=20, groups=("clean", "whitebox", "blackbox", "poisoning",
                                            "inversion"), max_queries=200, inversion_iters=5)
    res = run_matrix(ctx, ["none", "policy:label-only", "policy:top1-rounded"], opt)
    m = res.metrics
    clean = float((model(digits.x_test).argmax(1) == digits.y_test).double().mean())
    assert abs(m["clean_accuracy@none"] - clean) < 1e-12
    for row in ("policy:label-only", "policy:top1-rounded"):
        assert m[f"whitebox_robust_accuracy@{row}"] == m["whitebox_robust_accuracy@none"]
        assert m[f"clean_accuracy@{row}"] == m["clean_accuracy@none"]
        assert f"backdoor_success@{row}" not in m and f"label_flip_damage@{row}" not in m
    # the white-box ensemble really attacks: robust accuracy far below clean
    assert m["whitebox_robust_accuracy@none"] < clean - 0.3
    rows = {r["defense"]: r for r in res.details["matrix"]["rows"]}
    assert "hsja" in rows["policy:label-only"]["notes"]["blackbox_robust_accuracy"]
    assert "square" in rows["none"]["notes"]["blackbox_robust_accuracy"]
    assert rows["policy:label-only"]["cells"]["inversion_accuracy"] is None
    assert "labels only" in rows["policy:label-only"]["notes"]["inversion_accuracy"]
    # the undefended row's poisoning columns: a backdoor that works, flips that cost accuracy
    assert m["backdoor_success@none"] > 0.5
    assert m["label_flip_damage@none"] > 0.05
    damage = res.details["intervals"]["label_flip_damage@none"]
    assert damage["method"] == "newcombe" and damage["lower"] < m["label_flip_damage@none"]
    for key, value in m.items():
        record = res.details["intervals"].get(key)
        if record is not None:
            assert record["lower"] - 1e-12 <= value <= record["upper"] + 1e-12, key


def test_the_store_keeps_models_and_cells(digits, digits_net) -> None:
    model, card = digits_net
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0)
    store = MemoryStore()
    opt = MatrixOptions(samples=10, groups=("clean",))
    first = run_matrix(ctx, ["none", "fgsm-rs"], opt, store=store)
    assert len(store.models) == 1 and len(store.cells) == 2  # fgsm-rs trained once
    trained = next(iter(store.models.values()))[0]
    second = run_matrix(ctx, ["fgsm-rs", "none"], opt, store=store)
    assert next(iter(store.models.values()))[0] is trained  # not trained again
    assert first.metrics == second.metrics
    assert first.metrics["train_seconds@fgsm-rs"] > 0 and first.metrics["train_seconds@none"] == 0


def _audit(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlsec.cli", "audit", "--quiet", *args],
                          capture_output=True, text=True, cwd=tmp, timeout=600)


@pytest.mark.slow
def test_audit_defenses_resumes_from_its_cells(tmp_path: Path) -> None:
    """``--defenses`` adds the section; a rerun reads every row and cell from the run
    directory (same report, nothing trained); a damaged cell is recomputed with a notice."""
    (tmp_path / "audit.toml").write_text(
        '[defenses]\nsamples = 10\ngroups = ["clean", "whitebox"]\n')
    args = ("--out", "run", "--config", "audit.toml", "--sections", "accuracy", "--epochs", "5",
            "--defenses", "none,fgsm-rs,policy:label-only")
    first = _audit(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    section = next(s for s in report["sections"] if s["name"] == "defenses")
    assert [r["defense"] for r in section["details"]["matrix"]["rows"]] == \
        ["none", "fgsm-rs", "policy:label-only"]
    assert "defenses.whitebox_robust_accuracy@fgsm-rs" in report["intervals"]
    assert report["metrics"]["defenses.train_seconds@fgsm-rs"] > 0  # it was trained
    white = next(r for r in report["scorecard"] if r["threat"] == "whitebox")
    assert white["metric"] == "defenses.whitebox_robust_accuracy@none"  # read off the matrix
    cells = sorted((tmp_path / "run" / "defenses" / "cells").glob("*.json"))
    assert len(cells) == 6  # 3 rows x 2 experiments
    (tmp_path / "run" / "sections" / "defenses.json").unlink()  # force the section to rerun
    cells[0].write_text(cells[0].read_text().replace('"value"', '"valeur"', 1))
    second = _audit(tmp_path, *args)
    assert second.returncode == 0, second.stderr
    assert "damaged" in second.stderr and "recomputing" in second.stderr
    assert second.stderr.count("is damaged") == 1  # told once
    again = json.loads((tmp_path / "run" / "report.json").read_text())
    assert again["metrics"] == report["metrics"]
    assert again["intervals"] == report["intervals"]


@pytest.mark.parametrize("defenses, words", [
    ("bogus", ("unknown defense", "pgd-at")),
    ("dp", ("needs a parameter", "dp:EPSILON")),
    ("none,none", ("named twice",)),
    (",", ("defenses", "name one or more")),
])
def test_audit_defenses_errors_are_one_line(tmp_path: Path, one_line_error, defenses: str,
                                            words: tuple[str, ...]) -> None:
    proc = _audit(tmp_path, "--out", "run", "--defenses", defenses)
    assert proc.returncode == 2
    one_line_error(proc.stderr, *words)
    assert not (tmp_path / "run" / "report.json").exists()

    assert issubclass(DefenseError, DlsecError)
