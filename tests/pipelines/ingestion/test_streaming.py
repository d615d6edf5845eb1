"""Bounded-memory ingestion: X read in row blocks from a backed file, HVG statistics streamed,
the screen written block by block; the same screen as scanpy in memory, whatever the block size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from kedro.io import DataCatalog, DatasetError, MemoryDataset
from kedro.runner import SequentialRunner

from ptrag_kedro import h5ad_writer
from ptrag_kedro.datasets import AnnDataDataset, JSONDataset
from ptrag_kedro.parameters import FeatureParameters, ObsColumns, SplitParameters
from ptrag_kedro.pipelines.ingestion import create_pipeline, staged
from ptrag_kedro.pipelines.ingestion.nodes import (
    ScreenError,
    filter_cells,
    record_fingerprint,
    select_features,
    split_screen,
    standardise_screen,
)
from ptrag_kedro.pipelines.ingestion.staged import StagedScreen
from ptrag_kedro.schema import CELL_LINE, CONTROL, SPLIT, TRAIN
from tests.conftest import ingest, ingest_staged


def _backed(raw: ad.AnnData, path: Path) -> ad.AnnData:
    """``raw`` written to ``path`` and loaded as the catalog's ``raw_screen`` is (backed)."""
    raw.write_h5ad(path)
    return AnnDataDataset(filepath=str(path), load_args={"backed": "r"}).load()


def scanpy_reference(raw: ad.AnnData, screen: ad.AnnData, params: dict[str, Any]) -> ad.AnnData:
    """What the in-memory path computed: scanpy's normalize_total + log1p on the cells ingestion
    kept, and highly_variable_genes on their train and control cells, by cell line."""
    features = params["features"]
    adata = raw[screen.obs_names].copy()
    adata.X = adata.X.astype(np.float32)
    adata.obs = screen.obs.copy()
    sc.pp.normalize_total(adata, target_sum=features["normalize_target_sum"])
    sc.pp.log1p(adata)
    learn_from = adata[adata.obs[SPLIT].isin([TRAIN, CONTROL]).to_numpy()]
    several_lines = learn_from.obs[CELL_LINE].nunique() > 1
    statistics = sc.pp.highly_variable_genes(
        learn_from,
        n_top_genes=features["n_top_genes"],
        flavor=features["hvg_flavor"],
        batch_key=CELL_LINE if several_lines else None,
        inplace=False,
    )
    return adata[:, statistics["highly_variable"].to_numpy()].copy()


def assert_same_screen(screen: ad.AnnData, expected: ad.AnnData) -> None:
    assert list(screen.var_names) == list(expected.var_names)
    assert list(screen.obs_names) == list(expected.obs_names)
    assert sp.issparse(screen.X) == sp.issparse(expected.X)
    assert screen.X.dtype == np.float32
    as_dense = (lambda x: x.toarray()) if sp.issparse(screen.X) else np.asarray
    np.testing.assert_allclose(as_dense(screen.X), as_dense(expected.X), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("source", "flavor"),
    [
        ("memory", "seurat"),
        ("backed", "seurat"),
        ("backed_dense", "seurat"),
        ("backed", "cell_ranger"),
    ],
)
def test_streamed_path_equals_scanpy_in_memory(
    tiny_screen: ad.AnnData, ingestion_params: dict, tmp_path: Path, source: str, flavor: str
) -> None:
    ingestion_params["features"].update(hvg_flavor=flavor, block_rows=300)
    if source == "backed_dense":
        tiny_screen.X = tiny_screen.X.toarray()
    raw = tiny_screen if source == "memory" else _backed(tiny_screen, tmp_path / "raw.h5ad")
    screen, _ = ingest(raw, ingestion_params)
    expected = scanpy_reference(tiny_screen, screen, ingestion_params)
    assert screen.n_vars == ingestion_params["features"]["n_top_genes"] < tiny_screen.n_vars
    assert_same_screen(screen, expected)


def test_one_cell_line_is_scanpys_unbatched_call(
    tiny_screen: ad.AnnData, ingestion_params: dict, tmp_path: Path
) -> None:
    one_line = tiny_screen[(tiny_screen.obs["cell_line"] == "k562").to_numpy()].copy()
    ingestion_params["split"]["heldout_cell_line"] = "k562"
    ingestion_params["features"]["block_rows"] = 100
    screen, _ = ingest(_backed(one_line, tmp_path / "k562.h5ad"), ingestion_params)
    assert set(screen.obs[CELL_LINE]) == {"k562"}
    assert_same_screen(screen, scanpy_reference(one_line, screen, ingestion_params))


@pytest.mark.parametrize("dense", [False, True])
def test_block_size_changes_nothing(
    tiny_screen: ad.AnnData, ingestion_params: dict, tmp_path: Path, dense: bool
) -> None:
    """Seven rows a block (hundreds of blocks) or the whole screen in one: the same screen and
    manifest, in memory and as written by the catalog (gzip-compressed for the dense one)."""
    if dense:
        tiny_screen.X = tiny_screen.X.toarray()
    raw = _backed(tiny_screen, tmp_path / "raw.h5ad")
    save_args = {"compression": "gzip"} if dense else None
    results = {}
    for block_rows in (7, 1_000_000):
        ingestion_params["features"]["block_rows"] = block_rows
        staged_screen, manifest = ingest_staged(raw, ingestion_params)
        path = tmp_path / f"{block_rows}.h5ad"
        AnnDataDataset(filepath=str(path), save_args=save_args).save(staged_screen)
        results[block_rows] = (staged_screen.to_anndata(), ad.read_h5ad(path), manifest)
    (few, few_written, few_manifest), (one, one_written, one_manifest) = results.values()
    assert few_manifest == one_manifest
    for screen in (few_written, one, one_written):
        assert_same_screen(screen, few)
        assert (screen.obs == few.obs).all().all()
        assert screen.uns["ptrag"] == few.uns["ptrag"]
    as_dense = np.asarray if dense else (lambda x: x.toarray())
    np.testing.assert_array_equal(as_dense(few.X), as_dense(one.X))  # bit for bit
    np.testing.assert_array_equal(as_dense(few.X), as_dense(few_written.X))


class _CountingReader:
    """A raw X that records how many rows each read asks for."""

    def __init__(self, matrix: Any) -> None:
        self.matrix, self.largest_read = matrix, 0
        self.shape = matrix.shape

    def __getitem__(self, rows: slice) -> Any:
        self.largest_read = max(self.largest_read, len(range(*rows.indices(self.shape[0]))))
        return self.matrix[rows]


def test_x_is_read_one_block_at_a_time(
    tiny_screen: ad.AnnData, ingestion_params: dict, tmp_path: Path
) -> None:
    """No step, the write included, reads more than block_rows rows of X at once."""
    block_rows = 64
    features = FeatureParameters(**{**ingestion_params["features"], "block_rows": block_rows})
    raw = _backed(tiny_screen, tmp_path / "raw.h5ad")
    standardised = standardise_screen(raw, ObsColumns(**ingestion_params["columns"]), "raw.h5ad")
    reader = _CountingReader(standardised.counts)
    filtered = filter_cells(standardised.replace(counts=reader), features)
    split, manifest = split_screen(filtered, SplitParameters(**ingestion_params["split"]), None)
    final, _ = record_fingerprint(select_features(split, features), manifest)
    AnnDataDataset(filepath=str(tmp_path / "screen.h5ad")).save(final)
    assert 0 < reader.largest_read <= block_rows < tiny_screen.n_obs
    assert isinstance(final, StagedScreen) and final.n_obs < tiny_screen.n_obs
    assert_same_screen(ad.read_h5ad(tmp_path / "screen.h5ad"), final.to_anndata())


def _kedro_ingestion(raw_path: Path, out: Path, params: dict[str, Any]) -> None:
    """The ingestion pipeline run by Kedro on a backed raw file, outputs written under ``out``."""
    catalog = DataCatalog(
        {
            "raw_screen": AnnDataDataset(filepath=str(raw_path), load_args={"backed": "r"}),
            "split_lists": MemoryDataset(None),
            "screen": AnnDataDataset(filepath=str(out / "screen.h5ad")),
            "split_manifest": JSONDataset(filepath=str(out / "split_manifest.json")),
            "params:ingestion.raw_screen": MemoryDataset(str(raw_path)),
            "params:ingestion.columns": MemoryDataset(ObsColumns(**params["columns"])),
            "params:ingestion.features": MemoryDataset(FeatureParameters(**params["features"])),
            "params:ingestion.split": MemoryDataset(SplitParameters(**params["split"])),
            **{
                name: MemoryDataset(copy_mode="assign")
                for name in (
                    "standardised_screen",
                    "filtered_screen",
                    "split_cells_screen",
                    "featurised_screen",
                )
            },
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)


def test_kedro_run_on_a_backed_file(
    tiny_screen: ad.AnnData, ingestion_params: dict, tmp_path: Path
) -> None:
    raw_path = tmp_path / "raw.h5ad"
    tiny_screen.write_h5ad(raw_path)
    ingestion_params["features"]["block_rows"] = 250
    _kedro_ingestion(raw_path, tmp_path / "out", ingestion_params)
    written = AnnDataDataset(filepath=str(tmp_path / "out" / "screen.h5ad")).load()
    expected, manifest = ingest(tiny_screen, ingestion_params, source=str(raw_path))
    assert_same_screen(written, expected)
    assert written.uns["ptrag"] == expected.uns["ptrag"]
    assert written.uns["ptrag"]["fingerprint"] == manifest["screen_fingerprint"]


def test_bad_counts_in_a_late_block_leave_no_output(
    tiny_screen: ad.AnnData, ingestion_params: dict, tmp_path: Path
) -> None:
    counts = tiny_screen.X.tolil()
    counts[tiny_screen.n_obs - 2, 5] = 2.5  # in the last of many blocks
    tiny_screen.X = counts.tocsr()
    raw_path = tmp_path / "bad.h5ad"
    tiny_screen.write_h5ad(raw_path)
    ingestion_params["features"]["block_rows"] = 100
    out = tmp_path / "out"
    with pytest.raises(ScreenError, match="non-integer values") as error:
        _kedro_ingestion(raw_path, out, ingestion_params)
    assert "\n" not in str(error.value) and str(raw_path) in str(error.value)
    assert not out.exists() or not any(out.iterdir())


def test_a_failed_write_leaves_no_file(
    tiny_screen: ad.AnnData, ingestion_params: dict, tmp_path: Path, monkeypatch
) -> None:
    """A write that fails after some blocks (disk full, killed): no screen, no temporary file."""
    ingestion_params["features"]["block_rows"] = 100
    screen, _ = ingest_staged(_backed(tiny_screen, tmp_path / "raw.h5ad"), ingestion_params)
    calls = []
    original = staged.log_normalise

    def failing_after_three_blocks(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 3:
            raise OSError("No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(staged, "log_normalise", failing_after_three_blocks)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="No space left on device"):
        AnnDataDataset(filepath=str(out / "screen.h5ad")).save(screen)
    assert len(calls) == 4
    assert not any(out.iterdir())


def test_obsm_features_of_a_backed_screen(
    tiny_screen: ad.AnnData, ingestion_params: dict, tmp_path: Path
) -> None:
    """The preprint layout: features in obsm, kept cells' rows of it; X never read."""
    features = np.random.default_rng(0).random((tiny_screen.n_obs, 12)).astype(np.float32)
    tiny_screen.obsm["X_hvg"] = pd.DataFrame(
        features, index=tiny_screen.obs_names, columns=[f"hvg{i}" for i in range(12)]
    )
    tiny_screen.X = sp.csr_matrix(tiny_screen.shape, dtype=np.float32)  # would fail QC if read
    ingestion_params["features"]["min_genes_per_cell"] = 50
    screen, _ = ingest_staged(_backed(tiny_screen, tmp_path / "raw.h5ad"), ingestion_params)
    AnnDataDataset(filepath=str(tmp_path / "screen.h5ad")).save(screen)
    written = ad.read_h5ad(tmp_path / "screen.h5ad")
    kept = tiny_screen.obs_names.get_indexer(written.obs_names)
    np.testing.assert_array_equal(np.asarray(written.X), features[kept])
    assert written.uns["ptrag"]["features"]["path"] == "obsm:X_hvg"
    assert "min_genes_per_cell" not in written.uns["ptrag"]["quality_control"]


def test_column_major_x_is_refused_in_one_line(
    tiny_screen: ad.AnnData, ingestion_params: dict, tmp_path: Path
) -> None:
    csc = tiny_screen.copy()
    csc.X = csc.X.tocsc()
    with pytest.raises(ScreenError) as error:
        ingest_staged(_backed(csc, tmp_path / "csc.h5ad"), ingestion_params)
    assert "\n" not in str(error.value)
    assert "column-major (CSC)" in str(error.value)


def test_block_rows_is_checked() -> None:
    with pytest.raises(ValueError, match="ingestion.features.block_rows"):
        FeatureParameters(block_rows=0)


def test_a_screen_of_more_than_2_31_values_gets_a_64_bit_indptr(tmp_path: Path) -> None:
    """anndata refuses to append past 2**31 stored values to a 32-bit indptr: such a screen's
    first block is written with a 64-bit one (shown on a small matrix, the switch forced)."""
    matrix = sp.random(30, 6, density=0.5, format="csr", dtype=np.float32, random_state=0)
    path = tmp_path / "wide.h5ad"
    ad.AnnData(
        obs=pd.DataFrame(index=[f"c{i}" for i in range(30)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(6)]),
    ).write_h5ad(path)
    with h5py.File(path, "a") as handle:
        blocks = (matrix[start : start + 7] for start in range(0, 30, 7))
        assert h5ad_writer._append_blocks(handle, blocks, {}, wide_indptr=True) == 30
        assert handle["X"]["indptr"].dtype == np.int64
    np.testing.assert_array_equal(ad.read_h5ad(path).X.toarray(), matrix.toarray())


def test_a_flavour_that_does_not_stream_is_refused_in_one_line(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    """The parameters refuse it first; the node refuses it too if handed one (no silent
    fall-back to an in-memory scanpy call)."""
    features = FeatureParameters(**ingestion_params["features"])
    object.__setattr__(features, "hvg_flavor", "seurat_v3")  # past the parameters' own check
    screen = standardise_screen(tiny_screen, ObsColumns(**ingestion_params["columns"]), "s.h5ad")
    split, _ = split_screen(
        filter_cells(screen, features), SplitParameters(**ingestion_params["split"]), None
    )
    with pytest.raises(ScreenError) as error:
        select_features(split, features)
    assert "\n" not in str(error.value)
    assert "ingestion.features.hvg_flavor" in str(error.value) and "seurat_v3" in str(error.value)
