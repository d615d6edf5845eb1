"""Distribution and expression metrics: pure functions on arrays, one per metric."""

from ptrag_kedro.metrics.distributions import energy, mmd, w1, w2
from ptrag_kedro.metrics.expression import (
    de_overlap,
    mae,
    mse,
    pearson_delta,
    pearson_delta_context,
)
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
    "de_overlap",
    "energy",
    "evaluate",
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
