"""JSON documents: kedro-datasets' ``json.JSONDataset`` with the project's atomic saves,
missing-file hint, and an optional file that may be left unconfigured (a split list)."""

from __future__ import annotations

import json
from typing import Any

from kedro.io import Version
from kedro_datasets._typing import JSONPreview
from kedro_datasets.json import JSONDataset as _KedroJSONDataset

from ptrag_kedro.datasets._files import ProjectFileMixin, refuse_open_args_save
from ptrag_kedro.errors import DatasetFileError


class JSONDataset(ProjectFileMixin, _KedroJSONDataset):
    """Load and save JSON; saves are atomic on a local path and ``write_only_under``-checked.

    Everything of kedro-datasets' ``json.JSONDataset`` (``save_args``, default ``indent=2``;
    ``version``; fsspec paths, ``credentials``, ``fs_args``), plus:

    Args:
        filepath: path of the JSON file. With ``optional: true`` it may be empty or null (the run
            did not supply the file): ``load`` then returns ``None``.
        optional: allow an empty ``filepath``.
        write_only_under: if set, saving anywhere outside this folder is refused.
        produced_by: the command that creates the file, named when it is missing.
    """

    file_kind = "JSON file"

    def __init__(  # noqa: PLR0913 (kedro-datasets' arguments, plus ours)
        self,
        *,
        filepath: str | None,
        optional: bool = False,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        write_only_under: str | None = None,
        produced_by: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not filepath and not optional:
            raise DatasetFileError(
                "JSONDataset: 'filepath' is empty and the dataset is not optional"
            )
        refuse_open_args_save(fs_args, filepath or "JSONDataset")
        super().__init__(
            filepath=filepath or "",
            save_args=save_args,
            version=version,
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )
        self._init_project_file(
            optional=optional, write_only_under=write_only_under, produced_by=produced_by
        )
        self._no_file = not filepath

    def load(self) -> Any:
        if self._no_file:
            return None
        path = self._load_path()
        try:
            return _KedroJSONDataset.load.__wrapped__(self)  # its reader, without its wrapper
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetFileError(f"{self._shown(path)}: not valid JSON: {exc}") from exc

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
        described = {**super()._describe(), **self._project_description()}
        return {**described, "filepath": None if self._no_file else self._shown()}
