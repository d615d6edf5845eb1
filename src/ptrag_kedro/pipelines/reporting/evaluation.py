"""Metrics of predicted cells against the real test cells, per (method, seed, condition)."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from ptrag_kedro.expression_rows import ExpressionRows, dense
from ptrag_kedro.metrics import MetricInputs, MetricSpec, de_genes, evaluate, metric_registry
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.schema import CELL_LINE, CONTROL, PERTURBATION, SPLIT, TEST, TRAIN, VAL
from ptrag_kedro.shifts import group_means

#: Columns of a ``<variant>.metrics`` table.
METRIC_COLUMNS = ["method", "seed", CELL_LINE, PERTURBATION, "metric", "value", "level"]


class _LineReference:
    """One cell line's real cells and what every method's predictions are compared with: its
    test and control cells, its PCA, Systema's reference, the real centroids of every perturbed
    group of the line, the real shifts of its test perturbations, and their real DE genes.

    ``groups`` and ``means`` are every perturbed (line, perturbation) group of the screen and its
    mean expression, ``control_means`` every line's control mean (``shifts.group_means``, one
    pass over X for all lines).
    """

    def __init__(
        self,
        screen: ad.AnnData,
        expression: ExpressionRows,
        line: str,
        groups: pd.DataFrame,
        means: np.ndarray,
        control_means: dict[str, np.ndarray],
        reporting: ReportingParameters,
        split: str = TEST,
    ) -> None:
        obs = screen.obs
        in_line = (obs[CELL_LINE] == line).to_numpy()
        # Only this line's test and control cells are read and made dense.
        self.split = split
        chosen = in_line & obs[SPLIT].isin([split, CONTROL]).to_numpy()
        self.obs = obs[chosen]
        self.expression = expression[np.flatnonzero(chosen)]
        self.controls = self.expression[(self.obs[SPLIT] == CONTROL).to_numpy()]
        fitted = np.vstack([self.expression[(self.obs[SPLIT] == split).to_numpy()], self.controls])
        self.pca = PCA(
            n_components=min(reporting.n_pcs, *fitted.shape), svd_solver="full", random_state=0
        ).fit(fitted)
        control_mean = control_means[line]
        self.reference_mean = reference_mean(groups, means, line, control_means)
        # Every perturbed group of the line (train, val and test), as Systema's centroids.
        in_groups = (groups[CELL_LINE] == line).to_numpy()
        self.centroid_names = groups.loc[in_groups, PERTURBATION].astype(str).tolist()
        self.centroids = means[in_groups]
        self.centroids_pca = self.pca.transform(self.centroids)
        is_test = (groups.loc[in_groups, SPLIT] == split).to_numpy()
        self.test_names = [n for n, test in zip(self.centroid_names, is_test, strict=True) if test]
        self.test_deltas = self.centroids[is_test] - control_mean
        self.gene_column = {str(gene): column for column, gene in enumerate(screen.var_names)}
        self.de_fdr = reporting.de_fdr
        self.real_de = {
            name: de_genes(self.real(name), self.controls, reporting.de_fdr)
            for name in self.test_names
        }

    def real(self, perturbation: str) -> np.ndarray:
        chosen = (self.obs[PERTURBATION] == perturbation) & (self.obs[SPLIT] == self.split)
        return self.expression[chosen.to_numpy()]

    def inputs(
        self, perturbation: str, real: np.ndarray, real_pca: np.ndarray, predicted: np.ndarray
    ) -> MetricInputs:
        return MetricInputs(
            real_genes=real,
            predicted_genes=predicted,
            control_genes=self.controls,
            reference_mean=self.reference_mean,
            real_pca=real_pca,
            predicted_pca=self.pca.transform(predicted),
            centroids=self.centroids,
            centroids_pca=self.centroids_pca,
            own_centroid=self.centroid_names.index(perturbation),
            test_deltas=self.test_deltas,
            own_test=self.test_names.index(perturbation),
            real_de=self.real_de[perturbation],
            target_gene=self.gene_column.get(perturbation, -1),
            de_fdr=self.de_fdr,
        )


def reference_mean(
    groups: pd.DataFrame, means: np.ndarray, line: str, control_means: dict[str, np.ndarray]
) -> np.ndarray:
    """Systema's reference of the perturbation-specific shift: the mean, over the line's *train*
    perturbations, of their centroids (perturbation-weighted, train cells only).

    A line with no train perturbation (the held-out line of ``zero_shot``) takes its control
    mean plus the mean over the other lines of the same quantity's shift from their controls.
    """
    train = (groups[SPLIT] == TRAIN).to_numpy()
    in_line = (groups[CELL_LINE] == line).to_numpy()
    if (train & in_line).any():
        return means[train & in_line].mean(axis=0)
    shifts = []
    for other in sorted(set(groups.loc[train, CELL_LINE])):
        rows = train & (groups[CELL_LINE] == other).to_numpy()
        shifts.append(means[rows].mean(axis=0) - control_means[other])
    return control_means[line] + np.mean(shifts, axis=0)


def _condition_rows(
    predictions: ad.AnnData,
    methods: pd.Series,
    reference: _LineReference,
    line: str,
    registry: dict[str, MetricSpec],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every metric of every (method, seed) prediction of the line's conditions, and each
    condition's chance levels."""
    rows, chance = [], []
    in_line = predictions.obs[CELL_LINE] == line
    for perturbation in predictions.obs.loc[in_line, PERTURBATION].unique():
        real = reference.real(perturbation)
        real_pca = reference.pca.transform(real)
        selected = (in_line & (predictions.obs[PERTURBATION] == perturbation)).to_numpy()
        groups = (
            predictions.obs[selected]
            .assign(method=methods[selected].to_numpy())
            .groupby(["method", "seed"], observed=True)
            .indices
        )
        positions = np.flatnonzero(selected)
        condition = {CELL_LINE: line, PERTURBATION: perturbation}
        for (method, seed), index in groups.items():
            predicted = dense(predictions.X[positions[index]])
            inputs = reference.inputs(perturbation, real, real_pca, predicted)
            values = evaluate(inputs, registry)
            rows += [
                {"method": method, "seed": seed, **condition, "metric": name, "value": value}
                for name, value in values.items()
            ]
        chance += [  # what no information scores: the same for every method
            {**condition, "metric": name, "value": spec.chance(inputs)}
            for name, spec in registry.items()
            if spec.chance is not None
        ]
    return rows, chance


def evaluate_predictions(
    predictions: ad.AnnData, screen: ad.AnnData, reporting: ReportingParameters, split: str = TEST
) -> pd.DataFrame:
    """Every metric per (method, seed, cell line, perturbation), then mean and median rows.

    PCA (``reporting.n_pcs`` components) is fitted per cell line on that line's real cells:
    every test perturbation's cells and the controls. Metrics with a chance level get a row of
    level ``chance`` per method: its mean over the conditions. ``split``: ``test`` in the
    pipeline, ``val`` where choices are made (benchmarks/choose_on_val.py).
    """
    registry = metric_registry(reporting.n_pcs, reporting.de_fdr)
    methods = (
        predictions.obs["method"].astype(str)
        if "method" in predictions.obs
        else pd.Series("model", index=predictions.obs_names)
    )
    expression = ExpressionRows.of(screen)  # X loaded (or opened) once for every line
    groups, means = group_means(screen, [TRAIN, VAL, TEST, CONTROL])  # one pass over X
    is_control = (groups[SPLIT] == CONTROL).to_numpy()
    control_means = dict(zip(groups.loc[is_control, CELL_LINE], means[is_control], strict=True))
    perturbed = groups[~is_control].reset_index(drop=True)
    rows, chance_rows = [], []
    for line in predictions.obs[CELL_LINE].unique():
        reference = _LineReference(
            screen,
            expression,
            str(line),
            perturbed,
            means[~is_control],
            control_means,
            reporting,
            split,
        )
        line_rows, line_chance = _condition_rows(
            predictions, methods, reference, str(line), registry
        )
        rows += line_rows
        chance_rows += line_chance
    return with_summary(pd.DataFrame(rows), pd.DataFrame(chance_rows))


def with_summary(conditions: pd.DataFrame, chance: pd.DataFrame) -> pd.DataFrame:
    """A metrics table from its per-condition rows (method, seed, line, perturbation, metric,
    value) and each condition's chance levels: the rows, then per (method, seed, metric) the
    mean and median over conditions, and per method each metric's mean chance level."""
    per_seed = conditions.groupby(["method", "seed", "metric"], observed=True)["value"]
    mean_chance = chance.groupby("metric", sort=False)["value"].mean() if len(chance) else {}
    chance_rows = pd.DataFrame(
        [
            {"method": method, "metric": name, "value": value}
            for method in conditions["method"].unique()
            for name, value in dict(mean_chance).items()
        ],
        columns=["method", "metric", "value"],
    )
    summary = pd.concat(
        [
            per_seed.mean().reset_index().assign(level="mean"),
            per_seed.median().reset_index().assign(level="median"),
            chance_rows.assign(level="chance"),
        ]
    )
    table = pd.concat([conditions.assign(level="condition"), summary], ignore_index=True)
    return table[METRIC_COLUMNS]
