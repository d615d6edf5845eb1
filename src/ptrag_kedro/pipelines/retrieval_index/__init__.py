"""The train-only retrieval index and every perturbation's candidates."""

from ptrag_kedro.pipelines.retrieval_index.pipeline import create_pipeline

__all__ = ["create_pipeline"]
