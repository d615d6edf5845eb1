"""Reporting: predictions, baselines, metrics, the comparison, paired tests and cell-eval."""

from __future__ import annotations

import dataclasses
from itertools import product
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.container import BarContainer
from scipy.stats import rankdata
from sklearn.linear_model import Ridge

from ptrag_kedro.expression_rows import dense
from ptrag_kedro.metrics import metric_registry
from ptrag_kedro.models import PerturbationModel
from ptrag_kedro.models.sentences import SentenceSampler
from ptrag_kedro.parameters import ReportingParameters, TrainingParameters
from ptrag_kedro.pipelines.reporting.baselines import BASELINES, predict_baselines
from ptrag_kedro.pipelines.reporting.comparison import compare_methods
from ptrag_kedro.pipelines.reporting.evaluation import evaluate_predictions
from ptrag_kedro.pipelines.reporting.inference import predict_test_cells
from ptrag_kedro.pipelines.reporting.plots import (
    HEATMAP_CONDITIONS,
    gate_heatmap,
    gate_summary,
    loss_curves,
    metric_bars,
    reference_scatter,
)
from ptrag_kedro.pipelines.reporting.report import write_report
from ptrag_kedro.provenance import StaleArtefactError
from tests.conftest import train_tiny

REPORTING = ReportingParameters(n_pcs=10, bootstrap_resamples=2000)
REGISTRY = metric_registry(10, 0.05)
#: The baselines that add a shift to the models' control draw (``context`` draws other cells).
FROM_CONTROLS = [name for name in REPORTING.baselines if name != "context"]


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
        dataclasses.replace(REPORTING, **overrides),
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
    # sampled gates from seeded generators: the same predictions every time (a gate drawn from
    # an unseeded stream would make the two runs differ)
    assert trained["ptrag"][0].config.gate_inference == "sampled"
    assert gates["gate"].between(0, 1, inclusive="neither").any()  # cells disagreed: sampled
    again, _ = _predict(trained["ptrag"][0], prepared_inputs)
    np.testing.assert_array_equal(again.X, predictions.X)
    other, _ = _predict(trained["ptrag"][0], prepared_inputs, seed=3)
    assert not np.array_equal(other.X, predictions.X)


def _per_condition_change(before: ad.AnnData, after: ad.AnnData) -> pd.Series:
    """Largest change of a predicted value per (line, perturbation, seed); same cells in order."""
    pd.testing.assert_frame_equal(before.obs, after.obs)  # the same cells and controls
    change = np.abs(before.X - after.X).max(1)
    keys = [before.obs[column].astype(str) for column in ("cell_line", "perturbation", "seed")]
    return pd.Series(change, index=before.obs_names).groupby(keys).max()


def test_retrieval_predictions_follow_their_candidates_and_responses(
    trained, prepared_inputs
) -> None:
    """Other candidates change every test prediction of vanilla RAG and PT-RAG, other responses
    every one of response_rag, and neither changes STATE's."""
    genes = [str(gene) for gene in prepared_inputs["screen"].var_names]
    candidates = prepared_inputs["retrieval_candidates"].copy()
    # each perturbation's candidates in reverse rank order: its first ones are others now
    last = candidates.groupby("perturbation")["rank"].transform("max")
    candidates["rank"] = last - candidates["rank"]
    candidates.attrs = dict(prepared_inputs["retrieval_candidates"].attrs)
    responses = prepared_inputs["perturbation_responses"].copy()
    responses[genes] = responses[genes] + 5.0
    responses.attrs = dict(prepared_inputs["perturbation_responses"].attrs)
    changed = {
        "vanilla_rag": {"retrieval_candidates": candidates},
        "ptrag": {"retrieval_candidates": candidates},
        "response_rag": {"perturbation_responses": responses},
        "state": {"retrieval_candidates": candidates, "perturbation_responses": responses},
    }
    for variant, inputs in changed.items():
        record = trained[variant][0]
        before, _ = _predict(record, prepared_inputs)
        after, _ = _predict(record, {**prepared_inputs, **inputs})
        change = _per_condition_change(before, after)
        if variant == "state":
            assert (change == 0).all()
        else:
            assert (change > 1e-4).all(), (variant, change.min())


def test_inference_switches_dropout_off(trained, prepared_inputs) -> None:
    """A model with dropout predicts the same cells every time, and those of the same weights
    without dropout: prediction runs the module in eval mode."""
    record = trained["state"][0]
    dropping = dataclasses.replace(record, config=dataclasses.replace(record.config, dropout=0.5))
    first, _ = _predict(dropping, prepared_inputs)
    again, _ = _predict(dropping, prepared_inputs)
    np.testing.assert_array_equal(first.X, again.X)
    plain, _ = _predict(record, prepared_inputs)
    np.testing.assert_array_equal(first.X, plain.X)
    # The dropout is real: in training mode two passes over the same sentences differ.
    module = PerturbationModel(dropping.config)
    module.load_state_dict(record.state_dicts["0"])
    sampler = SentenceSampler(
        prepared_inputs["screen"],
        prepared_inputs["perturbation_embeddings"],
        prepared_inputs["retrieval_candidates"],
        "test",
        record.sentences,
        prepared_inputs["split_manifest"]["control_label"],
    )
    batch, _ = sampler.prediction_batch(0, REPORTING.seed)
    with torch.no_grad():
        module.train()
        assert not torch.equal(module(batch).predicted, module(batch).predicted)
        module.eval()
        torch.testing.assert_close(module(batch).predicted, module(batch).predicted)


def _assert_shifted_controls(predicted: np.ndarray, controls: np.ndarray) -> None:
    """``predicted`` is ``max(controls + shift, 0)`` for one shift per gene, the same for every
    cell: the cells were predicted from exactly these controls, row by row."""
    unclipped = predicted > 0
    some = unclipped.any(0)  # genes where the shift can be read off (elsewhere all clipped)
    assert some.mean() > 0.5, "nearly everything clipped: nothing to compare"
    differences = np.where(unclipped, predicted.astype(np.float64) - controls, np.nan)
    shift = np.nanmean(differences[:, some], axis=0)
    np.testing.assert_allclose(
        predicted[:, some], np.maximum(controls[:, some] + shift, 0.0), rtol=0, atol=1e-5
    )


def test_every_method_predicts_from_the_same_controls(trained, prepared_inputs, baselines) -> None:
    """The control paired with each predicted cell is the same for every model (every seed) and
    baseline, and every baseline that starts from controls predicts from exactly those cells."""
    screen = prepared_inputs["screen"]
    draws = []
    for variant, (record, _) in trained.items():
        predictions, gates = _predict(record, prepared_inputs)
        assert gates.empty == (variant in ("state", "vanilla_rag"))
        for seed in record.state_dicts:
            draws.append(predictions.obs[predictions.obs["seed"] == int(seed)])
    assert len(draws) == sum(len(record.state_dicts) for record, _ in trained.values())
    baseline_predictions, _ = baselines
    for method in baseline_predictions.obs["method"].cat.categories:
        draws.append(baseline_predictions.obs[baseline_predictions.obs["method"] == method])
    reference = draws[0].reset_index(drop=True)
    for draw in draws[1:]:
        pd.testing.assert_series_equal(
            draw["control_cell"].astype(str).reset_index(drop=True),
            reference["control_cell"].astype(str),
        )
        pd.testing.assert_frame_equal(
            draw[["cell_line", "perturbation"]].astype(str).reset_index(drop=True),
            reference[["cell_line", "perturbation"]].astype(str),
        )
    controls = screen.obs.loc[reference["control_cell"].astype(str)]
    assert (controls["split"] == "control").all()
    assert (controls["cell_line"].to_numpy() == reference["cell_line"].to_numpy()).all()
    # The baselines' cells, condition by condition, against the screen's rows of that draw.
    obs = baseline_predictions.obs
    for (line, name), rows in reference.groupby(["cell_line", "perturbation"], observed=True):
        drawn = dense(screen[rows["control_cell"].astype(str).to_numpy()].X).astype(np.float64)
        other = np.roll(drawn, 1, axis=0)  # the same line's controls, paired differently
        in_condition = ((obs["cell_line"] == line) & (obs["perturbation"] == name)).to_numpy()
        for method in FROM_CONTROLS:
            predicted = baseline_predictions.X[in_condition & (obs["method"] == method).to_numpy()]
            if method == "control_mean":  # no change: exactly those control cells
                np.testing.assert_array_equal(predicted, drawn.astype(np.float32))
            _assert_shifted_controls(predicted, drawn)
            # ... and the check tells another draw apart
            with pytest.raises(AssertionError):
                _assert_shifted_controls(predicted, other)


def test_a_model_of_another_gene_order_is_refused(trained, prepared_inputs) -> None:
    record = trained["state"][0]
    record = dataclasses.replace(record, genes=list(reversed(record.genes)))
    with pytest.raises(StaleArtefactError, match="another gene order"):
        _predict(record, prepared_inputs)


def _shift(screen, line: str, names: set[str], split: str) -> np.ndarray:
    obs, expression = screen.obs, dense(screen.X)
    in_line = (obs["cell_line"] == line).to_numpy()
    control = expression[in_line & (obs["split"] == "control").to_numpy()].mean(0)
    rows = in_line & obs["perturbation"].isin(names).to_numpy() & (obs["split"] == split).to_numpy()
    return expression[rows].mean(0) - control


def _context_shift(screen, manifest, line: str) -> np.ndarray:
    """The cell-weighted mean shift of the line's train-perturbed cells."""
    return _shift(screen, line, set(manifest["cell_lines"][line]["train"]), "train")


def _nearest(embeddings: pd.DataFrame, query: str, pool: list[str], k: int) -> list[str]:
    """The k genes of ``pool`` whose embeddings are most cosine-similar to the query's."""
    vectors = embeddings.loc[pool].to_numpy(float)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    target = embeddings.loc[query].to_numpy(float)
    similarity = vectors @ (target / np.linalg.norm(target))
    ranked = sorted(zip(pool, similarity, strict=True), key=lambda pair: (-pair[1], pair[0]))
    return [name for name, _ in ranked if name != query][:k]


def test_baselines_against_independent_computations(prepared_inputs, baselines) -> None:
    """Every baseline's cells for every test condition, recomputed from the screen."""
    screen, manifest = prepared_inputs["screen"], prepared_inputs["split_manifest"]
    embeddings = prepared_inputs["perturbation_embeddings"]
    predictions, summary = baselines
    assert list(predictions.obs["method"].cat.categories) == list(REPORTING.baselines)
    assert set(REPORTING.baselines) <= set(BASELINES)
    obs = predictions.obs
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

    targets = {
        s: np.stack([_shift(screen, where, {g}, s) for where, g in groups[s]]) for s in groups
    }
    fits = {}
    for method, line_aware in (("linear", False), ("line_linear", True)):
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
        fits[method] = (fit, line_aware)

    conditions = obs[["cell_line", "perturbation"]].astype(str).drop_duplicates()
    test = {(line, g) for line, e in manifest["cell_lines"].items() for g in e["test"]}
    assert set(conditions.itertuples(index=False, name=None)) == test
    assert summary["n_conditions"] == len(test)
    no_shift = []
    for line, name in conditions.itertuples(index=False, name=None):
        in_condition = ((obs["cell_line"] == line) & (obs["perturbation"] == name)).to_numpy()
        rows = {
            method: in_condition & (obs["method"] == method).to_numpy()
            for method in REPORTING.baselines
        }
        # the models' control draw, named in control_cell, read from the screen
        controls = dense(screen[obs.loc[rows["control_mean"], "control_cell"].astype(str)].X)
        np.testing.assert_array_equal(predictions.X[rows["control_mean"]], controls)
        # perturbation_mean: the controls plus the mean shift of the lines where it is train
        shifts = [
            _shift(screen, other, {name}, "train")
            for other, entry in manifest["cell_lines"].items()
            if other != line and name in entry["train"]
        ]
        if not shifts:
            no_shift.append(f"{line}/{name}")
        expected = np.maximum(controls + np.mean(shifts, axis=0), 0) if shifts else controls
        np.testing.assert_allclose(predictions.X[rows["perturbation_mean"]], expected, atol=1e-5)
        # context: real cells of the line's train perturbations
        train_cells = dense(
            screen[
                ((screen.obs["cell_line"] == line) & (screen.obs["split"] == "train")).to_numpy()
            ].X
        )
        for cell in predictions.X[rows["context"]]:
            assert (np.abs(train_cells - cell).sum(1) < 1e-5).any()
        for method, (fit, line_aware) in fits.items():
            shift = fit.predict(design([(line, name)], line_aware))[0]
            np.testing.assert_allclose(
                predictions.X[rows[method]], np.maximum(controls + shift, 0), atol=1e-4
            )
        # additive: the line's context + the gene's line-specific shift in the other lines
        context = _context_shift(screen, manifest, line)
        specific = [
            _shift(screen, other, {name}, "train") - _context_shift(screen, manifest, other)
            for other, entry in manifest["cell_lines"].items()
            if other != line and name in entry["train"]
        ]
        expected = context + (np.mean(specific, axis=0) if specific else 0.0)
        np.testing.assert_allclose(
            predictions.X[rows["additive"]], np.maximum(controls + expected, 0), atol=1e-4
        )
        # neighbour_mean: the mean shift of the k most similar train genes of the line
        k = summary["neighbour_mean"]["k"]
        neighbours = _nearest(embeddings, name, manifest["cell_lines"][line]["train"], k)
        expected = np.mean([_shift(screen, line, {g}, "train") for g in neighbours], axis=0)
        np.testing.assert_allclose(
            predictions.X[rows["neighbour_mean"]], np.maximum(controls + expected, 0), atol=1e-4
        )
    assert sorted(summary["fallbacks"].get("perturbation_mean", [])) == sorted(no_shift)
    assert sorted(summary["fallbacks"].get("additive", [])) == sorted(no_shift)
    assert len(no_shift) < len(test)  # the shift of perturbation_mean was checked somewhere
    # neighbour_mean's k: the lowest val error of the neighbour means, computed here
    val_errors = {
        k: np.mean(
            [
                np.mean(
                    (
                        np.mean(
                            [
                                _shift(screen, line, {g}, "train")
                                for g in _nearest(embeddings, name, entry["train"], k)
                            ],
                            axis=0,
                        )
                        - _shift(screen, line, {name}, "val")
                    )
                    ** 2
                )
                for line, entry in manifest["cell_lines"].items()
                for name in entry["val"]
            ]
        )
        for k in REPORTING.neighbour_ks
    }
    assert summary["neighbour_mean"]["k"] == min(val_errors, key=val_errors.get)


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
    for name in ("pearson_delta", "pearson_delta_context", "centroid_accuracy"):
        np.testing.assert_allclose(conditions[name], 1.0, atol=1e-9)
    for name in ("centroid_accuracy_pca", "discrimination_l1"):
        np.testing.assert_allclose(conditions[name], 1.0, atol=1e-9)
    moved = conditions["de_overlap_fdr"].dropna()  # NaN where the real test finds no DE gene
    assert len(moved) and np.allclose(moved, 1.0)
    assert set(metrics["level"]) == {"condition", "mean", "median", "chance"}
    chance = metrics[metrics["level"] == "chance"].set_index("metric")["value"]
    n_test = len(conditions)  # one held-out line: N test shifts
    assert chance["centroid_accuracy"] == 0.5 and chance["pearson_delta"] == 0.0
    assert chance["discrimination_l1"] == pytest.approx((n_test + 1) / (2 * n_test))
    assert 0 < chance["de_overlap_fdr"] < 1


def test_pearson_delta_context_uses_systemas_train_centroid_reference(prepared_inputs) -> None:
    """The reference is the mean of the line's train perturbations' centroids (each weighs
    the same, whatever its cell count), never a val or test cell."""
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
    train = obs[(obs["cell_line"] == line) & (obs["split"] == "train")]
    centroids = [
        expression[((obs["cell_line"] == line) & (obs["perturbation"] == name)).to_numpy()].mean(0)
        for name in sorted(set(train["perturbation"]))
    ]
    reference = np.mean(centroids, axis=0)
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
    # mean and sd over seeds of each seed's mean over the test conditions, from the rows
    every = {
        **metrics,
        **{
            name: baseline_metrics[baseline_metrics["method"] == name]
            for name in REPORTING.baselines
        },
    }
    for _, entry in comparison.iterrows():
        table = every[entry["method"]]
        rows = table[(table["level"] == "condition") & (table["metric"] == entry["metric"])]
        per_seed = rows.groupby("seed")["value"].mean()
        assert entry["n_seeds"] == len(per_seed)
        assert entry["mean"] == pytest.approx(per_seed.mean(), rel=1e-9, abs=1e-12)
        sd = per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0
        assert entry["sd"] == pytest.approx(sd, rel=1e-9, abs=1e-12)
    assert comparison.loc[comparison["metric"] == "de_overlap_fdr", "chance"].notna().all()
    # paired tests: every non-reference variant against the reference, all against the best baseline
    assert len(paired) == (2 * len(trained) - 1) * len(REGISTRY)
    row = paired[(paired["method"] == "ptrag") & (paired["role"] == "reference")].iloc[0]
    ours = metrics["ptrag"].query("level == 'condition' and metric == @row.metric")
    theirs = metrics["state"].query("level == 'condition' and metric == @row.metric")
    differences = (
        ours.groupby("perturbation")["value"].mean()
        - theirs.groupby("perturbation")["value"].mean()
    ).to_numpy()
    assert len(differences) <= 12 and np.all(differences != 0)  # the exact test applies
    assert row["wilcoxon_p"] == pytest.approx(_exact_signed_rank_p(differences), rel=1e-6)
    assert row["mean_difference"] == pytest.approx(differences.mean())
    assert row["ci_low"] <= row["mean_difference"] <= row["ci_high"]
    assert row["n_seeds"] == "2/1"  # PT-RAG has two seeds, STATE one
    # Holm across the whole table: the adjusted p-values of every row, recomputed here
    order = np.argsort(paired["p_value"].to_numpy(), kind="stable")
    step_down = np.maximum.accumulate(
        (len(paired) - np.arange(len(paired))) * paired["p_value"].to_numpy()[order]
    ).clip(max=1.0)
    np.testing.assert_allclose(paired["p_holm"].to_numpy()[order], step_down)
    assert (paired["p_holm"] >= paired["p_value"]).all()
    significant = paired["p_holm"] < REPORTING.significance
    assert (paired["significantly_better"] | paired["significantly_worse"]).equals(significant)
    # the margin: a share of the comparator's mean for distances, absolute for scores
    w1_row = paired[(paired["metric"] == "w1") & (paired["role"] == "reference")].iloc[0]
    state_w1 = comparison.query("method == 'state' and metric == 'w1'")["mean"].iloc[0]
    assert w1_row["margin"] == pytest.approx(REPORTING.relative_margin * state_w1, rel=1e-6)
    assert (paired.loc[paired["higher_is_better"], "margin"] == REPORTING.absolute_margin).all()
    gates = {
        variant: _predict(record, prepared_inputs)[1] for variant, (record, _) in trained.items()
    }
    summary = gate_summary(**gates)
    assert set(summary["method"]) == {"ptrag", "response_rag"}
    for name in ("ptrag", "response_rag"):
        own = summary[summary["method"] == name].set_index("kind")["gate"]
        assert own["all"] == pytest.approx(gates[name]["gate"].mean())
        for kind, part in gates[name].groupby("kind"):
            assert own[kind] == pytest.approx(part["gate"].mean())
    diagnostics = {
        "k": 5,
        "n_train": 20,
        "candidate_similarity": {"q50": 0.5},
        "train_pair_similarity": {"q50": 0.4},
        "module_precision": None,
    }
    manifest = prepared_inputs["split_manifest"]
    training = TrainingParameters(max_steps=2, seeds=[0, 1])
    report = write_report(
        comparison, paired, summary, diagnostics, baselines[1], manifest, training, REPORTING
    )
    assert "| response_rag |" in report and "pearson_delta_context ↑" in report
    assert "*chance*" in report and "## Paired tests" in report
    assert "Split `few_shot`" in report and "training 2 steps, seeds [0, 1]" in report
    assert "- `centroid_accuracy`: fraction of the line's other" in report  # the registry's words
    assert "neighbour_mean: k = " in report
    histories = {variant: history for variant, (_, history) in trained.items()}
    figures = (
        metric_bars(comparison, REPORTING)[0],
        reference_scatter(REPORTING, **metrics),
        loss_curves(**histories),
        gate_heatmap(**gates),
    )
    # metric_bars: one panel per metric, a bar per method at its mean
    panels = [axis for axis in figures[0].axes if axis.axison]
    assert len(panels) == len(REGISTRY)
    for axis, metric in zip(panels, REGISTRY, strict=True):
        table = comparison[comparison["metric"] == metric]
        assert list(table["method"]) == methods
        assert axis.get_title().startswith(f"{metric} ")
        (bars,) = [item for item in axis.containers if isinstance(item, BarContainer)]
        heights = [patch.get_height() for patch in bars]
        np.testing.assert_allclose(heights, table["mean"].to_numpy())

    # reference_scatter: one panel per non-reference variant, its W1 against the reference's
    def w1(name: str) -> pd.Series:
        table = metrics[name]
        rows = table[(table["level"] == "condition") & (table["metric"] == "w1")]
        return rows.groupby(["cell_line", "perturbation"])["value"].mean()

    reference = REPORTING.reference(list(trained))  # not set: the first variant, state
    others = [name for name in trained if name != reference]
    assert len(figures[1].axes) == len(others)
    for axis, name in zip(figures[1].axes, others, strict=True):
        ours, theirs = w1(name), w1(reference)
        np.testing.assert_allclose(
            axis.collections[0].get_offsets(), np.column_stack([theirs, ours.loc[theirs.index]])
        )
        better = int((ours.loc[theirs.index] < theirs).sum())
        assert axis.get_title() == f"{name} lower in {better}/{len(theirs)}"
    # loss_curves: a training and a validation curve per variant and seed, with its energies
    train_axis, val_axis = figures[2].axes
    curves = [
        (name, seed) for name, history in histories.items() for seed in sorted(set(history["seed"]))
    ]
    assert len(curves) == sum(len(record.state_dicts) for record, _ in trained.values())
    assert [line.get_label() for line in train_axis.lines] == [
        f"{name} (seed {seed})" for name, seed in curves
    ]
    for train_line, line, (name, seed) in zip(
        train_axis.lines, val_axis.lines, curves, strict=True
    ):
        history = histories[name]
        train = history[(history["seed"] == seed) & (history["split"] == "train")]
        np.testing.assert_allclose(train_line.get_xdata(), train["step"])
        val = history[(history["seed"] == seed) & (history["split"] == "val")]
        np.testing.assert_allclose(line.get_xdata(), val["step"])
        np.testing.assert_allclose(line.get_ydata(), val["energy"])
    # gate_heatmap: per gated variant, the first seed's gates of the first conditions
    gated = [name for name, table in gates.items() if not table.empty]
    assert gated == ["ptrag", "response_rag"]
    images = [axis.images[0] for axis in figures[3].axes if axis.images]
    assert len(images) == len(gated)
    for image, name in zip(images, gated, strict=True):
        table = gates[name][gates[name]["seed"] == gates[name]["seed"].min()]
        conditions = table[["cell_line", "perturbation"]].drop_duplicates()
        conditions = conditions.head(HEATMAP_CONDITIONS)
        expected = table.merge(conditions).pivot_table(
            index=["cell_line", "perturbation"], columns="slot", values="gate"
        )
        assert len(expected) == min(
            HEATMAP_CONDITIONS, len(table[["cell_line", "perturbation"]].drop_duplicates())
        )
        np.testing.assert_allclose(image.get_array(), expected.to_numpy())
        axis = image.axes
        shown, every = len(expected), len(table[["cell_line", "perturbation"]].drop_duplicates())
        assert f"{shown} of {every} test conditions" in axis.get_title()
        slot_kinds = table.groupby("slot")["kind"].first().tolist()
        tick_labels = [label.get_text() for label in axis.get_xticklabels()]
        if name == "response_rag":
            assert tick_labels == slot_kinds  # named by kind, not fractional slot numbers
        else:
            assert tick_labels == [str(slot) for slot in range(len(slot_kinds))]
    colour_bar_labels = [axis.get_ylabel() for axis in figures[3].axes if not axis.images]
    assert colour_bar_labels.count("gate: mean over the cells") == len(gated)
    for index, figure in enumerate(figures):
        figure.savefig(tmp_path / f"{index}.png")
        assert (tmp_path / f"{index}.png").stat().st_size > 5_000
    with pytest.raises(ValueError, match="reference_variant"):
        compare_methods(ReportingParameters(reference_variant="nope"), baseline_metrics, **metrics)
