"""Predictions, metrics, baselines and the side-by-side comparison."""

from ptrag_kedro.pipelines.reporting.pipeline import create_pipeline

__all__ = ["create_pipeline"]
