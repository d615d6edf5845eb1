"""Nodes of the ``retrieval_index`` pipeline: the train-only index, every perturbation's top-K,
and the database of observed train responses.

Two defects of the authors' code are excluded by construction here: the index holds train
perturbations only (a held-out val/test perturbation that is not train in another line can never
be retrieved), and a query never retrieves itself. The response database holds train
(cell line, perturbation) groups only.
"""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ptrag_kedro.errors import UserError
from ptrag_kedro.parameters import RetrievalParameters
from ptrag_kedro.plotting import new_figure
from ptrag_kedro.provenance import require_same
from ptrag_kedro.retrieval import RetrievalIndex, build_index, l2_normalise, search
from ptrag_kedro.schema import CELL_LINE, PERTURBATION, PROVENANCE_KEY, TRAIN
from ptrag_kedro.shifts import response_table

logger = logging.getLogger(__name__)


#: The paper's K: candidates per perturbation.
PAPER_K = 32


class RetrievalError(UserError, ValueError):
    """Bad retrieval configuration; the message is one line naming the parameter."""


def train_perturbations(split_manifest: dict[str, Any]) -> list[str]:
    """Perturbations that are train in at least one cell line (sorted)."""
    return sorted({p for entry in split_manifest["cell_lines"].values() for p in entry[TRAIN]})


def _check_embeddings(
    perturbation_embeddings: pd.DataFrame, split_manifest: dict[str, Any]
) -> None:
    require_same(
        "perturbation_embeddings",
        "screen",
        perturbation_embeddings.attrs.get("screen_fingerprint"),
        split_manifest["screen_fingerprint"],
        "kedro run --pipelines=genept",
    )


def candidate_count(retrieval: RetrievalParameters, n_train: int, log: bool = False) -> int:
    """K, the candidates per query: ``k: auto`` takes the paper's 32, or the largest legal K on
    a screen with fewer train perturbations; a K the index cannot give is refused."""
    k = min(PAPER_K, n_train - 1) if retrieval.k == "auto" else int(retrieval.k)
    if log and retrieval.k == "auto":
        logger.info(
            "retrieval_index.k: auto -> %d (the paper's %d, at most %d train perturbations - 1)",
            k,
            PAPER_K,
            n_train,
        )
    if not 1 <= k <= n_train - 1:
        raise RetrievalError(
            f"parameter retrieval_index.k = {k}, but with {n_train} train perturbations a query "
            f"can have at most {n_train - 1} candidates (itself excluded): lower k, or set auto"
        )
    return k


def build_retrieval_index(
    perturbation_embeddings: pd.DataFrame,
    split_manifest: dict[str, Any],
    retrieval: RetrievalParameters,
) -> RetrievalIndex:
    """Exact cosine index over the embedded train perturbations (train in any line).

    ``retrieval_index.k`` is checked here, before the index is written, so a K the screen cannot
    give leaves the previous retrieval artefacts as they were."""
    _check_embeddings(perturbation_embeddings, split_manifest)
    train = [p for p in train_perturbations(split_manifest) if p in perturbation_embeddings.index]
    if len(train) < 2:
        raise RetrievalError(
            f"only {len(train)} embedded train perturbations: nothing to retrieve from"
        )
    candidate_count(retrieval, len(train))
    index = build_index(
        perturbation_embeddings.loc[train].to_numpy(),
        train,
        provenance={
            "screen_fingerprint": split_manifest["screen_fingerprint"],
            "embeddings_fingerprint": perturbation_embeddings.attrs["embeddings_fingerprint"],
        },
    )
    logger.info("Retrieval index: %d train perturbations, %d-d", len(train), index.index.d)
    return index


def find_retrieval_candidates(
    retrieval_index: RetrievalIndex,
    perturbation_embeddings: pd.DataFrame,
    split_manifest: dict[str, Any],
    retrieval: RetrievalParameters,
) -> pd.DataFrame:
    """Top-K train perturbations for every embedded perturbation (train, val, test), self excluded.

    Computed once here, so training looks candidates up per cell sentence instead of searching.
    """
    _check_embeddings(perturbation_embeddings, split_manifest)
    for field, key, current in (
        ("perturbation embeddings", "embeddings_fingerprint", perturbation_embeddings.attrs),
        ("screen", "screen_fingerprint", split_manifest),
    ):
        require_same(
            "retrieval_index",
            field,
            retrieval_index.provenance.get(key),
            current[key],
            "kedro run --pipelines=retrieval_index",
        )
    k = candidate_count(retrieval, len(retrieval_index.names), log=True)
    queries = [p for p in perturbation_embeddings.index if p != split_manifest["control_label"]]
    candidates = search(
        retrieval_index, perturbation_embeddings.loc[queries].to_numpy(), queries, k
    )
    candidates.attrs = dict(retrieval_index.provenance)
    logger.info("Retrieval candidates: %d perturbations x top-%d", len(queries), k)
    return candidates


def build_perturbation_responses(
    screen: ad.AnnData, split_manifest: dict[str, Any]
) -> pd.DataFrame:
    """Per train (cell line, perturbation): mean shift from the line's controls and cell count.

    The database response retrieval reads; val and test groups never enter it.
    """
    fingerprint = screen.uns[PROVENANCE_KEY]["fingerprint"]
    require_same(
        "split_manifest",
        "screen",
        split_manifest["screen_fingerprint"],
        fingerprint,
        "kedro run --pipelines=ingestion",
    )
    table = response_table(screen)
    allowed = {
        (line, name)
        for line, entry in split_manifest["cell_lines"].items()
        for name in entry[TRAIN]
    }
    entries = set(zip(table[CELL_LINE], table[PERTURBATION], strict=True))
    if not entries <= allowed:  # the split column and the manifest disagree: never leak
        raise RetrievalError(
            f"perturbation_responses would hold {len(entries - allowed)} groups that the "
            "split_manifest does not list as train; rebuild with `kedro run --pipelines=ingestion`"
        )
    table.attrs = {"screen_fingerprint": fingerprint}
    logger.info(
        "Response database: %d train (cell line, perturbation) groups in %d lines",
        len(table),
        table[CELL_LINE].nunique(),
    )
    return table


def retrieval_diagnostics(
    candidates: pd.DataFrame,
    perturbation_embeddings: pd.DataFrame,
    retrieval_index: RetrievalIndex,
    gene_modules: pd.DataFrame | None,
) -> tuple[dict[str, Any], Figure]:
    """Similarity distributions, and (with a gene -> module table) module precision vs random."""
    train = retrieval_index.names
    train_vectors = l2_normalise(perturbation_embeddings.loc[train].to_numpy())
    pair_similarity = train_vectors @ train_vectors.T
    random_pairs = pair_similarity[np.triu_indices(len(train), k=1)]
    quantiles = (0.05, 0.25, 0.5, 0.75, 0.95)
    report: dict[str, Any] = {
        "k": int(candidates["rank"].max() + 1),
        "n_queries": int(candidates["perturbation"].nunique()),
        "n_train": len(train),
        "candidate_similarity": _summary(candidates["similarity"].to_numpy(), quantiles),
        "train_pair_similarity": _summary(random_pairs, quantiles),
        "module_precision": None,
    }
    if gene_modules is not None and not gene_modules.empty:
        report["module_precision"] = _module_precision(candidates, train, gene_modules)

    figure, axes = new_figure(1, 2, figsize=(10, 3.8))
    bins = np.linspace(min(random_pairs.min(), candidates["similarity"].min()), 1.0, 50)
    axes[0].hist(random_pairs, bins=bins, density=True, alpha=0.6, label="all train pairs")
    axes[0].hist(
        candidates["similarity"],
        bins=bins,
        density=True,
        alpha=0.6,
        label=f"top-{report['k']} candidates",
    )
    axes[0].set(xlabel="cosine similarity", ylabel="density", title="Embedding similarity")
    axes[0].legend()
    precision = report["module_precision"]
    if precision is not None:
        axes[1].bar(
            ["retrieved", "random", "best possible"],
            [precision["precision"], precision["random_expectation"], precision["best_possible"]],
            color=["C1", "C0", "C7"],
        )
        axes[1].set(
            ylabel="candidates sharing the query's module",
            title=f"Module precision (n={precision['n_queries']})",
            ylim=(0, 1),
        )
    else:
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, "no ground-truth modules\n(real screen)", ha="center", va="center")
    return report, figure


def _summary(values: np.ndarray, quantiles: tuple[float, ...]) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)),
        **{f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in quantiles},
    }


def _module_precision(
    candidates: pd.DataFrame, train: list[str], gene_modules: pd.DataFrame
) -> dict[str, Any] | None:
    """Fraction of candidates in the query's module, and the fraction expected at random."""
    module_of = gene_modules.set_index("symbol")["module"]
    module_of = module_of[module_of >= 0]
    with_module = candidates[candidates["perturbation"].isin(module_of.index)]
    if with_module.empty:
        return None
    same = (
        with_module["candidate"].map(module_of).to_numpy()
        == with_module["perturbation"].map(module_of).to_numpy()
    )
    train_modules = pd.Series(train).map(module_of)
    per_module = train_modules.value_counts()
    queries = with_module["perturbation"].drop_duplicates()
    query_modules = queries.map(module_of)
    in_train = queries.isin(set(train)).to_numpy()
    # A uniformly random candidate among train perturbations other than the query itself.
    same_module_train = query_modules.map(per_module).fillna(0).to_numpy() - in_train
    random_expectation = same_module_train / (len(train) - in_train)
    k = int(candidates["rank"].max() + 1)
    return {
        "precision": float(same.mean()),
        "random_expectation": float(random_expectation.mean()),
        # A module smaller than k caps the precision any retrieval could reach.
        "best_possible": float(np.mean(np.minimum(same_module_train, k) / k)),
        "n_queries": int(len(queries)),
    }
