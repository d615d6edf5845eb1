"""Reading the screen's X by rows: from the file equals from memory, for every consumer."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ptrag_kedro.expression_rows import ExpressionRows, dense, stored_bytes
from ptrag_kedro.models.sentences import SentenceSampler, SentenceSpec
from ptrag_kedro.schema import CONTROL, TRAIN, VAL
from ptrag_kedro.shifts import group_means


def _backed(screen: ad.AnnData, path: Path, sparse: bool) -> ad.AnnData:
    stored = screen.copy()
    stored.X = sp.csr_matrix(stored.X) if sparse else dense(stored.X).astype(np.float32)
    stored.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


@pytest.fixture(params=["csr", "dense"])
def backed_screen(request, prepared_inputs: dict[str, Any], tmp_path: Path) -> ad.AnnData:
    return _backed(prepared_inputs["screen"], tmp_path / "screen.h5ad", request.param == "csr")


def test_rows_from_file_equal_rows_in_memory(
    backed_screen: ad.AnnData, prepared_inputs: dict[str, Any]
) -> None:
    in_memory = ExpressionRows.of(prepared_inputs["screen"])
    on_disk = ExpressionRows.of(backed_screen, in_memory_bytes=0)
    assert on_disk.on_disk and not in_memory.on_disk
    rows = np.array([17, 3, 3, 900, 0, 17, backed_screen.n_obs - 1])  # unsorted, repeated
    expected = dense(prepared_inputs["screen"].X[rows])
    got = on_disk[rows]
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(in_memory[rows], expected)


def test_small_backed_screen_is_loaded_once_into_memory(backed_screen: ad.AnnData) -> None:
    rows = ExpressionRows.of(backed_screen)  # demo-sized: far below the default limit
    assert not rows.on_disk
    assert stored_bytes(backed_screen) > 0
    assert not ExpressionRows.of(backed_screen, in_memory_bytes=stored_bytes(backed_screen)).on_disk
    assert ExpressionRows.of(backed_screen, in_memory_bytes=stored_bytes(backed_screen) - 1).on_disk


def test_on_disk_rows_pickle_as_their_path(backed_screen: ad.AnnData) -> None:
    on_disk = ExpressionRows.of(backed_screen, in_memory_bytes=0)
    rows = np.array([5, 1, 5])
    before = on_disk[rows]  # opens the file
    payload = pickle.dumps(on_disk)
    assert len(payload) < 2_000  # the path and shape, not the matrix
    np.testing.assert_array_equal(pickle.loads(payload)[rows], before)


def test_group_sums_stream_blocks(prepared_inputs: dict[str, Any], tmp_path: Path) -> None:
    screen = prepared_inputs["screen"]
    backed = _backed(screen, tmp_path / "screen.h5ad", sparse=True)
    rng = np.random.default_rng(0)
    weights = sp.random(5, screen.n_obs, density=0.05, random_state=rng, format="csr")
    expected = dense(weights @ screen.X)
    on_disk = ExpressionRows.of(backed, in_memory_bytes=0)
    np.testing.assert_allclose(on_disk.row_sums(weights), expected, rtol=1e-5, atol=1e-6)
    # Block boundaries do not change the sums.
    on_disk_blocks = on_disk.blocks(block_rows=333)
    assert sum(block.shape[0] for _, block in on_disk_blocks) == screen.n_obs
    groups, means = group_means(backed, [TRAIN, CONTROL])
    groups_memory, means_memory = group_means(screen, [TRAIN, CONTROL])
    pd.testing.assert_frame_equal(groups, groups_memory)
    np.testing.assert_allclose(means, means_memory, rtol=1e-5, atol=1e-6)


def test_sampler_reads_the_same_sentences_from_disk(
    backed_screen: ad.AnnData, prepared_inputs: dict[str, Any]
) -> None:
    inputs = prepared_inputs
    spec = SentenceSpec(cell_set_size=8, candidates_k=3)
    arguments = (inputs["perturbation_embeddings"], inputs["retrieval_candidates"], VAL, spec)
    label = inputs["split_manifest"]["control_label"]
    in_memory = SentenceSampler(inputs["screen"], *arguments, control_label=label)
    on_disk = SentenceSampler(
        backed_screen,
        *arguments,
        control_label=label,
        expression=ExpressionRows.of(backed_screen, in_memory_bytes=0),
    )
    expected = in_memory.random_batch(4, np.random.default_rng(7))
    got = on_disk.random_batch(4, np.random.default_rng(7))
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())
    batch, controls = on_disk.prediction_batch(0, seed=3)
    np.testing.assert_array_equal(controls, in_memory.prediction_batch(0, seed=3)[1])


def test_shards_of_a_global_batch(prepared_inputs: dict[str, Any]) -> None:
    inputs = prepared_inputs
    sampler = SentenceSampler(
        inputs["screen"],
        inputs["perturbation_embeddings"],
        inputs["retrieval_candidates"],
        TRAIN,
        SentenceSpec(cell_set_size=8),
        control_label=inputs["split_manifest"]["control_label"],
    )
    whole = sampler.random_batch(6, np.random.default_rng([0, 5]))
    parts = [sampler.random_batch(3, np.random.default_rng([0, 5]), shard=(r, 2)) for r in (0, 1)]
    for key, tensor in whole.items():
        np.testing.assert_array_equal(
            np.concatenate([part[key].numpy() for part in parts]), tensor.numpy()
        )
    assert not np.array_equal(parts[0]["target"].numpy(), parts[1]["target"].numpy())
