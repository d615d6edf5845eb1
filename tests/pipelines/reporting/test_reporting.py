"""Reporting: predictions, baselines, metrics, the comparison, paired tests and cell-eval."""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.linear_model import Ridge

from ptrag_kedro.metrics import metric_registry
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.pipelines.reporting.baselines import BASELINES, predict_baselines
from ptrag_kedro.pipelines.reporting.comparison import compare_methods
from ptrag_kedro.pipelines.reporting.evaluation import evaluate_predictions
from ptrag_kedro.pipelines.reporting.inference import predict_test_cells
from ptrag_kedro.pipelines.reporting.plots import (
    gate_heatmap,
    gate_summary,
    loss_curves,
    metric_bars,
    reference_scatter,
)
from ptrag_kedro.pipelines.reporting.report import write_report
from ptrag_kedro.provenance import StaleArtefactError
from ptrag_kedro.responses import dense
from tests.conftest import train_tiny

REPORTING = ReportingParameters(n_pcs=10)
REGISTRY = metric_registry(10, 100)


@pytest.fixture(scope="module")
def trained(prepared_inputs, tmp_path_factory) -> dict[str, tuple[dict[str, Any], pd.DataFrame]]:
    """Every block, two steps each; PT-RAG with two seeds."""
    records = {}
    for variant in ("state", "vanilla_rag", "ptrag", "response_rag"):
        seeds = [0, 1] if variant == "ptrag" else [0]
        record, history, _ = train_tiny(
            prepared_inputs, tmp_path_factory.mktemp(variant), variant, max_steps=2, seeds=seeds
        )
        records[variant] = (record, history)
    return records


@pytest.fixture(scope="module")
def baselines(prepared_inputs) -> tuple[ad.AnnData, dict[str, Any]]:
    return predict_baselines(
        prepared_inputs["screen"],
        prepared_inputs["perturbation_embeddings"],
        prepared_inputs["split_manifest"],
        REPORTING,
    )


def _predict(record: dict[str, Any], inputs: dict[str, Any], **overrides) -> tuple:
    return predict_test_cells(
        record,
        inputs["screen"],
        inputs["perturbation_embeddings"],
        inputs["retrieval_candidates"],
        inputs["perturbation_responses"],
        inputs["split_manifest"],
        ReportingParameters(**{"n_pcs": 10, **overrides}),
    )


def _condition_counts(obs: pd.DataFrame) -> dict[tuple[str, str], int]:
    counts = obs.groupby(["cell_line", "perturbation"], observed=True).size()
    return {(str(line), str(name)): int(n) for (line, name), n in counts.items()}


def test_predictions_match_the_real_test_cells(trained, prepared_inputs) -> None:
    predictions, gates = _predict(trained["ptrag"][0], prepared_inputs)
    screen = prepared_inputs["screen"]
    expected = _condition_counts(screen.obs[screen.obs["split"] == "test"])
    for seed in (0, 1):
        assert _condition_counts(predictions.obs[predictions.obs["seed"] == seed]) == expected
    assert list(predictions.var_names) == list(screen.var_names)
    assert (predictions.X >= 0).all()
    assert set(gates["seed"]) == {0, 1} and gates["gate"].between(0, 1).all()
    assert (gates["candidate"] != gates["perturbation"]).all()
    # sampled gates from seeded generators: the same predictions every time
    again, _ = _predict(trained["ptrag"][0], prepared_inputs)
    np.testing.assert_array_equal(again.X, predictions.X)
    other, _ = _predict(trained["ptrag"][0], prepared_inputs, seed=3)
    assert not np.array_equal(other.X, predictions.X)


def test_every_method_predicts_from_the_same_controls(trained, prepared_inputs, baselines) -> None:
    """The control paired with each predicted cell is the same for every model and baseline."""
    screen = prepared_inputs["screen"]
    draws = []
    for variant, (record, _) in trained.items():
        predictions, gates = _predict(record, prepared_inputs)
        assert gates.empty == (variant in ("state", "vanilla_rag"))
        draws.append(predictions.obs[predictions.obs["seed"] == 0])
    baseline_predictions, _ = baselines
    for method in baseline_predictions.obs["method"].cat.categories:
        draws.append(baseline_predictions.obs[baseline_predictions.obs["method"] == method])
    reference = draws[0].reset_index(drop=True)
    for draw in draws[1:]:
        pd.testing.assert_series_equal(
            draw["control_cell"].astype(str).reset_index(drop=True),
            reference["control_cell"].astype(str),
        )
    controls = screen.obs.loc[reference["control_cell"].astype(str)]
    assert (controls["split"] == "control").all()
    assert (controls["cell_line"].to_numpy() == reference["cell_line"].to_numpy()).all()
    # control_mean predicts exactly those control cells
    no_change = baseline_predictions[
        (baseline_predictions.obs["method"] == "control_mean").to_numpy()
    ]
    np.testing.assert_array_equal(
        no_change.X, dense(screen[reference["control_cell"].astype(str).to_numpy()].X)
    )


def test_a_model_of_another_gene_order_is_refused(trained, prepared_inputs) -> None:
    record = {**trained["state"][0], "genes": list(reversed(trained["state"][0]["genes"]))}
    with pytest.raises(StaleArtefactError, match="another gene order"):
        _predict(record, prepared_inputs)


def _shift(screen, line: str, names: set[str], split: str) -> np.ndarray:
    obs, expression = screen.obs, dense(screen.X)
    in_line = (obs["cell_line"] == line).to_numpy()
    control = expression[in_line & (obs["split"] == "control").to_numpy()].mean(0)
    rows = in_line & obs["perturbation"].isin(names).to_numpy() & (obs["split"] == split).to_numpy()
    return expression[rows].mean(0) - control


def test_baselines_against_independent_computations(prepared_inputs, baselines) -> None:
    screen, manifest = prepared_inputs["screen"], prepared_inputs["split_manifest"]
    embeddings = prepared_inputs["perturbation_embeddings"]
    predictions, summary = baselines
    assert list(predictions.obs["method"].cat.categories) == list(REPORTING.baselines)
    assert set(REPORTING.baselines) <= set(BASELINES)
    obs = predictions.obs
    condition = obs.iloc[0]
    line, name = condition["cell_line"], condition["perturbation"]
    rows = {
        method: ((obs["method"] == method) & (obs["perturbation"] == name)).to_numpy()
        for method in REPORTING.baselines
    }
    controls = predictions.X[rows["control_mean"]]
    # perturbation_mean: the controls plus the mean shift of the lines where it is train
    shifts = [
        _shift(screen, other, {name}, "train")
        for other, entry in manifest["cell_lines"].items()
        if other != line and name in entry["train"]
    ]
    expected = np.maximum(controls + np.mean(shifts, axis=0), 0) if shifts else controls
    np.testing.assert_allclose(predictions.X[rows["perturbation_mean"]], expected, atol=1e-5)
    # context: real cells of the line's train perturbations
    train_cells = dense(
        screen[((screen.obs["cell_line"] == line) & (screen.obs["split"] == "train")).to_numpy()].X
    )
    for cell in predictions.X[rows["context"]]:
        assert (np.abs(train_cells - cell).sum(1) < 1e-5).any()
    # linear / line_linear: ridge with the alpha of lowest val error, refitted independently
    lines = sorted(manifest["cell_lines"])
    groups = {
        split: [(where, g) for where, e in manifest["cell_lines"].items() for g in e[split]]
        for split in ("train", "val")
    }

    def design(pairs, line_aware):
        vectors = embeddings.loc[[g for _, g in pairs]].to_numpy(float)
        one_hot = np.array([[float(where == other) for other in lines] for where, _ in pairs])
        return np.hstack([vectors, one_hot]) if line_aware else vectors

    for method, line_aware in (("linear", False), ("line_linear", True)):
        targets = {
            s: np.stack([_shift(screen, where, {g}, s) for where, g in groups[s]]) for s in groups
        }
        errors = {
            alpha: np.mean(
                (
                    Ridge(alpha=alpha)
                    .fit(design(groups["train"], line_aware), targets["train"])
                    .predict(design(groups["val"], line_aware))
                    - targets["val"]
                )
                ** 2
            )
            for alpha in REPORTING.ridge_alphas
        }
        alpha = min(errors, key=errors.get)
        assert summary["ridge"][method]["alpha"] == alpha
        fit = Ridge(alpha=alpha).fit(design(groups["train"], line_aware), targets["train"])
        shift = fit.predict(design([(line, name)], line_aware))[0]
        np.testing.assert_allclose(
            predictions.X[rows[method]], np.maximum(controls + shift, 0), atol=1e-4
        )


def test_evaluating_the_real_cells_gives_perfect_scores(prepared_inputs) -> None:
    screen = prepared_inputs["screen"]
    test = screen[(screen.obs["split"] == "test").to_numpy()]
    perfect = ad.AnnData(
        X=dense(test.X),
        obs=test.obs[["perturbation", "cell_line"]].assign(seed=0, kind="predicted"),
    )
    metrics = evaluate_predictions(perfect, screen, REPORTING)
    conditions = metrics[metrics["level"] == "condition"].pivot_table(
        index=["cell_line", "perturbation"], columns="metric", values="value"
    )
    assert set(conditions.columns) == set(REGISTRY)
    for name in ("w1", "w2", "energy", "mmd", "mse", "mae"):
        np.testing.assert_allclose(conditions[name], 0.0, atol=1e-9)
    for name in ("pearson_delta", "pearson_delta_context", "de_overlap@100"):
        np.testing.assert_allclose(conditions[name], 1.0, atol=1e-9)
    assert set(metrics["level"]) == {"condition", "mean", "median", "chance"}
    chance = metrics[metrics["level"] == "chance"].set_index("metric")["value"]
    assert chance.to_dict() == {"de_overlap@100": min(1.0, 100 / screen.n_vars)}


def test_pearson_delta_context_uses_the_lines_average_perturbed_cell(prepared_inputs) -> None:
    screen = prepared_inputs["screen"]
    obs, expression = screen.obs, dense(screen.X)
    test = screen[(obs["split"] == "test").to_numpy()]
    noisy = dense(test.X) + np.random.default_rng(0).normal(0, 0.3, test.shape).clip(0)
    predictions = ad.AnnData(
        X=noisy, obs=test.obs[["perturbation", "cell_line"]].assign(seed=0, kind="predicted")
    )
    metrics = evaluate_predictions(predictions, screen, REPORTING)
    rows = metrics[
        (metrics["level"] == "condition") & (metrics["metric"] == "pearson_delta_context")
    ]
    line = "hepg2"
    perturbed = expression[((obs["cell_line"] == line) & (obs["split"] != "control")).to_numpy()]
    reference = perturbed.mean(0)
    for _, row in rows.head(3).iterrows():
        in_condition = (test.obs["perturbation"] == row["perturbation"]).to_numpy()
        real = dense(test.X)[in_condition].mean(0) - reference
        predicted = noisy[in_condition].mean(0) - reference
        assert row["value"] == pytest.approx(np.corrcoef(real, predicted)[0, 1], abs=1e-6)


def _exact_signed_rank_p(differences: np.ndarray) -> float:
    """Two-sided exact Wilcoxon p-value by enumerating every sign assignment."""
    ranks = rankdata(np.abs(differences))
    observed = ranks[differences > 0].sum()
    total = ranks.sum()
    stats = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in product([0, 1], repeat=len(ranks))
    ]
    centre = total / 2
    return float(np.mean([abs(s - centre) >= abs(observed - centre) - 1e-9 for s in stats]))


def test_comparison_paired_tests_report_and_plots(
    trained, prepared_inputs, baselines, tmp_path: Path
) -> None:
    screen = prepared_inputs["screen"]
    metrics = {
        variant: evaluate_predictions(_predict(record, prepared_inputs)[0], screen, REPORTING)
        for variant, (record, _) in trained.items()
    }
    baseline_metrics = evaluate_predictions(baselines[0], screen, REPORTING)
    comparison, paired = compare_methods(REPORTING, baseline_metrics, **metrics)
    methods = [*trained, *REPORTING.baselines]
    assert list(dict.fromkeys(comparison["method"])) == methods
    assert len(comparison) == len(methods) * len(REGISTRY)
    assert not comparison[["mean", "sd", "median"]].isna().any().any()
    assert (comparison.loc[comparison["method"] == "ptrag", "n_seeds"] == 2).all()
    assert (comparison.loc[comparison["method"] == "ptrag", "sd"] > 0).any()
    assert comparison.loc[comparison["metric"] == "de_overlap@100", "chance"].notna().all()
    # paired tests: every non-reference variant against the reference, all against the best baseline
    assert len(paired) == (2 * len(trained) - 1) * len(REGISTRY)
    row = paired[(paired["method"] == "ptrag") & (paired["role"] == "reference")].iloc[0]
    ours = metrics["ptrag"].query("level == 'condition' and metric == @row.metric")
    theirs = metrics["state"].query("level == 'condition' and metric == @row.metric")
    differences = (
        ours.groupby("perturbation")["value"].mean()
        - theirs.groupby("perturbation")["value"].mean()
    ).to_numpy()
    if len(differences) <= 12 and np.all(differences != 0):
        assert row["p_value"] == pytest.approx(_exact_signed_rank_p(differences), rel=1e-6)
    assert row["mean_difference"] == pytest.approx(differences.mean())
    gates = {
        variant: _predict(record, prepared_inputs)[1] for variant, (record, _) in trained.items()
    }
    summary = gate_summary(**gates)
    assert set(summary["method"]) == {"ptrag", "response_rag"}
    diagnostics = {
        "k": 5,
        "n_train": 20,
        "candidate_similarity": {"q50": 0.5},
        "train_pair_similarity": {"q50": 0.4},
        "module_precision": None,
    }
    report = write_report(comparison, paired, summary, diagnostics, baselines[1], REPORTING)
    assert "| response_rag |" in report and "pearson_delta_context ↑" in report
    assert "*chance*" in report and "## Paired tests" in report
    figures = (
        metric_bars(comparison)[0],
        reference_scatter(REPORTING, **metrics),
        loss_curves(**{variant: history for variant, (_, history) in trained.items()}),
        gate_heatmap(**gates),
    )
    assert len(figures[1].axes) == len(trained) - 1  # one panel per non-reference variant
    assert len(figures[2].axes[0].lines) == 5  # one training curve per variant and seed
    assert len([axis for axis in figures[3].axes if axis.images]) == 2  # the gated variants
    for index, figure in enumerate(figures):
        figure.savefig(tmp_path / f"{index}.png")
        assert (tmp_path / f"{index}.png").stat().st_size > 5_000
    with pytest.raises(ValueError, match="reference_variant"):
        compare_methods(ReportingParameters(reference_variant="nope"), baseline_metrics, **metrics)


def test_pearson_delta_and_mse_agree_with_cell_eval(trained, prepared_inputs) -> None:
    """cell-eval (Arc's metrics) on the same predictions: the same numbers given our controls."""
    cell_eval_metrics = pytest.importorskip(
        "cell_eval.metrics", reason="optional extra 'eval' not installed"
    )
    from ptrag_kedro.metrics.cell_eval_bridge import cell_eval_pair

    screen = prepared_inputs["screen"]
    predictions, _ = _predict(trained["state"][0], prepared_inputs)
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
