"""Metrics on mean expression in gene space, relative to the line's control cells."""

from __future__ import annotations

import numpy as np


def _shift_correlation(
    real_mean: np.ndarray, predicted_mean: np.ndarray, reference: np.ndarray
) -> float:
    """Pearson r over genes of the real and predicted shifts from ``reference``.

    A prediction of no change (a constant shift) has no correlation to speak of: 0, not NaN.
    """
    real_delta, predicted_delta = real_mean - reference, predicted_mean - reference
    if np.ptp(real_delta) == 0 or np.ptp(predicted_delta) == 0:
        return 0.0
    return float(np.corrcoef(real_delta, predicted_delta)[0, 1])


def pearson_delta(
    real_mean: np.ndarray, predicted_mean: np.ndarray, control_mean: np.ndarray
) -> float:
    """Pearson r between the predicted and the real mean shift from control, over genes."""
    return _shift_correlation(real_mean, predicted_mean, control_mean)


def pearson_delta_context(
    real_mean: np.ndarray, predicted_mean: np.ndarray, reference_mean: np.ndarray
) -> float:
    """Pearson r of the predicted and real shift from Systema's reference: the mean over the
    line's *train* perturbations of their centroids (perturbation-weighted).

    Systema's perturbation-specific signal (Viñas Torné et al. 2025): the line-wide systematic
    shift that every perturbation shares cancels, so copying the line's perturbed cells scores
    about 0 here while it scores well on ``pearson_delta``.
    """
    return _shift_correlation(real_mean, predicted_mean, reference_mean)


def mse(real_mean: np.ndarray, predicted_mean: np.ndarray) -> float:
    """Mean squared error between the predicted and the real mean expression."""
    return float(np.mean((real_mean - predicted_mean) ** 2))


def mae(real_mean: np.ndarray, predicted_mean: np.ndarray) -> float:
    """Mean absolute error between the predicted and the real mean expression."""
    return float(np.mean(np.abs(real_mean - predicted_mean)))
