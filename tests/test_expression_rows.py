"""Reading the screen's X by rows: from the file (or its row cache) equals from memory, for every
consumer; memory decides where X is read from, unless told."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from ptrag_kedro import expression_rows
from ptrag_kedro.expression_rows import ExpressionRows, dense, stored_bytes
from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.sentences import SentenceSampler, SentenceSpec, samplers_for
from ptrag_kedro.models.training import SentenceStream
from ptrag_kedro.parameters import ParameterError
from ptrag_kedro.schema import (
    BATCH,
    CELL_LINE,
    CONTROL,
    PERTURBATION,
    PROVENANCE_KEY,
    SPLIT,
    TRAIN,
    VAL,
)
from ptrag_kedro.shifts import group_means
from tests.conftest import tiny_training, train_tiny


def _backed(screen: ad.AnnData, path: Path, sparse: bool) -> ad.AnnData:
    stored = screen.copy()
    stored.X = sp.csr_matrix(stored.X) if sparse else dense(stored.X).astype(np.float32)
    stored.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


@pytest.fixture(params=["csr", "dense"])
def backed_screen(request, prepared_inputs: dict[str, Any], tmp_path: Path) -> ad.AnnData:
    return _backed(prepared_inputs["screen"], tmp_path / "screen.h5ad", request.param == "csr")


def _memory_available(monkeypatch, available: int | None) -> None:
    monkeypatch.setattr(expression_rows, "available_memory", lambda: available)


def _caches(screen: ad.AnnData) -> list[Path]:
    path = Path(screen.filename)
    return sorted(path.parent.glob(f"{path.name}.rows1-*.npy"))


def test_rows_from_file_equal_rows_in_memory(
    backed_screen: ad.AnnData, prepared_inputs: dict[str, Any]
) -> None:
    in_memory = ExpressionRows.of(prepared_inputs["screen"])
    from_file = ExpressionRows.of(backed_screen, in_memory=False)
    cached = ExpressionRows.of(backed_screen, in_memory=False, random_rows=True)
    assert from_file.on_disk and from_file.cache is None and not in_memory.on_disk
    assert cached.on_disk and cached.cache is not None
    rows = np.array([17, 3, 3, 900, 0, 17, backed_screen.n_obs - 1])  # unsorted, repeated
    expected = dense(prepared_inputs["screen"].X[rows])
    for reader in (from_file, cached, in_memory):
        got = reader[rows]
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_memory_decides_where_x_is_read_unless_told(
    backed_screen: ad.AnnData, monkeypatch, caplog
) -> None:
    size = stored_bytes(backed_screen)
    assert size > 0
    caplog.set_level(logging.INFO, logger="ptrag_kedro.expression_rows")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    _memory_available(monkeypatch, 2 * size)  # auto: at most half of what is available
    assert not ExpressionRows.of(backed_screen).on_disk
    assert "held in memory (in_memory auto" in caplog.text
    assert f"{2 * size / 2**20:,.0f} MB of memory available" in caplog.text
    _memory_available(monkeypatch, 2 * size - 1)
    assert ExpressionRows.of(backed_screen).on_disk
    assert (
        caplog.records[-1]
        .getMessage()
        .endswith(
            "rows read from the file (in_memory auto: memory when X takes at most 50% of what is "
            "available)"
        )
    )
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two DDP ranks on this node: a copy each
    _memory_available(monkeypatch, 4 * size)
    assert not ExpressionRows.of(backed_screen).on_disk
    _memory_available(monkeypatch, 4 * size - 1)
    assert ExpressionRows.of(backed_screen).on_disk
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    _memory_available(monkeypatch, None)  # unknown: the file
    assert ExpressionRows.of(backed_screen, in_memory="auto").on_disk
    _memory_available(monkeypatch, 1)
    assert not ExpressionRows.of(backed_screen, in_memory=True).on_disk
    _memory_available(monkeypatch, 100 * size)
    assert ExpressionRows.of(backed_screen, in_memory=False).on_disk
    with pytest.raises(ValueError, match="in_memory must be auto, True or False, got 1"):
        ExpressionRows.of(backed_screen, in_memory=1)


@pytest.mark.parametrize("value", ["yes", 1, None, "Auto"])
def test_in_memory_parameter_is_auto_true_or_false(value: Any) -> None:
    for accepted in ("auto", True, False):
        assert tiny_training(in_memory=accepted).in_memory == accepted
    assert tiny_training().in_memory == "auto"
    with pytest.raises(ParameterError) as raised:
        tiny_training(in_memory=value)
    assert str(raised.value) == f"training.in_memory must be auto, true or false, got {value!r}"


def test_available_memory_is_memavailable() -> None:
    if not Path("/proc/meminfo").is_file():
        pytest.skip("no /proc/meminfo here")
    listed = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = int(listed["MemAvailable"].split()[0])
    assert abs(expression_rows.available_memory() - kib * 1024) < 256 * 2**20  # it moves


def test_row_cache_is_grouped_keyed_by_the_screen_and_rebuilt_when_stale(
    prepared_inputs: dict[str, Any], tmp_path: Path
) -> None:
    screen = prepared_inputs["screen"]
    backed = _backed(screen, tmp_path / "screen.h5ad", sparse=True)
    cache = ExpressionRows.of(backed, in_memory=False, random_rows=True).cache
    assert _caches(backed) == [cache.path]
    fingerprint = backed.uns[PROVENANCE_KEY]["fingerprint"]
    # Rows grouped by (cell line, perturbation): each group one contiguous region of the file.
    stored = np.load(cache.path)
    np.testing.assert_array_equal(stored[cache.positions], dense(screen.X).astype(np.float32))
    for _, rows in backed.obs.groupby([CELL_LINE, PERTURBATION], observed=True).indices.items():
        positions = np.sort(cache.positions[rows])
        np.testing.assert_array_equal(positions, np.arange(positions[0], positions[-1] + 1))
    # Found again, not rewritten.
    written = cache.path.stat().st_mtime_ns
    again = ExpressionRows.of(backed, in_memory=False, random_rows=True).cache
    assert again.path == cache.path and again.path.stat().st_mtime_ns == written
    # Another file at the screen's path (new values, the same fingerprint recorded): another
    # cache, and the stale one removed.
    changed = screen.copy()
    changed.X = sp.csr_matrix(dense(screen.X) * 2)
    backed.file.close()
    rewritten = _backed(changed, tmp_path / "screen.h5ad", sparse=True)
    assert rewritten.uns[PROVENANCE_KEY]["fingerprint"] == fingerprint
    fresh = ExpressionRows.of(rewritten, in_memory=False, random_rows=True)
    assert _caches(rewritten) == [fresh.cache.path] and fresh.cache.path != cache.path
    np.testing.assert_array_equal(fresh[np.arange(5)], dense(changed.X[:5]).astype(np.float32))


def test_no_row_cache_without_a_fingerprint_or_room(
    prepared_inputs: dict[str, Any], tmp_path: Path, monkeypatch, caplog
) -> None:
    screen = prepared_inputs["screen"].copy()
    del screen.uns[PROVENANCE_KEY]
    unprinted = _backed(screen, tmp_path / "unprinted.h5ad", sparse=True)
    reader = ExpressionRows.of(unprinted, in_memory=False, random_rows=True)
    assert reader.cache is None and not _caches(unprinted)
    backed = _backed(prepared_inputs["screen"], tmp_path / "screen.h5ad", sparse=True)
    monkeypatch.setattr(
        expression_rows.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 10})()
    )
    reader = ExpressionRows.of(backed, in_memory=False, random_rows=True)
    assert reader.cache is None and not _caches(backed)
    assert "No room for the row cache" in caplog.text
    np.testing.assert_array_equal(reader[np.array([4, 2])], dense(backed.X[[4, 2]]))


def test_on_disk_rows_pickle_as_their_paths(backed_screen: ad.AnnData) -> None:
    for row_cache in (False, True):
        on_disk = ExpressionRows.of(backed_screen, in_memory=False, random_rows=row_cache)
        rows = np.array([5, 1, 5])
        before = on_disk[rows]  # opens the file
        payload = pickle.dumps(on_disk)
        # the paths, shape and (cached) the cells' positions, not the matrix
        assert len(payload) < 2_000 + 8 * row_cache * backed_screen.n_obs
        np.testing.assert_array_equal(pickle.loads(payload)[rows], before)


def test_group_sums_stream_blocks(prepared_inputs: dict[str, Any], tmp_path: Path) -> None:
    screen = prepared_inputs["screen"]
    backed = _backed(screen, tmp_path / "screen.h5ad", sparse=True)
    rng = np.random.default_rng(0)
    weights = sp.random(5, screen.n_obs, density=0.05, random_state=rng, format="csr")
    expected = dense(weights @ screen.X)
    on_disk = ExpressionRows.of(backed, in_memory=False)
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
        expression=ExpressionRows.of(backed_screen, in_memory=False, random_rows=True),
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


def _stream(sampler: SentenceSampler, steps: int, workers: int = 0) -> list[dict[str, Any]]:
    """The first ``steps`` batches of training's stream (B 3, seed 5), as training draws them."""
    stream = SentenceStream(sampler, batch_size=3, seed=5)
    batches = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    return [next(batches) for _ in range(steps)]


def _todays_stream(
    screen: ad.AnnData, embeddings: pd.DataFrame, label: str, size: int, steps: int
) -> list[dict[str, np.ndarray]]:
    """Training's stream (B 3, seed 5) as it was drawn before the row cache, written out: B
    (line, perturbation) groups of the train split drawn uniformly, S cells of each (without
    replacement when it has S), then S controls of its line for each; values from X in memory."""
    obs = screen.obs.astype({CELL_LINE: str, PERTURBATION: str, BATCH: str})
    x = dense(screen.X).astype(np.float32)
    chosen = (obs[SPLIT] == TRAIN) & (obs[PERTURBATION] != label)
    chosen &= obs[PERTURBATION].isin(embeddings.index)
    rows = np.flatnonzero(chosen)
    groups = [
        (line, gene, rows[members])
        for (line, gene), members in sorted(
            obs.iloc[rows].groupby([CELL_LINE, PERTURBATION]).indices.items()
        )
    ]
    is_control = (obs[PERTURBATION] == label).to_numpy()
    pools = {
        line: np.flatnonzero(is_control & (obs[CELL_LINE] == line)) for line in set(obs[CELL_LINE])
    }
    codes = {value: code for code, value in enumerate(sorted(set(obs[BATCH])))}
    batches = []
    for step in range(steps):
        rng = np.random.default_rng([5, step])
        drawn = [groups[index] for index in rng.integers(0, len(groups), 3)]
        targets = [rng.choice(cells, size, replace=len(cells) < size) for _, _, cells in drawn]
        controls = [pools[line][rng.integers(0, len(pools[line]), size)] for line, _, _ in drawn]
        targets, controls = np.concatenate(targets), np.concatenate(controls)
        batches.append(
            {
                keys.TARGET: x[targets].reshape(3, size, -1),
                keys.CONTROL: x[controls].reshape(3, size, -1),
                keys.PERTURBATION: embeddings.loc[[gene for _, gene, _ in drawn]].to_numpy(
                    np.float32
                ),
                keys.BATCH_INDEX: np.array(
                    [codes[value] for value in obs[BATCH].iloc[controls]]
                ).reshape(3, size),
            }
        )
    return batches


def test_training_stream_is_todays_bit_for_bit(
    backed_screen: ad.AnnData, prepared_inputs: dict[str, Any]
) -> None:
    """The same sentences (cells, values) for the same (seed, step), whatever X is read from:
    memory, the file (the reader of before the row cache), or the row cache, in the training
    process or in data-loader workers."""
    inputs = prepared_inputs
    spec = SentenceSpec(cell_set_size=8, candidates_k=3, response_neighbours=2)
    arguments = (inputs["perturbation_embeddings"], inputs["retrieval_candidates"], TRAIN, spec)
    label = inputs["split_manifest"]["control_label"]
    responses = inputs["perturbation_responses"]

    def sampler(screen: ad.AnnData, expression: ExpressionRows) -> SentenceSampler:
        return SentenceSampler(
            screen, *arguments, label, responses=responses, expression=expression
        )

    memory = sampler(inputs["screen"], ExpressionRows(matrix=inputs["screen"].X))
    from_file = sampler(backed_screen, ExpressionRows(path=backed_screen.filename))
    expected = _stream(memory, steps=4)
    assert not torch.equal(expected[0]["target"], expected[1]["target"])
    todays = _todays_stream(inputs["screen"], arguments[0], label, spec.cell_set_size, steps=4)
    for want, got in zip(todays, expected, strict=True):
        for key, values in want.items():
            assert got[key].dtype == torch.as_tensor(values).dtype, key
            assert torch.equal(torch.as_tensor(values), got[key]), key
    tables = (inputs["split_manifest"], *arguments[:2], responses)
    readers = {
        "file": from_file,
        "cache": samplers_for((TRAIN,), spec, backed_screen, *tables, in_memory=False)[TRAIN],
        "memory, from a backed screen": samplers_for(
            (TRAIN,), spec, backed_screen, *tables, in_memory=True
        )[TRAIN],
    }
    assert readers["cache"].expression.cache is not None
    assert not readers["memory, from a backed screen"].expression.on_disk
    for name, reader in readers.items():
        for step, (want, got) in enumerate(zip(expected, _stream(reader, 4), strict=True)):
            assert want.keys() == got.keys()
            for key in want:
                assert want[key].dtype == got[key].dtype, (name, key)
                assert torch.equal(want[key], got[key]), (name, step, key)
    # Data-loader workers map the cache in their own process and draw the same steps in order.
    ahead = _stream(readers["cache"], 4, workers=2)
    for want, got in zip(expected, ahead, strict=True):
        for key in want:
            assert torch.equal(want[key], got[key]), key


def test_training_reads_x_where_training_in_memory_says(
    prepared_inputs: dict[str, Any], tmp_path: Path, caplog
) -> None:
    backed = _backed(prepared_inputs["screen"], tmp_path / "screen.h5ad", sparse=True)
    caplog.set_level(logging.INFO, logger="ptrag_kedro.expression_rows")
    train_tiny({**prepared_inputs, "screen": backed}, tmp_path / "ckpt", "state", in_memory=False)
    assert "rows read from the file (in_memory false)" in caplog.text
    assert len(_caches(backed)) == 1


def test_training_holds_a_sparse_x_dense_when_it_fits(
    prepared_inputs: dict[str, Any], monkeypatch
) -> None:
    """Rows read at random (training) come from a dense float32 copy of an in-memory CSR when
    it fits the memory budget, value for value; otherwise the CSR is kept."""
    screen = prepared_inputs["screen"].copy()
    screen.X = sp.csr_matrix(screen.X, dtype=np.float64)
    dense_bytes = screen.n_obs * screen.n_vars * 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    _memory_available(monkeypatch, 2 * dense_bytes)
    monkeypatch.setattr(expression_rows, "BLOCK_ROWS", 7)  # several blocks
    held = ExpressionRows.of(screen, random_rows=True)
    assert isinstance(held._matrix, np.ndarray) and held._matrix.dtype == np.float32
    rows = np.array([5, 0, 5, screen.n_obs - 1, 12])
    np.testing.assert_array_equal(held[rows], dense(screen.X[rows]).astype(np.float32))
    np.testing.assert_array_equal(held._matrix, dense(screen.X).astype(np.float32))
    assert sp.issparse(ExpressionRows.of(screen)._matrix)  # no random reads: as it is
    _memory_available(monkeypatch, 2 * dense_bytes - 1)
    assert sp.issparse(ExpressionRows.of(screen, random_rows=True)._matrix)
