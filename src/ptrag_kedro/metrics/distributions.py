"""Distances between a real and a predicted set of cells (rows), e.g. in PCA space."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist, pdist


def _quantile_coupling(
    real: np.ndarray, predicted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monotone coupling of two 1-D samples per column: weights and the paired quantiles.

    The optimal 1-D transport pairs the quantile functions; both are step functions, so on the
    merged grid of their jumps the pairing is exact. Returns ``weights`` [J] and quantiles
    [J, P] of each sample, for P columns at once.
    """
    n, m = len(real), len(predicted)
    grid = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)  # right ends, last = 1
    weights = np.diff(np.concatenate([[0.0], grid]))
    # The quantile on (u_{j-1}, u_j] is the ceil(u_j * n)-th order statistic (1-based).
    real_rows = np.minimum(np.ceil(grid * n - 1e-9).astype(int), n) - 1
    predicted_rows = np.minimum(np.ceil(grid * m - 1e-9).astype(int), m) - 1
    return weights, np.sort(real, axis=0)[real_rows], np.sort(predicted, axis=0)[predicted_rows]


def w1(real: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over columns (PCs) of the 1-D Wasserstein-1 distance."""
    weights, real_q, predicted_q = _quantile_coupling(real, predicted)
    return float(np.mean(weights @ np.abs(real_q - predicted_q)))


def w2(real: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over columns (PCs) of the 1-D Wasserstein-2 distance (a true W2, not W2^2 / 2)."""
    weights, real_q, predicted_q = _quantile_coupling(real, predicted)
    return float(np.mean(np.sqrt(weights @ (real_q - predicted_q) ** 2)))


def energy(real: np.ndarray, predicted: np.ndarray) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic, as the training loss)."""
    return float(
        2 * cdist(real, predicted).mean()
        - cdist(real, real).mean()
        - cdist(predicted, predicted).mean()
    )


def mmd(real: np.ndarray, predicted: np.ndarray) -> float:
    """Squared MMD (biased V-statistic) with an RBF kernel, bandwidth by the median heuristic.

    The bandwidth is the median pairwise distance among the *real* cells, so every method
    compared on one condition meets the same kernel; identical sets give 0.
    """
    if len(real) < 2:
        raise ValueError("mmd needs at least two real cells for its bandwidth")
    bandwidth = float(np.median(pdist(real)))
    if bandwidth == 0.0:
        return 0.0
    scale = 2.0 * bandwidth**2

    def mean_kernel(first: np.ndarray, second: np.ndarray) -> float:
        return float(np.exp(-cdist(first, second, "sqeuclidean") / scale).mean())

    return (
        mean_kernel(real, real)
        + mean_kernel(predicted, predicted)
        - 2.0 * mean_kernel(real, predicted)
    )
