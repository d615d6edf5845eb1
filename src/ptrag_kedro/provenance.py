"""Fingerprints that tie every artefact to what it was built from, and the checks consumers run."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


class StaleArtefactError(RuntimeError):
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
