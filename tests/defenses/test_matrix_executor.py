"""The matrix's independent trainings on the executor seam (dlsec.executor): the poisoning
retrains of every training row in one map, only those the store lacks; the rows' contexts
keep the executor (their membership shadows are its tasks); and (slow) a 2-worker local Ray
cluster giving the sequential run's poisoning cells exactly."""

from __future__ import annotations

from typing import Any

import pytest

from dlsec.executor import SequentialExecutor
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios.matrix import MatrixOptions, MemoryStore, run_matrix


class Recording(SequentialExecutor):
    """A sequential executor that keeps the task names of each map."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[list[str]] = []

    def map(self, fn: Any, tasks: Any) -> list[Any]:
        self.maps.append([name for name, _ in tasks])
        return super().map(fn, tasks)


def _retrains(names: list[str]) -> list[str]:
    return [n for n in names if "/retrain/" in n]


def test_retrains_and_row_shadows_are_executor_tasks(digits, trained_simplenet) -> None:
    model, card, _ = trained_simplenet  # 10 epochs: every row's recipe trains for 10
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0)
    rows = ["none", "fgsm-rs", "policy:label-only"]
    opt = MatrixOptions(samples=10, groups=("poisoning", "membership"), members=40, shadows=2)
    store = MemoryStore()
    rec = Recording()
    res = run_matrix(ctx, rows, opt, store=store, executor=rec)
    retrains = [m for m in rec.maps if _retrains(m)]
    assert len(retrains) == 1  # every row's retrains in one map
    assert retrains[0] == ["matrix/none/retrain/backdoor", "matrix/none/retrain/optimized-flip",
                           "matrix/fgsm-rs/retrain/backdoor",
                           "matrix/fgsm-rs/retrain/optimized-flip"]  # no serving row
    # the adversarially trained row's shadows train one by one (FGSM-RS each): on the executor
    shadows = [n for m in rec.maps for n in m if n.startswith("shadow/")]
    assert len(shadows) == 2
    m = res.metrics
    assert m["backdoor_success@none"] > 0.5 and m["label_flip_damage@none"] > 0.05
    assert "backdoor_success@policy:label-only" not in m
    # the retrained models are the retrains', not the rows' own: the flips cost accuracy
    assert m["label_flip_damage@fgsm-rs"] > 0.02
    # a second run finds every cell in the store: no retrain, no shadow, no row build
    again = Recording()
    second = run_matrix(ctx, rows, opt, store=store, executor=again)
    assert all(not names for names in again.maps)
    assert second.metrics == res.metrics
    # without fgsm-rs's poisoning cell only its retrains run again, to the same cell
    del store.cells[list(store.cells)[2]]  # cells in order: none's two, then fgsm-rs's
    third = Recording()
    assert run_matrix(ctx, rows, opt, store=store, executor=third).metrics == res.metrics
    assert [_retrains(names) for names in third.maps if _retrains(names)] == [
        ["matrix/fgsm-rs/retrain/backdoor", "matrix/fgsm-rs/retrain/optimized-flip"]]


@pytest.mark.slow
def test_poisoning_cells_on_ray_equal_the_sequential_ones(digits, trained_simplenet,
                                                          ray_cluster) -> None:
    model, card, _ = trained_simplenet
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0)
    opt = MatrixOptions(samples=10, groups=("poisoning",))
    rows = ["fgsm-rs", "dp:8"]  # random starts; DP-SGD noise
    cells = {}
    store = MemoryStore()  # the rows built once (test_executor compares builds on Ray)
    for kind, ex in (("sequential", SequentialExecutor()), ("ray", ray_cluster)):
        store.cells.clear()  # every retrain again, here on the cluster
        res = run_matrix(ctx, rows, opt, store=store, executor=ex)
        cells[kind] = {r["defense"]: (r["cells"]["backdoor_success"],
                                      r["cells"]["label_flip_damage"])
                       for r in res.details["matrix"]["rows"]}
        cells[kind + " intervals"] = res.details["intervals"]
    assert cells["sequential"] == cells["ray"]
    assert cells["sequential intervals"] == cells["ray intervals"]
    backdoor, damage = cells["ray"]["fgsm-rs"]
    assert backdoor is not None and damage is not None and damage > 0.0
