"""Index build and top-K query time for N perturbations x D dims (a benchmark, not a test).

    python benchmarks/retrieval_index.py --perturbations 10000 --dim 1536 --k 32

Times the project's exact faiss index (build) and the search of every perturbation against it
(self excluded, name-ordered ties), and, for reference, a brute-force numpy matmul + argpartition.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perturbations", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import faiss

    from ptrag_kedro.retrieval import build_index, l2_normalise, search

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.perturbations, args.dim)).astype(np.float32)
    names = [f"GENE{index:05d}" for index in range(args.perturbations)]
    index = build_index(vectors, names)

    def brute_force() -> None:
        normalised = l2_normalise(vectors)
        similarity = normalised @ normalised.T
        np.fill_diagonal(similarity, -np.inf)
        np.argpartition(-similarity, args.k, axis=1)[:, : args.k]

    record = {
        "perturbations": args.perturbations,
        "dim": args.dim,
        "k": args.k,
        "faiss_threads": faiss.omp_get_max_threads(),
        "build_s": round(_best_of(args.repeats, lambda: build_index(vectors, names)), 4),
        "query_all_s": round(
            _best_of(args.repeats, lambda: search(index, vectors, names, args.k)), 4
        ),
        "numpy_brute_force_s": round(_best_of(args.repeats, brute_force), 4),
    }
    record["query_per_perturbation_ms"] = round(
        1000 * record["query_all_s"] / args.perturbations, 4
    )
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
