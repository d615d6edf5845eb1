"""Nodes of the ``genept`` pipeline: one embedding vector per perturbation of the screen.

Vectors come from a GenePT-format file (``genept.source: file``) or from gene-summary text
embedded with a local sentence-transformer, GenePT's recipe (``genept.source: summaries``).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from ptrag_kedro.datasets.text_model_dataset import TextModel
from ptrag_kedro.errors import UserError
from ptrag_kedro.parameters import GeneptParameters
from ptrag_kedro.progress import ProgressLog, every_for
from ptrag_kedro.provenance import fingerprint_frame
from ptrag_kedro.schema import TEST, TRAIN, VAL

logger = logging.getLogger(__name__)


class GeneEmbeddingError(UserError, ValueError):
    """Bad gene-embedding input; the message is one line naming the source and the field."""


def normalise_symbol(symbol: str) -> str:
    """Gene symbols compare case- and whitespace-insensitively."""
    return str(symbol).strip().upper()


# --------------------------------------------------------------------------------------------
# summaries -> vectors


def _text_key(model_name: str, text: str) -> str:
    return hashlib.sha256(f"{model_name}\x1f{text}".encode()).hexdigest()[:24]


def _check_summaries(gene_summaries: Any) -> None:
    if gene_summaries is None:
        raise GeneEmbeddingError(
            "genept.source is 'summaries' but no summaries file was given: add "
            "--params=gene_summaries_path=JSON (symbol -> summary text)"
        )
    if not isinstance(gene_summaries, dict) or not all(
        isinstance(text, str) for text in gene_summaries.values()
    ):
        raise GeneEmbeddingError("gene summaries: expected a JSON object of symbol -> summary text")


def _encode_logged(text_model: TextModel, texts: list[str], batch_size: int) -> np.ndarray:
    """``text_model.encode`` in about ten chunks of whole batches, a progress line after each:
    a log file shows how far a long embedding has come (the model's own bar only shows on a
    terminal)."""
    chunk = batch_size * every_for(math.ceil(len(texts) / batch_size))
    progress = ProgressLog(logger, "Embedding gene summaries", len(texts), "summaries", chunk)
    parts = []
    for start in range(0, len(texts), chunk):
        parts.append(text_model.encode(texts[start : start + chunk], batch_size=batch_size))
        progress.update(start + len(parts[-1]))
    return np.concatenate(parts)


def embed_gene_summaries(
    gene_summaries: dict[str, str] | None,
    embedding_cache: pd.DataFrame,
    text_model: TextModel,
    genept: GeneptParameters,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Embed gene-summary texts (symbol -> text) with the catalog's text model, reusing a cache.

    The cache is keyed by a hash of (model, text): re-runs embed only new or changed summaries
    (and a run that finds them all never loads the model). With ``genept.source`` other than
    ``summaries`` nothing is embedded and the cache is kept. Returns the symbol -> unit-vector
    table and the updated cache.
    """
    if genept.source != "summaries":
        return pd.DataFrame(), embedding_cache
    _check_summaries(gene_summaries)
    symbols = list(gene_summaries)
    keys = [_text_key(text_model.name, gene_summaries[symbol]) for symbol in symbols]
    cached = embedding_cache if not embedding_cache.empty else pd.DataFrame(dtype=np.float32)
    missing = [index for index, key in enumerate(keys) if key not in cached.index]
    logger.info(
        "Gene summaries: %d of %d to embed with %s", len(missing), len(keys), text_model.name
    )
    if missing:
        vectors = _encode_logged(
            text_model, [gene_summaries[symbols[index]] for index in missing], genept.batch_size
        )
        fresh = pd.DataFrame(vectors, index=[keys[index] for index in missing])
        fresh.columns = fresh.columns.astype(str)
        cached = fresh if cached.empty else pd.concat([cached, fresh])
        cached = cached[~cached.index.duplicated(keep="last")]
    table = cached.loc[keys].set_axis(pd.Index(symbols, name="symbol"), axis=0)
    table.columns = range(table.shape[1])
    table.attrs = {"source": f"gene summaries embedded with {text_model.name}"}
    return table, cached


# --------------------------------------------------------------------------------------------
# vectors -> perturbation embeddings


def _validated_table(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Finite vectors, one per normalised symbol (identical duplicates collapse)."""
    if table.empty:
        raise GeneEmbeddingError(f"{source}: no gene vectors")
    values = table.to_numpy(dtype=np.float32)
    bad_rows = ~np.isfinite(values).all(axis=1)
    if bad_rows.any():
        raise GeneEmbeddingError(
            f"{source}: vector of '{table.index[np.flatnonzero(bad_rows)[0]]}' has NaN or infinite "
            f"values ({int(bad_rows.sum())} symbols affected)"
        )
    normalised = table.index.map(normalise_symbol)
    frame = pd.DataFrame(values, index=normalised)
    duplicated = frame.index.duplicated(keep=False)
    if duplicated.any():
        for symbol, group in frame[duplicated].groupby(level=0):
            if not np.allclose(group.to_numpy(), group.to_numpy()[0], atol=1e-6):
                raise GeneEmbeddingError(
                    f"{source}: symbol '{symbol}' appears {len(group)} times with different vectors"
                )
        frame = frame[~frame.index.duplicated(keep="first")]
    return frame


def _alias_lookup(gene_aliases: Any) -> dict[str, list[str]]:
    """Both directions of an alias table {old symbol: new symbol}."""
    if gene_aliases is None:
        return {}
    if not isinstance(gene_aliases, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in gene_aliases.items()
    ):
        raise GeneEmbeddingError(
            "gene_aliases (the file of --params=gene_aliases_path=PATH): expected a JSON object "
            f"of old symbol -> new symbol, got a {type(gene_aliases).__name__}"
        )
    lookup: dict[str, list[str]] = {}
    for old, new in gene_aliases.items():
        lookup.setdefault(normalise_symbol(old), []).append(normalise_symbol(new))
        lookup.setdefault(normalise_symbol(new), []).append(normalise_symbol(old))
    return lookup


def _perturbations_by_line_and_split(
    split_manifest: dict[str, Any],
) -> dict[str, dict[str, list[str]]]:
    return {
        line: {kind: list(entry[kind]) for kind in (TRAIN, VAL, TEST)}
        for line, entry in split_manifest["cell_lines"].items()
    }


def _vector_table(
    raw_gene_embeddings: pd.DataFrame,
    summary_gene_embeddings: pd.DataFrame,
    genept: GeneptParameters,
) -> tuple[pd.DataFrame, str]:
    """The symbol -> vector table ``genept.source`` chose, and what it is called in errors."""
    if genept.source == "summaries":
        source = summary_gene_embeddings.attrs.get("source", "gene summaries")
        return summary_gene_embeddings, str(source)
    path = str(raw_gene_embeddings.attrs.get("source_file", "the gene-embedding file"))
    if raw_gene_embeddings.attrs.get("absent"):
        raise GeneEmbeddingError(
            f"{path}: no such gene-embedding file (genept.source: file reads it); give one with "
            "--params=gene_embeddings_path=PATH (.pickle, .csv, .csv.gz or .parquet), or set "
            "genept.source: summaries"
        )
    return raw_gene_embeddings, path


def _match(
    perturbations: list[str], vectors: pd.DataFrame, aliases: dict[str, list[str]]
) -> tuple[dict[str, str], dict[str, str]]:
    """Perturbation -> symbol of its vector (directly or through an alias), and the aliased."""
    found: dict[str, str] = {}
    via_alias: dict[str, str] = {}
    for perturbation in perturbations:
        symbol = normalise_symbol(perturbation)
        if symbol in vectors.index:
            found[perturbation] = symbol
            continue
        alias = next((other for other in aliases.get(symbol, []) if other in vectors.index), None)
        if alias is not None:
            found[perturbation] = via_alias[perturbation] = alias
    return found, via_alias


def _check_missing(
    perturbations: list[str], missing: list[str], source: str, genept: GeneptParameters
) -> None:
    """None covered, or too many missing, is an error; a few missing are dropped with a note."""
    if len(missing) == len(perturbations):
        raise GeneEmbeddingError(
            f"{source}: covers none of the screen's {len(perturbations)} perturbations "
            f"(e.g. {', '.join(perturbations[:3])}); wrong species, symbols or file? Choose the "
            "file with --params=gene_embeddings_path=PATH"
        )
    if not missing:
        return
    shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
    fraction = len(missing) / len(perturbations)
    if genept.missing == "error":
        raise GeneEmbeddingError(
            f"{source}: no vector for {len(missing)} of {len(perturbations)} perturbations "
            f"({shown}); set genept.missing: drop to drop them"
        )
    if fraction > genept.max_missing_fraction:
        raise GeneEmbeddingError(
            f"{source}: no vector for {len(missing)} of {len(perturbations)} perturbations "
            f"({fraction:.0%} > genept.max_missing_fraction "
            f"{genept.max_missing_fraction:.0%}): {shown}"
        )
    logger.warning("Dropping %d perturbations without an embedding: %s", len(missing), shown)


def _coverage(
    by_line: dict[str, dict[str, list[str]]], found: dict[str, str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per line and split: how many perturbations have a vector."""
    return {
        line: {
            kind: {
                "n": len(names),
                "embedded": sum(name in found for name in names),
                "fraction": round(sum(name in found for name in names) / len(names), 4)
                if names
                else None,
            }
            for kind, names in kinds.items()
        }
        for line, kinds in by_line.items()
    }


def build_perturbation_embeddings(
    raw_gene_embeddings: pd.DataFrame,
    summary_gene_embeddings: pd.DataFrame,
    gene_aliases: dict[str, str] | None,
    split_manifest: dict[str, Any],
    genept: GeneptParameters,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One vector per perturbation of the screen (the control label gets zeros) + coverage report.

    Symbols match after case/whitespace normalisation, then through the alias table. Perturbations
    without a vector are dropped (``missing: drop``, an error past ``max_missing_fraction``) or
    fail the run (``missing: error``).
    """
    table, source = _vector_table(raw_gene_embeddings, summary_gene_embeddings, genept)
    vectors = _validated_table(table, source)
    by_line = _perturbations_by_line_and_split(split_manifest)
    perturbations = sorted(
        {p for kinds in by_line.values() for names in kinds.values() for p in names}
    )
    found, via_alias = _match(perturbations, vectors, _alias_lookup(gene_aliases))
    missing = [p for p in perturbations if p not in found]
    _check_missing(perturbations, missing, source, genept)
    kept = [p for p in perturbations if p in found]
    matrix = vectors.loc[[found[p] for p in kept]].to_numpy(dtype=np.float32)
    embeddings = pd.DataFrame(
        np.vstack([np.zeros((1, matrix.shape[1]), dtype=np.float32), matrix]),
        index=pd.Index([split_manifest["control_label"], *kept], name="perturbation"),
        columns=[str(column) for column in range(matrix.shape[1])],
    )
    embeddings.attrs = {
        "screen_fingerprint": split_manifest["screen_fingerprint"],
        "source": source,
        "embeddings_fingerprint": fingerprint_frame(embeddings),
    }
    report = {
        "source": source,
        "dimension": int(matrix.shape[1]),
        "n_perturbations": len(perturbations),
        "n_embedded": len(kept),
        "n_missing": len(missing),
        "missing": missing,
        "matched_through_alias": via_alias,
        "screen_fingerprint": split_manifest["screen_fingerprint"],
        "embeddings_fingerprint": embeddings.attrs["embeddings_fingerprint"],
        "coverage": _coverage(by_line, found),
    }
    logger.info(
        "Perturbation embeddings: %d of %d perturbations, %d-d, from %s",
        len(kept),
        len(perturbations),
        matrix.shape[1],
        source,
    )
    return embeddings, report
