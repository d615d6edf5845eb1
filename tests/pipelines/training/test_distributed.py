"""Training on several processes: torchrun from the training node, sharded sentences, DDP
against one process with the global batch, resume under DDP, and a failing job's error.

The runs with two processes (CPU, gloo, 127.0.0.1) take about 20-30 s each on 2 cores, mostly
importing Lightning in both ranks: they are marked slow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ptrag_kedro.models import distributed
from ptrag_kedro.models.sentences import samplers_for
from ptrag_kedro.models.training import SentenceStream, fit
from ptrag_kedro.parameters import ParameterError, TrainingParameters
from ptrag_kedro.pipelines.training import nodes
from ptrag_kedro.pipelines.training.nodes import sentence_spec
from ptrag_kedro.schema import TRAIN, VAL
from tests.conftest import PROJECT_ROOT, TINY_BACKBONE, TINY_VARIANTS, tiny_training, train_tiny
from tests.pipelines.training.ddp_batch_recorder import RECORD_FILE, fingerprint

PER_RANK_BATCH = 4
RANKS = 2
#: DDP against one process: the same sentences, weights and Adam; only the order of float
#: reductions differs (the gradient all-reduce, OMP threads). Measured: 1.4e-5 at most after 4
#: steps at lr 1e-3; a flipped update sign (near-zero gradients) would show as 2e-3.
DDP_ATOL = 1e-4


def _samplers(inputs: dict, variant: str = "state", **training) -> dict:
    from ptrag_kedro.parameters import VariantParameters

    spec = sentence_spec(
        tiny_training(**training),
        VariantParameters(**TINY_VARIANTS[variant]),
        inputs["retrieval_candidates"],
    )
    return samplers_for(
        (TRAIN, VAL),
        spec,
        inputs["screen"],
        inputs["split_manifest"],
        inputs["perturbation_embeddings"],
        inputs["retrieval_candidates"],
        inputs["perturbation_responses"],
    )


def _stream_batches(sampler, seed: int, shard: tuple[int, int], batch_size: int, n: int):
    stream = iter(SentenceStream(sampler, batch_size, seed, shard=shard))
    return [next(stream) for _ in range(n)]


# ---------------------------------------------------------------------------- fast: no torchrun


def test_each_rank_streams_its_share_of_the_global_batch(prepared_inputs) -> None:
    """Ranks of a 2-process run draw different sentences, together those of one process
    drawing the global batch (per rank x 2) at every step."""
    sampler = _samplers(prepared_inputs)[TRAIN]
    whole = _stream_batches(sampler, 0, (0, 1), PER_RANK_BATCH * RANKS, 3)
    shares = [_stream_batches(sampler, 0, (rank, RANKS), PER_RANK_BATCH, 3) for rank in (0, 1)]
    for step, batch in enumerate(whole):
        first, second = shares[0][step], shares[1][step]
        assert fingerprint(first) != fingerprint(second)
        for name, tensor in batch.items():
            assert torch.equal(torch.cat([first[name], second[name]]), tensor), name


def test_each_rank_seeds_its_own_dropout_and_gates() -> None:
    """Per-step torch seeds: (seed, step) for one process, exactly as before; (seed, step,
    rank) with several, so ranks draw different dropout masks and PT-RAG gates."""
    from types import SimpleNamespace

    from ptrag_kedro.models import ModelConfig, PerturbationModel
    from ptrag_kedro.models.training import TrainingPlan

    plan = TrainingPlan(
        PerturbationModel(ModelConfig(n_genes=6, embedding_dim=4, hidden_dim=8, n_heads=2)),
        learning_rate=0.01,
        seed=3,
    )
    draws = {}
    for rank, world_size in ((0, 1), (0, 2), (1, 2)):
        plan._trainer = SimpleNamespace(global_step=5, global_rank=rank, world_size=world_size)
        plan.on_train_batch_start(None, 0)
        draws[rank, world_size] = torch.rand(4)
    torch.manual_seed(int(np.random.SeedSequence([3, 5]).generate_state(1)[0]))
    assert torch.equal(draws[0, 1], torch.rand(4))
    assert not torch.equal(draws[0, 2], draws[1, 2])


def test_devices_nodes_and_strategy_are_checked() -> None:
    assert not TrainingParameters(accelerator="cpu").launches_processes()  # the default path
    assert TrainingParameters(accelerator="cpu").processes_per_node() == 1
    assert TrainingParameters(devices="2").processes_per_node() == 2
    assert TrainingParameters(devices=2, strategy="ddp").launches_processes()
    assert TrainingParameters(num_nodes=2).launches_processes()
    with pytest.raises(ParameterError, match="training.strategy 'ddp_spawn' cannot train on 2"):
        TrainingParameters(devices=2, strategy="ddp_spawn")
    with pytest.raises(ParameterError, match="training.strategy 'fsdp' cannot train"):
        TrainingParameters(num_nodes=3, strategy="fsdp")
    with pytest.raises(ParameterError, match="training.devices must be a positive integer"):
        TrainingParameters(devices=0)
    with pytest.raises(ParameterError, match="training.num_nodes must be a positive integer"):
        TrainingParameters(num_nodes=0)
    TrainingParameters(devices=1, strategy="ddp_spawn")  # one process: any strategy, as before


def test_fit_never_launches_processes_itself(prepared_inputs, tmp_path: Path) -> None:
    """Outside torchrun, several devices are refused: Lightning's own launcher would re-run the
    whole command line (``kedro run``) in every rank."""
    from ptrag_kedro.models import ModelConfig, PerturbationModel

    samplers = _samplers(prepared_inputs)
    model = PerturbationModel(
        ModelConfig(
            n_genes=prepared_inputs["screen"].n_vars,
            embedding_dim=prepared_inputs["perturbation_embeddings"].shape[1],
        )
    )
    with pytest.raises(RuntimeError, match="runs under torchrun"):
        fit(model, samplers[TRAIN], samplers[VAL], tiny_training(devices=2), 0, tmp_path)


def test_one_device_trains_in_the_nodes_process(
    prepared_inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default path is unchanged: ``fit`` here, no job folder, no torchrun."""

    def refuse(*args, **kwargs):
        raise AssertionError("one device must not launch torchrun")

    monkeypatch.setattr(nodes, "fit_on_processes", refuse)
    record, _, _ = train_tiny(prepared_inputs, tmp_path, "state", max_steps=1)
    assert record.steps == {"0": 1}
    assert not distributed.job_folder(tmp_path / "seed_0").exists()


def _job(prepared_inputs, tmp_path: Path, variant: str = "ptrag"):
    from ptrag_kedro.models import ModelConfig, PerturbationModel

    samplers = _samplers(prepared_inputs, variant)
    config = ModelConfig(
        n_genes=prepared_inputs["screen"].n_vars,
        embedding_dim=prepared_inputs["perturbation_embeddings"].shape[1],
        **{**TINY_BACKBONE, **TINY_VARIANTS[variant]["model"]},
    )
    training = tiny_training(max_steps=2)
    torch.manual_seed(0)
    model = PerturbationModel(config)
    job = distributed.TrainingJob.of(
        model, samplers[TRAIN], samplers[VAL], training, 0, tmp_path / "job_run"
    )
    job_dir = distributed.job_folder(tmp_path / "job_run")
    distributed.write_job(job_dir, job)
    return job, job_dir, model, samplers, training, config


@pytest.mark.parametrize("variant", ["ptrag", "response_rag"])
def test_a_job_round_trips_through_the_entry_point(
    prepared_inputs, tmp_path: Path, variant: str
) -> None:
    """The entry point without torchrun (one rank): the job folder, data-only files, carries
    exactly what in-process ``fit`` takes, and the result what it returns (PT-RAG: sampled
    gates, kept fractions; response retrieval: the response bank)."""
    job, job_dir, model, samplers, training, config = _job(prepared_inputs, tmp_path, variant)
    assert sorted(path.suffix for path in job_dir.iterdir()) == sorted(
        [".json", ".pt", ".h5ad", ".parquet", ".parquet", ".parquet"]
    )
    # the samplers each rank rebuilds from the files are the node's
    _, train_again, val_again = distributed.read_job(job_dir, run_id=job.run_id)
    for ours, theirs in ((samplers[TRAIN], train_again), (samplers[VAL], val_again)):
        rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
        first, second = ours.random_batch(4, rng_a), theirs.random_batch(4, rng_b)
        for name, tensor in first.items():
            assert torch.equal(second[name], tensor), name
    distributed.main([str(job_dir), "--run-id", job.run_id])
    through_job = distributed.read_result(job_dir, config)
    here = fit(model, samplers[TRAIN], samplers[VAL], training, 0, tmp_path / "here")
    assert not (job_dir / distributed.JOB_FILE).exists()  # read back, then removed
    assert not list(job_dir.glob("*.parquet")) and not (job_dir / distributed.WEIGHTS_FILE).exists()
    pd.testing.assert_frame_equal(through_job.history, here.history)
    assert (through_job.steps, through_job.selected_step) == (here.steps, here.selected_step)
    for name, tensor in here.model.state_dict().items():
        assert torch.equal(through_job.model.state_dict()[name], tensor), name


def test_a_joining_node_refuses_another_runs_job_and_code(prepared_inputs, tmp_path: Path) -> None:
    """A job of another run, one left from before this node's start, one of the old pickle
    format, and weights that carry code are refused with one line; no code runs."""
    job, job_dir, *_ = _job(prepared_inputs, tmp_path, "state")
    with pytest.raises(distributed.DistributedTrainingError, match="a job of another run"):
        distributed.read_job(job_dir, run_id="someone-else")
    with pytest.raises(distributed.DistributedTrainingError, match="before this node started"):
        distributed.read_job(job_dir, not_before=job.created + 60)
    distributed.read_job(job_dir, not_before=job.created - 60)  # this run's: accepted

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"weight": Payload()}, job_dir / distributed.WEIGHTS_FILE)  # a forged file
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        distributed.read_job(job_dir, run_id=job.run_id)
    assert not (tmp_path / "pwned").exists()
    (job_dir / distributed.JOB_FILE).write_text('{"format": 1}')
    with pytest.raises(distributed.DistributedTrainingError, match="another format"):
        distributed.read_job(job_dir)
    distributed.write_job(job_dir, job)  # a new job clears the old one's files
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(SystemExit, match="usage"):
        distributed.main([str(job_dir), "--run-idd", "x"])


def test_a_failing_launch_is_one_line_naming_the_job_folder(tmp_path: Path) -> None:
    crash = "import sys; print('loading job'); print('ValueError: rank 1 broke'); sys.exit(3)"
    with pytest.raises(distributed.DistributedTrainingError) as failure:
        distributed.run_torchrun([sys.executable, "-c", crash], tmp_path)
    message = str(failure.value)
    assert "\n" not in message
    assert "torchrun exit 3" in message and str(tmp_path) in message
    assert "loading job | ValueError: rank 1 broke" in message  # the output's last lines
    assert "ValueError: rank 1 broke" in (tmp_path / distributed.LOG_FILE).read_text()
    # a rank's recorded error is the cause named, rather than the output
    (tmp_path / "error_rank1.txt").write_text("rank 1: KeyError: 'x'\n")
    with pytest.raises(distributed.DistributedTrainingError, match=r"3\): rank 1: KeyError"):
        distributed.run_torchrun([sys.executable, "-c", crash], tmp_path)
    with pytest.raises(distributed.DistributedTrainingError, match="wrote no result"):
        distributed.read_result(tmp_path, None)


def test_the_other_nodes_command(tmp_path: Path) -> None:
    command = distributed.torchrun_command(tmp_path, 4, 2, "node0:29400", node_rank=1, run_id="abc")
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc_per_node=4", "--node_rank=1"} <= set(command)
    assert {"--rdzv_backend=c10d", "--rdzv_endpoint=node0:29400"} <= set(command)
    assert command[-5:] == [
        "-m",
        "ptrag_kedro.models.distributed",
        str(tmp_path.resolve()),
        "--run-id",
        "abc",
    ]


# ---------------------------------------------------------------------------- slow: torchrun


def _recorded(job_dir: Path, rank: int) -> list[str]:
    """The fingerprints of the batches a rank trained on (Lightning fetches one more)."""
    return (job_dir / RECORD_FILE.format(rank=rank)).read_text().split()[:4]


@pytest.fixture(scope="module")
def ddp_run(prepared_inputs, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """STATE (no dropout: a deterministic forward) trained by the node on 2 CPU processes, 4
    steps of 4 sentences per rank; each rank records a fingerprint of every batch it draws."""
    checkpoints = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(PROJECT_ROOT)  # torchrun runs `-m tests.pipelines...` from here
        patch.setattr(distributed, "ENTRY_MODULE", "tests.pipelines.training.ddp_batch_recorder")
        record, history, _ = train_tiny(
            prepared_inputs, checkpoints, "state", devices=RANKS, strategy="ddp"
        )
    return {"record": record, "history": history, "checkpoints": checkpoints}


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_global_batch(
    prepared_inputs, ddp_run: dict, tmp_path: Path
) -> None:
    """(a) the ranks drew different sentences, each its share of the global batch; (b) the
    weights and losses equal one process trained on the global batch (8 sentences)."""
    job_dir = distributed.job_folder(ddp_run["checkpoints"] / "seed_0")
    sampler = _samplers(prepared_inputs)[TRAIN]
    for rank in range(RANKS):
        expected = _stream_batches(sampler, 0, (rank, RANKS), PER_RANK_BATCH, 4)
        assert _recorded(job_dir, rank) == [fingerprint(batch) for batch in expected], rank
    assert not set(_recorded(job_dir, 0)) & set(_recorded(job_dir, 1))
    assert not (job_dir / distributed.JOB_FILE).exists()
    one, one_history, _ = train_tiny(
        prepared_inputs, tmp_path, "state", batch_size=PER_RANK_BATCH * RANKS
    )
    ddp = ddp_run["record"]
    assert ddp.steps == one.steps == {"0": 4}
    assert ddp.selected_steps == one.selected_steps
    pd.testing.assert_frame_equal(ddp_run["history"], one_history, rtol=1e-5)
    differences = [
        (ddp.state_dicts["0"][name] - tensor).abs().max().item()
        for name, tensor in one.state_dicts["0"].items()
    ]
    assert max(differences) < DDP_ATOL, max(differences)


@pytest.mark.slow
def test_a_ddp_run_resumes_where_it_stopped(prepared_inputs, ddp_run: dict, tmp_path: Path):
    """2 ranks x 2 steps, then resumed to 4 (every rank from last.ckpt's step): the losses and
    weights of the uninterrupted 2 x 4-step run."""
    train_tiny(prepared_inputs, tmp_path, "state", devices=RANKS, max_steps=2)
    assert torch.load(tmp_path / "seed_0" / "last.ckpt", weights_only=True)["global_step"] == 2
    resumed, history, _ = train_tiny(
        prepared_inputs, tmp_path, "state", devices=RANKS, max_steps=4, resume=True
    )
    straight = ddp_run["record"]
    assert resumed.steps == straight.steps == {"0": 4}
    assert resumed.selected_steps == straight.selected_steps
    pd.testing.assert_frame_equal(history, ddp_run["history"], rtol=1e-6, atol=1e-7)
    for name, tensor in straight.state_dicts["0"].items():
        torch.testing.assert_close(resumed.state_dicts["0"][name], tensor, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_a_failing_rank_fails_the_node_with_one_line(prepared_inputs, tmp_path: Path) -> None:
    """Every rank refuses a stale checkpoint: the node raises one line with the cause and the
    job folder, and leaves no result."""
    train_tiny(prepared_inputs, tmp_path, "state", max_steps=2)
    with pytest.raises(distributed.DistributedTrainingError) as failure:
        train_tiny(prepared_inputs, tmp_path, "vanilla_rag", devices=RANKS, resume=True)
    message = str(failure.value)
    job_dir = distributed.job_folder(tmp_path / "seed_0")
    assert "\n" not in message and str(job_dir) in message
    assert "StaleArtefactError" in message and "model_config differ" in message
    assert not (job_dir / distributed.RESULT_FILE).exists()
    assert any(path.name.startswith("error_rank") for path in job_dir.iterdir())


@pytest.mark.slow
def test_two_nodes_train_as_two_processes_of_one(
    prepared_inputs,
    ddp_run: dict,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two "nodes" of one process each on this machine (c10d rendezvous on 127.0.0.1): the
    node runs node rank 0 and logs the other node's command; started here, that command joins,
    and the result is the one-node 2-process run's."""
    import logging
    import shlex
    import subprocess

    # torchrun sets 1 OMP thread per process only with several per node; the same threads as
    # the one-node run make the same float reductions
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    endpoint = f"127.0.0.1:{distributed.free_port()}"
    job_dir = distributed.job_folder(tmp_path / "seed_0")
    other_node = distributed.torchrun_command(job_dir, 1, 2, endpoint, node_rank=1)
    with (
        subprocess.Popen(
            other_node, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        ) as joined,
        caplog.at_level(logging.INFO, logger=distributed.__name__),
    ):
        record, history, _ = train_tiny(
            prepared_inputs,
            tmp_path,
            "state",
            devices=1,
            num_nodes=2,
            rendezvous_endpoint=endpoint,
        )
    assert joined.returncode == 0
    assert shlex.join(other_node) + " --run-id " in caplog.text  # the same job, named
    pd.testing.assert_frame_equal(history, ddp_run["history"], rtol=1e-6, atol=1e-7)
    for name, tensor in ddp_run["record"].state_dicts["0"].items():
        torch.testing.assert_close(record.state_dicts["0"][name], tensor, rtol=1e-6, atol=1e-7)


def test_a_job_of_a_backed_screen_names_its_file(prepared_inputs, tmp_path: Path) -> None:
    """A screen read from its h5ad (as the catalog loads it) is not copied into the job: the
    job names the file, and the ranks' samplers read it."""
    import anndata as ad

    from ptrag_kedro.models import ModelConfig, PerturbationModel

    path = tmp_path / "screen.h5ad"
    prepared_inputs["screen"].write_h5ad(path)
    inputs = {**prepared_inputs, "screen": ad.read_h5ad(path, backed="r")}
    samplers = _samplers(inputs)
    config = ModelConfig(
        n_genes=inputs["screen"].n_vars,
        embedding_dim=inputs["perturbation_embeddings"].shape[1],
        **TINY_BACKBONE,
    )
    job = distributed.TrainingJob.of(
        PerturbationModel(config), samplers[TRAIN], samplers[VAL], tiny_training(), 0, tmp_path
    )
    job_dir = distributed.job_folder(tmp_path)
    distributed.write_job(job_dir, job)
    assert not (job_dir / distributed.SCREEN_FILE).exists()
    assert (job_dir / "responses.parquet").exists()
    _, train_again, _ = distributed.read_job(job_dir)
    assert train_again.source.screen.filename == path.resolve()
    first = samplers[TRAIN].random_batch(3, np.random.default_rng(1))
    again = train_again.random_batch(3, np.random.default_rng(1))
    for name, tensor in first.items():
        assert torch.equal(again[name], tensor), name
