"""Where a variant's training checkpoints live: a folder handed to the training node."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

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

    Example catalog entry::

        "{variant}.checkpoints":
          type: ptrag_kedro.datasets.CheckpointDirectoryDataset
          path: data/06_models/{variant}/checkpoints
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> CheckpointDirectory:
        return CheckpointDirectory(self._path)

    def save(self, data: None) -> None:
        raise DatasetFileError(
            f"{self._path}: checkpoints are written by Lightning during training, not saved"
        )

    def _exists(self) -> bool:
        return True  # a folder to write into; it may not exist before the first run

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
