"""Parquet tables: kedro-datasets' ``pandas.ParquetDataset`` (``DataFrame.attrs``, the
provenance, round-trip in the file's metadata) with the project's atomic saves, missing-file
hint, optional caches and a preview that reads only the rows it shows."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import Version
from kedro_datasets.pandas import ParquetDataset as _KedroParquetDataset

from ptrag_kedro.datasets._files import ProjectFileMixin, TablePreviewMixin, refuse_open_args_save
from ptrag_kedro.errors import DatasetFileError, one_line

_READ_ERRORS = (OSError, ValueError)  # pyarrow's ArrowInvalid is a ValueError


class ParquetDataset(TablePreviewMixin, ProjectFileMixin, _KedroParquetDataset):
    """A ``DataFrame`` as parquet; ``attrs`` round-trip (pandas stores them in the file).

    Everything of ``pandas.ParquetDataset`` (``load_args``, ``save_args``, ``version``, fsspec
    paths, ``credentials``, ``fs_args``), plus:

    Args:
        optional: a missing file loads as an empty ``DataFrame`` (a cache on its first run).
        produced_by: the command that creates the file, named when it is missing.
        skip_unchanged: a save of what the file already holds (or of an empty table where there
            is no file) writes nothing: a cache is rewritten only when it grows, so a run that
            fails after its cache node leaves the file as it was. Not with ``version``.
        write_only_under: if set, saving anywhere outside this folder is refused.

    kedro-viz previews its first rows, read batch by batch, never the whole file.
    """

    file_kind = "parquet file"

    def __init__(  # noqa: PLR0913 (kedro-datasets' arguments, plus ours)
        self,
        *,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        optional: bool = False,
        skip_unchanged: bool = False,
        write_only_under: str | None = None,
        produced_by: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        refuse_open_args_save(fs_args, filepath)
        super().__init__(
            filepath=filepath,
            load_args=load_args,
            save_args=save_args,
            version=version,
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )
        self._init_project_file(
            optional=optional, write_only_under=write_only_under, produced_by=produced_by
        )
        if skip_unchanged and version is not None:
            # Every run's save is a version of its own: there is no "same file" to keep.
            raise DatasetFileError(
                f"{self._shown()}: `skip_unchanged` must be false on a versioned dataset, got true"
            )
        self._skip_unchanged = skip_unchanged
        if "partition_cols" in self._save_args:
            raise DatasetFileError(
                f"{self._shown()}: `save_args.partition_cols` must be absent (one file per "
                f"dataset), got {self._save_args['partition_cols']!r}"
            )

    def load(self) -> pd.DataFrame:
        if self._absent():
            return pd.DataFrame()
        path = self._load_path()
        try:
            return _KedroParquetDataset.load.__wrapped__(self)  # its reader, without its wrapper
        except _READ_ERRORS as exc:
            raise self._unreadable(path, exc) from exc

    def save(self, data: pd.DataFrame) -> None:
        if self._skip_unchanged and self._holds(data):
            return
        with self._write_target() as tmp_path:
            data.to_parquet(tmp_path, **self._save_args)

    def _holds(self, data: pd.DataFrame) -> bool:
        if not self._exists():
            return data.empty
        return self.load().equals(data)

    def _head(self, path: PurePosixPath, nrows: int) -> pd.DataFrame:
        try:
            with (
                self._fs.open(self._fs_path(path), mode="rb") as handle,
                pq.ParquetFile(handle) as parquet_file,
            ):
                batches, rows = [], 0
                for batch in parquet_file.iter_batches(batch_size=max(nrows, 1)):
                    if rows >= nrows:
                        break
                    batches.append(batch)
                    rows += batch.num_rows
                table = pa.Table.from_batches(batches, schema=parquet_file.schema_arrow)
                return table.slice(0, nrows).to_pandas()
        except _READ_ERRORS as exc:
            raise self._unreadable(path, exc) from exc

    def _unreadable(self, path: PurePosixPath, exc: Exception) -> DatasetFileError:
        reason = one_line(exc, 300)
        return DatasetFileError(f"{self._shown(path)}: unreadable parquet file: {reason}")

    def _describe(self) -> dict[str, Any]:
        return {
            **super()._describe(),
            **self._project_description(),
            "skip_unchanged": self._skip_unchanged,
        }
