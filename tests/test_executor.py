"""The executor seam (dlsec.executor): tasks in order, seeded by name, the caller's generator
untouched, the flags' one-line errors; and (slow) a 2-worker local Ray cluster giving
bit-identical shadow models, LiRA scores and matrix rows to the sequential run."""

from __future__ import annotations

import socket
import sys
from typing import Any

import pytest
import torch
from hand_models import weights_sha256

from dlsec.cli import main
from dlsec.executor import (
    RAY_INSTALL,
    Executor,
    ExecutorError,
    SequentialExecutor,
    check_address,
    make_executor,
    task_seed,
)


def _draw(k: int, scale: float) -> tuple[float, bytes, int]:
    """A task: its argument back, 3 numbers from torch's global generator, its threads."""
    return k * scale, torch.rand(3).numpy().tobytes(), torch.get_num_threads()


def test_sequential_keeps_order_seeds_by_name_and_leaves_the_caller_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state().numpy().tobytes()
    threads_before = torch.get_num_threads()
    tasks = [(f"t/{k}", (k, 10.0)) for k in (3, 1, 2)]
    out = SequentialExecutor().map(_draw, tasks)
    assert [r[0] for r in out] == [30.0, 10.0, 20.0]  # task order, not sorted
    for (name, _), (_, drawn, threads) in zip(tasks, out, strict=True):
        expected = torch.rand(3, generator=torch.Generator().manual_seed(task_seed(name)))
        assert drawn == expected.numpy().tobytes()  # the task's stream is its name's
        assert threads == 1
    assert len({r[1] for r in out}) == 3  # three names, three streams
    assert torch.get_rng_state().numpy().tobytes() == before  # caller's state unchanged
    assert torch.get_num_threads() == threads_before
    # the same name draws the same numbers in another map, whatever ran before
    torch.manual_seed(7)
    again = SequentialExecutor().map(_draw, [("t/1", (1, 10.0))])
    assert again[0][1] == out[1][1]
    assert SequentialExecutor(threads=2).map(_draw, [("x", (0, 1.0))])[0][2] == 2
    assert task_seed("a") != task_seed("b") and 0 <= task_seed("a") < 2**63
    with pytest.raises(ExecutorError, match="unique"):
        SequentialExecutor().map(_draw, [("same", (0, 1.0)), ("same", (1, 1.0))])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bad_settings_are_one_line_errors(monkeypatch, capsys, one_line_error, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(make_executor(1), SequentialExecutor)
    assert isinstance(make_executor(None), SequentialExecutor)
    for bad in (0, -2):
        with pytest.raises(ExecutorError, match="--workers must be"):
            make_executor(bad)
    for text in ("nohost", "host:0", "host:abc", ":123"):
        with pytest.raises(ExecutorError, match="HOST:PORT"):
            check_address(text)
    port = _closed_port()  # nothing listens there
    with pytest.raises(ExecutorError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        check_address(f"127.0.0.1:{port}")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ExecutorError) as err:
        make_executor(2)
    assert RAY_INSTALL in str(err.value) and "\n" not in str(err.value)
    assert main(["audit", "--workers", "0", "--quiet"]) == 2
    one_line_error(capsys.readouterr().err, "workers", ">= 1")
    assert main(["audit", "--workers", "2", "--quiet", "--sections", "dataset"]) == 2
    one_line_error(capsys.readouterr().err, "pip install 'dlsec[ray]'")
    assert main(["audit", "--ray-address", f"127.0.0.1:{port}", "--quiet"]) == 2
    one_line_error(capsys.readouterr().err, "no Ray cluster answers")
    assert main(["privacy", "membership", "--model-dir", "nowhere", "--workers", "2"]) == 2
    one_line_error(capsys.readouterr().err, "pip install 'dlsec[ray]'")
    assert main(["privacy", "membership", "--model-dir", "nowhere", "--workers", "0"]) == 2
    one_line_error(capsys.readouterr().err, "--workers")
    assert list(tmp_path.iterdir()) == []  # nothing written


# -- sequential vs a 2-worker local Ray cluster (slow: Ray starts in 5-70 s here) -------------
class Recording(Executor):
    """Delegates to ``inner`` and keeps every result (the trained models) for the test."""

    def __init__(self, inner: Executor) -> None:
        super().__init__(threads=inner.threads)
        self.inner = inner
        self.results: list[Any] = []
        self.workers = inner.workers

    def map(self, fn: Any, tasks: Any) -> list[Any]:
        out = self.inner.map(fn, tasks)
        self.results.extend(out)
        return out


@pytest.mark.slow
def test_lira_shadows_on_ray_are_bit_identical(digits, digits_net, ray_cluster) -> None:
    from dlsec.scenarios import ScenarioContext
    from dlsec.scenarios.membership import MembershipOptions, run_membership

    model, card = digits_net
    opt = MembershipOptions(attacks=("lira",), members=100, shadows=4, stacked=False)
    runs = {}
    for kind, inner in (("sequential", SequentialExecutor()), ("ray", ray_cluster)):
        rec = Recording(inner)
        ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0, executor=rec)
        res = run_membership(ctx, opt)
        accuracies = [float((m(digits.x_test).argmax(1) == digits.y_test).float().mean())
                      for m in rec.results]  # 77-86% measured (each on 100 records)
        runs[kind] = ([weights_sha256(m) for m in rec.results],
                      res.artifacts["results"][0].scores.numpy().tobytes(),
                      res.metrics)
    seq, ray = runs["sequential"], runs["ray"]
    for shadow in accuracies:  # trained shadows (chance: 10%), not fresh ones handed back
        assert shadow > 0.5
    assert len(seq[0]) == 4 and len(set(seq[0])) == 4  # four different shadows
    assert seq[0] == ray[0]  # every shadow's weights, byte for byte
    assert seq[1] == ray[1]  # the membership scores, byte for byte
    assert seq[2] == ray[2]
    # the executor decided nothing: a different seed gives different shadows
    rec = Recording(SequentialExecutor())
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=1, executor=rec)
    run_membership(ctx, opt)
    assert [weights_sha256(m) for m in rec.results] != seq[0]


@pytest.mark.slow
def test_matrix_rows_on_ray_are_bit_identical(digits, digits_net, ray_cluster) -> None:
    from dlsec.scenarios import ScenarioContext
    from dlsec.scenarios.matrix import MatrixOptions, MemoryStore, run_matrix

    model, card = digits_net
    opt = MatrixOptions(samples=10, groups=("clean",))
    rows = ["none", "fgsm-rs", "dp:8"]  # two rows train (random starts; DP-SGD noise)
    shas, metrics = {}, {}
    for kind, ex in (("sequential", SequentialExecutor()), ("ray", ray_cluster)):
        store = MemoryStore()
        ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0)
        res = run_matrix(ctx, rows, opt, store=store, executor=ex)
        assert len(store.models) == 2
        shas[kind] = sorted(weights_sha256(m) for m, _, _ in store.models.values())
        metrics[kind] = {k: v for k, v in res.metrics.items() if not k.startswith("train_sec")}
        # the store is consulted: a second run builds nothing (a map of no tasks)
        rec = Recording(ex)
        run_matrix(ctx, rows, opt, store=store, executor=rec)
        assert rec.results == []
    assert shas["sequential"] == shas["ray"] and len(set(shas["ray"])) == 2
    assert metrics["sequential"] == metrics["ray"]
    assert metrics["ray"]["clean_accuracy@fgsm-rs"] > 0.5  # trained rows (chance: 10%)
    assert metrics["ray"]["clean_accuracy@dp:8"] > 0.5


@pytest.mark.slow
def test_membership_command_with_workers_gives_the_same_json(digits_net, ray_cluster, tmp_path,
                                                             capsys) -> None:
    """``dlsec privacy membership --workers 2`` (the module's cluster, already running, is
    used and left running) prints the same result as ``--workers 1``, bar the seconds."""
    import json

    from dlsec.models import save

    model, card = digits_net
    save(model, card, tmp_path / "m")
    runs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.json"
        assert main(["privacy", "membership", "--model-dir", str(tmp_path / "m"), "--attack",
                     "lira", "--shadows", "3", "--members", "60", "--separate-shadows",
                     "--workers", workers, "--out", str(out), "-q"]) == 0
        capsys.readouterr()
        summary = json.loads(out.read_text())
        assert summary.pop("seconds") >= 0
        runs.append(summary)
    assert runs[0] == runs[1] and runs[0]["n_members"] == 60
    import ray

    assert ray.is_initialized()  # the command did not stop a cluster it did not start
