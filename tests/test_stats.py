"""Statistics with the item as the unit, checked against hand-computed values and scipy's own routines."""
import math

import numpy as np
import pytest

from harness import stats

ONE = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=float)  # 3 of 10 right


def test_identical_seeds_give_the_one_seed_stderr_interval_and_p():
    one = stats.summarize(ONE[:, None])
    six = stats.summarize(np.stack([ONE] * 6, axis=1))
    # by hand: sample variance (3·0.7² + 7·0.3²)/9 = 0.2333..., stderr = sqrt(0.2333/10)
    assert one.stderr == pytest.approx(math.sqrt((3 * 0.49 + 7 * 0.09) / 9 / 10))
    assert (six.mean, six.stderr, six.ci_low, six.ci_high) == (one.mean, one.stderr, one.ci_low, one.ci_high)
    assert six.seed_std == 0.0 and math.isnan(one.seed_std)
    base = np.zeros(10)
    p_one = stats.paired_test(base, ONE)
    p_six = stats.paired_test(base, np.stack([ONE] * 6, axis=1).mean(axis=1))
    assert p_one["test"] == p_six["test"] == "McNemar exact"
    assert p_one["p"] == p_six["p"] == pytest.approx(0.25)  # 3 wins, 0 losses: 2 · 0.5³


def test_seeds_that_disagree_widen_the_interval():
    first = np.tile(ONE, 4)  # 40 items
    other = 1 - first  # a second seed right exactly where the first is wrong
    agree = stats.summarize(np.stack([first, first], axis=1))
    disagree = stats.summarize(np.stack([first, other], axis=1))
    assert disagree.ci_high - disagree.ci_low > 1.5 * (agree.ci_high - agree.ci_low)
    assert disagree.seed_std == pytest.approx(math.sqrt(((0.3 - 0.5) ** 2 + (0.7 - 0.5) ** 2) / 1))
    assert disagree.stderr == 0.0  # every per-item mean is 0.5: items alone do not show the disagreement


def test_one_seed_interval_matches_scipy_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    x = (rng.random(200) < 0.35).astype(float)
    ours = stats.summarize(x[:, None], resamples=4000)
    ref = bootstrap((x,), np.mean, method="percentile", n_resamples=4000, rng=0).confidence_interval
    assert ours.ci_low == pytest.approx(ref.low, abs=0.012) and ours.ci_high == pytest.approx(ref.high, abs=0.012)


def test_sign_flip_test_against_exact_enumeration_and_mcnemar():
    from scipy.stats import binomtest

    # Non-binary differences, enumerated by hand: diffs 0.5, 1, 1, -0.5 → mean 0.5; of the 16 sign patterns, 3 reach
    # a sum ≥ 2 and 3 a sum ≤ -2, so the two-sided p is 6/16.
    out = stats.paired_test(np.array([0.5, 0.0, 0.0, 0.5]), np.array([1.0, 1.0, 1.0, 0.0]))
    assert out["test"] == "sign-flip permutation" and out["p"] == pytest.approx(6 / 16)
    # On 0/1 differences the sign-flip test is McNemar's exact test: both give binomtest's p.
    base = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 0], dtype=float)
    half = np.array([1, 1, 1, 1, 0.5, 0, 1, 0, 0, 0], dtype=float)  # one item at 0.5: not binary
    out = stats.paired_test(base, half)
    assert out["test"] == "sign-flip permutation" and out["delta"] == pytest.approx(0.35)
    # by hand: nonzero diffs +1 ×4, +0.5, -1 (sum 3.5). Of the 64 sign patterns, a sum ≥ 3.5 takes all five
    # ones positive (2 ways for the 0.5) or four of five with +0.5 (5 ways): 7; two-sided 14/64.
    assert out["p"] == pytest.approx(14 / 64)
    mc = stats.paired_test(base, np.array([1, 1, 1, 1, 1, 0, 1, 0, 0, 0], dtype=float))
    assert mc["test"] == "McNemar exact" and mc["p"] == pytest.approx(binomtest(1, 6, 0.5).pvalue)


def test_sign_flip_test_with_one_or_two_nonzero_differences_by_hand():
    # One nonzero difference: both sign patterns (+d, -d) reach |mean| = |d|, so p = 2/2 (scipy refuses n = 1).
    one = stats.paired_test(np.array([0.0, 0.2, 0.5]), np.array([0.0, 0.2, 1.0]))
    assert one["test"] == "sign-flip permutation" and one["other_only"] == 1 and one["p"] == 1.0
    assert stats.paired_test(np.array([0.5, 0.2]), np.array([0.0, 0.2]))["p"] == 1.0  # the loss side too
    # Two equal positive differences: of ++, +-, -+, -- only ++ and -- reach |mean| = 0.5, so two-sided p = 2/4.
    two = stats.paired_test(np.array([0.5, 0.5, 0.3]), np.array([1.0, 1.0, 0.3]))
    assert two["p"] == pytest.approx(0.5)
    # Two unequal ones (0.5, 0.25): again only ++ and -- reach |sum| = 0.75, p = 2/4; three equal ones: 2/8.
    assert stats.paired_test(np.array([0.5, 0.5]), np.array([1.0, 0.75]))["p"] == pytest.approx(0.5)
    assert stats.paired_test(np.full(3, 0.5), np.ones(3))["p"] == pytest.approx(0.25)


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.2 with m = 4: 4·0.01, 3·0.03, max(0.09, 2·0.04), max(0.09, 0.2)
    assert stats.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    adjusted = stats.holm([0.5, float("nan"), 0.01])
    assert adjusted[0] == pytest.approx(0.5) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_items_scored_by_every_seed_only():
    keys, matrix = stats.item_matrix([{1: 1.0, 2: 0.0, 3: 1.0}, {2: 1.0, 3: 1.0}])
    assert keys == [2, 3] and matrix.tolist() == [[0.0, 1.0], [1.0, 1.0]]
