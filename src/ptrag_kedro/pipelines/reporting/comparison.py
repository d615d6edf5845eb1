"""The side-by-side comparison of every variant and baseline, and the paired tests.

``comparison``: methods x metrics, the mean over test conditions per seed, then mean and sd over
seeds (and the median over conditions, averaged over seeds), with each metric's direction and
chance level. ``paired_tests``: every variant against the reference variant and against the
best baseline of each metric, paired over test conditions and seeds: the mean difference with a
hierarchical bootstrap 95 % interval (conditions, then seeds within conditions), its two-sided
p-value Holm-corrected across the whole table, an equivalence test (TOST) against a margin, also
Holm-corrected, the fraction of conditions where the variant is better, in how many seeds its
mean is better, and the Wilcoxon signed-rank p-value of the seed-averaged values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ptrag_kedro.metrics import metric_registry, paired_test
from ptrag_kedro.metrics.paired import hierarchical_bootstrap, holm
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.schema import CELL_LINE, PERTURBATION

COMPARISON_COLUMNS = [
    "method",
    "kind",
    "metric",
    "higher_is_better",
    "mean",
    "sd",
    "median",
    "n_seeds",
    "n_conditions",
    "chance",
]


PAIRED_COLUMNS = [
    "method",
    "comparator",
    "role",
    "metric",
    "higher_is_better",
    "n_conditions",
    "n_seeds",
    "mean_difference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "better_fraction",
    "seeds_better",
    "significantly_better",
    "significantly_worse",
    "margin",
    "tost_p",
    "tost_p_holm",
    "equivalent",
    "wilcoxon_p",
]


def collect_metrics(baselines: pd.DataFrame, variants: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One long table of every method's metrics (variants named by their keys)."""
    tables = [metrics.assign(method=name) for name, metrics in variants.items()]
    return pd.concat([*tables, baselines], ignore_index=True)


def _sd(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarise(
    metrics: pd.DataFrame, variants: list[str], reporting: ReportingParameters
) -> pd.DataFrame:
    """``comparison``: one row per (method, metric), variants first, then baselines."""
    registry = metric_registry(reporting.n_pcs, reporting.de_fdr)
    level = metrics["level"]
    per_seed = metrics[level == "mean"].groupby(["method", "metric"])["value"]
    comparison = per_seed.agg(mean="mean", sd=_sd, n_seeds="size").join(
        metrics[level == "median"].groupby(["method", "metric"])["value"].mean().rename("median")
    )
    comparison = comparison.reset_index()
    conditions = metrics[level == "condition"].drop_duplicates(["method", CELL_LINE, PERTURBATION])
    comparison["n_conditions"] = comparison["method"].map(conditions.groupby("method").size())
    chance = metrics[level == "chance"].groupby("metric")["value"].first()
    comparison["chance"] = comparison["metric"].map(chance)
    comparison["higher_is_better"] = comparison["metric"].map(
        {name: spec.higher_is_better for name, spec in registry.items()}
    )
    comparison["kind"] = np.where(comparison["method"].isin(variants), "model", "baseline")
    order = [*variants, *reporting.baselines]
    comparison["method"] = pd.Categorical(comparison["method"], categories=order)
    comparison["metric"] = pd.Categorical(comparison["metric"], categories=list(registry))
    comparison = comparison.sort_values(["method", "metric"]).reset_index(drop=True)
    comparison["method"] = comparison["method"].astype(str)
    comparison["metric"] = comparison["metric"].astype(str)
    return comparison[COMPARISON_COLUMNS]


def _per_condition_and_seed(metrics: pd.DataFrame, method: str, metric: str) -> pd.DataFrame:
    """(line, perturbation) x seed values of one method and metric."""
    rows = metrics[
        (metrics["level"] == "condition")
        & (metrics["method"] == method)
        & (metrics["metric"] == metric)
    ]
    return rows.pivot_table(
        index=[CELL_LINE, PERTURBATION], columns="seed", values="value", aggfunc="mean"
    )


def _per_seed(metrics: pd.DataFrame, method: str, metric: str) -> pd.Series:
    rows = metrics[
        (metrics["level"] == "mean") & (metrics["method"] == method) & (metrics["metric"] == metric)
    ]
    return rows.set_index("seed")["value"]


def _seeds_better(
    metrics: pd.DataFrame, method: str, comparator: str, metric: str, higher: bool
) -> str:
    """In how many of the method's seeds its mean beats the comparator's (same seed if any)."""
    ours, theirs = _per_seed(metrics, method, metric), _per_seed(metrics, comparator, metric)
    better = 0
    for seed, value in ours.items():
        other = theirs.get(seed, theirs.mean())
        better += int(value > other if higher else value < other)
    return f"{better}/{len(ours)}"


def equivalence_margin(
    higher_is_better: bool, comparator_mean: float, reporting: ReportingParameters
) -> float:
    """The margin within which two methods count as equivalent: an absolute one for scores
    (correlations, accuracies: higher is better), a fraction of the comparator's mean for
    distances and errors (lower is better), both set before any result is seen."""
    if higher_is_better:
        return reporting.absolute_margin
    return reporting.relative_margin * abs(comparator_mean)


def _comparison_row(
    metrics: pd.DataFrame,
    variant: str,
    comparator: str,
    role: str,
    metric: str,
    higher: bool,
    reporting: ReportingParameters,
) -> dict[str, Any]:
    ours = _per_condition_and_seed(metrics, variant, metric)
    theirs = _per_condition_and_seed(metrics, comparator, metric)
    ours, theirs = ours.align(theirs, join="inner", axis=0)
    margin = equivalence_margin(higher, float(np.nanmean(theirs.to_numpy())), reporting)
    boot = hierarchical_bootstrap(
        ours.to_numpy(),
        theirs.to_numpy(),
        margin,
        resamples=reporting.bootstrap_resamples,
        seed=reporting.seed,
    )
    wilcoxon = paired_test(ours.mean(axis=1), theirs.mean(axis=1), higher)
    return {
        "method": variant,
        "comparator": comparator,
        "role": role,
        "metric": metric,
        "higher_is_better": higher,
        "n_conditions": boot.n_conditions,
        "n_seeds": f"{ours.shape[1]}/{theirs.shape[1]}",
        "mean_difference": boot.mean_difference,
        "ci_low": boot.ci_low,
        "ci_high": boot.ci_high,
        "p_value": boot.p_value,
        "better_fraction": wilcoxon["better_fraction"],
        "seeds_better": _seeds_better(metrics, variant, comparator, metric, higher),
        "margin": margin,
        "tost_p": boot.tost_p,
        "wilcoxon_p": wilcoxon["p_value"],
    }


def paired_tests(
    metrics: pd.DataFrame,
    comparison: pd.DataFrame,
    variants: list[str],
    reporting: ReportingParameters,
) -> pd.DataFrame:
    """Each variant against the reference variant and the best baseline, per metric; p-values
    Holm-corrected over every row of the table."""
    rows: list[dict[str, Any]] = []
    for metric, table in comparison.groupby("metric", sort=False):
        higher = bool(table["higher_is_better"].iloc[0])
        baselines = table[table["kind"] == "baseline"].dropna(subset=["mean"])
        best = []
        if len(baselines):
            row = baselines["mean"].idxmax() if higher else baselines["mean"].idxmin()
            best = [(str(baselines.loc[row, "method"]), "best baseline")]
        reference_variant = reporting.reference(variants)
        for variant in variants:
            reference = [(reference_variant, "reference")]
            comparators = reference * (variant != reference_variant) + best
            for comparator, role in comparators:
                rows.append(
                    _comparison_row(metrics, variant, comparator, role, metric, higher, reporting)
                )
    tests = pd.DataFrame(rows)
    if tests.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    tests["p_holm"] = holm(tests["p_value"].to_numpy())
    tests["tost_p_holm"] = holm(tests["tost_p"].to_numpy())
    in_favour = np.where(
        tests["higher_is_better"], tests["mean_difference"] > 0, tests["mean_difference"] < 0
    )
    significant = tests["p_holm"] < reporting.significance
    tests["significantly_better"] = significant & in_favour
    tests["significantly_worse"] = significant & ~in_favour
    tests["equivalent"] = tests["tost_p_holm"] < reporting.significance
    return tests[PAIRED_COLUMNS]


def compare_methods(
    reporting: ReportingParameters,
    baselines: pd.DataFrame,
    run_metadata: dict[str, Any] | None = None,
    **variants: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``comparison`` and ``paired_tests`` of the variants (keyword = name) and baselines;
    ``comparison`` carries the run's metadata (``report.describe_run``) in its last columns
    when it is given, so the table alone says which run made it."""
    reporting.reference(list(variants))  # a reference of another run stops before any work
    metrics = collect_metrics(baselines, variants)
    comparison = summarise(metrics, list(variants), reporting)
    tests = paired_tests(metrics, comparison, list(variants), reporting)
    if run_metadata is not None:
        comparison = comparison.assign(**run_metadata)
    return comparison, tests
