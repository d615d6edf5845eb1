"""CSV tables meant to be read by people and spreadsheets: kedro-datasets' ``pandas.CSVDataset``
with the project's atomic saves, missing-file hint and kedro-viz preview."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pandas as pd
from kedro.io import Version
from kedro_datasets.pandas import CSVDataset as _KedroCSVDataset

from ptrag_kedro.datasets._files import ProjectFileMixin, TablePreviewMixin, refuse_open_args_save
from ptrag_kedro.errors import DatasetFileError, one_line

_READ_ERRORS = (OSError, ValueError, UnicodeDecodeError)  # pandas' ParserError is a ValueError


class CSVDataset(TablePreviewMixin, ProjectFileMixin, _KedroCSVDataset):
    """A ``DataFrame`` as CSV, without its index by default (kedro-datasets' ``save_args``).

    Everything of ``pandas.CSVDataset`` (``load_args``, ``save_args``, ``version``, fsspec
    paths, ``credentials``, ``fs_args``), plus: saves are atomic on a local path; a missing file
    names the command that creates it (``produced_by``); kedro-viz previews the first rows,
    reading no more of the file than it shows; ``write_only_under`` refuses saves elsewhere.
    """

    file_kind = "CSV file"

    def __init__(  # noqa: PLR0913 (kedro-datasets' arguments, plus ours)
        self,
        *,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
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
            optional=False, write_only_under=write_only_under, produced_by=produced_by
        )

    def load(self) -> pd.DataFrame:
        path = self._load_path()
        try:
            return _KedroCSVDataset.load.__wrapped__(self)  # its reader, without its wrapper
        except _READ_ERRORS as exc:
            raise DatasetFileError(
                f"{self._shown(path)}: unreadable CSV file: {one_line(exc, 200)}"
            ) from exc

    def save(self, data: pd.DataFrame) -> None:
        with self._write_target() as tmp_path:
            data.to_csv(tmp_path, **self._save_args)

    def _head(self, path: PurePosixPath, nrows: int) -> pd.DataFrame:
        try:
            with self._fs.open(self._fs_path(path), mode="r") as handle:
                return pd.read_csv(handle, **{**self._load_args, "nrows": nrows})
        except _READ_ERRORS as exc:
            raise DatasetFileError(
                f"{self._shown(path)}: unreadable CSV file: {one_line(exc, 200)}"
            ) from exc

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), **self._project_description()}
