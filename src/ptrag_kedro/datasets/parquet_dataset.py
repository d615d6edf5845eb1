"""Parquet dataset with atomic saves that keeps ``DataFrame.attrs`` (the provenance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from ptrag_kedro.datasets._files import atomic_write_path, missing_hint


class ParquetDataset(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    """A ``DataFrame`` as parquet; ``attrs`` round-trip (pandas stores them in the file's metadata).

    Args:
        filepath: path of the parquet file.
        optional: a missing file loads as an empty ``DataFrame`` (a cache on its first run).
        produced_by: the command that creates the file, named when it is missing.
        metadata: free-form metadata for plugins, ignored here.
    """

    def __init__(
        self,
        *,
        filepath: str,
        optional: bool = False,
        produced_by: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = Path(filepath)
        self._optional = optional
        self._produced_by = produced_by
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        if not self._filepath.is_file():
            if self._optional:
                return pd.DataFrame()
            raise DatasetError(
                f"{self._filepath}: no such parquet file{missing_hint(self._produced_by)}"
            )
        try:
            return pd.read_parquet(self._filepath)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self._filepath}: unreadable parquet file: {exc}") from exc

    def save(self, data: pd.DataFrame) -> None:
        with atomic_write_path(self._filepath) as tmp_path:
            data.to_parquet(tmp_path)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "optional": self._optional}
