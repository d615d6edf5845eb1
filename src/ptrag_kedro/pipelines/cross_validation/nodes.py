"""Nodes of the ``cross_validation`` pipeline: the folds' metrics, pooled and per fold.

Each fold (a held-out line and a split seed) is its own ``kedro run`` in its own data folder
(``kedro cross-validate``); this pipeline reads every fold's per-condition metrics and compares
the methods over all the folds' test conditions at once (a condition is a fold's (line,
perturbation): the hierarchical bootstrap resamples them, then seeds), and per fold.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ptrag_kedro.metrics import metric_registry
from ptrag_kedro.parameters import CrossValidationParameters, ReportingParameters
from ptrag_kedro.pipelines.reporting.comparison import compare_methods, summarise
from ptrag_kedro.pipelines.reporting.evaluation import with_summary
from ptrag_kedro.pipelines.reporting.report import comparison_table, paired_table
from ptrag_kedro.schema import CELL_LINE

logger = logging.getLogger(__name__)

#: The methods' table of a fold under this pipeline's inputs: ``<fold>__<method>``.
SEPARATOR = "__"
#: The baselines' metrics table of a fold (``baselines_metrics``) is the method ``baselines``.
BASELINES = "baselines"
#: Where the pooled rows of ``cross_validation_comparison`` say they come from.
POOLED = "pooled"
#: Metrics the per-fold table of the report shows (every metric is in the csv).
PER_FOLD_SHOWN = ("w1", "energy", "pearson_delta_context", "centroid_accuracy", "discrimination_l1")


def _fold_tables(
    tables: dict[str, pd.DataFrame], names: list[str]
) -> dict[str, dict[str, pd.DataFrame]]:
    """``{fold: {method: metrics}}`` from the node's ``<fold>__<method>`` inputs."""
    folds: dict[str, dict[str, pd.DataFrame]] = {name: {} for name in names}
    for key, table in tables.items():
        fold = next(name for name in names if key.startswith(name + SEPARATOR))
        folds[fold][key.removeprefix(fold + SEPARATOR)] = table
    return folds


def _pooled(per_fold: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One method's metrics over every fold: a condition is (fold, line, perturbation), kept
    apart by prefixing the line with the fold; summary rows recomputed over all conditions."""
    conditions, chance = [], []
    for fold, table in per_fold.items():
        rows = table[table["level"] == "condition"].copy()
        rows[CELL_LINE] = fold + "/" + rows[CELL_LINE].astype(str)
        conditions.append(rows.drop(columns="level"))
        chance.append(table.loc[table["level"] == "chance", ["metric", "value"]])
    return with_summary(pd.concat(conditions, ignore_index=True), pd.concat(chance))


def pool_folds(
    reporting: ReportingParameters,
    cross_validation: CrossValidationParameters,
    **tables: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """``cross_validation_comparison`` (pooled rows, then one block per fold, column ``fold``),
    ``cross_validation_paired_tests`` (pooled over every fold's conditions and seeds) and the
    report."""
    folds = _fold_tables(tables, cross_validation.names)
    methods = list(folds[cross_validation.names[0]])
    variants = [name for name in methods if name != BASELINES]
    baselines = BASELINES
    pooled = {
        method: _pooled({fold: folds[fold][method] for fold in cross_validation.names})
        for method in methods
    }
    comparison, paired = compare_methods(
        reporting, pooled[baselines], **{name: pooled[name] for name in variants}
    )
    blocks = [comparison.assign(fold=POOLED)]
    for fold in cross_validation.names:
        metrics = pd.concat(
            [folds[fold][name].assign(method=name) for name in variants] + [folds[fold][baselines]],
            ignore_index=True,
        )
        blocks.append(summarise(metrics, variants, reporting).assign(fold=fold))
    table = pd.concat(blocks, ignore_index=True)
    table = table[["fold", *[column for column in table.columns if column != "fold"]]]
    logger.info(
        "Cross-validation: %d folds, %d test conditions pooled",
        len(cross_validation.names),
        int(comparison["n_conditions"].max()),
    )
    return table, paired, cross_validation_report(table, paired, cross_validation, reporting)


def cross_validation_report(
    table: pd.DataFrame,
    paired: pd.DataFrame,
    cross_validation: CrossValidationParameters,
    reporting: ReportingParameters,
) -> str:
    """Markdown: the pooled table and paired tests, then the headline metrics per fold."""
    registry = metric_registry(reporting.n_pcs, reporting.de_fdr)
    pooled = table[table["fold"] == POOLED].drop(columns="fold")
    folds = ", ".join(
        f"{fold.heldout_cell_line} (split seed {fold.split_seed})"
        for fold in cross_validation.folds
    )
    lines = [
        "# ptrag-kedro: cross-validation",
        "",
        f"{len(cross_validation.folds)} folds, each a held-out line and a split seed: {folds}. "
        f"Every fold's test conditions pooled ({int(pooled['n_conditions'].max())} in all).",
        "",
        *comparison_table(pooled, registry),
        "",
        "## Paired tests (pooled over every fold)",
        "",
        *paired_table(paired, registry, reporting.significance),
        "",
        "## Per fold",
        "",
    ]
    shown = [name for name in PER_FOLD_SHOWN if name in registry]
    lines += ["| method | fold | " + " | ".join(registry[name].label for name in shown) + " |"]
    lines += ["|" + "---|" * (len(shown) + 2)]
    per_fold = table[table["fold"] != POOLED]
    for method in dict.fromkeys(pooled["method"]):
        for fold in cross_validation.names:
            rows = per_fold[(per_fold["method"] == method) & (per_fold["fold"] == fold)]
            values = rows.set_index("metric")["mean"]
            cells = [f"{values[name]:.4f}" if name in values else "" for name in shown]
            lines.append(f"| {method} | {fold} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fold_inputs(folds: list[str], methods: list[str]) -> dict[str, Any]:
    """The node's inputs: ``<fold>__<method>`` -> ``folds.<fold>.<method>_metrics``."""
    return {
        f"{fold}{SEPARATOR}{method}": f"folds.{fold}.{method}_metrics"
        for fold in folds
        for method in methods
    }
