"""Pooling the folds of ``kedro cross-validate``: every held-out line and split seed."""

from ptrag_kedro.pipelines.cross_validation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
