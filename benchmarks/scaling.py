"""Scaling with the number of cells: ingestion and training time and peak memory (a benchmark).

    python benchmarks/scaling.py --cells 100000 300000 1000000 --genes 2000 --steps 6

For each size: simulate a raw-count screen (block by block, kept in --workdir for re-runs),
ingest it with the ingestion nodes in a fresh process (see ingestion_memory.py), then train the
paper's configuration (conf/paper: B 64 sentences x S 64 cells, the Llama backbone) for --steps
steps in another fresh process, reading the screen's rows from its h5ad on disk (the path a
screen too big for memory takes). Each process's wall time and peak resident memory
(ru_maxrss) is reported; training reports steps/s after the first step (the first includes
start-up). One JSON line per size is appended to benchmarks/results/scaling.jsonl, and the table
printed is the README's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingestion_memory import ingest_in_child, measured_child, simulated_screen  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_TRAIN = r"""
import json, resource, sys, time
import numpy as np, pandas as pd, torch, yaml, lightning as L
from ptrag_kedro.datasets import AnnDataDataset
from ptrag_kedro.expression_rows import ExpressionRows, stored_bytes
from ptrag_kedro.models import PerturbationModel
from ptrag_kedro.models.sentences import SentenceSampler, SentenceSpec
from ptrag_kedro.models.training import fit
from ptrag_kedro.parameters import TrainingParameters, VariantParameters
from ptrag_kedro.schema import PERTURBATION, TRAIN, VAL

screen_path, checkpoint_dir = sys.argv[1], sys.argv[3]
steps, embedding_dim = int(sys.argv[2]), int(sys.argv[4])
base = yaml.safe_load(open("conf/base/parameters_training.yml"))
paper = yaml.safe_load(open("conf/paper/parameters_training.yml"))
rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
screen = AnnDataDataset(filepath=screen_path, load_args={"backed": "r"}).load()
control = screen.uns["ptrag"]["control_label"]
names = sorted(set(screen.obs[PERTURBATION].astype(str)) - {control})
rng = np.random.default_rng(0)
vectors = rng.normal(size=(len(names), embedding_dim)).astype(np.float32)
embeddings = pd.DataFrame(vectors, index=names)
expression = ExpressionRows.of(screen, in_memory=False)  # rows read from the file
spec = SentenceSpec(cell_set_size=paper["training"]["cell_set_size"])
samplers = {
    split: SentenceSampler(
        screen, embeddings, pd.DataFrame(), split, spec, control, expression=expression
    )
    for split in (TRAIN, VAL)
}
rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
variant = VariantParameters(**base["variants"]["state"])
config = variant.model_config({**base["model"], **paper["model"]}, n_genes=screen.n_vars,
                              embedding_dim=embedding_dim, n_batches=0)
training = TrainingParameters(**{**base["training"], **paper["training"], "max_steps": steps,
    "val_every_n_steps": 10**9, "checkpoint_every_n_steps": 10**9, "select_on_val": False,
    "accelerator": "auto", "devices": 1, "progress_bar": False})

class StepTimes(L.Callback):
    def __init__(self):
        self.times = []
    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter())

times = StepTimes()
torch.manual_seed(0)
start = time.perf_counter()
model = PerturbationModel(config)
fit(model, samplers[TRAIN], samplers[VAL], training, 0, checkpoint_dir, callbacks=[times])
read = [time.perf_counter()]
for step in range(20):
    samplers[TRAIN].random_batch(training.batch_size, np.random.default_rng([1, step]))
read.append(time.perf_counter())
print(json.dumps({
    "train_groups": len(samplers[TRAIN]),
    "screen_shape": list(screen.shape),
    "x_on_disk": expression.on_disk,
    "x_stored_mb": round(stored_bytes(screen) / 2**20),
    "data_rss_mb": round(rss_data - rss_start),
    "first_step_s": round(times.times[0] - start, 2),
    "steps_per_s": round((len(times.times) - 1) / (times.times[-1] - times.times[0]), 3),
    "batch_read_s": round((read[1] - read[0]) / 20, 3),
    "torch_threads": torch.get_num_threads(),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--n-top-genes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--embedding-dim", type=int, default=1536, help="GenePT's width")
    parser.add_argument(
        "--workdir", type=Path, default=PROJECT_ROOT / "data" / "02_intermediate" / "benchmark"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for cells in args.cells:
        raw_path, _ = simulated_screen(cells, args.genes, args.workdir)
        screen_path = args.workdir / f"screen_{cells}x{args.genes}_ingested.h5ad"
        ingestion = ingest_in_child(raw_path, screen_path, args.n_top_genes)
        training, train_peak, _ = measured_child(
            [
                _TRAIN,
                str(screen_path),
                str(args.steps),
                str(args.workdir / "checkpoints"),
                str(args.embedding_dim),
            ]
        )
        row = {
            "cells": cells,
            "genes": args.genes,
            "screen_file_mb": round(screen_path.stat().st_size / 2**20),
            "ingest_s": ingestion["ingest_wall_s"],
            "ingest_peak_rss_mb": ingestion["ingest_peak_rss_mb"],
            "train_peak_rss_mb": round(train_peak),
            **training,
        }
        print(json.dumps(row))
        rows.append(row)
        screen_path.unlink()
    results = PROJECT_ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    with (results / "scaling.jsonl").open("a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    header = "| cells | X (stored) MB | ingest s | ingest peak MB | train steps/s | train peak MB |"
    print("\n" + header + " train data MB |\n" + "|---" * 7 + "|")
    for row in rows:
        print(
            f"| {row['cells']:,} | {row['x_stored_mb']:,} | {row['ingest_s']} | "
            f"{row['ingest_peak_rss_mb']:,} | {row['steps_per_s']} | "
            f"{row['train_peak_rss_mb']:,} | {row['data_rss_mb']:,} |"
        )


if __name__ == "__main__":
    main()
