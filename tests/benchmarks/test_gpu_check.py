"""benchmarks/gpu_check.sh --cpu end to end, so the GPU script keeps working without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_runs_on_the_cpu_and_summarises_every_part(tmp_path: Path) -> None:
    results = tmp_path / "results"
    done = subprocess.run(
        [
            "bash",
            str(PROJECT_ROOT / "benchmarks" / "gpu_check.sh"),
            "--cpu",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [
        json.loads(line) for line in (results / "training_step.jsonl").read_text().splitlines()
    ]
    assert [(r["bf16"], r["compile"]) for r in records] == [
        (False, False),
        (True, False),
        (True, True),
    ]
    for record in records:
        assert record["peak"]["flop_per_s"] > 0
        assert all(
            row["flops_per_step"] > 0 and row["of_peak"] > 0 for row in record["models"].values()
        )
    assert set(records[0]["models"]) == {"state", "ptrag"}
    summary = (results / "summary.md").read_text()
    assert "| bf16 + compile | state |" in summary
    assert "--pipelines=train_state`, 5 steps" in summary
    assert "batches/s" in (results / "data_feed.txt").read_text()
    assert "Error" not in (results / "kedro_train_state.log").read_text()
