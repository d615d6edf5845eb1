"""Torch model dataset: weights plus everything needed to rebuild and check the model."""

from __future__ import annotations

from typing import Any

import torch
from kedro.io import DatasetError

from ptrag_kedro.datasets._files import LocalFileDataset


class TorchModelDataset(LocalFileDataset[dict[str, Any], dict[str, Any]]):
    """A trained-model record saved with ``torch.save`` and loaded with ``weights_only=True``.

    The record is a dict: ``config`` (the arguments that build the module), ``state_dicts`` (one
    per training seed), ``genes`` (feature order), ``perturbations``, ``provenance`` and
    ``steps``: plain containers and tensors only, so loading never unpickles arbitrary objects.
    """

    file_kind = "model file"

    def load(self) -> dict[str, Any]:
        self._require_file()
        try:
            return torch.load(self._filepath, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise DatasetError(f"{self._filepath}: unreadable model file: {reason}") from exc

    def save(self, data: dict[str, Any]) -> None:
        with self._write_target() as tmp_path:
            torch.save(data, tmp_path)
