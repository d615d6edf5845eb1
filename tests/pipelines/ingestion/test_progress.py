"""Ingestion's passes over X log their progress: about ten lines a pass, in raw rows."""

from __future__ import annotations

import logging
import math
import re

import numpy as np

from ptrag_kedro.pipelines.ingestion.staged import row_blocks
from tests.conftest import ingest_staged

LINE = re.compile(r"(.+): ([\d,]+)/([\d,]+) raw rows \([\d.e+-]+ raw rows/s\)$")


def _progress(caplog, task: str) -> list[int]:
    matches = [LINE.match(record.getMessage()) for record in caplog.records]
    return [int(match[2].replace(",", "")) for match in matches if match and match[1] == task]


def test_a_pass_of_many_blocks_logs_about_ten_lines(caplog) -> None:
    """100 rows in blocks of 7: 15 blocks, a line every 2 blocks (14 rows) and at the end;
    every block is still yielded once, whether or not it holds a wanted row."""
    matrix = np.arange(300.0).reshape(100, 3)
    rows = np.arange(0, 100, 3)
    with caplog.at_level(logging.INFO, logger="ptrag_kedro.pipelines.ingestion.staged"):
        blocks = list(row_blocks(matrix, rows, 7, task="a pass"))
    assert _progress(caplog, "a pass") == [14, 28, 42, 56, 70, 84, 98, 100]
    np.testing.assert_array_equal(np.vstack([block for _, block in blocks]), matrix[rows])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ptrag_kedro.pipelines.ingestion.staged"):
        list(row_blocks(matrix, rows, 100, task="one block"))
    assert _progress(caplog, "one block") == []  # one block: the node's own line is enough


def test_ingestion_names_each_pass_in_its_progress(tiny_screen, ingestion_params, caplog) -> None:
    block_rows = 64
    ingestion_params["features"]["block_rows"] = block_rows
    with caplog.at_level(logging.INFO, logger="ptrag_kedro.pipelines.ingestion.staged"):
        staged, _ = ingest_staged(tiny_screen, ingestion_params)
        list(staged.x_blocks())
    n_raw, n_blocks = tiny_screen.n_obs, math.ceil(tiny_screen.n_obs / block_rows)
    for task in ("filter_cells: checking the counts", "Writing the screen's X"):
        done = _progress(caplog, task)
        assert done[-1] == n_raw and done == sorted(done)
        assert len(done) <= 11 < n_blocks  # about ten lines, not one per block
