"""File helpers shared by the project's datasets: the atomic write, and the layer every file
dataset adds to Kedro's versioned, fsspec-backed datasets (kedro-datasets' or our own)."""

from __future__ import annotations

import abc
import contextlib
import copy
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import fsspec
import pandas as pd
from kedro.io import AbstractVersionedDataset, Version
from kedro.io.core import VersionNotFoundError, get_filepath_str, get_protocol_and_path
from kedro_datasets._typing import TablePreview

from ptrag_kedro.errors import DatasetFileError, one_line

_Input = TypeVar("_Input")
_Output = TypeVar("_Output")

#: Kedro's version folder name, for messages (``generate_timestamp``'s format).
_VERSION_PATTERN = "YYYY-MM-DDThh.mm.ss.sssZ"


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


def check_write_allowed(protocol: str, path: PurePosixPath, write_only_under: str | None) -> None:
    """Refuse to write ``path`` outside ``write_only_under`` (raw inputs are read-only).

    Raw datasets point at a user's files when a run passes their path; only the demo folder,
    which the simulator owns, may be written. Both are compared on the same filesystem: a
    local folder resolved, a remote one (``s3://bucket/demo``) as its protocol and key prefix.
    """
    if write_only_under is None:
        return
    allowed_protocol, allowed_path = get_protocol_and_path(write_only_under)
    if protocol == "file":
        allowed, target = Path(allowed_path).resolve(), Path(path.as_posix()).resolve()
    else:
        allowed, target = PurePosixPath(allowed_path), path
    if allowed_protocol != protocol or (allowed != target and allowed not in target.parents):
        raise DatasetFileError(
            f"{_display(protocol, path)}: refusing to write here; this dataset may only be "
            f"written under {write_only_under} (the demo simulator never overwrites a user's "
            "file: run `kedro run --pipelines=analysis` to analyse it)"
        )


def missing_hint(produced_by: str | None) -> str:
    """The tail of a missing-file error: which command creates the file."""
    return f"; create it first with `{produced_by}`" if produced_by else ""


def _display(protocol: str, path: PurePosixPath) -> str:
    """A path as the user wrote it: plain when local, ``<protocol>://<path>`` otherwise."""
    return path.as_posix() if protocol == "file" else f"{protocol}://{path.as_posix()}"


def _reason(error: OSError) -> str:
    return error.strerror or one_line(error, 200)


def refuse_open_args_save(fs_args: dict[str, Any] | None, dataset: str) -> None:
    """Saves write a whole file and replace the old one (atomically where the filesystem can):
    an ``open_args_save`` (append mode, say) could not be honoured, so it is refused."""
    if fs_args and "open_args_save" in fs_args:
        raise DatasetFileError(
            f"{dataset}: `fs_args.open_args_save` must be absent (saves replace the whole file), "
            f"got {fs_args['open_args_save']!r}"
        )


class ProjectFileMixin:
    """What every project file dataset adds to a Kedro versioned, fsspec-backed dataset.

    Mixed in before kedro-datasets' ``CSVDataset`` / ``ParquetDataset`` / ``JSONDataset`` and
    before :class:`FileDataset`; it needs the attributes they set (``_fs``, ``_protocol``,
    ``_filepath``, ``_version``) and Kedro's ``_get_load_path`` / ``_get_save_path``, so
    ``version`` (``versioned: true``), fsspec paths (``s3://``, ``gcs://``, ``abfs://``,
    ``memory://``), ``credentials`` and ``fs_args`` behave as in kedro-datasets. On top:

    - saves are atomic on a local path (a temporary file beside the target, then
      ``os.replace``; a killed writer's leftovers go at the next save; the user's umask), and
      one line naming the file on an OS error;
    - ``write_only_under`` refuses saves outside a folder (raw inputs are never overwritten);
    - a missing file is one line naming it and the command that creates it (``produced_by``),
      a folder given as a file says so, and ``optional`` files may be absent.
    """

    #: what the file is, in error messages ("h5ad file")
    file_kind = "file"

    _fs: fsspec.AbstractFileSystem
    _protocol: str
    _filepath: PurePosixPath
    _version: Version | None

    def _init_project_file(
        self, *, optional: bool, write_only_under: str | None, produced_by: str | None
    ) -> None:
        self._optional = optional
        self._write_only_under = write_only_under
        self._produced_by = produced_by

    def _shown(self, path: PurePosixPath | None = None) -> str:
        return _display(self._protocol, self._filepath if path is None else path)

    def _fs_path(self, path: PurePosixPath) -> str:
        return get_filepath_str(path, self._protocol)

    @property
    def _is_local(self) -> bool:
        return self._protocol == "file"

    def _missing(self, path: PurePosixPath, detail: str = "") -> DatasetFileError:
        hint = missing_hint(self._produced_by)
        return DatasetFileError(f"{self._shown(path)}: no such {self.file_kind}{detail}{hint}")

    def _load_path(self) -> PurePosixPath:
        """The file ``load`` reads: the configured one, or (versioned) the version asked for,
        the latest by default. A missing one is one line naming it and the command that
        creates it."""
        try:
            path = self._get_load_path()  # type: ignore[attr-defined]
        except VersionNotFoundError:
            if self._fs.isfile(self._fs_path(self._filepath)):
                recreate = (
                    f", or recreate it with `{self._produced_by}`" if self._produced_by else ""
                )
                raise DatasetFileError(
                    f"{self._shown()}: no version of this {self.file_kind}: the file there was "
                    "saved before `versioned: true`; move it to "
                    f"{self._shown()}/{_VERSION_PATTERN}/{self._filepath.name}{recreate}"
                ) from None
            raise self._missing(self._filepath, " (no version saved yet)") from None
        if self._fs.isdir(self._fs_path(path)):
            raise DatasetFileError(
                f"{self._shown(path)}: is a folder, not a {self.file_kind}; give the file's path"
            )
        if not self._fs.isfile(self._fs_path(path)):
            pinned = self._version.load if self._version else None
            raise self._missing(path, f" (version {pinned})" if pinned else "")
        return path

    def _absent(self) -> bool:
        """An optional file that is not there: load the subclass's default instead. A folder in
        its place is an error, not absent."""
        if not self._optional:
            return False
        try:
            path = self._get_load_path()  # type: ignore[attr-defined]
        except VersionNotFoundError:
            return True
        return not self._fs.exists(self._fs_path(path))

    def _save_path(self) -> PurePosixPath:
        if self._version is not None and self._fs.isfile(self._fs_path(self._filepath)):
            raise DatasetFileError(
                f"{self._shown()}: cannot save a version: a file saved before `versioned: true` "
                f"is there; move it to {self._shown()}/{_VERSION_PATTERN}/{self._filepath.name} "
                "or delete it"
            )
        return self._get_save_path()  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _write_target(self, at_least_bytes: int = 0) -> Iterator[Path]:
        """A local path for ``save`` to write the whole file to.

        Refused outside ``write_only_under``. On a local filesystem it is a temporary file
        beside the target (the save path: the file, or its new version), renamed into place
        once complete, so a failure part-way leaves the previous file or none; ``at_least_bytes``,
        a lower bound of the file's size, is checked against the free space first. An OS error
        (a full disk, a read-only folder) is one line naming the file.

        Object stores (s3, gcs, abfs) have no atomic rename: the file is written in a local
        temporary folder, then uploaded straight to its final key in one ``put``. Those stores
        publish an object only once its upload completes, so readers still never see half of
        one, but a filesystem without that guarantee (sftp, say) can show a partial file.
        """
        save_path = self._save_path()
        check_write_allowed(self._protocol, save_path, self._write_only_under)
        shown = self._shown(save_path)
        if self._is_local:
            local = Path(save_path.as_posix())
            require_free_space(local, at_least_bytes)
            try:
                with atomic_write_path(local) as tmp_path:
                    yield tmp_path
            except OSError as error:
                raise DatasetFileError(f"{shown}: cannot write it: {_reason(error)}") from error
        else:
            with tempfile.TemporaryDirectory(prefix="ptrag-save-") as folder:
                tmp_path = Path(folder) / save_path.name
                try:
                    yield tmp_path
                except OSError as error:
                    raise DatasetFileError(f"{shown}: cannot write it: {_reason(error)}") from error
                self._upload(tmp_path, save_path)
        self._fs.invalidate_cache(self._fs_path(self._filepath))

    def _upload(self, local: Path, save_path: PurePosixPath) -> None:
        """Put a complete local file at ``save_path`` of a remote filesystem, in one request."""
        try:
            self._fs.put_file(str(local), self._fs_path(save_path))
        except OSError as error:
            shown = self._shown(save_path)
            raise DatasetFileError(f"{shown}: cannot write it: {_reason(error)}") from error
        self._fs.invalidate_cache(self._fs_path(self._filepath))

    @contextlib.contextmanager
    def _local_copy(self, path: PurePosixPath) -> Iterator[Path]:
        """``path`` as a local file, for readers that need one (h5py, faiss, torch): the file
        itself on a local filesystem, otherwise a temporary download removed afterwards."""
        if self._is_local:
            yield Path(path.as_posix())
            return
        with tempfile.TemporaryDirectory(prefix="ptrag-load-") as folder:
            local = Path(folder) / path.name
            self._download(path, local)
            yield local

    def _download(self, path: PurePosixPath, local: Path) -> None:
        try:
            self._fs.get_file(self._fs_path(path), str(local))
        except OSError as error:
            shown = self._shown(path)
            raise DatasetFileError(f"{shown}: cannot read it: {_reason(error)}") from error

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()  # type: ignore[attr-defined]
        except VersionNotFoundError:
            return False
        return self._fs.isfile(self._fs_path(path))

    def _project_description(self) -> dict[str, Any]:
        return {
            "filepath": self._shown(),
            "protocol": self._protocol,
            "version": self._version,
            "optional": self._optional,
            "write_only_under": self._write_only_under,
        }


class FileDataset(ProjectFileMixin, AbstractVersionedDataset[_Input, _Output]):
    """A dataset kept in one file on any fsspec filesystem, versioned or not: the base of the
    project's datasets that kedro-datasets has no equivalent of (h5ad, faiss, torch records,
    gene-embedding files).

    Args:
        filepath: the file, local or with a protocol (``s3://bucket/models/model.pt``).
        optional: a missing file is not an error; ``_absent()`` says when to load the default.
        write_only_under: if set, saving anywhere outside this folder is refused. Raw inputs
            use it so the demo simulator can never overwrite a user's file.
        produced_by: the command that creates the file, named when it is missing.
        version: Kedro's ``Version`` (``versioned: true`` in the catalog): each save writes
            ``<filepath>/<timestamp>/<name>``; a load reads the latest, or ``version.load``.
        credentials: passed to the fsspec filesystem (e.g. ``key``/``secret`` for s3).
        fs_args: passed to the fsspec filesystem's constructor.
        metadata: free-form metadata for plugins (kedro-viz), ignored here.
    """

    def __init__(  # noqa: PLR0913 (kedro-datasets' arguments, plus ours)
        self,
        *,
        filepath: str,
        optional: bool = False,
        write_only_under: str | None = None,
        produced_by: str | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        refuse_open_args_save(fs_args, filepath)
        fs_args = copy.deepcopy(fs_args) or {}
        fs_args.pop("open_args_load", None)  # readers open the file themselves
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **{**copy.deepcopy(credentials or {}), **fs_args})
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )
        self._init_project_file(
            optional=optional, write_only_under=write_only_under, produced_by=produced_by
        )

    def _describe(self) -> dict[str, Any]:
        return self._project_description()

    def _release(self) -> None:
        super()._release()
        self._fs.invalidate_cache(self._fs_path(self._filepath))


class TablePreviewMixin:
    """A file dataset that kedro-viz previews as a table: its first rows (``_head``).

    ``preview`` follows kedro-viz's contract for custom datasets (the shape and return type of
    kedro-datasets' pandas datasets); kedro-viz picks the table renderer from the annotation.
    """

    def preview(self, nrows: int = 5) -> TablePreview:
        """The first ``nrows`` rows as ``DataFrame.to_dict(orient="split")``.

        A missing file raises the missing-file error; kedro-viz logs it and shows no preview.
        """
        if nrows < 0:
            raise DatasetFileError(
                f"{self._shown()}: preview nrows must be >= 0, got {nrows}"  # type: ignore[attr-defined]
            )
        path = self._load_path()  # type: ignore[attr-defined]
        return TablePreview(self._head(path, nrows).to_dict(orient="split"))

    @abc.abstractmethod
    def _head(self, path: PurePosixPath, nrows: int) -> pd.DataFrame:
        """The first ``nrows`` rows of the file at ``path``, reading no more of it than needed."""
