"""Cell sentences: cells, same-line (and same-batch) controls, candidates never the query, and
prediction draws that do not depend on the cell-set size."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.response_bank import ResponseBank
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


def _dense(screen) -> np.ndarray:
    return screen.X.toarray() if hasattr(screen.X, "toarray") else np.asarray(screen.X)


def test_sentence_cells_controls_and_candidates(prepared_inputs) -> None:
    screen = prepared_inputs["screen"]
    embeddings = prepared_inputs["perturbation_embeddings"]
    candidates = prepared_inputs["retrieval_candidates"]
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
            # ... and the candidates are its first 5 of retrieval_candidates, in rank order
            ranked = candidates[candidates["perturbation"] == group.perturbation]
            top = ranked.sort_values("rank")["candidate"].tolist()[:5]
            torch.testing.assert_close(
                batch[keys.CANDIDATES][index],
                torch.as_tensor(embeddings.loc[top].to_numpy(dtype=np.float32)),
            )
        if same_batch:
            targets = sampler.groups[0].cells
            controls = sampler._controls_for(sampler.groups[0], targets, np.random.default_rng(0))
            assert list(obs["batch"].iloc[controls]) == list(obs["batch"].iloc[targets])


def test_prediction_controls_do_not_depend_on_the_sentence_size(prepared_inputs) -> None:
    """Every method predicts from the same controls whatever its S, and baselines read them.

    The controls a prediction batch reports are the cells its sentences hold, in order: a model
    that predicted from another draw than the one recorded (and read by the baselines) fails.
    """
    screen = prepared_inputs["screen"]
    expression = np.asarray(_dense(screen), dtype=np.float32)
    draws = []
    padded = 0
    for size in (3, 8):
        sampler = _sampler(prepared_inputs, split="test", size=size)
        batch, controls = sampler.prediction_batch(2, seed=11)
        group = sampler.groups[2]
        n_cells = len(group.cells)
        n_sentences = -(-n_cells // size)
        assert batch[keys.CONTROL].shape[:2] == (n_sentences, size)
        np.testing.assert_array_equal(controls, sampler.prediction_controls(2, seed=11))
        line_controls = np.flatnonzero(
            (screen.obs["cell_line"] == group.cell_line) & (screen.obs["split"] == "control")
        )
        assert len(controls) == n_cells and set(controls) <= set(line_controls)
        sent_controls = batch[keys.CONTROL].reshape(-1, screen.n_vars).numpy()
        sent_targets = batch[keys.TARGET].reshape(-1, screen.n_vars).numpy()
        # every real cell once, in order, each beside exactly its recorded control
        np.testing.assert_array_equal(sent_targets[:n_cells], expression[group.cells])
        np.testing.assert_array_equal(sent_controls[:n_cells], expression[controls])
        # the padding: more cells of the group, each with a control of its line
        for target, control in zip(sent_targets[n_cells:], sent_controls[n_cells:], strict=True):
            assert (expression[group.cells] == target).all(1).any()
            assert (expression[line_controls] == control).all(1).any()
        padded += len(sent_targets) - n_cells
        draws.append(controls)
    assert padded > 0  # the padding was checked for at least one S
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
    """Each sentence carries its own group's slots: the layout follows the lines and the number
    of neighbours, the values those of a response bank built apart."""
    neighbours = 2
    sampler = _sampler(prepared_inputs, k=0, neighbours=neighbours)
    lines = sorted(prepared_inputs["split_manifest"]["cell_lines"])
    bank = ResponseBank(
        prepared_inputs["perturbation_responses"],
        prepared_inputs["retrieval_candidates"],
        [str(gene) for gene in prepared_inputs["screen"].var_names],
        lines,
        neighbours,
    )
    layout = [
        *["same_gene_other_line"] * (len(lines) - 1),
        *["neighbour_same_line"] * neighbours,
        *["neighbour_other_lines"] * neighbours,
        "context",
    ]
    indices = np.array([0, len(sampler.groups) // 2, len(sampler.groups) - 1])
    batch = sampler.sentences(indices, np.random.default_rng(0))
    n_genes = prepared_inputs["screen"].n_vars
    assert batch[keys.RESPONSES].shape == (len(indices), len(layout), n_genes)
    assert batch[keys.RESPONSE_MASK].dtype == torch.bool
    for position, index in enumerate(indices):
        group = sampler.groups[index]
        slots = bank.slots(group.cell_line, group.perturbation)
        assert slots.kinds == layout
        expected = bank.gather([slots])
        for key in (keys.RESPONSES, keys.RESPONSE_FEATURES, keys.RESPONSE_MASK):
            torch.testing.assert_close(batch[key][position], expected[key][0], msg=key)
        # a filled slot's features name its kind
        mask = batch[keys.RESPONSE_MASK][position]
        one_hot = batch[keys.RESPONSE_FEATURES][position][:, : len(keys.RESPONSE_KINDS)]
        assert [keys.RESPONSE_KINDS[kind] for kind in one_hot[mask].argmax(1)] == [
            kind for kind, filled in zip(layout, mask.tolist(), strict=True) if filled
        ]
    # the three groups retrieve different responses (a mix-up of sentences would show)
    assert not torch.allclose(batch[keys.RESPONSES][0], batch[keys.RESPONSES][-1])
    # an empty slot reads zeros and has no features
    empty = ~batch[keys.RESPONSE_MASK]
    assert empty.any() and batch[keys.RESPONSE_MASK].any()
    assert torch.all(batch[keys.RESPONSES][empty] == 0)
    assert torch.all(batch[keys.RESPONSE_FEATURES][empty] == 0)


def _true_shift(screen, group) -> np.ndarray:
    """The group's mean shift from its line's controls, from the screen."""
    expression, obs = _dense(screen), screen.obs
    controls = expression[
        ((obs["cell_line"] == group.cell_line) & (obs["split"] == "control")).to_numpy()
    ]
    return expression[group.cells].mean(0) - controls.mean(0)


def test_oracle_candidate_carries_the_true_shift(prepared_inputs) -> None:
    screen = prepared_inputs["screen"]
    responses = _sampler(prepared_inputs, k=0, neighbours=2, oracle=True)
    group = responses.groups[0]
    truth = _true_shift(screen, group)
    batch = responses.sentences(np.array([0]), np.random.default_rng(0))
    np.testing.assert_allclose(batch[keys.RESPONSES][0, -1].numpy(), truth, atol=1e-5)
    assert batch[keys.RESPONSE_MASK][0, -1]
    assert batch[keys.RESPONSE_FEATURES][0, -1, keys.RESPONSE_KINDS.index("oracle")] == 1
    k = 3
    sampler = _sampler(prepared_inputs, k=k, oracle=True)
    candidates = sampler.sentences(np.array([0, 1]), np.random.default_rng(0))[keys.CANDIDATES]
    assert candidates.shape[1] == k + 1  # its k candidates, then the oracle
    embeddings = prepared_inputs["perturbation_embeddings"]
    largest_norm = np.linalg.norm(embeddings.to_numpy(), axis=1).max()
    for position in (0, 1):
        group = sampler.groups[position]
        torch.testing.assert_close(
            candidates[position, :k],
            torch.as_tensor(embeddings.to_numpy(dtype=np.float32)[group.candidate_rows]),
        )
        # the oracle: this group's own true shift, projected, at the largest embedding norm
        encoded = torch.as_tensor(_true_shift(screen, group), dtype=torch.float32)
        encoded = encoded @ sampler._oracle_projection
        torch.testing.assert_close(
            candidates[position, -1],
            encoded / encoded.norm() * float(largest_norm),
            rtol=1e-4,
            atol=1e-4,
        )
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
