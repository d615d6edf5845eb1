"""Our predictions in the files Arc's cell-eval reads, and cell-eval's metrics and score on them.

cell-eval (0.8.2, the optional ``eval`` extra) is a second opinion on the same predictions: per
cell line it reads a *real* h5ad (the line's real test cells and controls) and a *predicted* one
(a method's predicted cells), obs ``perturbation`` naming each cell's perturbation and the
control label naming the controls. It takes the predicted side's control mean (its deltas, its
DE reference) from control cells inside the predicted file, so the predicted file carries the
SAME real controls: its deltas are then ours.

Only cell-eval's public API is used (``MetricsEvaluator``, ``build_base_mean_adata``,
``score_agg_metrics``, ``metrics_registry``), always with ``break_on_error=True``: cell-eval
otherwise logs a failing metric and drops its column. Nothing here imports cell-eval at module
level; :func:`require_cell_eval` says how to install it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from ptrag_kedro.errors import UserError
from ptrag_kedro.expression_rows import ExpressionRows, dense
from ptrag_kedro.h5ad_writer import write_anndata
from ptrag_kedro.schema import CELL_LINE, CONTROL, PERTURBATION, SPLIT, TEST

if TYPE_CHECKING:
    import polars as pl

#: cell-eval's metric -> ours, for the metrics both define the same way (given the real
#: controls on the predicted side). cell-eval's ``mse`` and ``mae`` are errors of the mean
#: expression, not of the deltas, like ours.
SHARED_METRICS = {
    "pearson_delta": "pearson_delta",
    "mse": "mse",
    "mae": "mae",
    "discrimination_score_l1": "discrimination_l1",
    "overlap_at_N": "de_overlap_fdr",
}

#: cell-eval profiles (``cell_eval.KNOWN_PROFILES``), here so parameters validate without it.
PROFILES = ("full", "minimal", "vcc", "de", "anndata", "pds")

#: cell-eval's range check of log1p data (``cell_eval.utils.guess_is_lognorm``).
_LOG1P_MAX = 15.0

INSTALL_HINT = "cell-eval is not installed: pip install -e '.[eval]' (make install-dev)"


class CellEvalMissingError(UserError, ImportError):
    """The optional ``eval`` extra (cell-eval) is not installed."""


class CellEvalInputError(UserError, ValueError):
    """Predictions, screen or metric tables cannot be compared with cell-eval; the message
    names the dataset."""


def require_cell_eval() -> ModuleType:
    """The ``cell_eval`` package, or a one-line error saying how to install it.

    Only its absence is turned into that error: a broken installation keeps its traceback.
    """
    if importlib.util.find_spec("cell_eval") is None:
        raise CellEvalMissingError(INSTALL_HINT)
    import cell_eval

    return cell_eval


def check_log1p(values: np.ndarray, what: str) -> None:
    """Refuse expression cell-eval would transform or reject: it log-normalises a matrix without
    fractional values in place (taking it for counts) and rejects values < 0 or >= 15."""
    if values.size == 0:
        raise CellEvalInputError(f"{what}: no cells to evaluate")
    if not np.any(np.modf(values)[0] > 1e-3):
        raise CellEvalInputError(
            f"{what}: expression has no fractional values; cell-eval would take it for counts "
            "and normalise it itself (the screen must be log-normalised)"
        )
    low, high = float(values.min()), float(values.max())
    if low < 0 or high >= _LOG1P_MAX:
        raise CellEvalInputError(
            f"{what}: expression in [{low:.3g}, {high:.3g}]; cell-eval needs log1p data in "
            f"[0, {_LOG1P_MAX:g})"
        )


def real_cells(
    screen: ad.AnnData, expression: ExpressionRows, cell_line: str, control_label: str
) -> ad.AnnData:
    """The line's real test cells and its controls (labelled ``control_label``), obs
    ``perturbation`` only, in the screen's gene order."""
    obs = screen.obs
    chosen = np.flatnonzero(
        (obs[CELL_LINE].astype(str) == cell_line).to_numpy()
        & obs[SPLIT].isin([TEST, CONTROL]).to_numpy()
    )
    is_control = (obs[SPLIT].iloc[chosen] == CONTROL).to_numpy()
    labels = np.where(is_control, control_label, obs[PERTURBATION].iloc[chosen].astype(str))
    return ad.AnnData(
        X=expression[chosen],
        obs=pd.DataFrame(
            {PERTURBATION: pd.Categorical(labels)}, index=obs.index[chosen].astype(str)
        ),
        var=pd.DataFrame(index=screen.var_names.astype(str)),
    )


def predicted_cells(
    predictions: ad.AnnData, rows: np.ndarray, real: ad.AnnData, control_label: str
) -> ad.AnnData:
    """The predicted cells at ``rows`` of ``predictions``, then the real controls of ``real``
    (cell-eval's predicted-side control mean and DE reference)."""
    labels = predictions.obs[PERTURBATION].iloc[rows].astype(str).to_numpy()
    predicted = ad.AnnData(
        X=dense(predictions.X[rows]).astype(np.float32),
        obs=pd.DataFrame(
            {PERTURBATION: pd.Categorical(labels)},
            index=[f"predicted_{row}" for row in rows],
        ),
        var=real.var.copy(),
    )
    controls = real[(real.obs[PERTURBATION] == control_label).to_numpy()]
    return ad.concat([predicted, controls.to_memory()], merge="same")


def _fdr_metric_configs(fdr: float) -> dict[str, dict[str, Any]]:
    """Every registered DE metric that takes an FDR threshold, at ``fdr``."""
    from cell_eval import MetricType, metrics_registry

    configs = {}
    for name in metrics_registry.list_metrics(MetricType.DE):
        func = metrics_registry.get_metric(name).func
        signature = inspect.signature(func.__init__ if inspect.isclass(func) else func)
        if "fdr_threshold" in signature.parameters:
            configs[name] = {"fdr_threshold": fdr}
    return configs


@contextlib.contextmanager
def _registry_kwargs_restored() -> Iterator[None]:
    """cell-eval writes ``metric_configs`` into its global registry: put it back afterwards."""
    from cell_eval import metrics_registry

    saved = {
        name: dict(info.kwargs) if info.kwargs is not None else None
        for name, info in metrics_registry.metrics.items()
    }
    try:
        yield
    finally:
        for name, kwargs in saved.items():
            metrics_registry.get_metric(name).kwargs = kwargs


@dataclass(frozen=True)
class CellEvalSettings:
    """How cell-eval runs: its profile, the metrics run beside it, its DE threads, the control
    label and the FDR of its DE metrics (ours: ``reporting.de_fdr``)."""

    profile: str = "vcc"
    extra_metrics: tuple[str, ...] = ("pearson_delta", "mse")
    num_threads: int = 1
    control_label: str = "non-targeting"
    de_fdr: float = 0.05


@dataclass(frozen=True)
class Evaluation:
    """cell-eval's values of one predicted file: one row per perturbation (polars, as cell-eval
    returns them), the profile's metrics first."""

    results: pl.DataFrame
    profile_metrics: tuple[str, ...]


def evaluate_files(
    real_path: Path,
    predicted_path: Path,
    outdir: Path,
    settings: CellEvalSettings,
    de_real: pl.DataFrame | None = None,
) -> tuple[Evaluation, pl.DataFrame]:
    """cell-eval's profile and extra metrics of one predicted file against one real file, and
    the real side's DE table (pass it back as ``de_real`` to skip that test next time)."""
    from cell_eval import MetricsEvaluator, metrics_registry

    evaluator = MetricsEvaluator(
        adata_pred=str(predicted_path),
        adata_real=str(real_path),
        de_real=de_real,
        control_pert=settings.control_label,
        pert_col=PERTURBATION,
        num_threads=settings.num_threads,
        outdir=str(outdir),
    )
    configs = _fdr_metric_configs(settings.de_fdr)
    with _registry_kwargs_restored():
        results, _ = evaluator.compute(
            profile=settings.profile,
            metric_configs=configs,
            write_csv=False,
            break_on_error=True,
        )
        profile_metrics = tuple(name for name in results.columns if name != "perturbation")
        extras = [name for name in settings.extra_metrics if name not in profile_metrics]
        if extras:
            more, _ = evaluator.compute(
                profile="full",
                metric_configs=configs,
                skip_metrics=[
                    name for name in metrics_registry.list_metrics() if name not in extras
                ],
                write_csv=False,
                break_on_error=True,
            )
            if more["perturbation"].sort().to_list() != results["perturbation"].sort().to_list():
                raise ValueError("cell-eval's extra metrics cover other perturbations")
            results = results.join(more, on="perturbation", how="left")
    return Evaluation(results, profile_metrics), evaluator.de_comparison.real.data


class LineEvaluation:
    """One cell line in cell-eval's layout under ``folder``: its real file, cell-eval's mean
    baseline built from it and evaluated once, and the real DE table every method reuses."""

    def __init__(
        self,
        screen: ad.AnnData,
        expression: ExpressionRows,
        cell_line: str,
        folder: Path,
        settings: CellEvalSettings,
    ) -> None:
        from cell_eval import build_base_mean_adata

        self.cell_line, self.folder, self.settings = cell_line, folder, settings
        folder.mkdir(parents=True)
        self.real = real_cells(screen, expression, cell_line, settings.control_label)
        check_log1p(self.real.X, f"screen (cell line {cell_line})")
        self.real_path = folder / "real.h5ad"
        write_anndata(self.real_path, self.real)
        # `cell-eval baseline`: every perturbed cell the mean of the group means (cell-eval
        # includes the control group's mean in that average), then the real controls.
        baseline_path = folder / "base_mean.h5ad"
        build_base_mean_adata(
            str(self.real_path),
            pert_col=PERTURBATION,
            control_pert=settings.control_label,
            output_path=str(baseline_path),
            num_threads=settings.num_threads,
        )
        self.baseline, self.de_real = evaluate_files(
            self.real_path, baseline_path, folder / "base_mean", settings
        )

    def evaluate(self, predicted: ad.AnnData, name: str) -> Evaluation:
        """cell-eval's metrics of one method's predicted cells (with the real controls)."""
        path = self.folder / f"{name}.h5ad"
        write_anndata(path, predicted)
        evaluation, _ = evaluate_files(
            self.real_path, path, self.folder / name, self.settings, self.de_real
        )
        path.unlink()  # the folder holds one predicted file at a time
        return evaluation


def pooled_agg(results: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """cell-eval's ``agg_results`` of several runs' results pooled (``describe()`` of their
    rows): the mean row is the mean over every (run, perturbation)."""
    import polars as pl

    return pl.concat(list(results), how="vertical").drop("perturbation").describe()


def score(
    user: Sequence[pl.DataFrame], base: Sequence[pl.DataFrame], profile_metrics: Sequence[str]
) -> pd.DataFrame:
    """``cell-eval score`` of the pooled user results against the pooled baseline results:
    columns ``metric``, ``from_baseline`` (every metric cell-eval knows the best value of) and
    an ``avg_score`` row, the mean over the profile's metrics (vcc: the Virtual Cell Challenge
    score)."""
    from cell_eval import score_agg_metrics

    user_agg, base_agg = pooled_agg(user), pooled_agg(base)
    columns = ["statistic", *[name for name in user_agg.columns if name != "statistic"]]
    every = score_agg_metrics(user_agg.select(columns), base_agg.select(columns)).to_pandas()
    profiled = score_agg_metrics(
        user_agg.select(["statistic", *profile_metrics]),
        base_agg.select(["statistic", *profile_metrics]),
    ).to_pandas()
    per_metric = every[every["metric"] != "avg_score"]
    return pd.concat([per_metric, profiled[profiled["metric"] == "avg_score"]], ignore_index=True)
