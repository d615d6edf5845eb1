"""The response bank: which observed train responses a query may retrieve, and their tensors.

For a query (cell line L, perturbation g) the slots are, in a fixed layout:

1. g in every other line L' where it is train: its shift there, transferred to L;
2. up to ``neighbours`` GenePT neighbours of g that are train in L: their shift in L, as is;
3. up to ``neighbours`` GenePT neighbours train in another line: the mean over those lines of
   their transferred shift;
4. L's context: the mean shift of L's train-perturbed cells (cell-weighted).

A shift from line L' is *transferred* to L by removing L''s context and adding L's: the
perturbation-specific part travels, the line-wide systematic part is the query line's own.

Leakage rules, by construction: the bank holds train groups only (``perturbation_responses``),
so no val/test (line, gene) can be retrieved; and a train query never sees its own (L, g) group:
slots 1 and 3 read other lines only, slot 2 never lists g (candidates exclude the query), and
its context (also the one its transfers add) leaves (L, g)'s cells out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ptrag_kedro.models import _constants as keys
from ptrag_kedro.schema import CELL_LINE, PERTURBATION, RESPONSE_COLUMNS

KIND = {name: index for index, name in enumerate(keys.RESPONSE_KINDS)}


@dataclass
class ResponseSlots:
    """The response slots of one query (cell line, perturbation)."""

    value_rows: np.ndarray  # [R] rows of the bank's value table (row 0 is zeros)
    add_context: np.ndarray  # [R] bool: add the query line's context shift to the value
    mask: np.ndarray  # [R] bool: the slot is filled
    features: np.ndarray  # [R, F] kind one-hot, similarity, log1p(cells) / 10
    labels: list[str] = field(default_factory=list)  # what each slot holds, for the gates table
    kinds: list[str] = field(default_factory=list)
    line: int = -1  # the query line among the bank's lines (-1: it has no train responses)
    own_row: int = -1  # the query's own train group (left out of its context), -1 if none
    context_cells: float = 0.0  # cells behind the query's context (0: no context)


class ResponseBank:
    """Observed train responses and the slot layout every query reads.

    Args:
        responses: ``perturbation_responses`` (train groups only).
        candidates: ``retrieval_candidates`` (GenePT neighbours, self excluded, by rank).
        genes: the screen's gene order; the table's gene columns must follow it.
        cell_lines: every line of the screen (slot 1 has one slot per other line).
        neighbours: slots of kinds 2 and 3 each.
        kinds: the slot kinds that are filled (empty: all); the others stay empty and masked,
            e.g. no same-gene slot where every query's gene is unseen, so training looks like
            test.
    """

    def __init__(
        self,
        responses: pd.DataFrame,
        candidates: pd.DataFrame,
        genes: list[str],
        cell_lines: list[str],
        neighbours: int,
        kinds: tuple[str, ...] = (),
    ) -> None:
        gene_columns = [column for column in responses.columns if column not in RESPONSE_COLUMNS]
        if gene_columns != [str(gene) for gene in genes]:
            raise ValueError(
                "perturbation_responses has another gene order than the screen; rebuild it with "
                "`kedro run --pipelines=retrieval_index`"
            )
        self.cell_lines = list(cell_lines)
        self.neighbours = int(neighbours)
        self.kinds = frozenset(kinds or keys.RESPONSE_KINDS)
        self.shifts = responses[gene_columns].to_numpy(dtype=np.float32)  # [N, G]
        self.n_cells = responses["n_cells"].to_numpy(dtype=np.float64)
        row_lines = responses[CELL_LINE].astype(str).to_numpy()
        self.row_of = {
            (line, name): row
            for row, (line, name) in enumerate(
                zip(row_lines, responses[PERTURBATION].astype(str), strict=True)
            )
        }
        self.lines = sorted(set(row_lines))
        line_of_row = np.array([self.lines.index(line) for line in row_lines], dtype=np.int64)
        self.sums = np.zeros((len(self.lines), self.shifts.shape[1]))
        np.add.at(self.sums, line_of_row, self.n_cells[:, None] * self.shifts)
        self.counts = np.bincount(line_of_row, weights=self.n_cells, minlength=len(self.lines))
        context = self.sums / self.counts[:, None]
        specific = self.shifts - context[line_of_row]
        other_means, self.other_row = self._other_line_means(specific, row_lines, responses)
        # Value table: zeros, raw shifts, line-specific shifts, other-line means of those.
        self.values = torch.as_tensor(
            np.vstack([np.zeros((1, self.shifts.shape[1])), self.shifts, specific, other_means]),
            dtype=torch.float32,
        )
        self.n_rows = len(self.shifts)
        self.neighbours_of = {
            name: list(zip(group["candidate"], group["similarity"], strict=True))
            for name, group in candidates.sort_values(["perturbation", "rank"]).groupby(
                "perturbation", sort=False
            )
        }

    def _other_line_means(
        self, specific: np.ndarray, row_lines: np.ndarray, responses: pd.DataFrame
    ) -> tuple[np.ndarray, dict[tuple[str, str], tuple[int, float]]]:
        """Per (perturbation, query line): mean specific shift over the *other* lines."""
        rows_by_name = responses.groupby(PERTURBATION, sort=True).indices
        means, index = [], {}
        for name, rows in rows_by_name.items():
            for line in self.cell_lines:
                others = rows[row_lines[rows] != line]
                if len(others):
                    index[(str(name), line)] = (len(means), float(self.n_cells[others].sum()))
                    means.append(specific[others].mean(0))
        width = specific.shape[1]
        return (np.array(means).reshape(-1, width), index)

    @property
    def n_slots(self) -> int:
        return len(self.cell_lines) - 1 + 2 * self.neighbours + 1

    def slots(self, line: str, perturbation: str) -> ResponseSlots:
        """The slots of the query (``line``, ``perturbation``)."""
        builder = _SlotBuilder(self.kinds)
        for other in self.cell_lines:
            if other == line:
                continue
            row = self.row_of.get((other, perturbation))
            builder.add(
                "same_gene_other_line",
                f"{perturbation}@{other}",
                None if row is None else 1 + self.n_rows + row,  # specific shift, transferred
                True,
                1.0,
                0.0 if row is None else self.n_cells[row],
            )
        neighbours = self.neighbours_of.get(perturbation, [])
        in_line = [
            (n, s, self.row_of[(line, n)]) for n, s in neighbours if (line, n) in self.row_of
        ]
        for slot in range(self.neighbours):
            name, similarity, row = in_line[slot] if slot < len(in_line) else ("", 0.0, None)
            builder.add(
                "neighbour_same_line",
                f"{name}@{line}",
                None if row is None else 1 + row,  # the raw shift: same line, nothing to move
                False,
                similarity,
                0.0 if row is None else self.n_cells[row],
            )
        elsewhere = [
            (n, s, *self.other_row[(n, line)]) for n, s in neighbours if (n, line) in self.other_row
        ]
        for slot in range(self.neighbours):
            filled = slot < len(elsewhere)
            name, similarity, row, cells = elsewhere[slot] if filled else ("", 0.0, None, 0.0)
            builder.add(
                "neighbour_other_lines",
                f"{name}@other lines",
                None if row is None else 1 + 2 * self.n_rows + row,
                True,
                similarity,
                cells,
            )
        line_index = self.lines.index(line) if line in self.lines else -1
        own_row = self.row_of.get((line, perturbation), -1)
        context_cells = 0.0
        if line_index >= 0:
            context_cells = self.counts[line_index] - (self.n_cells[own_row] if own_row >= 0 else 0)
        builder.add(
            "context", f"context@{line}", 0 if context_cells > 0 else None, True, 0.0, context_cells
        )
        return builder.build(line_index, own_row, context_cells)

    def context(self, slots: list[ResponseSlots]) -> np.ndarray:
        """Each query's context shift [B, G]: its line's train groups minus its own (if any)."""
        result = np.zeros((len(slots), self.shifts.shape[1]))
        for position, entry in enumerate(slots):
            if entry.context_cells <= 0:
                continue
            total = self.sums[entry.line].copy()
            if entry.own_row >= 0:
                total -= self.n_cells[entry.own_row] * self.shifts[entry.own_row]
            result[position] = total / entry.context_cells
        return result

    def gather(self, slots: list[ResponseSlots]) -> dict[str, torch.Tensor]:
        """The batch tensors of these queries' slots: values [B, R, G], features, mask."""
        rows = torch.as_tensor(np.stack([entry.value_rows for entry in slots]))
        values = self.values[rows]  # [B, R, G]
        add = torch.as_tensor(np.stack([entry.add_context for entry in slots]), dtype=torch.float32)
        context = torch.as_tensor(self.context(slots), dtype=torch.float32)
        values = values + add[..., None] * context[:, None, :]
        return {
            keys.RESPONSES: values,
            keys.RESPONSE_FEATURES: torch.as_tensor(
                np.stack([entry.features for entry in slots]), dtype=torch.float32
            ),
            keys.RESPONSE_MASK: torch.as_tensor(np.stack([entry.mask for entry in slots])),
        }


def slot_features(kind: str, similarity: float, n_cells: float) -> np.ndarray:
    """One slot's features: kind one-hot, GenePT similarity, log1p(cells) / 10."""
    features = np.zeros(keys.N_RESPONSE_FEATURES, dtype=np.float32)
    features[KIND[kind]] = 1.0
    features[-2] = similarity
    features[-1] = np.log1p(n_cells) / 10.0
    return features


class _SlotBuilder:
    """Collects slots one by one; an empty slot (``row`` None) is masked and reads zeros."""

    def __init__(self, kinds: frozenset[str]) -> None:
        self.filled_kinds = kinds
        self.rows: list[int] = []
        self.add_context: list[bool] = []
        self.mask: list[bool] = []
        self.features: list[np.ndarray] = []
        self.labels: list[str] = []
        self.kinds: list[str] = []

    def add(
        self,
        kind: str,
        label: str,
        row: int | None,
        add_context: bool,
        similarity: float,
        n_cells: float,
    ) -> None:
        filled = row is not None and kind in self.filled_kinds
        self.rows.append(row if filled else 0)
        self.add_context.append(add_context and filled)
        self.mask.append(filled)
        self.features.append(
            slot_features(kind, similarity, n_cells)
            if filled
            else np.zeros(keys.N_RESPONSE_FEATURES, np.float32)
        )
        self.labels.append(label if filled else "")
        self.kinds.append(kind)

    def build(self, line: int, own_row: int, context_cells: float) -> ResponseSlots:
        return ResponseSlots(
            value_rows=np.array(self.rows, dtype=np.int64),
            add_context=np.array(self.add_context, dtype=bool),
            mask=np.array(self.mask, dtype=bool),
            features=np.stack(self.features),
            labels=self.labels,
            kinds=self.kinds,
            line=line,
            own_row=own_row,
            context_cells=float(context_cells),
        )
