"""Square Attack (Linf and L2) through an oracle: schedule, initializations, success on
digits, counting, budgets, determinism and the exact fingerprints of sent inputs."""

from __future__ import annotations

import struct

import pytest
import torch
import torchattacks

from dlsec.attacks.blackbox import SquareAttack, median
from dlsec.attacks.blackbox.square import fingerprint, l2_bump, p_selection
from dlsec.attacks.core import AttackError
from dlsec.threat import LocalOracle


@pytest.fixture(scope="module")
def net(bb_net):
    return bb_net


@pytest.fixture(scope="module")
def points(bb_points):
    return bb_points


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_p_schedule_is_the_papers() -> None:
    # 10,000 iterations: p_init up to 10, halved after 10, 50, 200, ..., 8000
    assert p_selection(0.05, 0, 10_000) == 0.05
    assert p_selection(0.05, 10, 10_000) == 0.05
    assert p_selection(0.05, 11, 10_000) == 0.025
    assert p_selection(0.05, 200, 10_000) == 0.05 / 4
    assert p_selection(0.05, 201, 10_000) == 0.05 / 8
    assert p_selection(0.05, 9_999, 10_000) == 0.05 / 512
    # rescaled to the budget: iteration 2 of 1,000 is iteration 20 of 10,000
    assert p_selection(0.05, 1, 1_000) == 0.05
    assert p_selection(0.05, 2, 1_000) == 0.025
    assert p_selection(0.1, 500, 1_000) == 0.1 / 128


def test_initialisation_is_vertical_stripes_and_costs_one_query(net) -> None:
    model, card = net
    x = torch.full((6, 1, 8, 8), 0.5)
    y = torch.zeros(6, dtype=torch.int64)
    oracle = LocalOracle(model, card=card)
    res = SquareAttack(max_queries=1)(oracle, x, y, generator=_gen(), eps=0.1)
    d = res.x_adv - x
    assert torch.allclose(d.abs(), torch.full_like(d, 0.1))
    assert torch.equal(d, d[:, :, :1, :].expand_as(d))  # constant down each column
    assert bool((d[:, 0, 0] > 0).any()) and bool((d[:, 0, 0] < 0).any())
    assert res.queries.tolist() == [1] * 6 and oracle.queries_total == 6


def test_square_linf_fools_digits_with_few_queries_and_counts_exactly(net, points, counting) -> None:
    model, card = net
    x, y = points
    counter = counting(LocalOracle(model, card=card), y)
    res = SquareAttack(max_queries=1000)(counter, x, y, generator=_gen(), eps=0.2)
    # the target: >= 90% success, median queries <= 100 (measured: 93%, 27)
    assert res.success_rate >= 0.9
    assert res.median_queries <= 100
    # inside the ball and the bounds; successes are real
    assert float(res.linf.max()) <= 0.2 + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    with torch.inference_mode():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(pred != y, res.success)
    # the attack's count is the oracle's and an independent counter's, per point too
    assert res.queries_total == counter.rows == counter.inner.queries_total
    assert torch.equal(res.queries, counter.per_id)
    assert torch.equal(counter.inner.queries_for(torch.arange(len(y))), res.queries)
    assert counter.after_fooled == 0  # a fooled point is never queried again
    assert bool((res.queries <= 1000).all())
    # no point is sent an input twice: a repeated candidate's answer is already known
    assert counter.repeats == 0
    # ... which saves queries on the points Square cannot fool (999 iterations each)
    assert bool((res.queries[~res.success] < 1000).all())


class _DistinctToSuccess(torch.nn.Module):
    """Wraps a logits model for a peer attack: attributes each row to the original within
    ``eps`` (Linf) of it and counts, per point, the distinct inputs (exact fingerprints) up
    to and including its first misclassified row (-1 while none)."""

    def __init__(self, net: torch.nn.Module, x0: torch.Tensor, y0: torch.Tensor, eps: float):
        super().__init__()
        self.net, self.x0, self.y0, self.eps = net, x0.flatten(1), y0, eps
        self.seen: list[set[int]] = [set() for _ in range(len(y0))]
        self.to_success = torch.full((len(y0),), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        near = torch.cdist(x.flatten(1), self.x0, p=float("inf")) <= self.eps + 1e-6
        assert bool((near.sum(1) == 1).all()), "a row must lie in exactly one point's ball"
        owner = near.to(torch.int64).argmax(1)
        wrong = out.argmax(1) != self.y0[owner]
        for i, f, w in zip(owner.tolist(), fingerprint(x).tolist(), wrong.tolist(), strict=True):
            if self.to_success[i] < 0:
                self.seen[i].add(f)
                if w:
                    self.to_success[i] = len(self.seen[i])
        return out


def test_square_linf_agrees_with_torchattacks_square(net, points) -> None:
    # Peer agreement with torchattacks' Square (Linf, the same margin loss and schedule) on
    # the same model and points, eps 0.2, 1,000 queries per point (torchattacks: the start
    # plus 999 iterations), p_init 0.05 for both. Points whose eps-balls overlap another
    # point's are left out so that each of torchattacks' rows has one owner.
    # torchattacks charges a query for every iteration, also when the drawn square leaves
    # the input unchanged or repeats an input; dlsec never sends those. So the comparison
    # is dlsec's charged queries against torchattacks' distinct inputs up to success.
    # Measured on the 84 points (AVX-512 kernels; seeds 0-5 for both sides): success
    # 0.917-0.976 for dlsec and 0.929-0.976 for torchattacks; median queries 25-32 for
    # dlsec, 25-32 distinct (51-62 charged) for torchattacks. Seed 0: dlsec 0.940 / 32,
    # torchattacks 0.964 / 25 distinct (51 charged), the same under
    # ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE.
    model, card = net
    x, y = points
    eps = 0.2
    gap = torch.cdist(x.flatten(1), x.flatten(1), p=float("inf"))
    gap.fill_diagonal_(float("inf"))
    alone = gap.amin(1) > 2 * eps
    x, y = x[alone], y[alone]
    assert len(y) >= 80  # 84 of the 100
    ours = SquareAttack(max_queries=1000)(LocalOracle(model, card=card), x, y,
                                                   generator=_gen(), eps=eps)
    peer_model = _DistinctToSuccess(model, x, y, eps)
    peer = torchattacks.Square(peer_model, norm="Linf", eps=eps, n_queries=999, p_init=0.05,
                               seed=0)
    peer.init_hyperparam(x)
    torch.manual_seed(0)
    with torch.no_grad():
        charged, x_peer = peer.attack_single_run(x.clone(), y.clone())
        peer_fooled = model(x_peer).argmax(1) != y
    assert float((x_peer - x).abs().max()) <= eps + 1e-6
    assert bool((peer_model.to_success[peer_fooled] > 0).all())
    peer_rate = float(peer_fooled.double().mean())
    peer_distinct = median(peer_model.to_success[peer_fooled])
    # success rates within 0.08 (the spread over seeds: 0.06), medians within a factor 1.5
    # (the spread over seeds of both sides: 25 / 32 to 32 / 25); the same seed on another
    # float kernel set is one more draw from that spread
    assert abs(ours.success_rate - peer_rate) <= 0.08
    assert peer_distinct / 1.5 <= ours.median_queries <= peer_distinct * 1.5
    # ... and dlsec's charge is below torchattacks' (which pays for repeats too)
    assert ours.median_queries < median(charged[peer_fooled])


def test_budgets_are_enforced(net, points) -> None:
    model, card = net
    x, y = points[0][:20], points[1][:20]
    oracle = LocalOracle(model, card=card)
    res = SquareAttack(max_queries=7)(oracle, x, y, generator=_gen(), eps=0.05)
    assert int(res.queries.max()) <= 7 and oracle.queries_total == res.queries_total
    # a global oracle budget stops the attack without an error and without overspending
    capped = LocalOracle(model, card=card, budget=55)
    res = SquareAttack(max_queries=1000)(capped, x, y, generator=_gen(), eps=0.05)
    assert capped.queries_total == res.queries_total == 55


def test_same_seed_same_result(net, points) -> None:
    model, card = net
    x, y = points[0][:30], points[1][:30]
    runs = [
        SquareAttack(max_queries=200)(
            LocalOracle(model, card=card), x, y, generator=_gen(s), eps=0.1,
        )
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert torch.equal(runs[0].queries, runs[1].queries)
    assert not torch.equal(runs[0].x_adv, runs[2].x_adv)


def test_l2_bump_is_the_papers_two_lobed_pseudo_gaussian() -> None:
    # s = 3: a 1 x 3 top lobe [1/4, 1 + 1/4, 1/4] and a 2 x 3 bottom lobe with the centre
    # ring (1) plus the outer ring (1/4), each normalised, the bottom one negated
    top = torch.tensor([[0.25, 1.25, 0.25]]) / 1.6875**0.5
    bottom = -torch.tensor([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]]) / 1.875**0.5
    expected = torch.cat([top, bottom]) / 2**0.5
    assert torch.allclose(l2_bump(3), expected, atol=1e-6)
    assert abs(float(l2_bump(7).norm()) - 1.0) < 1e-6
    assert float(l2_bump(7)[:3].min()) > 0 and float(l2_bump(7)[3:].max()) < 0


def test_l2_initialisation_has_norm_eps_and_costs_one_query(net) -> None:
    model, card = net
    x = torch.full((5, 1, 8, 8), 0.5)
    y = torch.zeros(5, dtype=torch.int64)
    oracle = LocalOracle(model, card=card)
    res = SquareAttack(norm="l2", max_queries=1)(oracle, x, y, generator=_gen(), eps=1.0)
    assert torch.allclose(res.l2, torch.ones(5), atol=1e-5)
    assert res.queries.tolist() == [1] * 5 and oracle.queries_total == 5
    # random signs per tile: the points get different perturbations
    assert not torch.equal(res.x_adv[0], res.x_adv[1])


def test_square_l2_fools_digits_and_counts_exactly(net, points, counting) -> None:
    model, card = net
    x, y = points
    counter = counting(LocalOracle(model, card=card), y)
    res = SquareAttack(norm="l2", max_queries=1000)(counter, x, y, generator=_gen(), eps=1.5)
    # measured: 97% success, median 18 queries (white-box PGD-L2 at 1.5: 100%)
    assert res.success_rate >= 0.9
    assert res.median_queries <= 100
    assert float(res.l2.max()) <= 1.5 + 1e-4
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    with torch.inference_mode():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(pred != y, res.success)
    assert res.queries_total == counter.rows and torch.equal(res.queries, counter.per_id)
    assert counter.after_fooled == 0
    # a smaller ball is harder: success grows with eps
    small = SquareAttack(norm="l2", max_queries=1000)(
        LocalOracle(model, card=card), x, y, generator=_gen(), eps=0.5,
    )
    assert small.success_rate < res.success_rate - 0.3


def test_success_at_budget_reads_the_curve_off_one_run(net, points) -> None:
    model, card = net
    x, y = points[0][:40], points[1][:40]
    full = SquareAttack(max_queries=300)(
        LocalOracle(model, card=card), x, y, generator=_gen(), eps=0.2,
    )
    curve = full.success_at([1, 10, 50, 300])
    assert curve == sorted(curve) and curve[-1] == full.success_rate
    # the same seed with a smaller budget makes the same moves: the curve is what a
    # shorter run would have reached (the schedule is rescaled, so compare at 1 query)
    one = SquareAttack(max_queries=1)(
        LocalOracle(model, card=card), x, y, generator=_gen(), eps=0.2,
    )
    assert curve[0] == one.success_rate


def test_bad_square_arguments() -> None:
    with pytest.raises(AttackError, match="norm"):
        SquareAttack(norm="l1")
    with pytest.raises(AttackError, match="max_queries"):
        SquareAttack(max_queries=0)


def test_square_takes_eps_at_call_time_one_or_a_list(net, points) -> None:
    """One call over a list of eps: each result is the single-eps call's (same generator
    state), and a bad or missing eps is refused."""
    model, card = net
    x, y = points[0][:20], points[1][:20]
    attack = SquareAttack(max_queries=100)
    with pytest.raises(AttackError, match="eps"):
        attack(LocalOracle(model, card=card), x, y, eps=-1.0)
    with pytest.raises(AttackError, match="needs eps"):
        attack(LocalOracle(model, card=card), x, y)
    oracle = LocalOracle(model, card=card)
    sweep = attack(oracle, x, y, eps=[0.2, 0.05], generator=_gen())
    assert sweep.eps == [0.2, 0.05] and sweep.queries_total == oracle.queries_total
    for e, r in zip(sweep.eps, sweep.results, strict=True):
        alone = attack(LocalOracle(model, card=card), x, y, eps=e, generator=_gen())
        assert torch.equal(alone.x_adv, r.x_adv) and torch.equal(alone.queries, r.queries)
    assert sweep.success_rate[0] >= sweep.success_rate[1] + 0.3  # measured 0.95 vs 0.15


_M64 = (1 << 64) - 1


def _mix64(h: int) -> int:
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _M64
    return h ^ (h >> 31)


def _reference_fingerprint(row: list[float]) -> int:
    """The fingerprint in Python integers: the row's float32 bytes (-0.0 as 0.0), padded to
    8-byte words; word j (from 1) plus mix(j * gamma), mixed; the sum modulo 2**64."""
    data = struct.pack(f"<{len(row)}f", *(v + 0.0 for v in row))
    data += bytes(-len(data) % 8)
    total = 0
    for j in range(len(data) // 8):
        word = int.from_bytes(data[8 * j : 8 * j + 8], "little")
        total += _mix64((word + _mix64((j + 1) * 0x9E3779B97F4A7C15 & _M64)) & _M64)
    total &= _M64
    return total - (1 << 64) if total >= 1 << 63 else total


def test_fingerprint_is_exact_integer_arithmetic_on_the_bytes() -> None:
    x = torch.rand(4, 1, 5, 7, generator=_gen(1))  # 35 floats: the last word is padded
    x[0, 0, 0, 0] = -0.0
    x[1, 0, 2, 3] = 0.0
    assert fingerprint(x).dtype == torch.int64
    assert fingerprint(x).tolist() == [_reference_fingerprint(r) for r in x.flatten(1).tolist()]
    # -0.0 and 0.0 are one input; a change of one ulp in one pixel is another
    same = x.clone()
    same[0, 0, 0, 0] = 0.0
    assert torch.equal(fingerprint(same), fingerprint(x))
    ulp = x.clone()
    ulp[2, 0, 4, 6] = torch.nextafter(ulp[2, 0, 4, 6], torch.tensor(2.0))
    assert (fingerprint(ulp) != fingerprint(x)).tolist() == [False, False, True, False]


def test_fingerprint_does_not_depend_on_the_batch_an_input_is_in() -> None:
    # a float projection of the same row rounds differently in different batch shapes;
    # the fingerprint of a row is the same alone, in any batch, order or memory layout
    x = torch.rand(64, 1, 28, 28, generator=_gen(2))
    full = fingerprint(x)
    assert torch.equal(torch.cat([fingerprint(x[i : i + 1]) for i in range(64)]), full)
    perm = torch.randperm(64, generator=_gen(3))
    assert torch.equal(fingerprint(x[perm]), full[perm])
    assert torch.equal(fingerprint(x[5:37]), full[5:37])
    mixed = torch.cat([torch.rand(100, 1, 28, 28, generator=_gen(4)), x[:7]])
    assert torch.equal(fingerprint(mixed)[100:], full[:7])
    strided = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not strided.is_contiguous() and torch.equal(fingerprint(strided), full)
    # different inputs, also one pixel apart: different fingerprints
    near = x.clone()
    near[:, 0, 14, 14] += 1e-3
    assert torch.cat([full, fingerprint(near)]).unique().numel() == 128


def test_square_never_sends_a_repeated_candidate(counting) -> None:
    # a model that answers class 0 everywhere: no candidate beats the initial stripes, so
    # each candidate is the stripes with one pixel flipped. On 4 x 4 images squares have
    # side 1 and their top-left corner lies in the first 3 x 3 pixels (as in the reference
    # code): 9 distinct candidates, then only repeats, which are never sent
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([5.0, 0.0]))
    x = torch.full((8, 1, 4, 4), 0.5)
    y = torch.zeros(8, dtype=torch.int64)
    oracle = LocalOracle(net, num_classes=2, input_shape=(1, 4, 4), bounds=(0.0, 1.0))
    counter = counting(oracle, y)
    res = SquareAttack(max_queries=200)(counter, x, y, generator=_gen(), eps=0.1)
    assert not bool(res.success.any())
    assert counter.repeats == 0
    assert res.queries.tolist() == [1 + 9] * 8 and counter.rows == 80
    # with a memory of 3 inputs, older candidates are forgotten and sent again
    counter = counting(LocalOracle(net, num_classes=2, input_shape=(1, 4, 4), bounds=(0.0, 1.0)), y)
    res = SquareAttack(max_queries=200, memory=3)(counter, x, y, generator=_gen(), eps=0.1)
    assert counter.repeats > 0 and res.queries_total == counter.rows
