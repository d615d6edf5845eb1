"""Simulate the built-in demo screen."""

from ptrag_kedro.pipelines.demo.pipeline import create_pipeline

__all__ = ["create_pipeline"]
