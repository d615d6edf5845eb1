"""The modular ``training`` pipeline, instantiated per variant under a namespace.

``create_pipeline()`` returns the three instances; ``variant_pipeline(name)`` one of them. A
variant is only its parameters: ``<variant>.model`` (the retrieval block and its settings) and
``<variant>.checkpoint_dir``; ``training`` is shared.
"""

from kedro.pipeline import Pipeline, node, pipeline

from ptrag_kedro.pipelines.training.nodes import train_model

VARIANTS = ("state", "vanilla_rag", "ptrag")
SHARED_INPUTS = {"screen", "perturbation_embeddings", "retrieval_candidates", "split_manifest"}


def _base() -> Pipeline:
    return Pipeline(
        [
            node(
                train_model,
                inputs=[
                    "screen",
                    "perturbation_embeddings",
                    "retrieval_candidates",
                    "split_manifest",
                    "params:training",
                    "params:model",
                    "params:checkpoint_dir",
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
        inputs=SHARED_INPUTS,
        parameters={"params:training": "params:training"},
    )


def create_pipeline(**kwargs) -> Pipeline:
    return sum((variant_pipeline(variant) for variant in VARIANTS), Pipeline([]))
