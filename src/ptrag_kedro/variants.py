"""Which model variants a run trains and reports: ``run_variants``, or every key of ``variants``.

``variants`` declares every variant (an environment's soft merge can add one, never remove one);
``run_variants`` picks those a run trains and reports, in its order (an environment or
``--params="run_variants=ptrag state"`` may name a subset; null: every declared variant). The
paired tests' ``reporting.reference_variant`` must be one of them; when it is not set (null) it
is the first (``state`` by default).

Kedro builds pipelines before it hands parameters to nodes, so the registry asks here. A
project hook (``hooks.py``) passes the run's merged parameters (environment and ``--params``
included) as soon as Kedro has made the run's context; without a context (``kedro registry
list``, a bare import) the names are read from the project's configuration (``conf/base``, then
``KEDRO_ENV`` or ``conf/local``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from ptrag_kedro.errors import UserError

logger = logging.getLogger(__name__)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Namespaces the reporting pipeline uses itself.
RESERVED = {"baselines", "reporting", "training", "run_metadata"}

#: (variant names, fold names) of the run, and those the pipelines were last built with
_from_run: tuple[tuple[str, ...], tuple[str, ...]] | None = None
_built_with: tuple[tuple[str, ...], tuple[str, ...]] | None = None


class VariantError(UserError, ValueError):
    """The ``variants`` parameter cannot name the run's variants; the message says why."""


def declared_names(parameters: dict[str, Any]) -> tuple[str, ...]:
    """Every key of ``variants`` (in the parameters' order), checked to be usable as dataset
    namespaces."""
    variants = parameters.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise VariantError(
            "parameters: 'variants' must map each variant name to its settings "
            "(conf/base/parameters_training.yml)"
        )
    names = tuple(str(name) for name in variants)
    for name in names:
        if not _NAME.fullmatch(name) or name in RESERVED:
            raise VariantError(
                f"parameters: variant name '{name}' must be letters, digits and underscores, "
                f"start with a letter, and not be one of {sorted(RESERVED)}"
            )
    return names


def names_from_parameters(parameters: dict[str, Any]) -> tuple[str, ...]:
    """The run's variants: ``run_variants`` (a list, or one string of names separated by
    spaces, as ``--params`` can pass several), or every declared variant when it is null."""
    declared = declared_names(parameters)
    chosen = parameters.get("run_variants")
    if chosen is None:
        return declared
    names = tuple(chosen.split()) if isinstance(chosen, str) else chosen
    if not isinstance(names, list | tuple) or not names:
        raise VariantError(
            "run_variants must be a non-empty list of variants (or null: all of them), got "
            f"{chosen!r}"
        )
    names = tuple(str(name) for name in names)
    unknown = [name for name in names if name not in declared]
    if unknown or len(set(names)) < len(names):
        raise VariantError(
            f"run_variants must be distinct keys of variants ({', '.join(declared)}), got "
            f"{list(names)}"
        )
    return names


def fold_names_from_parameters(parameters: dict[str, Any]) -> tuple[str, ...]:
    """The folds of ``cross_validation`` (none when the run has no such block)."""
    block = parameters.get("cross_validation")
    if not block:
        return ()
    from ptrag_kedro.parameters import CrossValidationParameters

    return tuple(CrossValidationParameters(**block).names)


def _configuration() -> dict[str, Any]:
    from kedro.config import OmegaConfigLoader
    from kedro.framework.project import settings
    from kedro.utils import find_kedro_project

    project = find_kedro_project(Path.cwd()) or Path.cwd()
    loader = OmegaConfigLoader(
        conf_source=str(project / settings.CONF_SOURCE),
        env=os.environ.get("KEDRO_ENV"),
        **settings.CONFIG_LOADER_ARGS,
    )
    return loader["parameters"]


def _names(parameters: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return names_from_parameters(parameters), fold_names_from_parameters(parameters)


def check_reference(parameters: dict[str, Any], names: tuple[str, ...]) -> str:
    """The paired tests' reference, checked to be a variant of the run before any node runs:
    ``reporting.reference_variant``, or the run's first variant when it is null (logged)."""
    reference = (parameters.get("reporting") or {}).get("reference_variant")
    if reference is None:
        logger.info(
            "reporting.reference_variant is not set: the paired tests compare against %s, the "
            "first of run_variants",
            names[0],
        )
        return names[0]
    if reference not in names:
        raise VariantError(
            f"reporting.reference_variant must be one of run_variants ({', '.join(names)}), "
            f"got {reference!r}"
        )
    return str(reference)


def use_run_parameters(parameters: dict[str, Any]) -> bool:
    """Take the variant (and fold) names of this run; True when pipelines built before must be
    rebuilt."""
    global _from_run
    _from_run = _names(parameters)
    check_reference(parameters, _from_run[0])
    return _built_with is not None and _built_with != _from_run


def _current() -> tuple[tuple[str, ...], tuple[str, ...]]:
    global _built_with
    _built_with = _from_run if _from_run is not None else _names(_configuration())
    return _built_with


def variant_names() -> tuple[str, ...]:
    """The variants of the current run (recorded as the ones the pipelines are built with)."""
    return _current()[0]


def fold_names() -> tuple[str, ...]:
    """The cross-validation folds of the current run (none outside such an environment)."""
    return _current()[1]
