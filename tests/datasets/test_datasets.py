"""AnnData, JSON and gene-embedding datasets: round trips, atomic saves and refusals."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from kedro.io import DatasetError

from ptrag_kedro.datasets import AnnDataDataset, GeneEmbeddingDataset, JSONDataset


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_anndata_round_trip(tmp_path: Path, tiny_screen: ad.AnnData) -> None:
    dataset = AnnDataDataset(filepath=str(tmp_path / "screen.h5ad"))
    dataset.save(tiny_screen)
    loaded = dataset.load()
    assert (loaded.X != tiny_screen.X).nnz == 0
    pd.testing.assert_frame_equal(loaded.obs, tiny_screen.obs)
    assert list(loaded.var_names) == list(tiny_screen.var_names)
    assert set(loaded.uns) == set(tiny_screen.uns) == {"simulation"}
    assert _leftovers(tmp_path) == []


def test_anndata_missing_file_raises(tmp_path: Path) -> None:
    dataset = AnnDataDataset(filepath=str(tmp_path / "absent.h5ad"))
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="absent.h5ad: no such h5ad file"):
        dataset.load()


@pytest.mark.parametrize("content", ["truncated", "not_hdf5"])
def test_anndata_unreadable_file_one_line(
    tmp_path: Path, tiny_screen: ad.AnnData, content: str
) -> None:
    path = tmp_path / "bad.h5ad"
    if content == "truncated":
        tiny_screen.write_h5ad(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_text("gene,cell_line\nA,k562\n")
    with pytest.raises(DatasetError) as error:
        AnnDataDataset(filepath=str(path)).load()
    message = str(error.value)
    assert str(path) in message and "not a readable h5ad file" in message
    assert "\n" not in message


def test_anndata_whose_obsm_is_short_names_the_field(tmp_path: Path) -> None:
    """A readable HDF5 file whose ``obsm["X_hvg"]`` has fewer rows than obs: named as such, not
    as truncation."""
    import h5py
    from anndata.io import write_elem

    path = tmp_path / "short_obsm.h5ad"
    adata = ad.AnnData(X=np.ones((10, 4), dtype=np.float32))
    adata.obsm["X_hvg"] = np.ones((10, 3), dtype=np.float32)
    adata.write_h5ad(path)
    with h5py.File(path, "a") as handle:
        del handle["obsm/X_hvg"]
        write_elem(handle["obsm"], "X_hvg", np.ones((7, 3), dtype=np.float32))
    with pytest.raises(DatasetError) as error:
        AnnDataDataset(filepath=str(path), load_args={"backed": "r"}).load()
    message = str(error.value)
    assert message.startswith(f"{path}: not a valid AnnData: ") and "'X_hvg'" in message
    assert "(7,)" in message and "truncated" not in message and "\n" not in message


def test_anndata_failed_save_keeps_previous_file(tmp_path: Path, tiny_screen: ad.AnnData) -> None:
    path = tmp_path / "screen.h5ad"
    dataset = AnnDataDataset(filepath=str(path))
    dataset.save(tiny_screen)
    before = path.read_bytes()
    broken = tiny_screen.copy()
    broken.uns["unwritable"] = object()  # h5ad cannot store an arbitrary object
    with pytest.raises(Exception):  # noqa: B017 (anndata's error type for unwritable uns is internal)
        dataset.save(broken)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_anndata_write_only_under_refuses_user_file(
    tmp_path: Path, tiny_screen: ad.AnnData
) -> None:
    user_file = tmp_path / "user" / "screen.h5ad"
    user_file.parent.mkdir()
    user_file.write_bytes(b"the user's data")
    dataset = AnnDataDataset(filepath=str(user_file), write_only_under=str(tmp_path / "demo"))
    with pytest.raises(DatasetError, match="refusing to write"):
        dataset.save(tiny_screen)
    assert user_file.read_bytes() == b"the user's data"
    allowed = AnnDataDataset(
        filepath=str(tmp_path / "demo" / "screen.h5ad"), write_only_under=str(tmp_path / "demo")
    )
    allowed.save(tiny_screen)
    assert allowed.exists()


def test_json_round_trip_and_optional(tmp_path: Path) -> None:
    dataset = JSONDataset(filepath=str(tmp_path / "manifest.json"))
    dataset.save({"train": ["A", "B"], "n": 3})
    assert dataset.load() == {"train": ["A", "B"], "n": 3}
    assert JSONDataset(filepath=None, optional=True).load() is None
    with pytest.raises(DatasetError, match="not optional"):
        JSONDataset(filepath=None)
    with pytest.raises(DatasetError, match="no such JSON file"):
        JSONDataset(filepath=str(tmp_path / "absent.json"), optional=True).load()
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match="broken.json: not valid JSON"):
        JSONDataset(filepath=str(tmp_path / "broken.json")).load()


def test_json_saves_are_atomic_and_checked(tmp_path: Path) -> None:
    """A save that fails half-way keeps the previous file; a refused folder is never written."""
    dataset = JSONDataset(filepath=str(tmp_path / "manifest.json"))
    dataset.save({"n": 1})
    with pytest.raises(DatasetError):  # Kedro wraps the TypeError of an unserialisable value
        dataset.save({"n": 2, "bad": object()})
    assert dataset.load() == {"n": 1}
    assert _leftovers(tmp_path) == []
    guarded = JSONDataset(
        filepath=str(tmp_path / "elsewhere" / "x.json"), write_only_under=str(tmp_path / "raw")
    )
    with pytest.raises(DatasetError, match="refusing to write"):
        guarded.save({"n": 3})
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("name", ["emb.pickle", "emb.csv", "emb.csv.gz", "emb.parquet"])
def test_gene_embedding_round_trip(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        rng.normal(size=(5, 8)).astype(np.float32),
        index=pd.Index(["A", "B", "C", "D", "E"], name="symbol"),
    )
    dataset = GeneEmbeddingDataset(filepath=str(tmp_path / name))
    dataset.save(table)
    loaded = dataset.load()
    assert list(loaded.index) == ["A", "B", "C", "D", "E"]
    np.testing.assert_allclose(loaded.to_numpy(), table.to_numpy(), rtol=1e-6)
    assert loaded.dtypes.unique().tolist() == [np.float32]


class _CreatesFile:
    """Unpickling this would create a file: a stand-in for arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_gene_embedding_malicious_pickle_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"A": [0.1, 0.2], "B": _CreatesFile(str(marker))}))
    with pytest.raises(DatasetError, match="refusing to unpickle '(io|builtins).open'"):
        GeneEmbeddingDataset(filepath=str(path)).load()
    assert not marker.exists()


def test_gene_embedding_real_genept_csv(shared_data: Path) -> None:
    table = GeneEmbeddingDataset(
        filepath=str(shared_data / "genept_ada002_adamson87.csv.gz")
    ).load()
    assert table.shape == (87, 1536)
    assert "ctrl" in table.index
    assert np.allclose(table.loc["ctrl"].to_numpy(), 0.0)
    # GenePT's ada-002 vectors are unit norm.
    norms = np.linalg.norm(table.drop(index="ctrl").to_numpy(), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)


def test_gene_embedding_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown gene-embedding format"):
        GeneEmbeddingDataset(filepath=str(tmp_path / "emb.txt"))


def test_gene_embedding_write_only_under(tmp_path: Path) -> None:
    table = pd.DataFrame(np.ones((2, 3), dtype=np.float32), index=["A", "B"])
    dataset = GeneEmbeddingDataset(
        filepath=str(tmp_path / "user.pickle"), write_only_under=str(tmp_path / "demo")
    )
    with pytest.raises(DatasetError, match="refusing to write"):
        dataset.save(table)
    assert not os.path.exists(tmp_path / "user.pickle")


def test_a_killed_writers_temporary_file_goes_at_the_next_save(tmp_path: Path) -> None:
    """A writer killed mid-save leaves its temporary file; the next save of that path removes
    it (its process is gone), but never a live writer's, nor another host's."""
    import os
    import socket
    import subprocess
    import sys

    from ptrag_kedro.datasets import JSONDataset

    target = tmp_path / "manifest.json"
    host = socket.gethostname().replace(".", "-")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".manifest.json.{host}.{int(dead.stdout)}.abc123.tmp.json"
    live = tmp_path / f".manifest.json.{host}.{os.getpid()}.def456.tmp.json"
    elsewhere = tmp_path / ".manifest.json.otherhost.1.ghi789.tmp.json"
    for path in (stale, live, elsewhere):
        path.write_text("half")
    JSONDataset(filepath=str(target)).save({"a": 1})
    assert not stale.exists() and live.exists() and elsewhere.exists()
    assert JSONDataset(filepath=str(target)).load() == {"a": 1}


def test_artefacts_get_the_users_umask(tmp_path: Path) -> None:
    """A group-shared project folder stays shared: the file's mode is what a plain open gives."""
    import os

    from ptrag_kedro.datasets import JSONDataset

    previous = os.umask(0o002)
    try:
        JSONDataset(filepath=str(tmp_path / "shared.json")).save({"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o664


def test_an_os_error_while_writing_is_one_line_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (ENOSPC, simulated) names the file; the previous file stays, no temporary."""
    import errno

    from ptrag_kedro.datasets import JSONDataset
    from ptrag_kedro.errors import DatasetFileError

    target = tmp_path / "summary.json"
    dataset = JSONDataset(filepath=str(target))
    dataset.save({"old": True})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.replace", full)
    with pytest.raises(DatasetFileError, match=r"summary.json: cannot write it: No space left"):
        dataset.save({"new": True})
    monkeypatch.undo()
    assert dataset.load() == {"old": True}
    assert [path.name for path in tmp_path.iterdir()] == ["summary.json"]


def test_an_h5ad_that_cannot_fit_is_refused_before_it_is_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_screen: ad.AnnData
) -> None:
    """A screen larger than the free space is refused, in one line, before any byte is written
    (not after writing what fits); the old file stays."""
    import collections

    from ptrag_kedro.errors import DatasetFileError

    target = tmp_path / "screen.h5ad"
    dataset = AnnDataDataset(filepath=str(target))
    small = tiny_screen[:10].copy()
    dataset.save(small)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DatasetFileError, match=r"screen.h5ad: cannot write it: it needs at least"):
        dataset.save(tiny_screen)
    monkeypatch.undo()
    assert dataset.load().n_obs == 10
    assert [path.name for path in tmp_path.iterdir()] == ["screen.h5ad"]
    dataset.save(tiny_screen)  # with the space back it is written
    assert dataset.load().n_obs == tiny_screen.n_obs


def test_a_folder_given_as_a_file_is_named_as_such(tmp_path: Path) -> None:
    """A directory passed as a file path (e.g. raw_screen_path) says so, optional or not."""
    from ptrag_kedro.datasets.parquet_dataset import ParquetDataset
    from ptrag_kedro.errors import DatasetFileError

    folder = tmp_path / "screens"
    folder.mkdir()
    for dataset in (
        AnnDataDataset(filepath=str(folder), produced_by="kedro run --pipelines=prepare"),
        ParquetDataset(filepath=str(folder), optional=True),
    ):
        with pytest.raises(DatasetFileError, match=r"screens: is a folder, not a .*file"):
            dataset.load()


def test_a_skip_unchanged_parquet_writes_only_what_changed(tmp_path: Path) -> None:
    """The summary cache: no file for an empty table, no rewrite of the same table, a write of a
    grown one."""
    from ptrag_kedro.datasets import ParquetDataset

    path = tmp_path / "cache.parquet"
    cache = ParquetDataset(filepath=str(path), optional=True, skip_unchanged=True)
    cache.save(cache.load())
    assert not path.exists()
    first = pd.DataFrame({"0": [0.5, 1.5]}, index=["a", "b"])
    cache.save(first)
    written = path.stat().st_mtime_ns
    os.utime(path, ns=(written - 10**9, written - 10**9))
    cache.save(cache.load())
    assert path.stat().st_mtime_ns == written - 10**9
    grown = pd.concat([first, pd.DataFrame({"0": [2.5]}, index=["c"])])
    cache.save(grown)
    pd.testing.assert_frame_equal(cache.load(), grown)
