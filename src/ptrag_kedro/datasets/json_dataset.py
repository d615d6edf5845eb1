"""JSON dataset with atomic saves; optionally absent (an optional input such as a split list)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from ptrag_kedro.datasets._files import atomic_write_path, missing_hint


class JSONDataset(AbstractDataset[Any, Any]):
    """Load and save JSON; saves are atomic (temporary file, then rename).

    Args:
        filepath: path of the JSON file. With ``optional: true`` it may be empty or null,
            and then ``load`` returns ``None`` (the run did not supply the file).
        optional: allow an empty ``filepath``.
        save_args: passed to ``json.dump`` (default ``indent=2``).
        produced_by: the command that creates the file, named when it is missing.
        metadata: free-form metadata for plugins, ignored here.
    """

    def __init__(
        self,
        *,
        filepath: str | None,
        optional: bool = False,
        save_args: dict[str, Any] | None = None,
        produced_by: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not filepath and not optional:
            raise DatasetError("JSONDataset: 'filepath' is empty and the dataset is not optional")
        self._filepath = Path(filepath) if filepath else None
        self._save_args = {"indent": 2, **(save_args or {})}
        self._produced_by = produced_by
        self.metadata = metadata

    def load(self) -> Any:
        if self._filepath is None:
            return None
        if not self._filepath.is_file():
            raise DatasetError(
                f"{self._filepath}: no such JSON file{missing_hint(self._produced_by)}"
            )
        try:
            with self._filepath.open(encoding="utf-8") as handle:
                return json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self._filepath}: not valid JSON: {exc}") from exc

    def save(self, data: Any) -> None:
        if self._filepath is None:
            raise DatasetError("JSONDataset: cannot save, no 'filepath' configured")
        with atomic_write_path(self._filepath) as tmp_path:
            with tmp_path.open("w", encoding="utf-8") as handle:
                json.dump(data, handle, **self._save_args)

    def _exists(self) -> bool:
        return self._filepath is not None and self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath) if self._filepath else None}
