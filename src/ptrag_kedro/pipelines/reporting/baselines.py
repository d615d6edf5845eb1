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
  intercept: the line's systematic shift plus a shared embedding effect);
- ``additive``: the line's context shift (the cell-weighted mean shift of its train-perturbed
  cells) plus the mean, over the other lines where the gene is train, of its line-specific
  shift there (its shift minus that line's context): what response retrieval's first slot
  carries. A gene train in no other line (every unseen gene) falls back to the context shift;
- ``neighbour_mean``: the mean shift of the query's k nearest GenePT neighbours among the
  train perturbations of its own line (cosine similarity), k chosen on the val groups: the
  simple competitor of retrieval on unseen genes.

Everything a baseline learns (shifts, contexts, ridge fits, k) comes from train groups; only
its one hyper-parameter (alpha, k) is chosen on val. Fallbacks are listed in the summary.
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
from ptrag_kedro.models.sentences import SentenceGroup, SentenceSpec, checked_samplers
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.pipelines.reporting.inference import block_obs, predictions_anndata
from ptrag_kedro.retrieval import l2_normalise
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
    neighbours: dict[str, Any] = field(default_factory=dict)  # k and its val errors
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

    def in_line(self, line: str) -> np.ndarray:
        """The train groups of ``line`` (a boolean mask of ``train``)."""
        return (self.train[CELL_LINE] == line).to_numpy()

    def context_shift(self, line: str) -> np.ndarray | None:
        """The cell-weighted mean shift of the line's train-perturbed cells (None: it has none)."""
        rows = self.in_line(line)
        if not rows.any():
            return None
        weights = self.train.loc[rows, "n_cells"].to_numpy(dtype=np.float64)
        return weights @ self.train_shifts[rows] / weights.sum()

    def transferred(self, line: str, perturbation: str) -> list[np.ndarray]:
        """The gene's line-specific shifts (shift minus that line's context) in every other
        line where it is train."""
        elsewhere = (self.train[PERTURBATION] == perturbation).to_numpy() & ~self.in_line(line)
        return [
            self.train_shifts[row] - self.context_shift(other)
            for row, other in zip(
                np.flatnonzero(elsewhere), self.train.loc[elsewhere, CELL_LINE], strict=True
            )
        ]

    def additive_shift(self, line: str, perturbation: str) -> np.ndarray | None:
        """Context of ``line`` + the mean of :meth:`transferred` (None: the line has no train
        group; the context alone when the gene is train in no other line)."""
        context = self.context_shift(line)
        if context is None:
            return None
        specific = self.transferred(line, perturbation)
        return context + np.mean(specific, axis=0) if specific else context

    def neighbour_shift(self, line: str, perturbation: str, k: int) -> np.ndarray | None:
        """The mean shift of the ``k`` most similar train perturbations of ``line`` (cosine
        similarity of the embeddings; ties by name), never the query itself."""
        rows = np.flatnonzero(
            self.in_line(line) & (self.train[PERTURBATION] != perturbation).to_numpy()
        )
        if not len(rows):
            return None
        names = self.train[PERTURBATION].to_numpy()[rows]
        vectors = l2_normalise(self.embeddings.loc[list(names)].to_numpy())
        query = l2_normalise(self.embeddings.loc[[perturbation]].to_numpy())[0]
        order = np.lexsort((names.astype(str), -(vectors @ query)))[:k]
        return self.train_shifts[rows[order]].mean(axis=0)


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
    if "neighbour_mean" in reporting.baselines:
        data.neighbours = _tuned_neighbours(data, reporting.neighbour_ks)
    return data


def _tuned_neighbours(data: BaselineData, ks: tuple[int, ...]) -> dict[str, Any]:
    """k of ``neighbour_mean`` by mean squared error of the val groups' shifts."""
    val_mse = {}
    for k in ks:
        errors = [
            np.mean((shift - data.val_shifts[position]) ** 2)
            for position, (line, name) in enumerate(
                zip(data.val[CELL_LINE], data.val[PERTURBATION], strict=True)
            )
            if (shift := data.neighbour_shift(line, name, k)) is not None
        ]
        if errors:
            val_mse[k] = float(np.mean(errors))
    if not val_mse:
        k = sorted(ks)[len(ks) // 2]
        logger.warning("No embedded val groups to tune neighbour_mean's k; using %d", k)
        return {"k": k, "val_mse": {}}
    k = min(val_mse, key=val_mse.get)
    return {"k": int(k), "val_mse": {str(key): value for key, value in val_mse.items()}}


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


def _additive(data: BaselineData, group: SentenceGroup, expression, controls, rng):
    shift = data.additive_shift(group.cell_line, group.perturbation)
    if shift is None or not data.transferred(group.cell_line, group.perturbation):
        data.fallbacks.setdefault("additive", []).append(_name(group))
    if shift is None:
        return controls
    return np.maximum(controls + shift, 0.0)


def _neighbour_mean(data: BaselineData, group: SentenceGroup, expression, controls, rng):
    shift = data.neighbour_shift(group.cell_line, group.perturbation, data.neighbours["k"])
    if shift is None:
        data.fallbacks.setdefault("neighbour_mean", []).append(_name(group))
        return controls
    return np.maximum(controls + shift, 0.0)


#: name -> function(data, group, expression rows, controls [n, G], rng) -> predicted cells [n, G]
BASELINES: dict[str, Callable] = {
    "control_mean": _no_change,
    "perturbation_mean": _perturbation_mean,
    "context": _context,
    "linear": _ridge("linear", False),
    "line_linear": _ridge("line_linear", True),
    "additive": _additive,
    "neighbour_mean": _neighbour_mean,
}
#: What a fallback means, per baseline (the summary and the report say it).
FALLBACK = {
    "perturbation_mean": "no change (the gene is train in no other line)",
    "context": "no change (the line has no train-perturbed cells)",
    "additive": "the context shift alone (the gene is train in no other line)",
    "neighbour_mean": "no change (the line has no train perturbation)",
}


def _name(group: SentenceGroup) -> str:
    return f"{group.cell_line}/{group.perturbation}"


def predict_baselines(
    screen: ad.AnnData,
    perturbation_embeddings: pd.DataFrame,
    split_manifest: dict[str, Any],
    reporting: ReportingParameters,
    split: str = TEST,
) -> tuple[ad.AnnData, dict[str, Any]]:
    """Every baseline's predicted cells (obs ``method``) and a summary (alphas, fallbacks)."""
    spec = SentenceSpec(cell_set_size=1, same_batch_controls=reporting.same_batch_controls)
    # Checked before anything is fitted: embeddings or a manifest of another screen are refused.
    _, samplers = checked_samplers(
        (split,), spec, screen, split_manifest, perturbation_embeddings, pd.DataFrame(), None
    )
    sampler = samplers[split]
    data = baseline_data(screen, perturbation_embeddings, reporting)
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
        "fallback_means": {name: FALLBACK[name] for name in data.fallbacks},
        "ridge": {name: info for name, (_, info) in data.ridge.items()},
        "neighbour_mean": data.neighbours,
    }
    logger.info(
        "Baselines %s for %d test conditions", ", ".join(reporting.baselines), len(sampler.groups)
    )
    return predictions, summary
