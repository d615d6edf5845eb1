"""The pipeline registry (fast: builds the pipelines, runs nothing; not marked slow)."""

from __future__ import annotations

import pytest
import yaml

from ptrag_kedro import variants
from tests.conftest import PROJECT_ROOT


def _configured_variants() -> list[str]:
    """The variant names of the project's configuration (conf/base), in their order."""
    with (PROJECT_ROOT / "conf" / "base" / "parameters_training.yml").open() as handle:
        return list(yaml.safe_load(handle)["variants"])


def test_registry_names_every_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    from ptrag_kedro.pipeline_registry import register_pipelines

    # No run in progress (an earlier session in this process may have recorded its variants):
    # the registry reads the names from the project's configuration.
    monkeypatch.setattr(variants, "_from_run", None)
    monkeypatch.setattr(variants, "_built_with", None)
    monkeypatch.chdir(PROJECT_ROOT)
    pipelines = register_pipelines()
    assert {
        "demo",
        "download",
        "ingestion",
        "genept",
        "retrieval_index",
        "analysis",
        "__default__",
    } <= set(pipelines)
    configured = _configured_variants()
    assert configured  # the configuration names at least one variant
    assert {f"train_{variant}" for variant in configured} | {"reporting"} <= set(pipelines)
    default_nodes = {node.name for node in pipelines["__default__"].nodes}
    assert "simulate_demo_screen" in default_nodes and "split_screen" in default_nodes
    assert "simulate_demo_screen" not in {node.name for node in pipelines["analysis"].nodes}
    assert "download_raw_screen" not in default_nodes
