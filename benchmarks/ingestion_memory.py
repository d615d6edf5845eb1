"""Ingestion wall time and peak memory on a simulated screen (a benchmark, not a test).

    python benchmarks/ingestion_memory.py --cells 1000000 --genes 2000

Writes the simulated screen block by block (never dense) into --workdir, then runs the three
ingestion nodes in a fresh process and reports that process's wall time and peak resident
memory. Results are appended as one JSON line to benchmarks/results/ingestion_memory.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_INGEST = r"""
import json, sys, time, yaml
from ptrag_kedro.datasets import AnnDataDataset
from ptrag_kedro.parameters import FeatureParameters, ObsColumns, SplitParameters
from ptrag_kedro.pipelines.ingestion.nodes import (
    filter_cells, record_fingerprint, select_features, split_screen, standardise_screen,
)
raw_path, out_path, n_top_genes = sys.argv[1], sys.argv[2], int(sys.argv[3])
params = yaml.safe_load(open("conf/base/parameters_ingestion.yml"))["ingestion"]
params["split"].update(heldout_cell_line="hepg2", split_file=None)
params["features"]["n_top_genes"] = n_top_genes
features = FeatureParameters(**params["features"])
start = time.perf_counter()
raw = AnnDataDataset(filepath=raw_path).load()
loaded = time.perf_counter()
standardised = standardise_screen(raw, ObsColumns(**params["columns"]), raw_path)
del raw
split, manifest = split_screen(
    filter_cells(standardised, features), SplitParameters(**params["split"]), None
)
del standardised
screen, manifest = record_fingerprint(select_features(split, features), manifest)
del split
AnnDataDataset(filepath=out_path).save(screen)
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "ingest_and_save_s": done - loaded,
                  "screen_shape": list(screen.shape),
                  "feature_path": screen.uns["ptrag"]["features"]["path"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--n-top-genes", type=int, default=1000)
    parser.add_argument(
        "--workdir", type=Path, default=PROJECT_ROOT / "data" / "02_intermediate" / "benchmark"
    )
    parser.add_argument("--keep", action="store_true", help="keep the simulated screen for re-runs")
    args = parser.parse_args()

    from ptrag_kedro.simulation import SimulationConfig, write_screen_h5ad

    lines = 4
    perturbations = max(1, min(args.genes, round(args.cells / lines / 125)))
    config = SimulationConfig(
        n_genes=args.genes,
        n_modules=max(1, args.genes // 100),
        module_size=50,
        n_perturbations=perturbations,
        # 4 lines x coverage 0.8 x perturbations x cells + 8 % controls ~= --cells
        cells_per_perturbation=max(1, round(args.cells * 0.92 / (lines * 0.8 * perturbations))),
        embedding_dim=8,
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    raw_path = args.workdir / f"screen_{args.cells}x{args.genes}.h5ad"
    simulate_seconds = None
    if not raw_path.exists():
        start = time.perf_counter()
        write_screen_h5ad(config, raw_path)
        simulate_seconds = time.perf_counter() - start
    simulate_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    out_path = args.workdir / "screen_ingested.h5ad"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _INGEST, str(raw_path), str(out_path), str(args.n_top_genes)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"ingestion failed:\n{result.stderr[-4000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = {
        "cells_requested": args.cells,
        "genes": args.genes,
        "raw_file_mb": round(raw_path.stat().st_size / 2**20, 1),
        "simulate_s": None if simulate_seconds is None else round(simulate_seconds, 1),
        "simulate_peak_rss_mb": round(simulate_peak_mb),
        "ingest_wall_s": round(wall, 1),
        "ingest_peak_rss_mb": round(peak_mb),
        **json.loads(result.stdout.strip().splitlines()[-1]),
    }
    print(json.dumps(record, indent=2))
    results = PROJECT_ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    with (results / "ingestion_memory.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    out_path.unlink(missing_ok=True)
    if not args.keep:
        raw_path.unlink()


if __name__ == "__main__":
    main()
