"""Perturbation embeddings from GenePT vectors or gene-summary text."""

from ptrag_kedro.pipelines.genept.pipeline import create_pipeline

__all__ = ["create_pipeline"]
