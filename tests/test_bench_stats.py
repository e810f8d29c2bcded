"""Paired statistics used by the seeded benchmark studies."""

import math

import pytest

from bench.stats import mean_std, paired_permutation_p


def test_all_positive_three_pairs_is_quarter() -> None:
    # Only the observed signs and their full flip reach |sum| = 6: 2 of 8.
    assert paired_permutation_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)


def test_sign_does_not_matter_two_sided() -> None:
    assert paired_permutation_p([-1.0, -2.0, -3.0]) == pytest.approx(0.25)


def test_mixed_signs_hand_computed() -> None:
    # diffs 3, -1: sums over signs are 2, 4, -4, -2; |sum| >= 2 for all 4.
    assert paired_permutation_p([3.0, -1.0]) == pytest.approx(1.0)
    # diffs 3, 1, 1: |sum| over 8 signings: 5,3,3,1,1,3,3,5 -> >= 5 in 2 of 8.
    assert paired_permutation_p([3.0, 1.0, 1.0]) == pytest.approx(0.25)
    # diffs 1, 1, -3: observed |sum| 1 is the smallest possible -> 1.0.
    assert paired_permutation_p([1.0, 1.0, -3.0]) == pytest.approx(1.0)


def test_zeros_leave_p_unchanged() -> None:
    assert paired_permutation_p([0.0, 1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert paired_permutation_p([0.0, 0.0]) == 1.0
    assert paired_permutation_p([]) == 1.0


def test_float_rounding_ties_count() -> None:
    # 0.1 + 0.2 differs from 0.3 in floating point; the flip must still tie.
    assert paired_permutation_p([0.1, 0.2, -0.3]) == pytest.approx(1.0)


def test_many_consistent_pairs_get_small_p() -> None:
    p = paired_permutation_p([0.01] * 10)
    assert p == pytest.approx(2 / 1024)


def test_too_many_pairs_rejected() -> None:
    with pytest.raises(ValueError, match="at most 16"):
        paired_permutation_p([1.0] * 17)


def test_mean_std_sample_std() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(1.0)


def test_mean_std_single_and_empty() -> None:
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])
    assert not math.isnan(mean_std([2.0, 2.0])[1])
