"""Names shared by every pipeline: obs columns, split values, provenance keys, table columns.

One place for the vocabulary of the project's artefacts, so a pipeline never imports another
pipeline's nodes to learn a column name.
"""

from __future__ import annotations

import zlib

#: Standardised obs columns of ``screen``.
PERTURBATION, CELL_LINE, BATCH, SPLIT = "perturbation", "cell_line", "batch", "split"
#: Values of the ``split`` column (controls of every line stay available as basal cells).
TRAIN, VAL, TEST, CONTROL = "train", "val", "test", "control"
#: Manifest key of the (line, gene) groups an ``unseen_gene`` split drops from the screen: those
#: of val/test genes outside the held-out line, which nothing may learn from.
WITHHELD = "withheld"

#: ``screen.uns`` key holding the screen's provenance (raw file, feature path, fingerprint).
PROVENANCE_KEY = "ptrag"
#: Lightning checkpoint key holding the data fingerprints and model config of the run.
CHECKPOINT_PROVENANCE_KEY = "ptrag_provenance"

#: Columns of ``perturbation_responses`` besides one column per gene (the mean shift).
RESPONSE_COLUMNS = (CELL_LINE, PERTURBATION, "n_cells")

#: Columns of a model's ``gates`` table: which candidates a retrieval block used per condition.
GATE_COLUMNS = ("seed", CELL_LINE, PERTURBATION, "slot", "candidate", "kind", "gate")

#: Catalog datasets every variant's training and prediction read, shared across namespaces.
MODEL_INPUTS = frozenset(
    {
        "screen",
        "perturbation_embeddings",
        "retrieval_candidates",
        "perturbation_responses",
        "split_manifest",
    }
)

#: obs column of predictions naming the control cell each predicted cell was computed from.
CONTROL_CELL = "control_cell"


def condition_seed(*parts: object) -> int:
    """A stable 32-bit key of names (a cell line, a perturbation, a seed): the per-condition
    random streams are keyed by it, so a draw depends on what it is for, never on order."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())
