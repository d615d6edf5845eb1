"""Time to embed gene-summary texts with the bundled all-MiniLM-L6-v2 (a benchmark, not a test).

    python benchmarks/genept_summaries.py ../shared/data/ncbi_gene_summaries_1915.json

Runs the genept node on an empty cache (model load + embedding), then again on the filled cache.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summaries", type=Path)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import torch

    from ptrag_kedro.datasets import TextModelDataset
    from ptrag_kedro.parameters import GeneptParameters
    from ptrag_kedro.pipelines.genept.nodes import embed_gene_summaries

    summaries = json.loads(args.summaries.read_text())
    params = GeneptParameters(source="summaries", batch_size=args.batch_size)
    model = TextModelDataset().load()
    start = time.perf_counter()
    vectors, cache = embed_gene_summaries(summaries, pd.DataFrame(), model, params)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    embed_gene_summaries(summaries, cache, model, params)
    warm = time.perf_counter() - start
    print(
        json.dumps(
            {
                "genes": len(summaries),
                "dim": vectors.shape[1],
                "torch_threads": torch.get_num_threads(),
                "cold_s": round(cold, 1),
                "cached_rerun_s": round(warm, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
