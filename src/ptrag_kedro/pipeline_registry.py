"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# Pipelines that read the raw screen, in run order. ``analysis`` runs them on any screen;
# ``__default__`` puts the demo simulator in front, so a bare ``kedro run`` works on a fresh clone.
ANALYSIS_PIPELINES = ("ingestion",)


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline package, plus ``analysis`` and ``__default__``."""
    pipelines = find_pipelines(raise_errors=True)
    pipelines["analysis"] = sum((pipelines[name] for name in ANALYSIS_PIPELINES), Pipeline([]))
    pipelines["__default__"] = pipelines["demo"] + pipelines["analysis"]
    return pipelines
