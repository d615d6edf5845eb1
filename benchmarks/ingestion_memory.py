"""Ingestion wall time and peak memory on a simulated screen (a benchmark, not a test).

    python benchmarks/ingestion_memory.py --cells 1000000 --genes 2000

Writes the simulated screen block by block (never dense) into --workdir, then runs the five
ingestion nodes in a fresh process on that file loaded as the catalog's ``raw_screen`` is
(``backed: r``), and saves the screen through ``AnnDataDataset`` (X written block by block). It
reports that process's wall time and peak resident memory, and the peak after each step. Results
are appended as one JSON line to benchmarks/results/ingestion_memory.jsonl.
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
import json, resource, sys, time, yaml
from ptrag_kedro.datasets import AnnDataDataset
from ptrag_kedro.parameters import FeatureParameters, ObsColumns, SplitParameters
from ptrag_kedro.pipelines.ingestion.nodes import (
    filter_cells, record_fingerprint, select_features, split_screen, standardise_screen,
)
raw_path, out_path = sys.argv[1], sys.argv[2]
n_top_genes, block_rows = int(sys.argv[3]), int(sys.argv[4])
params = yaml.safe_load(open("conf/base/parameters_ingestion.yml"))["ingestion"]
params["split"].update(heldout_cell_line="hepg2", seed=0, split_file=None)
params["features"].update(n_top_genes=n_top_genes, block_rows=block_rows)
features = FeatureParameters(**params["features"])
load_args = yaml.safe_load(open("conf/base/catalog.yml"))["raw_screen"].get("load_args")
steps, start = {}, time.perf_counter()
def mark(step):
    steps[step] = {"s": round(time.perf_counter() - start, 1),
                   "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
raw = AnnDataDataset(filepath=raw_path, load_args=load_args).load()
mark("load")
screen = standardise_screen(raw, ObsColumns(**params["columns"]), raw_path)
del raw
mark("standardise_screen")
screen = filter_cells(screen, features)
mark("filter_cells")
screen, manifest = split_screen(screen, SplitParameters(**params["split"]), None)
mark("split_screen")
screen = select_features(screen, features)
mark("select_features")
screen, manifest = record_fingerprint(screen, manifest)
AnnDataDataset(filepath=out_path).save(screen)
mark("record_fingerprint+save")
print(json.dumps({"raw_load_args": load_args, "block_rows": block_rows,
                  "screen_shape": list(screen.shape),
                  "feature_path": screen.provenance["features"]["path"], "steps": steps}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--n-top-genes", type=int, default=1000)
    parser.add_argument(
        "--block-rows", type=int, default=None, help="default: ingestion.features.block_rows"
    )
    parser.add_argument(
        "--workdir", type=Path, default=PROJECT_ROOT / "data" / "02_intermediate" / "benchmark"
    )
    parser.add_argument("--keep", action="store_true", help="keep the simulated screen for re-runs")
    args = parser.parse_args()

    raw_path, simulate_seconds = simulated_screen(args.cells, args.genes, args.workdir)
    simulate_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out_path = args.workdir / "screen_ingested.h5ad"
    record = {
        "cells_requested": args.cells,
        "genes": args.genes,
        "raw_file_mb": round(raw_path.stat().st_size / 2**20, 1),
        "simulate_s": None if simulate_seconds is None else round(simulate_seconds, 1),
        "simulate_peak_rss_mb": round(simulate_peak_mb),
        **ingest_in_child(raw_path, out_path, args.n_top_genes, args.block_rows),
    }
    print(json.dumps(record, indent=2))
    results = PROJECT_ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    with (results / "ingestion_memory.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    out_path.unlink(missing_ok=True)
    if not args.keep:
        raw_path.unlink()


def ingest_in_child(
    raw_path: Path, out_path: Path, n_top_genes: int, block_rows: int | None = None
) -> dict:
    """Ingest ``raw_path`` into ``out_path`` in a fresh process: its wall time, peak RSS, steps."""
    block_rows = block_rows or _configured_block_rows()
    record, peak_mb, wall = measured_child(
        [_INGEST, str(raw_path), str(out_path), str(n_top_genes), str(block_rows)]
    )
    return {
        "ingest_wall_s": round(wall, 1),
        "ingest_peak_rss_mb": round(peak_mb),
        "screen_file_mb": round(out_path.stat().st_size / 2**20, 1),
        **record,
    }


def measured_child(arguments: list[str]) -> tuple[dict, float, float]:
    """``python -c *arguments`` in a fresh process: the JSON of its last printed line, its peak
    RSS in MB and its wall time. A wrapper process waits for it, so the peak is this child's
    alone, not the largest of every child this process has run."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:])\n"
        "print(done.returncode, time.perf_counter() - start,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-c", *arguments],
        cwd=PROJECT_ROOT,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    *log, summary = result.stderr.strip().splitlines() or ["1 0 0"]
    returncode, wall, peak_mb = summary.split()
    if result.returncode != 0 or returncode != "0":
        sys.exit("benchmark child failed:\n" + "\n".join(log)[-4000:])
    return json.loads(result.stdout.strip().splitlines()[-1]), float(peak_mb), float(wall)


def simulated_screen(cells: int, genes: int, workdir: Path) -> tuple[Path, float | None]:
    """The simulated raw screen's path (written unless already there), and seconds it took."""
    from ptrag_kedro.simulation import SimulationConfig, write_screen_h5ad

    lines = 4
    perturbations = max(1, min(genes, round(cells / lines / 125)))
    config = SimulationConfig(
        n_genes=genes,
        n_modules=max(1, genes // 100),
        module_size=50,
        n_perturbations=perturbations,
        # 4 lines x coverage 0.8 x perturbations x cells + 8 % controls ~= --cells
        cells_per_perturbation=max(1, round(cells * 0.92 / (lines * 0.8 * perturbations))),
        embedding_dim=8,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    raw_path = workdir / f"screen_{cells}x{genes}.h5ad"
    if raw_path.exists():
        return raw_path, None
    start = time.perf_counter()
    write_screen_h5ad(config, raw_path)
    return raw_path, time.perf_counter() - start


def _configured_block_rows() -> int:
    import yaml

    with (PROJECT_ROOT / "conf" / "base" / "parameters_ingestion.yml").open() as handle:
        return int(yaml.safe_load(handle)["ingestion"]["features"]["block_rows"])


if __name__ == "__main__":
    main()
