"""The cost of writing h5ad files with HDF5's chunk cache off (``h5ad_writer.open_for_writing``).

The cache is off so that a disk that fills during a write is an ``OSError`` and not a crash at
exit. This times the project's block writer with the cache off against the same writer with
h5py's default cache (1 MiB per dataset), on a sparse screen (ingestion's counts) and a dense
one (``obsm["X_hvg"]``-style features), and prints the medians and their ratio.

    python benchmarks/h5ad_write.py --cells 200000 --genes 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag_kedro import h5ad_writer


@contextlib.contextmanager
def _default_cache(path, mode="w"):
    with h5py.File(path, mode) as handle:
        yield handle


def _blocks(kind: str, cells: int, genes: int, block_rows: int) -> list:
    rng = np.random.default_rng(0)
    if kind == "sparse":
        return [
            sp.random(block_rows, genes, density=0.05, format="csr", dtype=np.float32, rng=rng)
            for _ in range(cells // block_rows)
        ]
    return [rng.random((block_rows, genes), dtype=np.float32) for _ in range(cells // block_rows)]


def _time_write(folder: Path, kind: str, blocks: list, genes: int, cache_off: bool) -> float:
    cells = sum(block.shape[0] for block in blocks)
    skeleton = ad.AnnData(
        obs=pd.DataFrame(index=[f"c{i}" for i in range(cells)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]),
    )
    path = folder / f"{kind}.h5ad"
    opener = h5ad_writer.open_for_writing if cache_off else _default_cache
    with mock.patch.object(h5ad_writer, "open_for_writing", opener):
        start = time.perf_counter()
        h5ad_writer.write_h5ad_in_blocks(path, skeleton, iter(blocks), genes)
        elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--dense-genes", type=int, default=500)
    parser.add_argument("--block-rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for kind, genes in (("sparse", arguments.genes), ("dense", arguments.dense_genes)):
            blocks = _blocks(kind, arguments.cells, genes, arguments.block_rows)
            times = {True: [], False: []}
            for _ in range(arguments.repeats):  # interleaved, so drift hits both alike
                for cache_off in (False, True):
                    times[cache_off].append(_time_write(folder, kind, blocks, genes, cache_off))
            off, on = statistics.median(times[True]), statistics.median(times[False])
            print(
                f"{kind:6s} {arguments.cells} x {genes}: cache off {off:.3f} s, default cache "
                f"{on:.3f} s (medians of {arguments.repeats}); off / default = {off / on:.2f}"
            )


if __name__ == "__main__":
    main()
