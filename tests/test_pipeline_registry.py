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
    assert (
        "demo.simulate_demo_screen" in default_nodes and "ingestion.split_screen" in default_nodes
    )
    assert "demo.simulate_demo_screen" not in {node.name for node in pipelines["analysis"].nodes}
    assert "download.download_raw_screen" not in default_nodes


def test_stages_are_grouped_for_viz_without_renaming_their_datasets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ingestion, genept and retrieval stages are namespaces (kedro-viz collapses them) and
    tags (``kedro run --tags=genept``); their datasets and parameters keep the catalog's names."""
    from ptrag_kedro.pipeline_registry import STAGES, register_pipelines
    from ptrag_kedro.pipelines import genept, ingestion, retrieval_index

    monkeypatch.setattr(variants, "_from_run", None)
    monkeypatch.setattr(variants, "_built_with", None)
    monkeypatch.chdir(PROJECT_ROOT)
    pipelines = register_pipelines()
    for name, package in zip(
        ("ingestion", "genept", "retrieval_index"),
        (ingestion, genept, retrieval_index),
        strict=True,
    ):
        assert name in STAGES
        ungrouped = package.create_pipeline()
        grouped = pipelines[name]
        assert {node.namespace for node in grouped.nodes} == {name}
        assert all(name in node.tags for node in grouped.nodes)
        assert {node.name for node in grouped.nodes} == {
            f"{name}.{node.name}" for node in ungrouped.nodes
        }
        assert grouped.datasets() == ungrouped.datasets()  # parameters included
    assert (
        pipelines["__default__"].only_nodes_with_tags("genept").datasets()
        == pipelines["genept"].datasets()
    )
