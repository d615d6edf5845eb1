"""Where a variant's training checkpoints live: a folder handed to the training node."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, Version
from kedro.io.core import generate_timestamp, get_protocol_and_path

from ptrag_kedro.errors import DatasetFileError


@dataclass(frozen=True)
class CheckpointDirectory:
    """A folder of Lightning checkpoints, one sub-folder per training seed."""

    path: Path

    def for_seed(self, seed: int) -> Path:
        return self.path / f"seed_{seed}"


class CheckpointDirectoryDataset(AbstractDataset[None, CheckpointDirectory]):
    """Loads a :class:`CheckpointDirectory` for the training node; never reads the files.

    Lightning writes the checkpoints while it trains (``last.ckpt`` per seed, which
    ``training.resume`` continues from), so they are not a node output: the catalog names the
    folder, and kedro-viz shows it as an input of the training node.

    With ``versioned: true`` each run trains in a folder of its own, ``<path>/<run timestamp>``
    (Kedro's save version), so no run resumes another's checkpoints;
    ``--load-versions=<variant>.checkpoints:<timestamp>`` picks an earlier run's folder to
    continue instead. The folder must be local: Lightning, the resume logic and the DDP job
    files read and write it as plain files while training runs.

    Example catalog entry::

        "{variant}.checkpoints":
          type: ptrag_kedro.datasets.CheckpointDirectoryDataset
          path: data/06_models/{variant}/checkpoints
    """

    def __init__(
        self,
        *,
        path: str,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, local = get_protocol_and_path(path)
        if protocol != "file":
            raise DatasetFileError(
                f"{path}: a checkpoint folder must be a local path (Lightning writes it while "
                f"training), got protocol {protocol!r}"
            )
        self._path = Path(local)
        self._version = version
        # a Version without either (a dataset built by hand): one folder for this instance
        self._own_version = generate_timestamp()
        self.metadata = metadata

    def load(self) -> CheckpointDirectory:
        if self._version is None:
            return CheckpointDirectory(self._path)
        chosen = self._version.load or self._version.save or self._own_version
        if self._version.load and not (self._path / chosen).is_dir():
            raise DatasetFileError(
                f"{self._path / chosen}: no such checkpoint folder (version {chosen}); the "
                f"versions here: {sorted(p.name for p in self._path.glob('*') if p.is_dir())}"
            )
        return CheckpointDirectory(self._path / chosen)

    def save(self, data: None) -> None:
        raise DatasetFileError(
            f"{self._path}: checkpoints are written by Lightning during training, not saved"
        )

    def _exists(self) -> bool:
        return True  # a folder to write into; it may not exist before the first run

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "version": self._version}
