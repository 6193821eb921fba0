"""The poisoning retrains on the executor seam: every victim, cross-validation fold and
sanitizer retrain of :func:`run_poisoning` / :func:`run_poisoning_experiment` /
``dlsec sanitize`` is a named task (a recording executor sees them, in two batched maps),
the same training as before; and (slow) a 2-worker local Ray cluster gives bit-identical
models and the same metrics and command output as the sequential run."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import torch
from hand_models import weights_sha256

from dlsec.attacks.poisoning import random_flip
from dlsec.cli import main
from dlsec.defenses.sanitization import SanitizerSettings, model_factory, sanitize, train_on
from dlsec.executor import Executor, SequentialExecutor
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios.poisoning import (
    PoisoningOptions,
    Sizes,
    run_poisoning,
    run_poisoning_experiment,
    sanitize_dataset,
)
from dlsec.training import TrainConfig

CFG = TrainConfig(epochs=2, lr=3e-3, seed=5)


class Recording(SequentialExecutor):
    """Runs the tasks here, or on ``inner``; keeps each map's task names and every result."""

    def __init__(self, inner: Executor | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.maps: list[list[str]] = []
        self.results: list[Any] = []

    def map(self, fn: Any, tasks: Any) -> list[Any]:
        self.maps.append([name for name, _ in tasks])
        out = self.inner.map(fn, tasks) if self.inner is not None else super().map(fn, tasks)
        self.results.extend(out)
        return out


@pytest.fixture(scope="module")
def small(digits):
    """600 digits training samples (the tasks stay fast)."""
    import dataclasses

    return dataclasses.replace(digits, x_train=digits.x_train[:600], y_train=digits.y_train[:600])


@pytest.fixture(scope="module")
def flip(small):
    return random_flip(small.x_train, small.y_train, rate=0.2,
                       generator=torch.Generator().manual_seed(0))


def _experiment(ds, poison, executor):
    return run_poisoning_experiment(ds, poison, config=CFG, sanitizers=("cleanlab", "knn"),
                                    settings=SanitizerSettings(folds=2), executor=executor)


def test_experiment_trains_every_model_as_a_named_task(small, flip) -> None:
    rec = Recording()
    exp = _experiment(small, flip, rec)
    pre = "poisoning/random-flip/0.2"
    assert rec.maps == [["poisoning/clean", f"{pre}/victim", f"{pre}/fold0", f"{pre}/fold1"],
                        [f"{pre}/cleanlab/retrain", f"{pre}/knn/retrain"]]
    # each task is the training the experiment stood for (train_on under the recipe's seed)
    make = model_factory("simplenet", input_shape=small.input_shape, classes=small.classes)
    clean, victim = rec.results[0][0], rec.results[1][0]
    assert weights_sha256(clean) == weights_sha256(
        train_on(small.x_train, small.y_train, make_model=make, config=CFG))
    assert weights_sha256(victim) == weights_sha256(exp.poisoned_model)
    keep = exp.run("knn").result.keep()
    direct = train_on(flip.x[keep], flip.y[keep], make_model=make, config=CFG)
    assert weights_sha256(rec.results[-1][0]) == weights_sha256(direct)
    # the folds give cross_val_probs' probabilities: cleanlab flags the same samples
    ref = sanitize("cleanlab", flip.x, flip.y, num_classes=10, make_model=make, config=CFG,
                   settings=SanitizerSettings(folds=2))
    assert torch.equal(exp.run("cleanlab").result.mask, ref.mask)
    assert exp.run("cleanlab").result.mask.sum() > 20  # it flagged something
    assert 0.0 <= exp.poisoned_accuracy <= 1.0 and exp.clean_accuracy > 0.5


def _options() -> tuple[PoisoningOptions, Sizes]:
    o = PoisoningOptions(rates=[0.1, 0.3], flip_attacks=["random-flip"],
                         flip_sanitizers=["cleanlab"], backdoor_rate=0.1,
                         backdoor_sanitizers=["spectral"], collision_targets=0, folds=2)
    return o, Sizes(epochs=2, max_train=400, max_test=200)


def _context(digits, digits_net, executor: Executor) -> ScenarioContext:
    model, card = digits_net
    return ScenarioContext(model=model, card=card, dataset=digits, seed=3, executor=executor)


def test_run_poisoning_batches_its_trainings_in_two_maps(digits, digits_net) -> None:
    rec = Recording()
    o, sizes = _options()
    res = run_poisoning(_context(digits, digits_net, rec), o, sizes)
    f1, f3, bd = "poisoning/random-flip/0.1", "poisoning/random-flip/0.3", "poisoning/backdoor/0.1"
    assert rec.maps == [
        ["poisoning/clean", f"{f1}/victim", f"{f1}/fold0", f"{f1}/fold1",
         f"{f3}/victim", f"{f3}/fold0", f"{f3}/fold1", f"{bd}/victim"],
        [f"{f1}/cleanlab/retrain", f"{f3}/cleanlab/retrain", f"{bd}/spectral/retrain"],
    ]
    m = res.metrics
    assert {"random_flip_10_cleanlab_accuracy", "random_flip_30_accuracy_drop",
            "backdoor_asr", "backdoor_spectral_recall"} <= set(m)
    assert res.details["training_samples"] == 400
    again = run_poisoning(_context(digits, digits_net, SequentialExecutor()), o, sizes)
    assert again.metrics == m  # tasks seeded by their names: the same numbers again


def test_sanitize_dataset_trains_folds_or_its_model_as_tasks(small) -> None:
    for method, names in (("loss", ["sanitize/loss/fold0", "sanitize/loss/fold1"]),
                          ("activation", ["sanitize/activation/model"]), ("knn", [])):
        rec = Recording()
        res, _ = sanitize_dataset(small, method, epochs=1, folds=2, executor=rec)
        assert rec.maps == ([names] if names else [])
        plain, _ = sanitize_dataset(small, method, epochs=1, folds=2)
        assert torch.equal(res.mask, plain.mask) and torch.equal(res.scores, plain.scores)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sanitize_command_rejects_bad_executor_settings(tmp_path, capsys, one_line_error) -> None:
    out = tmp_path / "kept.npz"
    assert main(["sanitize", "--dataset", "digits", "--out", str(out), "--workers", "0"]) == 2
    one_line_error(capsys.readouterr().err, "--workers")
    port = _closed_port()
    assert main(["sanitize", "--dataset", "digits", "--out", str(out), "--ray-address",
                 f"127.0.0.1:{port}", "-q"]) == 2
    one_line_error(capsys.readouterr().err, "no Ray cluster answers")
    assert list(tmp_path.iterdir()) == []  # nothing written


# -- sequential vs a 2-worker local Ray cluster (slow: Ray and its workers start in 5-70 s) ---
@pytest.mark.slow
def test_poisoning_on_ray_is_bit_identical(digits, digits_net, small, flip,
                                           ray_cluster) -> None:
    o, sizes = _options()
    runs = {}
    for where, inner in (("here", None), ("ray", ray_cluster)):
        rec = Recording(inner)
        res = run_poisoning(_context(digits, digits_net, rec), o, sizes)
        exp = _experiment(small, flip, rec)
        runs[where] = (rec.maps, [weights_sha256(m) for m, _ in rec.results], res.metrics,
                       [(r.method, r.accuracy, r.detection) for r in exp.sanitized],
                       exp.poisoned_accuracy)
    assert runs["ray"] == runs["here"]
    assert len(runs["here"][1]) == 11 + 6  # run_poisoning's, then the experiment's models


@pytest.mark.slow
def test_sanitize_command_with_workers_gives_the_same_output(ray_cluster, tmp_path,
                                                             capsys) -> None:
    """``dlsec sanitize --workers 2`` (the module's cluster, already running, is used and
    left running) prints and writes the same as ``--workers 1``."""
    import numpy as np

    poisoned = tmp_path / "p.npz"
    assert main(["poison", "random-flip", "--out", str(poisoned), "--rate", "0.2"]) == 0
    capsys.readouterr()
    runs = []
    for workers in ("1", "2"):
        kept, scores = tmp_path / f"k{workers}.npz", tmp_path / f"s{workers}.json"
        assert main(["sanitize", "--dataset", f"npz:{poisoned}", "--method", "cleanlab",
                     "--folds", "3", "--epochs", "3", "--out", str(kept), "--scores-out",
                     str(scores), "--workers", workers, "-q"]) == 0
        with np.load(kept) as arch:
            y = arch["y"].tobytes()
        line = capsys.readouterr().out.replace(str(kept), "KEPT")
        runs.append((line, json.loads(scores.read_text()), y))
    assert runs[0] == runs[1]
    assert "recall" in runs[0][0] and sum(runs[0][1]["flagged"]) > 50
    import ray

    assert ray.is_initialized()  # the command did not stop a cluster it did not start
