"""Torch model dataset: weights plus everything needed to rebuild and check the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError

from ptrag_kedro.datasets._files import atomic_write_path


class TorchModelDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """A trained-model record saved with ``torch.save`` and loaded with ``weights_only=True``.

    The record is a dict: ``config`` (the arguments that build the module), ``state_dict``,
    ``genes`` (feature order), ``perturbations``, ``provenance`` and ``steps``: plain containers
    and tensors only, so loading never unpickles arbitrary objects.
    """

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        if not self._filepath.is_file():
            raise DatasetError(
                f"{self._filepath}: no such model file; train it with `kedro run --pipeline=train_<variant>`"
            )
        try:
            return torch.load(self._filepath, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise DatasetError(f"{self._filepath}: unreadable model file: {reason}") from exc

    def save(self, data: dict[str, Any]) -> None:
        with atomic_write_path(self._filepath) as tmp_path:
            torch.save(data, tmp_path)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
