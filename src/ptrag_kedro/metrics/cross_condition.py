"""Metrics that ask whether a prediction is specific to its perturbation: does the prediction
for gene g look more like g's real response than like the other perturbations' responses?

A model that predicts the same average perturbed cell for every gene scores well on w1 and
pearson_delta; it scores chance here (Systema, Viñas Torné et al. 2025; the Virtual Cell
Challenge's perturbation discrimination score, Arc Institute's cell-eval).
"""

from __future__ import annotations

import numpy as np


def centroid_accuracy(predicted_mean: np.ndarray, centroids: np.ndarray, own: int) -> float:
    """Systema's centroid accuracy: the fraction of the *other* real centroids that are farther
    (Euclidean) from the predicted mean than the correct one (row ``own`` of ``centroids``).

    1: every other perturbation's centroid is farther; chance (no information): 0.5. Ties count
    as failures, as in Systema (a strict ``>``). Needs at least two centroids.
    """
    if len(centroids) < 2:
        return float("nan")
    distances = np.linalg.norm(centroids - predicted_mean[None, :], axis=1)
    others = np.delete(distances, own)
    return float(np.mean(others > distances[own]))


def discrimination_l1(
    predicted_delta: np.ndarray, real_deltas: np.ndarray, own: int, exclude: int = -1
) -> float:
    """cell-eval's perturbation discrimination score with the L1 distance.

    ``predicted_delta`` is the predicted pseudobulk shift from the controls, ``real_deltas``
    [N, G] the real shifts of the N evaluated perturbations (row ``own`` is the correct one).
    The target gene (column ``exclude``, -1: none) is left out of every distance. The score is
    1 - rank / N, rank = the number of real shifts strictly closer than the correct one: 1 is
    perfect, (N + 1) / 2N is chance.
    """
    keep = np.ones(real_deltas.shape[1], dtype=bool)
    if exclude >= 0:
        keep[exclude] = False
    distances = np.abs(real_deltas[:, keep] - predicted_delta[None, keep]).sum(axis=1)
    rank = int(np.sum(distances < distances[own]))
    return 1.0 - rank / len(real_deltas)
