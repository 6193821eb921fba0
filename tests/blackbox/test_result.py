"""BlackBoxResult's summaries on hand-made counts: the usual median (the mean of the two
middle values for an even count), not torch's lower middle value."""

from __future__ import annotations

import math

import torch

from dlsec.attacks.blackbox import BlackBoxResult, median


def _result(queries: list[int], success: list[bool]) -> BlackBoxResult:
    n = len(queries)
    z = torch.zeros(n)
    return BlackBoxResult(torch.zeros(n, 1), torch.tensor(success), torch.tensor(queries), z, z)


def test_median_is_the_mean_of_the_two_middle_values_for_an_even_count() -> None:
    assert median(torch.tensor([10, 1, 9, 2])) == 5.5
    assert median(torch.tensor([305, 311])) == 308.0  # torch.median says 305
    assert float(torch.tensor([305, 311]).median()) == 305.0
    assert median(torch.tensor([7, 3, 5])) == 5.0
    assert median(torch.tensor([4])) == 4.0
    assert median(torch.tensor([0.25, 0.5, 1.0, 2.0])) == 0.75
    assert math.isnan(median(torch.tensor([])))


def test_median_queries_counts_only_the_successful_points() -> None:
    res = _result([305, 1000, 311, 1, 1000, 290, 330], [True, False, True, True, False, True, True])
    assert res.median_queries == 305.0  # 1, 290, 305, 311, 330
    res = _result([305, 1000, 311, 2, 1000, 290], [True, False, True, True, False, True])
    assert res.median_queries == 297.5  # 2, 290, 305, 311
    assert res.mean_queries == 227.0
    assert res.queries_total == 2908
    assert res.success_rate == 4 / 6
    assert math.isnan(_result([5, 6], [False, False]).median_queries)
