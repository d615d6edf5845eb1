"""Distribution and expression metrics: pure functions on arrays, one per metric."""

from ptrag_kedro.metrics.distributions import energy, mmd, w1, w2
from ptrag_kedro.metrics.expression import de_overlap, mae, mse, pearson_delta
from ptrag_kedro.metrics.registry import METRICS, MetricSpec, evaluate

__all__ = [
    "METRICS",
    "MetricSpec",
    "de_overlap",
    "energy",
    "evaluate",
    "mae",
    "mmd",
    "mse",
    "pearson_delta",
    "w1",
    "w2",
]
