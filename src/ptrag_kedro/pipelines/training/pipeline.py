"""The modular ``training`` pipeline, instantiated per variant under a namespace.

A variant is only its parameters (``variants.<name>``: the retrieval block and its settings);
``training`` and the ``model`` backbone are shared, and its checkpoints folder comes from the
catalog's ``{variant}.checkpoints``. ``create_pipeline()`` builds one instance per variant of the
run (see ``ptrag_kedro.variants``).
"""

from collections.abc import Iterable

from kedro.pipeline import Pipeline, node, pipeline

from ptrag_kedro.pipelines.training.nodes import train_model
from ptrag_kedro.schema import MODEL_INPUTS
from ptrag_kedro.variants import variant_names


def _base() -> Pipeline:
    return Pipeline(
        [
            node(
                train_model,
                inputs=[
                    "screen",
                    "perturbation_embeddings",
                    "retrieval_candidates",
                    "perturbation_responses",
                    "split_manifest",
                    "params:training",
                    "params:model",
                    "params:variant",
                    "checkpoints",
                ],
                outputs=["model", "loss_history", "loss_plot"],
                name="train_model",
            )
        ]
    )


def variant_pipeline(variant: str) -> Pipeline:
    return pipeline(
        _base(),
        namespace=variant,
        inputs=set(MODEL_INPUTS),
        # Read outside the namespace (loss curves): a public name, not `<variant>.loss_history`.
        outputs={"loss_history": f"{variant}_loss_history"},
        parameters={
            "params:training": "params:training",
            "params:model": "params:model",
            "params:variant": f"params:variants.{variant}",
        },
    )


def create_pipeline(variants: Iterable[str] | None = None, **kwargs) -> Pipeline:
    names = variant_names() if variants is None else variants
    return sum((variant_pipeline(name) for name in names), Pipeline([]))
