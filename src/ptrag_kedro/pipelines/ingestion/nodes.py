"""Nodes of the ``ingestion`` pipeline: raw screen -> standardised, filtered, split, featurised
screen, in that order, so that nothing learnt from the cells (the highly variable genes) sees a
held-out cell.

The steps hand on a :class:`~.staged.StagedScreen` (obs, var, a handle on the raw X, the kept
rows), never a copy of X: the counts are read in blocks of ``ingestion.features.block_rows`` rows
(checked, QC'd, normalised, HVG statistics gathered), and the catalog writes the final screen
block by block. Memory is bounded by a block, not by the screen.

Every bad input raises :class:`ScreenError` with one line naming the file and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag_kedro.errors import UserError
from ptrag_kedro.parameters import FeatureParameters, ObsColumns, SplitParameters
from ptrag_kedro.pipelines.ingestion.hvg import (
    STREAMED_FLAVORS,
    LineStatistics,
    highly_variable_genes,
)
from ptrag_kedro.pipelines.ingestion.staged import StagedScreen, log_normalise
from ptrag_kedro.provenance import MatrixDigest, screen_fingerprint
from ptrag_kedro.schema import (
    CELL_LINE,
    CONTROL,
    PERTURBATION,
    SPLIT,
    TEST,
    TRAIN,
    VAL,
    WITHHELD,
)

logger = logging.getLogger(__name__)

# Counts are checked in slices of this many stored values, to bound temporary memory.
_CHECK_CHUNK = 1 << 24


class ScreenError(UserError, ValueError):
    """Bad input screen or split: the message is one line naming the file and the field."""


def _source(screen: StagedScreen) -> str:
    return str(screen.provenance.get("raw_screen") or "raw_screen")


def _control_label(screen: StagedScreen) -> str:
    return screen.provenance["control_label"]


def _first(names: Iterable[Any], limit: int = 5) -> str:
    names = [str(name) for name in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------
# 1. standardise obs


def standardise_screen(
    raw_screen: ad.AnnData, columns: ObsColumns, raw_screen_path: str
) -> StagedScreen:
    """Validate the raw obs and rename it to ``perturbation``, ``cell_line``, ``batch``.

    ``raw_screen_path`` is the catalog's path of ``raw_screen`` (the same run-time parameter),
    named in errors and recorded in the provenance. X (backed or not), var and obsm are
    referenced, not copied. Every cell line must have control cells.
    """
    source = str(raw_screen_path)
    for role in ("perturbation", "cell_line", "batch"):
        column = getattr(columns, role)
        if column not in raw_screen.obs.columns:
            raise ScreenError(
                f"{source}: obs column '{column}' ({role}, parameter ingestion.columns.{role}) "
                f"is missing; obs has: {_first(raw_screen.obs.columns, 10)}"
            )
    if raw_screen.n_obs == 0:
        raise ScreenError(f"{source}: the screen has no cells (X has 0 rows)")
    duplicated = raw_screen.var_names[raw_screen.var_names.duplicated()].unique()
    if len(duplicated):
        # Pooling different genes under one name would merge their statistics silently.
        raise ScreenError(
            f"{source}: var names (genes) are not unique: {_first(duplicated)} appear more than "
            "once; make them unique (e.g. adata.var_names_make_unique()) or drop the duplicates"
        )
    obs = pd.DataFrame(index=raw_screen.obs_names.copy())
    if obs.index.has_duplicates:
        repeated = int(obs.index.duplicated().sum())
        obs.index = ad.utils.make_index_unique(obs.index.astype(str))
        logger.warning(
            "%s: %d cell names (obs names) repeat; made unique as anndata's "
            "obs_names_make_unique does (a '-1', '-2' suffix)",
            source,
            repeated,
        )
    for role in ("perturbation", "cell_line", "batch"):
        values = raw_screen.obs[getattr(columns, role)]
        if values.isna().any():
            raise ScreenError(
                f"{source}: obs column '{getattr(columns, role)}' ({role}) has "
                f"{int(values.isna().sum())} empty values"
            )
        obs[role] = pd.Categorical(values.astype(str).str.strip())
    _check_controls(obs, columns.control_label, source, columns.perturbation)

    screen = StagedScreen.from_anndata(
        raw_screen, obs, {"raw_screen": source, "control_label": columns.control_label}
    )
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


def _uses_obsm(screen: StagedScreen, features: FeatureParameters) -> bool:
    return bool(features.obsm_key) and features.obsm_key in screen.obsm


# --------------------------------------------------------------------------------------------
# 2. quality control


def filter_cells(screen: StagedScreen, features: FeatureParameters) -> StagedScreen:
    """Drop cells before anything is learnt from them.

    On the counts path the counts are checked (finite, non-negative integers) and cells with
    fewer than ``min_genes_per_cell`` detected genes dropped, in one pass over blocks of X; on
    either path, (cell line, perturbation) groups with fewer than ``min_cells_per_perturbation``
    cells (controls never). Only the kept rows' indices are recorded: X is not copied.
    """
    source = _source(screen)
    screen = screen.replace(block_rows=features.block_rows)
    keep = np.ones(screen.n_obs, dtype=bool)
    record: dict[str, Any] = {"min_cells_per_perturbation": features.min_cells_per_perturbation}
    if not _uses_obsm(screen, features):
        _require_counts(screen, features, source)
        detected, x_digest = _scan_counts(screen, source)
        if features.min_genes_per_cell > 0:
            keep = detected >= features.min_genes_per_cell
            if not keep.any():
                raise ScreenError(
                    f"{source}: no cell has {features.min_genes_per_cell} detected genes "
                    "(parameter ingestion.features.min_genes_per_cell)"
                )
        record.update(
            min_genes_per_cell=features.min_genes_per_cell,
            cells_removed_min_genes=int((~keep).sum()),
        )
        screen = screen.replace(provenance={**screen.provenance, "x_digest": x_digest})
    keep = _cells_in_large_groups(
        screen.obs, keep, features.min_cells_per_perturbation, _control_label(screen)
    )
    obs = screen.obs[keep].copy()
    for column in (PERTURBATION, CELL_LINE):
        obs[column] = obs[column].cat.remove_unused_categories()
    _check_controls(obs, _control_label(screen), source, PERTURBATION)
    logger.info("QC: %d of %d cells kept", len(obs), screen.n_obs)
    return screen.replace(
        obs=obs,
        rows=screen.rows[keep],
        provenance={**screen.provenance, "quality_control": record},
    )


def _require_counts(screen: StagedScreen, features: FeatureParameters, source: str) -> None:
    if screen.counts is None:
        raise ScreenError(f"{source}: X is empty and obsm has no '{features.obsm_key}'")
    if isinstance(screen.counts, ad.abc.CSCDataset):
        # Reading rows of a column-major file reads the whole matrix for every block.
        raise ScreenError(
            f"{source}: X is stored column-major (CSC); ingestion reads cells in blocks of rows: "
            "store X as CSR (adata.X = adata.X.tocsr(), then write_h5ad)"
        )


def _scan_counts(screen: StagedScreen, source: str) -> tuple[np.ndarray, str]:
    """Check every block of the counts; the number of detected genes (> 0) of each cell, and a
    digest of every count (in the same pass: the screen's fingerprint covers the values)."""
    detected = np.zeros(screen.n_obs, dtype=np.int64)
    digest = MatrixDigest()
    for where, block in screen.blocks(task="filter_cells: checking the counts"):
        digest.add(block)
        if sp.issparse(block):
            _check_counts(block.data, source)
            positive = sp.csr_matrix((block.data > 0, block.indices, block.indptr), block.shape)
            detected[where] = (positive @ np.ones(block.shape[1])).astype(np.int64)
        else:
            _check_counts(block, source)
            detected[where] = np.count_nonzero(block > 0, axis=1)
    return detected, digest.hexdigest()


def _check_counts(values: np.ndarray, source: str) -> None:
    """Counts must be finite, non-negative integers (``values``: a block's stored values)."""
    values = values.reshape(-1)
    for start in range(0, len(values), _CHECK_CHUNK):
        chunk = values[start : start + _CHECK_CHUNK]
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
    screen: StagedScreen, split: SplitParameters, split_lists: dict[str, Any] | None
) -> tuple[StagedScreen, dict[str, Any]]:
    """Assign every cell a split and write the per-line manifest (its fingerprint comes last).

    few_shot: the held-out line's perturbations go to val/test (by fractions and a seed, or by
    the lists of ``split_lists``); everything else is train. zero_shot: the whole held-out line
    is test, and val is a fraction of the other lines' (line, perturbation) pairs. unseen_gene:
    val and test are gene sets train in no line; their groups in the held-out line (in every
    line when none is held out) are val/test, elsewhere withheld (dropped: nothing reads them)
    or evaluated (``other_lines``). Controls of every line are ``control`` and stay available
    as basal cells.
    """
    source = _source(screen)
    lines = list(screen.obs[CELL_LINE].cat.categories)
    if split.heldout_cell_line and split.heldout_cell_line not in lines:
        raise ScreenError(
            f"{source}: obs 'cell_line' has no cell line '{split.heldout_cell_line}' (parameter "
            f"heldout_cell_line); lines present: {_first(lines, 10)}"
        )
    perturbations_by_line = {
        line: sorted(
            set(screen.obs.loc[screen.obs[CELL_LINE] == line, PERTURBATION])
            - {_control_label(screen)}
        )
        for line in lines
    }
    assignment, missing, split_source = _assign(perturbations_by_line, split, split_lists, source)
    _check_unseen(assignment, split)
    obs = screen.obs.copy()
    obs[SPLIT] = _split_column(obs, assignment, _control_label(screen))
    kept = (obs[SPLIT] != WITHHELD).to_numpy()
    obs = obs[kept].copy()
    obs[SPLIT] = pd.Categorical(obs[SPLIT], categories=[TRAIN, VAL, TEST, CONTROL])
    for column in (PERTURBATION, CELL_LINE):
        obs[column] = obs[column].cat.remove_unused_categories()
    record = {"mode": split.mode, "heldout_cell_line": split.heldout_cell_line or None}
    screen = screen.replace(
        obs=obs,
        rows=screen.rows[kept],
        provenance={**screen.provenance, "split": {**record, "source": split_source}},
    )
    manifest = {
        **record,
        "seed": split.seed,
        "source": split_source,
        "control_label": _control_label(screen),
        "missing_from_screen": missing,
        "cell_lines": {
            line: {
                **{kind: sorted(assignment[line][kind]) for kind in (TRAIN, VAL, TEST)},
                **(
                    {WITHHELD: sorted(assignment[line][WITHHELD])}
                    if split.mode == "unseen_gene"
                    else {}
                ),
                "n_control_cells": int(
                    ((screen.obs[CELL_LINE] == line) & (screen.obs[SPLIT] == CONTROL)).sum()
                ),
            }
            for line in lines
        },
    }
    if split.mode == "unseen_gene":
        manifest["other_lines"] = split.other_lines
    counts = screen.obs[SPLIT].value_counts()
    logger.info(
        "Split %s, held-out %s: cells train %d, val %d, test %d, control %d; %d withheld",
        split.mode,
        split.heldout_cell_line or "(every line)",
        *(counts[kind] for kind in (TRAIN, VAL, TEST, CONTROL)),
        int((~kept).sum()),
    )
    return screen, manifest


def _check_unseen(assignment: dict[str, dict[str, list[str]]], split: SplitParameters) -> None:
    """unseen_gene: no val/test gene may be train in any line (a bug if it ever is)."""
    if split.mode != "unseen_gene":
        return
    train = {name for kinds in assignment.values() for name in kinds[TRAIN]}
    held = {name for kinds in assignment.values() for name in (*kinds[VAL], *kinds[TEST])}
    if train & held:
        raise RuntimeError(f"unseen_gene split leaks {sorted(train & held)[:5]} into train")


def _assign(
    perturbations_by_line: dict[str, list[str]],
    split: SplitParameters,
    split_lists: dict[str, Any] | None,
    source: str,
) -> tuple[dict[str, dict[str, list[str]]], dict[str, list[str]], str]:
    """Per line, its train / val / test (and withheld) perturbations; the split file's absent
    genes; the split's source."""
    heldout, rng = split.heldout_cell_line, np.random.default_rng(split.seed)
    assignment = {
        line: {TRAIN: list(names), VAL: [], TEST: [], WITHHELD: []}
        for line, names in perturbations_by_line.items()
    }
    missing: dict[str, list[str]] = {}
    split_source = "fractions"
    if split.mode == "unseen_gene":
        # The genes to hold out: the held-out line's, or every line's.
        pool = (
            perturbations_by_line[heldout]
            if heldout
            else sorted({name for names in perturbations_by_line.values() for name in names})
        )
        where = f"cell line '{heldout}'" if heldout else "any cell line"
    else:
        pool, where = perturbations_by_line[heldout], f"cell line '{heldout}'"
    if split.mode in ("few_shot", "unseen_gene"):
        if split_lists is not None:
            split_source = str(split.split_file or "split file")
            val, test, missing = _lists_from_file(split_lists, pool, split_source, source, where)
        else:
            val, test = _fractions(pool, split, rng)
    if split.mode == "few_shot":
        chosen = set(val) | set(test)
        assignment[heldout] = {
            TRAIN: [p for p in pool if p not in chosen],
            VAL: sorted(val),
            TEST: sorted(test),
            WITHHELD: [],
        }
    elif split.mode == "unseen_gene":
        for line, names in perturbations_by_line.items():
            evaluated = not heldout or line == heldout or split.other_lines == "evaluate"
            assignment[line] = {
                TRAIN: [p for p in names if p not in set(val) | set(test)],
                VAL: sorted(set(names) & set(val)) if evaluated else [],
                TEST: sorted(set(names) & set(test)) if evaluated else [],
                WITHHELD: [] if evaluated else sorted(set(names) & (set(val) | set(test))),
            }
    else:
        assignment[heldout] = {TRAIN: [], VAL: [], TEST: list(pool), WITHHELD: []}
        pairs = [
            (line, p)
            for line, names in perturbations_by_line.items()
            if line != heldout
            for p in names
        ]
        for index in rng.permutation(len(pairs))[: round(split.val_fraction * len(pairs))]:
            line, perturbation = pairs[index]
            assignment[line][TRAIN].remove(perturbation)
            assignment[line][VAL].append(perturbation)
    for kind in (VAL, TEST):
        if not any(kinds[kind] for kinds in assignment.values()):
            raise ScreenError(
                f"{source}: the {kind} split is empty ({where} has {len(pool)} perturbations; "
                f"check ingestion.split {kind}_fraction or the split file)"
            )
    return assignment, missing, split_source


def _fractions(
    perturbations: list[str], split: SplitParameters, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    n_val = round(split.val_fraction * len(perturbations))
    n_test = round(split.test_fraction * len(perturbations))
    order = [perturbations[index] for index in rng.permutation(len(perturbations))]
    return order[:n_val], order[n_val : n_val + n_test]


def _lists_from_file(
    split_lists: Any, present: list[str], split_file: str, source: str, where: str
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
                "%s: %d of %d '%s' genes are not perturbed in %s of %s; skipped: %s",
                split_file,
                len(absent),
                len(names),
                kind,
                where,
                source,
                _first(absent),
            )
        if not matched:
            raise ScreenError(
                f"{split_file}: none of the {len(names)} '{kind}' genes is perturbed in {where} "
                f"of {source}"
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
    """Every cell's split (``withheld`` for the groups an unseen_gene split drops)."""
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


# --------------------------------------------------------------------------------------------
# 4. features


def select_features(screen: StagedScreen, features: FeatureParameters) -> StagedScreen:
    """The feature matrix: ``obsm[obsm_key]`` when present; otherwise scanpy's normalize_total
    + log1p, and highly variable genes chosen from the train and control cells only (a held-out
    cell never decides which genes are kept).

    The path taken and its settings are recorded in ``uns["ptrag"]["features"]``. On the counts
    path only the choice is made here (genes, normalisation): the catalog's ``screen`` dataset
    normalises the counts block by block as it writes them.
    """
    screen = screen.replace(block_rows=features.block_rows)
    if _uses_obsm(screen, features):
        featurised = _features_from_obsm(screen, features.obsm_key, _source(screen))
        record: dict[str, Any] = {"path": f"obsm:{features.obsm_key}"}
    else:
        featurised, record = _features_from_counts(screen, features)
    record.update(n_features=int(featurised.n_vars), n_cells=int(featurised.n_obs))
    featurised = featurised.replace(provenance={**featurised.provenance, "features": record})
    logger.info("Features: %s -> %d cells x %d features", record["path"], *featurised.shape)
    return featurised


def _features_from_obsm(screen: StagedScreen, obsm_key: str, source: str) -> StagedScreen:
    """The kept cells' rows of ``obsm[obsm_key]`` as float32 (an obsm matrix is held whole)."""
    matrix = screen.obsm[obsm_key]
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if len(screen.rows) < matrix.shape[0]:
        matrix = matrix[screen.rows]
    matrix = (
        sp.csr_matrix(matrix, dtype=np.float32)
        if sp.issparse(matrix)
        else np.asarray(matrix, dtype=np.float32)
    )
    values = matrix.data if sp.issparse(matrix) else matrix
    if not np.isfinite(values).all():
        raise ScreenError(f"{source}: obsm['{obsm_key}'] has NaN or infinite values")
    names = pd.Index(_obsm_feature_names(screen.var, matrix.shape[1]))
    digest = MatrixDigest()
    digest.add(matrix)
    provenance = {**screen.provenance, "x_digest": digest.hexdigest()}
    return screen.replace(features=matrix, feature_names=names, provenance=provenance)


def _obsm_feature_names(var: pd.DataFrame, n_features: int) -> list[str]:
    """Gene names of the obsm features: the ``highly_variable`` genes when their count matches."""
    flags = var.get("highly_variable")
    if flags is not None and int(np.asarray(flags, dtype=bool).sum()) == n_features:
        return list(var.index[np.asarray(flags, dtype=bool)])
    if len(var) == n_features:
        return list(var.index)
    logger.warning(
        "obsm features: %d columns but no var['highly_variable'] of that size; naming them "
        "hvg_0000...",
        n_features,
    )
    return [f"hvg_{index:04d}" for index in range(n_features)]


def _features_from_counts(
    screen: StagedScreen, features: FeatureParameters
) -> tuple[StagedScreen, dict[str, Any]]:
    if features.hvg_flavor not in STREAMED_FLAVORS:
        raise ScreenError(
            f"{_source(screen)}: highly variable genes of flavour '{features.hvg_flavor}' are "
            f"not computed in bounded memory (parameter ingestion.features.hvg_flavor: one of "
            f"{', '.join(STREAMED_FLAVORS)})"
        )
    genes = np.arange(len(screen.var))
    if features.n_top_genes < len(genes):
        learn_from = screen.obs[SPLIT].isin([TRAIN, CONTROL]).to_numpy()
        statistics = _line_statistics(screen, learn_from, features)
        chosen = highly_variable_genes(statistics, screen.var.index, features.n_top_genes)
        genes = np.flatnonzero(chosen)
    record = {
        "path": "scanpy:normalize_total+log1p+highly_variable_genes(train and control cells)",
        "normalize_target_sum": features.normalize_target_sum,
        "n_top_genes": features.n_top_genes,
        "hvg_flavor": features.hvg_flavor,
    }
    chosen_screen = screen.replace(
        genes=genes,
        target_sum=features.normalize_target_sum,
        feature_names=screen.var.index[genes].copy(),
    )
    return chosen_screen, record


def _line_statistics(
    screen: StagedScreen, learn_from: np.ndarray, features: FeatureParameters
) -> LineStatistics:
    """One pass over the ``learn_from`` cells' counts: normalised as the output will be, then
    summed per cell line and gene (scanpy's batches are the lines, its cells these)."""
    lines = screen.obs[CELL_LINE].to_numpy()[learn_from]
    categories = screen.obs[CELL_LINE].cat.categories
    line_codes = categories.get_indexer(lines)
    statistics = LineStatistics.zeros(len(categories), len(screen.var), features.hvg_flavor)
    task = "select_features: per-line gene statistics"
    for where, block in screen.blocks(screen.rows[learn_from], task):
        statistics.add(log_normalise(block, features.normalize_target_sum), line_codes[where])
    return statistics


# --------------------------------------------------------------------------------------------
# 5. fingerprint


def record_fingerprint(
    screen: StagedScreen, split_manifest: dict[str, Any]
) -> tuple[StagedScreen, dict[str, Any]]:
    """The screen's fingerprint (gene order, cells, split) in its provenance and the manifest.

    The staged screen is returned as it is: the catalog's ``screen`` dataset writes it (X block by
    block); ``StagedScreen.to_anndata()`` gives it in memory.
    """
    fingerprint = screen_fingerprint(screen)
    screen = screen.replace(provenance={**screen.provenance, "fingerprint": fingerprint})
    return screen, {**split_manifest, "screen_fingerprint": fingerprint}
