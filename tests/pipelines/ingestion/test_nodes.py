"""Ingestion nodes: demo and real screens, the X_hvg path, split invariants and every bad input."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from ptrag_kedro.datasets import AnnDataDataset
from ptrag_kedro.parameters import FeatureParameters, ObsColumns, ParameterError, SplitParameters
from ptrag_kedro.pipelines.ingestion.nodes import (
    ScreenError,
    filter_cells,
    standardise_screen,
)
from ptrag_kedro.pipelines.ingestion.staged import StagedScreen
from ptrag_kedro.provenance import screen_fingerprint
from ptrag_kedro.schema import CONTROL, TEST, TRAIN, VAL
from tests.conftest import ingest


def standardise(raw: ad.AnnData, params: dict[str, Any]) -> StagedScreen:
    return standardise_screen(raw, ObsColumns(**params["columns"]), "tiny_screen.h5ad")


def quality_control(raw: ad.AnnData, params: dict[str, Any]) -> StagedScreen:
    return filter_cells(standardise(raw, params), FeatureParameters(**params["features"]))


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_demo_screen_counts_path(tiny_screen: ad.AnnData, ingestion_params: dict) -> None:
    screen, manifest = ingest(tiny_screen, ingestion_params)
    assert list(screen.obs.columns[:3]) == ["perturbation", "cell_line", "batch"]
    assert "split" in screen.obs
    assert screen.n_vars == ingestion_params["features"]["n_top_genes"]
    features = screen.uns["ptrag"]["features"]
    assert features["path"].startswith("scanpy:")
    # log1p(normalize_total) values: non-negative, not integers any more
    values = screen.X.data if sp.issparse(screen.X) else screen.X
    assert values.min() >= 0 and not np.allclose(values, np.round(values))
    assert (
        manifest["screen_fingerprint"]
        == screen.uns["ptrag"]["fingerprint"]
        == screen_fingerprint(screen)
    )
    assert manifest["heldout_cell_line"] == "hepg2"


def test_obsm_hvg_path_is_used_when_present(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    rng = np.random.default_rng(0)
    hvg = np.zeros(tiny_screen.n_vars, dtype=bool)
    hvg[rng.choice(tiny_screen.n_vars, 50, replace=False)] = True
    tiny_screen.var["highly_variable"] = hvg
    features = rng.random((tiny_screen.n_obs, 50)).astype(np.float32)
    tiny_screen.obsm["X_hvg"] = features
    screen, _ = ingest(tiny_screen, ingestion_params)
    assert screen.uns["ptrag"]["features"]["path"] == "obsm:X_hvg"
    assert list(screen.var_names) == list(tiny_screen.var_names[hvg])
    kept = tiny_screen.obs_names.get_indexer(screen.obs_names)
    np.testing.assert_array_equal(np.asarray(screen.X), features[kept])


def test_real_papalexi_counts(shared_data: Path, ingestion_params: dict) -> None:
    raw = AnnDataDataset(filepath=str(shared_data / "papalexi2021_thp1_crispr_counts.h5ad")).load()
    ingestion_params["split"]["heldout_cell_line"] = "thp1"
    screen, manifest = ingest(raw, ingestion_params)
    assert screen.n_vars == ingestion_params["features"]["n_top_genes"]
    assert set(screen.obs["cell_line"]) == {"thp1"}
    line = manifest["cell_lines"]["thp1"]
    _check_split_invariants(screen, manifest)
    # the 25 perturbations of the file that pass QC, split by the configured fractions
    perturbed = set(screen.obs.loc[screen.obs["split"] != CONTROL, "perturbation"])
    assert set(line["train"]) | set(line["val"]) | set(line["test"]) == perturbed
    assert len(perturbed) == 25
    split = ingestion_params["split"]
    assert len(line["val"]) == round(split["val_fraction"] * 25)
    assert len(line["test"]) == round(split["test_fraction"] * 25)
    assert line["n_control_cells"] == (screen.obs["split"] == CONTROL).sum() > 1000
    assert screen.obs["batch"].nunique() == 3


# ------------------------------------------------------------------ split invariants


def _check_split_invariants(screen: ad.AnnData, manifest: dict) -> None:
    obs = screen.obs
    heldout = manifest["heldout_cell_line"]
    for line, kinds in manifest["cell_lines"].items():
        train, val, test = (set(kinds[kind]) for kind in (TRAIN, VAL, TEST))
        assert not (train & val) and not (train & test) and not (val & test)
        in_line = obs["cell_line"] == line
        # controls of every line stay available as basal cells
        assert kinds["n_control_cells"] > 0
        assert ((obs["split"] == CONTROL) & in_line).sum() == kinds["n_control_cells"]
        for kind, names in ((TRAIN, train), (VAL, val), (TEST, test)):
            cells = obs[in_line & (obs["split"] == kind)]
            assert set(cells["perturbation"]) == names
        if line != heldout:
            assert not test
    assert (obs.loc[obs["split"] == CONTROL, "perturbation"] == manifest["control_label"]).all()
    assert not obs["split"].isna().any()


def test_few_shot_split_invariants(tiny_screen: ad.AnnData, ingestion_params: dict) -> None:
    screen, manifest = ingest(tiny_screen, ingestion_params)
    _check_split_invariants(screen, manifest)
    heldout = manifest["cell_lines"]["hepg2"]
    n = len(heldout[TRAIN]) + len(heldout[VAL]) + len(heldout[TEST])
    split = ingestion_params["split"]
    assert len(heldout[VAL]) == round(split["val_fraction"] * n)
    assert len(heldout[TEST]) == round(split["test_fraction"] * n)
    assert len(heldout[VAL]) > 0 and len(heldout[TEST]) > len(heldout[VAL])
    for line in ("k562", "rpe1", "jurkat"):
        assert not manifest["cell_lines"][line][VAL]
    again, _ = ingest(tiny_screen.copy(), ingestion_params)
    assert (again.obs["split"] == screen.obs["split"]).all()
    ingestion_params["split"]["seed"] = 1
    _, other = ingest(tiny_screen.copy(), ingestion_params)
    assert other["cell_lines"]["hepg2"][TEST] != heldout[TEST]


def test_zero_shot_split(tiny_screen: ad.AnnData, ingestion_params: dict) -> None:
    ingestion_params["split"]["mode"] = "zero_shot"
    ingestion_params["split"]["heldout_cell_line"] = "rpe1"
    screen, manifest = ingest(tiny_screen, ingestion_params)
    _check_split_invariants(screen, manifest)
    rpe1 = manifest["cell_lines"]["rpe1"]
    assert not rpe1[TRAIN] and not rpe1[VAL]
    in_rpe1 = screen.obs[screen.obs["cell_line"] == "rpe1"]
    assert set(rpe1[TEST]) == set(in_rpe1["perturbation"]) - {manifest["control_label"]}
    assert len(rpe1[TEST]) > 0
    assert set(screen.obs.loc[screen.obs["cell_line"] == "rpe1", "split"]) == {TEST, CONTROL}
    assert sum(len(manifest["cell_lines"][line][VAL]) for line in ("k562", "jurkat", "hepg2")) > 0


def test_split_from_file(tiny_screen: ad.AnnData, ingestion_params: dict, caplog) -> None:
    perturbed = sorted(
        set(tiny_screen.obs.loc[tiny_screen.obs["cell_line"] == "hepg2", "gene"])
        - {"non-targeting"}
    )
    lists = {
        "val": perturbed[:2] + ["NOT_A_GENE"],
        "test": [name.lower() for name in perturbed[2:6]] + ["ALSO_ABSENT", "X2"],
    }
    ingestion_params["split"]["split_file"] = "authors_split.json"
    with caplog.at_level(logging.WARNING):
        screen, manifest = ingest(tiny_screen, ingestion_params, lists)
    _check_split_invariants(screen, manifest)
    assert manifest["cell_lines"]["hepg2"][VAL] == perturbed[:2]
    assert manifest["cell_lines"]["hepg2"][TEST] == perturbed[2:6]  # matched case-insensitively
    assert manifest["missing_from_screen"] == {"val": ["NOT_A_GENE"], "test": ["ALSO_ABSENT", "X2"]}
    assert manifest["source"] == "authors_split.json"
    assert "2 of 6 'test' genes are not perturbed" in caplog.text


def test_real_authors_split_file_format(
    shared_data: Path, tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    """The authors' lists name real genes, none of which the simulated screen has: a clear error."""
    lists = json.loads((shared_data / "replogle_nadig_fewshot_split.json").read_text())
    assert len(lists["val"]) == 104 and len(lists["test"]) == 624
    ingestion_params["split"]["split_file"] = "replogle_nadig_fewshot_split.json"
    with pytest.raises(ScreenError) as error:
        ingest(tiny_screen, ingestion_params, lists)
    assert_one_line(
        error, "replogle_nadig_fewshot_split.json", "none of the 104 'val' genes", "hepg2"
    )


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("column", ["gene", "cell_line", "gem_group"])
def test_missing_obs_column(tiny_screen: ad.AnnData, ingestion_params: dict, column: str) -> None:
    del tiny_screen.obs[column]
    with pytest.raises(ScreenError) as error:
        standardise(tiny_screen, ingestion_params)
    assert_one_line(error, "tiny_screen.h5ad", f"obs column '{column}'", "missing")


def test_no_control_cells_in_a_line(tiny_screen: ad.AnnData, ingestion_params: dict) -> None:
    keep = ~(
        (tiny_screen.obs["cell_line"] == "rpe1") & (tiny_screen.obs["gene"] == "non-targeting")
    )
    with pytest.raises(ScreenError) as error:
        standardise(tiny_screen[keep.to_numpy()].copy(), ingestion_params)
    assert_one_line(error, "tiny_screen.h5ad", "'gene'", "no 'non-targeting'", "rpe1")


def test_other_control_label(tiny_screen: ad.AnnData, ingestion_params: dict) -> None:
    tiny_screen.obs["gene"] = tiny_screen.obs["gene"].cat.rename_categories(
        {"non-targeting": "ctrl"}
    )
    with pytest.raises(ScreenError, match="no 'non-targeting'"):
        standardise(tiny_screen, ingestion_params)
    ingestion_params["columns"]["control_label"] = "ctrl"
    screen, manifest = ingest(tiny_screen, ingestion_params)
    assert manifest["control_label"] == "ctrl"
    assert (screen.obs.loc[screen.obs["perturbation"] == "ctrl", "split"] == CONTROL).all()


@pytest.mark.parametrize(
    ("value", "fragment"), [(-1.0, "negative"), (np.nan, "NaN"), (0.5, "non-integer")]
)
def test_bad_counts(
    tiny_screen: ad.AnnData, ingestion_params: dict, value: float, fragment: str
) -> None:
    tiny_screen.X.data[7] = value
    with pytest.raises(ScreenError) as error:
        quality_control(tiny_screen, ingestion_params)
    assert_one_line(error, "tiny_screen.h5ad", "X holds", fragment)


def test_bad_dense_counts(tiny_screen: ad.AnnData, ingestion_params: dict) -> None:
    tiny_screen.X = tiny_screen.X.toarray()
    tiny_screen.X[3, 4] = -2
    with pytest.raises(ScreenError, match="negative"):
        quality_control(tiny_screen, ingestion_params)


def test_highly_variable_genes_ignore_held_out_cells(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    """Change every val and test cell beyond recognition: the same genes are chosen."""
    screen, _ = ingest(tiny_screen.copy(), ingestion_params)
    held_out = screen.obs_names[screen.obs["split"].isin([VAL, TEST]).to_numpy()]
    rows = tiny_screen.obs_names.isin(held_out)
    changed = tiny_screen.copy()
    counts = changed.X.toarray()
    rng = np.random.default_rng(0)
    counts[rows] = rng.poisson(rng.gamma(0.3, 30.0, (rows.sum(), counts.shape[1])))
    changed.X = sp.csr_matrix(counts)
    again, _ = ingest(changed, ingestion_params)
    assert list(again.var_names) == list(screen.var_names)
    assert set(again.obs_names) == set(screen.obs_names)  # the same cells passed QC
    # ... whereas choosing on every cell (the held-out ones included) picks other genes
    normalised = changed.copy()
    sc.pp.normalize_total(normalised, target_sum=1e4)
    sc.pp.log1p(normalised)
    on_all = sc.pp.highly_variable_genes(
        normalised,
        n_top_genes=ingestion_params["features"]["n_top_genes"],
        flavor=ingestion_params["features"]["hvg_flavor"],
        batch_key="cell_line",
        inplace=False,
    )
    assert set(normalised.var_names[on_all["highly_variable"].to_numpy()]) != set(screen.var_names)


def test_split_parameters_are_checked() -> None:
    with pytest.raises(ParameterError, match="ingestion.split.mode must be one of few_shot"):
        SplitParameters(heldout_cell_line="k562", mode="half_shot")
    with pytest.raises(ParameterError, match="ingestion.split.seed must be an integer, got 'abc'"):
        SplitParameters(heldout_cell_line="k562", seed="abc")
    with pytest.raises(ParameterError, match="heldout_cell_line must name a cell line"):
        SplitParameters(heldout_cell_line="", mode="few_shot")
    with pytest.raises(ParameterError, match="other_lines must be withhold or evaluate"):
        SplitParameters(heldout_cell_line="k562", mode="unseen_gene", other_lines="drop")
    assert SplitParameters(heldout_cell_line=None, mode="unseen_gene").heldout_cell_line == ""
    with pytest.raises(ParameterError, match="val_fraction and test_fraction"):
        SplitParameters(heldout_cell_line="k562", val_fraction=0.7, test_fraction=0.5)
    with pytest.raises(ParameterError, match="hvg_flavor"):
        FeatureParameters(hvg_flavor="seurat_v3")


def test_heldout_line_missing(tiny_screen: ad.AnnData, ingestion_params: dict) -> None:
    ingestion_params["split"]["heldout_cell_line"] = "hek293"
    with pytest.raises(ScreenError) as error:
        ingest(tiny_screen, ingestion_params)
    assert_one_line(error, "tiny_screen.h5ad", "'cell_line'", "'hek293'", "heldout_cell_line")


def test_empty_split(tiny_screen: ad.AnnData, ingestion_params: dict) -> None:
    ingestion_params["split"]["val_fraction"] = 0.0
    with pytest.raises(ScreenError) as error:
        ingest(tiny_screen, ingestion_params)
    assert_one_line(error, "tiny_screen.h5ad", "val split is empty")


def test_split_file_malformed_and_overlapping(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    ingestion_params["split"]["split_file"] = "lists.json"
    with pytest.raises(ScreenError) as error:
        ingest(tiny_screen.copy(), ingestion_params, {"val": "ABC", "test": []})
    assert_one_line(error, "lists.json", "field 'val'")
    in_heldout = tiny_screen.obs["cell_line"] == "hepg2"
    perturbed = sorted(set(tiny_screen.obs.loc[in_heldout, "gene"]) - {"non-targeting"})
    with pytest.raises(ScreenError) as error:
        ingest(tiny_screen, ingestion_params, {"val": perturbed[:3], "test": perturbed[2:5]})
    assert_one_line(error, "lists.json", "share genes")


@pytest.mark.parametrize("path", ["counts", "obsm"])
def test_small_perturbation_groups_are_dropped(
    tiny_screen: ad.AnnData, ingestion_params: dict, path: str
) -> None:
    obs = tiny_screen.obs
    in_k562 = (obs["cell_line"] == "k562").to_numpy()
    target = sorted(set(obs.loc[in_k562, "gene"]) - {"non-targeting"})[0]
    group = np.flatnonzero(in_k562 & (obs["gene"] == target).to_numpy())
    keep = np.ones(tiny_screen.n_obs, dtype=bool)
    keep[group[3:]] = False  # leave 3 cells, below min_cells_per_perturbation = 5
    screen = tiny_screen[keep].copy()
    ingestion_params["features"]["min_genes_per_cell"] = 0  # isolate the group-size filter
    if path == "obsm":
        screen.obsm["X_hvg"] = np.ones((screen.n_obs, 4), dtype=np.float32)
    filtered = quality_control(screen, ingestion_params)
    remaining = filtered.obs[filtered.obs["cell_line"] == "k562"]
    assert target not in set(remaining["perturbation"])
    assert filtered.n_obs == screen.n_obs - 3
    assert (remaining["perturbation"] == "non-targeting").any()
    featurised, _ = ingest(screen, ingestion_params)
    assert featurised.n_obs == screen.n_obs - 3
    assert featurised.uns["ptrag"]["features"]["path"].startswith(
        "obsm" if path == "obsm" else "scanpy"
    )


def test_the_fingerprint_covers_the_expression_values(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    """The same cells with other counts, or another normalisation, are another screen (its
    responses, models and checkpoints are stale); reading in other blocks is the same one."""
    _, manifest = ingest(tiny_screen.copy(), ingestion_params)
    _, again = ingest(tiny_screen.copy(), ingestion_params)
    assert again["screen_fingerprint"] == manifest["screen_fingerprint"]
    blocked = copy.deepcopy(ingestion_params)
    blocked["features"]["block_rows"] = 97
    assert (
        ingest(tiny_screen.copy(), blocked)[1]["screen_fingerprint"]
        == manifest["screen_fingerprint"]
    )
    changed = tiny_screen.copy()
    counts = changed.X.toarray()
    counts[5, np.flatnonzero(counts[5])[0]] += 1  # one count of one cell
    changed.X = sp.csr_matrix(counts)
    assert (
        ingest(changed, ingestion_params)[1]["screen_fingerprint"] != manifest["screen_fingerprint"]
    )
    renormalised = copy.deepcopy(ingestion_params)
    renormalised["features"]["normalize_target_sum"] = 5000
    assert (
        ingest(tiny_screen.copy(), renormalised)[1]["screen_fingerprint"]
        != manifest["screen_fingerprint"]
    )
    # the obsm path: another feature matrix for the same cells is another screen
    with_obsm = tiny_screen.copy()
    with_obsm.obsm["X_hvg"] = np.random.default_rng(0).random((with_obsm.n_obs, 6)).astype("f4")
    first = ingest(with_obsm.copy(), ingestion_params)[1]["screen_fingerprint"]
    with_obsm.obsm["X_hvg"][3, 2] += 0.5
    assert ingest(with_obsm, ingestion_params)[1]["screen_fingerprint"] != first


def test_duplicate_gene_names_are_refused_and_cell_names_made_unique(
    tiny_screen: ad.AnnData, ingestion_params: dict, caplog: pytest.LogCaptureFixture
) -> None:
    genes = tiny_screen.copy()
    genes.var_names = [*genes.var_names[:-2], genes.var_names[0], genes.var_names[1]]
    with pytest.raises(ScreenError) as error:
        ingest(genes, ingestion_params)
    assert_one_line(error, "tiny_screen.h5ad", "var names (genes) are not unique", "SIM00000")
    cells = tiny_screen.copy()
    names = list(cells.obs_names)
    names[1] = names[0]
    cells.obs_names = names
    with caplog.at_level(logging.WARNING):
        screen, _ = ingest(cells, ingestion_params)
    assert screen.obs_names.is_unique and "cell names (obs names) repeat" in caplog.text
