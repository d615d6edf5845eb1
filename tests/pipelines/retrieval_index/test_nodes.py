"""Retrieval index: faiss equals brute force, no self-retrieval, train only, provenance, bad K."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ptrag_kedro.datasets import FaissIndexDataset
from ptrag_kedro.parameters import ParameterError, RetrievalParameters
from ptrag_kedro.pipelines.retrieval_index.nodes import (
    RetrievalError,
    build_retrieval_index,
    find_retrieval_candidates,
    retrieval_diagnostics,
    train_perturbations,
)
from ptrag_kedro.provenance import StaleArtefactError, fingerprint_frame
from ptrag_kedro.retrieval import build_index, l2_normalise, search

#: ``retrieval_index.k: auto``, the default
AUTO = RetrievalParameters()


def _embeddings(names: list[str], dim: int = 16, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        np.vstack([np.zeros((1, dim)), rng.normal(size=(len(names), dim))]).astype(np.float32),
        index=pd.Index(["non-targeting", *names], name="perturbation"),
        columns=[str(column) for column in range(dim)],
    )
    frame.attrs = {"screen_fingerprint": "fp", "embeddings_fingerprint": fingerprint_frame(frame)}
    return frame


def _manifest(
    train_k562: list[str], train_hepg2: list[str], val: list[str], test: list[str]
) -> dict[str, Any]:
    return {
        "control_label": "non-targeting",
        "screen_fingerprint": "fp",
        "cell_lines": {
            "k562": {"train": train_k562, "val": [], "test": [], "n_control_cells": 5},
            "hepg2": {"train": train_hepg2, "val": val, "test": test, "n_control_cells": 5},
        },
    }


@pytest.fixture
def setup() -> tuple[pd.DataFrame, dict[str, Any]]:
    names = [f"G{index:03d}" for index in range(60)]
    # G050-G059 are val/test in hepg2 only; G040-G049 are test in hepg2 but train in k562.
    split = _manifest(names[:50], names[:40], val=names[50:53], test=names[40:50] + names[53:60])
    return _embeddings(names), split


def test_faiss_equals_brute_force_top_k() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 24)).astype(np.float32)
    names = [f"P{index}" for index in range(300)]
    index = build_index(vectors[:200], names[:200])
    candidates = search(index, vectors, names, k=10)
    normalised = l2_normalise(vectors)
    similarity = normalised @ normalised[:200].T
    for query in range(300):
        row = similarity[query].copy()
        if query < 200:
            row[query] = -np.inf
        expected = [names[column] for column in np.argsort(-row, kind="stable")[:10]]
        got = candidates.loc[candidates["perturbation"] == names[query]].sort_values("rank")
        assert list(got["candidate"]) == expected
        np.testing.assert_allclose(got["similarity"], np.sort(row)[::-1][:10], rtol=1e-5)


def test_ties_are_ordered_by_name() -> None:
    vectors = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    index = build_index(vectors[[2, 0, 1]], ["C", "A", "B"])
    candidates = search(index, vectors[[3]], ["Q"], k=3)
    assert list(candidates["candidate"]) == ["A", "B", "C"]


def test_candidates_train_only_and_never_self(setup) -> None:
    embeddings, split = setup
    index = build_retrieval_index(embeddings, split, AUTO)
    assert index.names == train_perturbations(split) == [f"G{i:03d}" for i in range(50)]
    candidates = find_retrieval_candidates(index, embeddings, split, RetrievalParameters(k=8))
    assert set(candidates["perturbation"]) == set(embeddings.index) - {"non-targeting"}
    assert (candidates["candidate"] != candidates["perturbation"]).all()
    held_out_only = {f"G{i:03d}" for i in range(50, 60)}
    assert not set(candidates["candidate"]) & held_out_only
    assert "non-targeting" not in set(candidates["candidate"])
    assert (candidates.groupby("perturbation").size() == 8).all()
    assert candidates.attrs["embeddings_fingerprint"] == embeddings.attrs["embeddings_fingerprint"]


def test_k_larger_than_train_set(setup) -> None:
    embeddings, split = setup
    index = build_retrieval_index(embeddings, split, AUTO)
    find_retrieval_candidates(index, embeddings, split, RetrievalParameters(k=49))  # n_train - 1
    auto = find_retrieval_candidates(index, embeddings, split, RetrievalParameters())
    assert (auto.groupby("perturbation").size() == 32).all()  # the paper's K: 50 are train
    names = [f"G{index:03d}" for index in range(60)]
    few = _manifest(names[:10], names[:10], val=names[50:53], test=names[53:60])
    small = build_retrieval_index(embeddings, few, AUTO)
    assert (
        find_retrieval_candidates(small, embeddings, few, RetrievalParameters())
        .groupby("perturbation")
        .size()
        == 9
    ).all()  # 10 train perturbations: at most 9 candidates
    with pytest.raises(ParameterError, match="retrieval_index.k must be"):
        RetrievalParameters(k=0)
    with pytest.raises(
        RetrievalError, match="retrieval_index.k = 50, but with 50 train perturbations"
    ):
        find_retrieval_candidates(index, embeddings, split, RetrievalParameters(k=50))
    with pytest.raises(
        RetrievalError, match="retrieval_index.k = 50"
    ):  # before the index is written
        build_retrieval_index(embeddings, split, RetrievalParameters(k=50))


def test_stale_embeddings_are_refused(setup) -> None:
    embeddings, split = setup
    index = build_retrieval_index(embeddings, split, AUTO)
    changed = _embeddings([name for name in embeddings.index[1:]], seed=9)
    with pytest.raises(
        StaleArtefactError, match="rebuild it with `kedro run --pipelines=retrieval_index`"
    ):
        find_retrieval_candidates(index, changed, split, RetrievalParameters(k=5))
    other_screen = {**split, "screen_fingerprint": "another"}
    with pytest.raises(StaleArtefactError, match="kedro run --pipelines=genept"):
        build_retrieval_index(embeddings, other_screen, AUTO)


def test_faiss_dataset_round_trip(tmp_path: Path, setup) -> None:
    embeddings, split = setup
    index = build_retrieval_index(embeddings, split, AUTO)
    dataset = FaissIndexDataset(filepath=str(tmp_path / "index.npz"))
    dataset.save(index)
    loaded = dataset.load()
    assert loaded.names == index.names and loaded.provenance == index.provenance
    pd.testing.assert_frame_equal(
        search(loaded, embeddings.iloc[1:].to_numpy(), list(embeddings.index[1:]), 5),
        search(index, embeddings.iloc[1:].to_numpy(), list(embeddings.index[1:]), 5),
    )
    from kedro.io import DatasetError

    with pytest.raises(DatasetError, match="no such faiss index file"):
        FaissIndexDataset(filepath=str(tmp_path / "absent.npz")).load()


def test_diagnostics_module_precision(setup) -> None:
    embeddings, split = setup
    names = list(embeddings.index[1:])
    # Two modules; members of a module share a direction, so they retrieve each other.
    embeddings.loc[names[:30]] += 3.0 * np.eye(16, dtype=np.float32)[0]
    embeddings.loc[names[30:]] += 3.0 * np.eye(16, dtype=np.float32)[1]
    embeddings.attrs["embeddings_fingerprint"] = fingerprint_frame(embeddings)
    k = 5
    index = build_retrieval_index(embeddings, split, AUTO)
    candidates = find_retrieval_candidates(index, embeddings, split, RetrievalParameters(k=k))
    module_of = dict(zip(names, [0] * 30 + [1] * 30, strict=True))
    modules = pd.DataFrame({"symbol": names, "module": list(module_of.values())})
    report, figure = retrieval_diagnostics(candidates, embeddings, index, modules)
    precision = report["module_precision"]
    # Each number against a computation from its definition.
    same = candidates["candidate"].map(module_of) == candidates["perturbation"].map(module_of)
    assert precision["precision"] == pytest.approx(same.mean())
    train = set(index.names)  # G000-G049: module 0 holds 30 of them, module 1 holds 20
    per_module = pd.Series([module_of[name] for name in train]).value_counts()
    random = [
        (per_module[module_of[query]] - (query in train)) / (len(train) - (query in train))
        for query in names
    ]
    assert precision["random_expectation"] == pytest.approx(np.mean(random))
    assert precision["n_queries"] == len(names)
    assert precision["precision"] > 0.9 > precision["random_expectation"] > 0.3
    assert precision["best_possible"] == 1.0  # every module has more than k train members
    vectors = l2_normalise(embeddings.loc[index.names].to_numpy())
    pairs = (vectors @ vectors.T)[np.triu_indices(len(index.names), k=1)]
    assert report["train_pair_similarity"]["mean"] == pytest.approx(pairs.mean(), rel=1e-5)
    assert report["train_pair_similarity"]["q50"] == pytest.approx(np.median(pairs), rel=1e-5)
    assert report["candidate_similarity"]["mean"] == pytest.approx(
        candidates["similarity"].mean(), rel=1e-5
    )
    assert report["candidate_similarity"]["mean"] > report["train_pair_similarity"]["mean"]
    assert (report["k"], report["n_queries"], report["n_train"]) == (k, len(names), len(train))

    # The figure: both similarity histograms, then the three precision bars of the report.
    similarity, bars = figure.axes
    assert (similarity.get_title(), similarity.get_xlabel(), similarity.get_ylabel()) == (
        "Embedding similarity",
        "cosine similarity",
        "density",
    )
    assert [text.get_text() for text in similarity.get_legend().get_texts()] == [
        "all train pairs",
        f"top-{k} candidates",
    ]
    edges = np.linspace(min(pairs.min(), candidates["similarity"].min()), 1.0, 50)
    for container, values in zip(
        similarity.containers, (pairs, candidates["similarity"]), strict=True
    ):
        expected, _ = np.histogram(values, bins=edges, density=True)
        np.testing.assert_allclose([patch.get_height() for patch in container], expected)
        np.testing.assert_allclose([patch.get_x() for patch in container], edges[:-1])
    (bar_container,) = bars.containers
    np.testing.assert_allclose(
        [patch.get_height() for patch in bar_container],
        [precision["precision"], precision["random_expectation"], precision["best_possible"]],
    )
    assert [text.get_text() for text in bars.get_xticklabels()] == [
        "retrieved",
        "random",
        "best possible",
    ]
    assert bars.get_title() == f"Module precision (n={len(names)})"
    assert bars.get_ylim() == (0, 1)

    # Without a module table (a real screen): no precision, and the panel says why.
    report, figure = retrieval_diagnostics(candidates, embeddings, index, None)
    assert report["module_precision"] is None
    similarity, bars = figure.axes
    assert len(similarity.containers) == 2
    assert not bars.axison and not bars.containers
    assert [text.get_text() for text in bars.texts] == ["no ground-truth modules\n(real screen)"]


def test_perturbation_responses_are_train_group_means(prepared_inputs) -> None:
    """Each row against a pandas group-by on the dense screen; val and test never enter."""
    from ptrag_kedro.pipelines.retrieval_index.nodes import build_perturbation_responses

    screen, manifest = prepared_inputs["screen"], prepared_inputs["split_manifest"]
    responses = build_perturbation_responses(screen, manifest)
    frame = pd.DataFrame(
        screen.X.toarray() if hasattr(screen.X, "toarray") else screen.X,
        columns=screen.var_names,
    )
    frame["line"] = screen.obs["cell_line"].astype(str).to_numpy()
    frame["name"] = screen.obs["perturbation"].astype(str).to_numpy()
    frame["split"] = screen.obs["split"].astype(str).to_numpy()
    controls = frame[frame["split"] == "control"].groupby("line")[list(screen.var_names)].mean()
    train = frame[frame["split"] == "train"]
    means = train.groupby(["line", "name"])[list(screen.var_names)].mean()
    sizes = train.groupby(["line", "name"]).size()
    assert len(responses) == len(means)
    for _, row in responses.iterrows():
        key = (row["cell_line"], row["perturbation"])
        expected = means.loc[key] - controls.loc[row["cell_line"]]
        np.testing.assert_allclose(row[list(screen.var_names)].to_numpy(float), expected, atol=1e-5)
        assert row["n_cells"] == sizes.loc[key]
        assert row["perturbation"] in manifest["cell_lines"][row["cell_line"]]["train"]
    assert responses.attrs["screen_fingerprint"] == manifest["screen_fingerprint"]


def test_perturbation_responses_refuse_a_manifest_that_disagrees(prepared_inputs) -> None:
    from ptrag_kedro.pipelines.retrieval_index.nodes import build_perturbation_responses

    manifest = {
        **prepared_inputs["split_manifest"],
        "cell_lines": {
            line: {**entry, "train": entry["train"][1:]}
            for line, entry in prepared_inputs["split_manifest"]["cell_lines"].items()
        },
    }
    with pytest.raises(RetrievalError, match="does not list as train"):
        build_perturbation_responses(prepared_inputs["screen"], manifest)
    stale = {**prepared_inputs["split_manifest"], "screen_fingerprint": "other"}
    with pytest.raises(StaleArtefactError, match="kedro run --pipelines=ingestion"):
        build_perturbation_responses(prepared_inputs["screen"], stale)
