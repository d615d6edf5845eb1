"""CSV dataset with atomic saves (tables meant to be read by people and spreadsheets)."""

from __future__ import annotations

import pandas as pd

from ptrag_kedro.datasets._files import LocalTableDataset


class CSVDataset(LocalTableDataset[pd.DataFrame, pd.DataFrame]):
    """A ``DataFrame`` as CSV without its index; saves are atomic; kedro-viz previews its head."""

    file_kind = "CSV file"

    def load(self) -> pd.DataFrame:
        self._require_file()
        return pd.read_csv(self._filepath)

    def save(self, data: pd.DataFrame) -> None:
        with self._write_target() as tmp_path:
            data.to_csv(tmp_path, index=False)

    def _head(self, nrows: int) -> pd.DataFrame:
        return pd.read_csv(self._filepath, nrows=nrows)
