"""``cell_eval`` pipeline: cell-eval's metrics and score of the predictions reporting wrote.

Built from the run's variant names, like ``reporting``; not part of ``__default__`` or
``analysis``: it needs the optional ``eval`` extra (``pip install -e '.[eval]'``).
"""

from collections.abc import Iterable

from kedro.pipeline import Pipeline, node

from ptrag_kedro.pipelines.cell_eval.nodes import BASELINES, evaluate_with_cell_eval
from ptrag_kedro.variants import variant_names


def create_pipeline(variants: Iterable[str] | None = None, **kwargs) -> Pipeline:
    names = [*(variant_names() if variants is None else variants), BASELINES]
    methods = {}
    for name in names:
        methods[f"{name}_predictions"] = f"{name}.predictions"
        methods[f"{name}_metrics"] = f"{name}_metrics"
    return Pipeline(
        [
            node(
                evaluate_with_cell_eval,
                inputs={
                    "screen": "screen",
                    "split_manifest": "split_manifest",
                    "parameters": "params:cell_eval",
                    "reporting": "params:reporting",
                    **methods,
                },
                outputs=["cell_eval_results", "cell_eval_summary"],
                name="evaluate_with_cell_eval",
            )
        ]
    )
