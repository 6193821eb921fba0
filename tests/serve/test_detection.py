"""PRADA (dlsec.serve.detection): exact distances and growing sets on a hand-checked
2-D case, the Shapiro-Wilk W by hand, and the measured verdicts on digits: held-out
test images are not flagged, a Jacobian-augmentation extraction stream is."""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Sequence

import pytest
import torch

from dlsec.data import Dataset, load_dataset
from dlsec.intervals import Z95
from dlsec.serve.detection import (
    DetectionError,
    Detectors,
    KeyDetectors,
    OodReference,
    OodShare,
    Prada,
)


def _feed(det: Prada, points: Sequence[Sequence[float]], classes: list[int]) -> None:
    for p, c in zip(points, classes, strict=True):
        det.observe(torch.tensor([p]), torch.tensor([c]))


def test_distances_and_growing_set_by_hand() -> None:
    # Class 0 stream; T_0 = max(T_0, mean(DG) - std(DG)) with DG starting at [0]:
    # (0,0) first -> G; (3,4) d=5 -> G, T=0; (0,1) d=1 -> G, T=0; (6,8) d=5 -> G,
    # DG=[0,5,1,5], T=2.75-sqrt(5.1875)=0.4724; (0,1.3) d=0.3 < T -> NOT in G;
    # (9,12) d=5 -> G, DG=[0,5,1,5,5], T=3.2-sqrt(4.96)=0.9729; (0,2) d=1 (to (0,1):
    # (0,1.3) is not in G, else d=0.7) > T -> G. A class-1 query adds no distance.
    det = Prada(min_distances=3)
    pts = [(0, 0), (3, 4), (0, 1), (5, 5), (6, 8), (0, 1.3), (9, 12), (0, 2)]
    cls = [0, 0, 0, 1, 0, 0, 0, 0]
    _feed(det, pts, cls)
    assert det.distances == pytest.approx([5, 1, 5, 0.3, 5, 1], abs=1e-6)  # float32 input
    expected_g = torch.tensor(
        [(0, 0), (3, 4), (0, 1), (6, 8), (9, 12), (0, 2)], dtype=torch.float64
    )
    assert torch.equal(det.growing_set(0), expected_g)
    assert torch.equal(det.growing_set(1), torch.tensor([[5.0, 5.0]], dtype=torch.float64))
    s = det.state
    assert (s.queries, s.distances, s.growing_set) == (8, 6, 7)
    # Pooled (per_class=False): the class-1 point (5,5) joins the same set, so (6,8) is
    # at distance sqrt(1+9) from it instead of 5.
    pooled = Prada(min_distances=3, per_class=False)
    _feed(pooled, pts, cls)
    assert pooled.distances[3] == pytest.approx(math.sqrt(10), abs=1e-9)


def test_shapiro_w_by_hand() -> None:
    # 1-D points 0, 1, 3, 7 -> D = [1, 2, 4]. For n=3, a = (-1/sqrt2, 0, 1/sqrt2):
    # W = (4-1)^2/2 / sum((d - 7/3)^2) = 4.5 / (42/9) = 27/28.
    det = Prada(min_distances=3, delta=0.97)
    _feed(det, [(0,), (1,), (3,), (7,)], [0, 0, 0, 0])
    assert det.distances == pytest.approx([1, 2, 4], abs=1e-12)
    s = det.state
    assert s.w is not None and abs(s.w - 27 / 28) < 1e-6
    assert s.flagged and s.flagged_at == 4  # 0.9643 < 0.97
    det2 = Prada(min_distances=3, delta=0.96)
    _feed(det2, [(0,), (1,), (3,), (7,)], [0, 0, 0, 0])
    assert not det2.state.flagged and det2.state.flagged_at is None
    # Before min_distances no test runs.
    det3 = Prada(min_distances=4, delta=1.0)
    _feed(det3, [(0,), (1,), (3,), (7,)], [0, 0, 0, 0])
    assert det3.state.w is None and not det3.state.flagged


def test_constant_distances_are_flagged() -> None:
    det = Prada(min_distances=5, per_class=False)
    _feed(det, [(float(i),) for i in range(8)], [0] * 8)  # every distance is exactly 1
    assert det.state.w == 0.0 and det.state.flagged


def test_long_stream_no_scipy_warning() -> None:
    # 5003 1-D queries with a non-repeating spacing: D has 5002 values, past scipy's
    # 5000 (where it warns about the p-value only); W is still computed, silently.
    pts = torch.cumsum(torch.rand(5003, 1, generator=torch.Generator().manual_seed(0)), 0)
    det = Prada(per_class=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = det.observe(pts, torch.zeros(5003, dtype=torch.long))
    # Measured W = 0.985 (distances to a thinned growing set of uniform gaps).
    assert s.distances == 5002 and s.w is not None and 0.95 < s.w < 0.995


@pytest.mark.parametrize("delta", [0.0, -0.1, 1.01, float("nan"), "0.9"])
def test_delta_validated(delta: object) -> None:
    with pytest.raises(DetectionError, match=r"delta must be in \(0, 1\]") as info:
        Prada(delta=delta)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_bad_settings_and_batches() -> None:
    with pytest.raises(DetectionError, match="min_distances"):
        Prada(min_distances=2)
    with pytest.raises(DetectionError, match="min_distances"):
        Detectors(min_distances=True)
    det = Prada()
    with pytest.raises(DetectionError, match="predicted"):
        det.observe(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    det.observe(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))
    with pytest.raises(DetectionError, match="features"):
        det.observe(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))
    with pytest.raises(DetectionError, match="finite"):
        det.observe(torch.full((1, 3), float("inf")), torch.zeros(1, dtype=torch.long))
    with pytest.raises(DetectionError, match="state_dict"):
        det.load_state_dict({"delta": 0.9})


# ---- digits: measured verdicts ---------------------------------------------------------


def _train(seed: int) -> tuple[Dataset, torch.nn.Module]:
    data = load_dataset("digits", seed=seed)
    linear = torch.nn.Linear(64, 10)
    torch.nn.init.zeros_(linear.weight)  # deterministic start, no seed needed
    torch.nn.init.zeros_(linear.bias)
    model = torch.nn.Sequential(torch.nn.Flatten(), linear)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):  # full-batch logistic regression: ~96% test accuracy
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    model.eval()
    return data, model


@pytest.fixture(scope="module")
def digits_model() -> tuple[Dataset, torch.nn.Module]:
    return _train(0)


def _stream(det: Prada, model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        pred = model(x).argmax(1)
    for i in range(len(x)):
        det.observe(x[i : i + 1], pred[i : i + 1])


def _jacobian_augmentation(model: torch.nn.Module, seeds: torch.Tensor, n: int) -> torch.Tensor:
    """Papernot et al.'s JBDA queries: each round adds x + 0.1 * sign(grad of the
    predicted logit) for every point so far (bounds [0, 1])."""
    pool = seeds.clone()
    while len(pool) < n:
        x = pool.clone().requires_grad_(True)
        logits = model(x)
        top = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(top, x)
        pool = torch.cat([pool, (pool + 0.1 * grad.sign()).clamp(0, 1)])
    return pool[:n].detach()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_benign_digits_stream_not_flagged(seed: int) -> None:
    data, model = _train(seed)
    det = Prada()  # defaults: delta 0.9, test from 100 distances
    ws = []
    with torch.no_grad():
        pred = model(data.x_test).argmax(1)
    for i in range(len(data.x_test)):
        state = det.observe(data.x_test[i : i + 1], pred[i : i + 1])
        if state.w is not None:
            ws.append(state.w)
    s = det.state
    # Measured over seeds 0-3: final W 0.953-0.966, lowest W along the stream 0.939.
    assert s.queries == 359 and s.distances >= 340 and len(ws) >= 240
    assert min(ws) > 0.92
    assert not s.flagged and s.flagged_at is None


def test_extraction_stream_flagged(digits_model: tuple[Dataset, torch.nn.Module]) -> None:
    data, model = digits_model
    seeds = torch.stack([data.x_train[(data.y_train == c).nonzero()[0, 0]] for c in range(10)])
    queries = _jacobian_augmentation(model, seeds, 359)
    det = Prada()
    _stream(det, model, queries)
    s = det.state
    # Measured: W = 0.41, flagged at query 109, the first query with 100 distances in.
    assert s.w is not None and s.w < 0.7
    assert s.flagged and s.flagged_at is not None and s.flagged_at <= 130
    # Same input, same verdict; a resumed detector agrees with an uninterrupted one.
    again = Prada()
    _stream(again, model, queries[:200])
    resumed = Prada()
    resumed.load_state_dict(again.state_dict())
    _stream(resumed, model, queries[200:])
    assert resumed.state == s and resumed.distances == det.distances


def test_detectors_keep_keys_apart(digits_model: tuple[Dataset, torch.nn.Module]) -> None:
    data, model = digits_model
    seeds = torch.stack([data.x_train[(data.y_train == c).nonzero()[0, 0]] for c in range(10)])
    attack = _jacobian_augmentation(model, seeds, 200)
    reg = Detectors()
    with torch.no_grad():
        pa, pb = model(attack).argmax(1), model(data.x_test[:200]).argmax(1)
    for i in range(200):
        reg.observe("attacker", attack[i : i + 1], pa[i : i + 1])
        reg.observe("benign", data.x_test[i : i + 1], pb[i : i + 1])
    assert reg.flagged() == ["attacker"] and len(reg) == 2
    restored = Detectors()
    restored.load_state_dict(reg.state_dict())
    assert restored.flagged() == ["attacker"]
    assert restored.get("benign").state == reg.get("benign").state


@pytest.mark.parametrize("per_class", [True, False])
def test_a_batch_equals_the_same_queries_one_by_one(digits_model, per_class: bool) -> None:
    # observe() handles a batch with one cdist per class; the verdicts, D (in arrival
    # order) and the growing sets must be those of Algorithm 1 run query by query.
    data, model = digits_model
    seeds = torch.stack([data.x_train[(data.y_train == c).nonzero()[0, 0]] for c in range(10)])
    x = torch.cat([_jacobian_augmentation(model, seeds, 160), data.x_test[:160]])
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    x = torch.cat([x, x[:7]])  # exact repeats (distance 0 to those that entered G)
    with torch.no_grad():
        pred = model(x).argmax(1)
    one, batched = Prada(per_class=per_class), Prada(per_class=per_class)
    _stream(one, model, x)
    for i in range(0, len(x), 64):
        batched.observe(x[i : i + 64], pred[i : i + 64])
    assert batched.distances == pytest.approx(one.distances, abs=1e-12)
    assert 0.0 in batched.distances
    for c in range(10 if per_class else 1):
        assert torch.equal(batched.growing_set(c), one.growing_set(c))
    s, t = batched.state, one.state
    assert (s.queries, s.distances, s.growing_set, s.flagged) == (
        t.queries, t.distances, t.growing_set, t.flagged)
    assert s.w is not None and t.w is not None and abs(s.w - t.w) < 1e-9


# ---- the OOD-share detector -------------------------------------------------------------


def test_ood_radius_outliers_and_wilson_verdict_by_hand() -> None:
    # Reference 0, 1, 3, 7 (1-D): leave-one-out NN distances 1, 1, 2, 4; their median
    # (linear interpolation) is 1.5. A query at 5 is 2 from 3 or 7: an outlier; 2 is 1
    # from 1 and 3: not one.
    ref = OodReference(torch.tensor([[0.0], [1.0], [3.0], [7.0]]), quantile=0.5)
    assert ref.radius == pytest.approx(1.5, abs=1e-9)
    assert ref.outliers(torch.tensor([[5.0], [2.0], [-1.6], [-1.4]])).tolist() == [
        True, False, True, False]
    det = OodShare(ref, min_queries=3)
    s = det.observe(torch.tensor([[5.0], [20.0]]))
    assert (s.queries, s.outliers, s.lower, s.flagged) == (2, 2, None, False)  # < min_queries
    s = det.observe(torch.tensor([[-9.0]]))
    # Wilson lower bound of 3/3 is 3 / (3 + z^2) = 0.4385 > 0.1
    assert s.lower == pytest.approx(3 / (3 + Z95**2), abs=1e-9)
    assert s.flagged and s.flagged_at == 3 and s.statistic == s.lower
    s = det.observe(torch.tensor([[2.0]] * 37))  # 3 of 40: lower bound 0.026 < 0.1
    assert s.outliers == 3 and s.lower is not None and s.lower < 0.1
    assert not s.flagged and s.flagged_at == 3  # the first flag is remembered
    resumed = OodShare(ref)
    resumed.load_state_dict(det.state_dict())
    assert resumed.state == det.state and resumed.min_queries == 3
    other = OodReference(torch.tensor([[0.0], [10.0]]))
    with pytest.raises(DetectionError, match="another reference"):
        OodShare(other).load_state_dict(det.state_dict())


def test_ood_and_key_detectors_settings_are_checked() -> None:
    with pytest.raises(DetectionError, match="quantile"):
        OodReference(torch.zeros(3, 2), quantile=1.0)
    with pytest.raises(DetectionError, match="at least 2 rows"):
        OodReference(torch.zeros(1, 2))
    with pytest.raises(DetectionError, match="finite"):
        OodReference(torch.tensor([[0.0], [float("nan")]]))
    ref = OodReference(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(DetectionError, match="threshold"):
        OodShare(ref, threshold=0.0)
    with pytest.raises(DetectionError, match="min_queries"):
        OodShare(ref, min_queries=0)
    with pytest.raises(DetectionError, match="3 features"):
        ref.outliers(torch.zeros(1, 3))
    with pytest.raises(DetectionError, match="unknown detector 'pada'"):
        KeyDetectors(("pada",))
    with pytest.raises(DetectionError, match="twice"):
        KeyDetectors(("prada", "prada"))
    with pytest.raises(DetectionError, match="reference"):
        KeyDetectors(("ood",))
    kd = KeyDetectors(("prada", "ood"), reference=torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    verdicts = kd.observe("a", torch.full((20, 2), 50.0), torch.zeros(20, dtype=torch.long))
    assert [(v.detector, v.new) for v in verdicts] == [("prada", False), ("ood", True)]
    again = kd.observe("a", torch.full((1, 2), 50.0), torch.zeros(1, dtype=torch.long))
    assert [v.new for v in again] == [False, False]  # "new" only once per detector
    assert kd.flagged() == ["a"] and len(kd) == 1 and list(kd.get("b")) == ["prada", "ood"]


def _reference_prada(points: torch.Tensor, classes: list[int]) -> tuple[list[float], int]:
    """Algorithm 1 query by query with brute-force exact distances (the specification)."""
    grown: dict[int, list[torch.Tensor]] = {}
    entry: dict[int, list[float]] = {}
    thr: dict[int, float] = {}
    dist: list[float] = []
    for x, c in zip(points, classes, strict=True):
        if c not in grown:
            grown[c], entry[c], thr[c] = [x], [0.0], 0.0
            continue
        g = torch.stack(grown[c])
        d = float(((g - x) ** 2).sum(dim=1).sqrt().min())
        dist.append(d)
        if d > thr[c]:
            grown[c].append(x)
            entry[c].append(d)
            t = torch.tensor(entry[c], dtype=torch.float64)
            thr[c] = max(thr[c], float(t.mean() - t.std(unbiased=False)))
    return dist, sum(len(v) for v in grown.values())


@pytest.mark.parametrize("scale", [1.0, 0.1, 1e153])
def test_matrix_product_search_matches_brute_force_with_ties(scale: float) -> None:
    # Integer grid points: many exact ties among nearest neighbours, so the rounding
    # window of the matrix-product search holds several candidates; at 1e160 the squared
    # norms' bound overflows and every g must be recomputed directly. Batches of 32 against a
    # growing set take the matrix-product path. At 1e153 the distances themselves stay
    # finite (at most 6e153) but the rounding bound overflows: the all-candidates path.
    g = torch.Generator().manual_seed(3)
    pts = torch.randint(0, 4, (800, 4), generator=g).to(torch.float64) * scale
    classes = torch.randint(0, 3, (800,), generator=g)
    det = Prada(min_distances=50)
    for k in range(0, 800, 32):
        det.observe(pts[k : k + 32], classes[k : k + 32])
    ref, ref_g = _reference_prada(pts, classes.tolist())
    assert len(det.distances) == len(ref) == 797
    worst = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(det.distances, ref, strict=True))
    assert worst < 1e-12
    # The search must return the exact minimum, not a near-tie's rounding: same bytes as
    # brute force with the same direct formula (a mismatch would show up at 1e-16).
    mismatched = sum(
        struct.pack("<d", a) != struct.pack("<d", b)
        for a, b in zip(det.distances, ref, strict=True)
    )
    assert mismatched == 0
    assert det.state.growing_set == ref_g > 50
    assert sum(d == 0.0 for d in det.distances) > 100  # repeated points: exact zeros
