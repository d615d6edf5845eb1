"""Training: one node for every variant, selection on val, resume, stale inputs, variant specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ptrag_kedro.datasets import TorchModelDataset
from ptrag_kedro.models import ModelConfig, PerturbationModel
from ptrag_kedro.parameters import ParameterError, TrainingParameters, VariantParameters
from ptrag_kedro.pipelines.training import create_pipeline
from ptrag_kedro.pipelines.training.nodes import load_model_config, train_model
from ptrag_kedro.provenance import StaleArtefactError
from tests.conftest import TINY_VARIANTS, train_tiny


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_train_model_record_history_and_plot(prepared_inputs, tmp_path: Path, variant) -> None:
    record, history, figure = train_tiny(prepared_inputs, tmp_path / "checkpoints", variant)
    retrieval = TINY_VARIANTS[variant]["model"]["retrieval"]
    assert record["steps"] == {"0": 4} and record["config"]["retrieval"] == retrieval
    assert record["genes"] == list(prepared_inputs["screen"].var_names)
    assert list(history.loc[history["split"] == "train", "step"]) == [1, 2, 3, 4]
    assert list(history.loc[history["split"] == "val", "step"]) == [2, 4]
    gated = retrieval in ("ptrag", "response")
    assert history["kept_fraction"].notna().any() == gated
    assert figure.axes[0].get_title() == f"Loss ({retrieval})"
    assert len(figure.axes[0].lines) == 2  # train and val energy of the one seed
    # The record saves and loads with weights_only=True and rebuilds the same module.
    dataset = TorchModelDataset(filepath=str(tmp_path / "model.pt"))
    dataset.save(record)
    loaded = dataset.load()
    module = PerturbationModel(load_model_config(loaded))
    module.load_state_dict(loaded["state_dicts"]["0"])
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, record["state_dicts"]["0"][name])
    with pytest.raises(StaleArtefactError, match="another version"):
        load_model_config({**loaded, "record_format": 1})


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
    assert record["selected_steps"] == {"0": best}
    assert record["selected_val_energy"]["0"] == pytest.approx(val.min())
    (saved,) = (checkpoints / "seed_0").glob(f"*step={best}.ckpt")
    weights = torch.load(saved, weights_only=True)["state_dict"]
    for name, tensor in record["state_dicts"]["0"].items():
        assert torch.equal(tensor, weights[f"model.{name}"]), name
    last, _, _ = train_tiny(
        prepared_inputs,
        tmp_path / "last",
        "state",
        max_steps=8,
        learning_rate=0.05,
        select_on_val=False,
    )
    assert last["selected_steps"] == {"0": 8}
    if best != 8:
        first = next(iter(record["state_dicts"]["0"]))
        assert not torch.equal(last["state_dicts"]["0"][first], record["state_dicts"]["0"][first])


def test_resume_continues_the_step_count(prepared_inputs, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    train_tiny(prepared_inputs, checkpoints, max_steps=4)
    assert (checkpoints / "seed_0" / "last.ckpt").is_file()
    record, history, _ = train_tiny(prepared_inputs, checkpoints, max_steps=6, resume=True)
    assert record["steps"] == {"0": 6}
    # Steps 1-4 come back from the checkpoint's history; only 5-6 were trained now.
    assert list(history.loc[history["split"] == "train", "step"]) == [1, 2, 3, 4, 5, 6]
    fresh, _, _ = train_tiny(prepared_inputs, tmp_path / "other", max_steps=6, resume=True)
    assert fresh["steps"] == {"0": 6}  # nothing to resume there
    # A checkpoint of another model (or other data) is never continued.
    with pytest.raises(StaleArtefactError, match="model_config differ"):
        train_tiny(prepared_inputs, checkpoints, "vanilla_rag", max_steps=8, resume=True)


def test_one_model_per_seed(prepared_inputs, tmp_path: Path) -> None:
    record, history, _ = train_tiny(prepared_inputs, tmp_path, "ptrag", seeds=[0, 1], max_steps=2)
    assert set(record["state_dicts"]) == {"0", "1"}
    first, second = (record["state_dicts"][seed]["decoder.0.weight"] for seed in ("0", "1"))
    assert not torch.equal(first, second)
    assert sorted(history["seed"].unique()) == [0, 1]


def test_stale_inputs_are_refused(prepared_inputs, tmp_path: Path) -> None:
    candidates = prepared_inputs["retrieval_candidates"].copy()
    candidates.attrs = {**candidates.attrs, "embeddings_fingerprint": "old"}
    stale = {**prepared_inputs, "retrieval_candidates": candidates}
    with pytest.raises(StaleArtefactError, match="kedro run --pipeline=retrieval_index"):
        train_tiny(stale, tmp_path)
    train_tiny(stale, tmp_path / "state", "state", max_steps=1)  # STATE does not read them
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
        assert node.outputs == [f"{name}.model", f"{name}.loss_history", f"{name}.loss_plot"]


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
