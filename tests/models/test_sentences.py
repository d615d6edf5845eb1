"""Cell sentences: shapes, same-line (and same-batch) controls, candidates never the query itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.sentences import SentenceSampler


def _sampler(
    inputs: dict[str, Any], split: str = "train", same_batch: bool = False, k: int = 5
) -> SentenceSampler:
    return SentenceSampler(
        inputs["screen"],
        inputs["perturbation_embeddings"],
        inputs["retrieval_candidates"],
        split=split,
        cell_set_size=7,
        same_batch_controls=same_batch,
        k=k,
        control_label="non-targeting",
    )


def test_batches_have_the_right_shapes(prepared_inputs) -> None:
    sampler = _sampler(prepared_inputs)
    batch = sampler.random_batch(4, np.random.default_rng(0))
    n_genes = prepared_inputs["screen"].n_vars
    assert batch[keys.CONTROL].shape == batch[keys.TARGET].shape == (4, 7, n_genes)
    assert batch[keys.PERTURBATION].shape == (
        4,
        prepared_inputs["perturbation_embeddings"].shape[1],
    )
    assert batch[keys.CANDIDATES].shape == (
        4,
        5,
        prepared_inputs["perturbation_embeddings"].shape[1],
    )
    assert batch[keys.BATCH_INDEX].shape == (4, 7)


def test_sentence_cells_controls_and_candidates(prepared_inputs) -> None:
    screen = prepared_inputs["screen"]
    embeddings = prepared_inputs["perturbation_embeddings"]
    obs = screen.obs
    for same_batch in (False, True):
        sampler = _sampler(prepared_inputs, same_batch=same_batch)
        rng = np.random.default_rng(1)
        for index, group in enumerate(sampler.groups):
            assert set(obs["split"].iloc[group.cells]) == {"train"}
            assert set(obs["perturbation"].iloc[group.cells]) == {group.perturbation}
            assert group.perturbation not in {embeddings.index[row] for row in group.candidate_rows}
            assert embeddings.index[group.embedding_row] == group.perturbation
            if index < 5:
                targets = rng.choice(group.cells, 7)
                controls = sampler._controls_for(group, targets, rng)
                assert set(obs["perturbation"].iloc[controls]) == {"non-targeting"}
                assert set(obs["cell_line"].iloc[controls]) == {group.cell_line}
                if same_batch:
                    assert list(obs["batch"].iloc[controls]) == list(obs["batch"].iloc[targets])
    batch = sampler.sentences(np.array([0]), np.random.default_rng(2))
    own = torch.as_tensor(embeddings.loc[sampler.groups[0].perturbation].to_numpy())
    assert not any(torch.equal(own, candidate) for candidate in batch[keys.CANDIDATES][0])


def test_val_sentences_and_no_retrieval(prepared_inputs) -> None:
    sampler = _sampler(prepared_inputs, split="val", k=0)
    assert sampler.groups and keys.CANDIDATES not in sampler.random_batch(
        2, np.random.default_rng(0)
    )
    val = set(prepared_inputs["split_manifest"]["cell_lines"]["hepg2"]["val"])
    assert {group.perturbation for group in sampler.groups} == val


def test_a_candidate_table_listing_the_query_is_refused(prepared_inputs) -> None:
    candidates = prepared_inputs["retrieval_candidates"].copy()
    candidates.loc[candidates.index[0], "candidate"] = candidates.loc[
        candidates.index[0], "perturbation"
    ]
    with pytest.raises(ValueError, match="its own candidate"):
        _sampler({**prepared_inputs, "retrieval_candidates": candidates})
    too_few = prepared_inputs["retrieval_candidates"].query("rank < 2")
    with pytest.raises(ValueError, match="fewer than k=5"):
        _sampler({**prepared_inputs, "retrieval_candidates": pd.DataFrame(too_few)})
