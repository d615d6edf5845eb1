"""File helpers shared by the project's datasets."""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from kedro.io import AbstractDataset
from kedro_datasets._typing import TablePreview

from ptrag_kedro.errors import DatasetFileError, one_line

_Input = TypeVar("_Input")
_Output = TypeVar("_Output")


#: Temporary files: ``.<name>.<host>.<pid>.<random>.tmp<suffix>`` beside the target.
_TMP_MARK = ".tmp"


def _host() -> str:
    return socket.gethostname().replace(".", "-")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _remove_stale_temporaries(final_path: Path) -> None:
    """Temporary files of ``final_path`` left by a killed writer of this host (its process is
    gone); a live writer's, or another host's, are left alone."""
    host = _host()
    pattern = f".{final_path.name}.*{_TMP_MARK}{final_path.suffix}"
    for leftover in final_path.parent.glob(pattern):
        fields = leftover.name[len(final_path.name) + 2 :].split(".")
        if len(fields) < 3 or fields[0] != host or not fields[1].isdigit():
            continue
        try:
            os.kill(int(fields[1]), 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except PermissionError:
            continue  # alive, another user's


@contextlib.contextmanager
def atomic_write_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it into place only on success.

    The temporary file lives in the same folder so ``os.replace`` is atomic: a killed run
    leaves the previous good file (or none), never half a file under the final name. Its name
    says whose it is (host, process), so the next save removes what a killed writer left, and
    it gets the mode a plain ``open`` would give (the umask), not ``mkstemp``'s 0600.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final_path)
    handle, tmp_name = tempfile.mkstemp(
        prefix=f".{final_path.name}.{_host()}.{os.getpid()}.",
        suffix=_TMP_MARK + final_path.suffix,
        dir=final_path.parent,
    )
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final_path)
    finally:
        tmp_path.unlink(missing_ok=True)


def require_free_space(filepath: Path, at_least_bytes: int) -> None:
    """Refuse, in one line, to start a file of at least ``at_least_bytes`` where less is free."""
    if at_least_bytes <= 0:
        return
    folder = filepath.parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < at_least_bytes:
        raise DatasetFileError(
            f"{filepath}: cannot write it: it needs at least {at_least_bytes / 1e6:,.1f} MB and "
            f"{folder} has {free / 1e6:,.1f} MB free"
        )


def check_write_allowed(filepath: Path, write_only_under: Path | None) -> None:
    """Refuse to write ``filepath`` outside ``write_only_under`` (raw inputs are read-only).

    Raw datasets point at a user's files when a run passes their path; only the demo folder,
    which the simulator owns, may be written.
    """
    if write_only_under is None:
        return
    allowed = write_only_under.resolve()
    target = filepath.resolve()
    if allowed != target and allowed not in target.parents:
        raise DatasetFileError(
            f"{filepath}: refusing to write here; this dataset may only be written under "
            f"{write_only_under} (the demo simulator never overwrites a user's file: run "
            "`kedro run --pipelines=analysis` to analyse it)"
        )


def missing_hint(produced_by: str | None) -> str:
    """The tail of a missing-file error: which command creates the file."""
    return f"; create it first with `{produced_by}`" if produced_by else ""


class LocalFileDataset(AbstractDataset[_Input, _Output]):
    """A dataset kept in one local file: its path, existence, description and missing-file error.

    Args:
        filepath: the file.
        optional: a missing file is not an error; ``_absent()`` says when to load the default.
        write_only_under: if set, saving anywhere outside this folder is refused. Raw inputs
            use it so the demo simulator can never overwrite a user's file.
        produced_by: the command that creates the file, named when it is missing.
        metadata: free-form metadata for plugins (kedro-viz), ignored here.
    """

    #: what the file is, in error messages ("h5ad file")
    file_kind = "file"

    def __init__(
        self,
        *,
        filepath: str,
        optional: bool = False,
        write_only_under: str | None = None,
        produced_by: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = Path(filepath)
        self._optional = optional
        self._write_only_under = Path(write_only_under) if write_only_under else None
        self._produced_by = produced_by
        self.metadata = metadata

    @property
    def filepath(self) -> Path:
        return self._filepath

    def _require_file(self) -> None:
        if self._filepath.is_dir():
            raise DatasetFileError(
                f"{self._filepath}: is a folder, not a {self.file_kind}; give the file's path"
            )
        if not self._filepath.is_file():
            raise DatasetFileError(
                f"{self._filepath}: no such {self.file_kind}{missing_hint(self._produced_by)}"
            )

    def _absent(self) -> bool:
        """An optional file that is not there: load the subclass's default instead."""
        return self._optional and not self._filepath.exists()  # a folder is an error, not absent

    @contextlib.contextmanager
    def _write_target(self, at_least_bytes: int = 0) -> Iterator[Path]:
        """Where ``save`` writes: refused outside ``write_only_under``, then atomic. An OS error
        (a full disk, a read-only folder) is one line naming the file; the previous file, if
        any, stays. ``at_least_bytes``, a lower bound of the file's size, is checked against
        the free space first, so a file that cannot fit is refused before any of it is
        written (a screen's X is written through ``h5ad_writer``, whose failed writes are
        ``OSError``s; anndata's own writer, used for in-memory AnnData, can still crash)."""
        check_write_allowed(self._filepath, self._write_only_under)
        require_free_space(self._filepath, at_least_bytes)
        try:
            with atomic_write_path(self._filepath) as tmp_path:
                yield tmp_path
        except OSError as error:
            reason = error.strerror or one_line(error, 200)
            raise DatasetFileError(f"{self._filepath}: cannot write it: {reason}") from error

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": str(self._filepath),
            "optional": self._optional,
            "write_only_under": str(self._write_only_under) if self._write_only_under else None,
        }


class LocalTableDataset(LocalFileDataset[_Input, _Output]):
    """A local file that kedro-viz previews as a table: its first rows (``_head``).

    ``preview`` follows kedro-viz's contract for custom datasets (the shape and return type of
    kedro-datasets' pandas datasets); kedro-viz picks the table renderer from the annotation.
    """

    def preview(self, nrows: int = 5) -> TablePreview:
        """The first ``nrows`` rows as ``DataFrame.to_dict(orient="split")``.

        A missing file raises the missing-file error; kedro-viz logs it and shows no preview.
        """
        if nrows < 0:
            raise DatasetFileError(f"{self._filepath}: preview nrows must be >= 0, got {nrows}")
        self._require_file()
        return TablePreview(self._head(nrows).to_dict(orient="split"))

    @abc.abstractmethod
    def _head(self, nrows: int) -> pd.DataFrame:
        """The file's first ``nrows`` rows, reading no more of it than needed."""
