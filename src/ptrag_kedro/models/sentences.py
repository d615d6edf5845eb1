"""Cell sentences: S perturbed cells of one (cell line, perturbation) with S control cells.

Candidates are looked up per sentence from the precomputed ``retrieval_candidates`` table, never
searched per cell, and a sentence's candidates never include its own perturbation. Response
slots come from a :class:`~ptrag_kedro.models.response_bank.ResponseBank`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from ptrag_kedro.expression_rows import ExpressionRows, InMemory
from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.config import SentenceSpec
from ptrag_kedro.models.response_bank import ResponseBank, ResponseSlots, slot_features
from ptrag_kedro.provenance import check_inputs
from ptrag_kedro.schema import BATCH, CELL_LINE, PERTURBATION, SPLIT, condition_seed

__all__ = [
    "SamplerSource",
    "SentenceGroup",
    "SentenceSampler",
    "SentenceSpec",
    "checked_samplers",
    "samplers_for",
]


@dataclass(frozen=True)
class SamplerSource:
    """What a sampler was built from (references, not copies): a DDP job writes these in
    data-only files, and every rank rebuilds the same sampler from them."""

    screen: ad.AnnData
    embeddings: pd.DataFrame
    candidates: pd.DataFrame
    split: str
    spec: SentenceSpec
    control_label: str
    responses: pd.DataFrame | None
    oracle: bool


@dataclass
class SentenceGroup:
    """One (cell line, perturbation): its cells, its embedding and what it retrieves."""

    cell_line: str
    perturbation: str
    cells: np.ndarray  # rows of the perturbed cells in the screen
    embedding_row: int  # row of the perturbation in the embedding matrix
    candidate_rows: np.ndarray  # [K] rows of its candidates in the embedding matrix
    response_slots: ResponseSlots | None = None


class SentenceSampler:
    """Draws batches of cell sentences of one split of a screen.

    Args:
        screen: the ingested screen (obs ``perturbation``, ``cell_line``, ``batch``, ``split``).
        embeddings: perturbation -> vector (``perturbation_embeddings``).
        candidates: long table perturbation, rank, candidate (``retrieval_candidates``).
        split: which split's perturbed cells form sentences (``train``, ``val`` or ``test``).
        spec: sentence size and what is retrieved.
        control_label: the controls' perturbation label.
        responses: ``perturbation_responses``, needed when ``spec.response_neighbours`` > 0.
        oracle: a diagnostic: add one candidate that carries the group's own true mean shift
            (an embedding that encodes it, or a response slot of kind ``oracle``). Never for
            results; it measures whether a retrieval block can find an informative candidate.
        expression: the screen's X read by rows (shared by the samplers of one screen); by
            default ``ExpressionRows.of(screen)``: in memory when it fits, else read from the file.
    """

    def __init__(
        self,
        screen: ad.AnnData,
        embeddings: pd.DataFrame,
        candidates: pd.DataFrame,
        split: str,
        spec: SentenceSpec,
        control_label: str,
        responses: pd.DataFrame | None = None,
        oracle: bool = False,
        expression: ExpressionRows | None = None,
    ) -> None:
        self.source = SamplerSource(
            screen, embeddings, candidates, split, spec, control_label, responses, oracle
        )
        self.spec = spec
        self.cell_set_size = spec.cell_set_size
        self.expression = expression if expression is not None else ExpressionRows.of(screen)
        obs = screen.obs
        self.embedding_matrix = torch.as_tensor(embeddings.to_numpy(dtype=np.float32))
        embedding_row = {name: row for row, name in enumerate(embeddings.index)}
        line = _labels(obs[CELL_LINE])
        perturbation = _labels(obs[PERTURBATION])
        self.cell_batch = _labels(obs[BATCH])
        self.batch_codes = {value: code for code, value in enumerate(sorted(set(self.cell_batch)))}
        # Each cell's batch code, looked up per batch by array indexing (not a loop over cells).
        self.cell_batch_code = pd.Categorical(
            self.cell_batch, categories=list(self.batch_codes)
        ).codes
        is_control = perturbation == control_label
        self._control_pools(line, is_control)
        self.bank = None
        if spec.response_neighbours:
            if responses is None:
                raise ValueError("response slots need perturbation_responses")
            self.bank = ResponseBank(
                responses,
                candidates,
                [str(gene) for gene in screen.var_names],
                sorted(self.controls_by_line),
                spec.response_neighbours,
                spec.response_kinds,
            )
        chosen = (_labels(obs[SPLIT]) == split) & ~is_control
        self.groups = self._groups(
            line[chosen], perturbation[chosen], np.flatnonzero(chosen), embedding_row, candidates
        )
        self.oracle_shift = self._oracle_shifts() if oracle else None
        if oracle:
            generator = torch.Generator().manual_seed(0)
            self._oracle_projection = torch.randn(
                screen.n_vars, self.embedding_matrix.shape[1], generator=generator
            )

    def _control_pools(self, line: np.ndarray, is_control: np.ndarray) -> None:
        """Control rows per line (and per line and batch, for same-batch controls)."""
        self.controls_by_line = {
            name: np.flatnonzero(is_control & (line == name)) for name in np.unique(line)
        }
        self.controls_by_line_batch: dict[tuple[str, str], np.ndarray] = {}
        if self.spec.same_batch_controls:
            control_rows = np.flatnonzero(is_control)
            groups = pd.Series(control_rows).groupby(
                [line[control_rows], self.cell_batch[control_rows]]
            )
            self.controls_by_line_batch = {key: rows.to_numpy() for key, rows in groups}

    def _groups(
        self,
        lines: np.ndarray,
        perturbations: np.ndarray,
        rows: np.ndarray,
        embedding_row: dict[str, int],
        candidates: pd.DataFrame,
    ) -> list[SentenceGroup]:
        """One group per (line, perturbation) of these cells that has an embedding."""
        candidate_rows = _candidate_rows(candidates, embedding_row, self.spec.candidates_k)
        frame = pd.DataFrame({"line": lines, "perturbation": perturbations, "row": rows})
        groups = [
            SentenceGroup(
                cell_line=name,
                perturbation=target,
                cells=members["row"].to_numpy(),
                embedding_row=embedding_row[target],
                candidate_rows=candidate_rows.get(target, np.zeros(0, dtype=np.int64)),
                response_slots=self.bank.slots(name, target) if self.bank else None,
            )
            for (name, target), members in frame.groupby(["line", "perturbation"], sort=True)
            if target in embedding_row  # perturbations dropped by genept have no embedding
        ]
        missing = [
            g.perturbation for g in groups if self.spec.candidates_k and not len(g.candidate_rows)
        ]
        if missing:
            raise ValueError(
                f"retrieval_candidates has no candidates for '{missing[0]}' ({len(missing)} "
                "perturbations); rebuild it with `kedro run --pipelines=retrieval_index`"
            )
        return groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getstate__(self) -> dict[str, Any]:
        # Data-loader workers get the sampler itself; what it was built from stays here.
        return {**self.__dict__, "source": None}

    # ---------------------------------------------------------------------------- the oracle

    def _oracle_shifts(self) -> np.ndarray:
        """Each group's true mean shift from its line's controls [groups, G] (oracle check)."""
        shifts = []
        for group in self.groups:
            controls = self.controls_by_line[group.cell_line]
            shift = self.expression[group.cells].mean(0) - self.expression[controls].mean(0)
            shifts.append(shift)
        return np.asarray(shifts, dtype=np.float32)

    def _oracle_embedding(self, indices: list[int]) -> torch.Tensor:
        """An embedding-sized vector that encodes the true shift: a fixed random projection,
        scaled to the largest embedding norm."""
        encoded = torch.as_tensor(self.oracle_shift[indices]) @ self._oracle_projection
        scale = self.embedding_matrix.norm(dim=1).max()
        return encoded / encoded.norm(dim=1, keepdim=True).clamp_min(1e-8) * scale

    # ---------------------------------------------------------------------------- batches

    def _controls_for(
        self, group: SentenceGroup, targets: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        if self.controls_by_line_batch:
            picked = np.empty(len(targets), dtype=np.int64)
            for position, cell in enumerate(targets):
                pool = self.controls_by_line_batch.get((group.cell_line, self.cell_batch[cell]))
                if pool is None:
                    pool = self.controls_by_line[group.cell_line]
                picked[position] = pool[rng.integers(len(pool))]
            return picked
        pool = self.controls_by_line[group.cell_line]
        return pool[rng.integers(0, len(pool), len(targets))]

    def _batch(
        self, targets: np.ndarray, controls: np.ndarray, indices: list[int]
    ) -> dict[str, torch.Tensor]:
        """Tensors of len(indices) sentences from flat target and control rows (S per sentence)."""
        groups = [self.groups[index] for index in indices]
        shape = (len(groups), self.cell_set_size)
        batch = {
            keys.CONTROL: torch.as_tensor(
                self.expression[controls].reshape(*shape, -1), dtype=torch.float32
            ),
            keys.TARGET: torch.as_tensor(
                self.expression[targets].reshape(*shape, -1), dtype=torch.float32
            ),
            # a tensor index: torch indexes with a list of ints several times slower
            keys.PERTURBATION: self.embedding_matrix[
                torch.as_tensor([group.embedding_row for group in groups])
            ],
            keys.BATCH_INDEX: torch.as_tensor(
                self.cell_batch_code[controls].astype(np.int64).reshape(shape)
            ),
        }
        if self.spec.candidates_k:
            rows = torch.as_tensor(np.stack([group.candidate_rows for group in groups]))
            batch[keys.CANDIDATES] = self.embedding_matrix[rows]
            if self.oracle_shift is not None:
                oracle = self._oracle_embedding(indices)[:, None, :]
                batch[keys.CANDIDATES] = torch.cat([batch[keys.CANDIDATES], oracle], dim=1)
        if self.bank is not None:
            batch.update(self.bank.gather([group.response_slots for group in groups]))
            if self.oracle_shift is not None:
                self._add_oracle_slot(batch, indices)
        return batch

    def _add_oracle_slot(self, batch: dict[str, torch.Tensor], indices: list[int]) -> None:
        sizes = [len(self.groups[index].cells) for index in indices]
        features = np.stack([slot_features("oracle", 1.0, size) for size in sizes])
        batch[keys.RESPONSES] = torch.cat(
            [batch[keys.RESPONSES], torch.as_tensor(self.oracle_shift[indices])[:, None, :]], dim=1
        )
        batch[keys.RESPONSE_FEATURES] = torch.cat(
            [batch[keys.RESPONSE_FEATURES], torch.as_tensor(features)[:, None, :]], dim=1
        )
        batch[keys.RESPONSE_MASK] = torch.cat(
            [batch[keys.RESPONSE_MASK], torch.ones(len(indices), 1, dtype=torch.bool)], dim=1
        )

    def sentences(
        self, group_indices: np.ndarray, rng: np.random.Generator, keep: slice = slice(None)
    ) -> dict[str, torch.Tensor]:
        """One random sentence for each of these groups; tensors of the ``keep`` ones only.

        Every sentence's cells are drawn (integers only, cheap), so the draw of the kept ones
        does not depend on ``keep``; only the kept sentences' rows are read.
        """
        indices = [int(index) for index in group_indices]
        targets = [
            rng.choice(
                self.groups[index].cells,
                self.cell_set_size,
                replace=len(self.groups[index].cells) < self.cell_set_size,
            )
            for index in indices
        ]
        controls = [
            self._controls_for(self.groups[index], rows, rng)
            for index, rows in zip(indices, targets, strict=True)
        ]
        return self._batch(
            np.concatenate(targets[keep]), np.concatenate(controls[keep]), indices[keep]
        )

    def random_batch(
        self, batch_size: int, rng: np.random.Generator, shard: tuple[int, int] = (0, 1)
    ) -> dict[str, torch.Tensor]:
        """B sentences of groups drawn uniformly with replacement.

        With ``shard = (rank, world_size)`` the draw is of the global batch, B x world_size
        sentences, and rank r gets sentences [r B, (r + 1) B): the ranks of a DDP run see
        different sentences, and together exactly those of one process drawing B x world_size.
        """
        rank, world_size = shard
        indices = rng.integers(0, len(self.groups), batch_size * world_size)
        return self.sentences(indices, rng, keep=slice(rank * batch_size, (rank + 1) * batch_size))

    # ---------------------------------------------------------------------------- prediction

    @staticmethod
    def _prediction_rng(group: SentenceGroup, seed: int) -> np.random.Generator:
        # Keyed by the group's names: the draw does not depend on S, on the order of groups or
        # on what else was drawn, so every method (and baseline) gets the same controls.
        return np.random.default_rng(
            [int(seed), condition_seed(group.cell_line, group.perturbation)]
        )

    def prediction_controls(self, index: int, seed: int) -> np.ndarray:
        """The control row paired with each real cell of group ``index`` at prediction."""
        group = self.groups[index]
        return self._controls_for(group, group.cells, self._prediction_rng(group, seed))

    def prediction_batch(self, index: int, seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """Sentences covering every cell of one group, and the control rows of its real cells.

        The first draw is exactly :meth:`prediction_controls`; the group's cells are then padded
        to a multiple of S with random cells of the group, each with its own control.
        """
        group = self.groups[index]
        rng = self._prediction_rng(group, seed)
        controls = self._controls_for(group, group.cells, rng)
        padding = rng.choice(group.cells, (-len(group.cells)) % self.cell_set_size)
        padding_controls = self._controls_for(group, padding, rng)
        targets = np.concatenate([group.cells, padding])
        n_sentences = len(targets) // self.cell_set_size
        batch = self._batch(
            targets, np.concatenate([controls, padding_controls]), [index] * n_sentences
        )
        return batch, controls


def _labels(column: pd.Series) -> np.ndarray:
    """A column's values as strings, one shared string object per distinct value: 8 bytes a
    cell rather than a new string each (a million-cell screen's obs stays small)."""
    values = pd.Categorical(column)
    return np.asarray(values.categories.astype(str), dtype=object)[values.codes]


def _candidate_rows(
    candidates: pd.DataFrame, embedding_row: dict[str, int], k: int
) -> dict[str, np.ndarray]:
    """Each perturbation's first ``k`` candidates as rows of the embedding matrix."""
    if candidates.empty or k == 0:
        return {}
    available = int(candidates["rank"].max()) + 1
    if k > available:
        raise ValueError(
            f"candidates_k = {k}, but retrieval_candidates lists {available} candidates per "
            "perturbation (parameter retrieval_index.k): lower candidates_k, or raise "
            "retrieval_index.k and run `kedro run --pipelines=retrieval_index`"
        )
    top = candidates[candidates["rank"] < k].sort_values(["perturbation", "rank"])
    if (top["candidate"] == top["perturbation"]).any():
        raise ValueError("retrieval_candidates lists a perturbation as its own candidate")
    return {
        target: np.array([embedding_row[name] for name in group["candidate"]], dtype=np.int64)
        for target, group in top.groupby("perturbation", sort=False)
    }


def samplers_for(
    splits: tuple[str, ...],
    spec: SentenceSpec,
    screen: ad.AnnData,
    split_manifest: dict[str, Any],
    embeddings: pd.DataFrame,
    candidates: pd.DataFrame,
    responses: pd.DataFrame | None,
    in_memory: InMemory = "auto",
) -> dict[str, SentenceSampler]:
    """One sentence sampler per split, all reading X through one :class:`ExpressionRows`: in
    memory or from the file as ``in_memory`` decides, an X left in the file through its row
    cache (sentences are read at every step)."""
    expression = ExpressionRows.of(screen, in_memory, random_rows=True)
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


def checked_samplers(
    splits: tuple[str, ...],
    spec: SentenceSpec,
    screen: ad.AnnData,
    split_manifest: dict[str, Any],
    embeddings: pd.DataFrame,
    candidates: pd.DataFrame,
    responses: pd.DataFrame,
    in_memory: InMemory = "auto",
) -> tuple[dict[str, str], dict[str, SentenceSampler]]:
    """Refuse stale inputs (candidates and responses only when the sentences read them), then
    one sentence sampler per split (:func:`samplers_for`); returns the inputs' provenance and
    the samplers."""
    provenance = check_inputs(
        screen,
        split_manifest,
        embeddings,
        candidates if spec.candidates_k or spec.response_neighbours else None,
        responses if spec.response_neighbours else None,
    )
    inputs = (screen, split_manifest, embeddings, candidates, responses)
    return provenance, samplers_for(splits, spec, *inputs, in_memory)
