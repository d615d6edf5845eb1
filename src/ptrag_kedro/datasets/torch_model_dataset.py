"""Torch model dataset: a trained variant's record (weights, config, orders, fingerprints)."""

from __future__ import annotations

import pickle

import torch

from ptrag_kedro.datasets._files import FileDataset
from ptrag_kedro.errors import DatasetFileError, one_line
from ptrag_kedro.models.record import ModelRecord
from ptrag_kedro.provenance import StaleArtefactError


class TorchModelDataset(FileDataset[ModelRecord, ModelRecord]):
    """A :class:`~ptrag_kedro.models.record.ModelRecord` saved with ``torch.save`` as plain
    containers and tensors, and loaded with ``weights_only=True``: loading never unpickles
    arbitrary objects. A record of another format is refused with the command that retrains it.
    Versioned and fsspec paths as in :class:`~ptrag_kedro.datasets._files.FileDataset` (a
    remote file is staged locally).
    """

    file_kind = "model file"

    def load(self) -> ModelRecord:
        path = self._load_path()
        try:
            with self._local_copy(path) as local:
                stored = torch.load(local, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            reason = one_line(exc, 200)
            raise DatasetFileError(f"{self._shown(path)}: unreadable model file: {reason}") from exc
        try:
            return ModelRecord.from_dict(stored, source=self._shown(path))
        except StaleArtefactError as exc:  # a DatasetError, so Kedro names the dataset
            raise DatasetFileError(str(exc)) from exc

    def save(self, data: ModelRecord) -> None:
        with self._write_target() as tmp_path:
            torch.save(data.to_dict(), tmp_path)
