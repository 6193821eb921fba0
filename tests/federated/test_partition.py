"""Partitions of a training set over federated clients: exact cover, label skew, seeds."""

from __future__ import annotations

import pytest
import torch

from dlsec.defenses.federated import (
    PartitionError,
    choose_malicious,
    flip_labels,
    label_counts,
    parse_partition,
    partition,
    poison_update,
)

LABELS = torch.arange(1000) % 10  # 100 records of each of 10 classes


def _assert_cover(parts: list[torch.Tensor], n: int) -> None:
    allidx = torch.cat(parts)
    assert allidx.numel() == n  # nobody twice ...
    assert torch.equal(allidx.sort().values, torch.arange(n))  # ... and nobody missing
    assert all(p.numel() > 0 for p in parts)


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.1", "dirichlet:100", "shards:2"])
def test_every_record_in_exactly_one_nonempty_part(spec: str) -> None:
    _assert_cover(partition(LABELS, 10, spec, seed=3), 1000)


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [p.numel() for p in partition(torch.zeros(103, dtype=torch.long), 10, "iid", seed=0)]
    assert sorted(sizes) == [10] * 7 + [11] * 3


def test_same_seed_same_partition_other_seed_other() -> None:
    a = partition(LABELS, 10, "dirichlet:0.5", seed=1)
    b = partition(LABELS, 10, "dirichlet:0.5", seed=1)
    c = partition(LABELS, 10, "dirichlet:0.5", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def _classes_held(parts: list[torch.Tensor], share: float = 0.05) -> float:
    """Mean number of classes making up more than ``share`` of a client's records."""
    counts = label_counts(LABELS, parts, 10).float()
    return float((counts / counts.sum(1, keepdim=True) > share).sum(1).float().mean())


def test_dirichlet_skew_grows_as_alpha_falls() -> None:
    # measured over seeds 0..4: alpha 0.1 -> 2.7-3.5 classes per client, alpha 100 -> 10
    for seed in range(5):
        small = _classes_held(partition(LABELS, 10, "dirichlet:0.1", seed=seed))
        large = _classes_held(partition(LABELS, 10, "dirichlet:100", seed=seed))
        assert small <= 4.0 and large == 10.0, (seed, small, large)


def test_shards_give_each_client_at_most_k_classes_and_equal_sizes() -> None:
    parts = partition(LABELS, 10, "shards:2", seed=0)
    counts = label_counts(LABELS, parts, 10)
    # 20 shards of 50 records, each inside one class (100 records per class)
    assert [p.numel() for p in parts] == [100] * 10
    assert int((counts > 0).sum(1).max()) <= 2


def test_dirichlet_tiny_alpha_leaves_no_client_empty() -> None:
    parts = partition(LABELS[:30], 25, "dirichlet:0.01", seed=0)
    _assert_cover(parts, 30)


@pytest.mark.parametrize(("spec", "words"), [
    ("dirichlet:0", "alpha must be > 0"), ("dirichlet:-1", "alpha must be > 0"),
    ("dirichlet:x", "ALPHA must be a number"), ("shards:0", "K must be"),
    ("zipf", "unknown partition"), ("iid:3", "unknown partition")])
def test_bad_schemes_are_one_line_errors(spec: str, words: str) -> None:
    with pytest.raises(PartitionError, match=words) as e:
        parse_partition(spec)
    assert "\n" not in str(e.value)


def test_more_clients_than_records_is_refused() -> None:
    with pytest.raises(PartitionError, match="5 training records cannot be shared by 6"):
        partition(LABELS[:5], 6, "iid", seed=0)
    with pytest.raises(PartitionError, match="shards"):
        partition(LABELS[:10], 6, "shards:2", seed=0)


def test_malicious_draw_is_seeded_and_sized() -> None:
    a = choose_malicious(10, 0.3, seed=4)
    assert len(a) == 3 and a == choose_malicious(10, 0.3, seed=4) and a == sorted(a)
    assert choose_malicious(10, 0.0, seed=4) == []
    draws = {tuple(choose_malicious(10, 0.3, seed=s)) for s in range(20)}
    assert len(draws) > 10  # the seed picks who


def test_poisoned_updates_by_hand() -> None:
    g = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    w = {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(4)}  # update (+1, -2)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(poison_update("sign-flip", g, w, scale=4, generator=gen)["w"],
                       torch.tensor([-3.0, 10.0]))  # g - 4 * (+1, -2)
    assert torch.equal(poison_update("scale", g, w, scale=10, generator=gen)["w"],
                       torch.tensor([11.0, -18.0]))  # g + 10 * (+1, -2)
    assert poison_update("sign-flip", g, w, scale=4, generator=gen)["n"].item() == 4
    noise = poison_update("gaussian", g, w, scale=1, generator=torch.Generator().manual_seed(5))
    again = poison_update("gaussian", g, w, scale=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(noise["w"], again["w"]) and not torch.equal(noise["w"], g["w"])
    assert torch.equal(flip_labels(torch.tensor([0, 3, 9]), 10), torch.tensor([9, 6, 0]))
