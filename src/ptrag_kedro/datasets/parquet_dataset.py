"""Parquet dataset with atomic saves that keeps ``DataFrame.attrs`` (the provenance)."""

from __future__ import annotations

import pandas as pd
from kedro.io import DatasetError

from ptrag_kedro.datasets._files import LocalFileDataset


class ParquetDataset(LocalFileDataset[pd.DataFrame, pd.DataFrame]):
    """A ``DataFrame`` as parquet; ``attrs`` round-trip (pandas stores them in the file's metadata).

    Args:
        filepath: path of the parquet file.
        optional: a missing file loads as an empty ``DataFrame`` (a cache on its first run).
        produced_by: the command that creates the file, named when it is missing.
        metadata: free-form metadata for plugins, ignored here.
    """

    file_kind = "parquet file"

    def load(self) -> pd.DataFrame:
        if self._absent():
            return pd.DataFrame()
        self._require_file()
        try:
            return pd.read_parquet(self._filepath)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self._filepath}: unreadable parquet file: {exc}") from exc

    def save(self, data: pd.DataFrame) -> None:
        with self._write_target() as tmp_path:
            data.to_parquet(tmp_path)
