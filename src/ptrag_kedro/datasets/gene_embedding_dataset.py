"""Gene-embedding files in GenePT's formats: pickle dict, csv(.gz) or parquet."""

from __future__ import annotations

import pickle
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from kedro.io import Version

from ptrag_kedro.datasets._files import FileDataset
from ptrag_kedro.errors import DatasetFileError, one_line

_PICKLE_SUFFIXES = (".pickle", ".pkl")
_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet",)


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that refuses every class or function reference.

    Plain containers, strings and numbers unpickle without any global lookup, so refusing
    ``find_class`` outright means a malicious pickle cannot run code or import anything.
    """

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        raise DatasetFileError(
            f"{self._source}: refusing to unpickle '{module}.{name}'; a gene-embedding pickle "
            "may hold only a dict of symbol -> list of floats"
        )


def _suffix(path: PurePosixPath) -> str:
    name = path.name.lower()
    for suffix in (*_PICKLE_SUFFIXES, *_CSV_SUFFIXES, *_PARQUET_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    raise DatasetFileError(
        f"{path}: unknown gene-embedding format; use .pickle/.pkl, .csv, .csv.gz or .parquet"
    )


def _frame_from_mapping(mapping: Any, path: str) -> pd.DataFrame:
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetFileError(f"{path}: expected a non-empty dict of gene symbol -> vector")
    symbols = list(mapping)
    if not all(isinstance(symbol, str) for symbol in symbols):
        raise DatasetFileError(f"{path}: every key must be a gene symbol (str)")
    lengths = pd.Series({symbol: len(vector) for symbol, vector in mapping.items()})
    usual = int(lengths.mode().iloc[0])
    odd = lengths[lengths != usual]
    if len(odd):
        raise DatasetFileError(
            f"{path}: vector of '{odd.index[0]}' has {odd.iloc[0]} values where the others have "
            f"{usual} ({len(odd)} symbols affected)"
        )
    values = np.asarray([mapping[symbol] for symbol in symbols], dtype=np.float32)
    return pd.DataFrame(values, index=pd.Index(symbols, name="symbol"))


class GeneEmbeddingDataset(FileDataset[pd.DataFrame, pd.DataFrame]):
    """Gene symbol -> vector table; the format follows the file extension.

    Loads to a float32 ``DataFrame`` indexed by symbol (one column per dimension).
    ``.pickle``/``.pkl`` is GenePT's published format (a dict symbol -> list of floats) and is
    read with an unpickler that accepts plain data only; ``.csv``/``.csv.gz`` has the symbol in
    the first column; ``.parquet`` has it as the index or first column. ``write_only_under``
    refuses saves outside that folder (a user's file is never overwritten); ``optional`` loads a
    missing file as an empty table (a source the run may not use) marked ``attrs["absent"]``,
    whose ``attrs["source_file"]`` still names the file, so a node that needs it can say which
    path was not there. Versioned and fsspec paths as in
    :class:`~ptrag_kedro.datasets._files.FileDataset`.
    """

    file_kind = "gene-embedding file"

    def __init__(  # noqa: PLR0913 (kedro-datasets' arguments, plus ours)
        self,
        *,
        filepath: str,
        write_only_under: str | None = None,
        optional: bool = False,
        produced_by: str | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            filepath=filepath,
            optional=optional,
            write_only_under=write_only_under,
            produced_by=produced_by,
            version=version,
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )
        self._suffix = _suffix(self._filepath)

    def load(self) -> pd.DataFrame:
        if self._absent():
            absent = pd.DataFrame(index=pd.Index([], name="symbol", dtype=str), dtype=np.float32)
            absent.attrs.update(source_file=self._shown(), absent=True)
            return absent
        path = self._load_path()
        shown = self._shown(path)
        try:
            with self._local_copy(path) as local:
                frame = self._read(local, shown)
        except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
            reason = one_line(exc, 200)
            raise DatasetFileError(f"{shown}: unreadable gene-embedding file: {reason}") from exc
        frame.index = frame.index.astype(str)
        frame.index.name = "symbol"
        frame.columns = range(frame.shape[1])
        frame.attrs["source_file"] = shown
        return frame

    def _read(self, local: Path, shown: str) -> pd.DataFrame:
        if self._suffix in _PICKLE_SUFFIXES:
            with local.open("rb") as handle:
                mapping = _PlainDataUnpickler(handle, shown).load()
            frame = _frame_from_mapping(mapping, shown)
        elif self._suffix in _CSV_SUFFIXES:
            frame = pd.read_csv(local, index_col=0)
        else:
            frame = pd.read_parquet(local)
            if not pd.api.types.is_string_dtype(frame.index):
                frame = frame.set_index(frame.columns[0])
        return frame.astype(np.float32)

    def save(self, data: pd.DataFrame) -> None:
        with self._write_target() as tmp_path:
            if self._suffix in _PICKLE_SUFFIXES:
                mapping = {
                    str(symbol): row.tolist()
                    for symbol, row in zip(data.index, data.values, strict=False)
                }
                with tmp_path.open("wb") as handle:
                    pickle.dump(mapping, handle, protocol=pickle.HIGHEST_PROTOCOL)
            elif self._suffix in _CSV_SUFFIXES:
                data.to_csv(tmp_path, compression="gzip" if self._suffix == ".csv.gz" else None)
            else:
                frame = data.copy()
                frame.columns = [str(column) for column in frame.columns]
                frame.to_parquet(tmp_path)

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "format": self._suffix}
