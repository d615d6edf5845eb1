"""Training progress: log lines where the output is not a terminal, a step bar where it is."""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from ptrag_kedro.models import training
from ptrag_kedro.parameters import ParameterError, TrainingParameters
from tests.conftest import tiny_training, train_tiny

#: A progress line: ``Training, retrieval <kind> (seed <s>): <step>/<max> steps (<rate>
#: steps/s), ...``
LINE = re.compile(
    r"Training, retrieval ptrag \(seed 0\): (\d+)/5 steps \(([\d.e+-]+) steps/s\), "
    r"loss ([\d.e+-]+), "
    r"val energy (.+)$"
)


def test_training_logs_a_line_every_n_steps_where_no_terminal_shows_a_bar(
    prepared_inputs, tmp_path: Path, caplog
) -> None:
    """progress_bar is on, but the output (pytest's capture) is no terminal: a line at steps
    2, 4 and the last, 5, with the loss, the latest val check and the rate; the history and
    weights are those of a run that logs at another interval (logging only)."""
    with caplog.at_level(logging.INFO, logger="ptrag_kedro.models.training"):
        record, history, _ = train_tiny(
            prepared_inputs,
            tmp_path / "logged",
            "ptrag",
            max_steps=5,
            progress_bar=True,
            log_every_n_steps=2,
        )
    lines = [LINE.match(r.getMessage()) for r in caplog.records if "steps/s" in r.getMessage()]
    assert all(lines) and [int(line[1]) for line in lines] == [2, 4, 5]
    assert all(float(line[2]) > 0 for line in lines)
    val = history[history["split"] == "val"].set_index("step")["energy"]
    # the check of step 2 runs after step 2's line: the first line has none yet
    assert [line[4] for line in lines] == [
        "none yet",
        f"{val[2]:.4g} (step 2)",
        f"{val[4]:.4g} (step 4)",
    ]
    train = history[history["split"] == "train"].set_index("step")["loss"]
    expected = [train.loc[1:2].mean(), train.loc[3:4].mean(), train.loc[5:5].mean()]
    assert [float(line[3]) for line in lines] == [float(f"{loss:.4g}") for loss in expected]

    quiet, quiet_history, _ = train_tiny(
        prepared_inputs, tmp_path / "quiet", "ptrag", max_steps=5, log_every_n_steps=1000
    )
    pd.testing.assert_frame_equal(history, quiet_history)
    for name, tensor in record.state_dicts["0"].items():
        assert tensor.equal(quiet.state_dicts["0"][name])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_in_steps_not_epochs(
    prepared_inputs, tmp_path: Path, monkeypatch, caplog
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with caplog.at_level(logging.INFO, logger="ptrag_kedro.models.training"):
        train_tiny(prepared_inputs, tmp_path, "state", max_steps=4, progress_bar=True)
    shown = terminal.getvalue()
    assert "Training" in shown and "4/4" in shown and "Epoch" not in shown
    assert not [r for r in caplog.records if "steps/s" in r.getMessage()]  # the bar, not lines
    bar_off = training.progress_callback(tiny_training(progress_bar=False), "t", terminal)
    assert isinstance(bar_off, training.ProgressLines)


@pytest.mark.parametrize("value", [0, 2.5, "often"])
def test_log_every_n_steps_is_checked_before_the_run(value) -> None:
    with pytest.raises(
        ParameterError, match=re.escape("training.log_every_n_steps must be an integer >= 1")
    ):
        TrainingParameters(log_every_n_steps=value)
