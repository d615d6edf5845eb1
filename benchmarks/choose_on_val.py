"""Choose between variants on the validation split, never the test split.

Trains each variant (a key of the run's ``variants``, or a new one defined on the command line
on top of one) as ``kedro run`` would, predicts the *val* conditions with the reporting nodes,
and scores them with every registered metric, beside the baselines (whose alpha and k are
themselves chosen on val, so their val figures are optimistic). The val energy of the selected
check is printed too. The test split is not read. Results are appended to
``benchmarks/results/choose_on_val.jsonl``; trained records are cached by their settings.

Run after ``kedro run --pipelines=prepare`` in the same environment:

    python benchmarks/choose_on_val.py --env unseen_gene --variants state response_rag \\
        --variant "content=response_rag:model.response_gate=content" --seeds 0 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import pandas as pd
from bench_setup import MODEL_INPUTS as INPUTS
from bench_setup import PROJECT, load_prepared, parse_variant

from ptrag_kedro.datasets import CheckpointDirectory, TorchModelDataset
from ptrag_kedro.parameters import ReportingParameters, TrainingParameters, VariantParameters
from ptrag_kedro.pipelines.reporting.baselines import predict_baselines
from ptrag_kedro.pipelines.reporting.comparison import collect_metrics, summarise
from ptrag_kedro.pipelines.reporting.evaluation import evaluate_predictions
from ptrag_kedro.pipelines.reporting.inference import predict_test_cells
from ptrag_kedro.pipelines.training.nodes import train_model
from ptrag_kedro.schema import VAL

RESULTS = PROJECT / "benchmarks" / "results" / "choose_on_val.jsonl"
SHOWN = ("energy", "w1", "pearson_delta_context", "centroid_accuracy", "discrimination_l1", "mse")


def _train(
    name: str, settings: dict, inputs: dict, parameters: dict, seeds: list[int], steps: int | None
):
    training = {**parameters["training"], "seeds": seeds, "progress_bar": False}
    if steps:
        training["max_steps"] = steps
    key = hashlib.sha256(
        json.dumps(
            [
                settings,
                parameters["model"],
                training,
                inputs["split_manifest"]["screen_fingerprint"],
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:12]
    cache = CACHE / f"{name}_{key}.pt"
    dataset = TorchModelDataset(filepath=str(cache))
    if cache.is_file():
        return dataset.load(), 0.0
    started = time.perf_counter()
    record, _, _ = train_model(
        *(inputs[item] for item in INPUTS[:4]),
        inputs["split_manifest"],
        TrainingParameters(**training),
        parameters["model"],
        VariantParameters(**settings),
        CheckpointDirectory(CACHE / f"{name}_{key}_checkpoints"),
    )
    dataset.save(record)
    return record, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="Kedro environment (conf/<env>)")
    parser.add_argument("--variants", nargs="*", default=None, help="default: every variant")
    parser.add_argument("--variant", action="append", default=[], help="NAME=BASE:key=value,...")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=None, help="default: training.max_steps")
    parser.add_argument("--note", default="", help="recorded with the results")
    args = parser.parse_args()
    inputs, parameters, root = load_prepared(args.env)
    global CACHE
    CACHE = root / "02_intermediate" / "choose_on_val"
    variants = {
        name: parameters["variants"][name] for name in (args.variants or parameters["variants"])
    }
    variants.update(parse_variant(text, parameters["variants"]) for text in args.variant)
    reporting = ReportingParameters(**parameters["reporting"])
    metrics, val_energy, seconds = {}, {}, {}
    for name, settings in variants.items():
        record, seconds[name] = _train(name, settings, inputs, parameters, args.seeds, args.steps)
        predictions, _ = predict_test_cells(record, *(inputs[i] for i in INPUTS), reporting, VAL)
        metrics[name] = evaluate_predictions(predictions, inputs["screen"], reporting, VAL)
        val_energy[name] = [round(float(v), 4) for v in record.selected_val_energy.values()]
        print(f"{name}: val energy of the selected checks {val_energy[name]}", flush=True)
    baseline_predictions, summary = predict_baselines(
        inputs["screen"],
        inputs["perturbation_embeddings"],
        inputs["split_manifest"],
        reporting,
        VAL,
    )
    baselines = evaluate_predictions(baseline_predictions, inputs["screen"], reporting, VAL)
    table = summarise(collect_metrics(baselines, metrics), list(metrics), reporting)
    wide = table.pivot_table(index="method", columns="metric", values="mean", sort=False)
    sd = table.pivot_table(index="method", columns="metric", values="sd", sort=False)
    shown = [column for column in SHOWN if column in wide]
    print(f"\nval conditions: {int(table['n_conditions'].max())} (env {args.env or 'base'})")
    print(
        pd.concat({"mean": wide[shown], "sd": sd[shown]}, axis=1).round(4).to_string(),
        flush=True,
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(
            json.dumps(
                {
                    "env": args.env,
                    "note": args.note,
                    "seeds": args.seeds,
                    "steps": args.steps or parameters["training"]["max_steps"],
                    "variants": variants,
                    "val_energy": val_energy,
                    "train_seconds": seconds,
                    "neighbour_k": summary.get("neighbour_mean", {}).get("k"),
                    "val_means": {
                        method: {k: float(v) for k, v in row.items()}
                        for method, row in wide.iterrows()
                    },
                    "val_sd": {
                        method: {k: float(v) for k, v in row.items()}
                        for method, row in sd.iterrows()
                    },
                },
                default=str,
            )
            + "\n"
        )


CACHE = PROJECT / "data" / "02_intermediate" / "choose_on_val"

if __name__ == "__main__":
    main()
