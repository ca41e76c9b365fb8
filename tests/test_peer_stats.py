"""Statistics of the peer comparisons (``pcm_policy.pusht.peer_stats``): paired differences, MMD, two modes."""

import numpy as np
import pytest

from pcm_policy.pusht.peer_stats import (
    assign_modes,
    bimodality,
    mmd2_unbiased,
    mmd_test,
    mode_split,
    paired_difference,
    two_means,
)


def test_paired_difference_sees_a_shift_the_unpaired_spread_hides():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, 200)  # wide spread between episodes
    a = b + 0.02 + rng.normal(0, 0.01, 200)  # a small, consistent gain per episode
    r = paired_difference(a, b)
    assert r["n"] == 200 and r["diff"] == pytest.approx((a - b).mean())
    assert 0 < r["ci95"][0] < r["diff"] < r["ci95"][1] and r["p_value"] < 0.01
    assert two_means(a, b)["ci95"][0] < 0  # unpaired, the same gain is not resolved


def test_paired_difference_of_identical_rows_is_zero_with_p_one():
    a = np.linspace(0, 1, 50)
    r = paired_difference(a, a.copy())
    assert r["diff"] == 0 and r["ci95"] == [0.0, 0.0] and r["p_value"] == 1.0


@pytest.mark.parametrize("a, b", [([1.0, 2.0], [1.0]), ([1.0], [1.0]), ([1.0, np.nan], [1.0, 2.0])])
def test_paired_difference_refuses_bad_input(a, b):
    with pytest.raises(ValueError):
        paired_difference(a, b)


def test_mmd2_unbiased_is_the_papers_sum():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    z = np.concatenate([x, y])
    kern = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1) / 2)
    m, n = 5, 7
    xx = sum(kern[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(kern[m + i, m + j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(kern[i, m + j] for i in range(m) for j in range(n)) / (m * n)
    assert mmd2_unbiased(kern, m) == pytest.approx(xx + yy - 2 * xy)


def test_mmd_test_separates_shifted_samples_and_not_equal_ones():
    rng = np.random.default_rng(2)
    same = mmd_test(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)), permutations=100)
    shifted = mmd_test(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 0.8, permutations=100)
    assert shifted["mmd2"] > 0 and shifted["p_value"] <= 1 / 101 + 1e-12
    assert same["p_value"] > 0.05 and abs(same["mmd2"]) < shifted["mmd2"] / 5
    with pytest.raises(ValueError, match="all samples are equal"):
        mmd_test(np.zeros((3, 2)), np.zeros((3, 2)))


def test_mode_split_finds_two_blobs_and_their_shares():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(30, 8)) + 10, rng.normal(size=(70, 8)) - 10])
    m = mode_split(x)
    lab = assign_modes(x, m["centres"])
    assert sorted([m["share"], 1 - m["share"]]) == pytest.approx([0.3, 0.7])
    assert len(set(lab[:30])) == 1 and len(set(lab[30:])) == 1 and lab[0] != lab[-1]
    assert m["separation"] > 3 * mode_split(rng.normal(size=(100, 8)))["separation"]


def test_bimodality_is_a_third_for_a_normal_and_near_one_for_two_modes():
    rng = np.random.default_rng(4)
    assert bimodality(rng.normal(size=(4000, 3))) == pytest.approx(1 / 3, abs=0.03)
    assert bimodality(rng.uniform(size=(4000, 1))) == pytest.approx(5 / 9, abs=0.03)
    two = np.concatenate([rng.normal(size=(500, 3)) + [8, 0, 0], rng.normal(size=(500, 3)) - [8, 0, 0]])
    assert bimodality(two) > 0.85
