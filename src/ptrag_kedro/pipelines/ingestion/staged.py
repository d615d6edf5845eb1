"""The screen between ingestion steps, and the row blocks every step reads the raw counts by.

A :class:`StagedScreen` holds the small tables (obs, var, provenance), a handle on the raw X (a
backed CSR or dense dataset when ``raw_screen`` is loaded ``backed: r``, or an in-memory matrix)
and the raw rows still kept. X is never held whole: each step reads it ``block_rows`` raw rows at
a time, and the final screen is written to its h5ad file block by block (``write_h5ad``, called
by the catalog's ``AnnDataDataset.save``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag_kedro.h5ad_writer import write_h5ad_in_blocks
from ptrag_kedro.progress import ProgressLog, every_for
from ptrag_kedro.schema import PROVENANCE_KEY

logger = logging.getLogger(__name__)

#: A block of rows: CSR when X is sparse, a float or integer array when it is dense.
Block = sp.csr_matrix | np.ndarray

#: Raw rows read at once when no parameter says otherwise (ingestion.features.block_rows).
DEFAULT_BLOCK_ROWS = 50_000


@dataclass(frozen=True, repr=False)
class StagedScreen:
    """A screen in the making: obs of the kept cells, the raw genes, and where their counts are.

    Args:
        obs: one row per kept cell (standardised columns, ``split`` once assigned).
        var: the raw screen's genes.
        counts: the raw X (backed ``CSRDataset``, h5py ``Dataset``, ``np.ndarray`` or scipy
            sparse); ``None`` when the file has no X.
        rows: the raw row of each obs row, ascending.
        obsm: the raw screen's obsm (every raw row), held by reference.
        provenance: what ``uns["ptrag"]`` will hold.
        block_rows: raw rows read at once.
        genes: counts path, once chosen: the raw columns of the features.
        target_sum: counts path, once chosen: normalize_total's target.
        features: obsm path, once chosen: the feature matrix of the kept cells (in memory).
        feature_names: the features' names (either path), once chosen.
    """

    obs: pd.DataFrame
    var: pd.DataFrame
    counts: Any
    rows: np.ndarray
    obsm: Mapping[str, Any]
    provenance: dict[str, Any]
    block_rows: int = DEFAULT_BLOCK_ROWS
    genes: np.ndarray | None = None
    target_sum: float | None = None
    features: np.ndarray | sp.spmatrix | None = None
    feature_names: pd.Index | None = None

    @classmethod
    def from_anndata(
        cls, adata: ad.AnnData, obs: pd.DataFrame, provenance: dict[str, Any]
    ) -> StagedScreen:
        """Every row of ``adata`` with the given obs; X is referenced (a backed one stays so)."""
        return cls(
            obs=obs,
            var=adata.var,
            counts=adata.X,
            rows=np.arange(adata.n_obs),
            obsm=dict(adata.obsm),
            provenance=provenance,
        )

    def replace(self, **changes: Any) -> StagedScreen:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:  # short: tracebacks and logs show it, not its tables
        stage = "features chosen" if self.feature_names is not None else "raw genes"
        return (
            f"StagedScreen({self.n_obs} cells x {self.n_vars} {stage}, of "
            f"{self.provenance.get('raw_screen')}, X: {type(self.counts).__name__})"
        )

    # What screen_fingerprint and the dataset's log line read (duck-typed as an AnnData's).
    @property
    def var_names(self) -> pd.Index:
        """The features' names once chosen, the raw genes before."""
        return self.var.index if self.feature_names is None else self.feature_names

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        return len(self.var_names)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_obs, self.n_vars

    def blocks(
        self, rows: np.ndarray | None = None, task: str = "Reading the raw counts"
    ) -> Iterator[tuple[slice, Block]]:
        """Raw counts of ``rows`` (default: the kept rows), as :func:`row_blocks` yields them
        (``task`` names the pass in its progress lines)."""
        rows = self.rows if rows is None else rows
        return row_blocks(self.counts, rows, self.block_rows, task)

    def x_blocks(self) -> Iterator[Block]:
        """The screen's X, block by block: the features once chosen (log-normalised counts of
        the chosen genes, or the obsm matrix), the kept cells' raw counts before."""
        if self.features is not None:
            yield self.features
            return
        for _, block in self.blocks(task="Writing the screen's X"):
            if self.target_sum is None:
                yield block
            else:
                yield log_normalise(block, self.target_sum, self.genes)

    def to_anndata(self) -> ad.AnnData:
        """The screen in memory (tests, small screens): X, obs, var names, ``uns["ptrag"]``."""
        blocks = list(self.x_blocks())
        if any(sp.issparse(block) for block in blocks):
            matrix = sp.csr_matrix(sp.vstack(blocks, format="csr"))
        else:
            matrix = np.concatenate(blocks)
        return ad.AnnData(
            X=matrix,
            obs=self.obs.copy(),
            var=pd.DataFrame(index=self.var_names.copy()),
            uns={PROVENANCE_KEY: copy.deepcopy(self.provenance)},
        )

    def write_h5ad(
        self,
        path: str | PathLike,
        *,
        compression: str | None = None,
        compression_opts: int | None = None,
    ) -> None:
        """Write the screen as an h5ad file, X appended block by block (never whole in memory).

        The caller owns atomicity: ``AnnDataDataset.save`` passes a temporary path and renames
        it only once this returns.
        """
        skeleton = ad.AnnData(
            obs=self.obs,
            var=pd.DataFrame(index=self.var_names.copy()),
            uns={PROVENANCE_KEY: self.provenance},
        )
        options = {"compression": compression, "compression_opts": compression_opts}
        write_h5ad_in_blocks(path, skeleton, self.x_blocks(), self.n_vars, options)


def row_blocks(
    matrix: Any, rows: np.ndarray, block_rows: int, task: str = "Reading the raw counts"
) -> Iterator[tuple[slice, Block]]:
    """The raw rows ``rows`` (ascending) of ``matrix``, reading ``block_rows`` raw rows at a time.

    Yields ``(where, block)``: ``block`` holds the raw rows ``rows[where]``, in order (CSR for
    any sparse matrix, an array for a dense one). Ranges without a wanted row are not read.
    One reader for every kind of X: an anndata backed CSR dataset, an h5py dataset, or a matrix
    in memory (whose blocks are copies, so callers may change them).

    A matrix of several blocks logs ``task``'s progress, in raw rows, about ten times a pass.
    """
    n_raw = matrix.shape[0]
    n_blocks = math.ceil(n_raw / block_rows)
    progress = None
    if n_blocks > 1:
        progress = ProgressLog(logger, task, n_raw, "raw rows", block_rows * every_for(n_blocks))
    for start in range(0, n_raw, block_rows):
        stop = min(start + block_rows, n_raw)
        first, last = np.searchsorted(rows, [start, stop])
        if first < last:
            block = matrix[start:stop]
            block = sp.csr_matrix(block) if sp.issparse(block) else np.asarray(block)
            wanted = rows[first:last] - start
            if len(wanted) < stop - start:
                block = block[wanted]
            elif isinstance(matrix, np.ndarray):
                block = block.copy()  # a view of an in-memory X: never change the caller's X
            yield slice(first, last), block
        if progress is not None:
            progress.update(stop)


def log_normalise(block: Block, target_sum: float, genes: np.ndarray | None = None) -> Block:
    """scanpy's ``normalize_total(target_sum)`` then ``log1p`` of a block of raw counts, then
    its columns ``genes`` (all when None); float32 throughout, as scanpy computes them on a
    float32 X (the counts are cast first, as ingestion always did before calling scanpy).

    Each cell's total counts all genes (the chosen ones or not). Totals are summed exactly (in
    float64; the counts are integers) and rounded to float32, as scanpy's CSR path does; its
    dense path sums in float32, which is the same below 2**24 counts per cell.
    """
    block = block.astype(np.float32)
    if sp.issparse(block):
        totals = block @ np.ones(block.shape[1])  # float64 sums (a float64 vector upcasts)
    else:
        totals = block.sum(axis=1, dtype=np.float64)
    # float32 divided by a Python number stays float32 (NEP 50), as in scanpy
    scale = totals.astype(np.float32) / target_sum
    scale = scale + (scale == 0)  # scanpy's allow_divide_by_zero=False: empty cells stay 0
    if genes is not None and len(genes) < block.shape[1]:
        block = block[:, genes]
    if sp.issparse(block):
        block.data /= np.repeat(scale, np.diff(block.indptr))
        np.log1p(block.data, out=block.data)
    else:
        block /= scale[:, None]
        np.log1p(block, out=block)
    return block
