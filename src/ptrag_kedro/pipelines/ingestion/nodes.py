"""Nodes of the ``ingestion`` pipeline: raw screen -> standardised, featurised, split screen.

Every bad input raises :class:`ScreenError` with one line naming the file and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from ptrag_kedro.provenance import screen_fingerprint
from ptrag_kedro.schema import (
    CELL_LINE,
    CONTROL,
    PERTURBATION,
    PROVENANCE_KEY,
    SOURCE_FILE_KEY,
    SPLIT,
    TEST,
    TRAIN,
    VAL,
)

logger = logging.getLogger(__name__)

# Counts are checked in slices of this many stored values, to bound temporary memory.
_CHECK_CHUNK = 1 << 24


class ScreenError(ValueError):
    """Bad input screen or split: the message is one line naming the file and the field."""


@dataclass(frozen=True)
class ObsColumns:
    """Names of the raw screen's obs columns, and the control label."""

    perturbation: str = "gene"
    cell_line: str = "cell_line"
    batch: str = "gem_group"
    control_label: str = "non-targeting"


def _source(adata: ad.AnnData) -> str:
    provenance = adata.uns.get(PROVENANCE_KEY, {})
    return str(adata.uns.get(SOURCE_FILE_KEY) or provenance.get("raw_screen") or "raw_screen")


def _first(names: Iterable[Any], limit: int = 5) -> str:
    names = [str(name) for name in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------
# 1. standardise obs


def standardise_screen(raw_screen: ad.AnnData, columns: dict[str, str]) -> ad.AnnData:
    """Validate the raw obs and rename it to ``perturbation``, ``cell_line``, ``batch``.

    X, var and obsm are shared with the input (no copy). Every cell line must have control cells.
    """
    names = ObsColumns(**columns)
    source = _source(raw_screen)
    for role in ("perturbation", "cell_line", "batch"):
        column = getattr(names, role)
        if column not in raw_screen.obs.columns:
            raise ScreenError(
                f"{source}: obs column '{column}' ({role}, parameter ingestion.columns.{role}) "
                f"is missing; obs has: {_first(raw_screen.obs.columns, 10)}"
            )
    if raw_screen.n_obs == 0:
        raise ScreenError(f"{source}: the screen has no cells (X has 0 rows)")
    obs = pd.DataFrame(index=raw_screen.obs_names.copy())
    for role in ("perturbation", "cell_line", "batch"):
        values = raw_screen.obs[getattr(names, role)]
        if values.isna().any():
            raise ScreenError(
                f"{source}: obs column '{getattr(names, role)}' ({role}) has "
                f"{int(values.isna().sum())} empty values"
            )
        obs[role] = pd.Categorical(values.astype(str).str.strip())
    _check_controls(obs, names.control_label, source, names.perturbation)

    screen = ad.AnnData(X=raw_screen.X, obs=obs, var=raw_screen.var, obsm=dict(raw_screen.obsm))
    screen.uns[PROVENANCE_KEY] = {"raw_screen": source, "control_label": names.control_label}
    logger.info(
        "Screen %s: %d cells, %d genes, %d cell lines, %d perturbations",
        source,
        screen.n_obs,
        screen.n_vars,
        obs[CELL_LINE].nunique(),
        obs[PERTURBATION].nunique() - 1,
    )
    return screen


def _check_controls(obs: pd.DataFrame, control_label: str, source: str, column: str) -> None:
    is_control = obs[PERTURBATION].to_numpy() == control_label
    controls_per_line = pd.Series(is_control).groupby(obs[CELL_LINE].to_numpy()).sum()
    lacking = controls_per_line.index[controls_per_line.to_numpy() == 0]
    if len(lacking):
        raise ScreenError(
            f"{source}: obs column '{column}' has no '{control_label}' (control) cells in cell "
            f"line(s) {_first(lacking)} (parameter ingestion.columns.control_label)"
        )


# --------------------------------------------------------------------------------------------
# 2. features


def select_features(screen: ad.AnnData, features: dict[str, Any]) -> ad.AnnData:
    """Use ``obsm[obsm_key]`` when present; otherwise QC + normalise + log1p + HVG with scanpy.

    Either way (cell line, perturbation) groups with fewer than ``min_cells_per_perturbation``
    cells are dropped (controls never). The path taken and its settings are recorded in
    ``uns["ptrag"]["features"]``. On the counts path a float32 X is normalised in place when no
    cell is filtered out: the input's X is consumed rather than copied (it is the largest object).
    """
    source = _source(screen)
    obsm_key = features.get("obsm_key") or ""
    control_label = screen.uns[PROVENANCE_KEY]["control_label"]
    min_cells = int(features["min_cells_per_perturbation"])
    if obsm_key and obsm_key in screen.obsm:
        keep = _cells_in_large_groups(
            screen.obs, np.ones(screen.n_obs, dtype=bool), min_cells, control_label
        )
        featurised = _features_from_obsm(screen, obsm_key, source, keep)
        record: dict[str, Any] = {"path": f"obsm:{obsm_key}"}
    else:
        featurised, record = _features_from_counts(
            screen, features, source, min_cells, control_label
        )
    for column in (PERTURBATION, CELL_LINE):
        featurised.obs[column] = featurised.obs[column].cat.remove_unused_categories()
    _check_controls(featurised.obs, control_label, source, PERTURBATION)
    record.update(
        n_features=int(featurised.n_vars),
        n_cells=int(featurised.n_obs),
        min_cells_per_perturbation=min_cells,
    )
    featurised.uns[PROVENANCE_KEY] = {**screen.uns[PROVENANCE_KEY], "features": record}
    logger.info("Features: %s -> %d cells x %d features", record["path"], *featurised.shape)
    return featurised


def _features_from_obsm(
    screen: ad.AnnData, obsm_key: str, source: str, keep: np.ndarray
) -> ad.AnnData:
    matrix = screen.obsm[obsm_key]
    if not keep.all():
        matrix = matrix[keep]
    matrix = (
        matrix.astype(np.float32) if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float32)
    )
    values = matrix.data if sp.issparse(matrix) else matrix
    if not np.isfinite(values).all():
        raise ScreenError(f"{source}: obsm['{obsm_key}'] has NaN or infinite values")
    feature_names = _obsm_feature_names(screen, matrix.shape[1])
    return ad.AnnData(
        X=matrix,
        obs=screen.obs[keep].copy(),
        var=pd.DataFrame(index=pd.Index(feature_names)),
    )


def _obsm_feature_names(screen: ad.AnnData, n_features: int) -> list[str]:
    """Gene names of the obsm features: the ``highly_variable`` genes when their count matches."""
    flags = screen.var.get("highly_variable")
    if flags is not None and int(np.asarray(flags, dtype=bool).sum()) == n_features:
        return list(screen.var_names[np.asarray(flags, dtype=bool)])
    if screen.n_vars == n_features:
        return list(screen.var_names)
    logger.warning(
        "obsm features: %d columns but no var['highly_variable'] of that size; naming them "
        "hvg_0000...",
        n_features,
    )
    return [f"hvg_{index:04d}" for index in range(n_features)]


def _check_counts(matrix: Any, source: str) -> None:
    """Counts must be finite, non-negative integers."""
    if sp.issparse(matrix):
        values = matrix.data
        chunks = (
            values[start : start + _CHECK_CHUNK] for start in range(0, len(values), _CHECK_CHUNK)
        )
    else:
        matrix = np.asarray(matrix)
        rows = max(1, _CHECK_CHUNK // max(1, matrix.shape[1]))
        chunks = (matrix[start : start + rows] for start in range(0, matrix.shape[0], rows))
    for chunk in chunks:
        if not np.isfinite(chunk).all():
            raise ScreenError(
                f"{source}: X holds NaN or infinite values where raw counts are expected"
            )
        if (chunk < 0).any():
            raise ScreenError(f"{source}: X holds negative values where raw counts are expected")
        if (chunk != np.round(chunk)).any():
            raise ScreenError(
                f"{source}: X holds non-integer values where raw counts are expected "
                "(already normalised? give the raw counts, or an obsm feature matrix via "
                "parameter ingestion.features.obsm_key)"
            )


def _features_from_counts(
    screen: ad.AnnData, features: dict[str, Any], source: str, min_cells: int, control_label: str
) -> tuple[ad.AnnData, dict[str, Any]]:
    if screen.X is None:
        raise ScreenError(f"{source}: X is empty and obsm has no '{features.get('obsm_key')}'")
    _check_counts(screen.X, source)
    min_genes = int(features["min_genes_per_cell"])
    keep = np.ones(screen.n_obs, dtype=bool)
    if min_genes > 0:
        keep, _ = sc.pp.filter_cells(screen.X, min_genes=min_genes, inplace=False)
        if not keep.any():
            raise ScreenError(
                f"{source}: no cell has {min_genes} detected genes (parameter "
                "ingestion.features.min_genes_per_cell)"
            )
    n_low_genes = int((~keep).sum())
    keep = _cells_in_large_groups(screen.obs, keep, min_cells, control_label)
    # All row filters in one subset (a copy of X), and none when every cell passes.
    counts = screen.X[keep] if not keep.all() else screen.X
    adata = ad.AnnData(
        X=counts.astype(np.float32) if counts.dtype != np.float32 else counts,
        obs=screen.obs[keep].copy(),
        var=pd.DataFrame(index=screen.var_names.copy()),
    )
    target_sum = float(features["normalize_target_sum"])
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    n_top = int(features["n_top_genes"])
    if n_top < adata.n_vars:
        batch_key = CELL_LINE if adata.obs[CELL_LINE].nunique() > 1 else None
        sc.pp.highly_variable_genes(
            adata,
            n_top_genes=n_top,
            flavor=features.get("hvg_flavor", "seurat"),
            batch_key=batch_key,
        )
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    adata.var = pd.DataFrame(index=adata.var_names.copy())
    adata.uns = {}
    record = {
        "path": "scanpy:filter_cells+normalize_total+log1p+highly_variable_genes",
        "min_genes_per_cell": min_genes,
        "cells_removed_min_genes": n_low_genes,
        "normalize_target_sum": target_sum,
        "n_top_genes": n_top,
        "hvg_flavor": str(features.get("hvg_flavor", "seurat")),
    }
    return adata, record


def _cells_in_large_groups(
    obs: pd.DataFrame, candidates: np.ndarray, min_cells: int, control_label: str
) -> np.ndarray:
    """``candidates`` minus cells of (line, perturbation) groups with < ``min_cells`` candidates.

    Controls are never dropped: they are every line's basal cells.
    """
    keys = obs[[CELL_LINE, PERTURBATION]][candidates]
    group_size = keys.groupby([CELL_LINE, PERTURBATION], observed=True)[PERTURBATION].transform(
        "size"
    )
    small = (group_size.to_numpy() < min_cells) & (keys[PERTURBATION].to_numpy() != control_label)
    if small.any():
        logger.info(
            "QC: dropped %d cells of %d (cell line, perturbation) groups with < %d cells",
            int(small.sum()),
            len(keys[small].drop_duplicates()),
            min_cells,
        )
    keep = candidates.copy()
    keep[np.flatnonzero(candidates)[small]] = False
    return keep


# --------------------------------------------------------------------------------------------
# 3. split


def split_screen(
    screen: ad.AnnData, split: dict[str, Any], split_lists: dict[str, Any] | None
) -> tuple[ad.AnnData, dict[str, Any]]:
    """Assign every cell a split and write the per-line manifest.

    few_shot: the held-out line's perturbations go to val/test (by fractions and a seed, or by
    the lists of ``split_lists``); everything else is train. zero_shot: the whole held-out line
    is test, and val is a fraction of the other lines' (line, perturbation) pairs. Controls of
    every line are ``control`` and stay available as basal cells.
    """
    source = _source(screen)
    mode: Literal["few_shot", "zero_shot"] = split["mode"]
    if mode not in ("few_shot", "zero_shot"):
        raise ScreenError(
            f"parameters: ingestion.split.mode must be few_shot or zero_shot, not '{mode}'"
        )
    control_label = screen.uns[PROVENANCE_KEY]["control_label"]
    heldout = str(split["heldout_cell_line"]).strip()
    lines = list(screen.obs[CELL_LINE].cat.categories)
    if heldout not in lines:
        raise ScreenError(
            f"{source}: obs 'cell_line' has no cell line '{heldout}' (parameter "
            f"heldout_cell_line); lines present: {_first(lines, 10)}"
        )
    rng = np.random.default_rng(int(split["seed"]))
    perturbations_by_line = {
        line: sorted(
            set(screen.obs.loc[screen.obs[CELL_LINE] == line, PERTURBATION]) - {control_label}
        )
        for line in lines
    }
    assignment: dict[str, dict[str, list[str]]] = {
        line: {TRAIN: list(perturbations), VAL: [], TEST: []}
        for line, perturbations in perturbations_by_line.items()
    }
    missing: dict[str, list[str]] = {}
    split_source = "fractions"
    heldout_perturbations = perturbations_by_line[heldout]
    if mode == "few_shot":
        if split_lists is not None:
            split_file = str(split.get("split_file") or "split file")
            val, test, missing = _lists_from_file(
                split_lists, heldout_perturbations, split_file, source, heldout
            )
            split_source = split_file
        else:
            val, test = _fractions(heldout_perturbations, split, rng)
        chosen = set(val) | set(test)
        assignment[heldout] = {
            TRAIN: [p for p in heldout_perturbations if p not in chosen],
            VAL: sorted(val),
            TEST: sorted(test),
        }
    else:
        assignment[heldout] = {TRAIN: [], VAL: [], TEST: list(heldout_perturbations)}
        pairs = [
            (line, p) for line in lines if line != heldout for p in perturbations_by_line[line]
        ]
        n_val = round(float(split["val_fraction"]) * len(pairs))
        for index in rng.permutation(len(pairs))[:n_val]:
            line, perturbation = pairs[index]
            assignment[line][TRAIN].remove(perturbation)
            assignment[line][VAL].append(perturbation)
    for kind in (VAL, TEST):
        if not any(assignment[line][kind] for line in lines):
            raise ScreenError(
                f"{source}: the {kind} split is empty (held-out line '{heldout}' has "
                f"{len(heldout_perturbations)} perturbations; check ingestion.split "
                f"{kind}_fraction or the split file)"
            )

    split_column = _split_column(screen.obs, assignment, control_label)
    screen = screen.copy() if screen.is_view else screen
    screen.obs[SPLIT] = pd.Categorical(split_column, categories=[TRAIN, VAL, TEST, CONTROL])
    fingerprint = screen_fingerprint(screen)
    screen.uns[PROVENANCE_KEY] = {
        **screen.uns[PROVENANCE_KEY],
        "split": {"mode": mode, "heldout_cell_line": heldout, "source": split_source},
        "fingerprint": fingerprint,
    }
    manifest = {
        "mode": mode,
        "heldout_cell_line": heldout,
        "seed": int(split["seed"]),
        "source": split_source,
        "control_label": control_label,
        "screen_fingerprint": fingerprint,
        "missing_from_screen": missing,
        "cell_lines": {
            line: {
                **{kind: sorted(assignment[line][kind]) for kind in (TRAIN, VAL, TEST)},
                "n_control_cells": int(
                    ((screen.obs[CELL_LINE] == line) & (screen.obs[SPLIT] == CONTROL)).sum()
                ),
            }
            for line in lines
        },
    }
    counts = screen.obs[SPLIT].value_counts()
    logger.info(
        "Split %s, held-out %s: cells train %d, val %d, test %d, control %d",
        mode,
        heldout,
        counts[TRAIN],
        counts[VAL],
        counts[TEST],
        counts[CONTROL],
    )
    return screen, manifest


def _fractions(
    perturbations: list[str], split: dict[str, Any], rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    n_val = round(float(split["val_fraction"]) * len(perturbations))
    n_test = round(float(split["test_fraction"]) * len(perturbations))
    order = [perturbations[index] for index in rng.permutation(len(perturbations))]
    return order[:n_val], order[n_val : n_val + n_test]


def _lists_from_file(
    split_lists: Any, present: list[str], split_file: str, source: str, heldout: str
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Val/test lists of a split file, matched to the screen (case-insensitively when needed)."""
    if not isinstance(split_lists, dict):
        raise ScreenError(f"{split_file}: expected a JSON object with 'val' and 'test' lists")
    by_upper = {name.upper(): name for name in present}
    result: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    for kind in (VAL, TEST):
        names = split_lists.get(kind)
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ScreenError(f"{split_file}: field '{kind}' must be a list of gene symbols")
        matched, absent = [], []
        for name in dict.fromkeys(name.strip() for name in names):
            found = name if name in present else by_upper.get(name.upper())
            (matched if found else absent).append(found or name)
        if absent:
            logger.warning(
                "%s: %d of %d '%s' genes are not perturbed in %s cell line '%s'; skipped: %s",
                split_file,
                len(absent),
                len(names),
                kind,
                source,
                heldout,
                _first(absent),
            )
        if not matched:
            raise ScreenError(
                f"{split_file}: none of the {len(names)} '{kind}' genes is perturbed in cell line "
                f"'{heldout}' of {source}"
            )
        result[kind], missing[kind] = matched, absent
    overlap = set(result[VAL]) & set(result[TEST])
    if overlap:
        raise ScreenError(
            f"{split_file}: fields 'val' and 'test' share genes: {_first(sorted(overlap))}"
        )
    return result[VAL], result[TEST], missing


def _split_column(
    obs: pd.DataFrame, assignment: dict[str, dict[str, list[str]]], control_label: str
) -> np.ndarray:
    lookup = {
        (line, perturbation): kind
        for line, kinds in assignment.items()
        for kind, perturbations in kinds.items()
        for perturbation in perturbations
    }
    groups = obs[[CELL_LINE, PERTURBATION]].drop_duplicates()
    group_split = {
        (line, perturbation): CONTROL
        if perturbation == control_label
        else lookup[(line, perturbation)]
        for line, perturbation in zip(groups[CELL_LINE], groups[PERTURBATION], strict=False)
    }
    keys = pd.MultiIndex.from_arrays([obs[CELL_LINE].astype(str), obs[PERTURBATION].astype(str)])
    return pd.Series(group_split).reindex(keys).to_numpy()
