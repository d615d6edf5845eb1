"""Nodes of the modular ``training`` pipeline (one instance per variant)."""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import pandas as pd
import torch
from matplotlib.figure import Figure

from ptrag_kedro.datasets import CheckpointDirectory
from ptrag_kedro.expression import ExpressionRows
from ptrag_kedro.models import ModelConfig, PerturbationModel
from ptrag_kedro.models.distributed import fit_on_processes
from ptrag_kedro.models.sentences import SentenceSampler, SentenceSpec
from ptrag_kedro.models.training import fit
from ptrag_kedro.parameters import TrainingParameters, VariantParameters
from ptrag_kedro.plotting import new_figure
from ptrag_kedro.provenance import StaleArtefactError, check_inputs
from ptrag_kedro.schema import BATCH, TRAIN, VAL

logger = logging.getLogger(__name__)

#: Version of the model record; a record of another version is refused at prediction.
RECORD_FORMAT = 3  # 3: the transformer is backbone.SetTransformer (its own parameter names)


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
    )


def checked_samplers(
    splits: tuple[str, ...],
    spec: SentenceSpec,
    screen: ad.AnnData,
    split_manifest: dict[str, Any],
    embeddings: pd.DataFrame,
    candidates: pd.DataFrame,
    responses: pd.DataFrame,
) -> tuple[dict[str, str], dict[str, SentenceSampler]]:
    """Refuse stale inputs (candidates and responses only when the sentences read them), then
    one sentence sampler per split; returns the inputs' provenance and the samplers."""
    provenance = check_inputs(
        screen,
        split_manifest,
        embeddings,
        candidates if spec.candidates_k or spec.response_neighbours else None,
        responses if spec.response_neighbours else None,
    )
    inputs = (screen, split_manifest, embeddings, candidates, responses)
    return provenance, make_samplers(splits, spec, *inputs)


def make_samplers(
    splits: tuple[str, ...],
    spec: SentenceSpec,
    screen: ad.AnnData,
    split_manifest: dict[str, Any],
    embeddings: pd.DataFrame,
    candidates: pd.DataFrame,
    responses: pd.DataFrame | None,
) -> dict[str, SentenceSampler]:
    """One sentence sampler per split, all reading X through one :class:`ExpressionRows`."""
    expression = ExpressionRows.of(screen)
    return {
        split: SentenceSampler(
            screen,
            embeddings,
            candidates,
            split=split,
            spec=spec,
            control_label=split_manifest["control_label"],
            responses=responses,
            expression=expression,
        )
        for split in splits
    }


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
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
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
    )
    logger.info(
        "Training %s: %d train and %d val (line, perturbation) groups, %d genes",
        config.retrieval,
        len(samplers[TRAIN]),
        len(samplers[VAL]),
        config.n_genes,
    )
    record = {
        "record_format": RECORD_FORMAT,
        "config": config.to_dict(),
        "sentences": spec.to_dict(),
        "genes": [str(gene) for gene in screen.var_names],
        "perturbations": [str(name) for name in perturbation_embeddings.index],
        "provenance": provenance,
    }
    trained, history = _train_seeds(config, samplers, training, checkpoints, provenance)
    record.update(trained)
    return record, history, plot_loss_history(history, variant.label or config.retrieval)


def _train_seeds(
    config: ModelConfig,
    samplers: dict[str, SentenceSampler],
    training: TrainingParameters,
    checkpoints: CheckpointDirectory,
    provenance: dict[str, str],
) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """One model per seed: the record's per-seed entries, and the loss histories.

    Several devices or nodes train each seed with DDP under torchrun (the same ``fit`` in
    every rank, the same result); one device trains here, in the node's process.
    """
    trained: dict[str, dict[str, Any]] = {
        "state_dicts": {},  # one model per training seed
        "steps": {},
        "selected_steps": {},
        "selected_val_energy": {},
    }
    histories = []
    train = fit_on_processes if training.launches_processes() else fit
    for seed in training.seeds:
        torch.manual_seed(seed)  # the initial weights differ per seed too
        result = train(
            PerturbationModel(config),
            samplers[TRAIN],
            samplers[VAL],
            training,
            seed,
            checkpoints.for_seed(seed),
            provenance,
        )
        trained["state_dicts"][str(seed)] = result.model.state_dict()
        trained["steps"][str(seed)] = result.steps
        trained["selected_steps"][str(seed)] = result.selected_step
        trained["selected_val_energy"][str(seed)] = result.selected_val_energy
        histories.append(result.history.assign(seed=seed))
    return trained, pd.concat(histories, ignore_index=True)


def load_model_config(record: dict[str, Any]) -> ModelConfig:
    """The config of a model record, refusing a record of another format (one line)."""
    if record.get("record_format") != RECORD_FORMAT:
        raise StaleArtefactError(
            "the model record was written by another version of ptrag-kedro; retrain it with "
            "`kedro run --pipelines=training`"
        )
    return ModelConfig(**record["config"])


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
