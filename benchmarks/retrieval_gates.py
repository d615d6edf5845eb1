"""What the retrieval gates do, with and without a planted oracle candidate.

For each gated variant (default: every variant of the run whose block has gates), train one
model on the prepared screen as ``kedro run`` would, twice: with its usual candidates, and with
one more candidate that carries the query's own true mean shift (the oracle: for PT-RAG an
embedding that encodes the shift, for response retrieval a response slot of kind ``oracle``).
Prints the kept fraction during training (at a few steps), the val and test energy, and at
inference the mean gate on the oracle against the mean gate on any other candidate.

Run after ``kedro run --pipelines=prepare`` (it reads the prepared ``screen``, embeddings,
candidates and responses from the catalog of ``--env``); results are appended to
``benchmarks/results/retrieval_gates.jsonl``. ``--variant`` defines a variant on top of one of
the run's (as ``benchmarks/choose_on_val.py`` does), e.g. PT-RAG with the authors' per-batch
logit scale.

    python benchmarks/retrieval_gates.py
    python benchmarks/retrieval_gates.py --variants ptrag --steps 500 --seeds 0 1 2
    python benchmarks/retrieval_gates.py --env unseen_gene --variants ptrag \
        --variant "ptrag_batch_std=ptrag:model.gate_logit_norm=batch_std" --steps 20000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from bench_setup import PROJECT, load_prepared, parse_variant

from ptrag_kedro.models import PerturbationModel
from ptrag_kedro.models.sentences import SentenceSampler
from ptrag_kedro.models.training import fit, validation_batches
from ptrag_kedro.parameters import TrainingParameters, VariantParameters
from ptrag_kedro.pipelines.training.nodes import sentence_spec

RESULTS = PROJECT / "benchmarks" / "results" / "retrieval_gates.jsonl"
GATED = {"ptrag", "response"}
STEPS_SHOWN = (1, 100, 200, 500, 1000, 2000, 5000, 10000, 50000)


def _evaluate(model: PerturbationModel, sampler: SentenceSampler, oracle: bool) -> dict:
    """Mean energy over fixed sentences, and the mean gate on the oracle and on the rest."""
    energies, gates = [], []
    for index, batch in enumerate(validation_batches(sampler, 16, seed=1)):
        with torch.no_grad():
            output = model(batch, generator=torch.Generator().manual_seed(index))
        energies.append(model.loss(batch, output).energy.item())
        gates.append(output.gates.float().mean(1))  # [B, K]: mean over the sentence's cells
    gate = torch.cat(gates)
    result = {"energy": float(np.mean(energies)), "gate_all": float(gate.mean())}
    if oracle:
        result["gate_oracle"] = float(gate[:, -1].mean())
        result["gate_others"] = float(gate[:, :-1].mean())
    return result


def measure(
    variant_name: str,
    settings: dict,
    inputs: dict,
    params: dict,
    oracle: bool,
    steps: int,
    seed: int,
) -> dict:
    training = TrainingParameters(
        **{**params["training"], "seeds": [seed], "max_steps": steps, "progress_bar": False}
    )
    variant = VariantParameters(**settings)
    config = variant.model_config(
        params["model"], inputs["screen"].n_vars, inputs["perturbation_embeddings"].shape[1], 0
    )
    spec = sentence_spec(training, variant, inputs["retrieval_candidates"])
    samplers = {
        split: SentenceSampler(
            inputs["screen"],
            inputs["perturbation_embeddings"],
            inputs["retrieval_candidates"],
            split,
            spec,
            inputs["split_manifest"]["control_label"],
            inputs["perturbation_responses"],
            oracle=oracle,
        )
        for split in ("train", "val", "test")
    }
    torch.manual_seed(seed)
    started = time.perf_counter()
    checkpoints = PROJECT / "data" / "02_intermediate" / "benchmark" / f"gates_{variant_name}"
    result = fit(
        PerturbationModel(config), samplers["train"], samplers["val"], training, seed, checkpoints
    )
    history = result.history[result.history["split"] == "train"].set_index("step")
    return {
        "variant": variant_name,
        "settings": settings,
        "split": inputs["split_manifest"]["mode"],
        "retrieval": config.retrieval,
        "oracle": oracle,
        "seed": seed,
        "steps": result.steps,
        "selected_step": result.selected_step,
        "seconds": round(time.perf_counter() - started, 1),
        "kept_fraction_by_step": {
            str(step): round(float(history.loc[step, "kept_fraction"]), 4)
            for step in STEPS_SHOWN
            if step in history.index
        },
        "val": _evaluate(result.model, samplers["val"], oracle),
        "test": _evaluate(result.model, samplers["test"], oracle),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="Kedro environment (conf/<env>)")
    parser.add_argument("--variants", nargs="*", help="default: every gated variant of the run")
    parser.add_argument("--variant", action="append", default=[], help="NAME=BASE:key=value,...")
    parser.add_argument("--steps", type=int, help="default: training.max_steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no-oracle", action="store_true", help="only the usual candidates")
    args = parser.parse_args()
    inputs, params, _ = load_prepared(args.env)
    chosen = args.variants
    if chosen is None:
        chosen = (
            []
            if args.variant
            else [
                name
                for name, spec in params["variants"].items()
                if spec.get("model", {}).get("retrieval") in GATED
            ]
        )
    variants = {name: params["variants"][name] for name in chosen}
    variants.update(parse_variant(text, params["variants"]) for text in args.variant)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    steps = args.steps or params["training"]["max_steps"]
    for name, settings in variants.items():
        for seed in args.seeds:
            for oracle in (False,) if args.no_oracle else (False, True):
                row = measure(name, settings, inputs, params, oracle, steps, seed)
                print(json.dumps(row))
                with RESULTS.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
