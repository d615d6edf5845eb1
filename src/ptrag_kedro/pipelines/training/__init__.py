"""Train STATE, vanilla RAG and PT-RAG with one modular pipeline."""

from ptrag_kedro.pipelines.training.pipeline import VARIANTS, create_pipeline, variant_pipeline

__all__ = ["VARIANTS", "create_pipeline", "variant_pipeline"]
