"""CSV dataset with atomic saves (tables meant to be read by people and spreadsheets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from ptrag_kedro.datasets._files import atomic_write_path, missing_hint


class CSVDataset(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    """A ``DataFrame`` as CSV without its index; saves are atomic."""

    def __init__(
        self,
        *,
        filepath: str,
        produced_by: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = Path(filepath)
        self._produced_by = produced_by
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        if not self._filepath.is_file():
            raise DatasetError(
                f"{self._filepath}: no such CSV file{missing_hint(self._produced_by)}"
            )
        return pd.read_csv(self._filepath)

    def save(self, data: pd.DataFrame) -> None:
        with atomic_write_path(self._filepath) as tmp_path:
            data.to_csv(tmp_path, index=False)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
