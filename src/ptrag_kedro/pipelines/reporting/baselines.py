"""Baselines beside the models in every table, each predicting cells for a test condition.

Every baseline starts from the same control cells the models predicted from (the draw of
``SentenceSampler.prediction_controls``), and all but ``context`` add a mean shift to them
(clipped at zero like the models' ReLU output):

- ``control_mean``: no shift (predicts no change);
- ``perturbation_mean``: the perturbation's mean shift in the lines where it is train (no shift
  when it is train nowhere else);
- ``context``: not the controls at all, but cells drawn from the line's train-perturbed cells:
  the line-wide systematic shift with no perturbation-specific part (Systema);
- ``linear``: ridge regression from the GenePT embedding to the mean shift, fitted on every
  train (line, perturbation), its alpha chosen on the val groups;
- ``line_linear``: the same with a one-hot of the cell line beside the embedding (a per-line
  intercept: the line's systematic shift plus a shared embedding effect).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge

from ptrag_kedro.expression_rows import ExpressionRows
from ptrag_kedro.models.sentences import SentenceGroup, SentenceSpec, samplers_for
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.pipelines.reporting.inference import block_obs, predictions_anndata
from ptrag_kedro.schema import CELL_LINE, PERTURBATION, SPLIT, TEST, TRAIN, VAL, condition_seed
from ptrag_kedro.shifts import mean_shifts

logger = logging.getLogger(__name__)


@dataclass
class BaselineData:
    """What the baselines learn from: train shifts, val shifts, embeddings and line cells."""

    train: pd.DataFrame  # cell_line, perturbation, n_cells per train group
    train_shifts: np.ndarray  # [groups, genes]
    val: pd.DataFrame
    val_shifts: np.ndarray
    embeddings: pd.DataFrame
    cell_lines: list[str]
    context_rows: dict[str, np.ndarray]  # line -> rows of its train-perturbed cells
    ridge: dict[str, tuple[Ridge, dict[str, Any]]] = field(default_factory=dict)
    fallbacks: dict[str, list[str]] = field(default_factory=dict)

    def features(
        self, lines: pd.Series | list[str], names: pd.Series | list[str], line_aware: bool
    ):
        """Ridge inputs: the embedding, and with ``line_aware`` a one-hot of the line."""
        vectors = self.embeddings.loc[list(names)].to_numpy(dtype=np.float64)
        if not line_aware:
            return vectors
        one_hot = (np.asarray(list(lines))[:, None] == np.asarray(self.cell_lines)[None, :]) * 1.0
        return np.hstack([vectors, one_hot])


def _embedded(groups: pd.DataFrame, shifts: np.ndarray, embeddings: pd.DataFrame):
    keep = groups[PERTURBATION].isin(embeddings.index).to_numpy()
    return groups[keep].reset_index(drop=True), shifts[keep]


def baseline_data(
    screen: ad.AnnData, embeddings: pd.DataFrame, reporting: ReportingParameters
) -> BaselineData:
    """Train and val shifts, the context cells, and the ridge fits with alphas tuned on val."""
    groups, shifts = _embedded(*mean_shifts(screen, [TRAIN, VAL]), embeddings)  # one pass over X
    is_train_group = (groups[SPLIT] == TRAIN).to_numpy()
    train, train_shifts = groups[is_train_group].reset_index(drop=True), shifts[is_train_group]
    val, val_shifts = groups[~is_train_group].reset_index(drop=True), shifts[~is_train_group]
    obs = screen.obs
    is_train = (obs[SPLIT] == TRAIN).to_numpy()
    lines = obs[CELL_LINE].astype(str).to_numpy()
    data = BaselineData(
        train,
        train_shifts,
        val,
        val_shifts,
        embeddings,
        sorted(set(lines)),
        {line: np.flatnonzero(is_train & (lines == line)) for line in sorted(set(lines))},
    )
    for name, line_aware in (("linear", False), ("line_linear", True)):
        if name in reporting.baselines:
            data.ridge[name] = _tuned_ridge(data, line_aware, reporting.ridge_alphas)
    return data


def _tuned_ridge(
    data: BaselineData, line_aware: bool, alphas: tuple[float, ...]
) -> tuple[Ridge, dict[str, Any]]:
    """Ridge fitted on the train shifts, alpha chosen by mean squared error on the val shifts."""
    inputs = data.features(data.train[CELL_LINE], data.train[PERTURBATION], line_aware)
    fits = {alpha: Ridge(alpha=alpha).fit(inputs, data.train_shifts) for alpha in alphas}
    if len(data.val) == 0:
        alpha = sorted(alphas)[len(alphas) // 2]
        logger.warning("No embedded val groups to tune the ridge alpha; using %g", alpha)
        return fits[alpha], {"alpha": alpha, "val_mse": {}}
    val_inputs = data.features(data.val[CELL_LINE], data.val[PERTURBATION], line_aware)
    val_mse = {
        alpha: float(np.mean((fit.predict(val_inputs) - data.val_shifts) ** 2))
        for alpha, fit in fits.items()
    }
    alpha = min(val_mse, key=val_mse.get)
    return fits[alpha], {"alpha": alpha, "val_mse": {str(a): v for a, v in val_mse.items()}}


def _no_change(data: BaselineData, group: SentenceGroup, expression, controls, rng):
    return controls


def _perturbation_mean(data: BaselineData, group: SentenceGroup, expression, controls, rng):
    elsewhere = (data.train[PERTURBATION] == group.perturbation).to_numpy() & (
        data.train[CELL_LINE] != group.cell_line
    ).to_numpy()
    if not elsewhere.any():
        data.fallbacks.setdefault("perturbation_mean", []).append(_name(group))
        return controls
    return np.maximum(controls + data.train_shifts[elsewhere].mean(0), 0.0)


def _context(data: BaselineData, group: SentenceGroup, expression: ExpressionRows, controls, rng):
    pool = data.context_rows.get(group.cell_line, np.zeros(0, dtype=np.int64))
    if not len(pool):
        data.fallbacks.setdefault("context", []).append(_name(group))
        return controls
    return expression[np.sort(rng.choice(pool, len(controls)))]


def _ridge(name: str, line_aware: bool) -> Callable:
    def predict(data: BaselineData, group: SentenceGroup, expression, controls, rng):
        model, _ = data.ridge[name]
        inputs = data.features([group.cell_line], [group.perturbation], line_aware)
        return np.maximum(controls + model.predict(inputs)[0], 0.0)

    return predict


#: name -> function(data, group, expression rows, controls [n, G], rng) -> predicted cells [n, G]
BASELINES: dict[str, Callable] = {
    "control_mean": _no_change,
    "perturbation_mean": _perturbation_mean,
    "context": _context,
    "linear": _ridge("linear", False),
    "line_linear": _ridge("line_linear", True),
}


def _name(group: SentenceGroup) -> str:
    return f"{group.cell_line}/{group.perturbation}"


def predict_baselines(
    screen: ad.AnnData,
    perturbation_embeddings: pd.DataFrame,
    split_manifest: dict[str, Any],
    reporting: ReportingParameters,
) -> tuple[ad.AnnData, dict[str, Any]]:
    """Every baseline's predicted cells (obs ``method``) and a summary (alphas, fallbacks)."""
    unknown = sorted(set(reporting.baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"reporting.baselines: unknown {unknown}; known: {sorted(BASELINES)}")
    data = baseline_data(screen, perturbation_embeddings, reporting)
    spec = SentenceSpec(cell_set_size=1, same_batch_controls=reporting.same_batch_controls)
    sampler = samplers_for(
        (TEST,), spec, screen, split_manifest, perturbation_embeddings, pd.DataFrame(), None
    )[TEST]
    cell_names = screen.obs_names.to_numpy()
    blocks, obs_rows = [], []
    for index, group in enumerate(sampler.groups):
        control_rows = sampler.prediction_controls(index, reporting.seed)
        controls = sampler.expression[control_rows]
        key = condition_seed(group.cell_line, group.perturbation)
        rng = np.random.default_rng([reporting.seed, key, 1])
        for method in reporting.baselines:
            blocks.append(BASELINES[method](data, group, sampler.expression, controls, rng))
            obs_rows.append(block_obs(group, 0, cell_names[control_rows], method=method))
    predictions = predictions_anndata(blocks, obs_rows, screen)
    predictions.obs["method"] = pd.Categorical(
        predictions.obs["method"], categories=list(reporting.baselines)
    )
    summary = {
        "baselines": list(reporting.baselines),
        "n_conditions": len(sampler.groups),
        "fallbacks": {name: sorted(set(items)) for name, items in data.fallbacks.items()},
        "ridge": {name: info for name, (_, info) in data.ridge.items()},
    }
    logger.info(
        "Baselines %s for %d test conditions", ", ".join(reporting.baselines), len(sampler.groups)
    )
    return predictions, summary
