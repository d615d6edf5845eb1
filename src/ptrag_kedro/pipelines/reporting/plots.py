"""Figures of the ``reporting`` pipeline (matplotlib PNGs, and plotly JSON for kedro-viz).

Every figure is drawn from tables, with the variants named by the keys they arrive under: no
variant name is written here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from ptrag_kedro.metrics import metric_registry
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.plotting import new_figure
from ptrag_kedro.schema import CELL_LINE, PERTURBATION


def metric_bars(
    comparison: pd.DataFrame, reporting: ReportingParameters
) -> tuple[Figure, go.Figure]:
    """One panel per metric: mean per method with the sd over seeds as error bars; the y axis
    spans the values (not from 0, which would hide differences of a few hundredths)."""
    registry = metric_registry(reporting.n_pcs, reporting.de_fdr)
    names = [name for name in registry if name in set(comparison["metric"])]
    columns = 4
    rows = int(np.ceil(len(names) / columns))
    figure, axes = new_figure(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    titles = [registry[name].label for name in names]
    interactive = make_subplots(rows=rows, cols=columns, subplot_titles=titles)
    for position, (name, title) in enumerate(zip(names, titles, strict=True)):
        axis = axes[position // columns][position % columns]
        table = comparison[comparison["metric"] == name]
        methods = table["method"].astype(str).tolist()
        colours = ["C1" if kind == "model" else "C7" for kind in table["kind"]]
        axis.bar(methods, table["mean"], yerr=table["sd"], color=colours, capsize=3)
        chance = table["chance"].dropna()
        shown = [*(table["mean"] - table["sd"].fillna(0)), *(table["mean"] + table["sd"].fillna(0))]
        if len(chance):
            axis.axhline(float(chance.iloc[0]), color="k", linestyle=":", linewidth=1)
            shown.append(float(chance.iloc[0]))
        low, high = float(np.nanmin(shown)), float(np.nanmax(shown))
        pad = 0.08 * (high - low) or 0.05 * max(abs(high), 1e-3)
        axis.set_ylim(low - pad, high + pad)
        axis.set_title(title)
        axis.set_ylabel(name)
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
        "Test conditions: models (orange) and baselines (grey), sd over seeds; dotted: chance; "
        "↓ lower / ↑ higher is better"
    )
    interactive.update_layout(
        height=320 * rows, title_text="Models and baselines on the test conditions"
    )
    return figure, interactive


def _w1_per_condition(metrics: pd.DataFrame) -> pd.Series:
    rows = metrics[(metrics["level"] == "condition") & (metrics["metric"] == "w1")]
    return rows.groupby([CELL_LINE, PERTURBATION])["value"].mean()


def reference_scatter(reporting: ReportingParameters, **metrics: pd.DataFrame) -> Figure:
    """Per test condition: each variant's W1 against the reference variant's (below: closer)."""
    reference = reporting.reference(list(metrics))
    others = [name for name in metrics if name != reference]
    figure, axes = new_figure(
        1, max(1, len(others)), figsize=(4.2 * max(1, len(others)), 4.2), squeeze=False
    )
    for axis, name in zip(axes[0], others, strict=False):
        paired = pd.concat(
            {
                reference: _w1_per_condition(metrics[reference]),
                name: _w1_per_condition(metrics[name]),
            },
            axis=1,
        ).dropna()
        axis.scatter(paired[reference], paired[name], s=18, alpha=0.8)
        low, high = float(paired.min().min()), float(paired.max().max())
        axis.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
        better = int((paired[name] < paired[reference]).sum())
        axis.set(
            xlabel=f"{reference} W1",
            ylabel=f"{name} W1",
            title=f"{name} lower in {better}/{len(paired)}",
        )
    return figure


def loss_curves(**histories: pd.DataFrame) -> Figure:
    """Training energy (smoothed) and validation energy of every variant."""
    figure, axes = new_figure(1, 2, figsize=(10, 3.6))
    for colour, (name, history) in enumerate(histories.items()):
        for seed, rows in history.groupby("seed"):
            train = rows[rows["split"] == "train"]
            window = max(1, len(train) // 50)
            label = f"{name} (seed {seed})"
            smoothed = train["energy"].rolling(window, min_periods=1).mean()
            axes[0].plot(train["step"], smoothed, color=f"C{colour}", label=label)
            val = rows[rows["split"] == "val"]
            axes[1].plot(val["step"], val["energy"], "o-", color=f"C{colour}", label=label)
    axes[0].set(xlabel="step", ylabel="energy distance", title="Training (moving average)")
    axes[1].set(xlabel="step", ylabel="energy distance", title="Validation")
    axes[1].legend(fontsize=7)
    return figure


def gate_summary(**gates: pd.DataFrame) -> pd.DataFrame:
    """Mean gate per variant and candidate kind, over seeds, conditions and candidates."""
    rows = []
    for name, table in gates.items():
        if table.empty:
            continue
        rows.append({"method": name, "kind": "all", "gate": float(table["gate"].mean())})
        for kind, part in table.groupby("kind", sort=False):
            rows.append({"method": name, "kind": str(kind), "gate": float(part["gate"].mean())})
    return pd.DataFrame(rows, columns=["method", "kind", "gate"])


#: Test conditions shown per variant in the gate heatmap.
HEATMAP_CONDITIONS = 8


def gate_heatmap(**gates: pd.DataFrame) -> Figure:
    """Per gated variant: how much each candidate slot was used (the gate's mean over a
    condition's cells) for the first few test conditions of the first seed; the title says how
    many of how many, and the x axis names each slot's kind (response retrieval's slots are of
    several kinds)."""
    gated = {name: table for name, table in gates.items() if not table.empty}
    figure, axes = new_figure(
        max(1, len(gated)), 1, figsize=(9, 1.8 + 2.6 * max(1, len(gated))), squeeze=False
    )
    for axis, (name, table) in zip(axes[:, 0], gated.items(), strict=False):
        seed = table["seed"].min()
        first_seed = table[table["seed"] == seed]
        every_condition = first_seed[[CELL_LINE, PERTURBATION]].drop_duplicates()
        conditions = every_condition.head(HEATMAP_CONDITIONS)
        matrix = first_seed.merge(conditions).pivot_table(
            index=[CELL_LINE, PERTURBATION], columns="slot", values="gate"
        )
        image = axis.imshow(matrix.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        labels = [f"{line}/{perturbation}" for line, perturbation in matrix.index]
        axis.set_yticks(range(len(matrix)), labels, fontsize=7)
        kinds = first_seed.groupby("slot")["kind"].first().reindex(matrix.columns)
        if set(kinds) == {"candidate"}:
            axis.set_xticks(range(len(kinds)), [str(slot) for slot in matrix.columns])
            axis.set_xlabel("GenePT candidate (rank)")
        else:
            axis.set_xticks(range(len(kinds)), list(kinds), rotation=60, ha="right", fontsize=7)
            axis.set_xlabel("slot kind")
        axis.set_title(
            f"{name}: {len(matrix)} of {len(every_condition)} test conditions (seed {seed}); "
            f"overall mean gate {float(table['gate'].mean()):.3f}",
            fontsize=9,
        )
        colour_bar = figure.colorbar(image, ax=axis, fraction=0.03)
        colour_bar.set_label("gate: mean over the cells")
    if not gated:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no variant with gates", ha="center", va="center")
    return figure
