"""faiss index dataset: the index, its row names and provenance in one file."""

from __future__ import annotations

import json

import faiss
import numpy as np

from ptrag_kedro.datasets._files import FileDataset
from ptrag_kedro.errors import DatasetFileError
from ptrag_kedro.retrieval import RetrievalIndex


class FaissIndexDataset(FileDataset[RetrievalIndex, RetrievalIndex]):
    """Save / load a :class:`RetrievalIndex` as one ``.npz``.

    The index is serialised with faiss's own writer (``faiss.serialize_index``); names and
    provenance sit beside it in the same file, so the row -> perturbation map can never go missing
    or out of step with the index. Loading never unpickles. Versioned and fsspec paths as in
    :class:`~ptrag_kedro.datasets._files.FileDataset` (a remote file is staged locally).
    """

    file_kind = "faiss index file"

    def load(self) -> RetrievalIndex:
        path = self._load_path()
        try:
            with self._local_copy(path) as local, np.load(local, allow_pickle=False) as stored:
                index = faiss.deserialize_index(stored["index"])
                names = [str(name) for name in stored["names"]]
                provenance = json.loads(str(stored["provenance"]))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise DatasetFileError(
                f"{self._shown(path)}: unreadable faiss index file: {exc}"
            ) from exc
        return RetrievalIndex(index=index, names=names, provenance=provenance)

    def save(self, data: RetrievalIndex) -> None:
        with self._write_target() as tmp_path:
            with tmp_path.open("wb") as handle:
                np.savez(
                    handle,
                    index=faiss.serialize_index(data.index),
                    names=np.asarray(data.names, dtype=str),
                    provenance=np.asarray(json.dumps(data.provenance)),
                )
