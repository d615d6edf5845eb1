"""Every (artefact, upstream change) pair: a consumer handed the artefact of before the change
refuses it with one line naming the command that rebuilds it.

Two worlds are built through the node functions: the tiny screen as it is, and after one
upstream change (another split seed, other expression values, other feature settings, other
gene embeddings). Each artefact the change invalidates is then put back, from the first world,
into the second, and every consumer that reads it must raise :class:`StaleArtefactError`. The
unchanged second world must pass every consumer, so the test cannot pass by refusing all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from ptrag_kedro.errors import one_line
from ptrag_kedro.models.config import ModelConfig, SentenceSpec
from ptrag_kedro.models.record import ModelRecord
from ptrag_kedro.models.sentences import checked_samplers
from ptrag_kedro.parameters import GeneptParameters, ReportingParameters, RetrievalParameters
from ptrag_kedro.pipelines.genept.nodes import build_perturbation_embeddings
from ptrag_kedro.pipelines.reporting.baselines import predict_baselines
from ptrag_kedro.pipelines.retrieval_index.nodes import (
    build_perturbation_responses,
    build_retrieval_index,
    find_retrieval_candidates,
)
from ptrag_kedro.provenance import StaleArtefactError, check_inputs
from ptrag_kedro.simulation import plan_screen, simulate_gene_embeddings
from tests.conftest import ingest

GENEPT = GeneptParameters(missing="error", max_missing_fraction=0.0)
RETRIEVAL = RetrievalParameters(k=4)
REPORTING = ReportingParameters(
    n_pcs=5, baselines=("control_mean", "linear"), ridge_alphas=(1.0,), neighbour_ks=(1,)
)
#: What a model that reads candidates and responses reads per sentence.
SENTENCES = SentenceSpec(cell_set_size=4, candidates_k=3, response_neighbours=2)


def _world(raw: ad.AnnData, params: dict[str, Any], vectors: pd.DataFrame) -> dict[str, Any]:
    screen, manifest = ingest(raw, copy.deepcopy(params))
    embeddings, _ = build_perturbation_embeddings(vectors, None, None, manifest, GENEPT)
    index = build_retrieval_index(embeddings, manifest, RETRIEVAL)
    candidates = find_retrieval_candidates(index, embeddings, manifest, RETRIEVAL)
    responses = build_perturbation_responses(screen, manifest)
    provenance = check_inputs(screen, manifest, embeddings, candidates, responses)
    model = ModelRecord(
        config=ModelConfig(n_genes=screen.n_vars, embedding_dim=embeddings.shape[1]),
        sentences=SENTENCES,
        genes=list(map(str, screen.var_names)),
        perturbations=list(embeddings.index),
        provenance=provenance,
    )
    return {
        "screen": screen,
        "split_manifest": manifest,
        "perturbation_embeddings": embeddings,
        "retrieval_index": index,
        "retrieval_candidates": candidates,
        "perturbation_responses": responses,
        "model": model,
    }


def _train(world: dict[str, Any]) -> None:
    checked_samplers(
        ("train",),
        SENTENCES,
        world["screen"],
        world["split_manifest"],
        world["perturbation_embeddings"],
        world["retrieval_candidates"],
        world["perturbation_responses"],
    )


def _predict(world: dict[str, Any]) -> None:
    """What ``predict_test_cells`` checks before it predicts: its inputs, then the model's."""
    provenance, _ = checked_samplers(
        ("test",),
        world["model"].sentences,
        world["screen"],
        world["split_manifest"],
        world["perturbation_embeddings"],
        world["retrieval_candidates"],
        world["perturbation_responses"],
    )
    world["model"].check_inputs(list(world["screen"].var_names), provenance)


#: consumer -> (the artefacts it reads, what it runs)
CONSUMERS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], Any]]] = {
    "build_retrieval_index": (
        ("perturbation_embeddings", "split_manifest"),
        lambda w: build_retrieval_index(
            w["perturbation_embeddings"], w["split_manifest"], RETRIEVAL
        ),
    ),
    "find_retrieval_candidates": (
        ("retrieval_index", "perturbation_embeddings", "split_manifest"),
        lambda w: find_retrieval_candidates(
            w["retrieval_index"], w["perturbation_embeddings"], w["split_manifest"], RETRIEVAL
        ),
    ),
    "build_perturbation_responses": (
        ("screen", "split_manifest"),
        lambda w: build_perturbation_responses(w["screen"], w["split_manifest"]),
    ),
    "training": (
        (
            "screen",
            "split_manifest",
            "perturbation_embeddings",
            "retrieval_candidates",
            "perturbation_responses",
        ),
        _train,
    ),
    "predict_test_cells": (
        (
            "screen",
            "split_manifest",
            "perturbation_embeddings",
            "retrieval_candidates",
            "perturbation_responses",
            "model",
        ),
        _predict,
    ),
    "predict_baselines": (
        ("screen", "perturbation_embeddings", "split_manifest"),
        lambda w: predict_baselines(
            w["screen"], w["perturbation_embeddings"], w["split_manifest"], REPORTING
        ),
    ),
}

#: The command that rebuilds each artefact, in pipeline order. A consumer that finds two of its
#: inputs disagree cannot tell which is the older: it names the rebuild of the one built later
#: (which records the other's fingerprint), so a refusal may name the stale artefact's command
#: or that of any later artefact the consumer reads.
REBUILDS = {
    "screen": ("ingestion",),
    "split_manifest": ("ingestion",),
    "perturbation_embeddings": ("genept",),
    "retrieval_index": ("retrieval_index",),
    "retrieval_candidates": ("retrieval_index",),
    "perturbation_responses": ("retrieval_index",),
    "model": ("training",),
}

EVERYTHING = tuple(REBUILDS)
#: change -> the artefacts it invalidates
CHANGES = {
    "another split seed": EVERYTHING,
    "other expression values": EVERYTHING,
    "other feature settings": EVERYTHING,
    "other gene embeddings": (
        "perturbation_embeddings",
        "retrieval_index",
        "retrieval_candidates",
        "model",
    ),
}


def _changed(change: str, raw: ad.AnnData, params: dict[str, Any], vectors: pd.DataFrame):
    raw, params, vectors = raw.copy(), copy.deepcopy(params), vectors.copy()
    if change == "another split seed":
        params["split"]["seed"] = 1
    elif change == "other expression values":
        raw.X = raw.X.copy()
        raw.X.data[::7] += 1.0  # a re-count, or another normalisation upstream
    elif change == "other feature settings":
        params["features"]["n_top_genes"] -= 10
    else:
        noise = np.random.default_rng(3).normal(scale=0.05, size=vectors.shape)
        vectors = vectors + noise
    return _world(raw, params, vectors)


@pytest.fixture(scope="module")
def worlds(tiny_config, _tiny_screen, _ingestion_params) -> dict[str, dict[str, Any]]:
    vectors = simulate_gene_embeddings(tiny_config, plan_screen(tiny_config).genes)
    built = {"before": _world(_tiny_screen.copy(), _ingestion_params, vectors)}
    for change in CHANGES:
        built[change] = _changed(change, _tiny_screen, _ingestion_params, vectors)
    return built


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_consumer_accepts_a_consistent_world(worlds, change: str) -> None:
    for _, run in CONSUMERS.values():
        run(worlds[change])


#: Pairs with nothing to compare against: the consumer reads no other artefact built after the
#: change. Old embeddings with nothing newer beside them are a consistent world (genept is
#: their only consumer of the gene vectors); everything downstream of them then follows them.
CONSISTENT = {
    ("other gene embeddings", "perturbation_embeddings", "build_retrieval_index"),
    ("other gene embeddings", "perturbation_embeddings", "predict_baselines"),
}

CASES = [
    (change, artefact, consumer)
    for change, invalidated in CHANGES.items()
    for artefact in invalidated
    for consumer, (reads, _) in CONSUMERS.items()
    if artefact in reads and (change, artefact, consumer) not in CONSISTENT
]


@pytest.mark.parametrize(("change", "artefact", "consumer"), CASES)
def test_a_stale_artefact_is_refused(worlds, change: str, artefact: str, consumer: str) -> None:
    stale = {**worlds[change], artefact: worlds["before"][artefact]}
    with pytest.raises(StaleArtefactError) as caught:
        CONSUMERS[consumer][1](stale)
    message = str(caught.value)
    assert one_line(caught.value) == message  # one line
    order = list(REBUILDS)
    later = [name for name in CONSUMERS[consumer][0] if order.index(name) >= order.index(artefact)]
    commands = [f"kedro run --pipelines={step}" for name in later for step in REBUILDS[name]]
    assert any(command in message for command in commands), message


def test_every_artefact_and_consumer_is_covered() -> None:
    read = {artefact for reads, _ in CONSUMERS.values() for artefact in reads}
    assert read == set(REBUILDS)
    assert len(CASES) >= 40
