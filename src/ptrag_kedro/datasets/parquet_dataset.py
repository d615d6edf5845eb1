"""Parquet dataset with atomic saves that keeps ``DataFrame.attrs`` (the provenance)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ptrag_kedro.datasets._files import LocalTableDataset
from ptrag_kedro.errors import DatasetFileError


class ParquetDataset(LocalTableDataset[pd.DataFrame, pd.DataFrame]):
    """A ``DataFrame`` as parquet; ``attrs`` round-trip (pandas stores them in the file's metadata).

    kedro-viz previews its first rows (read batch by batch, never the whole file).

    Args:
        filepath: path of the parquet file.
        optional: a missing file loads as an empty ``DataFrame`` (a cache on its first run).
        produced_by: the command that creates the file, named when it is missing.
        skip_unchanged: a save of what the file already holds (or of an empty table where there
            is no file) writes nothing: a cache is rewritten only when it grows, so a run that
            fails after its cache node leaves the file as it was.
        metadata: free-form metadata for plugins, ignored here.
    """

    file_kind = "parquet file"

    def __init__(self, *, skip_unchanged: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._skip_unchanged = skip_unchanged

    def load(self) -> pd.DataFrame:
        if self._absent():
            return pd.DataFrame()
        self._require_file()
        try:
            return pd.read_parquet(self._filepath)
        except (OSError, ValueError) as exc:
            raise DatasetFileError(f"{self._filepath}: unreadable parquet file: {exc}") from exc

    def save(self, data: pd.DataFrame) -> None:
        if self._skip_unchanged and self._holds(data):
            return
        with self._write_target() as tmp_path:
            data.to_parquet(tmp_path)

    def _holds(self, data: pd.DataFrame) -> bool:
        if not self._filepath.is_file():
            return data.empty
        return self.load().equals(data)

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "skip_unchanged": self._skip_unchanged}

    def _head(self, nrows: int) -> pd.DataFrame:
        try:
            with pq.ParquetFile(self._filepath) as parquet_file:
                batches, rows = [], 0
                for batch in parquet_file.iter_batches(batch_size=max(nrows, 1)):
                    if rows >= nrows:
                        break
                    batches.append(batch)
                    rows += batch.num_rows
                table = pa.Table.from_batches(batches, schema=parquet_file.schema_arrow)
                return table.slice(0, nrows).to_pandas()
        except (OSError, ValueError) as exc:
            raise DatasetFileError(f"{self._filepath}: unreadable parquet file: {exc}") from exc
