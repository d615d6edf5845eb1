"""Ingest a Perturb-seq screen in the Replogle-Nadig layout."""

from ptrag_kedro.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
