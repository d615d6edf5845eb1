"""Metrics of predicted cells against the real test cells, per (method, seed, condition)."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA

from ptrag_kedro.expression_rows import ExpressionRows, dense
from ptrag_kedro.metrics import MetricInputs, MetricSpec, evaluate, metric_registry
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.schema import CELL_LINE, CONTROL, PERTURBATION, SPLIT, TEST

#: Columns of a ``<variant>.metrics`` table.
METRIC_COLUMNS = ["method", "seed", CELL_LINE, PERTURBATION, "metric", "value", "level"]


class _LineReference:
    """One cell line's real test and control cells, its PCA and its average perturbed cell."""

    def __init__(
        self, screen: ad.AnnData, expression: ExpressionRows, line: str, n_pcs: int
    ) -> None:
        obs = screen.obs
        in_line = (obs[CELL_LINE] == line).to_numpy()
        perturbed = in_line & (obs[SPLIT] != CONTROL).to_numpy()
        # The line's average perturbed cell over every split: the reference of the
        # perturbation-specific shift (pearson_delta_context), the same for every method.
        weights = sp.csr_matrix(perturbed[None, :] / max(1, int(perturbed.sum())))
        self.perturbed_mean = expression.row_sums(weights)[0]
        # Only this line's test and control cells are read and made dense.
        chosen = in_line & obs[SPLIT].isin([TEST, CONTROL]).to_numpy()
        self.obs = obs[chosen]
        self.expression = expression[np.flatnonzero(chosen)]
        self.controls = self.expression[(self.obs[SPLIT] == CONTROL).to_numpy()]
        fitted = np.vstack([self.expression[(self.obs[SPLIT] == TEST).to_numpy()], self.controls])
        self.pca = PCA(
            n_components=min(n_pcs, *fitted.shape), svd_solver="full", random_state=0
        ).fit(fitted)

    def real(self, perturbation: str) -> np.ndarray:
        chosen = (self.obs[PERTURBATION] == perturbation) & (self.obs[SPLIT] == TEST)
        return self.expression[chosen.to_numpy()]

    def inputs(self, real: np.ndarray, real_pca: np.ndarray, predicted: np.ndarray) -> MetricInputs:
        return MetricInputs(
            real_genes=real,
            predicted_genes=predicted,
            control_genes=self.controls,
            perturbed_mean=self.perturbed_mean,
            real_pca=real_pca,
            predicted_pca=self.pca.transform(predicted),
        )


def _condition_rows(
    predictions: ad.AnnData,
    methods: pd.Series,
    reference: _LineReference,
    line: str,
    registry: dict[str, MetricSpec],
) -> list[dict[str, Any]]:
    rows = []
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
        for (method, seed), index in groups.items():
            predicted = dense(predictions.X[positions[index]])
            values = evaluate(reference.inputs(real, real_pca, predicted), registry)
            rows += [
                {
                    "method": method,
                    "seed": seed,
                    CELL_LINE: line,
                    PERTURBATION: perturbation,
                    "metric": name,
                    "value": value,
                }
                for name, value in values.items()
            ]
    return rows


def evaluate_predictions(
    predictions: ad.AnnData, screen: ad.AnnData, reporting: ReportingParameters
) -> pd.DataFrame:
    """Every metric per (method, seed, cell line, perturbation), then mean and median rows.

    PCA (``reporting.n_pcs`` components) is fitted per cell line on that line's real cells:
    every test perturbation's cells and the controls. Metrics with a chance level get a row of
    level ``chance``.
    """
    registry = metric_registry(reporting.n_pcs, reporting.de_top_n)
    methods = (
        predictions.obs["method"].astype(str)
        if "method" in predictions.obs
        else pd.Series("model", index=predictions.obs_names)
    )
    rows = []
    expression = ExpressionRows.of(screen)  # X loaded (or opened) once for every line
    for line in predictions.obs[CELL_LINE].unique():
        reference = _LineReference(screen, expression, str(line), reporting.n_pcs)
        rows += _condition_rows(predictions, methods, reference, str(line), registry)
    table = pd.DataFrame(rows)
    per_seed = table.groupby(["method", "seed", "metric"], observed=True)["value"]
    chance = pd.DataFrame(
        [
            {"method": method, "metric": name, "value": spec.chance(screen.n_vars)}
            for method in table["method"].unique()
            for name, spec in registry.items()
            if spec.chance is not None
        ]
    )
    summary = pd.concat(
        [
            per_seed.mean().reset_index().assign(level="mean"),
            per_seed.median().reset_index().assign(level="median"),
            chance.assign(level="chance"),
        ]
    )
    return pd.concat([table.assign(level="condition"), summary], ignore_index=True)[METRIC_COLUMNS]
