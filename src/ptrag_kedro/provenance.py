"""Fingerprints that tie every artefact to what it was built from, and the checks consumers run."""

from __future__ import annotations

import hashlib

import anndata as ad
import numpy as np
import pandas as pd

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


def screen_fingerprint(screen: ad.AnnData) -> str:
    """Hash of what downstream artefacts depend on: gene order, cells and their split."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, screen.var_names)).encode())
    digest.update(str(screen.n_obs).encode())
    for column in (PERTURBATION, CELL_LINE, SPLIT):
        values = screen.obs[column]
        digest.update("\x1f".join(map(str, values.cat.categories)).encode())
        digest.update(np.ascontiguousarray(values.cat.codes.to_numpy()).tobytes())
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
        require_same(
            "retrieval_candidates",
            "perturbation embeddings",
            candidates.attrs.get("embeddings_fingerprint"),
            embeddings_print,
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
