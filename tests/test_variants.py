"""The variant registry: names from parameters, rebuilt pipelines when a run's list changes."""

from __future__ import annotations

import pytest

from ptrag_kedro import variants


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
    with pytest.raises(
        variants.VariantError, match="reporting.reference_variant must be a variant"
    ):
        variants.use_run_parameters(
            {"variants": {"a": {}}, "reporting": {"reference_variant": "z"}}
        )
    with pytest.raises(variants.VariantError, match="got 'state'"):  # the default
        variants.use_run_parameters({"variants": {"a": {}}})
