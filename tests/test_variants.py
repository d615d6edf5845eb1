"""The variant registry: names from parameters, rebuilt pipelines when a run's list changes."""

from __future__ import annotations

import pytest

from ptrag_kedro import variants


def test_names_come_from_the_variants_parameter_in_order() -> None:
    parameters = {"variants": {"state": {}, "mine": {}, "ptrag": {}}}
    assert variants.names_from_parameters(parameters) == ("state", "mine", "ptrag")


@pytest.mark.parametrize(
    "parameters",
    [{}, {"variants": []}, {"variants": {"my.variant": {}}}, {"variants": {"baselines": {}}}],
)
def test_unusable_variant_parameters_are_refused(parameters) -> None:
    with pytest.raises(variants.VariantError, match="variant"):
        variants.names_from_parameters(parameters)


def test_a_run_with_another_list_asks_for_pipelines_to_be_rebuilt(monkeypatch) -> None:
    monkeypatch.setattr(variants, "_from_run", None)
    monkeypatch.setattr(variants, "_built_with", None)
    assert not variants.use_run_parameters({"variants": {"a": {}, "b": {}}})  # nothing built yet
    assert variants.variant_names() == ("a", "b")
    assert not variants.use_run_parameters({"variants": {"a": {}, "b": {}}})
    assert variants.use_run_parameters({"variants": {"a": {}, "b": {}, "c": {}}})
    assert variants.variant_names() == ("a", "b", "c")
