"""Cell sentences: cells, same-line (and same-batch) controls, candidates never the query, and
prediction draws that do not depend on the cell-set size."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.sentences import SentenceSampler, SentenceSpec


def _sampler(
    inputs: dict[str, Any],
    split: str = "train",
    same_batch: bool = False,
    k: int = 5,
    size: int = 7,
    neighbours: int = 0,
    oracle: bool = False,
) -> SentenceSampler:
    return SentenceSampler(
        inputs["screen"],
        inputs["perturbation_embeddings"],
        inputs["retrieval_candidates"],
        split=split,
        spec=SentenceSpec(
            cell_set_size=size,
            candidates_k=k,
            response_neighbours=neighbours,
            same_batch_controls=same_batch,
        ),
        control_label="non-targeting",
        responses=inputs["perturbation_responses"],
        oracle=oracle,
    )


def test_sentence_cells_controls_and_candidates(prepared_inputs) -> None:
    screen = prepared_inputs["screen"]
    embeddings = prepared_inputs["perturbation_embeddings"]
    obs = screen.obs
    for same_batch in (False, True):
        sampler = _sampler(prepared_inputs, same_batch=same_batch)
        batch = sampler.sentences(np.arange(4), np.random.default_rng(1))
        expression = screen.X.toarray() if hasattr(screen.X, "toarray") else screen.X
        for index, group in enumerate(sampler.groups[:4]):
            assert set(obs["split"].iloc[group.cells]) == {"train"}
            assert set(obs["perturbation"].iloc[group.cells]) == {group.perturbation}
            assert embeddings.index[group.embedding_row] == group.perturbation
            names = {embeddings.index[row] for row in group.candidate_rows}
            assert group.perturbation not in names and len(names) == 5
            # every target is a cell of the group, every control a control of its line
            group_cells = expression[group.cells]
            line_controls = expression[
                ((obs["cell_line"] == group.cell_line) & (obs["split"] == "control")).to_numpy()
            ]
            for target, control in zip(
                batch[keys.TARGET][index], batch[keys.CONTROL][index], strict=True
            ):
                assert (np.abs(group_cells - target.numpy()).sum(1) < 1e-5).any()
                assert (np.abs(line_controls - control.numpy()).sum(1) < 1e-5).any()
            own = torch.as_tensor(embeddings.loc[group.perturbation].to_numpy())
            assert not any(torch.equal(own, c) for c in batch[keys.CANDIDATES][index])
        if same_batch:
            targets = sampler.groups[0].cells
            controls = sampler._controls_for(sampler.groups[0], targets, np.random.default_rng(0))
            assert list(obs["batch"].iloc[controls]) == list(obs["batch"].iloc[targets])


def test_prediction_controls_do_not_depend_on_the_sentence_size(prepared_inputs) -> None:
    """Every method predicts from the same controls whatever its S, and baselines read them."""
    draws = []
    for size in (3, 8):
        sampler = _sampler(prepared_inputs, split="test", size=size)
        batch, controls = sampler.prediction_batch(2, seed=11)
        group = sampler.groups[2]
        n_sentences = -(-len(group.cells) // size)
        assert batch[keys.CONTROL].shape[:2] == (n_sentences, size)
        np.testing.assert_array_equal(controls, sampler.prediction_controls(2, seed=11))
        draws.append(controls)
    np.testing.assert_array_equal(draws[0], draws[1])
    other = _sampler(prepared_inputs, split="test").prediction_controls(2, seed=12)
    assert not np.array_equal(draws[0], other)


def test_val_sentences_and_no_retrieval(prepared_inputs) -> None:
    sampler = _sampler(prepared_inputs, split="val", k=0)
    batch = sampler.random_batch(2, np.random.default_rng(0))
    assert keys.CANDIDATES not in batch and keys.RESPONSES not in batch
    val = set(prepared_inputs["split_manifest"]["cell_lines"]["hepg2"]["val"])
    assert {group.perturbation for group in sampler.groups} == val


def test_response_slots_in_batches(prepared_inputs) -> None:
    sampler = _sampler(prepared_inputs, k=0, neighbours=2)
    batch = sampler.random_batch(3, np.random.default_rng(0))
    n_lines = len(prepared_inputs["split_manifest"]["cell_lines"])
    n_slots = n_lines - 1 + 2 * 2 + 1
    n_genes = prepared_inputs["screen"].n_vars
    assert batch[keys.RESPONSES].shape == (3, n_slots, n_genes)
    assert batch[keys.RESPONSE_FEATURES].shape == (3, n_slots, keys.N_RESPONSE_FEATURES)
    assert batch[keys.RESPONSE_MASK].dtype == torch.bool
    # an empty slot reads zeros and has no features
    empty = ~batch[keys.RESPONSE_MASK]
    assert torch.all(batch[keys.RESPONSES][empty] == 0)
    assert torch.all(batch[keys.RESPONSE_FEATURES][empty] == 0)


def test_oracle_candidate_carries_the_true_shift(prepared_inputs) -> None:
    screen = prepared_inputs["screen"]
    responses = _sampler(prepared_inputs, k=0, neighbours=2, oracle=True)
    embeddings = _sampler(prepared_inputs, k=3, oracle=True)
    group = responses.groups[0]
    expression = screen.X.toarray() if hasattr(screen.X, "toarray") else screen.X
    obs = screen.obs
    controls = expression[
        ((obs["cell_line"] == group.cell_line) & (obs["split"] == "control")).to_numpy()
    ]
    truth = expression[group.cells].mean(0) - controls.mean(0)
    batch = responses.sentences(np.array([0]), np.random.default_rng(0))
    np.testing.assert_allclose(batch[keys.RESPONSES][0, -1].numpy(), truth, atol=1e-5)
    assert batch[keys.RESPONSE_MASK][0, -1]
    assert batch[keys.RESPONSE_FEATURES][0, -1, keys.RESPONSE_KINDS.index("oracle")] == 1
    candidates = embeddings.sentences(np.array([0, 1]), np.random.default_rng(0))[keys.CANDIDATES]
    assert candidates.shape[1] == 4  # k = 3, plus the oracle
    assert not torch.allclose(candidates[0, -1], candidates[1, -1])  # one per query


def test_bad_candidate_tables_are_refused(prepared_inputs) -> None:
    candidates = prepared_inputs["retrieval_candidates"].copy()
    candidates.loc[candidates.index[0], "candidate"] = candidates.loc[
        candidates.index[0], "perturbation"
    ]
    with pytest.raises(ValueError, match="its own candidate"):
        _sampler({**prepared_inputs, "retrieval_candidates": candidates})
    too_few = prepared_inputs["retrieval_candidates"].query("rank < 2")
    with pytest.raises(ValueError, match="retrieval_index.k"):
        _sampler({**prepared_inputs, "retrieval_candidates": pd.DataFrame(too_few)})
