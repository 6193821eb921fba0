"""Output policies: exact values on hand-checkable vectors, the statistics of the noisy
kinds, spec strings, and the Oracle applying them (tests/threat checks the old kinds)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlsec.errors import DlsecError
from dlsec.output_policies import POLICY_KINDS, OutputPolicy, PolicyError
from dlsec.threat import LocalOracle, OracleError

P = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.25, 0.65], [0.333, 0.334, 0.333]])


def _random_probs(n: int, c: int, seed: int, *, temperature: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * 3 / temperature, 1)


def test_scores_topk_rounded_label_exact() -> None:
    assert torch.equal(OutputPolicy().apply(P), P)
    top2 = OutputPolicy(kind="topk", k=2).apply(P)
    assert torch.equal(top2, torch.tensor([[0.5, 0.3, 0.0], [0.0, 0.25, 0.65], [0.333, 0.334, 0.0]]))
    top1 = OutputPolicy.parse("topk:1").apply(P)
    assert torch.equal(top1, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.65], [0.0, 0.334, 0.0]]))
    # k larger than the number of classes keeps everything
    assert torch.equal(OutputPolicy(kind="topk", k=9).apply(P), P)
    r1 = OutputPolicy.parse("rounded:1").apply(P)
    assert torch.allclose(r1, torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.6], [0.3, 0.3, 0.3]]),
                          atol=1e-6)  # 0.25 -> 0.2 and 0.65 -> 0.6: round half to even on x*10
    r2 = OutputPolicy(kind="rounded", decimals=2).apply(P)
    assert torch.allclose(r2, torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.25, 0.65], [0.33, 0.33, 0.33]]),
                          atol=1e-6)
    labels = OutputPolicy(kind="label").apply(P)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 2, 1]
    assert OutputPolicy(kind="label").returns_labels and not OutputPolicy().returns_labels
    # dtype and device of the scores are kept
    assert OutputPolicy(kind="topk", k=2).apply(P.double()).dtype == torch.float64


def test_noise_seeded_statistics_and_label_not_preserved() -> None:
    probs = torch.full((4000, 4), 0.25)
    probs[:, 0] = 0.4
    probs[:, 1:] = 0.2
    pol = OutputPolicy.parse("noise:0.05")
    a = pol.apply(probs, generator=torch.Generator().manual_seed(3))
    b = pol.apply(probs, generator=torch.Generator().manual_seed(3))
    c = pol.apply(probs, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.sum(1), torch.ones(4000), atol=1e-5)
    assert float(a.min()) >= 0.0
    # no clipping here (0.2 is 4 sigma from 0). Renormalising removes part of the noise:
    # y' - p ~ n - p * sum(n), variance sigma^2 (1 - 2p + C p^2), 0.84 sigma^2 for p = 0.4
    # and 0.76 sigma^2 for p = 0.2, so the deviation is 0.05 * sqrt(0.78) = 0.0442 (measured
    # 0.0452); asserted within 10%
    dev = (a - probs).std().item()
    assert 0.9 * 0.0442 < dev < 1.1 * 0.0442
    # the mean of the noisy scores is the true score (unbiased before the rescaling)
    assert abs(a[:, 0].mean().item() - 0.4) < 0.005
    # the label is not preserved: with a margin of 0.2 and sigma 0.05 the top class still
    # loses now and then (measured 0.8% of rows); with sigma 0.2 often (measured 45%)
    flipped_small = (a.argmax(1) != 0).float().mean().item()
    big = OutputPolicy(kind="noise", sigma=0.2).apply(probs, generator=torch.Generator().manual_seed(3))
    flipped_big = (big.argmax(1) != 0).float().mean().item()
    assert flipped_small < 0.05 and flipped_big > 0.2


def test_noise_row_clipped_to_zero_becomes_uniform() -> None:
    probs = torch.tensor([[1e-4, 1e-4, 1.0 - 2e-4]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    outs = torch.cat([OutputPolicy(kind="noise", sigma=50.0).apply(probs, generator=g)
                      for _ in range(200)])
    # the same draws again: the rows whose every noisy score is <= 0 must be uniform
    g = torch.Generator().manual_seed(0)
    noise = torch.cat([torch.randn((1, 3), generator=g, dtype=torch.float64) for _ in range(200)])
    all_zero = (probs + 50.0 * noise <= 0).all(1)
    assert 10 <= int(all_zero.sum()) <= 50  # each ~1/8 of rows; measured 28 of 200
    assert torch.equal(outs[all_zero], torch.full((int(all_zero.sum()), 3), 1.0 / 3,
                                                   dtype=torch.float64))
    assert torch.allclose(outs.sum(1), torch.ones(200, dtype=outs.dtype), atol=1e-12)
    assert float(outs.min()) >= 0.0


def test_reverse_sigmoid_formula_by_hand() -> None:
    # gamma = 1: sigmoid(logit(y)) = y, so y - r = (1 - beta) y + beta / 2 (eq. 3 and 4)
    y = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
    out = OutputPolicy(kind="reverse-sigmoid", beta=0.5, gamma=1.0).apply(y)
    raw = 0.5 * y + 0.25
    assert torch.allclose(out, raw / raw.sum(), atol=1e-6)
    assert torch.allclose(out, torch.tensor([[0.55 / 1.25, 0.4 / 1.25, 0.3 / 1.25]],
                                            dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("beta,gamma", [(0.2, 0.1), (0.5, 0.2), (0.7, 0.4), (1.0, 0.5),
                                        (0.9, 1.0), (0.5, 2.0)])
def test_reverse_sigmoid_keeps_label_and_changes_scores(beta: float, gamma: float) -> None:
    for temperature in (0.3, 1.0, 5.0):  # peaked to flat rows, 10 classes
        probs = _random_probs(1000, 10, seed=int(10 * beta + gamma * 100), temperature=temperature)
        out = OutputPolicy(kind="reverse-sigmoid", beta=beta, gamma=gamma).apply(probs)
        assert torch.equal(out.argmax(1), probs.argmax(1))
        assert torch.allclose(out.sum(1), torch.ones(1000, dtype=out.dtype), atol=1e-9)
        assert float(out.min()) >= 0.0
        # measured: mean L1 change 0.069 (beta 0.2, gamma 0.1, flat rows) to 1.68
        assert (out - probs).abs().sum(1).mean().item() > 0.05


def test_reverse_sigmoid_label_guard_is_needed() -> None:
    """The formula alone moves the label of a flat row when gamma < 1: a near-zero class
    (pushed up to ~beta/2) overtakes a top class of 0.26; the guard swaps it back."""
    y = torch.tensor([[0.26, 0.25, 0.25, 0.24 - 1e-6, 1e-6]], dtype=torch.float64)
    beta, gamma = 1.0, 0.1
    r = beta * (torch.sigmoid(gamma * torch.logit(y.clamp(1e-7, 1 - 1e-7))) - 0.5)
    assert int((y - r).argmax(1)) == 4  # the raw formula flips the label
    out = OutputPolicy(kind="reverse-sigmoid", beta=beta, gamma=gamma).apply(y)
    assert int(out.argmax(1)) == 0
    raw = (y - r).clamp(0, 1)
    raw = raw / raw.sum()
    # the same values, two of them swapped
    assert torch.allclose(out.sort().values, raw.sort().values, atol=1e-12)
    assert abs(float(out[0, 0]) - float(raw[0, 4])) < 1e-12


def test_spec_round_trip_and_errors() -> None:
    for spec in ("scores", "topk:3", "rounded:0", "rounded:4", "label", "noise:0.05",
                 "reverse-sigmoid:0.7,0.4", "reverse-sigmoid:1.0,2.5", "topk-rounded:1,2"):
        p = OutputPolicy.parse(spec)
        assert OutputPolicy.parse(p.spec()) == p
        assert p.spec() == spec
    assert OutputPolicy.parse(" TopK:2 ").k == 2
    assert {OutputPolicy.parse(s).kind for s in ("scores", "topk:1", "rounded:1", "label",
                                                 "noise:1", "reverse-sigmoid:1,1",
                                                 "topk-rounded:2,1")} == set(POLICY_KINDS)
    # top-k, then rounded: [0.123456, 0.8, 0.076544] -> only the 0.8 kept, to 1 decimal
    out = OutputPolicy.parse("topk-rounded:1,1").apply(torch.tensor([[0.123456, 0.8, 0.076544]]))
    assert out.tolist() == [[0.0, 0.800000011920929, 0.0]]
    two = OutputPolicy.parse("topk-rounded:2,2").apply(torch.tensor([[0.123456, 0.8, 0.076544]]))
    assert [round(v, 6) for v in two[0].tolist()] == [0.12, 0.8, 0.0]
    for bad in ("topk-rounded:1", "topk-rounded:0,2", "topk-rounded:1,-1", "", "softmax", "topk", "topk:", "topk:0", "topk:1.5", "rounded:-1",
                "label:2", "scores:1", "noise:0", "noise:-1", "noise:nan", "noise:abc",
                "reverse-sigmoid:0.5", "reverse-sigmoid:0,1", "reverse-sigmoid:1.5,1",
                "reverse-sigmoid:0.5,0", "reverse-sigmoid:0.5,1,2"):
        with pytest.raises(PolicyError) as e:
            OutputPolicy.parse(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(PolicyError, match="valid forms: scores, topk:K"):
        OutputPolicy.parse("softmax")
    assert issubclass(PolicyError, DlsecError)
    with pytest.raises(PolicyError, match=r"shape \(n, C\)"):
        OutputPolicy().apply(torch.ones(3))


class _Fixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])


def _oracle(**kw) -> LocalOracle:
    return LocalOracle(_Fixed(), num_classes=3, input_shape=(2,), bounds=(0.0, 1.0), **kw)


def test_oracle_new_kinds_through_policies() -> None:
    probs = torch.softmax(X @ _Fixed().w.detach(), 1)
    rs = OutputPolicy.parse("reverse-sigmoid:0.7,0.4")
    o = _oracle(output=rs)
    assert o.output == "reverse-sigmoid" and o.policy is rs
    assert torch.allclose(o.query(X), rs.apply(probs), atol=1e-6)
    assert o.query_labels(X).tolist() == probs.argmax(1).tolist() == [0, 1, 0]
    # noise: seeded per oracle, reproducible, and resumable from state_dict
    noisy = OutputPolicy.parse("noise:0.1")
    a, b = _oracle(output=noisy, seed=5), _oracle(output=noisy, seed=5)
    first = a.query(X)
    assert torch.equal(first, b.query(X))
    assert not torch.allclose(first, probs, atol=1e-3)
    state = a.state_dict()
    second = a.query(X)
    assert not torch.equal(first, second)
    c = _oracle(output=noisy, seed=99)
    c.load_state_dict(state)
    assert torch.equal(c.query(X), second) and c.queries_total == 6
    # a policy for an old kind behaves as the old arguments
    assert torch.equal(_oracle(output=OutputPolicy.parse("topk:2")).query(X),
                       _oracle(output="topk", top_k=2).query(X))
    assert _oracle(output=OutputPolicy(kind="label")).query(torch.zeros(0, 2)).dtype == torch.int64
    with pytest.raises(OracleError, match="sigma"):
        _oracle(output="noise")
    with pytest.raises(OracleError, match="top_k"):
        _oracle(output=OutputPolicy(kind="topk", k=4))
