"""Block-by-block resume of the query attacks (one process, ``block_size`` + a state
file), ``dlsec attack --block-size/--state``, and the padded tensor gather of
:meth:`Shard.gather` (two ranks simulated by threads over a fake ``torch.distributed``)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dlsec.cli import main
from dlsec.models import save
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios import blackbox as bb
from dlsec.scenarios.blackbox import QueryOptions, query_attacks
from dlsec.scenarios.sharding import Shard, ShardingError, pad_rows, unpad_rows
from dlsec.threat import ThreatModel

POINTS, BLOCK = 30, 10


def _sha(t: torch.Tensor | np.ndarray) -> str:
    a = t.contiguous().numpy() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
    return hashlib.sha256(a.tobytes()).hexdigest()


class Killed(Exception):
    """Stands for the process dying right after a block was saved."""


def _die_after(monkeypatch, saves: int) -> list[int]:
    """``_BlockStore.put`` saves, then dies after the ``saves``-th block; the blocks it
    saved are listed."""
    put, done = bb._BlockStore.put, []

    def dying_put(self, name, block, runs, spent):
        put(self, name, block, runs, spent)
        done.append(block)
        if len(done) == saves:
            raise Killed

    monkeypatch.setattr(bb._BlockStore, "put", dying_put)
    return done


def _digest(res) -> dict[str, list]:
    return {name: [[_sha(r.x_adv), _sha(r.success), _sha(r.queries)]
                   + ([_sha(r.trace_dist)] if r.trace_dist is not None else [])
                   for r in sweep.results] + [sweep.queries_total]
            for name, sweep in res.artifacts["sweeps"].items()}


def test_killed_blocked_run_resumes_to_the_uninterrupted_result(
    digits, bb_net, tmp_path, monkeypatch
) -> None:
    model, card = bb_net
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=3,
                          threat=ThreatModel.from_card(card, eps=(0.1, 0.2)))
    opts = {"attacks": ("square", "hsja"), "samples": POINTS, "max_queries": 120,
            "early_stop": False, "block_size": BLOCK}
    whole = query_attacks(ctx, QueryOptions(**opts))
    expect = _digest(whole)
    for name in ("square", "hsja"):  # both fool some points at eps 0.1, not all
        fooled = int(whole.artifacts["sweeps"][name].results[0].success.sum())
        assert 0 < fooled < POINTS, (name, fooled)

    state = tmp_path / "bb.st"
    with monkeypatch.context() as m:  # dies after square's 3 blocks and hsja's first
        saved = _die_after(m, 4)
        with pytest.raises(Killed):
            query_attacks(ctx, QueryOptions(**opts, state_path=state))
    assert saved == [0, 1, 2, 0] and state.exists()

    calls: list[int] = []  # the rerun attacks only hsja's 2 unfinished blocks
    attack_call = bb.BlackBoxAttack.__call__
    monkeypatch.setattr(bb.BlackBoxAttack, "__call__",
                        lambda self, o, x, *a, **k: calls.append(len(x)) or attack_call(
                            self, o, x, *a, **k))
    resumed = query_attacks(ctx, QueryOptions(**opts, state_path=state))
    assert calls == [BLOCK, BLOCK]
    assert resumed.details["state"] == {"resumed_blocks": 4, "replaced": False}
    assert _digest(resumed) == expect
    assert resumed.metrics == whole.metrics

    # other settings (another eps): the file is replaced, nothing taken from it
    other = ScenarioContext(model=model, card=card, dataset=digits, seed=3,
                            threat=ThreatModel.from_card(card, eps=(0.1, 0.3)))
    calls.clear()
    again = query_attacks(other, QueryOptions(**opts, state_path=state))
    assert again.details["state"] == {"resumed_blocks": 0, "replaced": True}
    assert len(calls) == 6
    with pytest.raises(bb.ScenarioError, match="block"):  # resume needs blocks
        query_attacks(ctx, QueryOptions(attacks=("square",), samples=5, state_path=state))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bb_net) -> Path:
    d = tmp_path_factory.mktemp("m")
    model, card = bb_net
    save(model, card, d)
    return d


def test_attack_command_block_size_and_state(model_dir, tmp_path, capsys, monkeypatch) -> None:
    base = ["attack", "square", "--model-dir", str(model_dir), "--eps", "0.1,0.2", "--samples",
            str(POINTS), "--max-queries", "150", "--quiet", "--block-size", str(BLOCK)]
    assert main([*base, "--out", str(tmp_path / "whole.npz")]) == 0
    printed = capsys.readouterr().out
    assert f"1 process(es), blocks of {BLOCK} points" in printed
    assert f"--block-size {BLOCK}" in printed

    state = tmp_path / "sq.st"
    args = [*base, "--state", str(state), "--out", str(tmp_path / "resumed.npz")]
    with monkeypatch.context() as m:
        _die_after(m, 2)
        with pytest.raises(Killed):
            main(args)
    assert not (tmp_path / "resumed.npz").exists()
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 finished block(s) resumed" in printed
    a, b = (np.load(tmp_path / f, allow_pickle=False) for f in ("whole.npz", "resumed.npz"))
    for key in ("x_adv", "success", "queries"):
        assert _sha(a[key]) == _sha(b[key]), key
    assert 0 < a["success"][0].sum() < POINTS  # Square fools some of the points
    rob = [line.split("robust accuracy ")[1] for line in printed.splitlines()
           if "robust accuracy" in line]
    assert len(rob) == 2


@pytest.mark.parametrize("extra,message", [
    (["--state", "{tmp}/s.st"], "--block-size"),  # one process resumes only by blocks
    (["--block-size", "5", "--state", "{tmp}/junk.st"], "is not a dlsec evaluation state"),
])
def test_attack_state_errors_are_one_line(model_dir, tmp_path, capsys, one_line_error,
                                          extra, message) -> None:
    junk = tmp_path / "junk.st"
    junk.write_text("not a state")
    args = ["attack", "square", "--model-dir", str(model_dir), "--eps", "0.1", "--samples",
            "5", "--max-queries", "10", "-q", *(a.format(tmp=tmp_path) for a in extra)]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, message)
    assert junk.read_text() == "not a state"  # never overwritten


def test_white_box_attack_takes_no_state(model_dir, tmp_path, capsys, one_line_error) -> None:
    assert main(["attack", "pgd", "--model-dir", str(model_dir), "--eps", "0.1",
                 "--block-size", "5"]) == 2
    one_line_error(capsys.readouterr().err, "--block-size", "pgd")


# -- the padded gather ---------------------------------------------------------------------------
def test_pad_and_unpad_rows() -> None:
    a, b = torch.arange(6.0).view(3, 2), torch.arange(10.0, 12.0).view(1, 2)
    pa, pb = pad_rows(a, 3), pad_rows(b, 3)
    assert pa.shape == pb.shape == (3, 2) and torch.equal(pb[1:], torch.zeros(2, 2))
    assert torch.equal(unpad_rows([pa, pb], [3, 1]), torch.cat([a, b]))
    assert unpad_rows([pad_rows(a[:0], 2), pb[:2]], [0, 1]).shape == (1, 2)
    with pytest.raises(ShardingError):
        pad_rows(a, 2)


class _FakeDist:
    """``torch.distributed``'s all_gather for ranks that are threads of one process."""

    def __init__(self, world: int) -> None:
        self.world, self.slots = world, [None] * world
        self.barrier, self.local = threading.Barrier(world), threading.local()

    def get_backend(self) -> str:
        return "gloo"

    def all_gather(self, outs, t) -> None:
        assert t.dtype != torch.bool and all(o.shape == t.shape for o in outs)
        self.slots[self.local.rank] = t.clone()
        self.barrier.wait()
        for o, s in zip(outs, self.slots, strict=True):
            o.copy_(s)
        self.barrier.wait()


def test_gather_moves_uneven_shares_as_padded_tensors(monkeypatch) -> None:
    import torch.distributed as dist

    fake = _FakeDist(3)
    monkeypatch.setattr(dist, "all_gather", fake.all_gather)
    monkeypatch.setattr(dist, "get_backend", fake.get_backend)
    gen = torch.Generator().manual_seed(0)
    full = torch.rand(4, 7, 3, generator=gen)  # points along dim 1: shares of 4, 0, 3
    mask = torch.rand(7, generator=gen) > 0.5
    cuts = [(0, 4), (4, 4), (4, 7)]
    got: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def rank(r: int) -> None:
        fake.local.rank = r
        lo, hi = cuts[r]
        shard = Shard(r, 3)
        got[r] = (shard.gather(full[:, lo:hi], dim=1), shard.gather(mask[lo:hi]))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == [0, 1, 2]
    for x, m in got.values():  # every rank: the whole, in order, same dtypes
        assert _sha(x) == _sha(full) and m.dtype == torch.bool and torch.equal(m, mask)
