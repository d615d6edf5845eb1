"""AnnData (h5ad) dataset: versioned, on any fsspec filesystem, with atomic local saves and
one-line errors for unreadable files."""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import anndata as ad
import h5py
import pandas as pd
import scipy.sparse as sp
from kedro.io import Version

from ptrag_kedro.datasets._files import FileDataset, TablePreviewMixin, check_write_allowed
from ptrag_kedro.download import RemoteFile
from ptrag_kedro.errors import DatasetFileError, one_line
from ptrag_kedro.h5ad_writer import write_anndata

logger = logging.getLogger(__name__)

_READ_ERRORS = (OSError, KeyError, ValueError, TypeError)


class H5adWriter(Protocol):
    """What ``save`` writes besides an ``AnnData``: anything that writes itself as an h5ad file.

    Ingestion's ``StagedScreen`` is one: it appends X block by block, so a screen larger than
    memory is saved without ever being whole.
    """

    obs: pd.DataFrame
    n_obs: int
    n_vars: int

    def write_h5ad(self, path: str | PathLike, **kwargs: Any) -> None: ...


def _array_bytes(array: Any) -> int:
    if sp.issparse(array):
        return sum(int(getattr(array, name).nbytes) for name in ("data", "indices", "indptr"))
    return int(getattr(array, "nbytes", 0))


def _stored_bytes(data: ad.AnnData | H5adWriter) -> int:
    """A lower bound of the h5ad file's size: the arrays held in memory (X, obsm, the staged
    screen's chosen features) and the obs table; streamed counts are not counted."""
    total = int(data.obs.memory_usage(index=True, deep=False).sum())
    if isinstance(data, ad.AnnData):
        arrays = [data.X, *data.obsm.values()] if not data.isbacked else list(data.obsm.values())
    else:
        arrays = [getattr(data, "features", None)]
    return total + sum(_array_bytes(array) for array in arrays if array is not None)


class AnnDataDataset(
    TablePreviewMixin, FileDataset[ad.AnnData | H5adWriter | RemoteFile, ad.AnnData]
):
    """Load and save an ``AnnData`` as h5ad; kedro-viz previews the first cells' ``obs``.

    Example catalog entry::

        screen:
          type: ptrag_kedro.datasets.AnnDataDataset
          filepath: data/03_primary/screen.h5ad

    h5py reads local files only: a remote file (``s3://...``) is downloaded to a local
    temporary file to be read (kept while a backed ``AnnData`` uses it) and written locally
    then uploaded.

    Args:
        filepath: path of the h5ad file, local or with a protocol.
        load_args: passed to ``anndata.read_h5ad`` (e.g. ``backed: r``).
        save_args: passed to ``write_h5ad`` of what is saved (e.g. ``compression: gzip``).
        write_only_under: if set, saving anywhere outside this folder is refused. Raw inputs
            use it so the demo simulator can never overwrite a user's screen.
        produced_by: the command that creates the file, named when it is missing.
        version, credentials, fs_args: as in kedro-datasets (see :class:`FileDataset`).
        metadata: free-form metadata for plugins (kedro-viz), ignored here.
    """

    file_kind = "h5ad file"

    def __init__(  # noqa: PLR0913 (kedro-datasets' arguments, plus ours)
        self,
        *,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        write_only_under: str | None = None,
        produced_by: str | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            filepath=filepath,
            write_only_under=write_only_under,
            produced_by=produced_by,
            version=version,
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )
        self._load_args = dict(load_args or {})
        self._save_args = dict(save_args or {})

    def load(self) -> ad.AnnData:
        path = self._load_path()
        if self._is_local:
            return self._read(path, Path(path.as_posix()))
        if not self._load_args.get("backed"):
            with self._local_copy(path) as local:
                return self._read(path, local)
        # A backed AnnData reads its file for as long as it lives: the download goes with it.
        folder = tempfile.mkdtemp(prefix="ptrag-load-")
        try:
            local = Path(folder) / path.name
            self._download(path, local)
            adata = self._read(path, local)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        weakref.finalize(adata, shutil.rmtree, folder, ignore_errors=True)
        return adata

    def _read(self, path: PurePosixPath, local: Path) -> ad.AnnData:
        try:
            return ad.read_h5ad(local, **self._load_args)
        except _READ_ERRORS as exc:
            raise self._unreadable(path, exc) from exc

    def save(self, data: ad.AnnData | H5adWriter | RemoteFile) -> None:
        """Write an ``AnnData`` or an :class:`H5adWriter` (ingestion's staged screen, written
        block by block) to a temporary file renamed into place once complete: a failure part-way
        leaves the previous file or none. Or fetch a :class:`RemoteFile` to this path (the
        download node's output): streamed to ``<file>.part``, resumed after an interruption,
        size-checked, then renamed; a complete file already here is left alone (on a remote
        filesystem it is fetched to a local temporary file, then uploaded)."""
        if isinstance(data, RemoteFile):
            self._fetch(data)
            return
        # Compression can make the file smaller than the arrays, so no lower bound then.
        compressed = self._save_args.get("compression") is not None
        with self._write_target(0 if compressed else _stored_bytes(data)) as tmp_path:
            if isinstance(data, ad.AnnData):
                write_anndata(tmp_path, data, **self._save_args)
            else:
                data.write_h5ad(tmp_path, **self._save_args)
        logger.info("Wrote %s (%d cells x %d genes)", self._shown(), data.n_obs, data.n_vars)

    def _fetch(self, remote: RemoteFile) -> None:
        save_path = self._save_path()
        check_write_allowed(self._protocol, save_path, self._write_only_under)
        if self._is_local:
            # The download is atomic itself (``<file>.part``, renamed once complete) and resumes
            # a partial one: fetched straight to the file, or to its new version.
            remote.fetch(Path(save_path.as_posix()))
            return
        with tempfile.TemporaryDirectory(prefix="ptrag-download-") as folder:
            local = Path(folder) / save_path.name
            remote.fetch(local)
            self._upload(local, save_path)

    def _head(self, path: PurePosixPath, nrows: int) -> pd.DataFrame:
        """The first ``nrows`` cells' metadata (``obs``: perturbation, cell line, split...).

        Only the file's ``obs`` group is read: never ``X``, layers or embeddings (on a remote
        filesystem, h5py reads through an fsspec file, fetching only the blocks it needs).
        """
        try:
            with (
                self._fs.open(self._fs_path(path), mode="rb") as raw,
                h5py.File(raw, "r") as handle,
            ):
                obs = ad.io.read_elem(handle["obs"])
        except _READ_ERRORS as exc:
            raise self._unreadable(path, exc) from exc
        return obs.iloc[:nrows]

    def _unreadable(self, path: PurePosixPath, exc: Exception) -> DatasetFileError:
        # h5py reports truncation and foreign formats as OSError with a multi-line text;
        # anndata reports an HDF5 file whose parts disagree (an obsm with fewer rows than obs)
        # as ValueError, and a missing group as KeyError.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError):
            return DatasetFileError(
                f"{self._shown(path)}: not a readable h5ad file (truncated or another format): "
                f"{reason}"
            )
        return DatasetFileError(f"{self._shown(path)}: not a valid AnnData: {one_line(exc, 300)}")

    def _describe(self) -> dict[str, Any]:
        return {
            **super()._describe(),
            "load_args": self._load_args,
            "save_args": self._save_args,
        }
