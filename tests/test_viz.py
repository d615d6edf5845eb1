"""The kedro-viz site: one connected graph for the default pipeline, with dataset previews."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

#: ``preview_args.nrows`` of these datasets in conf/base/catalog.yml
SCREEN_PREVIEW_ROWS = 10
COMPARISON_ROWS = 12  # fewer than the catalog's nrows: the preview holds every row


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, _tiny_screen: ad.AnnData) -> Path:
    """`kedro viz build --include-previews` of a copy of the project, with a small `screen` and
    `comparison` on disk (no `kedro run`: the graph needs no data, the two previews a file)."""
    project = tmp_path_factory.mktemp("viz_project")
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()  # Kedro checks it exists; the package itself is installed
    screen = project / "data" / "03_primary" / "screen.h5ad"
    screen.parent.mkdir(parents=True)
    _tiny_screen.write_h5ad(screen)
    # `comparison` is versioned: <filepath>/<run timestamp>/<name>
    comparison = (
        project / "data/08_reporting/comparison.csv/2026-01-01T00.00.00.000Z/comparison.csv"
    )
    comparison.parent.mkdir(parents=True)
    _comparison().to_csv(comparison, index=False)
    kedro = Path(sys.executable).with_name("kedro")
    build = subprocess.run(
        [str(kedro), "viz", "build", "--include-previews"],
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert (project / "build" / "index.html").is_file()
    return project / "build"


def _comparison() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": [f"method_{i}" for i in range(COMPARISON_ROWS)],
            "metric": ["pearson_delta"] * COMPARISON_ROWS,
            "mean": [i / 10 for i in range(COMPARISON_ROWS)],
        }
    )


def _read(site: Path, *parts: str) -> Any:
    return json.loads(site.joinpath("api", *parts).read_text())


def _data_node(site: Path, name: str) -> dict[str, Any]:
    graph = _read(site, "pipelines", "__default__")
    (node,) = [node for node in graph["nodes"] if node["type"] == "data" and node["name"] == name]
    return _read(site, "nodes", node["id"])


def _components(node_ids: set[str], edges: list[tuple[str, str]]) -> list[set[str]]:
    """Connected components of an undirected graph (union-find)."""
    parent = {node: node for node in node_ids}

    def root(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for source, target in edges:
        parent[root(source)] = root(target)
    groups: dict[str, set[str]] = defaultdict(set)
    for node in node_ids:
        groups[root(node)].add(node)
    return sorted(groups.values(), key=len, reverse=True)


def test_default_pipeline_is_one_connected_graph(site: Path) -> None:
    graph = _read(site, "pipelines", "__default__")
    assert graph["selected_pipeline"] == "__default__"
    # Task, dataset and parameter nodes; a collapsed modular pipeline only repeats its children.
    nodes = {node["id"]: node for node in graph["nodes"] if node["type"] != "modularPipeline"}
    names = {node_id: f"{node['name']} ({node['type']})" for node_id, node in nodes.items()}
    assert {"task", "data", "parameters"} <= {node["type"] for node in nodes.values()}
    assert {"raw_screen", "screen", "comparison"} <= {node["name"] for node in nodes.values()}
    edges = [
        (edge["source"], edge["target"])
        for edge in graph["edges"]
        if edge["source"] in nodes and edge["target"] in nodes
    ]
    linked = {node for edge in edges for node in edge}
    islands = sorted(names[node] for node in nodes.keys() - linked)
    assert not islands, f"nodes without an edge: {islands}"
    components = _components(set(nodes), edges)
    assert len(components) == 1, "the graph falls apart into: " + "; ".join(
        ", ".join(sorted(names[node] for node in component)) for component in components
    )


def test_site_holds_the_screen_preview(site: Path, _tiny_screen: ad.AnnData) -> None:
    screen = _data_node(site, "screen")
    assert screen["preview_type"] == "TablePreview"
    assert screen["preview"]["columns"] == list(_tiny_screen.obs.columns)
    assert screen["preview"]["index"] == list(_tiny_screen.obs_names[:SCREEN_PREVIEW_ROWS])


def test_site_holds_the_comparison_preview(site: Path) -> None:
    comparison = _data_node(site, "comparison")
    assert comparison["preview_type"] == "TablePreview"
    assert comparison["preview"] == _comparison().to_dict(orient="split")


def test_site_builds_without_data_for_the_other_previews(site: Path) -> None:
    """Nothing ran: a dataset whose file is missing has no preview, and the build still works."""
    metrics = _data_node(site, "ptrag_metrics")
    assert metrics["preview_type"] == "TablePreview" and metrics["preview"] is None
    report = _data_node(site, "split_manifest")
    assert report["preview_type"] == "JSONPreview" and report["preview"] is None
