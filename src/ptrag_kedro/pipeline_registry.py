"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from ptrag_kedro.pipelines import (
    cell_eval,
    cross_validation,
    demo,
    download,
    genept,
    ingestion,
    reporting,
    retrieval_index,
    training,
)
from ptrag_kedro.variants import fold_names, variant_names

#: Stages grouped under a namespace of their own name, so kedro-viz can collapse them.
STAGES = ("demo", "download", "ingestion", "genept", "retrieval_index")


def _stage(name: str, stage: Pipeline) -> Pipeline:
    """``stage``'s nodes as ``<name>.<node>``, tagged ``name``; its datasets and parameters keep
    their names (the catalog contract), as only the nodes are grouped."""
    return Pipeline(stage, namespace=name, prefix_datasets_with_namespace=False, tags=[name])


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline package, ``train_<variant>`` per variant, ``prepare``, ``analysis`` and
    ``__default__``.

    The packages are listed here rather than found with ``find_pipelines``: since Kedro 1.5,
    ``find_pipelines`` under ``kedro run --pipeline=NAME`` imports only a package called NAME, and
    composite names (``analysis``, ``__default__``, the per-variant training instances) are not
    packages. The variants are the keys of the run's ``variants`` parameter; ``cross_validation``
    exists in an environment with ``cross_validation.folds``.
    """
    variants = variant_names()
    pipelines = {
        **{
            name: _stage(name, package.create_pipeline())
            for name, package in zip(
                STAGES, (demo, download, ingestion, genept, retrieval_index), strict=True
            )
        },
        "reporting": reporting.create_pipeline(variants),
        # cell-eval's second opinion on reporting's predictions: in no composite, since it
        # needs the optional `eval` extra.
        "cell_eval": cell_eval.create_pipeline(variants),
    }
    folds = fold_names()
    if folds:  # an environment with cross_validation.folds: `kedro cross-validate` pools them
        pipelines["cross_validation"] = cross_validation.create_pipeline(folds, variants)
    for variant in variants:
        pipelines[f"train_{variant}"] = training.variant_pipeline(variant)
    pipelines["training"] = training.create_pipeline(variants)
    # What training needs, from the raw screen: works on any screen.
    inputs = pipelines["ingestion"] + pipelines["genept"] + pipelines["retrieval_index"]
    # Everything that reads the raw screen, in run order: works on any screen.
    pipelines["analysis"] = inputs + pipelines["training"] + pipelines["reporting"]
    # The one command a fresh clone runs before `--pipelines=train_<variant>`: the demo screen
    # and everything training reads from it.
    pipelines["prepare"] = pipelines["demo"] + inputs
    # A bare `kedro run` simulates the demo screen first, so it works on a fresh clone.
    pipelines["__default__"] = pipelines["demo"] + pipelines["analysis"]
    return pipelines
