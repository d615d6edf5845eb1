"""Median training-step time per variant (a benchmark, not a test).

    python benchmarks/training_step.py --config demo paper

A step is forward + loss + backward + Adam update on a synthetic batch of the configuration's
shape. ``ptrag_naive`` is PT-RAG computed the direct way (materialising the [B, S, K, 3H]
concatenation for LayerNorm, scorer and projection), to measure what the exact algebraic
decomposition in ``PTRAGRetrieval`` saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from ptrag_kedro.models import ModelConfig, PerturbationModel
from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.module import PTRAGRetrieval

CONFIGS = {
    # the demo defaults of conf/base/parameters_training.yml (500 HVGs in the demo screen)
    "demo": {
        "batch": 16,
        "cells": 32,
        "genes": 500,
        "embedding": 1536,
        "k": 8,
        "hidden": 64,
        "layers": 2,
        "heads": 4,
    },
    # the paper: B 64, S 64, hidden 128, 2,000 genes, 1,536-d GenePT, K 32, 8 layers
    "paper": {
        "batch": 64,
        "cells": 64,
        "genes": 2000,
        "embedding": 1536,
        "k": 32,
        "hidden": 128,
        "layers": 8,
        "heads": 8,
    },
}
N_TRAIN_PERTURBATIONS = 2000


class NaivePTRAG(PTRAGRetrieval):
    """PT-RAG without the decomposition: the reference the fused block is measured against."""

    def forward(self, cells, query, candidates, gate_mode="deterministic", **_):
        b, s, h = cells.shape
        k = candidates.shape[1]
        concatenation = torch.cat(
            [
                cells[:, :, None, :].expand(b, s, k, h),
                query[:, None, None, :].expand(b, s, k, h),
                candidates[:, None, :, :].expand(b, s, k, h),
            ],
            dim=-1,
        )  # [B, S, K, 3H]
        logits = self.score_out(self.score_in(self.norm(concatenation)))
        gates = F.gumbel_softmax(logits, tau=self.tau, hard=True)[..., 1]
        retrieved = (gates[..., None] * self.project(concatenation)).sum(2)
        return cells + query[:, None, :] + retrieved, gates


def _batch(shape: dict[str, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    table = torch.randn(N_TRAIN_PERTURBATIONS, shape["embedding"], generator=generator)
    rows = torch.randint(
        0, N_TRAIN_PERTURBATIONS, (shape["batch"], shape["k"] + 1), generator=generator
    )
    return {
        keys.CONTROL: torch.rand(
            shape["batch"], shape["cells"], shape["genes"], generator=generator
        ),
        keys.TARGET: torch.rand(
            shape["batch"], shape["cells"], shape["genes"], generator=generator
        ),
        keys.PERTURBATION: table[rows[:, 0]],
        keys.CANDIDATES: table[rows[:, 1:]],  # looked up per sentence, as in training
    }


def step_time(variant: str, shape: dict[str, int], steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    retrieval = {
        "state": "none",
        "vanilla_rag": "vanilla",
        "ptrag": "ptrag",
        "ptrag_naive": "ptrag",
    }[variant]
    config = ModelConfig(
        n_genes=shape["genes"],
        embedding_dim=shape["embedding"],
        hidden_dim=shape["hidden"],
        n_layers=shape["layers"],
        n_heads=shape["heads"],
        retrieval=retrieval,
    )
    model = PerturbationModel(config)
    if variant == "ptrag_naive":
        naive = NaivePTRAG(config)
        naive.load_state_dict(model.retrieval.state_dict())
        model.retrieval = naive
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _batch(shape, torch.Generator().manual_seed(1))
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        loss = model.loss(batch, model(batch))
        loss.total.backward()
        optimiser.step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["demo", "paper"], choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    results = {"torch_threads": torch.get_num_threads()}
    for name in args.config:
        timings = {
            variant: step_time(variant, CONFIGS[name], args.steps, args.warmup)
            for variant in ("state", "vanilla_rag", "ptrag", "ptrag_naive")
        }
        results[name] = {
            **{f"{variant}_s": round(seconds, 4) for variant, seconds in timings.items()},
            "ptrag_over_state": round(timings["ptrag"] / timings["state"], 3),
            "naive_ptrag_over_state": round(timings["ptrag_naive"] / timings["state"], 3),
        }
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
