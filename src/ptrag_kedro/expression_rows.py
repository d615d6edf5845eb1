"""The screen's expression matrix read by rows: in memory, or from its h5ad file on demand.

The ``screen`` is loaded backed (its obs in memory, X left in the file). Consumers read X through
:class:`ExpressionRows`: a screen whose X is small is loaded once into memory (the fast path of
every demo-sized run); a larger one is read a few rows at a time from the file, so training on a
million-cell screen holds only the rows of the current batch. An on-disk reader pickles as its
path and reopens the file in each process (DDP ranks), never sending the matrix itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp

#: X of at most this many bytes (as stored: CSR data + indices, or dense) is held in memory.
DEFAULT_IN_MEMORY_BYTES = 2 * 2**30

#: Rows per block when a consumer streams the whole matrix (sums, means).
BLOCK_ROWS = 20_000


def dense(matrix: object) -> np.ndarray:
    """A dense float array of a (possibly sparse) matrix."""
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def stored_bytes(screen: ad.AnnData) -> int:
    """Bytes of the screen's X as stored (what loading it into memory costs)."""
    matrix = screen.X
    if isinstance(matrix, ad.abc.CSRDataset | ad.abc.CSCDataset):
        return int(matrix.group["data"].size * (matrix.dtype.itemsize + 4))
    if sp.issparse(matrix):
        return int(matrix.data.nbytes + matrix.indices.nbytes)
    return int(np.prod(matrix.shape) * matrix.dtype.itemsize)


class ExpressionRows:
    """Rows of an expression matrix as dense float32, in any order and with repeats.

    Build it with :meth:`of`. ``rows[indices]`` reads only those rows (each distinct row once);
    :meth:`blocks` streams the whole matrix in row blocks.
    """

    def __init__(self, matrix: Any = None, path: str | Path | None = None) -> None:
        if (matrix is None) == (path is None):
            raise ValueError("give an in-memory matrix or the path of a backed h5ad, not both")
        self._matrix = matrix
        self.path = None if path is None else Path(path)
        self._opened_in: int | None = None  # the process that opened the file
        self._file: h5py.File | None = None
        if self.path is not None:
            self.shape = tuple(int(n) for n in self._on_disk().shape)
        else:
            self.shape = tuple(int(n) for n in matrix.shape)

    @classmethod
    def of(cls, screen: ad.AnnData, in_memory_bytes: int = DEFAULT_IN_MEMORY_BYTES):
        """The screen's X: in memory when it is (or fits in ``in_memory_bytes``), else on disk."""
        if not screen.isbacked:
            return cls(matrix=screen.X)
        if stored_bytes(screen) <= in_memory_bytes:
            matrix = screen.X
            return cls(matrix=matrix.to_memory() if hasattr(matrix, "to_memory") else matrix[:])
        return cls(path=screen.filename)

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def _on_disk(self) -> Any:
        """The file's X (reopened in a new process: h5py handles do not survive a fork)."""
        if self._file is None or self._opened_in != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._opened_in = os.getpid()
        node = self._file["X"]
        return ad.io.sparse_dataset(node) if isinstance(node, h5py.Group) else node

    def _read(self, sorted_rows: np.ndarray) -> Any:
        if self.path is None:
            return self._matrix[sorted_rows]
        return self._on_disk()[sorted_rows]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self.path is None:
            return dense(self._matrix[rows]).astype(np.float32, copy=False)
        # h5py and anndata's backed CSR read sorted, distinct rows: read each row once, then
        # put them in the order (and with the repeats) asked for.
        distinct, order = np.unique(rows, return_inverse=True)
        return dense(self._read(distinct)).astype(np.float32, copy=False)[order]

    def blocks(self, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[slice, Any]]:
        """(row slice, block) over the whole matrix; blocks are sparse when the matrix is."""
        source = self._matrix if self.path is None else self._on_disk()
        for start in range(0, self.shape[0], block_rows):
            rows = slice(start, min(start + block_rows, self.shape[0]))
            yield rows, source[rows]

    def row_sums(self, weights: sp.csr_matrix) -> np.ndarray:
        """``weights @ X`` [len(weights), genes] (group sums), one block of X at a time."""
        total = np.zeros((weights.shape[0], self.shape[1]))
        weights = sp.csc_matrix(weights)
        for rows, block in self.blocks():
            part = weights[:, rows]
            if part.nnz:
                total += dense(part @ block)
        return total

    def __getstate__(self) -> dict[str, Any]:
        # On disk: the path travels, the open file does not (each process reopens it).
        return {**self.__dict__, "_file": None, "_opened_in": None}
