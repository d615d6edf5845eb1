"""Arc's cell-eval on every method's predictions, beside our metrics (optional ``eval`` extra)."""

from ptrag_kedro.pipelines.cell_eval.pipeline import create_pipeline

__all__ = ["create_pipeline"]
