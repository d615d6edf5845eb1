"""Predictions of a trained variant for every test (cell line, perturbation).

Predictions hold predicted cells only (obs ``perturbation``, ``cell_line``, ``seed``, ``kind``,
``control_cell``); the real and control cells they are compared with are the ``screen``'s. Every
method predicts from the same control cells: each real test cell is paired with one control of
its line drawn from a stream keyed by (``reporting.seed``, line, perturbation), whatever the
method's cell-set size, and ``control_cell`` names it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from ptrag_kedro.models import PerturbationModel
from ptrag_kedro.models.record import ModelRecord
from ptrag_kedro.models.sentences import SentenceGroup, SentenceSampler, checked_samplers
from ptrag_kedro.parameters import ReportingParameters
from ptrag_kedro.progress import logged
from ptrag_kedro.schema import (
    CELL_LINE,
    CONTROL_CELL,
    GATE_COLUMNS,
    PERTURBATION,
    TEST,
    condition_seed,
)

logger = logging.getLogger(__name__)


def predictions_anndata(
    blocks: list[np.ndarray], obs_rows: list[pd.DataFrame], screen: ad.AnnData
) -> ad.AnnData:
    """Predicted cells of several blocks as one AnnData in the screen's gene order."""
    obs = pd.concat(obs_rows, ignore_index=True)
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = pd.Categorical(obs[column])
    obs.index = obs.index.astype(str)
    return ad.AnnData(
        X=np.vstack(blocks).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=screen.var_names.copy()),
    )


def block_obs(
    group: SentenceGroup, seed: int, control_names: np.ndarray, **columns: Any
) -> pd.DataFrame:
    """obs of one block of predicted cells, one row per real cell of ``group``."""
    return pd.DataFrame(
        {
            PERTURBATION: group.perturbation,
            CELL_LINE: group.cell_line,
            "seed": int(seed),
            "kind": "predicted",
            CONTROL_CELL: control_names,
            **columns,
        },
        index=range(len(control_names)),
    )


def _gate_rows(
    sampler: SentenceSampler,
    index: int,
    gates: torch.Tensor,
    seed: int,
    embedding_names: np.ndarray,
) -> pd.DataFrame:
    """Per candidate: the mean gate over the group's real cells (1 = every cell kept it)."""
    group = sampler.groups[index]
    used = gates.reshape(-1, gates.shape[-1])[: len(group.cells)].float().mean(0).cpu().numpy()
    if group.response_slots is not None:
        labels, kinds = group.response_slots.labels, group.response_slots.kinds
    else:
        labels, kinds = list(embedding_names[group.candidate_rows]), ["candidate"] * len(used)
    frame = pd.DataFrame(
        {
            "seed": int(seed),
            CELL_LINE: group.cell_line,
            PERTURBATION: group.perturbation,
            "slot": np.arange(len(used)),
            "candidate": labels,
            "kind": kinds,
            "gate": used,
        }
    )
    return frame[list(GATE_COLUMNS)]


def _generator(device: torch.device, *parts: Any) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(condition_seed(*parts))


def _predict_one_model(
    module: PerturbationModel,
    sampler: SentenceSampler,
    seed: int,
    draw_seed: int,
    cell_names: np.ndarray,
    embedding_names: np.ndarray,
    task: str = "Predicting",
) -> tuple[list[np.ndarray], list[pd.DataFrame], list[pd.DataFrame]]:
    """Predicted cells, their obs and the gates of one trained model, condition by condition
    (about ten progress lines named ``task``)."""
    device = next(module.parameters()).device
    blocks, obs_rows, gate_rows = [], [], []
    groups = logged(enumerate(sampler.groups), logger, task, len(sampler.groups), "conditions")
    for index, group in groups:
        batch, controls = sampler.prediction_batch(index, draw_seed)
        generator = _generator(device, draw_seed, seed, group.cell_line, group.perturbation)
        with torch.no_grad():
            output = module({key: value.to(device) for key, value in batch.items()}, generator)
        predicted = output.predicted.reshape(-1, output.predicted.shape[-1])
        blocks.append(predicted[: len(group.cells)].cpu().numpy())
        obs_rows.append(block_obs(group, seed, cell_names[controls]))
        if output.gates is not None:
            gate_rows.append(_gate_rows(sampler, index, output.gates, seed, embedding_names))
    return blocks, obs_rows, gate_rows


def predict_test_cells(
    model: ModelRecord,
    screen: ad.AnnData,
    perturbation_embeddings: pd.DataFrame,
    retrieval_candidates: pd.DataFrame,
    perturbation_responses: pd.DataFrame,
    split_manifest: dict[str, Any],
    reporting: ReportingParameters,
    split: str = TEST,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Predicted cells for every test condition, as many as the real ones, per training seed.

    Gates follow the model's ``gate_inference`` (PT-RAG samples them from a generator seeded
    per condition, so predictions are reproducible). Returns the predictions and the gates
    table (per seed, condition and candidate: the mean gate; empty for a model without gates).
    ``split`` is ``test`` in the pipeline; choices are made on ``val`` (choose_on_val.py).
    """
    spec = dataclasses.replace(model.sentences, same_batch_controls=reporting.same_batch_controls)
    provenance, samplers = checked_samplers(
        (split,),
        spec,
        screen,
        split_manifest,
        perturbation_embeddings,
        retrieval_candidates,
        perturbation_responses,
    )
    model.check_inputs(list(screen.var_names), provenance)
    sampler = samplers[split]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    blocks, obs_rows, gate_rows = [], [], []
    for seed, module in model.modules():
        seed_blocks, seed_obs, seed_gates = _predict_one_model(
            module.to(device).eval(),
            sampler,
            seed,
            reporting.seed,
            screen.obs_names.to_numpy(),
            np.asarray(perturbation_embeddings.index),
            task=f"Predicting {split} cells of {model.config.retrieval} (seed {seed})",
        )
        blocks += seed_blocks
        obs_rows += seed_obs
        gate_rows += seed_gates
    predictions = predictions_anndata(blocks, obs_rows, screen)
    predictions.uns["method"] = {"retrieval": model.config.retrieval}
    predictions.uns["provenance"] = dict(model.provenance)
    gates = (
        pd.concat(gate_rows, ignore_index=True) if gate_rows else pd.DataFrame(columns=GATE_COLUMNS)
    )
    logger.info("Predicted %d cells for %d test conditions", predictions.n_obs, len(sampler.groups))
    return predictions, gates
