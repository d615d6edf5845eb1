"""Cell sentences: S perturbed cells of one (cell line, perturbation) with S control cells.

Candidates are looked up per sentence from the precomputed ``retrieval_candidates`` table, never
searched per cell, and a sentence's candidates never include its own perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ptrag_kedro.models import _constants as keys


@dataclass
class SentenceGroup:
    """One (cell line, perturbation) with the rows of its cells and of its line's controls."""

    cell_line: str
    perturbation: str
    cells: np.ndarray  # rows of the perturbed cells
    embedding_row: int  # row of the perturbation in the embedding matrix
    candidate_rows: np.ndarray  # [K] rows of its candidates in the embedding matrix


class SentenceSampler:
    """Draws batches of cell sentences from a screen.

    Args:
        screen: the ingested screen (obs ``perturbation``, ``cell_line``, ``batch``, ``split``).
        embeddings: perturbation -> vector (``perturbation_embeddings``).
        candidates: long table perturbation, rank, candidate (``retrieval_candidates``); may be
            empty for a model without retrieval.
        split: which split's perturbed cells form sentences (``train``, ``val`` or ``test``).
        cell_set_size: S, cells per sentence (sampled with replacement when a group is smaller).
        same_batch_controls: pair each perturbed cell with a control of its own batch when the
            line has one there.
        k: candidates per sentence (the first k ranks).
    """

    def __init__(
        self,
        screen: ad.AnnData,
        embeddings: pd.DataFrame,
        candidates: pd.DataFrame,
        split: str,
        cell_set_size: int,
        same_batch_controls: bool,
        k: int,
        control_label: str,
    ) -> None:
        self.cell_set_size = cell_set_size
        self.k = k
        self.expression = (
            screen.X if sp.issparse(screen.X) else np.asarray(screen.X, dtype=np.float32)
        )
        obs = screen.obs
        self.embedding_matrix = torch.as_tensor(embeddings.to_numpy(dtype=np.float32))
        embedding_row = {name: row for row, name in enumerate(embeddings.index)}
        candidate_rows = self._candidate_rows(candidates, embedding_row, k)
        line = obs["cell_line"].astype(str).to_numpy()
        perturbation = obs["perturbation"].astype(str).to_numpy()
        batch = obs["batch"].astype(str).to_numpy()
        is_control = perturbation == control_label
        self.controls_by_line = {
            name: np.flatnonzero(is_control & (line == name)) for name in np.unique(line)
        }
        control_rows = np.flatnonzero(is_control)
        self.controls_by_line_batch: dict[tuple[str, str], np.ndarray] = {}
        if same_batch_controls:
            groups = pd.Series(control_rows).groupby([line[control_rows], batch[control_rows]])
            self.controls_by_line_batch = {key: rows.to_numpy() for key, rows in groups}
        self.cell_batch = batch
        self.batch_codes = {value: code for code, value in enumerate(sorted(np.unique(batch)))}
        chosen = (obs["split"].astype(str).to_numpy() == split) & ~is_control
        frame = pd.DataFrame(
            {
                "line": line[chosen],
                "perturbation": perturbation[chosen],
                "row": np.flatnonzero(chosen),
            }
        )
        self.groups = [
            SentenceGroup(
                cell_line=name,
                perturbation=target,
                cells=rows["row"].to_numpy(),
                embedding_row=embedding_row[target],
                candidate_rows=candidate_rows.get(target, np.zeros(0, dtype=np.int64)),
            )
            for (name, target), rows in frame.groupby(["line", "perturbation"], sort=True)
            if target in embedding_row  # perturbations dropped by genept have no embedding
        ]

    @staticmethod
    def _candidate_rows(
        candidates: pd.DataFrame, embedding_row: dict[str, int], k: int
    ) -> dict[str, np.ndarray]:
        if candidates.empty or k == 0:
            return {}
        top = candidates[candidates["rank"] < k].sort_values(["perturbation", "rank"])
        if (top["candidate"] == top["perturbation"]).any():
            raise ValueError("retrieval_candidates lists a perturbation as its own candidate")
        rows: dict[str, np.ndarray] = {}
        for target, group in top.groupby("perturbation", sort=False):
            if len(group) < k:
                raise ValueError(
                    f"retrieval_candidates has {len(group)} candidates for '{target}', fewer than k={k}"
                )
            rows[target] = np.array(
                [embedding_row[name] for name in group["candidate"]], dtype=np.int64
            )
        return rows

    def __len__(self) -> int:
        return len(self.groups)

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        block = self.expression[rows]
        return block.toarray() if sp.issparse(block) else block

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
        self, targets: np.ndarray, controls: np.ndarray, groups: list[SentenceGroup]
    ) -> dict[str, torch.Tensor]:
        """Tensors of len(groups) sentences from flat target and control rows (S per sentence)."""
        shape = (len(groups), self.cell_set_size)
        batch = {
            keys.CONTROL: torch.as_tensor(
                self._rows(controls).reshape(*shape, -1), dtype=torch.float32
            ),
            keys.TARGET: torch.as_tensor(
                self._rows(targets).reshape(*shape, -1), dtype=torch.float32
            ),
            keys.PERTURBATION: self.embedding_matrix[[group.embedding_row for group in groups]],
            keys.BATCH_INDEX: torch.as_tensor(
                np.array([self.batch_codes[value] for value in self.cell_batch[controls]]).reshape(
                    shape
                )
            ),
        }
        if self.k:
            rows = np.stack([group.candidate_rows for group in groups])
            batch[keys.CANDIDATES] = self.embedding_matrix[torch.as_tensor(rows)]
        return batch

    def sentences(
        self, group_indices: np.ndarray, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """One random sentence for each of these groups (B = len(group_indices))."""
        groups = [self.groups[int(index)] for index in group_indices]
        targets = [
            rng.choice(
                group.cells, self.cell_set_size, replace=len(group.cells) < self.cell_set_size
            )
            for group in groups
        ]
        controls = [
            self._controls_for(group, rows, rng)
            for group, rows in zip(groups, targets, strict=False)
        ]
        return self._batch(np.concatenate(targets), np.concatenate(controls), groups)

    def group_sentences(
        self, index: int, rng: np.random.Generator
    ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """Sentences covering every cell of one group (for prediction) and the control rows used.

        The group's cells, in order, padded to a multiple of S with random cells of the group,
        each paired with a control as in training. Returns the batch ([n_sentences, S, ...]) and the
        control rows of the first ``len(group.cells)`` positions.
        """
        group = self.groups[index]
        n_cells = len(group.cells)
        targets = np.concatenate(
            [group.cells, rng.choice(group.cells, (-n_cells) % self.cell_set_size)]
        )
        controls = self._controls_for(group, targets, rng)
        return self._batch(
            targets, controls, [group] * (len(targets) // self.cell_set_size)
        ), controls[:n_cells]

    def random_batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """B sentences of groups drawn uniformly with replacement."""
        return self.sentences(rng.integers(0, len(self.groups), batch_size), rng)
