"""Paired comparison of two methods over the same test conditions."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import wilcoxon


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
