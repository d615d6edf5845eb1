"""Highly variable genes from per-line sums gathered block by block: scanpy 1.11's
``highly_variable_genes(flavor=..., batch_key="cell_line", n_top_genes=...)`` without its
in-memory copies.

scanpy's dispersion flavours need, per batch (cell line) and gene, only the number of cells,
the cells with a non-zero value (its per-batch filter of unexpressed genes), and the sum and
sum of squares of the values it takes the mean and variance of. :class:`LineStatistics` gathers
those over blocks of log-normalised rows; :func:`highly_variable_genes` then follows
``scanpy/preprocessing/_highly_variable_genes.py`` step for step (``_highly_variable_genes_
single_batch``, ``_get_mean_bins``, ``_get_disp_stats``, ``_subset_genes``,
``_highly_variable_genes_batched``), so that the chosen genes are scanpy's. A test holds them to
scanpy's on the demo screen for both flavours.

Both of scanpy's dispersion flavours (``seurat``, ``cell_ranger``) reduce cells to these sums,
so both stream, exactly. Any other flavour is refused (by the parameters, and again here) rather
than run in memory behind the user's back: ``seurat_v3`` fits a loess to raw-count variances and
then needs a second pass of clipped values, a different algorithm to stream and test.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag_kedro.pipelines.ingestion.staged import Block

#: scanpy's default number of mean bins for the dispersion normalisation.
N_BINS = 20

#: The flavours computed from streamed sums (``ingestion.features.hvg_flavor``).
STREAMED_FLAVORS = ("seurat", "cell_ranger")


@dataclass
class LineStatistics:
    """Per cell line and gene, over the rows added: float64 sums as scanpy accumulates them.

    Values are ``expm1`` of the log-normalised values for ``seurat`` (scanpy undoes the log
    in float32 before taking means), the log-normalised values themselves for ``cell_ranger``.
    """

    flavor: str
    n_cells: np.ndarray  # [lines]
    n_expressing: np.ndarray  # [lines, genes] cells with a value > 0
    sums: np.ndarray  # [lines, genes]
    sums_of_squares: np.ndarray  # [lines, genes] of float32 squares, as scanpy squares

    @classmethod
    def zeros(cls, n_lines: int, n_genes: int, flavor: str) -> LineStatistics:
        return cls(
            flavor=flavor,
            n_cells=np.zeros(n_lines, dtype=np.int64),
            n_expressing=np.zeros((n_lines, n_genes), dtype=np.int64),
            sums=np.zeros((n_lines, n_genes)),
            sums_of_squares=np.zeros((n_lines, n_genes)),
        )

    def add(self, log_values: Block, line_codes: np.ndarray) -> None:
        """Add a block of float32 log-normalised rows; ``line_codes``: each row's line."""
        lines = np.unique(line_codes)
        for line in lines:
            rows = log_values if len(lines) == 1 else log_values[line_codes == line]
            self.n_cells[line] += rows.shape[0]
            if sp.issparse(rows):
                values = np.expm1(rows.data) if self.flavor == "seurat" else rows.data
                self.n_expressing[line] += _column_sums(rows, rows.data > 0).astype(np.int64)
                self.sums[line] += _column_sums(rows, values)
                self.sums_of_squares[line] += _column_sums(rows, values * values)
            else:
                values = np.expm1(rows) if self.flavor == "seurat" else rows
                self.n_expressing[line] += np.count_nonzero(rows > 0, axis=0)
                self.sums[line] += values.sum(axis=0, dtype=np.float64)
                self.sums_of_squares[line] += (values * values).sum(axis=0, dtype=np.float64)


def _column_sums(rows: sp.csr_matrix, values: np.ndarray) -> np.ndarray:
    """Per gene, the float64 sum of ``values`` stored in the pattern of ``rows``."""
    pattern = sp.csr_matrix((values, rows.indices, rows.indptr), shape=rows.shape)
    return pattern.T @ np.ones(rows.shape[0])  # a float64 vector: float64 accumulation


def highly_variable_genes(
    statistics: LineStatistics, var_names: pd.Index, n_top_genes: int
) -> np.ndarray:
    """Which genes scanpy would flag highly variable (boolean, in ``var_names`` order).

    Lines are scanpy's batches, in category order; with a single line, scanpy's unbatched call.
    """
    lines = np.flatnonzero(statistics.n_cells > 0)
    if len(lines) == 1:
        table = _line_table(statistics, lines[0], var_names, n_top_genes, drop_unexpressed=False)
        return table["highly_variable"].to_numpy(dtype=bool)
    tables = [
        _line_table(statistics, line, var_names, n_top_genes, drop_unexpressed=True)
        for line in lines
    ]
    return _combine_lines(tables, var_names, n_top_genes)


def _line_table(
    statistics: LineStatistics,
    line: int,
    var_names: pd.Index,
    n_top_genes: int,
    drop_unexpressed: bool,
) -> pd.DataFrame:
    """scanpy's ``_highly_variable_genes_single_batch`` from one line's sums."""
    flavor, n_cells = statistics.flavor, int(statistics.n_cells[line])
    if drop_unexpressed:
        kept = statistics.n_expressing[line] > 0
    else:
        kept = np.ones(len(var_names), dtype=bool)
    # scanpy's _get_mean_var, then its unbiased (ddof=1) correction
    mean = statistics.sums[line, kept] / n_cells
    var = statistics.sums_of_squares[line, kept] / n_cells - mean**2
    if n_cells != 1:
        var *= n_cells / (n_cells - 1)
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = var / mean
        if flavor == "seurat":  # logarithmised mean as in Seurat
            dispersion[dispersion == 0] = np.nan
            dispersion = np.log(dispersion)
            mean = np.log1p(mean)
    table = pd.DataFrame({"means": mean, "dispersions": dispersion})
    table["mean_bin"] = _mean_bins(table["means"], flavor)
    bin_stats = _dispersion_stats(table, flavor)
    table["dispersions_norm"] = (table["dispersions"] - bin_stats["avg"]) / bin_stats["dev"]
    table["highly_variable"] = _top_dispersions(table["dispersions_norm"].to_numpy(), n_top_genes)
    table.index = var_names[kept]
    table = table.drop(columns="mean_bin")
    if not kept.all():
        # Unexpressed genes come back with zeros, which the cross-line means then count.
        missing = pd.DataFrame(0.0, index=var_names[~kept], columns=table.columns)
        missing["highly_variable"] = False
        table = pd.concat([table, missing]).loc[var_names]
    return table


def _mean_bins(means: pd.Series, flavor: str) -> pd.Series:
    if flavor == "seurat":
        return pd.cut(means, bins=N_BINS)
    return pd.cut(means, bins=np.r_[-np.inf, np.percentile(means, np.arange(10, 105, 5)), np.inf])


def _dispersion_stats(table: pd.DataFrame, flavor: str) -> pd.DataFrame:
    """Per gene, its mean bin's average and spread of dispersions (scanpy's _get_disp_stats)."""
    grouped = table.groupby("mean_bin", observed=True)["dispersions"]
    if flavor == "seurat":
        bin_stats = grouped.agg(avg="mean", dev="std")
        # a bin of one gene has no std: that gene's normalised dispersion is set to 1
        alone = bin_stats["dev"].isnull()
        bin_stats.loc[alone, "dev"] = bin_stats.loc[alone, "avg"]
        bin_stats.loc[alone, "avg"] = 0
    else:
        bin_stats = grouped.agg(avg="median", dev=_mad)
    return bin_stats.loc[table["mean_bin"]].set_index(table.index)


def _mad(values: np.ndarray) -> float:
    from statsmodels.robust import mad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # "Mean of empty slice"
        return mad(values)


def _top_dispersions(dispersion_norm: np.ndarray, n_top_genes: int) -> np.ndarray:
    """scanpy's ``_subset_genes`` with ``n_top_genes``: at or above the n-th highest."""
    n_top_genes = min(n_top_genes, len(dispersion_norm))
    finite = dispersion_norm[~np.isnan(dispersion_norm)]
    n_top_genes = min(n_top_genes, finite.size)
    finite[::-1].sort()
    return np.nan_to_num(dispersion_norm, nan=-np.inf) >= finite[n_top_genes - 1]


def _combine_lines(tables: list[pd.DataFrame], var_names: pd.Index, n_top_genes: int) -> np.ndarray:
    """scanpy's ``_highly_variable_genes_batched`` with ``n_top_genes``: genes ranked by the
    number of lines that flag them, ties broken by the mean normalised dispersion."""
    table = pd.concat(tables, axis=0)
    table["highly_variable"] = table["highly_variable"].astype(int)
    table = table.groupby(table.index, observed=True).agg(
        {
            "means": "mean",
            "dispersions": "mean",
            "dispersions_norm": "mean",
            "highly_variable": "sum",
        }
    )
    table["highly_variable_nbatches"] = table["highly_variable"]
    table = table.sort_values(
        ["highly_variable_nbatches", "dispersions_norm"], ascending=False, na_position="last"
    )
    table["highly_variable"] = np.arange(table.shape[0]) < n_top_genes
    return table.loc[var_names, "highly_variable"].to_numpy(dtype=bool)
