"""Statistics with the item as the unit (DESIGN.md, Statistics).

A row of the report pools cells that differ only by seed (generated adapters, demonstration draws,
training seeds), all scored on the same items. Seeds are not independent samples of the items: each
item's score is averaged over the seeds first, accuracy and its standard error come from those
per-item means (six identical seeds give exactly the one-seed stderr), and the spread between seeds is
reported beside it. The 95 % interval resamples items and, nested in each replicate, seeds, so seeds
that disagree widen it. Comparisons on the same items are paired: McNemar's exact test when every
per-item score is 0 or 1, a sign-flip permutation test on the per-item differences otherwise, with
Holm's correction across the comparisons of one table. scipy does the arithmetic it has.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SEED = 20240
BOOTSTRAP_RESAMPLES = 2000
PERMUTATION_RESAMPLES = 9999


def _finite(score) -> bool:
    return isinstance(score, (int, float)) and math.isfinite(score)


def item_matrix(per_seed: list[dict]) -> tuple[list, np.ndarray]:
    """Items scored (with a finite score) by every seed, and their (items × seeds) score matrix.

    `per_seed`: item → score, one dict per seed. An item some seed did not score, or scored None/NaN, is
    left out of every seed, so that the seeds stay paired item by item.
    """
    per_seed = [{k: v for k, v in s.items() if _finite(v)} for s in per_seed]
    common = set(per_seed[0]).intersection(*per_seed[1:]) if per_seed else set()
    keys = sorted(common, key=str)
    return keys, np.array([[float(s[k]) for s in per_seed] for k in keys], dtype=float).reshape(len(keys),
                                                                                                len(per_seed))


@dataclass
class Summary:
    mean: float
    stderr: float  # of the mean over items, from the per-item means
    seed_std: float  # std of the per-seed means (nan with one seed)
    ci_low: float
    ci_high: float
    n: int  # items
    seeds: int


def summarize(matrix: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = BOOTSTRAP_SEED) -> Summary:
    n, k = matrix.shape
    if n == 0:
        return Summary(*(float("nan"),) * 5, 0, k)
    per_item = matrix.mean(axis=1)
    stderr = float(per_item.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    seed_std = float(matrix.mean(axis=0).std(ddof=1)) if k > 1 else float("nan")
    low, high = bootstrap_interval(matrix, level, resamples, seed)
    return Summary(float(per_item.mean()), stderr, seed_std, low, high, n, k)


def bootstrap_interval(matrix: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, chunk: int = 250) -> tuple[float, float]:
    """Percentile interval of the mean, resampling items and, within each replicate, seeds.

    A replicate draws n items and k seeds with replacement; its mean is c·M·d / (n·k) with c and d the
    draw counts (the same as indexing, without materializing n × k per replicate). With one seed this
    is the ordinary percentile bootstrap over items.
    """
    n, k = matrix.shape
    # Items and seeds draw from separate streams: identical seeds then give the one-seed interval exactly.
    item_rng, seed_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    reps = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        items = item_rng.multinomial(n, np.full(n, 1.0 / n), size=size)  # (size, n) draw counts
        seeds = seed_rng.multinomial(k, np.full(k, 1.0 / k), size=size) if k > 1 else np.ones((size, 1))
        reps.append(np.einsum("bn,nk,bk->b", items, matrix, seeds) / (n * k))
    reps = np.concatenate(reps)
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return float(low), float(high)


def _binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def paired_test(base: np.ndarray, other: np.ndarray, seed: int = BOOTSTRAP_SEED) -> dict:
    """Paired test of `other` against `base` on the same items (per-item means, aligned)."""
    from scipy.stats import binomtest, permutation_test

    if not (np.isfinite(base).all() and np.isfinite(other).all()):
        raise ValueError("paired_test needs finite per-item scores (item_matrix drops the others)")
    diff = other - base
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    out = {"n_paired": int(len(diff)), "delta": float(diff.mean()) if len(diff) else float("nan"),
           "other_only": wins, "base_only": losses}
    if _binary(base) and _binary(other):
        out["test"] = "McNemar exact"
        out["p"] = float(binomtest(min(wins, losses), wins + losses, 0.5).pvalue) if wins + losses else 1.0
        return out
    out["test"] = "sign-flip permutation"
    nonzero = diff[diff != 0]  # a zero difference flips to itself: it cannot move the statistic
    if len(nonzero) < 2:  # 0 or 1 differences: every sign pattern reaches |mean| (scipy refuses one observation)
        out["p"] = 1.0
        return out
    # With 2^n <= n_resamples scipy enumerates the 2^n sign patterns exactly; beyond that it samples them.
    result = permutation_test((nonzero,), np.mean, permutation_type="samples", vectorized=True, batch=500,
                              n_resamples=PERMUTATION_RESAMPLES, alternative="two-sided", rng=seed)
    out["p"] = float(min(1.0, result.pvalue))
    return out


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error), in the input order; NaN stays NaN."""
    index = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(index)
    adjusted = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(index, key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
