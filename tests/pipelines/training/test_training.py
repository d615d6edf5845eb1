"""Training: one node for every variant, selection on val, resume, stale inputs, variant specs."""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ptrag_kedro.datasets import TorchModelDataset
from ptrag_kedro.models import ModelConfig, PerturbationModel
from ptrag_kedro.models.record import ModelRecord
from ptrag_kedro.models.sentences import SentenceSpec
from ptrag_kedro.parameters import ParameterError, TrainingParameters, VariantParameters
from ptrag_kedro.pipelines.training import create_pipeline
from ptrag_kedro.pipelines.training.nodes import train_model
from ptrag_kedro.provenance import StaleArtefactError
from tests.conftest import TINY_VARIANTS, train_tiny


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_train_model_record_history_and_plot(prepared_inputs, tmp_path: Path, variant) -> None:
    record, history, figure = train_tiny(prepared_inputs, tmp_path / "checkpoints", variant)
    retrieval = TINY_VARIANTS[variant]["model"]["retrieval"]
    assert record.steps == {"0": 4} and record.config.retrieval == retrieval
    assert record.genes == list(prepared_inputs["screen"].var_names)
    assert list(history.loc[history["split"] == "train", "step"]) == [1, 2, 3, 4]
    assert list(history.loc[history["split"] == "val", "step"]) == [2, 4]
    gated = retrieval in ("ptrag", "response")
    assert ("kept_fraction" in history) == gated  # a block's extra metrics, logged by name
    if gated:
        assert history["kept_fraction"].between(0, 1).all()
    assert ("sparsity" in history) == (retrieval == "ptrag")  # the gate penalty
    # the plot: the train and val energy of the one seed, as in the history
    (axis,) = figure.axes
    assert axis.get_title() == f"Loss ({retrieval})"
    assert [line.get_label() for line in axis.lines] == [
        "train energy (seed 0)",
        "val energy (seed 0)",
    ]
    for line, split in zip(axis.lines, ("train", "val"), strict=True):
        rows = history[history["split"] == split]
        np.testing.assert_allclose(line.get_xdata(), rows["step"])
        np.testing.assert_allclose(line.get_ydata(), rows["energy"])
    assert history["energy"].notna().all() and (history["energy"] != 0).any()
    # The record saves and loads with weights_only=True and rebuilds the same module.
    dataset = TorchModelDataset(filepath=str(tmp_path / "model.pt"))
    dataset.save(record)
    loaded = dataset.load()
    assert loaded.config == record.config and loaded.sentences == record.sentences
    module = PerturbationModel(loaded.config)
    module.load_state_dict(loaded.state_dicts["0"])
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, record.state_dicts["0"][name])
    with pytest.raises(StaleArtefactError, match="another version"):
        ModelRecord.from_dict({**loaded.to_dict(), "record_format": 1})


def test_the_weights_of_the_best_val_check_are_kept(prepared_inputs, tmp_path: Path) -> None:
    """The selected weights equal the checkpoint written at the step of the lowest val energy."""
    checkpoints = tmp_path / "checkpoints"
    record, history, _ = train_tiny(
        prepared_inputs,
        checkpoints,
        "state",
        max_steps=8,
        learning_rate=0.05,
        keep_all_checkpoints=True,
    )
    val = history[history["split"] == "val"].set_index("step")["energy"]
    best = int(val.idxmin())
    assert record.selected_steps == {"0": best}
    assert record.selected_val_energy["0"] == pytest.approx(val.min())
    (saved,) = (checkpoints / "seed_0").glob(f"*step={best}.ckpt")
    weights = torch.load(saved, weights_only=True)["state_dict"]
    for name, tensor in record.state_dicts["0"].items():
        assert torch.equal(tensor, weights[f"model.{name}"]), name
    last, _, _ = train_tiny(
        prepared_inputs,
        tmp_path / "last",
        "state",
        max_steps=8,
        learning_rate=0.05,
        select_on_val=False,
    )
    assert last.selected_steps == {"0": 8}
    if best != 8:
        first = next(iter(record.state_dicts["0"]))
        assert not torch.equal(last.state_dicts["0"][first], record.state_dicts["0"][first])


def test_resume_continues_the_step_count(prepared_inputs, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    train_tiny(prepared_inputs, checkpoints, max_steps=4)
    assert (checkpoints / "seed_0" / "last.ckpt").is_file()
    record, history, _ = train_tiny(prepared_inputs, checkpoints, max_steps=6, resume=True)
    assert record.steps == {"0": 6}
    # Steps 1-4 come back from the checkpoint's history; only 5-6 were trained now.
    assert list(history.loc[history["split"] == "train", "step"]) == [1, 2, 3, 4, 5, 6]
    fresh, _, _ = train_tiny(prepared_inputs, tmp_path / "other", max_steps=6, resume=True)
    assert fresh.steps == {"0": 6}  # nothing to resume there: logged, trained from step 0
    with pytest.raises(StaleArtefactError, match="training.resume is must, but .* does not exist"):
        train_tiny(prepared_inputs, tmp_path / "none", max_steps=2, resume="must")
    # a corrupt checkpoint is one line, never an UnpicklingError
    broken = tmp_path / "broken"
    (broken / "seed_0").mkdir(parents=True)
    (broken / "seed_0" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(StaleArtefactError, match="not a readable checkpoint"):
        train_tiny(prepared_inputs, broken, max_steps=2, resume=True)
    # A checkpoint of another model (or other data) is never continued.
    with pytest.raises(StaleArtefactError, match="model_config differ"):
        train_tiny(prepared_inputs, checkpoints, "vanilla_rag", max_steps=8, resume=True)


def test_a_resume_from_a_validation_step_keeps_that_check(prepared_inputs, tmp_path: Path) -> None:
    """A checkpoint at a step that also validates (every 2: both) is written after that check:
    resumed from it, the history, the selected check and the weights are the uninterrupted
    run's (Lightning would otherwise write it before the check and skip the check on resume)."""
    checkpoints = tmp_path / "checkpoints"
    train_tiny(prepared_inputs, checkpoints, "state", max_steps=2)
    resumed, resumed_history, _ = train_tiny(
        prepared_inputs, checkpoints, "state", max_steps=4, resume=True
    )
    straight, straight_history, _ = train_tiny(prepared_inputs, tmp_path / "straight", "state")
    assert list(resumed_history.loc[resumed_history["split"] == "val", "step"]) == [2, 4]
    pd.testing.assert_frame_equal(resumed_history, straight_history, rtol=1e-6, atol=1e-7)
    assert resumed.selected_steps == straight.selected_steps
    for name, tensor in straight.state_dicts["0"].items():
        torch.testing.assert_close(resumed.state_dicts["0"][name], tensor, rtol=1e-6, atol=1e-7)


def test_one_model_per_seed(prepared_inputs, tmp_path: Path) -> None:
    record, history, _ = train_tiny(prepared_inputs, tmp_path, "ptrag", seeds=[0, 1], max_steps=2)
    assert set(record.state_dicts) == {"0", "1"}
    first, second = (record.state_dicts[seed]["decoder.0.weight"] for seed in ("0", "1"))
    assert not torch.equal(first, second)
    assert sorted(history["seed"].unique()) == [0, 1]


def test_stale_inputs_are_refused(prepared_inputs, tmp_path: Path) -> None:
    candidates = prepared_inputs["retrieval_candidates"].copy()
    candidates.attrs = {**candidates.attrs, "embeddings_fingerprint": "old"}
    stale = {**prepared_inputs, "retrieval_candidates": candidates}
    with pytest.raises(StaleArtefactError, match="kedro run --pipelines=retrieval_index"):
        train_tiny(stale, tmp_path)
    train_tiny(stale, tmp_path / "state", "state", max_steps=1)  # STATE does not read them
    # candidates of another split of the same genes (same vectors, so the same embeddings
    # fingerprint): they would list genes that are val/test now
    resplit = prepared_inputs["retrieval_candidates"].copy()
    resplit.attrs = {**resplit.attrs, "screen_fingerprint": "another split"}
    with pytest.raises(
        StaleArtefactError, match="retrieval_candidates was built from another screen"
    ):
        train_tiny({**prepared_inputs, "retrieval_candidates": resplit}, tmp_path, "vanilla_rag")
    responses = prepared_inputs["perturbation_responses"].copy()
    responses.attrs = {"screen_fingerprint": "other"}
    with pytest.raises(StaleArtefactError, match="perturbation_responses was built"):
        train_tiny(
            {**prepared_inputs, "perturbation_responses": responses}, tmp_path, "response_rag"
        )


def test_variants_share_one_pipeline_and_differ_by_parameters() -> None:
    names = ["state", "my_variant", "another"]
    nodes = {node.name: node for node in create_pipeline(names).nodes}
    assert set(nodes) == {f"{name}.train_model" for name in names}
    for name in names:
        node = nodes[f"{name}.train_model"]
        assert node.func is train_model
        assert node.inputs == [
            "screen",
            "perturbation_embeddings",
            "retrieval_candidates",
            "perturbation_responses",
            "split_manifest",
            "params:training",
            "params:model",
            f"params:variants.{name}",
            f"{name}.checkpoints",
        ]
        assert node.outputs == [f"{name}.model", f"{name}_loss_history", f"{name}.loss_plot"]


def test_candidates_k_auto_takes_every_listed_candidate(prepared_inputs, tmp_path: Path) -> None:
    """`auto` resolves to the candidates table's depth; an explicit k above it names both
    parameters before any training."""
    listed = int(prepared_inputs["retrieval_candidates"]["rank"].max()) + 1
    auto = VariantParameters(model={"retrieval": "ptrag"}, candidates_k="auto")
    assert auto.resolved_candidates_k(listed) == listed
    assert VariantParameters(model={"retrieval": "none"}).resolved_candidates_k(listed) == 0
    too_many = VariantParameters(model={"retrieval": "vanilla"}, candidates_k=listed + 1)
    with pytest.raises(ParameterError, match=r"candidates_k = 6, .* retrieval_index\.k"):
        too_many.resolved_candidates_k(listed)
    with pytest.raises(ParameterError, match="candidates_k >= 1 or auto"):
        VariantParameters(model={"retrieval": "ptrag"}, candidates_k="all")
    record, _, _ = train_tiny(
        prepared_inputs, tmp_path, {**TINY_VARIANTS["ptrag"], "candidates_k": "auto"}
    )
    assert record.sentences.candidates_k == listed == 5


def test_variant_parameters_name_what_is_wrong() -> None:
    with pytest.raises(ParameterError, match="unknown model option"):
        VariantParameters(model={"retrieval": "ptrag", "tua": 0.5}, candidates_k=3)
    with pytest.raises(ParameterError, match="needs candidates_k"):
        VariantParameters(model={"retrieval": "ptrag"})
    with pytest.raises(ParameterError, match="needs response_neighbours"):
        VariantParameters(model={"retrieval": "response"})
    config = VariantParameters(
        model={"retrieval": "ptrag", "tau": 1.0}, candidates_k=3
    ).model_config(
        {"hidden_dim": 8, "n_heads": 2, "tau": 0.5}, n_genes=5, embedding_dim=4, n_batches=0
    )
    assert isinstance(config, ModelConfig) and config.tau == 1.0 and config.hidden_dim == 8
    with pytest.raises(ParameterError, match="training.seeds"):
        TrainingParameters(seeds=[1, 1])
    assert TrainingParameters(seeds=3).seeds == (3,)
    assert np.isclose(TrainingParameters().learning_rate, 1e-3)


_KILLED_RUN = """
import os, signal, sys
import contextlib
import copy
from pathlib import Path
from ptrag_kedro.datasets import AnnDataDataset, JSONDataset, ParquetDataset
from ptrag_kedro.models import training
from tests.conftest import train_tiny

folder, kill_at = Path(sys.argv[1]), int(sys.argv[2])
inputs = {
    "screen": AnnDataDataset(filepath=str(folder / "screen.h5ad")).load(),
    "split_manifest": JSONDataset(filepath=str(folder / "manifest.json")).load(),
    **{
        name: ParquetDataset(filepath=str(folder / f"{name}.parquet")).load()
        for name in ("perturbation_embeddings", "retrieval_candidates", "perturbation_responses")
    },
}
record = training.LossHistory.on_train_batch_end

def record_then_die(self, trainer, *args):
    record(self, trainer, *args)
    if trainer.global_step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint

training.LossHistory.on_train_batch_end = record_then_die
train_tiny(inputs, folder / "checkpoints", "ptrag", max_steps=8, checkpoint_every_n_steps=3)
"""


@pytest.mark.slow
def test_a_killed_run_resumes_exactly(prepared_inputs, tmp_path: Path) -> None:
    """SIGKILL after the step-3 checkpoint, resume: the same steps, losses and weights as a run
    that was never interrupted (PT-RAG, so torch's random state matters too)."""
    import os
    import signal
    import subprocess
    import sys

    from ptrag_kedro.datasets import AnnDataDataset, JSONDataset, ParquetDataset
    from tests.conftest import PROJECT_ROOT

    AnnDataDataset(filepath=str(tmp_path / "screen.h5ad")).save(prepared_inputs["screen"])
    JSONDataset(filepath=str(tmp_path / "manifest.json")).save(prepared_inputs["split_manifest"])
    for name in ("perturbation_embeddings", "retrieval_candidates", "perturbation_responses"):
        ParquetDataset(filepath=str(tmp_path / f"{name}.parquet")).save(prepared_inputs[name])
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(tmp_path), "5"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "checkpoints" / "seed_0" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    resumed, resumed_history, _ = train_tiny(
        prepared_inputs,
        tmp_path / "checkpoints",
        "ptrag",
        max_steps=8,
        checkpoint_every_n_steps=3,
        resume=True,
    )
    straight, straight_history, _ = train_tiny(
        prepared_inputs, tmp_path / "straight", "ptrag", max_steps=8, checkpoint_every_n_steps=3
    )
    assert resumed.steps == straight.steps == {"0": 8}
    assert resumed.selected_steps == straight.selected_steps
    pd.testing.assert_frame_equal(resumed_history, straight_history, rtol=1e-6, atol=1e-7)
    for name, tensor in straight.state_dicts["0"].items():
        torch.testing.assert_close(resumed.state_dicts["0"][name], tensor, rtol=1e-6, atol=1e-7)


def test_denormals_are_flushed_only_while_training() -> None:
    from ptrag_kedro.models.training import denormals_flushed

    tiny = torch.tensor([1e-39])  # below float32's smallest normal, 1.18e-38
    with denormals_flushed():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() == pytest.approx(1e-39, rel=1e-3)


def test_flushing_denormals_changes_no_trained_weight(
    prepared_inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The speed-up against the direct computation: PT-RAG trained with denormals flushed (the
    node) equals PT-RAG trained with them kept, to float32 rounding."""
    from ptrag_kedro.models import training

    flushed, _, _ = train_tiny(prepared_inputs, tmp_path / "flushed", "ptrag", max_steps=6)
    monkeypatch.setattr(training, "denormals_flushed", contextlib.nullcontext)
    kept, _, _ = train_tiny(prepared_inputs, tmp_path / "kept", "ptrag", max_steps=6)
    for name, tensor in kept.state_dicts["0"].items():
        torch.testing.assert_close(flushed.state_dicts["0"][name], tensor, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_training_computes_what_eager_training_does(
    prepared_inputs, tmp_path: Path
) -> None:
    """`training.compile` (for GPUs) changes how the forward runs, not what it computes: the
    first step's loss (same initial weights, same batch) agrees to float rounding, and the
    record's parameter names are the eager model's. Later steps are not compared: Adam turns
    rounding-level gradient differences into lr-sized updates."""
    eager, eager_history, _ = train_tiny(prepared_inputs, tmp_path / "eager", "state", max_steps=2)
    compiled, compiled_history, _ = train_tiny(
        prepared_inputs, tmp_path / "compiled", "state", max_steps=2, compile=True
    )
    assert list(compiled.state_dicts["0"]) == list(eager.state_dicts["0"])
    first = compiled_history["split"].eq("train").idxmax()
    assert compiled_history.loc[first, "loss"] == pytest.approx(
        eager_history.loc[first, "loss"], rel=1e-5
    )


def test_fused_adam_updates_as_the_per_tensor_loop_does() -> None:
    """Training's fused Adam against torch's reference loop, on the same gradients."""
    from ptrag_kedro.models.training import TrainingPlan

    torch.manual_seed(0)
    model = PerturbationModel(ModelConfig(n_genes=6, embedding_dim=4, hidden_dim=8, n_heads=2))
    reference = copy.deepcopy(model)
    fused = TrainingPlan(model, learning_rate=0.01).configure_optimizers()
    assert fused.defaults["fused"]
    loop = torch.optim.Adam(reference.parameters(), lr=0.01, foreach=False)
    batch = {
        "control": torch.rand(2, 3, 6),
        "target": torch.rand(2, 3, 6),
        "perturbation": torch.randn(2, 4),
    }
    for _ in range(5):
        # One backward pass; the reference gets the very same gradients, so the two optimisers
        # are compared on their arithmetic alone (a second forward on weights that differ in
        # the last bit would feed Adam different near-zero gradients, which it amplifies).
        fused.zero_grad()
        model.loss(batch, model(batch)).total.backward()
        for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
            theirs.grad = None if mine.grad is None else mine.grad.clone()
        fused.step()
        loop.step()
    theirs = reference.state_dict()
    for name, mine in model.state_dict().items():
        torch.testing.assert_close(mine, theirs[name], rtol=1e-5, atol=1e-6)


def test_loader_workers_draw_the_same_steps_in_order(prepared_inputs, tmp_path: Path) -> None:
    """Batches drawn ahead by data-loader workers are the batches drawn in the training process,
    in step order (from a resumed start too), and train to the same weights."""
    from torch.utils.data import DataLoader

    from ptrag_kedro.models.sentences import samplers_for
    from ptrag_kedro.models.training import SentenceStream
    from ptrag_kedro.schema import TRAIN
    from tests.conftest import tiny_training

    inputs = prepared_inputs
    sampler = samplers_for(
        (TRAIN,),
        SentenceSpec(cell_set_size=8),
        inputs["screen"],
        inputs["split_manifest"],
        inputs["perturbation_embeddings"],
        inputs["retrieval_candidates"],
        None,
    )[TRAIN]
    stream = SentenceStream(sampler, batch_size=3, seed=5)
    stream.start_step = 3
    drawn = {}
    for workers in (0, 2):
        batches = iter(DataLoader(stream, batch_size=None, num_workers=workers))
        drawn[workers] = [next(batches)["target"] for _ in range(5)]
    for here, ahead in zip(drawn[0], drawn[2], strict=True):
        assert torch.equal(here, ahead)
    assert not torch.equal(drawn[0][0], drawn[0][1])
    records = [
        train_tiny(inputs, tmp_path / f"w{workers}", "state", loader_workers=workers)[0]
        for workers in (0, 2)
    ]
    for name, tensor in records[0].state_dicts["0"].items():
        assert torch.equal(tensor, records[1].state_dicts["0"][name]), name
    with pytest.raises(ParameterError, match="loader_workers"):
        tiny_training(loader_workers=-1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_steps": 2.5}, "training.max_steps must be an integer >= 1, got 2.5"),
        ({"batch_size": "abc"}, "training.batch_size must be an integer >= 1, got 'abc'"),
        ({"checkpoint_every_n_steps": -5}, "checkpoint_every_n_steps must be an integer >= 1"),
        ({"loader_workers": -1}, "training.loader_workers must be an integer >= 0, got -1"),
        ({"accelerator": "abc"}, "training.accelerator must be one of auto, cpu"),
        ({"seeds": ["x"]}, "training.seeds: seed 'x' must be an integer >= 0"),
        ({"learning_rate": "fast"}, "training.learning_rate must be a number > 0, got 'fast'"),
    ],
)
def test_training_parameters_name_what_is_wrong(overrides: dict, message: str) -> None:
    """Checked when the run starts, before any node: one line naming the parameter, never a
    TypeError or a Lightning traceback inside the training node."""
    with pytest.raises(ParameterError, match=re.escape(message)):
        TrainingParameters(**overrides)


def test_the_history_copied_in_bulk_equals_the_history_copied_every_step(
    prepared_inputs, tmp_path: Path, monkeypatch
) -> None:
    """Steps gathered on the device and copied to the host together give the rows, in order,
    that copying each step gives; none is lost at a check, a checkpoint or the end."""
    from ptrag_kedro.models import training

    histories = []
    for every in (1, 3):
        monkeypatch.setattr(training.LossHistory, "HOST_COPY_EVERY", every)
        _, history, _ = train_tiny(
            prepared_inputs,
            tmp_path / f"every_{every}",
            "ptrag",
            max_steps=7,
            val_every_n_steps=5,
            checkpoint_every_n_steps=4,
        )
        histories.append(history)
    each_step, bulk = histories
    pd.testing.assert_frame_equal(bulk, each_step)
    train = bulk[bulk["split"] == "train"]
    assert train["step"].tolist() == list(range(1, 8))
    assert bulk["split"].tolist() == ["train"] * 5 + ["val"] + ["train"] * 2
    assert {"kept_fraction", "sparsity"} <= set(bulk.columns)
    assert train[["loss", "energy", "kept_fraction"]].notna().all().all()
