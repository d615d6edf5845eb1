"""``cross_validation`` pipeline: every fold's metrics pooled, built from the run's folds and
variants (``cross_validation.folds``, ``variants``). Run by ``kedro cross-validate`` after the
folds, or on its own once they exist."""

from collections.abc import Iterable

from kedro.pipeline import Pipeline, node

from ptrag_kedro.pipelines.cross_validation.nodes import BASELINES, fold_inputs, pool_folds
from ptrag_kedro.variants import fold_names, variant_names


def create_pipeline(
    folds: Iterable[str] | None = None, variants: Iterable[str] | None = None, **kwargs
) -> Pipeline:
    folds = list(fold_names() if folds is None else folds)
    methods = [*(variant_names() if variants is None else variants), BASELINES]
    if not folds:
        return Pipeline([])
    return Pipeline(
        [
            node(
                pool_folds,
                inputs={
                    "reporting": "params:reporting",
                    "cross_validation": "params:cross_validation",
                    **fold_inputs(folds, methods),
                },
                outputs=[
                    "cross_validation_comparison",
                    "cross_validation_paired_tests",
                    "cross_validation_report",
                ],
                name="pool_folds",
            )
        ]
    )
