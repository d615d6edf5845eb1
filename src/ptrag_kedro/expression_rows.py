"""The screen's expression matrix read by rows: in memory, from a row cache, or from its file.

The ``screen`` is loaded backed (its obs in memory, X left in the file). Consumers read X through
:class:`ExpressionRows`, built by :meth:`ExpressionRows.of`, which decides where rows come from
(``in_memory``, the parameter ``training.in_memory``):

- ``auto`` (the default) holds X in memory when its stored size is at most
  :data:`AUTO_MEMORY_SHARE` (half) of the memory available now, else leaves it in the file;
  the choice is logged in one line;
- ``true`` or ``false`` force either.

A reader of the file reads only the rows asked for, so training on a million-cell screen holds
only the rows of the current batch. Training's samplers ask for the *row cache* as well
(``random_rows=True``): an X left in the file is then copied once into a dense float32 ``.npy``
beside the screen, its rows grouped by (cell line, perturbation) so that a sentence's cells lie
in one region of the file, and read memory-mapped. Rows from it are the rows of the file, value
for value (float32, as every reader returns them), and a batch of the paper's shape (8,192 rows)
costs milliseconds where anndata's backed CSR takes a third of a second. The cache's name holds
the screen's fingerprint and its file's size and modification time, so a cache of another
screen (or of an earlier file) is never read: it is rebuilt, atomically, and the stale one
removed. A sparse X held in memory for training is held dense when that fits (the same
budget). An on-disk reader pickles as its paths and reopens the files in each process (DDP
ranks, data-loader workers), never sending the matrix itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag_kedro.schema import CELL_LINE, PERTURBATION, PROVENANCE_KEY

logger = logging.getLogger(__name__)

#: ``in_memory: auto`` holds X in memory when its stored size is at most this share of the memory
#: available (divided among a node's DDP ranks): the rest stays free for the model, data-loader
#: workers and other processes.
AUTO_MEMORY_SHARE = 0.5

#: Where rows are read from: ``auto`` (memory decides), ``True`` (memory), ``False`` (the file).
InMemory = bool | Literal["auto"]

#: Rows per block when a consumer streams the whole matrix (sums, means, the row cache).
BLOCK_ROWS = 20_000

#: The row cache's format, in its name: dense float32 rows, grouped by (cell line, perturbation)
#: in :func:`group_positions`' order. A change of either needs a new name here.
ROW_CACHE_FORMAT = "rows1"


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


def available_memory() -> int | None:
    """Bytes of memory available now: Linux's ``MemAvailable`` (free memory plus the page cache
    it can reclaim); where there is no /proc/meminfo, the physical memory; None if neither is
    known."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def holds_in_memory(screen: ad.AnnData, in_memory: InMemory = "auto") -> bool:
    """Whether the screen's X is to be held in memory (``in_memory``: auto, True or False);
    logs the choice of a backed screen in one line (stored size, available memory, choice)."""
    if not (isinstance(in_memory, bool) or in_memory == "auto"):
        raise ValueError(f"in_memory must be auto, True or False, got {in_memory!r}")
    if not screen.isbacked:
        return True
    size, available = stored_bytes(screen), available_memory()
    if in_memory == "auto":
        share = _memory_share()
        chosen = available is not None and size <= share * available
        rule = f"auto: memory when X takes at most {share:.0%} of what is available"
    else:
        chosen, rule = in_memory, f"{str(in_memory).lower()}"
    shown = "unknown" if available is None else f"{available / 2**20:,.0f} MB"
    logger.info(
        "Screen X (%s): %s MB as stored, %s of memory available: %s (in_memory %s)",
        screen.filename,
        f"{size / 2**20:,.0f}",
        shown,
        "held in memory" if chosen else "rows read from the file",
        rule,
    )
    return chosen


def _dense_fits(shape: tuple[int, ...]) -> bool:
    """Whether a dense float32 matrix of this shape takes at most :data:`AUTO_MEMORY_SHARE` of
    the available memory (divided among a node's DDP ranks)."""
    available = available_memory()
    return available is not None and int(np.prod(shape)) * 4 <= _memory_share() * available


def _memory_share() -> float:
    """:data:`AUTO_MEMORY_SHARE`, divided among a node's torchrun processes (DDP ranks): each
    holds its own copy."""
    return AUTO_MEMORY_SHARE / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def _dense_float32(matrix: sp.spmatrix | sp.sparray) -> np.ndarray:
    """A sparse matrix as dense float32, densified a block of rows at a time (never a dense
    copy in the matrix's own, possibly wider, dtype)."""
    matrix = sp.csr_matrix(matrix)
    out = np.empty(matrix.shape, dtype=np.float32)
    for start in range(0, matrix.shape[0], BLOCK_ROWS):
        rows = slice(start, min(start + BLOCK_ROWS, matrix.shape[0]))
        out[rows] = matrix[rows].toarray()
    return out


def group_positions(obs: pd.DataFrame) -> np.ndarray:
    """Each cell's row in the row cache: cells grouped by cell line, then perturbation (the
    controls of a line are one group), in screen order within a group."""
    line = pd.Categorical(obs[CELL_LINE]).codes
    perturbation = pd.Categorical(obs[PERTURBATION]).codes
    order = np.lexsort((perturbation, line))
    positions = np.empty(len(order), dtype=np.int64)
    positions[order] = np.arange(len(order))
    return positions


class RowCache:
    """X as dense float32 rows in a memory-mapped ``.npy``, in :func:`group_positions`' order.

    Build or find it with :meth:`for_screen`. It pickles as its path and the positions; each
    process maps the file itself.
    """

    def __init__(self, path: Path, positions: np.ndarray) -> None:
        self.path = path
        self.positions = positions
        self._array: np.ndarray | None = None
        self._opened_in: int | None = None

    @classmethod
    def for_screen(cls, screen: ad.AnnData, source: ExpressionRows) -> RowCache | None:
        """The cache of this backed screen, written from ``source`` (its file) when missing or
        stale. None, with the reason logged, where there can be none: a screen without a
        recorded fingerprint, or a folder that is read-only or lacks the room."""
        fingerprint = screen.uns.get(PROVENANCE_KEY, {}).get("fingerprint")
        screen_path = Path(screen.filename)
        if fingerprint is None:
            logger.info("%s records no fingerprint: rows are read from it, not cached", screen_path)
            return None
        stat = screen_path.stat()
        key = f"{fingerprint}:{stat.st_size}:{stat.st_mtime_ns}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        name = f"{screen_path.name}.{ROW_CACHE_FORMAT}-{digest}.npy"
        cache = cls(screen_path.with_name(name), group_positions(screen.obs))
        if not cache.path.is_file():
            # Caches of earlier files at this path are stale: never read, removed first.
            for stale in screen_path.parent.glob(f"{screen_path.name}.{ROW_CACHE_FORMAT}-*.npy"):
                stale.unlink(missing_ok=True)
            if not cache._room_to_write(source.shape):
                return None
            cache._write(source)
        return cache

    def _room_to_write(self, shape: tuple[int, int]) -> bool:
        folder, needed = self.path.parent, shape[0] * shape[1] * 4
        if not os.access(folder, os.W_OK):
            logger.warning("%s is read-only: rows are read from the screen's file", folder)
            return False
        free = shutil.disk_usage(folder).free
        if free < needed:
            logger.warning(
                "No room for the row cache %s (%s MB needed, %s MB free): rows are read from "
                "the screen's file (slower)",
                self.path,
                f"{needed / 2**20:,.0f}",
                f"{free / 2**20:,.0f}",
            )
            return False
        return True

    def _write(self, source: ExpressionRows) -> None:
        """X copied block by block into the cache, atomically."""
        # Imported here: the datasets package loads torch, which readers of X need not.
        from ptrag_kedro.datasets._files import atomic_write_path

        start = time.perf_counter()
        with atomic_write_path(self.path) as tmp_path:
            rows = np.lib.format.open_memmap(tmp_path, "w+", np.float32, source.shape)
            for block_rows, block in source.blocks():
                rows[self.positions[block_rows]] = dense(block).astype(np.float32, copy=False)
            rows.flush()
            del rows  # unmapped before the rename
        logger.info(
            "Wrote the row cache %s (%s MB, %.0f s); runs on this screen file reuse it",
            self.path,
            f"{self.path.stat().st_size / 2**20:,.0f}",
            time.perf_counter() - start,
        )

    def _mapped(self) -> np.ndarray:
        # Mapped again in a new process (a data-loader worker, a DDP rank).
        if self._array is None or self._opened_in != os.getpid():
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            self._opened_in = os.getpid()
        return self._array

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self._mapped()[self.positions[rows]]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None, "_opened_in": None}


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
        self.cache: RowCache | None = None  # rows of an on-disk X, when cached
        self._opened_in: int | None = None  # the process that opened the file
        self._file: h5py.File | None = None
        if self.path is not None:
            self.shape = tuple(int(n) for n in self._on_disk().shape)
        else:
            self.shape = tuple(int(n) for n in matrix.shape)

    @classmethod
    def of(
        cls, screen: ad.AnnData, in_memory: InMemory = "auto", random_rows: bool = False
    ) -> ExpressionRows:
        """The screen's X: in memory or in its file as ``in_memory`` decides
        (:func:`holds_in_memory`).

        ``random_rows``: rows will be read at random, many times (training's sentences). An X
        left in the file is then read through the row cache, and a sparse X in memory is held
        as dense float32 when that takes at most :data:`AUTO_MEMORY_SHARE` of the available
        memory: indexing dense rows costs a fraction of gathering CSR rows and densifying them
        (about 1.4 ms of a 30 ms demo step), and gives the same values.
        """
        if holds_in_memory(screen, in_memory):
            matrix = screen.X
            if screen.isbacked:
                matrix = matrix.to_memory() if hasattr(matrix, "to_memory") else matrix[:]
            if random_rows and sp.issparse(matrix) and _dense_fits(matrix.shape):
                matrix = _dense_float32(matrix)
            return cls(matrix=matrix)
        rows = cls(path=screen.filename)
        if random_rows:
            rows.cache = RowCache.for_screen(screen, rows)
        return rows

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
        if self.cache is not None:
            return self.cache[rows]
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
