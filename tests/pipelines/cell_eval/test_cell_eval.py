"""cell-eval on the same predictions: its values equal ours per condition, its score is its
formula, and a missing extra or a bad parameter or input stops the node with one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from kedro.validation import instantiate_model

from ptrag_kedro.cli import user_message
from ptrag_kedro.errors import ParameterError, UserError
from ptrag_kedro.expression_rows import ExpressionRows, dense
from ptrag_kedro.metrics.cell_eval_bridge import (
    INSTALL_HINT,
    SHARED_METRICS,
    CellEvalInputError,
    CellEvalMissingError,
    real_cells,
)
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.pipelines.cell_eval import create_pipeline
from ptrag_kedro.pipelines.cell_eval.nodes import CellEvalParameters, evaluate_with_cell_eval
from ptrag_kedro.pipelines.reporting.baselines import predict_baselines
from ptrag_kedro.pipelines.reporting.evaluation import evaluate_predictions
from ptrag_kedro.pipelines.reporting.inference import predict_test_cells
from tests.conftest import PROJECT_ROOT, TINY_VARIANTS, train_tiny
from tests.test_run import BASELINES, _run, latest, project  # noqa: F401  (the tiny project fixture)

REPORTING = ReportingParameters(n_pcs=10, bootstrap_resamples=2000)
#: cell-eval's direction of each metric, written out here (its registry's best_value).
BEST_IS_ZERO = {"mae": True, "mse": True, "pearson_delta": False}
BEST_IS_ZERO |= {"discrimination_score_l1": False, "overlap_at_N": False}
VCC = ["mae", "discrimination_score_l1", "overlap_at_N"]


def _needs_cell_eval() -> Any:
    return pytest.importorskip(
        "cell_eval", reason="optional extra 'eval' (cell-eval) not installed"
    )


def _resampled(screen: ad.AnnData, seeds: list[int]) -> ad.AnnData:
    """A 'method' predicting each test condition by resampling its real cells with replacement:
    its DE genes overlap the real ones partly, so overlap_at_N takes values between 0 and 1."""
    obs = screen.obs
    expression = dense(screen.X)
    blocks, rows = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        test = obs[obs["split"] == "test"]
        for (line, perturbation), group in test.groupby(
            ["cell_line", "perturbation"], observed=True
        ):
            chosen = obs.index.get_indexer(group.index)[rng.integers(0, len(group), len(group))]
            blocks.append(expression[chosen])
            rows += [{"perturbation": perturbation, "cell_line": line, "seed": seed}] * len(group)
    table = pd.DataFrame(rows)
    table.index = table.index.astype(str)
    return ad.AnnData(
        X=np.vstack(blocks).astype(np.float32),
        obs=table,
        var=pd.DataFrame(index=screen.var_names.copy()),
    )


@pytest.fixture(scope="module")
def methods(prepared_inputs, tmp_path_factory) -> dict[str, tuple[ad.AnnData, pd.DataFrame]]:
    """Predictions and our metrics: a trained tiny STATE (two seeds), the resampled real cells
    (two seeds) and the baselines."""
    screen = prepared_inputs["screen"]
    record, _, _ = train_tiny(
        prepared_inputs, tmp_path_factory.mktemp("state"), "state", max_steps=2, seeds=[0, 1]
    )
    state, _ = predict_test_cells(
        record,
        screen,
        prepared_inputs["perturbation_embeddings"],
        prepared_inputs["retrieval_candidates"],
        prepared_inputs["perturbation_responses"],
        prepared_inputs["split_manifest"],
        REPORTING,
    )
    baselines, _ = predict_baselines(
        screen,
        prepared_inputs["perturbation_embeddings"],
        prepared_inputs["split_manifest"],
        REPORTING,
    )
    resampled = _resampled(screen, [0, 1])
    return {
        name: (predictions, evaluate_predictions(predictions, screen, REPORTING))
        for name, predictions in (
            ("state", state),
            ("resampled", resampled),
            ("baselines", baselines),
        )
    }


def _tables(methods: dict[str, tuple[ad.AnnData, pd.DataFrame]]) -> dict[str, Any]:
    tables = {}
    for name, (predictions, metrics) in methods.items():
        tables[f"{name}_predictions"] = predictions
        tables[f"{name}_metrics"] = metrics
    return tables


@pytest.fixture(scope="module")
def outputs(prepared_inputs, methods) -> tuple[pd.DataFrame, pd.DataFrame]:
    _needs_cell_eval()
    return evaluate_with_cell_eval(
        prepared_inputs["screen"],
        prepared_inputs["split_manifest"],
        CellEvalParameters(),
        REPORTING,
        **_tables(methods),
    )


def _ours(methods, name: str) -> pd.DataFrame:
    """Our condition rows, one column per metric, indexed (method, seed, line, perturbation)."""
    metrics = methods[name][1]
    metrics = metrics[metrics["level"] == "condition"]
    if name != "baselines":
        metrics = metrics.assign(method=name)
    return metrics.pivot_table(
        index=["method", "seed", "cell_line", "perturbation"],
        columns="metric",
        values="value",
        dropna=False,
    )


def _theirs(results: pd.DataFrame) -> pd.DataFrame:
    return results.pivot_table(
        index=["method", "seed", "cell_line", "perturbation"], columns="metric", values="value"
    )


def _real_deltas(screen: ad.AnnData, line: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The line's test perturbations (sorted), their real mean shifts and the control mean."""
    real = real_cells(screen, ExpressionRows.of(screen), line, "non-targeting")
    labels = real.obs["perturbation"].astype(str).to_numpy()
    control = real.X[labels == "non-targeting"].mean(axis=0)
    names = sorted(set(labels) - {"non-targeting"})
    deltas = np.stack([real.X[labels == name].mean(axis=0) - control for name in names])
    return names, deltas, control


def test_cell_eval_values_equal_ours_per_condition(outputs, methods, prepared_inputs) -> None:
    results, summary = outputs
    screen = prepared_inputs["screen"]
    theirs = _theirs(results)
    ours = pd.concat([_ours(methods, name) for name in methods])
    assert set(theirs.index) == set(ours.index)  # every method, seed and condition
    ours = ours.loc[theirs.index]
    assert set(theirs.index.get_level_values("method")) == {
        "state",
        "resampled",
        *REPORTING.baselines,
    }
    assert set(theirs.index.get_level_values("seed")) == {0, 1}
    # the means: defined on every condition by both, equal to float32 precision
    for name in ("pearson_delta", "mse", "mae"):
        assert np.isfinite(theirs[name]).all() and np.isfinite(ours[name]).all(), name
        np.testing.assert_allclose(theirs[name], ours[name], rtol=0, atol=1e-5, err_msg=name)

    # discrimination: exactly equal wherever no real shift is as close as the correct one
    # (cell-eval ranks ties in argsort order, we count strictly closer shifts)
    line = prepared_inputs["split_manifest"]["heldout_cell_line"]
    names, deltas, control = _real_deltas(screen, line)
    genes = list(screen.var_names.astype(str))
    untied = 0
    for method, seed, cell_line, perturbation in theirs.index:
        predictions = _predictions_of(methods, method)
        obs = predictions.obs
        chosen = (
            (obs["perturbation"].astype(str) == perturbation)
            & (obs["seed"] == seed)
            & ((obs["method"].astype(str) == method) if "method" in obs else True)
        ).to_numpy()
        delta = dense(predictions.X[chosen]).mean(axis=0) - control
        keep = np.array([gene != perturbation for gene in genes])
        distances = np.abs(deltas[:, keep] - delta[keep]).sum(axis=1)
        own = names.index(perturbation)
        others = np.delete(distances, own)
        if np.min(np.abs(others - distances[own])) > 1e-4:
            untied += 1
            key = (method, seed, cell_line, perturbation)
            assert theirs.loc[key, "discrimination_score_l1"] == ours.loc[key, "discrimination_l1"]
            # and both are 1 - (strictly closer) / N
            expected = 1 - np.sum(distances < distances[own]) / len(names)
            assert ours.loc[key, "discrimination_l1"] == pytest.approx(expected, abs=1e-12)
    assert untied >= 0.9 * len(theirs)

    # DE overlap: ours is NaN where the real test finds no DE gene, cell-eval's 0 there;
    # elsewhere they agree
    undefined = ours["de_overlap_fdr"].isna()
    assert undefined.any() and (~undefined).any()
    assert (theirs.loc[undefined, "overlap_at_N"] == 0).all()
    defined = ~undefined
    np.testing.assert_allclose(
        theirs.loc[defined, "overlap_at_N"], ours.loc[defined, "de_overlap_fdr"], atol=1e-12
    )
    # values strictly between 0 and 1 are compared, not only zeros
    between = ours.loc[defined, "de_overlap_fdr"].between(0, 1, inclusive="neither")
    assert between.any()

    # the summary says how many conditions it compared, and what differs
    rows = summary.set_index(["method", "metric"])
    for method in theirs.index.get_level_values("method").unique():
        mask = theirs.index.get_level_values("method") == method
        assert rows.loc[(method, "overlap_at_N"), "n_compared"] == defined[mask].sum()
        assert rows.loc[(method, "overlap_at_N"), "n_conditions"] == mask.sum()
        for theirs_name, ours_name in SHARED_METRICS.items():
            row = rows.loc[(method, theirs_name)]
            assert row["ours_metric"] == ours_name
            assert row["max_abs_difference"] <= 1e-5
            compared = ours.loc[mask, ours_name].dropna()
            assert row["ours"] == pytest.approx(compared.mean(), abs=1e-9)
            assert row["cell_eval"] == pytest.approx(theirs.loc[mask, theirs_name].mean(), abs=1e-6)


def _predictions_of(methods, method: str) -> ad.AnnData:
    return methods[method][0] if method in methods else methods["baselines"][0]


def test_summary_score_is_cell_eval_score_against_its_mean_baseline(
    outputs, prepared_inputs, tmp_path: Path
) -> None:
    """The score recomputed here from the two agg tables: each method's mean over its
    conditions and seeds, and cell-eval's mean baseline evaluated here with cell-eval."""
    cell_eval = _needs_cell_eval()
    results, summary = outputs
    screen = prepared_inputs["screen"]
    line = prepared_inputs["split_manifest"]["heldout_cell_line"]
    real = real_cells(screen, ExpressionRows.of(screen), line, "non-targeting")
    base = cell_eval.build_base_mean_adata(
        real.copy(), pert_col="perturbation", control_pert="non-targeting"
    )
    # every perturbed cell of the baseline: the mean over the groups (control included) of
    # their mean expression
    labels = real.obs["perturbation"].astype(str).to_numpy()
    profile = np.mean([real.X[labels == name].mean(axis=0) for name in set(labels)], axis=0)
    perturbed = (base.obs["perturbation"] != "non-targeting").to_numpy()
    np.testing.assert_allclose(
        dense(base.X)[perturbed], profile[None].repeat(perturbed.sum(), 0), atol=1e-6
    )
    _, agg = cell_eval.MetricsEvaluator(
        base,
        real.copy(),
        control_pert="non-targeting",
        pert_col="perturbation",
        num_threads=1,
        outdir=str(tmp_path / "base"),
    ).compute(profile="minimal", write_csv=False, break_on_error=True)
    base_mean = agg.to_pandas().set_index("statistic").loc["mean"]
    user_means = results.groupby(["method", "metric"])["value"].mean()
    rows = summary.set_index(["method", "metric"])
    positive = 0
    for method in results["method"].unique():
        scores = {}
        for metric, zero_best in BEST_IS_ZERO.items():
            user, reference = user_means[(method, metric)], base_mean[metric]
            value = 1 - user / reference if zero_best else (user - reference) / (1 - reference)
            scores[metric] = max(0.0, 0.0 if np.isnan(value) else value)
            # cell-eval's baseline profile is a float32 mean over polars groups, whose order
            # varies from run to run: equal to float32 precision
            assert rows.loc[(method, metric), "baseline"] == pytest.approx(reference, rel=1e-6)
            assert rows.loc[(method, metric), "score"] == pytest.approx(scores[metric], abs=1e-6)
        average = np.mean([scores[metric] for metric in VCC])  # the vcc profile's
        assert rows.loc[(method, "avg_score"), "score"] == pytest.approx(average, abs=1e-6)
        positive += average > 0
    assert positive >= 1  # the resampled real cells beat the mean baseline somewhere


def test_a_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "cell_eval" else find_spec(name, *args),
    )
    with pytest.raises(CellEvalMissingError) as raised:
        evaluate_with_cell_eval(None, {}, CellEvalParameters(scratch_dir=str(tmp_path)), REPORTING)
    assert isinstance(raised.value, UserError)
    assert user_message(raised.value) == INSTALL_HINT == str(raised.value)
    assert "\n" not in INSTALL_HINT
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"profile": "vvc"}, "cell_eval.profile must be one of ['full', 'minimal', 'vcc', "),
        ({"num_threads": 0}, "cell_eval.num_threads must be an integer >= 1, got 0"),
        ({"num_threads": "2"}, "cell_eval.num_threads must be an integer >= 1, got '2'"),
        ({"extra_metrics": ["mse", "mse"]}, "cell_eval.extra_metrics must be a list of distinct"),
        ({"extra_metrics": "mse"}, "cell_eval.extra_metrics must be a list of distinct"),
        ({"scratch_dir": ""}, "cell_eval.scratch_dir must be a folder or null, got ''"),
    ],
)
def test_a_bad_parameter_is_one_line(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        CellEvalParameters(**settings)
    # as Kedro instantiates it before the run starts: the CLI shows one line
    with pytest.raises(Exception) as raised:
        instantiate_model("cell_eval", settings, CellEvalParameters)
    line = user_message(raised.value)
    assert line is not None and "\n" not in line and message in line
    with pytest.raises(Exception) as unknown:
        instantiate_model("cell_eval", {"profil": "vcc"}, CellEvalParameters)
    assert "profil" in user_message(unknown.value)


def test_bad_parameters_needing_cell_eval_stop_before_anything_is_written(
    tmp_path: Path,
) -> None:
    _needs_cell_eval()
    unknown = CellEvalParameters(extra_metrics=["pearson"], scratch_dir=str(tmp_path))
    with pytest.raises(
        ParameterError,
        match=r"^cell_eval.extra_metrics must be cell-eval metrics, got unknown \['pearson'\]$",
    ):
        evaluate_with_cell_eval(None, {}, unknown, REPORTING)
    missing = CellEvalParameters(scratch_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ParameterError, match="^cell_eval.scratch_dir must be an existing folder"):
        evaluate_with_cell_eval(None, {}, missing, REPORTING)
    assert not any(tmp_path.iterdir())


def test_inputs_that_do_not_match_are_refused_with_one_line(
    methods, prepared_inputs, tmp_path: Path
) -> None:
    _needs_cell_eval()
    screen, manifest = prepared_inputs["screen"], prepared_inputs["split_manifest"]
    parameters = CellEvalParameters(scratch_dir=str(tmp_path))
    state, state_metrics = methods["state"]
    dropped = str(state.obs["perturbation"].iloc[0])
    fewer = state[(state.obs["perturbation"] != dropped).to_numpy()].copy()
    cases = {
        "state.predictions: method state, seed 0, cell line hepg2: predicted conditions differ": {
            "state_predictions": fewer
        },
        "state_metrics: method state, seed 0, cell line hepg2: its conditions or metrics": {
            "state_metrics": state_metrics[state_metrics["perturbation"] != dropped]
        },
        "state.predictions: genes differ from the screen's": {
            "state_predictions": state[:, ::-1].copy()
        },
        "state.predictions: no column(s) ['seed']": {
            "state_predictions": ad.AnnData(
                state.X, obs=state.obs.drop(columns="seed"), var=state.var
            )
        },
    }
    for message, replaced in cases.items():
        tables = {**_tables(methods), **replaced}
        with pytest.raises(CellEvalInputError) as raised:
            evaluate_with_cell_eval(screen, manifest, parameters, REPORTING, **tables)
        line = user_message(raised.value)
        assert line.startswith(message) and "\n" not in line, line
    # counts, not log-normalised expression: cell-eval would normalise them itself
    counts = ad.AnnData(np.round(state.X * 10), obs=state.obs, var=state.var)
    with pytest.raises(CellEvalInputError, match="no fractional values"):
        evaluate_with_cell_eval(
            screen,
            manifest,
            parameters,
            REPORTING,
            **{**_tables(methods), "state_predictions": counts},
        )
    assert not any(tmp_path.iterdir())


def test_the_pipeline_reads_every_method_and_is_in_no_composite(monkeypatch) -> None:
    pipeline = create_pipeline(["state", "ptrag"])
    (node,) = pipeline.nodes
    assert node.name == "evaluate_with_cell_eval"
    assert set(node.inputs) == {
        "screen",
        "split_manifest",
        "params:cell_eval",
        "params:reporting",
        "state.predictions",
        "state_metrics",
        "ptrag.predictions",
        "ptrag_metrics",
        "baselines.predictions",
        "baselines_metrics",
    }
    assert node.outputs == ["cell_eval_results", "cell_eval_summary"]

    from ptrag_kedro import variants
    from ptrag_kedro.pipeline_registry import register_pipelines

    monkeypatch.setattr(variants, "_from_run", None)
    monkeypatch.setattr(variants, "_built_with", None)
    monkeypatch.chdir(PROJECT_ROOT)
    pipelines = register_pipelines()
    assert [n.name for n in pipelines["cell_eval"].nodes] == ["evaluate_with_cell_eval"]
    for composite in ("__default__", "analysis", "prepare", "reporting"):
        assert "evaluate_with_cell_eval" not in {n.name for n in pipelines[composite].nodes}


@pytest.mark.slow
def test_cell_eval_pipeline_runs_after_reporting(project: Path) -> None:  # noqa: F811
    """prepare, training, reporting, then cell_eval through a Kedro session."""
    _needs_cell_eval()
    for name in ("prepare", "training", "reporting", "cell_eval"):
        _run(project, name)
    results = pd.read_csv(latest(project / "data/08_reporting/cell_eval/results.csv"))
    summary = pd.read_csv(latest(project / "data/08_reporting/cell_eval/summary.csv"))
    methods = [*TINY_VARIANTS, *BASELINES]
    assert list(dict.fromkeys(summary["method"])) == methods
    assert set(results["method"]) == set(methods)
    shared = summary[summary["metric"].isin(list(SHARED_METRICS))]
    assert len(shared) == len(methods) * len(SHARED_METRICS)
    assert (shared["max_abs_difference"] <= 1e-5).all()
    assert (summary.loc[summary["metric"] == "avg_score", "score"] >= 0).all()
    assert not list(project.glob("data/**/cell_eval_*"))  # no temporary folder left


def test_a_failed_run_leaves_no_file_behind(
    methods, prepared_inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real file and the baseline are written, then the run fails: the folder goes."""
    _needs_cell_eval()
    from ptrag_kedro.pipelines.cell_eval import nodes

    written = []

    def failing(*args: Any) -> None:
        written.extend(tmp_path.rglob("*.h5ad"))
        raise RuntimeError("cell-eval failed")

    monkeypatch.setattr(nodes, "predicted_cells", failing)
    with pytest.raises(RuntimeError, match="cell-eval failed"):
        evaluate_with_cell_eval(
            prepared_inputs["screen"],
            prepared_inputs["split_manifest"],
            CellEvalParameters(scratch_dir=str(tmp_path)),
            REPORTING,
            **_tables(methods),
        )
    assert {path.name for path in written} == {"real.h5ad", "base_mean.h5ad"}
    assert not any(tmp_path.iterdir())


def test_cell_eval_de_metrics_follow_reporting_de_fdr(methods, prepared_inputs) -> None:
    """At another FDR both sides call other genes DE, and still agree; cell-eval's registry is
    left as it was (its metric_configs would otherwise change it for the whole process)."""
    cell_eval = _needs_cell_eval()
    screen = prepared_inputs["screen"]
    reporting = ReportingParameters(n_pcs=10, bootstrap_resamples=2000, de_fdr=0.25)
    predictions = methods["resampled"][0]
    ours = evaluate_predictions(predictions, screen, reporting)
    before = {
        name: dict(info.kwargs or {}) for name, info in cell_eval.metrics_registry.metrics.items()
    }
    results, _ = evaluate_with_cell_eval(
        screen,
        prepared_inputs["split_manifest"],
        CellEvalParameters(extra_metrics=[]),
        reporting,
        resampled_predictions=predictions,
        resampled_metrics=ours,
    )
    after = {
        name: dict(info.kwargs or {}) for name, info in cell_eval.metrics_registry.metrics.items()
    }
    assert after == before
    theirs = _theirs(results)["overlap_at_N"]
    ours = _ours({"resampled": (predictions, ours)}, "resampled")["de_overlap_fdr"]
    at_005 = _ours(methods, "resampled")["de_overlap_fdr"]
    defined = ours.notna()
    assert defined.sum() > at_005.notna().sum()  # more conditions with real DE genes
    np.testing.assert_allclose(theirs[defined.index[defined]], ours[defined], atol=1e-12)
