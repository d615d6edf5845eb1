"""Training on several processes (GPUs, nodes): a job folder per seed and torchrun's entry point.

With one device, ``kedro run`` trains in its own process (:func:`~ptrag_kedro.models.training.fit`).
With several, :func:`fit_on_processes` writes what ``fit`` needs into a job folder and runs::

    python -m torch.distributed.run --nproc_per_node N ... -m ptrag_kedro.models.distributed JOB

Every rank loads the job and calls the same ``fit``; Lightning detects torchrun's environment,
starts no process of its own and trains with DDP. Rank 0 writes the result (the selected
weights, the loss history, the steps) into the job folder, and the node reads it back: the node
returns what in-process training returns.

Why torchrun and not a spawn strategy: Lightning's ``ddp_spawn`` returns no callback state (our
loss history, the best weights) and pickles the module and data loaders into each child; torchrun
is what several nodes need anyway (``--nnodes``, SLURM), so one node and many share this entry
point. Lightning's default DDP launcher, finally, re-runs the command line (all of ``kedro run``)
in every rank.

The job folder holds data only, never code: ``job.json`` (the parameters, the model's config,
what the samplers are built from, the run's identity), the initial weights as tensors (loaded
with ``weights_only=True``), the embeddings, candidates and responses as parquet, and the
screen's h5ad path (or the screen itself, written there when it was in memory). Every rank
rebuilds the same samplers from them. A job carries a run id and its creation time: the node
passes ``--run-id`` to its own ranks and logs it in the other nodes' command, and a node
started by a scheduler passes ``--not-before <its start, epoch seconds>``; a job of another run,
or one left from before that start (a failed run's), is refused.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import torch
import torch.distributed as dist

from ptrag_kedro.datasets._files import atomic_write_path
from ptrag_kedro.errors import UserError, one_line
from ptrag_kedro.expression_rows import ExpressionRows
from ptrag_kedro.h5ad_writer import write_anndata
from ptrag_kedro.models.config import ModelConfig, SentenceSpec
from ptrag_kedro.models.module import PerturbationModel
from ptrag_kedro.models.sentences import SamplerSource, SentenceSampler
from ptrag_kedro.models.training import FitResult, fit
from ptrag_kedro.parameters import TrainingParameters

logger = logging.getLogger(__name__)

#: What torchrun runs in every rank (tests point it at a module that wraps :func:`main`).
ENTRY_MODULE = "ptrag_kedro.models.distributed"
#: The job's description: written last, so its presence means the job folder is complete.
JOB_FILE = "job.json"
JOB_FORMAT = 2  # 2: data only (json, tensors, parquet, h5ad); 1 was a pickle
WEIGHTS_FILE = "initial_weights.pt"
TABLE_FILE = "{name}.parquet"
SCREEN_FILE = "screen.h5ad"
RESULT_FILE = "result.pt"
LOG_FILE = "torchrun.log"
ERROR_FILE = "error_rank{rank}.txt"
#: torchrun's own default port for a c10d rendezvous
DEFAULT_RENDEZVOUS_PORT = 29400
#: seconds the node waits for rank 0's result to show on a shared filesystem (several nodes)
RESULT_WAIT_S = 60.0
OUTPUT_TAIL_BYTES = 8192


class DistributedTrainingError(UserError, RuntimeError):
    """A torchrun training job failed; the message names its folder and the cause."""


@dataclass
class TrainingJob:
    """Everything a rank needs to call ``fit``: what the node would have passed in-process.

    The samplers travel as what they are built from (``SamplerSource``), never pickled.
    """

    model_config: dict[str, Any]
    initial_weights: dict[str, torch.Tensor]
    train_source: SamplerSource
    val_source: SamplerSource
    training: TrainingParameters
    seed: int
    checkpoint_dir: str
    provenance: dict[str, str]
    run_id: str = ""
    created: float = 0.0

    @classmethod
    def of(
        cls,
        model: PerturbationModel,
        train_sampler: SentenceSampler,
        val_sampler: SentenceSampler,
        training: TrainingParameters,
        seed: int,
        checkpoint_dir: str | Path,
        provenance: dict[str, str] | None = None,
    ) -> TrainingJob:
        """The job of in-process ``fit``'s arguments, with a new run id."""
        for sampler in (train_sampler, val_sampler):
            if sampler.source is None or sampler.source.oracle:
                raise ValueError("a DDP job needs samplers built from the catalog's inputs")
        return cls(
            model_config=model.config.to_dict(),
            initial_weights={name: value.cpu() for name, value in model.state_dict().items()},
            train_source=train_sampler.source,
            val_source=val_sampler.source,
            training=training,
            seed=seed,
            checkpoint_dir=str(Path(checkpoint_dir).resolve()),
            provenance=dict(provenance or {}),
            run_id=uuid.uuid4().hex,
            created=time.time(),
        )


def job_folder(checkpoint_dir: str | Path) -> Path:
    """A seed's job folder: beside its checkpoints (on a shared filesystem for several nodes)."""
    return Path(checkpoint_dir) / "job"


# ------------------------------------------------------------------------------ the node's side


def fit_on_processes(
    model: PerturbationModel,
    train_sampler: SentenceSampler,
    val_sampler: SentenceSampler,
    training: TrainingParameters,
    seed: int,
    checkpoint_dir: str | Path,
    provenance: dict[str, str] | None = None,
) -> FitResult:
    """:func:`fit` with DDP on ``processes_per_node() x num_nodes`` processes, via torchrun.

    ``training.batch_size`` is per process. With ``num_nodes`` > 1 this process's torchrun is
    node rank 0; the command for the other nodes is logged (the job folder must be on a
    filesystem they share).
    """
    job_dir = job_folder(checkpoint_dir)
    job = TrainingJob.of(
        model, train_sampler, val_sampler, training, seed, checkpoint_dir, provenance
    )
    write_job(job_dir, job)
    processes = training.processes_per_node()
    if training.num_nodes > 1:
        endpoint = training.rendezvous_endpoint or f"{socket.getfqdn()}:{DEFAULT_RENDEZVOUS_PORT}"
        others = [
            shlex.join(
                torchrun_command(job_dir, processes, training.num_nodes, endpoint, rank, job.run_id)
            )
            for rank in range(1, training.num_nodes)
        ]
        logger.info(
            "Training seed %d on %d nodes: start on the other nodes (job folder shared):\n%s",
            seed,
            training.num_nodes,
            "\n".join(others),
        )
    else:
        endpoint = f"127.0.0.1:{free_port()}"
    command = torchrun_command(
        job_dir, processes, training.num_nodes, endpoint, node_rank=0, run_id=job.run_id
    )
    logger.info(
        "Training seed %d with DDP, %d process(es) x %d node(s), a global batch of %d: %s",
        seed,
        processes,
        training.num_nodes,
        training.batch_size * processes * training.num_nodes,
        shlex.join(command),
    )
    run_torchrun(command, job_dir)
    return read_result(job_dir, model.config, wait_s=RESULT_WAIT_S if training.num_nodes > 1 else 0)


def write_job(job_dir: Path, job: TrainingJob) -> None:
    """The job folder, in data-only files, after removing an earlier run's; ``job.json`` last
    (atomically), so a folder with it is complete."""
    job_dir.mkdir(parents=True, exist_ok=True)
    _remove_job_files(job_dir, also=[RESULT_FILE, *(p.name for p in job_dir.glob("error_rank*"))])
    with atomic_write_path(job_dir / WEIGHTS_FILE) as tmp_path:
        torch.save(job.initial_weights, tmp_path)  # tensors only
    sources = {"train": job.train_source, "val": job.val_source}
    first = job.train_source
    for name in ("embeddings", "candidates", "responses"):
        table = getattr(first, name)
        if table is not None:
            with atomic_write_path(job_dir / TABLE_FILE.format(name=name)) as tmp_path:
                table.to_parquet(tmp_path)
    screen = first.screen
    if screen.isbacked and screen.filename is not None:
        screen_path = str(Path(screen.filename).resolve())
    else:  # in memory (a test, a notebook): written here, read back by every rank
        with atomic_write_path(job_dir / SCREEN_FILE) as tmp_path:
            write_anndata(tmp_path, screen)
        screen_path = SCREEN_FILE
    description = {
        "format": JOB_FORMAT,
        "run_id": job.run_id,
        "created": job.created,
        "model_config": job.model_config,
        "training": dataclasses.asdict(job.training),
        "seed": job.seed,
        "checkpoint_dir": job.checkpoint_dir,
        "provenance": job.provenance,
        "screen": screen_path,
        "responses": first.responses is not None,
        "samplers": {
            role: {
                "split": source.split,
                "spec": source.spec.to_dict(),
                "control_label": source.control_label,
            }
            for role, source in sources.items()
        },
    }
    with atomic_write_path(job_dir / JOB_FILE) as tmp_path:
        tmp_path.write_text(json.dumps(description, indent=1))


def _remove_job_files(job_dir: Path, also: list[str] = ()) -> None:
    """A job's data files (and ``also``), e.g. once its result is read; the log stays."""
    names = [JOB_FILE, "job.pt", WEIGHTS_FILE, SCREEN_FILE, *also]
    names += [TABLE_FILE.format(name=name) for name in ("embeddings", "candidates", "responses")]
    for name in names:
        (job_dir / name).unlink(missing_ok=True)


def read_job(
    job_dir: Path, run_id: str | None = None, not_before: float | None = None
) -> tuple[TrainingJob, SentenceSampler, SentenceSampler]:
    """The job of ``job_dir`` and the samplers it describes, rebuilt from data-only files.

    Refuses (one line) a job of another run (``run_id``) or one written before ``not_before``
    (epoch seconds: a job left by an earlier, failed run), and a job of another format.
    """
    path = job_dir / JOB_FILE
    if not path.is_file():
        raise DistributedTrainingError(
            f"no training job in {job_dir} ({JOB_FILE}); the training node writes it: start "
            "`kedro run` (node rank 0) before the other nodes' torchrun"
        )
    try:
        description = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DistributedTrainingError(f"{path}: not a training job ({error})") from error
    if not isinstance(description, dict) or description.get("format") != JOB_FORMAT:
        raise DistributedTrainingError(
            f"{path}: a job of another format; rerun the training node to write a new one"
        )
    if run_id is not None and description.get("run_id") != run_id:
        raise DistributedTrainingError(
            f"{path}: a job of another run ({description.get('run_id')}, this node joins "
            f"{run_id}); start this node with the command the training node logs"
        )
    if not_before is not None and float(description.get("created", 0.0)) < not_before:
        raise DistributedTrainingError(
            f"{path}: a job written before this node started (left by an earlier run); wait "
            "for the training node to write this run's job"
        )
    weights = torch.load(job_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    screen_path = Path(description["screen"])
    screen = ad.read_h5ad(
        screen_path if screen_path.is_absolute() else job_dir / screen_path, backed="r"
    )
    tables = {
        name: pd.read_parquet(job_dir / TABLE_FILE.format(name=name))
        for name in ("embeddings", "candidates", "responses")
        if name != "responses" or description["responses"]
    }
    training = TrainingParameters(**description["training"])
    expression = ExpressionRows.of(screen, training.in_memory, random_rows=True)
    sources, samplers = {}, {}
    for role, entry in description["samplers"].items():
        spec = SentenceSpec(**entry["spec"])
        samplers[role] = SentenceSampler(
            screen,
            tables["embeddings"],
            tables["candidates"],
            entry["split"],
            spec,
            entry["control_label"],
            tables.get("responses"),
            expression=expression,
        )
        sources[role] = samplers[role].source
    job = TrainingJob(
        model_config=description["model_config"],
        initial_weights=weights,
        train_source=sources["train"],
        val_source=sources["val"],
        training=training,
        seed=int(description["seed"]),
        checkpoint_dir=description["checkpoint_dir"],
        provenance=description["provenance"],
        run_id=description["run_id"],
        created=float(description["created"]),
    )
    return job, samplers["train"], samplers["val"]


def torchrun_command(
    job_dir: Path,
    processes: int,
    num_nodes: int,
    endpoint: str,
    node_rank: int,
    run_id: str | None = None,
) -> list[str]:
    """The torchrun command line of one node (c10d rendezvous at ``endpoint``); its ranks
    refuse a job of another run than ``run_id``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={num_nodes}",
        f"--nproc_per_node={processes}",
        f"--node_rank={node_rank}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={endpoint}",
        "--max_restarts=0",
        "-m",
        ENTRY_MODULE,
        str(job_dir.resolve()),
        *(["--run-id", run_id] if run_id else []),
    ]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the rendezvous of a one-node run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_torchrun(command: list[str], job_dir: Path) -> None:
    """Run torchrun, its output echoed to stderr and kept in the job folder's log; a failure
    raises one line naming the job folder and the first failing rank's error (or the output's
    last lines)."""
    tail: collections.deque[bytes] = collections.deque()
    kept = 0
    with (
        (job_dir / LOG_FILE).open("wb") as log,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process,
    ):
        while chunk := process.stdout.read1(65536):
            log.write(chunk)
            sys.stderr.write(chunk.decode(errors="replace"))
            tail.append(chunk)
            kept += len(chunk)
            while kept - len(tail[0]) >= OUTPUT_TAIL_BYTES:
                kept -= len(tail.popleft())
    if process.returncode != 0:
        output = b"".join(tail).decode(errors="replace")
        raise DistributedTrainingError(
            f"distributed training failed (torchrun exit {process.returncode}): "
            f"{_failure_cause(job_dir, output)}; job folder {job_dir}, full output in "
            f"{job_dir / LOG_FILE}"
        )


def _failure_cause(job_dir: Path, output: str) -> str:
    """The first rank error recorded (later ones are mostly ranks losing their peers), else
    the output's last lines, on one line."""
    errors = sorted(job_dir.glob(ERROR_FILE.format(rank="*")), key=lambda p: p.stat().st_mtime)
    if errors:
        return one_line(errors[0].read_text())
    lines = [line.strip() for line in output.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(lines[-3:]) or "no output"


def read_result(job_dir: Path, config: ModelConfig, wait_s: float = 0.0) -> FitResult:
    """Rank 0's result as the :class:`FitResult` in-process training returns; the job file is
    removed once it has been read (the log stays)."""
    path = job_dir / RESULT_FILE
    deadline = time.monotonic() + wait_s
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(1.0)  # another node's write may take a moment to show on a shared filesystem
    if not path.is_file():
        raise DistributedTrainingError(
            f"distributed training wrote no result ({path}); job folder {job_dir}, output in "
            f"{job_dir / LOG_FILE}"
        )
    stored = torch.load(path, map_location="cpu", weights_only=True)
    model = PerturbationModel(config)
    model.load_state_dict(stored["state_dict"])
    history = pd.DataFrame(stored["history"]).astype(stored["history_dtypes"])
    _remove_job_files(job_dir)
    return FitResult(
        model.eval(),
        history,
        int(stored["steps"]),
        int(stored["selected_step"]),
        stored["selected_val_energy"],
    )


# ------------------------------------------------------------------------------ the ranks' side


def write_result(job_dir: Path, result: FitResult) -> None:
    """Rank 0's result, atomically: loadable with ``weights_only=True``."""
    history = result.history
    payload = {
        "state_dict": {name: value.cpu() for name, value in result.model.state_dict().items()},
        "history": {column: history[column].tolist() for column in history.columns},
        "history_dtypes": {column: str(dtype) for column, dtype in history.dtypes.items()},
        "steps": result.steps,
        "selected_step": result.selected_step,
        "selected_val_energy": result.selected_val_energy,
    }
    with atomic_write_path(job_dir / RESULT_FILE) as tmp_path:
        torch.save(payload, tmp_path)


def rank_training(training: TrainingParameters) -> TrainingParameters:
    """The job's parameters in this rank: devices and nodes as torchrun started them."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    strategy = "ddp" if training.strategy == "auto" and world > 1 else training.strategy
    return dataclasses.replace(
        training, devices=local, num_nodes=max(1, world // local), strategy=strategy
    )


def run_job(job_dir: Path, run_id: str | None = None, not_before: float | None = None) -> None:
    """This rank's share of the job: ``fit``, then rank 0 writes the result."""
    job, train_sampler, val_sampler = read_job(job_dir, run_id, not_before)
    model = PerturbationModel(ModelConfig(**job.model_config))
    model.load_state_dict(job.initial_weights)
    result = fit(
        model,
        train_sampler,
        val_sampler,
        rank_training(job.training),
        job.seed,
        job.checkpoint_dir,
        job.provenance,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        write_result(job_dir, result)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no node's torchrun returns before rank 0 has written the result
        dist.destroy_process_group()


def _arguments(args: list[str]) -> tuple[Path, str | None, float | None]:
    usage = (
        "usage: torchrun [options] -m ptrag_kedro.models.distributed JOB_DIR "
        "[--run-id ID] [--not-before EPOCH_SECONDS]"
    )
    if not args or args[0].startswith("-"):
        raise SystemExit(usage)
    options = dict(zip(args[1::2], args[2::2], strict=False))
    if len(args) % 2 == 0 or set(options) - {"--run-id", "--not-before"}:
        raise SystemExit(usage)
    not_before = options.get("--not-before")
    return Path(args[0]), options.get("--run-id"), None if not_before is None else float(not_before)


def main(argv: list[str] | None = None) -> None:
    """``python -m ptrag_kedro.models.distributed JOB_DIR [--run-id ID] [--not-before T]``, in
    every rank under torchrun."""
    job_dir, run_id, not_before = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        run_job(job_dir, run_id, not_before)
    except Exception as error:
        # For the node's one-line error; the traceback still goes to the output.
        rank = os.environ.get("RANK", "0")
        message = one_line(f"rank {rank}: {type(error).__name__}: {error}")
        if job_dir.is_dir():
            (job_dir / ERROR_FILE.format(rank=rank)).write_text(message + "\n")
        raise


if __name__ == "__main__":
    main()
