"""Paired comparison of two methods over the same test conditions, with seeds.

A method's value on a condition varies with its training seed; a difference between methods is
judged over conditions *and* seeds: a hierarchical bootstrap resamples the conditions, then
each method's seeds within every resampled condition, and gives the mean difference's
percentile interval and a two-sided p-value. Across a whole table the p-values are Holm-
corrected. A tie is claimed only by an equivalence test (TOST): both one-sided tests against a
margin must reject. The Wilcoxon signed-rank test of the seed-averaged values is kept beside
them as a classical check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

#: Resamples drawn at once (memory: chunk x conditions x seeds floats per side).
_CHUNK = 1000


def paired_test(
    values: np.ndarray, reference: np.ndarray, higher_is_better: bool
) -> dict[str, Any]:
    """Wilcoxon signed-rank test of ``values`` against ``reference``, paired by position.

    Pairs with a missing value on either side are dropped. Returns the number of pairs, the
    mean and median difference (values - reference), the fraction of pairs where ``values`` is
    better, and the two-sided p-value (1.0 when every difference is zero, NaN without pairs).
    """
    values, reference = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    keep = np.isfinite(values) & np.isfinite(reference)
    values, reference = values[keep], reference[keep]
    difference = values - reference
    result: dict[str, Any] = {
        "n_conditions": int(keep.sum()),
        "mean_difference": float(difference.mean()) if len(difference) else float("nan"),
        "median_difference": float(np.median(difference)) if len(difference) else float("nan"),
        "better_fraction": float(np.mean(difference > 0 if higher_is_better else difference < 0))
        if len(difference)
        else float("nan"),
        "p_value": float("nan"),
    }
    if len(difference) and not np.any(difference):
        result["p_value"] = 1.0
    elif len(difference):
        result["p_value"] = float(wilcoxon(values, reference, alternative="two-sided").pvalue)
    return result


@dataclass(frozen=True)
class BootstrapResult:
    """The hierarchical bootstrap of a mean paired difference (ours - theirs)."""

    n_conditions: int
    mean_difference: float
    ci_low: float
    ci_high: float
    #: two-sided: twice the smaller tail of the resampled differences beyond 0
    p_value: float
    #: equivalence within +-margin: the larger of the two one-sided tails beyond the margins
    tost_p: float
    margin: float


def hierarchical_bootstrap(
    ours: np.ndarray,
    theirs: np.ndarray,
    margin: float,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Mean difference ``ours - theirs`` over conditions, its interval and p-values.

    ``ours`` [conditions, seeds] and ``theirs`` [conditions, seeds'] are each method's values
    per condition and seed (a baseline has one "seed"). Each resample draws the conditions with
    replacement, then, within each drawn condition, each method's seeds with replacement, and
    takes the mean over conditions of the difference of the seed means. A condition with a
    missing value on either side is dropped. p-values have the resolution 1 / (resamples + 1).
    """
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    keep = np.isfinite(ours).all(axis=1) & np.isfinite(theirs).all(axis=1)
    ours, theirs = ours[keep], theirs[keep]
    n = len(ours)
    if n == 0:
        nan = float("nan")
        return BootstrapResult(0, nan, nan, nan, nan, nan, margin)
    observed = float(ours.mean(axis=1).mean() - theirs.mean(axis=1).mean())
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        conditions = rng.integers(0, n, (size, n))
        draws.append(
            _resampled_means(ours, conditions, rng) - _resampled_means(theirs, conditions, rng)
        )
    boot = np.concatenate(draws)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1.0 - tail])

    def share(count: int) -> float:  # a tail's proportion, never 0: (k + 1) / (B + 1)
        return (count + 1) / (resamples + 1)

    p_value = min(1.0, 2 * share(min(int((boot <= 0).sum()), int((boot >= 0).sum()))))
    tost_p = max(share(int((boot <= -margin).sum())), share(int((boot >= margin).sum())))
    return BootstrapResult(n, observed, float(low), float(high), p_value, tost_p, margin)


def _resampled_means(
    values: np.ndarray, conditions: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per resample (row of ``conditions``): the mean over its conditions of a bootstrap mean
    of each condition's seeds."""
    n_seeds = values.shape[1]
    if n_seeds == 1:
        return values[conditions, 0].mean(axis=1)
    seeds = rng.integers(0, n_seeds, (*conditions.shape, n_seeds))
    return values[conditions[..., None], seeds].mean(axis=2).mean(axis=1)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN, not counted).

    The i-th smallest of m p-values becomes max over j <= i of (m - j + 1) p_(j), capped at 1:
    reject where the adjusted value is below the level, and the family-wise error stays below it.
    """
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full(p_values.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p_values))
    order = finite[np.argsort(p_values[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (m - rank) * p_values[index])
        adjusted[index] = min(1.0, running)
    return adjusted
