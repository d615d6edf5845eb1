"""Reporting: predictions, baselines, metrics per condition, the comparison, and cell-eval agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from ptrag_kedro.metrics import METRICS
from ptrag_kedro.pipelines.reporting.nodes import (
    BASELINES,
    compare_methods,
    evaluate_predictions,
    predict_baselines,
    predict_test_cells,
)
from ptrag_kedro.pipelines.reporting.plots import (
    gate_heatmap,
    metric_bars,
    w1_scatter,
    write_report,
)
from ptrag_kedro.pipelines.training.nodes import train_model
from ptrag_kedro.provenance import StaleArtefactError
from tests.pipelines.training.test_training import MODEL, TRAINING

REPORTING = {"seed": 0, "same_batch_controls": False, "n_pcs": 10, "ridge_alpha": 1.0}


@pytest.fixture(scope="module")
def trained(prepared_inputs, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """A PT-RAG model with two seeds and a STATE model, two steps each."""
    records = {}
    for name, retrieval, seeds in (("ptrag", "ptrag", [0, 1]), ("state", "none", [0])):
        record, _, _ = train_model(
            prepared_inputs["screen"],
            prepared_inputs["perturbation_embeddings"],
            prepared_inputs["retrieval_candidates"],
            prepared_inputs["split_manifest"],
            {**TRAINING, "max_steps": 2, "seeds": seeds},
            {**MODEL, "retrieval": retrieval},
            str(tmp_path_factory.mktemp(name)),
        )
        records[name] = record
    return records


def _predict(record: dict[str, Any], inputs: dict[str, Any]) -> ad.AnnData:
    return predict_test_cells(
        record,
        inputs["screen"],
        inputs["perturbation_embeddings"],
        inputs["retrieval_candidates"],
        inputs["split_manifest"],
        REPORTING,
    )


def _test_cells(screen: ad.AnnData) -> pd.Series:
    test = screen.obs[screen.obs["split"] == "test"]
    return test.groupby(["cell_line", "perturbation"], observed=True).size()


def test_predictions_match_the_real_test_cells(trained, prepared_inputs) -> None:
    predictions = _predict(trained["ptrag"], prepared_inputs)
    expected = _test_cells(prepared_inputs["screen"])
    for seed in (0, 1):
        block = predictions.obs[predictions.obs["seed"] == seed]
        counts = block.groupby(["cell_line", "perturbation"], observed=True).size()
        assert {(str(a), str(b)): n for (a, b), n in counts.items()} == {
            (str(a), str(b)): n for (a, b), n in expected.items()
        }
    assert list(predictions.var_names) == list(prepared_inputs["screen"].var_names)
    assert (predictions.X >= 0).all()
    gates = predictions.uns["gate_kept_fraction"]
    assert set(gates["seed"]) == {0, 1} and gates["kept_fraction"].between(0, 1).all()
    assert (gates["candidate"] != gates["perturbation"]).all()
    again = _predict(trained["ptrag"], prepared_inputs)  # deterministic gates, same controls
    np.testing.assert_array_equal(again.X, predictions.X)


def test_a_model_of_another_gene_order_is_refused(trained, prepared_inputs) -> None:
    record = {**trained["state"], "genes": list(reversed(trained["state"]["genes"]))}
    with pytest.raises(StaleArtefactError, match="another gene order"):
        _predict(record, prepared_inputs)


def test_baselines(prepared_inputs) -> None:
    screen = prepared_inputs["screen"]
    baselines = predict_baselines(
        screen,
        prepared_inputs["perturbation_embeddings"],
        prepared_inputs["split_manifest"],
        REPORTING,
        8,
    )
    assert list(baselines.obs["method"].cat.categories) == list(BASELINES)
    expression = screen.X.toarray() if hasattr(screen.X, "toarray") else screen.X
    obs = screen.obs
    condition = baselines.obs.iloc[0]
    line, name = condition["cell_line"], condition["perturbation"]
    rows = {
        method: (baselines.obs["method"] == method).to_numpy()
        & (baselines.obs["perturbation"] == name).to_numpy()
        for method in BASELINES
    }
    control = baselines.X[rows["control_mean"]]
    # control_mean: cells of the line's controls, unchanged
    line_controls = expression[
        ((obs["cell_line"] == line) & (obs["split"] == "control")).to_numpy()
    ]
    assert all((line_controls == cell).all(axis=1).any() for cell in control[:5])
    # perturbation_mean: the controls plus the mean shift of the other lines where it is train
    shifts = []
    for other, entry in prepared_inputs["split_manifest"]["cell_lines"].items():
        if other != line and name in entry["train"]:
            in_other = (obs["cell_line"] == other).to_numpy()
            shift = expression[in_other & (obs["perturbation"] == name).to_numpy()].mean(
                0
            ) - expression[in_other & (obs["split"] == "control").to_numpy()].mean(0)
            shifts.append(shift)
    expected = np.maximum(control + np.mean(shifts, axis=0), 0) if shifts else control
    np.testing.assert_allclose(
        baselines.X[rows["perturbation_mean"]], expected, rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(baselines.X[rows["linear"]], control)


def test_evaluating_the_real_cells_gives_zero_distances(prepared_inputs) -> None:
    screen = prepared_inputs["screen"]
    test = screen[(screen.obs["split"] == "test").to_numpy()]
    perfect = ad.AnnData(
        X=test.X.toarray() if hasattr(test.X, "toarray") else test.X,
        obs=test.obs[["perturbation", "cell_line"]].assign(seed=0, kind="predicted"),
    )
    metrics = evaluate_predictions(perfect, screen, REPORTING)
    conditions = metrics[metrics["level"] == "condition"].pivot_table(
        index=["cell_line", "perturbation"], columns="metric", values="value"
    )
    assert set(conditions.columns) == set(METRICS)
    for name in ("w1", "w2", "energy", "mmd", "mse", "mae"):
        np.testing.assert_allclose(conditions[name], 0.0, atol=1e-9)
    np.testing.assert_allclose(conditions["pearson_delta"], 1.0, atol=1e-9)
    np.testing.assert_allclose(conditions["de_overlap@100"], 1.0)
    assert set(metrics["level"]) == {"condition", "mean", "median"}


def test_comparison_has_every_method_and_no_nan(trained, prepared_inputs, tmp_path: Path) -> None:
    screen = prepared_inputs["screen"]
    ptrag = evaluate_predictions(_predict(trained["ptrag"], prepared_inputs), screen, REPORTING)
    state = evaluate_predictions(_predict(trained["state"], prepared_inputs), screen, REPORTING)
    baselines_predictions = predict_baselines(
        screen,
        prepared_inputs["perturbation_embeddings"],
        prepared_inputs["split_manifest"],
        REPORTING,
        8,
    )
    baselines = evaluate_predictions(baselines_predictions, screen, REPORTING)
    comparison, table = compare_methods(state, state, ptrag, baselines)
    assert set(comparison["method"]) == {"state", "vanilla_rag", "ptrag", *BASELINES}
    assert len(comparison) == 6 * len(METRICS)
    assert not comparison[["mean", "sd", "median"]].isna().any().any()
    ptrag_rows = comparison[comparison["method"] == "ptrag"]
    assert (ptrag_rows["n_seeds"] == 2).all() and (ptrag_rows["sd"] > 0).any()
    assert "w1 ↓" in table and "pearson_delta ↑" in table and "±" in table
    bars, interactive = metric_bars(comparison)
    scatter = w1_scatter(state, ptrag)
    heatmap, kept = gate_heatmap(_predict(trained["ptrag"], prepared_inputs))
    for index, figure in enumerate((bars, scatter, heatmap)):
        figure.savefig(tmp_path / f"{index}.png")
        assert (tmp_path / f"{index}.png").stat().st_size > 5_000
    assert len(interactive.data) == len(METRICS)
    diagnostics = {
        "k": 5,
        "n_train": 20,
        "candidate_similarity": {"q50": 0.5},
        "train_pair_similarity": {"q50": 0.4},
        "module_precision": None,
    }
    report = write_report(table, diagnostics, kept, baselines_predictions)
    assert "## Retrieval" in report and f"{kept:.4f}" in report


def test_pearson_delta_and_mse_agree_with_cell_eval(trained, prepared_inputs) -> None:
    """cell-eval (Arc's metrics) on the same predictions: same numbers when its controls are ours."""
    cell_eval_metrics = pytest.importorskip(
        "cell_eval.metrics", reason="optional extra 'eval' not installed"
    )
    from ptrag_kedro.metrics.cell_eval_bridge import cell_eval_pair

    screen = prepared_inputs["screen"]
    predictions = _predict(trained["state"], prepared_inputs)
    ours = evaluate_predictions(predictions, screen, REPORTING)
    ours = ours[ours["level"] == "condition"].pivot_table(
        index="perturbation", columns="metric", values="value"
    )
    pair = cell_eval_pair(
        predictions, screen, prepared_inputs["split_manifest"]["heldout_cell_line"], "non-targeting"
    )
    theirs_pearson = cell_eval_metrics.pearson_delta(pair)
    theirs_mse = cell_eval_metrics.mse(pair)
    assert set(theirs_pearson) == set(ours.index)
    for perturbation in ours.index:
        assert ours.loc[perturbation, "pearson_delta"] == pytest.approx(
            theirs_pearson[perturbation], abs=1e-5
        )
        assert ours.loc[perturbation, "mse"] == pytest.approx(
            theirs_mse[perturbation], rel=1e-4, abs=1e-7
        )
