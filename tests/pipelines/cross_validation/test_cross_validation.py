"""Pooling the folds: every fold's conditions at once, and each fold on its own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ptrag_kedro.errors import ParameterError
from ptrag_kedro.parameters import CrossValidationParameters, ReportingParameters
from ptrag_kedro.pipelines.cross_validation import create_pipeline
from ptrag_kedro.pipelines.cross_validation.nodes import POOLED, pool_folds
from ptrag_kedro.pipelines.reporting.evaluation import with_summary

REPORTING = ReportingParameters(bootstrap_resamples=500, baselines=("control_mean", "context"))
FOLDS = CrossValidationParameters(
    folds=[
        {"heldout_cell_line": "k562", "split_seed": 0},
        {"heldout_cell_line": "hepg2", "split_seed": 1},
    ]
)
METRICS = ("w1", "pearson_delta")


def _metrics(method_offsets: dict[str, float], line: str, n: int, seeds: int, seed: int):
    """A metrics table as reporting writes it: n conditions of one line, per method and seed."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "method": method,
            "seed": s,
            "cell_line": line,
            "perturbation": f"G{index}",
            "metric": metric,
            "value": 0.5 + offset + 0.01 * index + rng.normal(0, 0.01),
        }
        for method, offset in method_offsets.items()
        for s in range(seeds if method in ("state", "ptrag") else 1)
        for index in range(n)
        for metric in METRICS
    ]
    chance = pd.DataFrame([{"metric": "pearson_delta", "value": 0.0}])
    return with_summary(pd.DataFrame(rows), chance)


def _tables() -> dict[str, pd.DataFrame]:
    tables = {}
    for position, (fold, line) in enumerate(zip(FOLDS.names, ("k562", "hepg2"), strict=True)):
        sizes = (6, 9)[position]
        tables[f"{fold}__state"] = _metrics({"state": 0.0}, line, sizes, 2, position)
        tables[f"{fold}__ptrag"] = _metrics({"ptrag": -0.1}, line, sizes, 2, 10 + position)
        tables[f"{fold}__baselines"] = _metrics(
            {"control_mean": 0.3, "context": 0.2}, line, sizes, 1, 20 + position
        )
    return tables


def test_folds_are_pooled_over_every_condition_and_kept_apart() -> None:
    table, paired, report = pool_folds(REPORTING, FOLDS, **_tables())
    pooled = table[table["fold"] == POOLED]
    # the same perturbation names in two folds stay two conditions: 6 + 9
    assert (pooled["n_conditions"] == 15).all()
    per_fold = table[table["fold"] != POOLED]
    assert set(per_fold["fold"]) == set(FOLDS.names)
    assert set(per_fold.loc[per_fold["fold"] == "k562_s0", "n_conditions"]) == {6}
    # the pooled mean is the mean over all 15 conditions (per seed, then over seeds)
    state = pooled[(pooled["method"] == "state") & (pooled["metric"] == "w1")]["mean"].iloc[0]
    tables = _tables()
    conditions = pd.concat(
        [
            tables[f"{fold}__state"].query("level == 'condition' and metric == 'w1'")
            for fold in FOLDS.names
        ]
    )
    assert state == pytest.approx(conditions.groupby("seed")["value"].mean().mean())
    # ptrag is 0.1 lower on w1 in every condition: better against STATE, on 15 conditions
    row = paired[
        (paired["method"] == "ptrag") & (paired["role"] == "reference") & (paired["metric"] == "w1")
    ]
    assert row["n_conditions"].iloc[0] == 15 and row["significantly_better"].iloc[0]
    assert row["mean_difference"].iloc[0] == pytest.approx(-0.1, abs=0.01)
    assert "# ptrag-kedro: cross-validation" in report and "hepg2 (split seed 1)" in report
    assert "| ptrag | k562_s0 |" in report


def test_the_pipeline_reads_every_fold_and_method() -> None:
    pipeline = create_pipeline(FOLDS.names, ["state", "ptrag"])
    inputs = pipeline.inputs()
    assert "folds.k562_s0.ptrag_metrics" in inputs and "folds.hepg2_s1.baselines_metrics" in inputs
    assert len([name for name in inputs if name.startswith("folds.")]) == 2 * 3
    assert create_pipeline([], ["state"]).nodes == []


def test_fold_parameters_are_checked() -> None:
    assert FOLDS.names == ["k562_s0", "hepg2_s1"]
    with pytest.raises(ParameterError, match="cross_validation.folds must be a non-empty list"):
        CrossValidationParameters(folds=[])
    with pytest.raises(ParameterError, match="must be distinct"):
        CrossValidationParameters(folds=[{"heldout_cell_line": "a"}, {"heldout_cell_line": "a"}])
    with pytest.raises(ParameterError, match="split_seed must be an integer, got 'x'"):
        CrossValidationParameters(folds=[{"heldout_cell_line": "a", "split_seed": "x"}])
    with pytest.raises(ParameterError, match="heldout_cell_line must be a cell line name"):
        CrossValidationParameters(folds=[{"heldout_cell_line": "a/b"}])
