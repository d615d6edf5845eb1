#!/usr/bin/env bash
# The checks that need a GPU, in one run of about 8 minutes on one CUDA GPU:
#
#   1. the training step at the paper's shapes (B 64 x S 64 cells, 2,000 genes, K 32, the Llama
#      backbone), STATE and PT-RAG, in fp32, bf16 and bf16 + torch.compile: steps/s, FLOP/s as a
#      fraction of the peak the GPU measures in that dtype (MFU), peak CUDA memory
#      (benchmarks/training_step.py);
#   2. the data feed on an in-memory screen (benchmarks/data_feed.py, when present);
#   3. 500 steps of `kedro run --env=paper --pipelines=train_state` (bf16, pinned batches) on a
#      simulated screen of the paper's shapes, prepared by `--pipelines=prepare` in a temporary
#      copy of the project's conf/, so nothing under data/ or conf/local/ is touched.
#
#   benchmarks/gpu_check.sh [--cpu] [--results DIR]
#
# It installs nothing: it uses .venv as `make install` builds it (with the CUDA build of torch,
# see the README's "Installing torch for your machine"). Figures go to DIR (default
# benchmarks/results/gpu_check/<UTC time>/): summary.md, training_step.jsonl, one log per part.
# --cpu runs the same parts on the CPU at tiny shapes and few steps (about 2 minutes on the 2-core
# development machine), so the script stays working where there is no GPU.
set -euo pipefail

PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="$PROJECT/.venv/bin/python"
KEDRO="$PROJECT/.venv/bin/kedro"
CPU=0
RESULTS=""
while (($#)); do
    case "$1" in
        --cpu) CPU=1 ;;
        --results) RESULTS="$2"; shift ;;
        -h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "Error: gpu_check.sh: unknown argument '$1' (--cpu, --results DIR)" >&2; exit 2 ;;
    esac
    shift
done
RESULTS="${RESULTS:-$PROJECT/benchmarks/results/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
# COLUMNS: Kedro's rich log lines unwrapped in the log files, so the summary can read them
export KEDRO_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1 COLUMNS=250

if [[ ! -x "$PYTHON" ]]; then
    echo "Error: $PYTHON not found; build the environment first with \`make install\`" >&2
    exit 1
fi
if ((CPU)); then
    export CUDA_VISIBLE_DEVICES=""  # the CPU even where a GPU is visible
    # demo shapes (B 16 x S 32, 500 genes); one thread: the development machine's cores are shared
    # no peak-memory subprocesses either (each starts torch again): the step and FLOPs only
    STEP_ARGS=(--config demo --steps 1 --warmup 1 --peak-size 512 --threads 1 --no-memory)
    # bf16 (emulated on a CPU without bf16 instructions) and inductor's compile are slow on the
    # CPU: there STATE alone and no memory subprocesses (each would compile again)
    LOW_PRECISION_MODELS=(state) LOW_PRECISION_ARGS=(--no-memory)
    FEED_ARGS=(--cells 4000 --genes 300 --n-top-genes 200 --workers 0 --batches 3 --warmup 1
        --batch-size 4 --cell-set-size 8 --embedding-dim 32 --label gpu_check_cpu)
    STEPS=5
    # a tiny screen (2,000 cells x 200 genes), the paper's backbone on small sentences
    SCREEN="simulation.n_genes=200,simulation.n_modules=4,simulation.module_size=20"
    SCREEN+=",simulation.n_perturbations=24,simulation.cells_per_perturbation=20"
    SCREEN+=",simulation.embedding_dim=32,ingestion.features.n_top_genes=100,retrieval_index.k=5"
    TRAIN="training.batch_size=4,training.cell_set_size=8,training.bf16=false"
else
    if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "Error: torch in .venv sees no CUDA GPU; install a CUDA build of torch==2.13.0" \
            "(README, \"Installing torch for your machine\"), or run with --cpu" >&2
        exit 1
    fi
    STEP_ARGS=(--config paper --steps 20 --warmup 5 --peak-size 8192)
    LOW_PRECISION_MODELS=(state ptrag) LOW_PRECISION_ARGS=()
    FEED_ARGS=(--cells 200000 --genes 2500 --n-top-genes 2000 --workers 0 2 --batches 100
        --label gpu_check)
    STEPS=500
    # the paper's shapes: 2,000 of 2,500 genes kept; 4 lines x 400 perturbations (each line has
    # 80 % of them) x 64 cells + 8 % controls: about 90,000 cells; GenePT's 1,536-d vectors (the
    # demo's); K 32 (conf/paper)
    SCREEN="simulation.n_genes=2500,simulation.n_modules=40,simulation.module_size=40"
    SCREEN+=",simulation.n_perturbations=400,simulation.cells_per_perturbation=64"
    SCREEN+=",ingestion.features.n_top_genes=2000"
    TRAIN="training.bf16=true,training.loader_workers=2"
fi
LOG() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$RESULTS/gpu_check.log"; }
START=$SECONDS
# the simulated screens and the project copy (GBs at the paper's size): removed at the end
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
LOG "results in $RESULTS"
cd "$PROJECT"

# 1. the training step: fp32, bf16, bf16 + compile, each appended to training_step.jsonl
STEP_JSONL="$RESULTS/training_step.jsonl"
for mode in fp32 bf16 bf16_compile; do
    extra=() models=(state ptrag)
    [[ $mode == bf16* ]] && extra+=(--bf16 "${LOW_PRECISION_ARGS[@]}") \
        && models=("${LOW_PRECISION_MODELS[@]}")
    [[ $mode == *compile ]] && extra+=(--compile)
    LOG "training step, $mode: ${models[*]}"
    "$PYTHON" benchmarks/training_step.py "${STEP_ARGS[@]}" --no-peer --models "${models[@]}" \
        "${extra[@]}" --results "$STEP_JSONL" >"$RESULTS/training_step_$mode.txt" 2>&1 \
        || { tail -20 "$RESULTS/training_step_$mode.txt" >&2; exit 1; }
done

# 2. the data feed on an in-memory screen
if [[ -f benchmarks/data_feed.py ]]; then
    LOG "data feed"
    # X held in memory (the `memory` reader); the simulated screens are kept in the results
    "$PYTHON" benchmarks/data_feed.py --readers memory "${FEED_ARGS[@]}" \
        --workdir "$SCRATCH/data_feed" --results "$RESULTS/data_feed.jsonl" \
        >"$RESULTS/data_feed.txt" 2>&1 \
        || { tail -20 "$RESULTS/data_feed.txt" >&2; exit 1; }
else
    LOG "data feed: skipped, benchmarks/data_feed.py is not in this checkout"
    echo "benchmarks/data_feed.py is not in this checkout" >"$RESULTS/data_feed.txt"
fi

# 3. kedro run --env=paper: prepare a simulated screen, then train STATE for $STEPS steps. In a
# copy of conf/ (as the tests run the project), so data/ and conf/local/ are left alone.
PROJECT_COPY="$SCRATCH/project"
"$PYTHON" - "$PROJECT" "$PROJECT_COPY" <<'COPY'
import shutil, sys
from pathlib import Path
project, copy = map(Path, sys.argv[1:])
# conf/ without conf/local (a user's own settings and credentials stay where they are)
shutil.copytree(project / "conf", copy / "conf", ignore=shutil.ignore_patterns("local"))
(copy / "conf" / "local").mkdir()
(copy / "src").mkdir()  # Kedro checks src/ exists; the package itself is installed
shutil.copy(project / "pyproject.toml", copy)
COPY
LOG "kedro run --env=paper --pipelines=prepare ($SCREEN)"
(cd "$PROJECT_COPY" && "$KEDRO" run --env=paper --pipelines=prepare --params "$SCREEN") \
    >"$RESULTS/kedro_prepare.log" 2>&1 || { tail -20 "$RESULTS/kedro_prepare.log" >&2; exit 1; }
TRAIN+=",training.max_steps=$STEPS,training.val_every_n_steps=$STEPS"
TRAIN+=",training.checkpoint_every_n_steps=$STEPS,training.log_every_n_steps=$(((STEPS + 4) / 5))"
TRAIN+=",training.progress_bar=false"
# a benchmark, not an experiment: no MLflow run (its import and store would count as training)
TRAIN+=",tracking.enabled=false"
LOG "kedro run --env=paper --pipelines=train_state ($TRAIN)"
TRAIN_START=$SECONDS
(cd "$PROJECT_COPY" && "$KEDRO" run --env=paper --pipelines=train_state --params "$SCREEN,$TRAIN") \
    >"$RESULTS/kedro_train_state.log" 2>&1 || { tail -20 "$RESULTS/kedro_train_state.log" >&2; exit 1; }
TRAIN_S=$((SECONDS - TRAIN_START))

"$PYTHON" benchmarks/gpu_check_summary.py "$RESULTS" --train-steps "$STEPS" --train-wall-s "$TRAIN_S" \
    --total-wall-s $((SECONDS - START))
LOG "done in $((SECONDS - START)) s: $RESULTS/summary.md"
