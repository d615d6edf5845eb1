"""Distribution, expression and cross-condition metrics: pure functions on arrays, one per
metric, registered once (``registry.py``) with their direction and chance level."""

from ptrag_kedro.metrics.cross_condition import centroid_accuracy, discrimination_l1
from ptrag_kedro.metrics.differential import de_genes, de_overlap_fdr, log2_fold_change
from ptrag_kedro.metrics.distributions import energy, mmd, w1, w2
from ptrag_kedro.metrics.expression import mae, mse, pearson_delta, pearson_delta_context
from ptrag_kedro.metrics.paired import paired_test
from ptrag_kedro.metrics.registry import (
    METRICS,
    MetricInputs,
    MetricSpec,
    evaluate,
    metric_registry,
)

__all__ = [
    "METRICS",
    "MetricInputs",
    "MetricSpec",
    "centroid_accuracy",
    "de_genes",
    "de_overlap_fdr",
    "discrimination_l1",
    "energy",
    "evaluate",
    "log2_fold_change",
    "mae",
    "metric_registry",
    "mmd",
    "mse",
    "paired_test",
    "pearson_delta",
    "pearson_delta_context",
    "w1",
    "w2",
]
