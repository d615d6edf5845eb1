"""Every metric once: name, what it measures, which direction is better, how to call it, and
what chance scores where that is defined."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from ptrag_kedro.metrics import distributions, expression


@dataclass(frozen=True)
class MetricInputs:
    """One (cell line, perturbation): real, predicted and reference cells, validated once."""

    real_genes: np.ndarray  # [cells, genes]
    predicted_genes: np.ndarray  # [cells, genes]
    control_genes: np.ndarray  # [cells, genes] the line's controls
    perturbed_mean: np.ndarray  # [genes] the line's average perturbed cell (all splits)
    real_pca: np.ndarray  # [cells, PCs]
    predicted_pca: np.ndarray  # [cells, PCs]

    def __post_init__(self) -> None:
        n_genes = self.real_genes.shape[1]
        if (
            self.predicted_genes.shape[1] != n_genes
            or self.control_genes.shape[1] != n_genes
            or self.perturbed_mean.shape != (n_genes,)
        ):
            raise ValueError(
                f"gene dimensions differ: real {n_genes}, predicted "
                f"{self.predicted_genes.shape[1]}, control {self.control_genes.shape[1]}, "
                f"perturbed reference {self.perturbed_mean.shape}"
            )
        if self.real_pca.shape[1] != self.predicted_pca.shape[1]:
            raise ValueError("real and predicted PCA coordinates have different numbers of PCs")
        if min(len(self.real_genes), len(self.predicted_genes), len(self.control_genes)) == 0:
            raise ValueError("an empty set of cells")

    @cached_property
    def real_mean(self) -> np.ndarray:
        return self.real_genes.mean(axis=0)

    @cached_property
    def predicted_mean(self) -> np.ndarray:
        return self.predicted_genes.mean(axis=0)

    @cached_property
    def control_mean(self) -> np.ndarray:
        return self.control_genes.mean(axis=0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    description: str
    higher_is_better: bool
    space: Literal["pca", "genes"]
    compute: Callable[[MetricInputs], float]
    #: the score of a random guess, given the number of genes (None: not defined)
    chance: Callable[[int], float] | None = None

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def metric_registry(n_pcs: int = 50, de_top_n: int = 100) -> dict[str, MetricSpec]:
    """The metrics with the run's settings (PCs of the distribution metrics, top-N of DE)."""
    specs = (*_distribution_metrics(n_pcs), *_expression_metrics(de_top_n))
    return {spec.name: spec for spec in specs}


def _distribution_metrics(n_pcs: int) -> tuple[MetricSpec, ...]:
    """Distances between the real and predicted cell sets, in the held-out line's PCs."""
    in_pcs = f"in the held-out line's first {n_pcs} PCs"
    return (
        MetricSpec(
            "w1",
            f"mean over PCs of the 1-D Wasserstein-1 distance, {in_pcs}",
            False,
            "pca",
            lambda m: distributions.w1(m.real_pca, m.predicted_pca),
        ),
        MetricSpec(
            "w2",
            f"mean over PCs of the 1-D Wasserstein-2 distance, {in_pcs}",
            False,
            "pca",
            lambda m: distributions.w2(m.real_pca, m.predicted_pca),
        ),
        MetricSpec(
            "energy",
            f"energy distance (2E|X-Y| - E|X-X'| - E|Y-Y'|), {in_pcs}",
            False,
            "pca",
            lambda m: distributions.energy(m.real_pca, m.predicted_pca),
        ),
        MetricSpec(
            "mmd",
            f"squared MMD, RBF kernel, bandwidth from the real cells, {in_pcs}",
            False,
            "pca",
            lambda m: distributions.mmd(m.real_pca, m.predicted_pca),
        ),
    )


def _expression_metrics(de_top_n: int) -> tuple[MetricSpec, ...]:
    """Comparisons of the real and predicted mean expression, over genes."""
    return (
        MetricSpec(
            "pearson_delta",
            "Pearson r of predicted vs real mean shift from control, genes",
            True,
            "genes",
            lambda m: expression.pearson_delta(m.real_mean, m.predicted_mean, m.control_mean),
        ),
        MetricSpec(
            "pearson_delta_context",
            "Pearson r of predicted vs real mean shift from the line's average perturbed cell",
            True,
            "genes",
            lambda m: expression.pearson_delta_context(
                m.real_mean, m.predicted_mean, m.perturbed_mean
            ),
        ),
        MetricSpec(
            "mse",
            "mean squared error of mean expression, genes",
            False,
            "genes",
            lambda m: expression.mse(m.real_mean, m.predicted_mean),
        ),
        MetricSpec(
            "mae",
            "mean absolute error of mean expression, genes",
            False,
            "genes",
            lambda m: expression.mae(m.real_mean, m.predicted_mean),
        ),
        MetricSpec(
            f"de_overlap@{de_top_n}",
            f"overlap of the top-{de_top_n} moved genes by |mean shift| from control",
            True,
            "genes",
            lambda m: expression.de_overlap(
                m.real_mean, m.predicted_mean, m.control_mean, de_top_n
            ),
            # a random top-N set of G genes shares N/G of the real top-N on average
            chance=lambda n_genes: min(1.0, de_top_n / n_genes),
        ),
    )


#: The metrics with the default settings (50 PCs, top-100 genes).
METRICS = metric_registry()


def evaluate(inputs: MetricInputs, registry: dict[str, MetricSpec]) -> dict[str, float]:
    """Every metric of one (cell line, perturbation)."""
    return {name: spec.compute(inputs) for name, spec in registry.items()}
