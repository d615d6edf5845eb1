"""The response bank: what a query retrieves, transferred how, and never its own data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.response_bank import ResponseBank
from ptrag_kedro.pipelines.retrieval_index.nodes import build_perturbation_responses

NEIGHBOURS = 3


def _bank(inputs: dict[str, Any], responses: pd.DataFrame | None = None) -> ResponseBank:
    return ResponseBank(
        inputs["perturbation_responses"] if responses is None else responses,
        inputs["retrieval_candidates"],
        [str(gene) for gene in inputs["screen"].var_names],
        sorted(inputs["split_manifest"]["cell_lines"]),
        NEIGHBOURS,
    )


def _dense(screen) -> np.ndarray:
    return screen.X.toarray() if hasattr(screen.X, "toarray") else np.asarray(screen.X)


def _brute_force_shifts(screen) -> dict[tuple[str, str], tuple[np.ndarray, int]]:
    """Every train group's mean shift from its line's controls, cell by cell."""
    expression, obs = _dense(screen), screen.obs
    shifts = {}
    for line in obs["cell_line"].unique():
        in_line = (obs["cell_line"] == line).to_numpy()
        control = expression[in_line & (obs["split"] == "control").to_numpy()].mean(0)
        for name in obs.loc[
            in_line & (obs["split"] == "train").to_numpy(), "perturbation"
        ].unique():
            rows = in_line & (obs["perturbation"] == name).to_numpy()
            shifts[(str(line), str(name))] = (expression[rows].mean(0) - control, int(rows.sum()))
    return shifts


def _train_queries(inputs: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (line, name)
        for line, entry in inputs["split_manifest"]["cell_lines"].items()
        for name in entry["train"]
    ]


def test_slots_transfer_other_lines_to_the_query_line(prepared_inputs) -> None:
    """Every slot value against a cell-by-cell computation from the screen."""
    bank = _bank(prepared_inputs)
    shifts = _brute_force_shifts(prepared_inputs["screen"])

    def context(line: str, leave_out: str | None = None) -> np.ndarray:
        entries = [
            (shift, n)
            for (where, g), (shift, n) in shifts.items()
            if where == line and g != leave_out
        ]
        return sum(n * shift for shift, n in entries) / sum(n for _, n in entries)

    checked = 0
    test = prepared_inputs["split_manifest"]["cell_lines"]["hepg2"]["test"]
    for line, name in [*_train_queries(prepared_inputs)[::7], *(("hepg2", g) for g in test)]:
        slots = bank.slots(line, name)
        values = bank.gather([slots])[keys.RESPONSES][0].numpy()
        own = name if (line, name) in shifts else None
        query_context = context(line, leave_out=own)
        for value, label, kind, filled in zip(
            values, slots.labels, slots.kinds, slots.mask, strict=True
        ):
            if not filled:
                assert not value.any()
                continue
            other_name, other_line = label.split("@")
            if kind == "same_gene_other_line":
                expected = shifts[(other_line, name)][0] - context(other_line) + query_context
            elif kind == "neighbour_same_line":
                expected = shifts[(line, other_name)][0]
            elif kind == "neighbour_other_lines":
                expected = (
                    np.mean(
                        [
                            shifts[(other, other_name)][0] - context(other)
                            for other in bank.cell_lines
                            if other != line and (other, other_name) in shifts
                        ],
                        axis=0,
                    )
                    + query_context
                )
            else:
                expected = query_context
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=label)
            checked += 1
    assert checked > 50


def test_neighbours_are_train_in_the_line_and_never_the_query(prepared_inputs) -> None:
    bank = _bank(prepared_inputs)
    manifest = prepared_inputs["split_manifest"]["cell_lines"]
    candidates = prepared_inputs["retrieval_candidates"]
    for line, name in _train_queries(prepared_inputs):
        slots = bank.slots(line, name)
        ranked = list(candidates.loc[candidates["perturbation"] == name, "candidate"])
        in_line = [
            label.split("@")[0]
            for label, kind in zip(slots.labels, slots.kinds, strict=True)
            if kind == "neighbour_same_line" and label
        ]
        # the first NEIGHBOURS of its GenePT candidates that are train in the line, in order
        assert in_line == [c for c in ranked if c in manifest[line]["train"]][:NEIGHBOURS]
        assert name not in in_line
        same_gene = [
            label.split("@")[1]
            for label, kind in zip(slots.labels, slots.kinds, strict=True)
            if kind == "same_gene_other_line" and label
        ]
        assert line not in same_gene


def test_no_train_query_retrieves_its_own_group(prepared_inputs) -> None:
    """Change every cell of one train group: nothing that group's query retrieves changes."""
    screen = prepared_inputs["screen"].copy()
    obs = screen.obs
    checked = 0
    for line, name in _train_queries(prepared_inputs)[::5]:
        rows = ((obs["cell_line"] == line) & (obs["perturbation"] == name)).to_numpy()
        changed = screen.copy()
        expression = _dense(changed)
        expression[rows] += 5.0  # the group's response is now very different
        changed.X = expression
        before = _bank(prepared_inputs).gather([_bank(prepared_inputs).slots(line, name)])
        after_bank = _bank(
            prepared_inputs,
            build_perturbation_responses(changed, prepared_inputs["split_manifest"]),
        )
        after = after_bank.gather([after_bank.slots(line, name)])
        for key in (keys.RESPONSES, keys.RESPONSE_FEATURES, keys.RESPONSE_MASK):
            np.testing.assert_allclose(
                before[key].numpy().astype(float), after[key].numpy().astype(float), atol=1e-5
            )
        # ... while the group's own entry in the database did change
        assert not np.allclose(
            after_bank.shifts[after_bank.row_of[(line, name)]],
            _bank(prepared_inputs).shifts[after_bank.row_of[(line, name)]],
        )
        checked += 1
    assert checked >= 5


def test_the_database_holds_train_groups_only(prepared_inputs) -> None:
    responses = prepared_inputs["perturbation_responses"]
    manifest = prepared_inputs["split_manifest"]["cell_lines"]
    entries = set(zip(responses["cell_line"], responses["perturbation"], strict=True))
    train = {(line, name) for line, entry in manifest.items() for name in entry["train"]}
    held_out = {
        (line, name)
        for line, entry in manifest.items()
        for k in ("val", "test")
        for name in entry[k]
    }
    assert entries == train and not entries & held_out


def test_another_gene_order_is_refused(prepared_inputs) -> None:
    responses = prepared_inputs["perturbation_responses"]
    genes = [c for c in responses.columns if c not in ("cell_line", "perturbation", "n_cells")]
    shuffled = responses[["cell_line", "perturbation", "n_cells", *reversed(genes)]]
    with pytest.raises(ValueError, match="another gene order"):
        _bank(prepared_inputs, shuffled)


def test_the_gate_keeps_a_planted_oracle(prepared_inputs, tmp_path) -> None:
    """With the query's own true shift planted as a slot, the gate learns to weigh it most."""
    import torch

    from ptrag_kedro.models import PerturbationModel
    from ptrag_kedro.models.sentences import SentenceSampler, SentenceSpec
    from ptrag_kedro.models.training import fit, validation_batches
    from ptrag_kedro.parameters import VariantParameters
    from tests.conftest import TINY_BACKBONE, tiny_training

    spec = SentenceSpec(cell_set_size=8, response_neighbours=2)
    samplers = {
        split: SentenceSampler(
            prepared_inputs["screen"],
            prepared_inputs["perturbation_embeddings"],
            prepared_inputs["retrieval_candidates"],
            split,
            spec,
            "non-targeting",
            prepared_inputs["perturbation_responses"],
            oracle=True,
        )
        for split in ("train", "test")
    }
    config = VariantParameters(model={"retrieval": "response"}, response_neighbours=2).model_config(
        TINY_BACKBONE, prepared_inputs["screen"].n_vars, 32, 0
    )
    torch.manual_seed(0)
    training = tiny_training(max_steps=150, val_every_n_steps=150, learning_rate=0.01)
    result = fit(
        PerturbationModel(config), samplers["train"], samplers["test"], training, 0, tmp_path
    )
    gates = []
    with torch.no_grad():
        for batch in validation_batches(samplers["test"], 8, seed=0):
            gates.append(result.model(batch).gates[:, 0, :])  # [B, R + 1]: per sentence
    gates = torch.cat(gates)
    oracle, others = gates[:, -1].mean().item(), gates[:, :-1].mean().item()
    assert oracle > 0.5 and oracle > 10 * others


def test_response_kinds_leave_the_other_slots_empty(prepared_inputs) -> None:
    """A bank given some kinds fills only those; the layout (and every filled slot) is the
    full bank's, so a model reads the same slot positions either way."""
    full = _bank(prepared_inputs)
    kinds = ("neighbour_same_line", "context")
    partial = ResponseBank(
        prepared_inputs["perturbation_responses"],
        prepared_inputs["retrieval_candidates"],
        [str(gene) for gene in prepared_inputs["screen"].var_names],
        sorted(prepared_inputs["split_manifest"]["cell_lines"]),
        NEIGHBOURS,
        kinds,
    )
    assert partial.n_slots == full.n_slots
    dropped = 0
    for line, name in _train_queries(prepared_inputs)[::3]:
        every, some = full.slots(line, name), partial.slots(line, name)
        assert some.kinds == every.kinds
        for kind, kept, filled in zip(every.kinds, some.mask, every.mask, strict=True):
            assert kept == (filled and kind in kinds)
            dropped += int(filled and not kept)
        values = partial.gather([some])[keys.RESPONSES][0].numpy()
        np.testing.assert_array_equal(
            values[some.mask], full.gather([every])[keys.RESPONSES][0].numpy()[some.mask]
        )
        assert not values[~some.mask].any()
    assert dropped > 0  # the same-gene slots of train queries were there to drop


def test_the_variant_kinds_are_the_banks_kinds() -> None:
    from ptrag_kedro.parameters import RESPONSE_SLOT_KINDS, VariantParameters

    assert set(RESPONSE_SLOT_KINDS) == set(keys.RESPONSE_KINDS) - {"oracle"}
    with pytest.raises(ValueError, match="response_kinds must be a list among"):
        VariantParameters(
            model={"retrieval": "response"}, response_neighbours=2, response_kinds=["oracle"]
        )
