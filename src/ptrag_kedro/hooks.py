"""Project hooks: hand the run's parameters to the variant registry before pipelines load."""

from __future__ import annotations

from kedro.framework import project
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl

from ptrag_kedro import variants


class VariantRegistryHooks:
    """Pipelines are generated from the ``variants`` parameter of the run (env and --params).

    Kedro makes the run's context before it first reads the pipelines, so the registry sees the
    run's own variant list. In a long-lived process (a notebook, the test suite) pipelines built
    for another list are dropped and rebuilt.
    """

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        # The raw parameters: `context.params` would validate them against the pipelines,
        # which are what this hook is about to decide.
        if variants.use_run_parameters(context.config_loader["parameters"]):
            project.pipelines.configure(f"{project.PACKAGE_NAME}.pipeline_registry")
