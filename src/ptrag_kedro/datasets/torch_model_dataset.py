"""Torch model dataset: a trained variant's record (weights, config, orders, fingerprints)."""

from __future__ import annotations

import pickle

import torch

from ptrag_kedro.datasets._files import LocalFileDataset
from ptrag_kedro.errors import DatasetFileError, one_line
from ptrag_kedro.models.record import ModelRecord
from ptrag_kedro.provenance import StaleArtefactError


class TorchModelDataset(LocalFileDataset[ModelRecord, ModelRecord]):
    """A :class:`~ptrag_kedro.models.record.ModelRecord` saved with ``torch.save`` as plain
    containers and tensors, and loaded with ``weights_only=True``: loading never unpickles
    arbitrary objects. A record of another format is refused with the command that retrains it.
    """

    file_kind = "model file"

    def load(self) -> ModelRecord:
        self._require_file()
        try:
            stored = torch.load(self._filepath, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            reason = one_line(exc, 200)
            raise DatasetFileError(f"{self._filepath}: unreadable model file: {reason}") from exc
        try:
            return ModelRecord.from_dict(stored, source=str(self._filepath))
        except StaleArtefactError as exc:  # a DatasetError, so Kedro names the dataset
            raise DatasetFileError(str(exc)) from exc

    def save(self, data: ModelRecord) -> None:
        with self._write_target() as tmp_path:
            torch.save(data.to_dict(), tmp_path)
