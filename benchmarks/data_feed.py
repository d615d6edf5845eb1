"""Batches per second the training data path feeds at the paper's shape (a benchmark).

    python benchmarks/data_feed.py --cells 1000000 --genes 2000 --n-top-genes 1000

Simulates a raw-count screen and ingests it as ingestion_memory.py does (both kept in --workdir,
by default under /tmp, for re-runs). Then, for each reader of X and each number of data-loader
workers, in a fresh process: loads the ingested screen backed (as the catalog's ``screen``),
builds the train sampler and draws --batches batches of B 64 sentences x S 64 cells (4,096
perturbed cells and their 4,096 controls: 8,192 rows) through training's ``SentenceStream`` and
a ``DataLoader``, as ``fit`` does, after --warmup batches. The readers:

- ``memory``: X held in memory (``training.in_memory: true``);
- ``file``: rows read from the h5ad (anndata's backed CSR, h5py for a dense X), the reader
  training used for any screen above 2 GiB of stored X before the row cache;
- ``cache``: the row cache beside the screen (``training.in_memory: false``), written once
  before the runs (timed).

Reported per run: batches/s, the main process's peak RSS, and the proportional set size (PSS)
of the main process and its workers at the end (pages shared by the processes, such as the
mapped cache or an in-memory X inherited by forked workers, counted once; mapped file pages are
page cache the kernel can reclaim). One JSON line per run is appended to
benchmarks/results/data_feed.jsonl (``--results``), and a table printed. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingestion_memory import ingest_in_child, measured_child, simulated_screen  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_FEED = r"""
import json, os, sys, time
import numpy as np, pandas as pd
from torch.utils.data import DataLoader
from ptrag_kedro.datasets import AnnDataDataset
from ptrag_kedro.expression_rows import ExpressionRows
from ptrag_kedro.models.sentences import SentenceSampler, SentenceSpec
from ptrag_kedro.models.training import SentenceStream
from ptrag_kedro.schema import PERTURBATION, TRAIN

path, reader = sys.argv[1], sys.argv[2]
workers, batches, warmup, batch_size, cell_set_size, embedding_dim = map(int, sys.argv[3:9])

def status(pid, field, name="status"):
    for line in open(f"/proc/{pid}/{name}"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB

screen = AnnDataDataset(filepath=path, load_args={"backed": "r"}).load()
control = screen.uns["ptrag"]["control_label"]
names = sorted(set(screen.obs[PERTURBATION].astype(str)) - {control})
vectors = np.random.default_rng(0).normal(size=(len(names), embedding_dim)).astype(np.float32)
embeddings = pd.DataFrame(vectors, index=names)
start = time.perf_counter()
if reader == "memory":  # the constructors and .of() of before the row cache read X the same
    expression = ExpressionRows(matrix=screen.X.to_memory())
elif reader == "file":
    expression = ExpressionRows(path=screen.filename)
else:
    expression = ExpressionRows.of(screen, in_memory=False, random_rows=True)
    assert expression.cache is not None
open_s = time.perf_counter() - start
sampler = SentenceSampler(
    screen, embeddings, pd.DataFrame(), TRAIN, SentenceSpec(cell_set_size=cell_set_size),
    control, expression=expression,
)
loader = iter(DataLoader(SentenceStream(sampler, batch_size, seed=0), batch_size=None,
                         num_workers=workers))
for _ in range(warmup):
    next(loader)
start = time.perf_counter()
for _ in range(batches):
    batch = next(loader)
elapsed = time.perf_counter() - start
assert batch["target"].shape == (batch_size, cell_set_size, screen.n_vars)
pids = [os.getpid()] + [worker.pid for worker in getattr(loader, "_workers", [])]
print(json.dumps({
    "reader": reader, "workers": workers, "batches": batches,
    "rows_per_batch": 2 * batch_size * cell_set_size, "genes": screen.n_vars,
    "train_groups": len(sampler), "open_s": round(open_s, 1),
    "batches_per_s": round(batches / elapsed, 2), "batch_ms": round(1000 * elapsed / batches, 1),
    "main_peak_rss_mb": round(status("self", "VmHWM")),
    "pss_mb": round(sum(status(pid, "Pss", "smaps_rollup") for pid in pids)),
}))
"""

_WRITE_CACHE = r"""
import json, sys, time
from ptrag_kedro.datasets import AnnDataDataset
from ptrag_kedro.expression_rows import ExpressionRows
screen = AnnDataDataset(filepath=sys.argv[1], load_args={"backed": "r"}).load()
start = time.perf_counter()
cache = ExpressionRows.of(screen, in_memory=False, random_rows=True).cache
print(json.dumps({"cache_write_s": round(time.perf_counter() - start, 1),
                  "cache_file": str(cache.path),
                  "cache_file_mb": round(cache.path.stat().st_size / 2**20)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--n-top-genes", type=int, default=1000)
    parser.add_argument("--readers", nargs="+", default=["memory", "file", "cache"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=200, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=5, help="batches drawn before the timing")
    parser.add_argument("--batch-size", type=int, default=64, help="B sentences (the paper's)")
    parser.add_argument("--cell-set-size", type=int, default=64, help="S cells (the paper's)")
    parser.add_argument("--embedding-dim", type=int, default=1536, help="GenePT's width")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ptrag_data_feed"))
    parser.add_argument("--label", default="", help="recorded with each result (the code run)")
    parser.add_argument(
        "--results",
        type=Path,
        default=PROJECT_ROOT / "benchmarks" / "results" / "data_feed.jsonl",
        help="JSON lines file the results are appended to",
    )
    args = parser.parse_args()

    raw_path, _ = simulated_screen(args.cells, args.genes, args.workdir)
    screen_path = args.workdir / f"screen_{args.cells}x{args.genes}_{args.n_top_genes}hvg.h5ad"
    if not screen_path.exists():
        ingest_in_child(raw_path, screen_path, args.n_top_genes)
    setup = {"screen_file": str(screen_path), "screen_file_mb": _mb(screen_path)}
    if "cache" in args.readers:
        setup.update(measured_child([_WRITE_CACHE, str(screen_path)])[0])
    print(json.dumps(setup))
    rows = []
    for reader in args.readers:
        for workers in args.workers:
            record, _, _ = measured_child(
                [
                    _FEED,
                    str(screen_path),
                    reader,
                    *map(str, (workers, args.batches, args.warmup, args.batch_size)),
                    *map(str, (args.cell_set_size, args.embedding_dim)),
                ]
            )
            print(json.dumps(record), flush=True)
            rows.append({"label": args.label, "cells": args.cells, **setup, **record})
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    fastest = {}
    for row in rows:
        fastest[row["reader"]] = max(fastest.get(row["reader"], 0), row["batches_per_s"])
    print(
        "\n| reader | workers | batches/s | ms/batch | x file (best) | main peak RSS MB | PSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ratio = row["batches_per_s"] / fastest["file"] if "file" in fastest else float("nan")
        print(
            f"| {row['reader']} | {row['workers']} | {row['batches_per_s']} | "
            f"{row['batch_ms']} | {ratio:.1f} | {row['main_peak_rss_mb']:,} | "
            f"{row['pss_mb']:,} |"
        )


def _mb(path: Path) -> int:
    return round(path.stat().st_size / 2**20)


if __name__ == "__main__":
    main()
