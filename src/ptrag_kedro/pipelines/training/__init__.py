"""Train every model variant with one modular pipeline."""

from ptrag_kedro.pipelines.training.pipeline import create_pipeline, variant_pipeline

__all__ = ["create_pipeline", "variant_pipeline"]
