"""Our metrics against Arc's cell-eval on the same predictions: agreement and time.

    kedro run            # first: predictions of the demo in data/07_model_output/
    python benchmarks/metrics_vs_cell_eval.py --variant ptrag

Times ``evaluate_predictions`` (all our metrics per test condition, PCA included) and the
``cell_eval`` pipeline's node on the same predictions (first training seed): cell-eval's
profile (``conf/base/parameters_cell_eval.yml``, vcc) plus pearson_delta and mse, its mean
baseline and its score, through ``ptrag_kedro.metrics.cell_eval_bridge``. Prints the largest
per-condition difference on each metric both define the same way, over the conditions where
both are defined.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _parameters(name: str) -> dict:
    path = PROJECT_ROOT / f"conf/base/parameters_{name}.yml"
    return yaml.safe_load(path.read_text())[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="ptrag")
    args = parser.parse_args()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")

    import anndata as ad

    from ptrag_kedro.metrics.cell_eval_bridge import require_cell_eval
    from ptrag_kedro.parameters import ReportingParameters
    from ptrag_kedro.pipelines.cell_eval.nodes import CellEvalParameters, evaluate_with_cell_eval
    from ptrag_kedro.pipelines.reporting.evaluation import evaluate_predictions

    require_cell_eval()  # one line saying how to install it
    screen = ad.read_h5ad(PROJECT_ROOT / "data/03_primary/screen.h5ad", backed="r")
    predictions = ad.read_h5ad(
        PROJECT_ROOT / f"data/07_model_output/{args.variant}/predictions.h5ad"
    )
    predictions = predictions[predictions.obs["seed"] == predictions.obs["seed"].min()].copy()
    manifest = json.loads((PROJECT_ROOT / "data/03_primary/split_manifest.json").read_text())
    reporting = ReportingParameters(**_parameters("reporting"))
    parameters = CellEvalParameters(**_parameters("cell_eval"))

    start = time.perf_counter()
    ours = evaluate_predictions(predictions, screen, reporting)
    ours_seconds = time.perf_counter() - start

    start = time.perf_counter()
    _, summary = evaluate_with_cell_eval(
        screen,
        manifest,
        parameters,
        reporting,
        **{f"{args.variant}_predictions": predictions, f"{args.variant}_metrics": ours},
    )
    theirs_seconds = time.perf_counter() - start

    shared = summary[summary["ours_metric"].notna()].set_index("metric")
    scores = summary.set_index("metric")["score"]
    print(
        json.dumps(
            {
                "conditions": int((ours["level"] == "condition").sum() / ours["metric"].nunique()),
                "predicted_cells": predictions.n_obs,
                "ours_all_metrics_s": round(ours_seconds, 3),
                f"cell_eval_{parameters.profile}_extras_baseline_score_s": round(theirs_seconds, 3),
                "max_abs_difference": {
                    f"{name} (ours: {row['ours_metric']}, {row['n_compared']} compared)": float(
                        row["max_abs_difference"]
                    )
                    for name, row in shared.iterrows()
                },
                "cell_eval_score": {name: float(value) for name, value in scores.dropna().items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
