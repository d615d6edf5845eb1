"""Every metric once: name, what it measures, which direction is better, and how to call it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ptrag_kedro.metrics import distributions, expression


@dataclass(frozen=True)
class MetricSpec:
    name: str
    description: str
    higher_is_better: bool
    space: Literal["pca", "genes"]

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("w1", "mean over 50 PCs of the 1-D Wasserstein-1 distance", False, "pca"),
        MetricSpec("w2", "mean over 50 PCs of the 1-D Wasserstein-2 distance", False, "pca"),
        MetricSpec(
            "energy", "energy distance (2E|X-Y| - E|X-X'| - E|Y-Y'|) in PCA space", False, "pca"
        ),
        MetricSpec(
            "mmd", "squared MMD, RBF kernel, median-heuristic bandwidth, in PCA space", False, "pca"
        ),
        MetricSpec(
            "pearson_delta",
            "Pearson r of predicted vs real mean shift from control, genes",
            True,
            "genes",
        ),
        MetricSpec("mse", "mean squared error of mean expression, genes", False, "genes"),
        MetricSpec("mae", "mean absolute error of mean expression, genes", False, "genes"),
        MetricSpec(
            "de_overlap@100",
            "overlap of the top-100 moved genes by |mean shift| from control",
            True,
            "genes",
        ),
    )
}


def evaluate(
    real_genes: np.ndarray,
    predicted_genes: np.ndarray,
    control_genes: np.ndarray,
    real_pca: np.ndarray,
    predicted_pca: np.ndarray,
) -> dict[str, float]:
    """All metrics of one (cell line, perturbation); inputs are validated once, here."""
    if (
        real_genes.shape[1] != predicted_genes.shape[1]
        or real_genes.shape[1] != control_genes.shape[1]
    ):
        raise ValueError(
            f"gene dimensions differ: real {real_genes.shape[1]}, predicted {predicted_genes.shape[1]}, "
            f"control {control_genes.shape[1]}"
        )
    if real_pca.shape[1] != predicted_pca.shape[1]:
        raise ValueError("real and predicted PCA coordinates have different numbers of components")
    if min(len(real_genes), len(predicted_genes), len(control_genes)) == 0:
        raise ValueError("an empty set of cells")
    real_mean, predicted_mean = real_genes.mean(axis=0), predicted_genes.mean(axis=0)
    control_mean = control_genes.mean(axis=0)
    functions: dict[str, Callable[[], float]] = {
        "w1": lambda: distributions.w1(real_pca, predicted_pca),
        "w2": lambda: distributions.w2(real_pca, predicted_pca),
        "energy": lambda: distributions.energy(real_pca, predicted_pca),
        "mmd": lambda: distributions.mmd(real_pca, predicted_pca),
        "pearson_delta": lambda: expression.pearson_delta(real_mean, predicted_mean, control_mean),
        "mse": lambda: expression.mse(real_mean, predicted_mean),
        "mae": lambda: expression.mae(real_mean, predicted_mean),
        "de_overlap@100": lambda: expression.de_overlap(
            real_mean, predicted_mean, control_mean, 100
        ),
    }
    return {name: functions[name]() for name in METRICS}
