"""kedro-viz previews of the project's datasets: the rows, columns and renderer each one gives."""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path

import anndata as ad
import h5py
import pandas as pd
import pytest
from kedro.io import DatasetError
from kedro_datasets._typing import JSONPreview, TablePreview

from ptrag_kedro.datasets import (
    AnnDataDataset,
    CheckpointDirectoryDataset,
    CSVDataset,
    FaissIndexDataset,
    GeneEmbeddingDataset,
    JSONDataset,
    ParquetDataset,
    TextModelDataset,
    TorchModelDataset,
)

TABLE_DATASETS = [CSVDataset, ParquetDataset, AnnDataDataset]


def _metrics(n_rows: int = 12) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": [f"method_{i}" for i in range(n_rows)],
            "metric": ["pearson_delta"] * n_rows,
            "mean": [i / 10 for i in range(n_rows)],
            "n_seeds": list(range(n_rows)),
        }
    )


def _viz_preview_type(dataset_class: type) -> str:
    """The renderer name kedro-viz 12.5 takes from ``preview``'s return annotation."""
    annotation = inspect.signature(dataset_class.preview).return_annotation
    return getattr(annotation, "__name__", str(annotation))


@pytest.mark.parametrize("dataset_class", TABLE_DATASETS)
def test_table_previews_are_typed_for_kedro_viz(dataset_class: type) -> None:
    assert typing.get_type_hints(dataset_class.preview)["return"] is TablePreview
    assert _viz_preview_type(dataset_class) == "TablePreview"
    assert inspect.signature(dataset_class.preview).parameters["nrows"].default == 5


def test_json_preview_is_typed_for_kedro_viz() -> None:
    assert typing.get_type_hints(JSONDataset.preview)["return"] is JSONPreview
    assert _viz_preview_type(JSONDataset) == "JSONPreview"


@pytest.mark.parametrize(
    "dataset_class",
    [
        CheckpointDirectoryDataset,
        FaissIndexDataset,
        GeneEmbeddingDataset,
        TextModelDataset,
        TorchModelDataset,
    ],
)
def test_datasets_without_a_table_have_no_preview(dataset_class: type) -> None:
    """kedro-viz calls ``preview`` whenever it exists: none where there is nothing to show."""
    assert not hasattr(dataset_class, "preview")


def test_csv_preview_is_the_first_rows_in_split_form(tmp_path: Path) -> None:
    dataset = CSVDataset(filepath=str(tmp_path / "comparison.csv"))
    dataset.save(_metrics())
    assert dataset.preview(nrows=3) == {
        "index": [0, 1, 2],
        "columns": ["method", "metric", "mean", "n_seeds"],
        "data": [
            ["method_0", "pearson_delta", 0.0, 0],
            ["method_1", "pearson_delta", 0.1, 1],
            ["method_2", "pearson_delta", 0.2, 2],
        ],
    }


@pytest.mark.parametrize(("nrows", "expected"), [(None, 5), (0, 0), (7, 7), (100, 12)])
def test_csv_preview_respects_nrows(tmp_path: Path, nrows: int | None, expected: int) -> None:
    dataset = CSVDataset(filepath=str(tmp_path / "metrics.csv"))
    dataset.save(_metrics())
    preview = dataset.preview() if nrows is None else dataset.preview(nrows=nrows)
    assert preview["index"] == list(range(expected))
    assert [row[0] for row in preview["data"]] == [f"method_{i}" for i in range(expected)]


def test_parquet_preview_keeps_the_index_and_reads_across_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.parquet"
    frame = _metrics().set_index("method")
    frame.to_parquet(path, row_group_size=3)  # the first 7 rows span three row groups
    preview = ParquetDataset(filepath=str(path)).preview(nrows=7)
    assert preview == frame.iloc[:7].to_dict(orient="split")
    assert preview["index"] == [f"method_{i}" for i in range(7)]
    assert preview["columns"] == ["metric", "mean", "n_seeds"]


@pytest.mark.parametrize(("nrows", "expected"), [(None, 5), (0, 0), (2, 2), (50, 12)])
def test_parquet_preview_respects_nrows(tmp_path: Path, nrows: int | None, expected: int) -> None:
    dataset = ParquetDataset(filepath=str(tmp_path / "metrics.parquet"))
    dataset.save(_metrics())
    preview = dataset.preview() if nrows is None else dataset.preview(nrows=nrows)
    assert preview["index"] == list(range(expected))
    assert [row[0] for row in preview["data"]] == [f"method_{i}" for i in range(expected)]
    assert preview["columns"] == ["method", "metric", "mean", "n_seeds"]


def test_anndata_preview_is_the_first_cells_obs(tmp_path: Path, tiny_screen: ad.AnnData) -> None:
    dataset = AnnDataDataset(filepath=str(tmp_path / "screen.h5ad"))
    dataset.save(tiny_screen)
    preview = dataset.preview(nrows=4)
    assert preview["columns"] == list(tiny_screen.obs.columns) == ["gene", "cell_line", "gem_group"]
    assert preview["index"] == list(tiny_screen.obs_names[:4])
    assert preview == tiny_screen.obs.iloc[:4].to_dict(orient="split")
    assert len(dataset.preview()["data"]) == 5


def test_anndata_preview_never_reads_the_matrix(tmp_path: Path, tiny_screen: ad.AnnData) -> None:
    path = tmp_path / "screen.h5ad"
    tiny_screen.write_h5ad(path)
    with h5py.File(path, "a") as handle:  # a matrix that cannot be read: load fails, preview not
        del handle["X"]
        broken = handle.create_group("X")
        broken.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
        broken.attrs["shape"] = tiny_screen.shape
    dataset = AnnDataDataset(filepath=str(path))
    with pytest.raises(DatasetError):
        dataset.load()
    assert dataset.preview(nrows=2)["index"] == list(tiny_screen.obs_names[:2])


def test_anndata_preview_of_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5ad"
    path.write_text("gene,cell_line\nA,k562\n")
    with pytest.raises(DatasetError, match="not a readable h5ad file") as error:
        AnnDataDataset(filepath=str(path)).preview()
    assert "\n" not in str(error.value)


def test_json_preview_is_the_document_as_a_json_string(tmp_path: Path) -> None:
    report = {"module_precision": {"precision": 0.8, "random_expectation": 0.25}, "k": [1, 5]}
    dataset = JSONDataset(filepath=str(tmp_path / "report.json"))
    dataset.save(report)
    preview = dataset.preview()
    assert isinstance(preview, str)  # kedro-viz's frontend JSON.parse-s it
    assert json.loads(preview) == report


@pytest.mark.parametrize(
    "dataset",
    [
        CSVDataset(filepath="absent/comparison.csv", produced_by="kedro run"),
        ParquetDataset(filepath="absent/metrics.parquet"),
        AnnDataDataset(filepath="absent/screen.h5ad"),
        JSONDataset(filepath="absent/report.json"),
        JSONDataset(filepath=None, optional=True),
    ],
    ids=["csv", "parquet", "anndata", "json", "json_unconfigured"],
)
def test_preview_of_a_missing_file_raises_dataset_error(dataset: object) -> None:
    """kedro-viz logs a preview's error and shows none: a build before any run still works."""
    with pytest.raises(DatasetError, match="no such|nothing to preview"):
        dataset.preview()  # type: ignore[attr-defined]


def test_negative_nrows_is_refused(tmp_path: Path) -> None:
    dataset = CSVDataset(filepath=str(tmp_path / "metrics.csv"))
    dataset.save(_metrics())
    with pytest.raises(DatasetError, match="nrows must be >= 0"):
        dataset.preview(nrows=-1)
