"""Nodes of the modular ``training`` pipeline (one instance per variant)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import torch
from matplotlib.figure import Figure

from ptrag_kedro.models import ModelConfig, PerturbationModel
from ptrag_kedro.models.sentences import SentenceSampler
from ptrag_kedro.models.training import fit
from ptrag_kedro.pipelines.ingestion.nodes import PROVENANCE_KEY, TRAIN, VAL
from ptrag_kedro.plotting import new_figure
from ptrag_kedro.provenance import require_same

logger = logging.getLogger(__name__)


def _check_inputs(
    screen: ad.AnnData,
    embeddings: pd.DataFrame,
    candidates: pd.DataFrame,
    split_manifest: dict[str, Any],
    uses_retrieval: bool,
) -> None:
    screen_fingerprint = screen.uns[PROVENANCE_KEY]["fingerprint"]
    require_same(
        "split_manifest",
        "screen",
        split_manifest["screen_fingerprint"],
        screen_fingerprint,
        "kedro run --pipeline=ingestion",
    )
    require_same(
        "perturbation_embeddings",
        "screen",
        embeddings.attrs.get("screen_fingerprint"),
        screen_fingerprint,
        "kedro run --pipeline=genept",
    )
    if uses_retrieval:
        require_same(
            "retrieval_candidates",
            "perturbation embeddings",
            candidates.attrs.get("embeddings_fingerprint"),
            embeddings.attrs["embeddings_fingerprint"],
            "kedro run --pipeline=retrieval_index",
        )


def train_model(
    screen: ad.AnnData,
    perturbation_embeddings: pd.DataFrame,
    retrieval_candidates: pd.DataFrame,
    split_manifest: dict[str, Any],
    training: dict[str, Any],
    model: dict[str, Any],
    checkpoint_dir: str,
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """Train one variant on the train split, validating on val; return the model record.

    Every variant gets the same perturbation features (the embeddings); only ``model.retrieval``
    and its parameters differ.
    """
    config = ModelConfig(
        n_genes=screen.n_vars,
        embedding_dim=perturbation_embeddings.shape[1],
        n_batches=screen.obs["batch"].nunique() if training.get("batch_embedding") else 0,
        **model,
    )
    uses_retrieval = config.retrieval != "none"
    _check_inputs(
        screen, perturbation_embeddings, retrieval_candidates, split_manifest, uses_retrieval
    )
    k = int(training["k"]) if uses_retrieval else 0
    samplers = {
        split: SentenceSampler(
            screen,
            perturbation_embeddings,
            retrieval_candidates if uses_retrieval else pd.DataFrame(),
            split=split,
            cell_set_size=int(training["cell_set_size"]),
            same_batch_controls=bool(training["same_batch_controls"]),
            k=k,
            control_label=split_manifest["control_label"],
        )
        for split in (TRAIN, VAL)
    }
    logger.info(
        "Training %s: %d train and %d val sentences groups, %d genes, %d-d embeddings",
        config.retrieval,
        len(samplers[TRAIN]),
        len(samplers[VAL]),
        config.n_genes,
        config.embedding_dim,
    )
    provenance = {
        "screen_fingerprint": screen.uns[PROVENANCE_KEY]["fingerprint"],
        "embeddings_fingerprint": perturbation_embeddings.attrs["embeddings_fingerprint"],
    }
    state_dicts, steps, histories = {}, {}, []
    for seed in _seeds(training):
        torch.manual_seed(seed)  # the initial weights differ per seed too
        trained, history, n_steps = fit(
            PerturbationModel(config),
            samplers[TRAIN],
            samplers[VAL],
            {**training, "seed": seed},
            Path(checkpoint_dir) / f"seed_{seed}",
            provenance,
        )
        state_dicts[str(seed)], steps[str(seed)] = trained.state_dict(), n_steps
        histories.append(history.assign(seed=seed))
    record = {
        "config": config.to_dict(),
        "state_dicts": state_dicts,  # one model per training seed
        "genes": [str(gene) for gene in screen.var_names],
        "perturbations": [str(name) for name in perturbation_embeddings.index],
        "candidates_k": k,
        "cell_set_size": int(training["cell_set_size"]),
        "steps": steps,
        "provenance": provenance,
    }
    history = pd.concat(histories, ignore_index=True)
    return record, history, plot_loss_history(history, config.retrieval)


def _seeds(training: dict[str, Any]) -> list[int]:
    seeds = training.get("seeds", [training.get("seed", 0)])
    seeds = [int(seed) for seed in (seeds if isinstance(seeds, list | tuple) else [seeds])]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(
            f"parameter training.seeds must be a non-empty list of distinct seeds, not {seeds}"
        )
    return seeds


def plot_loss_history(history: pd.DataFrame, title: str) -> Figure:
    """Training loss per step and validation energy per check."""
    figure, axis = new_figure(figsize=(6, 3.5))
    for (seed, split), rows in history.groupby(["seed", "split"], sort=True):
        style = "o-" if split == "val" else "-"
        axis.plot(
            rows["step"], rows["energy"], style, label=f"{split} energy (seed {seed})", alpha=0.8
        )
    axis.set(xlabel="step", ylabel="energy distance", title=f"Loss ({title})")
    axis.legend()
    return figure
