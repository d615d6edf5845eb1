"""No val/test gene of an unseen_gene split reaches anything that learns, and changing every
val, test and withheld cell changes nothing that was learnt."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from ptrag_kedro.parameters import GeneptParameters, ReportingParameters, RetrievalParameters
from ptrag_kedro.pipelines.genept.nodes import build_perturbation_embeddings
from ptrag_kedro.pipelines.reporting.baselines import baseline_data
from ptrag_kedro.pipelines.reporting.evaluation import reference_mean
from ptrag_kedro.pipelines.retrieval_index.nodes import (
    build_perturbation_responses,
    build_retrieval_index,
    find_retrieval_candidates,
)
from ptrag_kedro.schema import CONTROL, TEST, TRAIN, VAL, WITHHELD
from ptrag_kedro.shifts import group_means
from ptrag_kedro.simulation import plan_screen, simulate_gene_embeddings, simulate_screen
from tests.conftest import ingest, train_tiny

REPORTING = ReportingParameters(n_pcs=10, ridge_alphas=(1.0, 10.0), neighbour_ks=(1, 3))


def _learnt(raw: ad.AnnData, vectors: pd.DataFrame, params: dict, tmp: Path) -> dict[str, Any]:
    """Everything the pipeline learns from an unseen_gene split of ``raw``."""
    screen, manifest = ingest(raw, copy.deepcopy(params))
    genept = GeneptParameters(missing="error", max_missing_fraction=0.0)
    embeddings, _ = build_perturbation_embeddings(vectors, None, None, manifest, genept)
    retrieval = RetrievalParameters(k=4)
    index = build_retrieval_index(embeddings, manifest, retrieval)
    candidates = find_retrieval_candidates(index, embeddings, manifest, retrieval)
    responses = build_perturbation_responses(screen, manifest)
    data = baseline_data(screen, embeddings, REPORTING)
    groups, means = group_means(screen, [TRAIN, VAL, TEST, CONTROL])
    is_control = (groups["split"] == CONTROL).to_numpy()
    controls = dict(zip(groups.loc[is_control, "cell_line"], means[is_control], strict=True))
    lines = sorted(manifest["cell_lines"])
    inputs = {
        "screen": screen,
        "split_manifest": manifest,
        "perturbation_embeddings": embeddings,
        "retrieval_candidates": candidates,
        "perturbation_responses": responses,
    }
    record, _, _ = train_tiny(inputs, tmp, "response_rag", select_on_val=False)
    return {
        "manifest": manifest,
        "genes": list(screen.var_names),
        "index": list(index.names),
        "candidates": candidates,
        "responses": responses,
        "baselines": data,
        "contexts": {line: data.context_shift(line) for line in lines},
        "references": {
            line: reference_mean(groups[~is_control], means[~is_control], line, controls)
            for line in lines
        },
        "model": record,
    }


@pytest.fixture(scope="module")
def unseen(tiny_config, _ingestion_params, tmp_path_factory) -> dict[str, Any]:
    params = copy.deepcopy(_ingestion_params)
    params["split"]["mode"] = "unseen_gene"
    raw = simulate_screen(tiny_config)
    vectors = simulate_gene_embeddings(tiny_config, plan_screen(tiny_config).genes)
    return {
        "raw": raw,
        "vectors": vectors,
        "params": params,
        "learnt": _learnt(raw, vectors, params, tmp_path_factory.mktemp("unseen")),
        "tmp": tmp_path_factory,
    }


def _held(manifest: dict) -> set[str]:
    return {
        gene
        for entry in manifest["cell_lines"].values()
        for gene in (*entry[VAL], *entry[TEST], *entry[WITHHELD])
    }


def test_no_held_out_gene_reaches_anything_that_learns(unseen) -> None:
    learnt = unseen["learnt"]
    held = _held(learnt["manifest"])
    assert len(held) >= 3
    assert not held & set(learnt["index"])
    assert not held & set(learnt["candidates"]["candidate"])
    assert set(learnt["candidates"]["perturbation"]) >= held - {"non-targeting"}  # queries
    assert not held & set(learnt["responses"]["perturbation"])
    data = learnt["baselines"]
    assert not held & set(data.train["perturbation"])  # ridge, additive, neighbour_mean fits
    assert set(data.val["perturbation"]) <= held  # val is read to choose alpha and k only
    for line in learnt["manifest"]["cell_lines"]:
        for name in held:
            if name in data.embeddings.index:
                neighbours = data.neighbour_shift(line, name, 1)
                assert neighbours is None or np.isfinite(neighbours).all()


def test_changing_every_held_out_cell_changes_nothing_learnt(unseen) -> None:
    learnt = unseen["learnt"]
    held = _held(learnt["manifest"])
    raw = unseen["raw"].copy()
    rows = raw.obs["gene"].isin(held).to_numpy()
    counts = raw.X.toarray()
    # every count of a val, test or withheld cell changes, and no cell gains or loses a gene
    # (QC keeps the same cells): multiplied by 2-5
    factor = np.random.default_rng(0).integers(2, 6, size=(int(rows.sum()), counts.shape[1]))
    counts[rows] = counts[rows] * factor
    raw.X = sp.csr_matrix(counts)
    again = _learnt(raw, unseen["vectors"], unseen["params"], unseen["tmp"].mktemp("changed"))
    # the same split; the screen's fingerprint differs, since it covers the expression values
    fingerprint = "screen_fingerprint"
    assert again["manifest"][fingerprint] != learnt["manifest"][fingerprint]
    assert {**again["manifest"], fingerprint: 0} == {**learnt["manifest"], fingerprint: 0}
    assert again["genes"] == learnt["genes"]  # the highly variable genes
    assert again["index"] == learnt["index"]
    pd.testing.assert_frame_equal(again["candidates"], learnt["candidates"])
    pd.testing.assert_frame_equal(again["responses"], learnt["responses"])
    for line, context in learnt["contexts"].items():
        np.testing.assert_array_equal(again["contexts"][line], context)
        np.testing.assert_array_equal(again["references"][line], learnt["references"][line])
    ours, theirs = learnt["baselines"], again["baselines"]
    np.testing.assert_array_equal(theirs.train_shifts, ours.train_shifts)
    for name, (fit, _) in ours.ridge.items():
        refit = type(fit)(alpha=fit.alpha).fit(
            theirs.features(
                theirs.train["cell_line"], theirs.train["perturbation"], name != "linear"
            ),
            theirs.train_shifts,
        )
        np.testing.assert_allclose(refit.coef_, fit.coef_, rtol=1e-12)
    # ... and the val shifts did change (the check would have seen a leak)
    assert not np.allclose(theirs.val_shifts, ours.val_shifts)
    for name, tensor in learnt["model"].state_dicts["0"].items():
        assert torch.equal(again["model"].state_dicts["0"][name], tensor), name
