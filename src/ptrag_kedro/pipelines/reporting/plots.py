"""Figures of the ``reporting`` pipeline (matplotlib PNGs, and plotly JSON for kedro-viz)."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from ptrag_kedro.metrics import METRICS
from ptrag_kedro.pipelines.reporting.nodes import GATES_KEY
from ptrag_kedro.plotting import new_figure


def metric_bars(comparison: pd.DataFrame) -> tuple[Figure, go.Figure]:
    """One panel per metric: mean per method with the sd over seeds as error bars."""
    names = list(METRICS)
    columns = 4
    rows = int(np.ceil(len(names) / columns))
    figure, axes = new_figure(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    interactive = make_subplots(
        rows=rows, cols=columns, subplot_titles=[f"{name} {METRICS[name].arrow}" for name in names]
    )
    for position, name in enumerate(names):
        axis = axes[position // columns][position % columns]
        table = comparison[comparison["metric"] == name]
        methods = [str(method) for method in table["method"]]
        colours = [
            "C1" if method in ("state", "vanilla_rag", "ptrag") else "C7" for method in methods
        ]
        axis.bar(methods, table["mean"], yerr=table["sd"], color=colours, capsize=3)
        axis.set_title(f"{name} {METRICS[name].arrow}")
        axis.tick_params(axis="x", rotation=60, labelsize=8)
        interactive.add_trace(
            go.Bar(
                x=methods,
                y=table["mean"],
                error_y={"type": "data", "array": table["sd"]},
                name=name,
                showlegend=False,
            ),
            row=position // columns + 1,
            col=position % columns + 1,
        )
    for position in range(len(names), rows * columns):
        axes[position // columns][position % columns].axis("off")
    figure.suptitle(
        "Test conditions: models (orange) and baselines (grey); ↓ lower / ↑ higher is better"
    )
    interactive.update_layout(
        height=320 * rows, title_text="Models and baselines on the test conditions"
    )
    return figure, interactive


def w1_scatter(state: pd.DataFrame, ptrag: pd.DataFrame) -> Figure:
    """Per test perturbation: PT-RAG's W1 against STATE's (below the diagonal: PT-RAG closer)."""

    def per_condition(metrics: pd.DataFrame) -> pd.Series:
        rows = metrics[(metrics["level"] == "condition") & (metrics["metric"] == "w1")]
        return rows.groupby(["cell_line", "perturbation"])["value"].mean()

    paired = pd.concat(
        {"state": per_condition(state), "ptrag": per_condition(ptrag)}, axis=1
    ).dropna()
    figure, axis = new_figure(figsize=(4.5, 4.5))
    axis.scatter(paired["state"], paired["ptrag"], s=18, alpha=0.8)
    low, high = float(paired.min().min()), float(paired.max().max())
    axis.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
    better = int((paired["ptrag"] < paired["state"]).sum())
    axis.set(
        xlabel="STATE W1",
        ylabel="PT-RAG W1",
        title=f"W1 per test perturbation (PT-RAG lower: {better}/{len(paired)})",
    )
    return figure


def loss_curves(state: pd.DataFrame, vanilla_rag: pd.DataFrame, ptrag: pd.DataFrame) -> Figure:
    """Training energy (smoothed) and validation energy of every variant."""
    figure, axes = new_figure(1, 2, figsize=(10, 3.6))
    for colour, (name, history) in enumerate(
        (("state", state), ("vanilla_rag", vanilla_rag), ("ptrag", ptrag))
    ):
        for seed, rows in history.groupby("seed"):
            train = rows[rows["split"] == "train"]
            window = max(1, len(train) // 50)
            axes[0].plot(
                train["step"],
                train["energy"].rolling(window, min_periods=1).mean(),
                color=f"C{colour}",
                label=f"{name} (seed {seed})",
            )
            val = rows[rows["split"] == "val"]
            axes[1].plot(
                val["step"], val["energy"], "o-", color=f"C{colour}", label=f"{name} (seed {seed})"
            )
    axes[0].set(xlabel="step", ylabel="energy distance", title="Training (moving average)")
    axes[1].set(xlabel="step", ylabel="energy distance", title="Validation")
    axes[1].legend(fontsize=8)
    return figure


def gate_heatmap(ptrag_predictions: ad.AnnData, n_perturbations: int = 8) -> tuple[Figure, float]:
    """Which candidates PT-RAG's gates kept for a few test perturbations; overall kept fraction."""
    gates = ptrag_predictions.uns[GATES_KEY]
    first_seed = gates[gates["seed"] == gates["seed"].min()]
    conditions = first_seed[["cell_line", "perturbation"]].drop_duplicates().head(n_perturbations)
    chosen = first_seed.merge(conditions)
    matrix = chosen.pivot_table(
        index=["cell_line", "perturbation"], columns="rank", values="kept_fraction"
    )
    overall = float(gates["kept_fraction"].mean())
    figure, axis = new_figure(
        figsize=(max(6.0, 2.5 + 0.4 * matrix.shape[1]), 1.5 + 0.4 * len(matrix))
    )
    image = axis.imshow(matrix.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axis.set_yticks(
        range(len(matrix)), [f"{line}/{name}" for line, name in matrix.index], fontsize=8
    )
    axis.set_xticks(range(matrix.shape[1]), [str(rank) for rank in matrix.columns], fontsize=8)
    axis.set(
        xlabel="candidate rank",
        title=f"PT-RAG: cells keeping each candidate\n(overall kept fraction {overall:.3f})",
    )
    figure.colorbar(image, ax=axis, fraction=0.03)
    return figure, overall


def write_report(
    comparison_table: str,
    retrieval_diagnostics: dict[str, Any],
    kept_fraction: float,
    baselines: ad.AnnData,
) -> str:
    """The markdown report: the comparison, PT-RAG's gates and the retrieval diagnostics."""
    lines = ["# ptrag-kedro: test-set comparison", "", comparison_table, "## PT-RAG gates", ""]
    lines.append(f"Fraction of (cell, candidate) pairs kept at inference: {kept_fraction:.4f}.")
    fallbacks = list(baselines.uns.get("perturbation_mean_fallbacks", []))
    lines += ["", "## Baselines", ""]
    lines.append(
        "control_mean predicts no change; perturbation_mean adds the perturbation's mean shift in the "
        "lines where it is train; linear is a ridge regression from the embedding to the mean shift. "
        f"{len(fallbacks)} test condition(s) had the perturbation in no other line (perturbation_mean = no change)."
    )
    lines += ["", "## Retrieval", ""]
    candidate = retrieval_diagnostics["candidate_similarity"]
    pairs = retrieval_diagnostics["train_pair_similarity"]
    lines.append(
        f"Top-{retrieval_diagnostics['k']} candidates over {retrieval_diagnostics['n_train']} train perturbations: "
        f"median cosine similarity {candidate['q50']:.3f} (all train pairs: {pairs['q50']:.3f})."
    )
    precision = retrieval_diagnostics.get("module_precision")
    if precision:
        lines.append(
            f"Candidates sharing the query's true module: {precision['precision']:.3f} (random "
            f"{precision['random_expectation']:.3f}, best possible {precision['best_possible']:.3f})."
        )
    return "\n".join(lines) + "\n"
