"""Download the real screen."""

from ptrag_kedro.pipelines.download.pipeline import create_pipeline

__all__ = ["create_pipeline"]
