"""The variant registry: names from parameters, rebuilt pipelines when a run's list changes,
a subset of the variants (``run_variants``) trained and reported alone."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, DatasetError

from ptrag_kedro import variants
from ptrag_kedro.parameters import ParameterError, ReportingParameters, VariantParameters
from tests.conftest import PROJECT_ROOT

DECLARED = {"state": {}, "vanilla_rag": {}, "ptrag": {}, "response_rag": {}}


def test_names_come_from_the_variants_parameter_in_order() -> None:
    parameters = {"variants": {"state": {}, "mine": {}, "ptrag": {}}}
    assert variants.names_from_parameters(parameters) == ("state", "mine", "ptrag")


@pytest.mark.parametrize(
    "parameters",
    [
        {},
        {"variants": []},
        {"variants": {"my.variant": {}}},
        {"variants": {"baselines": {}}},
        {"variants": {"state\n": {}}},  # a trailing newline is not a name
    ],
)
def test_unusable_variant_parameters_are_refused(parameters) -> None:
    with pytest.raises(variants.VariantError, match="variant"):
        variants.names_from_parameters(parameters)


def test_a_run_with_another_list_asks_for_pipelines_to_be_rebuilt(monkeypatch) -> None:
    monkeypatch.setattr(variants, "_from_run", None)
    monkeypatch.setattr(variants, "_built_with", None)
    reporting = {"reporting": {"reference_variant": "a"}}
    two, three = {"a": {}, "b": {}}, {"a": {}, "b": {}, "c": {}}
    assert not variants.use_run_parameters({"variants": two, **reporting})  # nothing built yet
    assert variants.variant_names() == ("a", "b")
    assert not variants.use_run_parameters({"variants": two, **reporting})
    assert variants.use_run_parameters({"variants": three, **reporting})
    assert variants.variant_names() == ("a", "b", "c")


def test_the_reference_variant_is_checked_before_the_run(monkeypatch) -> None:
    monkeypatch.setattr(variants, "_from_run", None)
    monkeypatch.setattr(variants, "_built_with", None)  # pipelines an earlier test built
    with pytest.raises(
        variants.VariantError, match=r"reporting.reference_variant must be one of run_variants"
    ):
        variants.use_run_parameters(
            {"variants": {"a": {}}, "reporting": {"reference_variant": "z"}}
        )
    # null (the default): the run's first variant
    assert not variants.use_run_parameters({"variants": {"a": {}}})


@pytest.mark.parametrize(
    ("run_variants", "names"),
    [
        (None, ("state", "vanilla_rag", "ptrag", "response_rag")),  # null: every variant
        (["ptrag"], ("ptrag",)),
        (["ptrag", "state"], ("ptrag", "state")),  # in run_variants' order
        ("ptrag state", ("ptrag", "state")),  # --params="run_variants=ptrag state"
    ],
)
def test_run_variants_picks_a_subset_in_its_order(run_variants, names) -> None:
    parameters = {"variants": DECLARED, "run_variants": run_variants}
    assert variants.names_from_parameters(parameters) == names


@pytest.mark.parametrize(
    ("run_variants", "message"),
    [
        (
            ["ptrag", "stat"],
            "run_variants must be distinct keys of variants (state, vanilla_rag, "
            "ptrag, response_rag), got ['ptrag', 'stat']",
        ),
        (["ptrag", "ptrag"], "run_variants must be distinct keys of variants"),
        ([], "run_variants must be a non-empty list of variants (or null: all of them), got []"),
        ({"ptrag": 1}, "run_variants must be a non-empty list"),
    ],
)
def test_run_variants_naming_no_declared_variant_is_one_line(run_variants, message) -> None:
    with pytest.raises(variants.VariantError, match=re.escape(message)):
        variants.names_from_parameters({"variants": DECLARED, "run_variants": run_variants})


def test_the_reference_is_the_first_run_variant_unless_set(monkeypatch, caplog) -> None:
    monkeypatch.setattr(variants, "_from_run", None)
    one = {"variants": DECLARED, "run_variants": ["ptrag"]}
    with caplog.at_level(logging.INFO, logger="ptrag_kedro.variants"):
        assert variants.check_reference(one, ("ptrag",)) == "ptrag"
    assert "compare against ptrag, the first of run_variants" in caplog.text
    named = {**one, "reporting": {"reference_variant": "state"}}
    with pytest.raises(
        variants.VariantError,
        match=re.escape(
            "reporting.reference_variant must be one of run_variants (ptrag), got 'state'"
        ),
    ):
        variants.use_run_parameters(named)
    # the nodes resolve it the same way, from the variants they are given
    assert ReportingParameters().reference(["ptrag", "state"]) == "ptrag"
    assert ReportingParameters(reference_variant="state").reference(["ptrag", "state"]) == "state"
    with pytest.raises(ParameterError, match="reporting.reference_variant must be one of"):
        ReportingParameters(reference_variant="state").reference(["ptrag"])


def _parameters_of(env_parameters: dict) -> dict:
    """conf/base's parameters with ``env_parameters`` over them (as --params), as Kedro merges
    them (conf/local, a developer's own, left out)."""
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"),
        base_env="base",
        default_run_env="base",
        merge_strategy={"parameters": "soft"},
        runtime_params=env_parameters,
    )
    return loader["parameters"]


def test_one_variant_builds_only_its_training_and_reporting(monkeypatch) -> None:
    """An environment (here --params) with run_variants: [ptrag]: only train_ptrag, and
    reporting reads no other variant's datasets."""
    from ptrag_kedro.pipeline_registry import register_pipelines

    monkeypatch.setattr(variants, "_from_run", None)
    monkeypatch.setattr(variants, "_built_with", None)
    parameters = _parameters_of({"run_variants": ["ptrag"]})
    assert list(parameters["variants"]) == list(DECLARED)  # declared: all four, as merged
    variants.use_run_parameters(parameters)
    pipelines = register_pipelines()
    assert sorted(name for name in pipelines if name.startswith("train_")) == ["train_ptrag"]
    others = [name for name in DECLARED if name != "ptrag"]
    for name in ("training", "reporting", "analysis", "__default__"):
        datasets = pipelines[name].datasets()
        assert not [d for d in datasets for o in others if d.startswith((f"{o}.", f"{o}_"))]
        assert not [d for d in datasets for o in others if d == f"params:variants.{o}"]
    assert {"ptrag.model", "ptrag_loss_history", "ptrag_metrics"} <= pipelines[
        "reporting"
    ].datasets()


@pytest.mark.parametrize(
    ("dataset", "command"),
    [
        ("state_loss_history", "kedro run --pipelines=train_state"),
        ("state.model", "kedro run --pipelines=train_state"),
        ("ptrag_metrics", "kedro run --pipelines=reporting"),
        ("ptrag_gates", "kedro run --pipelines=reporting"),
        ("retrieval_diagnostics", "kedro run --pipelines=prepare"),
        ("baselines_summary", "kedro run --pipelines=reporting"),
    ],
)
def test_a_missing_artefact_names_the_command_that_creates_it(
    tmp_path: Path, dataset: str, command: str
) -> None:
    catalog = DataCatalog.from_config(
        OmegaConfigLoader(
            conf_source=str(PROJECT_ROOT / "conf"),
            base_env="base",
            default_run_env="base",
            runtime_params={"data_root": str(tmp_path)},
        )["catalog"]
    )
    with pytest.raises(DatasetError, match=rf"no such .*; create it first with `{command}`"):
        catalog.load(dataset)


def test_candidates_k_at_most_takes_what_a_small_screen_lists(caplog) -> None:
    """{at_most: 8}, the default: 8 where 32 are listed, the 5 of a small screen (logged); an
    explicit integer above what is listed stays an error; the paper's auto takes every one."""
    capped = VariantParameters(model={"retrieval": "ptrag"}, candidates_k={"at_most": 8})
    assert capped.resolved_candidates_k(32) == 8
    with caplog.at_level(logging.INFO, logger="ptrag_kedro.parameters"):
        assert capped.resolved_candidates_k(5) == 5
    assert "retrieval_candidates lists 5 per perturbation: 5 candidates per sentence" in (
        caplog.text
    )
    with pytest.raises(ParameterError, match=r"candidates_k = 8, but retrieval_candidates lists 5"):
        VariantParameters(model={"retrieval": "vanilla"}, candidates_k=8).resolved_candidates_k(5)
    for wrong in ({"at_most": 0}, {"up_to": 8}, {"at_most": 8, "k": 2}, {"at_most": "8"}):
        with pytest.raises(ParameterError, match=r"needs candidates_k >= 1 or auto or \{at_most"):
            VariantParameters(model={"retrieval": "ptrag"}, candidates_k=wrong)
    base = _parameters_of({})["variants"]
    assert base["ptrag"]["candidates_k"] == base["vanilla_rag"]["candidates_k"] == {"at_most": 8}
    paper = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"),
        base_env="base",
        default_run_env="paper",
        merge_strategy={"parameters": "soft"},
    )["parameters"]["variants"]
    assert VariantParameters(**paper["ptrag"]).resolved_candidates_k(32) == 32
