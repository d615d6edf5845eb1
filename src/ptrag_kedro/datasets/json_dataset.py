"""JSON dataset with atomic saves; optionally absent (an optional input such as a split list)."""

from __future__ import annotations

import json
from typing import Any

from kedro_datasets._typing import JSONPreview

from ptrag_kedro.datasets._files import LocalFileDataset
from ptrag_kedro.errors import DatasetFileError


class JSONDataset(LocalFileDataset[Any, Any]):
    """Load and save JSON; saves go through the shared atomic, ``write_only_under``-checked path.

    Args:
        filepath: path of the JSON file. With ``optional: true`` it may be empty or null (the run
            did not supply the file): ``load`` then returns ``None``.
        optional: allow an empty ``filepath``.
        save_args: passed to ``json.dump`` (default ``indent=2``).
        write_only_under: if set, saving anywhere outside this folder is refused.
        produced_by: the command that creates the file, named when it is missing.
        metadata: free-form metadata for plugins, ignored here.
    """

    file_kind = "JSON file"

    def __init__(
        self,
        *,
        filepath: str | None,
        optional: bool = False,
        save_args: dict[str, Any] | None = None,
        write_only_under: str | None = None,
        produced_by: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not filepath and not optional:
            raise DatasetFileError(
                "JSONDataset: 'filepath' is empty and the dataset is not optional"
            )
        super().__init__(
            filepath=filepath or "",
            optional=optional,
            write_only_under=write_only_under,
            produced_by=produced_by,
            metadata=metadata,
        )
        self._no_file = not filepath
        self._save_args = {"indent": 2, **(save_args or {})}

    def load(self) -> Any:
        if self._no_file:
            return None
        self._require_file()
        try:
            with self._filepath.open(encoding="utf-8") as handle:
                return json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetFileError(f"{self._filepath}: not valid JSON: {exc}") from exc

    def save(self, data: Any) -> None:
        if self._no_file:
            raise DatasetFileError("JSONDataset: cannot save, no 'filepath' configured")
        with self._write_target() as tmp_path:
            with tmp_path.open("w", encoding="utf-8") as handle:
                json.dump(data, handle, **self._save_args)

    def preview(self) -> JSONPreview:
        """kedro-viz's JSON preview: the file's content as a JSON string (kedro-datasets' form).

        A missing or unconfigured file raises; kedro-viz logs it and shows no preview.
        """
        if self._no_file:
            raise DatasetFileError("JSONDataset: nothing to preview, no 'filepath' configured")
        return JSONPreview(json.dumps(self.load()))

    def _exists(self) -> bool:
        return not self._no_file and super()._exists()

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "filepath": None if self._no_file else str(self._filepath)}
