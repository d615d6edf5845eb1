"""Nodes of the modular ``training`` pipeline (one instance per variant)."""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import pandas as pd
import torch
from matplotlib.figure import Figure

from ptrag_kedro.datasets import CheckpointDirectory
from ptrag_kedro.models import PerturbationModel
from ptrag_kedro.models.distributed import fit_on_processes
from ptrag_kedro.models.record import ModelRecord
from ptrag_kedro.models.sentences import SentenceSampler, SentenceSpec, checked_samplers
from ptrag_kedro.models.training import fit
from ptrag_kedro.parameters import TrainingParameters, VariantParameters
from ptrag_kedro.plotting import new_figure
from ptrag_kedro.schema import BATCH, TRAIN, VAL

logger = logging.getLogger(__name__)


def sentence_spec(
    training: TrainingParameters, variant: VariantParameters, candidates: pd.DataFrame
) -> SentenceSpec:
    """What the variant reads per sentence (``candidates_k: auto`` resolved on ``candidates``)."""
    listed = int(candidates["rank"].max()) + 1 if len(candidates) else 0
    return SentenceSpec(
        cell_set_size=training.cell_set_size,
        candidates_k=variant.resolved_candidates_k(listed),
        response_neighbours=variant.response_neighbours if variant.retrieval == "response" else 0,
        same_batch_controls=training.same_batch_controls,
        response_kinds=variant.response_kinds if variant.retrieval == "response" else (),
    )


def train_model(
    screen: ad.AnnData,
    perturbation_embeddings: pd.DataFrame,
    retrieval_candidates: pd.DataFrame,
    perturbation_responses: pd.DataFrame,
    split_manifest: dict[str, Any],
    training: TrainingParameters,
    model: dict[str, Any],
    variant: VariantParameters,
    checkpoints: CheckpointDirectory,
) -> tuple[ModelRecord, pd.DataFrame, Figure]:
    """Train one variant (one model per seed) on the train split; select on val.

    Every variant gets the same perturbation features (the embeddings) and backbone (``model``);
    only its ``variants.<name>`` parameters differ. Returns the model record, the loss history
    and its plot.
    """
    config = variant.model_config(
        model,
        n_genes=screen.n_vars,
        embedding_dim=perturbation_embeddings.shape[1],
        n_batches=screen.obs[BATCH].nunique() if training.batch_embedding else 0,
    )
    spec = sentence_spec(training, variant, retrieval_candidates)
    provenance, samplers = checked_samplers(
        (TRAIN, VAL),
        spec,
        screen,
        split_manifest,
        perturbation_embeddings,
        retrieval_candidates,
        perturbation_responses,
        training.in_memory,
    )
    logger.info(
        "Training %s: %d train and %d val (line, perturbation) groups, %d genes",
        config.retrieval,
        len(samplers[TRAIN]),
        len(samplers[VAL]),
        config.n_genes,
    )
    record = ModelRecord(
        config=config,
        sentences=spec,
        genes=[str(gene) for gene in screen.var_names],
        perturbations=[str(name) for name in perturbation_embeddings.index],
        provenance=provenance,
    )
    history = _train_seeds(record, samplers, training, checkpoints)
    return record, history, plot_loss_history(history, variant.label or config.retrieval)


def _train_seeds(
    record: ModelRecord,
    samplers: dict[str, SentenceSampler],
    training: TrainingParameters,
    checkpoints: CheckpointDirectory,
) -> pd.DataFrame:
    """One model per seed, added to ``record``; returns the loss histories.

    Several devices or nodes train each seed with DDP under torchrun (the same ``fit`` in
    every rank, the same result); one device trains here, in the node's process.
    """
    histories = []
    train = fit_on_processes if training.launches_processes() else fit
    for seed in training.seeds:
        torch.manual_seed(seed)  # the initial weights differ per seed too
        result = train(
            PerturbationModel(record.config),
            samplers[TRAIN],
            samplers[VAL],
            training,
            seed,
            checkpoints.for_seed(seed),
            record.provenance,
        )
        record.add_seed(
            seed,
            result.model.state_dict(),
            result.steps,
            result.selected_step,
            result.selected_val_energy,
        )
        histories.append(result.history.assign(seed=seed))
    return pd.concat(histories, ignore_index=True)


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
