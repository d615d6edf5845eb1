"""The retrieval index over train perturbations and its top-K search.

Cosine similarity = inner product of L2-normalised vectors in a flat (exact) faiss index. Ties are
broken by candidate name so candidate lists never depend on thread scheduling or insertion order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import pandas as pd

#: Extra neighbours fetched beyond K: room for the query itself and for ties at the cut.
_SEARCH_MARGIN = 8

CANDIDATE_COLUMNS = ["perturbation", "rank", "candidate", "similarity"]


@dataclass
class RetrievalIndex:
    """A faiss index whose row ``i`` is the perturbation ``names[i]``."""

    index: faiss.Index
    names: list[str]
    provenance: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.index.ntotal != len(self.names):
            raise ValueError(f"index has {self.index.ntotal} rows but {len(self.names)} names")


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-normalised float32 copy (zero rows stay zero)."""
    vectors = np.array(vectors, dtype=np.float32, order="C")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


def build_index(
    vectors: np.ndarray, names: list[str], provenance: dict[str, str] | None = None
) -> RetrievalIndex:
    """Exact inner-product index over the L2-normalised ``vectors``."""
    normalised = l2_normalise(vectors)
    index = faiss.IndexFlatIP(normalised.shape[1])
    index.add(normalised)
    return RetrievalIndex(index=index, names=list(names), provenance=dict(provenance or {}))


def search(
    retrieval_index: RetrievalIndex, query_vectors: np.ndarray, query_names: list[str], k: int
) -> pd.DataFrame:
    """Top-``k`` index entries per query by cosine similarity, the query itself excluded.

    Returns long format: one row per (perturbation, rank) with the candidate and its similarity;
    ties are ordered by candidate name.
    """
    n_index = retrieval_index.index.ntotal
    fetch = min(n_index, k + 1 + _SEARCH_MARGIN)
    similarities, rows = retrieval_index.index.search(
        l2_normalise(query_vectors), fetch
    )  # [Q, fetch]
    names = np.asarray(retrieval_index.names, dtype=object)
    name_rank = np.argsort(np.argsort(names.astype(str)))  # row -> position in name order
    candidates = names[rows]
    excluded = (rows < 0) | (candidates == np.asarray(query_names, dtype=object)[:, None])
    similarities = np.where(excluded, -np.inf, similarities)
    # Sort each row by similarity (descending), then candidate name: deterministic ties.
    order = np.lexsort((name_rank[rows], -similarities), axis=1)[:, :k]
    chosen_rows = np.take_along_axis(rows, order, axis=1)
    chosen_similarities = np.take_along_axis(similarities, order, axis=1)
    if not np.isfinite(chosen_similarities).all():
        raise ValueError(f"fewer than {k} candidates for some queries (index of {n_index})")
    return pd.DataFrame(
        {
            "perturbation": np.repeat(np.asarray(query_names, dtype=object), k),
            "rank": np.tile(np.arange(k, dtype=np.int32), len(query_names)),
            "candidate": names[chosen_rows].ravel(),
            "similarity": chosen_similarities.ravel().astype(np.float32),
        }
    )
