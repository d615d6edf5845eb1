"""Embedding many gene summaries logs its progress in whole batches, and embeds the same."""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from ptrag_kedro.parameters import GeneptParameters
from ptrag_kedro.pipelines.genept.nodes import embed_gene_summaries
from tests.pipelines.genept.test_nodes import _CountingModel

LINE = re.compile(r"Embedding gene summaries: (\d+)/45 summaries \([\d.e+-]+ summaries/s\)$")


def test_summaries_are_embedded_in_about_ten_logged_chunks(caplog) -> None:
    """45 summaries in batches of 2: 23 batches, chunks of 3 batches (6 summaries): 8 lines."""
    summaries = {f"G{index}": "a" * (index + 1) for index in range(45)}
    genept = GeneptParameters(source="summaries", batch_size=2)
    model = _CountingModel()
    with caplog.at_level(logging.INFO, logger="ptrag_kedro.pipelines.genept.nodes"):
        table, _ = embed_gene_summaries(summaries, pd.DataFrame(), model, genept)
    done = [int(m[1]) for m in map(LINE.match, (r.getMessage() for r in caplog.records)) if m]
    assert done == [6, 12, 18, 24, 30, 36, 42, 45]
    assert model.seen == list(summaries.values())  # each once, in order
    np.testing.assert_array_equal(
        table.to_numpy(), _CountingModel().encode(list(summaries.values()), 2)
    )
