"""Observed responses: mean shifts of (cell line, perturbation) groups from the line's controls.

Used by the response database (``perturbation_responses``, train groups only) and by the
baselines. Group sums go through a sparse indicator matrix, one block of rows at a time, so a
large screen is never made dense nor loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag_kedro.expression_rows import ExpressionRows
from ptrag_kedro.schema import CELL_LINE, CONTROL, PERTURBATION, RESPONSE_COLUMNS, SPLIT, TRAIN


def group_means(screen: ad.AnnData, splits: Iterable[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Mean expression of every (cell line, perturbation) group of the given splits.

    Returns the groups (columns ``cell_line``, ``perturbation``, ``split``, ``n_cells``, one row
    per group, sorted) and their means [groups, genes].
    """
    obs = screen.obs
    wanted = obs[SPLIT].isin(list(splits)).to_numpy()
    rows = np.flatnonzero(wanted)
    keys = pd.DataFrame(
        {
            CELL_LINE: obs[CELL_LINE].astype(str).to_numpy()[rows],
            PERTURBATION: obs[PERTURBATION].astype(str).to_numpy()[rows],
            SPLIT: obs[SPLIT].astype(str).to_numpy()[rows],
        }
    )
    groups = keys.drop_duplicates().sort_values([CELL_LINE, PERTURBATION]).reset_index(drop=True)
    codes = pd.MultiIndex.from_frame(groups[[CELL_LINE, PERTURBATION]]).get_indexer(
        pd.MultiIndex.from_frame(keys[[CELL_LINE, PERTURBATION]])
    )
    indicator = sp.csr_matrix(
        (np.ones(len(rows)), (codes, rows)), shape=(len(groups), screen.n_obs)
    )
    counts = np.bincount(codes, minlength=len(groups))
    means = ExpressionRows.of(screen).row_sums(indicator) / counts[:, None]
    return groups.assign(n_cells=counts), means


def mean_shifts(screen: ad.AnnData, splits: Iterable[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Mean shift from the line's controls of every perturbed group of ``splits``.

    Returns the groups (``cell_line``, ``perturbation``, ``split``, ``n_cells``) and shifts
    [groups, genes]; a line without controls has no shifts (ingestion guarantees controls).
    """
    groups, means = group_means(screen, [*splits, CONTROL])
    control_rows = groups[groups[SPLIT] == CONTROL]
    control_mean = dict(
        zip(control_rows[CELL_LINE], means[control_rows.index.to_numpy()], strict=True)
    )
    perturbed = (groups[SPLIT] != CONTROL).to_numpy()
    reference = np.zeros((int(perturbed.sum()), screen.n_vars))
    for position, line in enumerate(groups.loc[perturbed, CELL_LINE]):
        reference[position] = control_mean[line]
    return groups[perturbed].reset_index(drop=True), means[perturbed] - reference


def response_table(screen: ad.AnnData) -> pd.DataFrame:
    """``perturbation_responses``: per *train* (cell line, perturbation), mean shift and cells.

    Columns ``cell_line``, ``perturbation``, ``n_cells``, then one float32 column per gene (the
    screen's gene order). No val or test group can enter: only cells of split ``train`` count.
    """
    clashing = sorted(set(map(str, screen.var_names)) & set(RESPONSE_COLUMNS))
    if clashing:
        raise ValueError(
            f"screen: gene name(s) {clashing} clash with perturbation_responses columns"
        )
    groups, shifts = mean_shifts(screen, [TRAIN])
    table = pd.DataFrame(shifts.astype(np.float32), columns=[str(g) for g in screen.var_names])
    table.insert(0, "n_cells", groups["n_cells"].to_numpy(dtype=np.int64))
    table.insert(0, PERTURBATION, groups[PERTURBATION].to_numpy())
    table.insert(0, CELL_LINE, groups[CELL_LINE].to_numpy())
    return table
