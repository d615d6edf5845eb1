"""The markdown report: what was run, the comparison, the paired tests, gates, baselines and
retrieval diagnostics. Metric names, directions and descriptions come from the metric registry.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ptrag_kedro.metrics import MetricSpec, metric_registry
from ptrag_kedro.parameters import ReportingParameters, TrainingParameters


def run_lines(
    split_manifest: dict[str, Any], training: TrainingParameters, n_conditions: int
) -> list[str]:
    """What the table is of: split, held-out line, seeds and steps (a 20-step run says so)."""
    line = split_manifest.get("heldout_cell_line") or "every line"
    return [
        f"Split `{split_manifest['mode']}` (seed {split_manifest.get('seed', 0)}, from "
        f"{split_manifest.get('source', 'fractions')}), held-out line {line}, {n_conditions} test "
        f"(cell line, perturbation) conditions; training {training.max_steps:,} steps, seeds "
        f"{list(training.seeds)}, weights of the best val check "
        f"{'kept' if training.select_on_val else 'not kept (last step)'}; screen "
        f"{split_manifest.get('screen_fingerprint', 'unknown')}."
    ]


#: What identifies the run that made a comparison, in ``comparison``'s columns and the report.
RUN_COLUMNS = ["steps", "seeds", "heldout_cell_line", "env", "commit", "date", "run_id"]


def describe_run(
    run_context: dict[str, Any], split_manifest: dict[str, Any], training: TrainingParameters
) -> dict[str, Any]:
    """The run's metadata (``RUN_COLUMNS``): training steps and seeds, the held-out line, and
    the env, commit, start time and MLflow run id that ``ptrag_kedro.tracking`` records at run
    start (``run_id`` None: tracking was off)."""
    return {
        "steps": training.max_steps,
        "seeds": " ".join(str(seed) for seed in training.seeds),
        "heldout_cell_line": split_manifest.get("heldout_cell_line") or "every line",
        "env": run_context["env"],
        "commit": run_context["commit"],
        "date": run_context["started"],
        "run_id": run_context["run_id"],
    }


def run_identity(run_metadata: dict[str, Any]) -> str:
    """The report's line naming the run: MLflow run, commit, Kedro env and start time."""
    run_id = run_metadata["run_id"]
    tracked = f"MLflow run `{run_id}`" if run_id else "not tracked (tracking.enabled: false)"
    return (
        f"Run: {tracked}; commit `{run_metadata['commit']}`; Kedro env `{run_metadata['env']}`; "
        f"started {run_metadata['date']}."
    )


def comparison_table(comparison: pd.DataFrame, registry: dict[str, MetricSpec]) -> list[str]:
    """Methods x metrics, mean ± sd over seeds, with each metric's direction and chance."""
    metrics = [name for name in registry if name in set(comparison["metric"])]
    lines = [
        "| method | " + " | ".join(registry[name].label for name in metrics) + " |",
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
        "score of a prediction that carries no information about the condition (mean over the "
        "conditions) where one is defined.",
        "",
        *(f"- `{name}`: {registry[name].description}." for name in metrics),
    ]
    return lines


def verdict(row: pd.Series) -> str:
    """What a paired test allows one to say."""
    if row["significantly_better"]:
        return "**better**"
    if row["significantly_worse"]:
        return "*worse*"
    if row["equivalent"]:
        return "equivalent"
    return "no verdict"


def paired_table(
    paired_tests: pd.DataFrame, registry: dict[str, MetricSpec], significance: float
) -> list[str]:
    """Per variant: each metric's difference against the reference and the best baseline, with
    the hierarchical-bootstrap interval, the Holm-corrected p-value and the verdict."""
    lines = [
        "Differences are variant - comparator, the mean over test conditions of the "
        "seed-averaged values; [95 % interval] from a hierarchical bootstrap (conditions, then "
        "seeds within conditions); p: two-sided, Holm-corrected across every row of "
        f"`paired_tests`. **better** / *worse*: p < {significance}; equivalent: both one-sided "
        "tests against the margin reject (TOST, Holm-corrected); otherwise no verdict. The best "
        "baseline is the best by mean, per metric.",
    ]
    for method, rows in paired_tests.groupby("method", sort=False):
        roles = list(dict.fromkeys(rows["role"]))
        lines += ["", f"**{method}**", ""]
        lines += ["| metric | " + " | ".join(f"against {role}" for role in roles) + " |"]
        lines += ["|" + "---|" * (len(roles) + 1)]
        for name in [name for name in registry if name in set(rows["metric"])]:
            cells = []
            for role in roles:
                match = rows[(rows["metric"] == name) & (rows["role"] == role)]
                if match.empty:
                    cells.append("")
                    continue
                row = match.iloc[0]
                cells.append(
                    f"{row['comparator']}: {row['mean_difference']:+.4f} "
                    f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], p={row['p_holm']:.2g}, "
                    f"{verdict(row)}"
                )
            lines.append(f"| {registry[name].label} | " + " | ".join(cells) + " |")
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
    split_manifest: dict[str, Any],
    training: TrainingParameters,
    reporting: ReportingParameters,
    run_metadata: dict[str, Any] | None = None,
) -> str:
    """The markdown report of the comparison (``run_metadata``: of :func:`describe_run`)."""
    registry = metric_registry(reporting.n_pcs, reporting.de_fdr)
    n_conditions = int(comparison["n_conditions"].max()) if len(comparison) else 0
    lines = ["# ptrag-kedro: test-set comparison", ""]
    lines += [*run_lines(split_manifest, training, n_conditions), ""]
    if run_metadata is not None:
        lines += [run_identity(run_metadata), ""]
    lines += [*comparison_table(comparison, registry), ""]
    lines += ["## Paired tests", ""]
    if paired_tests.empty:
        lines.append("Nothing to compare: a single variant and no baselines.")
    else:
        lines += paired_table(paired_tests, registry, reporting.significance)
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
    neighbours = baselines_summary.get("neighbour_mean") or {}
    if neighbours:
        lines.append(f"- neighbour_mean: k = {neighbours['k']}, chosen on the val groups.")
    means = baselines_summary.get("fallback_means", {})
    for name, items in baselines_summary.get("fallbacks", {}).items():
        lines.append(
            f"- {name}: {len(items)} test condition(s) fell back to {means.get(name, 'no change')}."
        )
    lines += ["", "## Retrieval candidates", "", *_retrieval_lines(retrieval_diagnostics)]
    return "\n".join(lines) + "\n"
