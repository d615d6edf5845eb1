"""Arc's cell-eval as a second opinion on the predictions reporting wrote.

Every method's predictions (each variant's, each baseline's), per seed and cell line, go through
cell-eval (``ptrag_kedro.metrics.cell_eval_bridge``) against the same real cells our metrics
read; cell-eval's own mean baseline is built from those real cells, and each method is scored
against it (``cell-eval score``). Where cell-eval and we define a metric the same way, the
summary puts the two side by side.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ptrag_kedro.errors import ParameterError
from ptrag_kedro.expression_rows import ExpressionRows, dense
from ptrag_kedro.metrics.cell_eval_bridge import (
    PROFILES,
    SHARED_METRICS,
    CellEvalInputError,
    CellEvalSettings,
    Evaluation,
    LineEvaluation,
    check_log1p,
    pooled_agg,
    predicted_cells,
    require_cell_eval,
    score,
)
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.schema import CELL_LINE, PERTURBATION, SPLIT, TEST

logger = logging.getLogger(__name__)

#: Columns of ``cell_eval_results``.
RESULT_COLUMNS = ["method", "seed", CELL_LINE, PERTURBATION, "metric", "value"]
#: Columns of ``cell_eval_summary``.
SUMMARY_COLUMNS = [
    "method",
    "metric",
    "ours_metric",
    "higher_is_better",
    "n_conditions",
    "cell_eval",
    "baseline",
    "score",
    "n_compared",
    "cell_eval_compared",
    "ours",
    "abs_difference",
    "max_abs_difference",
]
#: The kind of method a ``<name>_predictions`` input of the node holds: the baselines' table
#: names its methods in obs ``method``; a variant's predictions are the variant.
BASELINES = "baselines"
_PREDICTIONS, _METRICS = "_predictions", "_metrics"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ParameterError(message)


@dataclass(frozen=True)
class CellEvalParameters:
    """``cell_eval``: how cell-eval runs on the predictions.

    Args:
        profile: cell-eval's metric profile (``vcc``: mae, discrimination_score_l1,
            overlap_at_N, the Virtual Cell Challenge's); the score's ``avg_score`` is over it.
        extra_metrics: cell-eval metrics computed beside the profile's (default: the two
            more that we define the same way).
        num_threads: threads of cell-eval's differential expression (pdex).
        scratch_dir: the folder the temporary folder of cell-eval's files goes in (null: the
            system's); it is removed when the node ends, failed or not.
    """

    profile: str = "vcc"
    extra_metrics: tuple[str, ...] = ("pearson_delta", "mse")
    num_threads: int = 1
    scratch_dir: str | None = None

    def __post_init__(self) -> None:
        _require(
            self.profile in PROFILES,
            f"cell_eval.profile must be one of {list(PROFILES)}, got {self.profile!r}",
        )
        extras = self.extra_metrics
        _require(
            isinstance(extras, list | tuple)
            and all(isinstance(name, str) and name for name in extras)
            and len(set(extras)) == len(extras),
            f"cell_eval.extra_metrics must be a list of distinct cell-eval metric names, "
            f"got {extras!r}",
        )
        object.__setattr__(self, "extra_metrics", tuple(extras))
        _require(
            isinstance(self.num_threads, int)
            and not isinstance(self.num_threads, bool)
            and self.num_threads >= 1,
            f"cell_eval.num_threads must be an integer >= 1, got {self.num_threads!r}",
        )
        _require(
            self.scratch_dir is None or isinstance(self.scratch_dir, str) and self.scratch_dir,
            f"cell_eval.scratch_dir must be a folder or null, got {self.scratch_dir!r}",
        )

    def check_with_cell_eval(self) -> None:
        """What needs cell-eval itself: the extra metrics are its, and the scratch folder."""
        cell_eval = require_cell_eval()
        unknown = sorted(set(self.extra_metrics) - set(cell_eval.metrics_registry.list_metrics()))
        _require(
            not unknown,
            f"cell_eval.extra_metrics must be cell-eval metrics, got unknown {unknown}",
        )
        _require(
            self.scratch_dir is None or Path(self.scratch_dir).is_dir(),
            f"cell_eval.scratch_dir must be an existing folder, got {self.scratch_dir!r}",
        )


@dataclass(frozen=True)
class _Run:
    """One method's predicted cells of one seed and cell line, and our values for them."""

    method: str
    seed: int
    cell_line: str
    dataset: str  # the catalog name of the predictions, for messages
    predictions: ad.AnnData
    rows: np.ndarray
    ours: pd.DataFrame  # our condition rows: perturbation x our metric


def _sources(tables: dict[str, Any]) -> dict[str, tuple[ad.AnnData, pd.DataFrame]]:
    """``<name>_predictions`` and ``<name>_metrics`` inputs by name (variants, ``baselines``)."""
    names = [key.removesuffix(_PREDICTIONS) for key in tables if key.endswith(_PREDICTIONS)]
    expected = {f"{name}{suffix}" for name in names for suffix in (_PREDICTIONS, _METRICS)}
    if set(tables) != expected:
        raise TypeError(f"inputs must pair <name>_predictions with <name>_metrics: {list(tables)}")
    return {name: (tables[name + _PREDICTIONS], tables[name + _METRICS]) for name in names}


def _check_columns(frame: pd.DataFrame, columns: list[str], dataset: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise CellEvalInputError(
            f"{dataset}: no column(s) {missing}; rebuild it with kedro run --pipelines=reporting"
        )


def _plan(
    name: str,
    predictions: ad.AnnData,
    metrics: pd.DataFrame,
    screen: ad.AnnData,
    test_conditions: dict[str, set[str]],
) -> list[_Run]:
    """Every (method, seed, line) of one predictions dataset, checked against the screen's test
    conditions and against our metric table before anything runs."""
    dataset, table = f"{name}.predictions", f"{name}_metrics"
    columns = [PERTURBATION, CELL_LINE, "seed"] + (["method"] if name == BASELINES else [])
    _check_columns(predictions.obs, columns, dataset)
    _check_columns(
        metrics, ["method", "seed", CELL_LINE, PERTURBATION, "metric", "value", "level"], table
    )
    if list(predictions.var_names.astype(str)) != list(screen.var_names.astype(str)):
        raise CellEvalInputError(
            f"{dataset}: genes differ from the screen's; rebuild it with kedro run "
            "--pipelines=reporting"
        )
    obs = predictions.obs
    methods = obs["method"].astype(str) if name == BASELINES else pd.Series(name, index=obs.index)
    conditions = metrics[metrics["level"] == "condition"]
    runs = []
    keys = pd.DataFrame(
        {"method": methods, "seed": obs["seed"], CELL_LINE: obs[CELL_LINE].astype(str)}
    )
    for (method, seed, line), index in keys.groupby(
        ["method", "seed", CELL_LINE], sort=False
    ).indices.items():
        where = f"{dataset}: method {method}, seed {seed}, cell line {line}"
        predicted = set(obs[PERTURBATION].iloc[index].astype(str))
        expected = test_conditions.get(line, set())
        if predicted != expected:
            raise CellEvalInputError(
                f"{where}: predicted conditions differ from the screen's test conditions "
                f"(missing {sorted(expected - predicted)}, extra {sorted(predicted - expected)}); "
                "rebuild it with kedro run --pipelines=reporting"
            )
        chosen = (conditions["seed"] == seed) & (conditions[CELL_LINE].astype(str) == line)
        if name == BASELINES:  # a variant's table calls its method "model"
            chosen &= conditions["method"].astype(str) == method
        ours = conditions[chosen]
        ours = ours.assign(**{PERTURBATION: ours[PERTURBATION].astype(str)}).pivot_table(
            index=PERTURBATION, columns="metric", values="value", dropna=False
        )
        missing = sorted(set(SHARED_METRICS.values()) - set(ours.columns))
        if set(ours.index) != predicted or missing:
            raise CellEvalInputError(
                f"{table}: method {method}, seed {seed}, cell line {line}: its conditions or "
                f"metrics (missing {missing}) do not match {dataset}; rebuild both with kedro run "
                "--pipelines=reporting"
            )
        runs.append(_Run(str(method), int(seed), str(line), dataset, predictions, index, ours))
    return runs


def _long(run: _Run, evaluation: Evaluation) -> pd.DataFrame:
    """cell-eval's per-perturbation values of one run, long format."""
    wide = evaluation.results.to_pandas()
    wide[PERTURBATION] = wide["perturbation"].astype(str)
    long = wide.melt(id_vars=[PERTURBATION], var_name="metric", value_name="value")
    return long.assign(method=run.method, seed=run.seed, **{CELL_LINE: run.cell_line})[
        RESULT_COLUMNS
    ]


def _comparison(theirs: pd.DataFrame, ours: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per shared metric, over the conditions both define (both values finite): how many, the
    two means and their differences."""
    compared = {}
    for theirs_name, ours_name in SHARED_METRICS.items():
        if theirs_name not in theirs.columns:
            continue
        pair = pd.DataFrame({"theirs": theirs[theirs_name], "ours": ours[ours_name]})
        pair = pair[np.isfinite(pair["theirs"]) & np.isfinite(pair["ours"])]
        difference = (pair["theirs"] - pair["ours"]).abs()
        compared[theirs_name] = {
            "n_compared": len(pair),
            "cell_eval_compared": pair["theirs"].mean(),
            "ours": pair["ours"].mean(),
            "abs_difference": abs(pair["theirs"].mean() - pair["ours"].mean()),
            "max_abs_difference": difference.max() if len(pair) else np.nan,
        }
    return compared


def _summary_rows(
    method: str,
    runs: list[_Run],
    evaluations: list[Evaluation],
    baselines: list[Evaluation],
    profile_metrics: tuple[str, ...],
) -> list[dict[str, Any]]:
    from cell_eval import metrics_registry

    keys = ["seed", CELL_LINE, PERTURBATION]
    theirs = pd.concat(
        [
            evaluation.results.to_pandas()
            .rename(columns={"perturbation": PERTURBATION})
            .assign(seed=run.seed, **{CELL_LINE: run.cell_line})
            for run, evaluation in zip(runs, evaluations, strict=True)
        ]
    ).set_index(keys)
    ours = pd.concat(
        [run.ours.reset_index().assign(seed=run.seed, **{CELL_LINE: run.cell_line}) for run in runs]
    ).set_index(keys)
    ours = ours.loc[theirs.index]
    user_mean = pooled_agg([e.results for e in evaluations]).to_pandas().set_index("statistic")
    base_mean = pooled_agg([e.results for e in baselines]).to_pandas().set_index("statistic")
    scores = score(
        [e.results for e in evaluations], [e.results for e in baselines], profile_metrics
    ).set_index("metric")["from_baseline"]
    compared = _comparison(theirs, ours)
    rows = []
    for metric in theirs.columns:
        # cell-eval's best value: "one", "zero" ("none" and sub-metrics: no direction)
        best = (
            metrics_registry.get_metric(metric).best_value.value
            if metric in metrics_registry.metrics
            else None
        )
        rows.append(
            {
                "method": method,
                "metric": metric,
                "ours_metric": SHARED_METRICS.get(metric),
                "higher_is_better": {"one": True, "zero": False}.get(best),
                "n_conditions": int(theirs[metric].size),
                "cell_eval": float(user_mean.loc["mean", metric]),
                "baseline": float(base_mean.loc["mean", metric]),
                "score": float(scores.get(metric, np.nan)),
                **compared.get(metric, {"n_compared": 0}),
            }
        )
    rows.append({"method": method, "metric": "avg_score", "score": float(scores["avg_score"])})
    return rows


def evaluate_with_cell_eval(
    screen: ad.AnnData,
    split_manifest: dict[str, Any],
    parameters: CellEvalParameters,
    reporting: ReportingParameters,
    **tables: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``cell_eval_results`` and ``cell_eval_summary`` of every method's predictions.

    ``tables`` are ``<name>_predictions`` and ``<name>_metrics`` per variant and for the
    baselines (``baselines_predictions``, whose obs ``method`` names each baseline). Per method,
    seed and cell line, cell-eval reads the line's real test cells and controls, and the
    predicted cells followed by the same real controls (its predicted-side control mean, so its
    deltas are ours); its DE metrics use ``reporting.de_fdr``, as ours do. cell-eval's mean
    baseline (``cell-eval baseline``) is built per line from the same real file.

    The summary has one row per method and cell-eval metric: cell-eval's mean over every
    condition and seed (``cell_eval``; its mean baseline's: ``baseline``), its score against
    that baseline (``score``: ``from_baseline`` of ``cell-eval score`` on the pooled means, and an
    ``avg_score`` row over the profile's metrics), and for the metrics we define the same way
    (``ours_metric``) both means and their differences over the ``n_compared`` conditions where
    both are defined: ours is NaN where the real test finds no DE gene (cell-eval: 0) and
    cell-eval's pearson_delta NaN for a constant shift (ours: 0).
    """
    parameters.check_with_cell_eval()
    control_label = str(split_manifest["control_label"])
    obs = screen.obs
    test = obs[obs[SPLIT] == TEST]
    test_conditions = {
        str(line): set(group[PERTURBATION].astype(str))
        for line, group in test.groupby(CELL_LINE, observed=True)
    }
    sources = _sources(tables)
    runs = [
        run
        for name, (predictions, metrics) in sources.items()
        for run in _plan(name, predictions, metrics, screen, test_conditions)
    ]
    if not runs:
        raise CellEvalInputError(
            f"{', '.join(f'{name}.predictions' for name in sources)}: no predicted cells; "
            "rebuild them with kedro run --pipelines=reporting"
        )
    for run in runs:  # before any file is written
        check_log1p(
            dense(run.predictions.X[run.rows]), f"{run.dataset} ({run.method}, seed {run.seed})"
        )
    settings = CellEvalSettings(
        profile=parameters.profile,
        extra_metrics=parameters.extra_metrics,
        num_threads=parameters.num_threads,
        control_label=control_label,
        de_fdr=reporting.de_fdr,
    )
    start = time.perf_counter()
    expression = ExpressionRows.of(screen)
    evaluations: list[Evaluation] = []
    with tempfile.TemporaryDirectory(prefix="cell_eval_", dir=parameters.scratch_dir) as folder:
        lines: dict[str, LineEvaluation] = {}
        for number, run in enumerate(runs):
            if run.cell_line not in lines:
                lines[run.cell_line] = LineEvaluation(
                    screen, expression, run.cell_line, Path(folder) / f"line_{len(lines)}", settings
                )
            line = lines[run.cell_line]
            predicted = predicted_cells(run.predictions, run.rows, line.real, control_label)
            evaluations.append(line.evaluate(predicted, f"run_{number}"))
    results = pd.concat([_long(run, e) for run, e in zip(runs, evaluations, strict=True)])
    profile_metrics = evaluations[0].profile_metrics
    summary = []
    for method in dict.fromkeys(run.method for run in runs):
        chosen = [i for i, run in enumerate(runs) if run.method == method]
        method_runs = [runs[i] for i in chosen]
        baselines = [
            lines[name].baseline for name in dict.fromkeys(r.cell_line for r in method_runs)
        ]
        summary += _summary_rows(
            method, method_runs, [evaluations[i] for i in chosen], baselines, profile_metrics
        )
    summary = pd.DataFrame(summary, columns=SUMMARY_COLUMNS).astype(
        {"n_conditions": "Int64", "n_compared": "Int64", "higher_is_better": "boolean"}
    )
    logger.info(
        "cell-eval (%s + %s) on %d runs of %d methods in %.1f s; largest |cell-eval - ours| per "
        "shared metric: %s",
        parameters.profile,
        ", ".join(parameters.extra_metrics),
        len(runs),
        summary["method"].nunique(),
        time.perf_counter() - start,
        summary.groupby("metric")["max_abs_difference"].max().dropna().round(8).to_dict(),
    )
    return results.reset_index(drop=True), summary
