"""Median training-step time per variant (a benchmark, not a test).

    python benchmarks/training_step.py --config demo paper

A step is forward + loss + backward + Adam update on a synthetic batch of the configuration's
shape. ``ptrag_naive`` is PT-RAG computed the direct way (materialising the [B, S, K, 3H]
concatenation for LayerNorm, scorer and projection), to measure what the exact algebraic
decomposition in ``PTRAGRetrieval`` saves; ``response_rag`` reads 20 response slots.
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
from ptrag_kedro.models.module import PTRAGRetrieval, RetrievalOutput

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
#: 3 other lines + 2 x 8 neighbours + the context
RESPONSE_SLOTS = 20


class NaivePTRAG(PTRAGRetrieval):
    """PT-RAG without the decomposition: the reference the fused block is measured against."""

    def forward(self, cells, query, batch, encode, generator=None, **_):
        b, s, h = cells.shape
        candidates = encode(batch[keys.CANDIDATES])
        k = candidates.shape[1]
        concatenation = torch.cat(
            [
                cells[:, :, None, :].expand(b, s, k, h),
                query[:, None, None, :].expand(b, s, k, h),
                candidates[:, None, :, :].expand(b, s, k, h),
            ],
            dim=-1,
        )  # [B, S, K, 3H]
        normalised = self.norm(concatenation)
        logits = self._scale(self.score_out(self.score_in(normalised)))
        gates = F.gumbel_softmax(logits, tau=self.config.tau, hard=True)[..., 1]
        retrieved = (gates[..., None] * self.project(normalised)).sum(2)
        return RetrievalOutput(retrieved, gates=gates, penalty=gates.mean())


def _batch(shape: dict[str, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    table = torch.randn(N_TRAIN_PERTURBATIONS, shape["embedding"], generator=generator)
    rows = torch.randint(
        0, N_TRAIN_PERTURBATIONS, (shape["batch"], shape["k"] + 1), generator=generator
    )
    size = (shape["batch"], shape["cells"], shape["genes"])
    slots = (shape["batch"], RESPONSE_SLOTS)
    return {
        keys.CONTROL: torch.rand(*size, generator=generator),
        keys.TARGET: torch.rand(*size, generator=generator),
        keys.PERTURBATION: table[rows[:, 0]],
        keys.CANDIDATES: table[rows[:, 1:]],  # looked up per sentence, as in training
        keys.RESPONSES: torch.randn(*slots, shape["genes"], generator=generator) * 0.3,
        keys.RESPONSE_FEATURES: torch.rand(*slots, keys.N_RESPONSE_FEATURES, generator=generator),
        keys.RESPONSE_MASK: torch.ones(*slots, dtype=torch.bool),
    }


def step_time(variant: str, shape: dict[str, int], steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    retrieval = {
        "state": "none",
        "vanilla_rag": "vanilla",
        "ptrag": "ptrag",
        "ptrag_naive": "ptrag",
        "response_rag": "response",
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
            for variant in ("state", "vanilla_rag", "ptrag", "ptrag_naive", "response_rag")
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
