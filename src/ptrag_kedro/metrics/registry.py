"""Every metric once: name, what it measures, which direction is better, how to call it, and
what chance scores where that is defined."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from ptrag_kedro.metrics import cross_condition, differential, distributions, expression


@dataclass(frozen=True)
class MetricInputs:
    """One (cell line, perturbation): real, predicted and reference cells, validated once.

    Besides the condition's own cells, the cross-condition metrics read the line's other
    perturbations: the real centroids of every perturbed group of the line (centroid accuracy)
    and the real shifts of its test perturbations (discrimination).
    """

    real_genes: np.ndarray  # [cells, genes]
    predicted_genes: np.ndarray  # [cells, genes]
    control_genes: np.ndarray  # [cells, genes] the line's controls
    #: [genes] Systema's reference: the mean over the line's train perturbations of their
    #: train-cell centroids (perturbation-weighted)
    reference_mean: np.ndarray
    real_pca: np.ndarray  # [cells, PCs]
    predicted_pca: np.ndarray  # [cells, PCs]
    centroids: np.ndarray  # [groups, genes] real centroid of every perturbed group of the line
    centroids_pca: np.ndarray  # [groups, PCs] the same in the line's PCs
    own_centroid: int  # this condition's row of ``centroids``
    test_deltas: np.ndarray  # [test perturbations, genes] real shifts from the control mean
    own_test: int  # this condition's row of ``test_deltas``
    real_de: np.ndarray  # the real DE genes (indices, most changed first)
    target_gene: int = -1  # the knocked-down gene's column, -1 when it is not a feature
    de_fdr: float = 0.05

    def __post_init__(self) -> None:
        n_genes = self.real_genes.shape[1]
        shapes = {
            "predicted": self.predicted_genes.shape[1],
            "control": self.control_genes.shape[1],
            "reference": self.reference_mean.shape[0],
            "centroids": self.centroids.shape[1],
            "test shifts": self.test_deltas.shape[1],
        }
        if self.reference_mean.ndim != 1 or any(width != n_genes for width in shapes.values()):
            raise ValueError(f"gene dimensions differ: real {n_genes}, {shapes}")
        if not self.real_pca.shape[1] == self.predicted_pca.shape[1] == self.centroids_pca.shape[1]:
            raise ValueError("real, predicted and centroid PCA coordinates differ in PCs")
        if min(len(self.real_genes), len(self.predicted_genes), len(self.control_genes)) == 0:
            raise ValueError("an empty set of cells")
        if not (0 <= self.own_centroid < len(self.centroids)) or not (
            0 <= self.own_test < len(self.test_deltas)
        ):
            raise ValueError("the condition is not among the line's centroids or test shifts")

    @cached_property
    def real_mean(self) -> np.ndarray:
        return self.real_genes.mean(axis=0)

    @cached_property
    def predicted_mean(self) -> np.ndarray:
        return self.predicted_genes.mean(axis=0)

    @cached_property
    def control_mean(self) -> np.ndarray:
        return self.control_genes.mean(axis=0)

    @cached_property
    def predicted_de(self) -> np.ndarray:
        return differential.de_genes(self.predicted_genes, self.control_genes, self.de_fdr)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    description: str
    higher_is_better: bool
    space: Literal["pca", "genes"]
    compute: Callable[[MetricInputs], float]
    #: the score of a prediction that carries no information about this condition (None: not
    #: defined); the summary's chance row is its mean over conditions
    chance: Callable[[MetricInputs], float] | None = None

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def label(self) -> str:
        """The name with its direction, as tables and plots show it."""
        return f"{self.name} {self.arrow}"


def metric_registry(n_pcs: int = 50, de_fdr: float = 0.05) -> dict[str, MetricSpec]:
    """The metrics with the run's settings (PCs of the distribution metrics, DE's FDR)."""
    specs = (
        *_distribution_metrics(n_pcs),
        *_expression_metrics(),
        *_cross_condition_metrics(n_pcs, de_fdr),
    )
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


def _expression_metrics() -> tuple[MetricSpec, ...]:
    """Comparisons of the real and predicted mean expression, over genes."""
    return (
        MetricSpec(
            "pearson_delta",
            "Pearson r of predicted vs real mean shift from control, genes",
            True,
            "genes",
            lambda m: expression.pearson_delta(m.real_mean, m.predicted_mean, m.control_mean),
            chance=lambda m: 0.0,
        ),
        MetricSpec(
            "pearson_delta_context",
            "Pearson r of predicted vs real mean shift from the mean of the line's train "
            "perturbation centroids (Systema's perturbation-specific signal), genes",
            True,
            "genes",
            lambda m: expression.pearson_delta_context(
                m.real_mean, m.predicted_mean, m.reference_mean
            ),
            chance=lambda m: 0.0,
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
    )


def _cross_condition_metrics(n_pcs: int, de_fdr: float) -> tuple[MetricSpec, ...]:
    """Is the prediction for gene g closer to g's real response than to the others'?"""
    return (
        MetricSpec(
            "centroid_accuracy",
            "fraction of the line's other perturbation centroids farther from the predicted mean "
            "than the correct one (Systema), genes",
            True,
            "genes",
            lambda m: cross_condition.centroid_accuracy(
                m.predicted_mean, m.centroids, m.own_centroid
            ),
            chance=lambda m: 0.5,
        ),
        MetricSpec(
            "centroid_accuracy_pca",
            f"centroid accuracy in the held-out line's first {n_pcs} PCs",
            True,
            "pca",
            lambda m: cross_condition.centroid_accuracy(
                m.predicted_pca.mean(axis=0), m.centroids_pca, m.own_centroid
            ),
            chance=lambda m: 0.5,
        ),
        MetricSpec(
            "discrimination_l1",
            "1 - rank / N of the real shift of the condition among the line's N test shifts, by "
            "L1 distance to the predicted shift, target gene excluded (cell-eval), genes",
            True,
            "genes",
            lambda m: cross_condition.discrimination_l1(
                m.predicted_mean - m.control_mean, m.test_deltas, m.own_test, m.target_gene
            ),
            chance=lambda m: (len(m.test_deltas) + 1) / (2 * len(m.test_deltas)),
        ),
        MetricSpec(
            "de_overlap_fdr",
            f"of the k genes a Wilcoxon test calls DE (real vs control, FDR < {de_fdr:g}), the "
            "fraction among the predicted cells' top-k DE genes (cell-eval's overlap_at_N)",
            True,
            "genes",
            lambda m: differential.de_overlap_fdr(m.real_de, m.predicted_de),
            # k genes drawn at random from G share k / G of the real ones on average
            chance=lambda m: len(m.real_de) / m.real_genes.shape[1] if len(m.real_de) else np.nan,
        ),
    )


#: The metrics with the default settings (50 PCs, DE at FDR 0.05).
METRICS = metric_registry()


def evaluate(inputs: MetricInputs, registry: dict[str, MetricSpec]) -> dict[str, float]:
    """Every metric of one (cell line, perturbation)."""
    return {name: spec.compute(inputs) for name, spec in registry.items()}
