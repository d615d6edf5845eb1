"""Metrics on mean expression in gene space, relative to the line's control cells."""

from __future__ import annotations

import numpy as np


def pearson_delta(real_mean: np.ndarray, predicted_mean: np.ndarray, control_mean: np.ndarray) -> float:
    """Pearson r between the predicted and the real mean shift from control, over genes.

    A prediction of no change (a constant shift) has no correlation to speak of: 0, not NaN.
    """
    real_delta, predicted_delta = real_mean - control_mean, predicted_mean - control_mean
    if np.ptp(real_delta) == 0 or np.ptp(predicted_delta) == 0:
        return 0.0
    return float(np.corrcoef(real_delta, predicted_delta)[0, 1])


def mse(real_mean: np.ndarray, predicted_mean: np.ndarray) -> float:
    """Mean squared error between the predicted and the real mean expression."""
    return float(np.mean((real_mean - predicted_mean) ** 2))


def mae(real_mean: np.ndarray, predicted_mean: np.ndarray) -> float:
    """Mean absolute error between the predicted and the real mean expression."""
    return float(np.mean(np.abs(real_mean - predicted_mean)))


def de_overlap(real_mean: np.ndarray, predicted_mean: np.ndarray, control_mean: np.ndarray, n_top: int = 100) -> float:
    """Overlap of the top-N genes by absolute mean shift from control (real vs predicted), in [0, 1].

    Genes the prediction leaves unchanged are never among its top genes (so predicting no change
    scores 0). N is capped at the number of genes.
    """
    n_top = min(n_top, len(real_mean))
    real_shift = np.abs(real_mean - control_mean)
    predicted_shift = np.abs(predicted_mean - control_mean)
    real_top = set(np.argsort(-real_shift, kind="stable")[:n_top])
    changed = np.flatnonzero(predicted_shift > 0)
    predicted_top = set(changed[np.argsort(-predicted_shift[changed], kind="stable")[:n_top]])
    return len(real_top & predicted_top) / n_top
