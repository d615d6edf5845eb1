"""Fingerprints that tie every artefact to what it was built from, and the checks consumers run."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag_kedro.errors import UserError
from ptrag_kedro.schema import CELL_LINE, PERTURBATION, PROVENANCE_KEY, SPLIT


class StaleArtefactError(UserError, RuntimeError):
    """An artefact was built from other inputs than the ones of this run."""


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """Hash of a numeric table's index, columns and values (float32)."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, frame.index)).encode())
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    digest.update(np.ascontiguousarray(frame.to_numpy(dtype=np.float32)).tobytes())
    return digest.hexdigest()[:16]


def require_same(
    artefact: str, field: str, recorded: str | None, expected: str, rebuild: str
) -> None:
    """Refuse an artefact whose recorded fingerprint is not the current one (one line)."""
    if recorded != expected:
        raise StaleArtefactError(
            f"{artefact} was built from another {field} ({recorded or 'unknown'}, now {expected}); "
            f"rebuild it with `{rebuild}`"
        )


class MatrixDigest:
    """A hash of a matrix's values fed one block of rows at a time, the same whatever the
    blocks: a sparse block's values, column indices and per-row counts, or a dense block's
    values, each go to their own running hash."""

    def __init__(self) -> None:
        self._parts = [hashlib.sha256() for _ in range(3)]

    def add(self, block: Any) -> None:
        if sp.issparse(block):
            block = sp.csr_matrix(block)
            for part, array in zip(
                self._parts, (block.data, block.indices, np.diff(block.indptr)), strict=True
            ):
                part.update(np.ascontiguousarray(array).tobytes())
        else:
            self._parts[0].update(np.ascontiguousarray(block).tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256(
            "".join(part.hexdigest() for part in self._parts).encode()
        ).hexdigest()[:16]


def screen_fingerprint(screen: Any) -> str:
    """Hash of what downstream artefacts depend on: gene order, cells, their labels and split,
    and the expression values (the digest of the input values ingestion recorded, with the
    quality control and feature settings that turn them into X)."""
    provenance = getattr(screen, "provenance", None)
    if provenance is None:
        provenance = screen.uns.get(PROVENANCE_KEY, {})
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, screen.var_names)).encode())
    digest.update("\x1f".join(map(str, screen.obs_names)).encode())
    for column in (PERTURBATION, CELL_LINE, SPLIT):
        values = screen.obs[column]
        digest.update("\x1f".join(map(str, values.cat.categories)).encode())
        digest.update(np.ascontiguousarray(values.cat.codes.to_numpy()).tobytes())
    values = {key: provenance.get(key) for key in ("x_digest", "quality_control", "features")}
    digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def check_inputs(
    screen: ad.AnnData,
    split_manifest: dict,
    embeddings: pd.DataFrame,
    candidates: pd.DataFrame | None = None,
    responses: pd.DataFrame | None = None,
) -> dict[str, str]:
    """Refuse inputs built from another screen or other embeddings; return their fingerprints.

    ``candidates`` and ``responses`` are checked when given (a model that reads them).
    """
    screen_print = screen.uns[PROVENANCE_KEY]["fingerprint"]
    require_same(
        "split_manifest",
        "screen",
        split_manifest["screen_fingerprint"],
        screen_print,
        "kedro run --pipelines=ingestion",
    )
    require_same(
        "perturbation_embeddings",
        "screen",
        embeddings.attrs.get("screen_fingerprint"),
        screen_print,
        "kedro run --pipelines=genept",
    )
    embeddings_print = embeddings.attrs["embeddings_fingerprint"]
    if candidates is not None:
        # Both: the same vectors re-embedded for a re-split screen keep their fingerprint, and
        # candidates of the old split would list genes that are val/test now.
        for field, recorded, current in (
            ("perturbation embeddings", "embeddings_fingerprint", embeddings_print),
            ("screen", "screen_fingerprint", screen_print),
        ):
            require_same(
                "retrieval_candidates",
                field,
                candidates.attrs.get(recorded),
                current,
                "kedro run --pipelines=retrieval_index",
            )
    if responses is not None:
        require_same(
            "perturbation_responses",
            "screen",
            responses.attrs.get("screen_fingerprint"),
            screen_print,
            "kedro run --pipelines=retrieval_index",
        )
    return {"screen_fingerprint": screen_print, "embeddings_fingerprint": embeddings_print}
