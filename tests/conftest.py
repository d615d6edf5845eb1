"""Shared fixtures: a tiny simulated screen, the real data folder, the ingestion parameters."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import anndata as ad
import pytest
import yaml

from ptrag_kedro.simulation import SimulationConfig, simulate_screen

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")

#: A screen small enough for unit tests (about 2,000 cells x 200 genes).
TINY_SIMULATION: dict[str, Any] = {
    "seed": 3,
    "n_genes": 200,
    "n_modules": 4,
    "module_size": 20,
    "n_perturbations": 24,
    "cells_per_perturbation": 20,
    "embedding_dim": 32,
    "sparse_group_fraction": 0.0,
}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder beside the project (skip when it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_config() -> SimulationConfig:
    return SimulationConfig.from_params(TINY_SIMULATION)


@pytest.fixture(scope="session")
def _tiny_screen(tiny_config: SimulationConfig) -> ad.AnnData:
    return simulate_screen(tiny_config)


@pytest.fixture
def tiny_screen(_tiny_screen: ad.AnnData) -> ad.AnnData:
    """A fresh copy of the tiny raw screen (tests may modify it)."""
    return _tiny_screen.copy()


@pytest.fixture(scope="session")
def _ingestion_params() -> dict[str, Any]:
    with (PROJECT_ROOT / "conf" / "base" / "parameters_ingestion.yml").open() as handle:
        params = yaml.safe_load(handle)["ingestion"]
    # Resolve the run-time parameters as Kedro would with no --params.
    params["split"]["heldout_cell_line"] = "hepg2"
    params["split"]["seed"] = 0
    params["split"]["split_file"] = None
    params["features"]["n_top_genes"] = 100
    del params["raw_screen"]  # a run-time path; tests name their screen themselves
    return params


@pytest.fixture
def ingestion_params(_ingestion_params: dict[str, Any]) -> dict[str, Any]:
    """The project's ingestion parameters (tests may modify this copy)."""
    return copy.deepcopy(_ingestion_params)


def ingest_staged(
    raw: ad.AnnData,
    params: dict[str, Any],
    split_lists: dict[str, Any] | None = None,
    source: str = "tiny_screen.h5ad",
) -> tuple[Any, dict[str, Any]]:
    """The ingestion nodes in pipeline order, with the parameters Kedro would instantiate: the
    screen (a ``StagedScreen``) as the catalog's ``screen`` dataset receives it."""
    from ptrag_kedro.parameters import FeatureParameters, ObsColumns, SplitParameters
    from ptrag_kedro.pipelines.ingestion.nodes import (
        filter_cells,
        record_fingerprint,
        select_features,
        split_screen,
        standardise_screen,
    )

    features = FeatureParameters(**params["features"])
    standardised = standardise_screen(raw, ObsColumns(**params["columns"]), source)
    split, manifest = split_screen(
        filter_cells(standardised, features), SplitParameters(**params["split"]), split_lists
    )
    return record_fingerprint(select_features(split, features), manifest)


def ingest(
    raw: ad.AnnData,
    params: dict[str, Any],
    split_lists: dict[str, Any] | None = None,
    source: str = "tiny_screen.h5ad",
) -> tuple[ad.AnnData, dict[str, Any]]:
    """:func:`ingest_staged`, the screen in memory."""
    screen, manifest = ingest_staged(raw, params, split_lists, source)
    return screen.to_anndata(), manifest


@pytest.fixture(scope="session")
def prepared_inputs(
    tiny_config: SimulationConfig, _ingestion_params: dict[str, Any]
) -> dict[str, Any]:
    """The tiny demo screen through ingestion, genept and retrieval_index (node functions)."""
    from ptrag_kedro.parameters import GeneptParameters, RetrievalParameters
    from ptrag_kedro.pipelines.genept.nodes import build_perturbation_embeddings
    from ptrag_kedro.pipelines.retrieval_index.nodes import (
        build_perturbation_responses,
        build_retrieval_index,
        find_retrieval_candidates,
    )
    from ptrag_kedro.simulation import plan_screen, simulate_gene_embeddings

    screen, manifest = ingest(simulate_screen(tiny_config), copy.deepcopy(_ingestion_params))
    vectors = simulate_gene_embeddings(tiny_config, plan_screen(tiny_config).genes)
    genept = GeneptParameters(missing="error", max_missing_fraction=0.0)
    embeddings, _ = build_perturbation_embeddings(vectors, None, None, manifest, genept)
    retrieval = RetrievalParameters(k=5)
    index = build_retrieval_index(embeddings, manifest, retrieval)
    candidates = find_retrieval_candidates(index, embeddings, manifest, retrieval)
    return {
        "screen": screen,
        "split_manifest": manifest,
        "perturbation_embeddings": embeddings,
        "retrieval_candidates": candidates,
        "perturbation_responses": build_perturbation_responses(screen, manifest),
    }


#: A backbone small enough for unit tests (shared by every variant, like `params:model`).
TINY_BACKBONE: dict[str, Any] = {"hidden_dim": 16, "n_layers": 1, "n_heads": 2, "mlp_layers": 2}

#: Every retrieval block with the settings a variant of it needs in the tiny tests.
TINY_VARIANTS: dict[str, dict[str, Any]] = {
    "state": {"model": {"retrieval": "none"}},
    "vanilla_rag": {"model": {"retrieval": "vanilla"}, "candidates_k": 3},
    "ptrag": {"model": {"retrieval": "ptrag"}, "candidates_k": 3},
    "response_rag": {"model": {"retrieval": "response"}, "response_neighbours": 2},
}


def tiny_training(**overrides: Any) -> Any:
    """Training parameters for a few CPU steps (tests override what they check)."""
    from ptrag_kedro.parameters import TrainingParameters

    settings = {
        "seeds": [0],
        "max_steps": 4,
        "batch_size": 4,
        "cell_set_size": 8,
        "val_every_n_steps": 2,
        "checkpoint_every_n_steps": 2,
        "accelerator": "cpu",
        "devices": 1,
        "progress_bar": False,
    }
    return TrainingParameters(**{**settings, **overrides})


def train_tiny(
    inputs: dict[str, Any],
    checkpoint_dir: Path,
    variant: str | dict[str, Any] = "ptrag",
    **training: Any,
) -> tuple[dict[str, Any], Any, Any]:
    """Train one tiny variant (a name of TINY_VARIANTS, or its parameters) with the node."""
    from ptrag_kedro.datasets import CheckpointDirectory
    from ptrag_kedro.parameters import VariantParameters
    from ptrag_kedro.pipelines.training.nodes import train_model

    return train_model(
        inputs["screen"],
        inputs["perturbation_embeddings"],
        inputs["retrieval_candidates"],
        inputs["perturbation_responses"],
        inputs["split_manifest"],
        tiny_training(**training),
        TINY_BACKBONE,
        VariantParameters(**(TINY_VARIANTS[variant] if isinstance(variant, str) else variant)),
        CheckpointDirectory(Path(checkpoint_dir)),
    )
