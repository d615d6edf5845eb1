"""Training: the node trains every variant, resume continues the step count, stale inputs refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ptrag_kedro.datasets import TorchModelDataset
from ptrag_kedro.models import ModelConfig, PerturbationModel
from ptrag_kedro.pipelines.training import create_pipeline
from ptrag_kedro.pipelines.training.nodes import train_model
from ptrag_kedro.provenance import StaleArtefactError

TRAINING: dict[str, Any] = {
    "seeds": [0],
    "max_steps": 4,
    "batch_size": 4,
    "cell_set_size": 8,
    "learning_rate": 1e-3,
    "k": 3,
    "same_batch_controls": True,
    "batch_embedding": True,
    "val_every_n_steps": 2,
    "checkpoint_every_n_steps": 2,
    "resume": False,
    "accelerator": "cpu",
    "devices": 1,
    "strategy": "auto",
    "bf16": False,
    "progress_bar": False,
}
MODEL = {"hidden_dim": 16, "n_layers": 1, "n_heads": 2, "mlp_layers": 2, "dropout": 0.0}


def _train(inputs: dict[str, Any], checkpoint_dir: Path, retrieval: str = "ptrag", **training: Any):
    return train_model(
        inputs["screen"],
        inputs["perturbation_embeddings"],
        inputs["retrieval_candidates"],
        inputs["split_manifest"],
        {**TRAINING, **training},
        {**MODEL, "retrieval": retrieval},
        str(checkpoint_dir),
    )


@pytest.mark.parametrize("retrieval", ["none", "vanilla", "ptrag"])
def test_train_model_record_history_and_plot(
    prepared_inputs, tmp_path: Path, retrieval: str
) -> None:
    record, history, figure = _train(prepared_inputs, tmp_path / "checkpoints", retrieval)
    assert record["steps"] == {"0": 4} and record["config"]["retrieval"] == retrieval
    assert record["genes"] == list(prepared_inputs["screen"].var_names)
    assert list(history.loc[history["split"] == "train", "step"]) == [1, 2, 3, 4]
    assert list(history.loc[history["split"] == "val", "step"]) == [2, 4]
    assert (history["kept_fraction"].notna().any()) == (retrieval == "ptrag")
    assert figure.axes
    # The record saves and loads with weights_only=True and rebuilds the same module.
    dataset = TorchModelDataset(filepath=str(tmp_path / "model.pt"))
    dataset.save(record)
    loaded = dataset.load()
    module = PerturbationModel(ModelConfig(**loaded["config"]))
    module.load_state_dict(loaded["state_dicts"]["0"])
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, record["state_dicts"]["0"][name])


def test_resume_continues_the_step_count(prepared_inputs, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    _train(prepared_inputs, checkpoints, max_steps=4)
    assert (checkpoints / "seed_0" / "last.ckpt").is_file()
    record, history, _ = _train(prepared_inputs, checkpoints, max_steps=6, resume=True)
    assert record["steps"] == {"0": 6}
    # Steps 1-4 come back from the checkpoint's history; only 5-6 were trained now.
    assert list(history.loc[history["split"] == "train", "step"]) == [1, 2, 3, 4, 5, 6]
    fresh, _, _ = _train(
        prepared_inputs, tmp_path / "other", max_steps=6, resume=True
    )  # nothing to resume
    assert fresh["steps"] == {"0": 6}
    # A checkpoint of another model (or other data) is never continued.
    with pytest.raises(StaleArtefactError, match="model_config differ"):
        _train(prepared_inputs, checkpoints, "vanilla", max_steps=8, resume=True)


def test_one_model_per_seed(prepared_inputs, tmp_path: Path) -> None:
    record, history, _ = _train(prepared_inputs, tmp_path, "ptrag", seeds=[0, 1], max_steps=2)
    assert set(record["state_dicts"]) == {"0", "1"}
    first, second = (record["state_dicts"][seed]["decoder.0.weight"] for seed in ("0", "1"))
    assert not torch.equal(first, second)
    assert sorted(history["seed"].unique()) == [0, 1]
    with pytest.raises(ValueError, match="training.seeds"):
        _train(prepared_inputs, tmp_path, "ptrag", seeds=[1, 1])


def test_stale_candidates_are_refused(prepared_inputs, tmp_path: Path) -> None:
    candidates = prepared_inputs["retrieval_candidates"].copy()
    candidates.attrs = {**candidates.attrs, "embeddings_fingerprint": "old"}
    with pytest.raises(StaleArtefactError, match="kedro run --pipeline=retrieval_index"):
        _train({**prepared_inputs, "retrieval_candidates": candidates}, tmp_path)
    # STATE does not read the candidates, so it does not care.
    _train(
        {**prepared_inputs, "retrieval_candidates": candidates},
        tmp_path / "state",
        "none",
        max_steps=1,
    )


def test_variants_share_one_pipeline_and_differ_by_parameters() -> None:
    nodes = {node.name: node for node in create_pipeline().nodes}
    assert set(nodes) == {"state.train_model", "vanilla_rag.train_model", "ptrag.train_model"}
    for variant, node in ((name.split(".")[0], node) for name, node in nodes.items()):
        assert node.func is train_model
        assert node.inputs[:4] == [
            "screen",
            "perturbation_embeddings",
            "retrieval_candidates",
            "split_manifest",
        ]
        assert node.inputs[4:] == [
            "params:training",
            f"params:{variant}.model",
            f"params:{variant}.checkpoint_dir",
        ]
        assert node.outputs == [
            f"{variant}.model",
            f"{variant}.loss_history",
            f"{variant}.loss_plot",
        ]
