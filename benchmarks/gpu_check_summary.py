"""The summary of one ``benchmarks/gpu_check.sh`` run: its figures as a markdown file.

    python benchmarks/gpu_check_summary.py RESULTS_DIR --train-steps 500 --train-wall-s 93

Reads what the script left in RESULTS_DIR (``training_step.jsonl``: one line per precision;
``data_feed.txt``; ``kedro_train_state.log``) and writes ``summary.md`` beside them: per model and
precision the median step, steps/s, FLOP/s as a fraction of the peak matmul of that precision
(MFU) and peak memory; the data feed's output; the kedro run's wall time and its last progress
line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: the precision a training_step.jsonl line was measured in
PRECISIONS = {(False, False): "fp32", (True, False): "bf16", (True, True): "bf16 + compile"}


def precision(record: dict) -> str:
    return PRECISIONS.get((record["bf16"], record["compile"]), "fp32 + compile")


def step_table(records: list[dict]) -> list[str]:
    """One row per (precision, model) of the training-step benchmark."""
    lines = [
        "| precision | model | step s | steps/s | GFLOP/step | GFLOP/s | peak GFLOP/s | MFU "
        "| peak MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for record in records:
        peak = record["peak"]["flop_per_s"]
        for name, row in record["models"].items():
            memory = "n/a" if row["peak_mb"] is None else f"{row['peak_mb']:,.0f}"
            lines.append(
                f"| {precision(record)} | {name} | {row['step_s']:.4f} | {1 / row['step_s']:,.2f} "
                f"| {row['flops_per_step'] / 1e9:,.1f} | {row['flop_per_s'] / 1e9:,.1f} "
                f"| {peak / 1e9:,.1f} | {row['of_peak']:.1%} | {memory} |"
            )
    return lines


def progress_lines(log: Path) -> list[str]:
    """The training log's progress lines (those that report steps/s)."""
    if not log.exists():
        return []
    return [line.strip() for line in log.read_text().splitlines() if "steps/s" in line]


def summary(results: Path, train_steps: int, train_wall_s: float, total_wall_s: float) -> str:
    records = [
        json.loads(line)
        for line in (results / "training_step.jsonl").read_text().splitlines()
        if line.strip()
    ]
    first = records[0]
    shapes = first["shapes"]
    text = [
        f"# gpu_check: {first['device']}, torch {first['torch']}, {first['date']}",
        "",
        f"Training step ({shapes['name']}: B {shapes['batch']} x S {shapes['cells']} cells, "
        f"{shapes['genes']} genes, K {shapes['k']}; median of {first['steps']} steps after "
        f"{first['warmup']}; MFU = the step's FLOP/s over a {first['peak']['size']}^2 matmul's "
        "in the same precision, measured in the same run):",
        "",
        *step_table(records),
        "",
        "Data feed (`benchmarks/data_feed.py`):",
        "",
        "```",
        *(results / "data_feed.txt").read_text().rstrip().splitlines()[-25:],
        "```",
        "",
        f"`kedro run --env=paper --pipelines=train_state`, {train_steps} steps: wall time "
        f"{train_wall_s:.0f} s (start-up, data and the final validation included); "
        f"whole check {total_wall_s:.0f} s.",
    ]
    progress = progress_lines(results / "kedro_train_state.log")
    if progress:
        text += ["", "Last progress line:", "", "```", progress[-1], "```"]
    return "\n".join(text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--train-steps", type=int, required=True)
    parser.add_argument("--train-wall-s", type=float, required=True)
    parser.add_argument("--total-wall-s", type=float, required=True)
    args = parser.parse_args()
    text = summary(args.results, args.train_steps, args.train_wall_s, args.total_wall_s)
    (args.results / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
