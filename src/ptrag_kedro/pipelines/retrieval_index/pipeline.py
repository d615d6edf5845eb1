"""``retrieval_index`` pipeline: train-only faiss index -> ``retrieval_candidates`` + diagnostics,
and the train response database ``perturbation_responses``."""

from kedro.pipeline import Pipeline, node

from ptrag_kedro.pipelines.retrieval_index.nodes import (
    build_perturbation_responses,
    build_retrieval_index,
    find_retrieval_candidates,
    retrieval_diagnostics,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                build_retrieval_index,
                inputs=["perturbation_embeddings", "split_manifest", "params:retrieval_index"],
                outputs="retrieval_index",
                name="build_retrieval_index",
            ),
            node(
                find_retrieval_candidates,
                inputs=[
                    "retrieval_index",
                    "perturbation_embeddings",
                    "split_manifest",
                    "params:retrieval_index",
                ],
                outputs="retrieval_candidates",
                name="find_retrieval_candidates",
            ),
            node(
                build_perturbation_responses,
                inputs=["screen", "split_manifest"],
                outputs="perturbation_responses",
                name="build_perturbation_responses",
            ),
            node(
                retrieval_diagnostics,
                inputs=[
                    "retrieval_candidates",
                    "perturbation_embeddings",
                    "retrieval_index",
                    "gene_modules",
                ],
                outputs=["retrieval_diagnostics", "retrieval_diagnostics_plot"],
                name="retrieval_diagnostics",
            ),
        ]
    )
