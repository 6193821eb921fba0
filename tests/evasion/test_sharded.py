"""The robustness ensemble and the black-box query attacks sharded across torchrun ranks
(gloo on CPU): the gathered result is the one-process run's with the same block size,
point for point, and a killed sharded ensemble resumes per rank to the same result."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlsec.models import save
from dlsec.scenarios.sharding import Shard, ShardingError, block_ranges, block_seed
from dlsec.scenarios.whitebox import evaluate_robustness

POINTS, BLOCK, EPS = 120, 32, 0.1

# run under torchrun: the ensemble on the first POINTS digits test points, sharded; every
# rank writes the sha256 of its gathered masks and adversarials (a test's own check that
# the ranks agree); KILL_AFTER=k makes rank 1 die after its k-th state save
DRIVER = """
import hashlib, json, os, sys
import torch
from dlsec.data import load_dataset
from dlsec.models import load
from dlsec.scenarios.sharding import current_shard
from dlsec.scenarios.whitebox import ensemble as ens
from dlsec.scenarios.whitebox import evaluate_robustness

torch.set_num_threads(1)
model_dir, out, state, points, block, eps = sys.argv[1:7]
shard = current_shard(block=int(block))
kill = int(os.environ.get("KILL_AFTER", "0"))
if kill and shard.rank == 1:
    save, saves = ens._State.save, []
    def dying_save(self, path, fingerprint):
        save(self, path, fingerprint)
        saves.append(path)
        if len(saves) == kill:
            os._exit(3)
    ens._State.save = dying_save
model, card = load(model_dir)
ds = load_dataset("digits", seed=0)
n = int(points)
rep = evaluate_robustness(model, ds.x_test[:n], ds.y_test[:n], eps=[float(eps)], card=card,
                          generator=torch.Generator().manual_seed(7), state_path=state,
                          progress=False, shard=shard)
def sha(t):
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
with open(os.path.join(out, f"rank{shard.rank}.json"), "w") as fh:
    json.dump({"fooled_by": sha(rep.fooled_by), "x_adv": sha(rep.x_adv),
               "robust": int(rep.robust.sum()), "robust_accuracy": rep.robust_accuracy,
               "stage_accuracy": rep.stage_accuracy, "resumed": rep.resumed,
               "block_size": rep.block_size}, fh)
"""


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- fast: the shares, the seeds, the state files ----------------------------------------------
def test_ranks_take_contiguous_whole_blocks() -> None:
    # 359 points in blocks of 64: 6 blocks, 3 per rank
    assert Shard(0, 2, 64).bounds(359) == (0, 192)
    assert Shard(1, 2, 64).bounds(359) == (192, 359)
    # no block given: one block per rank, ceil(359 / 2) = 180
    assert Shard(1, 2).resolve(359).block == 180
    assert [Shard(r, 2).bounds(359) for r in range(2)] == [(0, 180), (180, 359)]
    # 3 ranks, 2 blocks: the middle rank gets none (an empty share, not an error)
    assert [Shard(r, 3, 64).bounds(100) for r in range(3)] == [(0, 0), (0, 64), (64, 100)]
    assert block_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_block_seeds_and_state_paths() -> None:
    seeds = {block_seed(5, b) for b in range(1000)} | {block_seed(6, b) for b in range(1000)}
    assert len(seeds) == 2000 and all(0 <= s < 2**62 for s in seeds)
    assert Shard(1, 2).state_path("/tmp/run/ens.st") == Path("/tmp/run/ens.st.rank1-of-2")
    for bad in (lambda: Shard(0, 2, 0), lambda: Shard(2, 2), lambda: block_ranges(5, 0)):
        with pytest.raises(ShardingError):
            bad()


def test_block_path_is_resumable_and_seeded_per_block(digits, digits_net, tmp_path) -> None:
    """One process, blocks of 32: the report names its block size and a rerun from the
    state file resumes to the same points."""
    model, card = digits_net
    x, y = digits.x_test[:POINTS], digits.y_test[:POINTS]
    kw = {"eps": [EPS], "card": card, "attacks": ["apgd-ce", "apgd-restarts"], "progress": False}
    state = tmp_path / "ens.st"
    a = evaluate_robustness(model, x, y, generator=torch.Generator().manual_seed(7),
                            state_path=state, block_size=BLOCK, **kw)
    b = evaluate_robustness(model, x, y, generator=torch.Generator().manual_seed(7),
                            state_path=state, block_size=BLOCK, **kw)
    assert a.block_size == BLOCK and a.summary()["block_size"] == BLOCK
    assert not a.resumed and b.resumed
    assert _sha(a.fooled_by) == _sha(b.fooled_by) and _sha(a.x_adv) == _sha(b.x_adv)
    # the attack does something on this model at eps 0.1 (robust well below clean)
    assert a.robust_accuracy[0] < a.clean_accuracy - 0.2
    plain = evaluate_robustness(model, x, y, generator=torch.Generator().manual_seed(7), **kw)
    assert plain.block_size is None and "block_size" not in plain.summary()


# -- torchrun, 2 processes on gloo ---------------------------------------------------------------
def _torchrun(tmp_path: Path, model_dir: Path, out: Path, state: Path, **env: str) -> int:
    out.mkdir(exist_ok=True)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           str(driver), str(model_dir), str(out), str(state), str(POINTS), str(BLOCK), str(EPS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    if proc.returncode != 0 and not env:
        raise AssertionError(proc.stderr[-3000:])
    return proc.returncode


@pytest.mark.slow
def test_two_ranks_gather_the_one_process_result_and_resume_per_rank(
    digits, digits_net, tmp_path
) -> None:
    model, card = digits_net
    model_dir = tmp_path / "model"
    save(model, card, model_dir)
    one = evaluate_robustness(model, digits.x_test[:POINTS], digits.y_test[:POINTS], eps=[EPS],
                              card=card, generator=torch.Generator().manual_seed(7),
                              progress=False, block_size=BLOCK)
    expect = {"fooled_by": _sha(one.fooled_by), "x_adv": _sha(one.x_adv),
              "robust": int(one.robust.sum()), "robust_accuracy": one.robust_accuracy,
              "stage_accuracy": one.stage_accuracy, "block_size": BLOCK}
    assert 0 < int(one.robust.sum()) < POINTS - 20  # the ensemble fools a good share

    out = tmp_path / "full"
    _torchrun(tmp_path, model_dir, out, tmp_path / "full.st")
    for rank in (0, 1):  # every rank holds the whole, one-process result
        got = json.loads((out / f"rank{rank}.json").read_text())
        assert {k: got[k] for k in expect} == expect
        assert got["resumed"] is False
    assert sorted(p.name for p in tmp_path.glob("full.st*")) == [
        "full.st.rank0-of-2", "full.st.rank1-of-2"]
    # each rank attacked (and saved) only its own blocks: 2 of 32, and 32 + 24
    from safetensors import safe_open

    for rank, share in ((0, 64), (1, 56)):
        with safe_open(str(tmp_path / f"full.st.rank{rank}-of-2"), framework="pt") as fh:
            assert tuple(fh.get_tensor("fooled_by").shape) == (1, share)

    # rank 1 dies after its second saved stage (of 4); torchrun stops rank 0 too
    killed = tmp_path / "killed"
    state = tmp_path / "k.st"
    assert _torchrun(tmp_path, model_dir, killed, state, KILL_AFTER="2") != 0
    assert not (killed / "rank0.json").exists()
    assert (tmp_path / "k.st.rank1-of-2").exists()
    _torchrun(tmp_path, model_dir, killed, state)  # the rerun resumes each rank's own state
    for rank in (0, 1):
        got = json.loads((killed / f"rank{rank}.json").read_text())
        assert {k: got[k] for k in expect} == expect
        assert got["resumed"] is True


# the black-box query attacks (Square on scores, HopSkipJump on labels) on 40 points in
# blocks of 10, sharded; each rank writes the sha256 of the gathered per-point results.
# Optional: the attacks (comma-separated) and a state file; KILL_AFTER=k makes rank 1 die
# after its k-th saved block
BB_DRIVER = """
import hashlib, json, os, sys
import torch
from dlsec.data import load_dataset
from dlsec.models import load
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios import blackbox as bb
from dlsec.scenarios.blackbox import QueryOptions, query_attacks
from dlsec.scenarios.sharding import current_shard
from dlsec.threat import ThreatModel

torch.set_num_threads(1)
model_dir, out = sys.argv[1:3]
attacks = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("square", "hsja")
state = sys.argv[4] if len(sys.argv) > 4 else None
shard = current_shard(block=10)
kill = int(os.environ.get("KILL_AFTER", "0"))
if kill and shard.rank == 1:
    put, puts = bb._BlockStore.put, []
    def dying_put(self, *args):
        put(self, *args)
        puts.append(args[1])
        if len(puts) == kill:
            os._exit(3)
    bb._BlockStore.put = dying_put
model, card = load(model_dir)
ctx = ScenarioContext(model=model, card=card, dataset=load_dataset("digits", seed=0), seed=3,
                      threat=ThreatModel.from_card(card, eps=(0.1, 0.2)))
res = query_attacks(ctx, QueryOptions(attacks=attacks, samples=40, max_queries=150,
                                      early_stop=False, state_path=state), shard=shard)
def sha(t):
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
got = {name: [[sha(r.success), sha(r.queries), sha(r.x_adv), int(r.success.sum())]
              + ([sha(r.trace_dist)] if r.trace_dist is not None else [])
              for r in sweep.results] + [sweep.queries_total]
       for name, sweep in res.artifacts["sweeps"].items()}
with open(os.path.join(out, f"rank{shard.rank}.json"), "w") as fh:
    json.dump({"sweeps": got, "metrics": res.metrics,
               "state": res.details.get("state")}, fh)
"""


def _bb_torchrun(tmp_path: Path, model_dir: Path, out: Path, *args: str,
                 **env: str) -> subprocess.CompletedProcess[str]:
    out.mkdir(exist_ok=True)
    driver = tmp_path / "bb_driver.py"
    driver.write_text(BB_DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           str(driver), str(model_dir), str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.mark.slow
def test_two_ranks_gather_the_query_attacks_of_one_process(digits, digits_net, tmp_path) -> None:
    from dlsec.scenarios import ScenarioContext
    from dlsec.scenarios.blackbox import QueryOptions, query_attacks
    from dlsec.threat import ThreatModel

    model, card = digits_net
    model_dir = tmp_path / "model"
    save(model, card, model_dir)
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=3,
                          threat=ThreatModel.from_card(card, eps=(0.1, 0.2)))
    res = query_attacks(ctx, QueryOptions(attacks=("square", "hsja"), samples=40,
                                          max_queries=150, early_stop=False, block_size=10))
    expect = {name: [[_sha(r.success), _sha(r.queries), _sha(r.x_adv), int(r.success.sum())]
                     + ([_sha(r.trace_dist)] if r.trace_dist is not None else [])
                     for r in sweep.results] + [sweep.queries_total]
              for name, sweep in res.artifacts["sweeps"].items()}
    # both attacks fool some points and not all at eps 0.1, more at 0.2
    for name in ("square", "hsja"):
        fooled = [row[3] for row in expect[name][:2]]
        assert 0 < fooled[0] <= fooled[1] <= 40, (name, fooled)
    out = tmp_path / "bb"
    proc = _bb_torchrun(tmp_path, model_dir, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((out / f"rank{rank}.json").read_text())
        assert got["sweeps"] == expect
        assert got["metrics"] == res.metrics


@pytest.mark.slow
def test_killed_rank_of_a_query_attack_resumes_to_the_one_process_result(
    digits, digits_net, tmp_path
) -> None:
    """Square sharded in blocks of 10 over 40 points (2 blocks per rank) with a state
    file: rank 1 dies after saving its first block; the rerun takes the 3 saved blocks
    (rank 0's two, rank 1's one) and gathers the one-process result."""
    from dlsec.scenarios import ScenarioContext
    from dlsec.scenarios.blackbox import QueryOptions, query_attacks
    from dlsec.threat import ThreatModel

    model, card = digits_net
    model_dir = tmp_path / "model"
    save(model, card, model_dir)
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=3,
                          threat=ThreatModel.from_card(card, eps=(0.1, 0.2)))
    res = query_attacks(ctx, QueryOptions(attacks=("square",), samples=40, max_queries=150,
                                          early_stop=False, block_size=10))
    sweep = res.artifacts["sweeps"]["square"]
    expect = {"square": [[_sha(r.success), _sha(r.queries), _sha(r.x_adv), int(r.success.sum())]
                         for r in sweep.results] + [sweep.queries_total]}
    assert 0 < expect["square"][0][3] < 40  # Square fools some points at eps 0.1, not all
    out, state = tmp_path / "bbk", tmp_path / "sq.st"
    killed = _bb_torchrun(tmp_path, model_dir, out, "square", str(state), KILL_AFTER="1")
    assert killed.returncode != 0
    assert not (out / "rank0.json").exists()
    from safetensors import safe_open

    def saved_blocks(rank: int) -> list[str]:
        with safe_open(str(tmp_path / f"sq.st.rank{rank}-of-2"), framework="pt") as fh:
            return sorted(k for k in fh.keys() if k.endswith("/spent"))

    assert saved_blocks(1) == ["square/2/spent"]  # rank 1 owns blocks 2 and 3
    proc = _bb_torchrun(tmp_path, model_dir, out, "square", str(state))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((out / f"rank{rank}.json").read_text())
        assert got["sweeps"] == expect
        assert got["metrics"] == res.metrics
        # rank 1's saved block, and whatever rank 0 saved before torchrun stopped it
        assert 1 <= got["state"]["resumed_blocks"] <= 3 and not got["state"]["replaced"]
    assert saved_blocks(1) == ["square/2/spent", "square/3/spent"]
    assert saved_blocks(0) == ["square/0/spent", "square/1/spent"]


@pytest.mark.slow
def test_evaluate_command_under_torchrun(digits_net, tmp_path) -> None:
    """``dlsec evaluate`` under torchrun: one block per process (40 of 80 points), printed
    once by rank 0, the same JSON as one process with ``--block-size 40``."""
    model, card = digits_net
    save(model, card, tmp_path / "model")
    args = ["evaluate", "--model-dir", str(tmp_path / "model"), "--eps", "0.1", "--samples",
            "80", "--attacks", "apgd-ce,apgd-restarts", "--threads", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "dlsec.cli", *args, "--block-size", "40",
                          "--out", str(tmp_path / "one.json")],
                         capture_output=True, text=True, timeout=240, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                          "-m", "dlsec.cli", *args, "--out", str(tmp_path / "two.json"),
                          "--state", str(tmp_path / "ens.st")],
                         capture_output=True, text=True, timeout=240, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("80 points, clean accuracy") == 1
    assert "2 process(es), blocks of 40 points" in two.stdout
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    keep = ("clean_accuracy", "robust_accuracy", "stage_accuracy", "block_size")
    assert {k: a[k] for k in keep} == {k: b[k] for k in keep} and b["block_size"] == 40
    assert sorted(p.name for p in tmp_path.glob("ens.st*")) == [
        "ens.st.rank0-of-2", "ens.st.rank1-of-2"]


def test_launched_shard_reads_torchrun_env_and_checks_its_own_state_file(
    monkeypatch, tmp_path, one_line_error, capsys
) -> None:
    from dlsec.cli import main
    from dlsec.scenarios.sharding import launched_shard

    monkeypatch.delenv("RANK", raising=False)
    assert launched_shard() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_shard() == Shard(1, 2)
    # rank 1's state file is its own: a foreign file there is refused before any work
    foreign = tmp_path / "ens.st.rank1-of-2"
    foreign.write_text("not a state")
    args = ["evaluate", "--model-dir", str(tmp_path / "missing"), "--eps", "0.1",
            "--state", str(tmp_path / "ens.st"), "-q"]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, "ens.st.rank1-of-2 is not a dlsec evaluation state")
    assert foreign.read_text() == "not a state"
