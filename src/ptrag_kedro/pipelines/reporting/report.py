"""The markdown report: comparison, paired tests, gates, baselines and retrieval diagnostics."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ptrag_kedro.parameters import ReportingParameters


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def comparison_table(comparison: pd.DataFrame) -> list[str]:
    """Methods x metrics, mean ± sd over seeds, with each metric's direction and chance."""
    metrics = list(dict.fromkeys(comparison["metric"]))
    direction = comparison.groupby("metric")["higher_is_better"].first()
    lines = [
        "| method | " + " | ".join(f"{name} {_arrow(direction[name])}" for name in metrics) + " |",
        "|" + "---|" * (len(metrics) + 1),
    ]
    for method, rows in comparison.groupby("method", sort=False):
        cells = rows.set_index("metric")
        values = [
            f"{cells.loc[name, 'mean']:.4f}"
            + (f" ± {cells.loc[name, 'sd']:.4f}" if cells.loc[name, "n_seeds"] > 1 else "")
            for name in metrics
        ]
        lines.append(f"| {method} | " + " | ".join(values) + " |")
    chance = comparison.dropna(subset=["chance"]).groupby("metric")["chance"].first()
    if len(chance):
        lines.append(
            "| *chance* | "
            + " | ".join(f"*{chance[name]:.4f}*" if name in chance else "" for name in metrics)
            + " |"
        )
    n_seeds = int(comparison.loc[comparison["kind"] == "model", "n_seeds"].max())
    lines += [
        "",
        f"Mean over test (cell line, perturbation) conditions, ± sd over {n_seeds} training "
        "seed(s) (baselines: one draw). ↓ lower is better, ↑ higher is better; *chance* is the "
        "score of a random guess where one is defined.",
    ]
    return lines


def paired_table(paired_tests: pd.DataFrame, significance: float) -> list[str]:
    """Per variant and comparator role: each metric's difference, p-value and seed count."""
    lines = [
        f"Wilcoxon signed-rank over test conditions (each method's values averaged over its "
        f"seeds); a cell reads the mean difference (variant - comparator), the p-value, and in "
        f"how many seeds the variant's mean is better. **Bold**: better with p < {significance}. "
        "Against the best baseline, the cell names that baseline (the best by mean differs per "
        "metric).",
        "",
    ]
    metrics = list(dict.fromkeys(paired_tests["metric"]))
    lines += ["| variant | against | " + " | ".join(metrics) + " |"]
    lines += ["|" + "---|" * (len(metrics) + 2)]
    for (method, role), rows in paired_tests.groupby(["method", "role"], sort=False):
        cells = rows.set_index("metric")
        values = []
        for name in metrics:
            row = cells.loc[name]
            mark = "**" if row["significantly_better"] else ""
            against = f" {row['comparator']}" if role != "reference" else ""
            values.append(
                f"{mark}{row['mean_difference']:+.4f}{mark} (p={row['p_value']:.2g}, "
                f"{row['seeds_better']}){against}"
            )
        comparator = rows["comparator"].iloc[0] if role == "reference" else role
        lines.append(f"| {method} | {comparator} | " + " | ".join(values) + " |")
    return lines


def _retrieval_lines(retrieval_diagnostics: dict[str, Any]) -> list[str]:
    candidate = retrieval_diagnostics["candidate_similarity"]
    pairs = retrieval_diagnostics["train_pair_similarity"]
    lines = [
        f"Top-{retrieval_diagnostics['k']} candidates over {retrieval_diagnostics['n_train']} "
        f"train perturbations: median cosine similarity {candidate['q50']:.3f} (all train pairs: "
        f"{pairs['q50']:.3f})."
    ]
    precision = retrieval_diagnostics.get("module_precision")
    if precision:
        lines.append(
            f"Candidates sharing the query's true module: {precision['precision']:.3f} (random "
            f"{precision['random_expectation']:.3f}, best possible "
            f"{precision['best_possible']:.3f})."
        )
    return lines


def write_report(
    comparison: pd.DataFrame,
    paired_tests: pd.DataFrame,
    gate_summary: pd.DataFrame,
    retrieval_diagnostics: dict[str, Any],
    baselines_summary: dict[str, Any],
    reporting: ReportingParameters,
) -> str:
    """The markdown report of the comparison."""
    lines = ["# ptrag-kedro: test-set comparison", "", *comparison_table(comparison), ""]
    lines += ["## Paired tests", ""]
    if paired_tests.empty:
        lines.append("Nothing to compare: a single variant and no baselines.")
    else:
        lines += paired_table(paired_tests, reporting.significance)
    lines.append("")
    lines += ["## Retrieval gates", ""]
    if gate_summary.empty:
        lines.append("No variant has gates.")
    for method, rows in gate_summary.groupby("method", sort=False):
        parts = ", ".join(
            f"{kind} {gate:.3f}" for kind, gate in zip(rows["kind"], rows["gate"], strict=True)
        )
        lines.append(f"- {method}: mean gate {parts}.")
    lines += ["", "## Baselines", ""]
    for name, info in baselines_summary.get("ridge", {}).items():
        lines.append(f"- {name}: ridge alpha {info['alpha']:g}, chosen on the val groups.")
    for name, items in baselines_summary.get("fallbacks", {}).items():
        lines.append(f"- {name}: {len(items)} test condition(s) fell back to no change.")
    lines += ["", "## Retrieval candidates", "", *_retrieval_lines(retrieval_diagnostics)]
    return "\n".join(lines) + "\n"
