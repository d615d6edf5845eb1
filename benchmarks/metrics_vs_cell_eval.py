"""Our metrics against Arc's cell-eval on the same predictions: agreement and time.

    kedro run            # first: predictions of the demo in data/07_model_output/
    python benchmarks/metrics_vs_cell_eval.py --variant ptrag

Times ``evaluate_predictions`` (all 8 metrics per test condition, PCA included) and cell-eval's
``pearson_delta``, ``mse`` and ``mae`` on the same predictions, and prints the largest differences
on the two metrics both define the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="ptrag")
    args = parser.parse_args()

    import anndata as ad
    from cell_eval import metrics as cell_eval_metrics

    from ptrag_kedro.metrics.cell_eval_bridge import cell_eval_pair
    from ptrag_kedro.parameters import ReportingParameters
    from ptrag_kedro.pipelines.reporting.evaluation import evaluate_predictions

    screen = ad.read_h5ad(PROJECT_ROOT / "data/03_primary/screen.h5ad")
    predictions = ad.read_h5ad(
        PROJECT_ROOT / f"data/07_model_output/{args.variant}/predictions.h5ad"
    )
    predictions = predictions[predictions.obs["seed"] == predictions.obs["seed"].min()].copy()
    manifest = json.loads((PROJECT_ROOT / "data/03_primary/split_manifest.json").read_text())
    reporting = ReportingParameters(
        **yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_reporting.yml").read_text())[
            "reporting"
        ]
    )

    start = time.perf_counter()
    ours = evaluate_predictions(predictions, screen, reporting)
    ours_seconds = time.perf_counter() - start
    ours = ours[ours["level"] == "condition"].pivot_table(
        index="perturbation", columns="metric", values="value"
    )

    start = time.perf_counter()
    pair = cell_eval_pair(
        predictions, screen, manifest["heldout_cell_line"], manifest["control_label"]
    )
    theirs = {
        name: getattr(cell_eval_metrics, name)(pair) for name in ("pearson_delta", "mse", "mae")
    }
    theirs_seconds = time.perf_counter() - start

    differences = {
        name: float(np.max([abs(ours.loc[p, name] - theirs[name][p]) for p in ours.index]))
        for name in ("pearson_delta", "mse", "mae")
    }
    print(
        json.dumps(
            {
                "conditions": len(ours),
                "predicted_cells": predictions.n_obs,
                "ours_all_metrics_s": round(ours_seconds, 3),
                "cell_eval_pearson_mse_mae_s": round(theirs_seconds, 3),
                "max_abs_difference": differences,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
