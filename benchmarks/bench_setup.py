"""What the benchmarks that train on a prepared screen share: the catalog's inputs of an
environment, and variants defined on the command line on top of the run's."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

PROJECT = Path(__file__).resolve().parents[1]
#: What training and prediction read (the catalog's names).
MODEL_INPUTS = (
    "screen",
    "perturbation_embeddings",
    "retrieval_candidates",
    "perturbation_responses",
    "split_manifest",
)


def load_prepared(
    env: str | None, names: tuple[str, ...] = MODEL_INPUTS
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The datasets ``names`` of environment ``env``, its raw parameters, and its data root."""
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    bootstrap_project(PROJECT)
    with KedroSession.create(project_path=PROJECT, env=env) as session:
        context = session.load_context()
        parameters = context.config_loader["parameters"]  # raw: not yet instantiated
        root = PROJECT / context.config_loader["globals"].get("data_root", "data")
        return {name: context.catalog.load(name) for name in names}, parameters, root


def _set(settings: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for key in path:
        settings = settings.setdefault(key, {})
    settings[last] = value


def parse_variant(text: str, variants: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``NAME=BASE[:key=value,...]``: a variant on top of an existing one (dotted keys, YAML
    values), e.g. ``content=response_rag:model.response_gate=content,response_neighbours=4``."""
    name, _, rest = text.partition("=")
    base, _, overrides = rest.partition(":")
    if base not in variants:
        raise SystemExit(f"--variant {text}: '{base}' is not a variant ({', '.join(variants)})")
    settings = copy.deepcopy(variants[base])
    for item in filter(None, _top_level(overrides)):
        key, _, value = item.partition("=")
        _set(settings, key.strip(), yaml.safe_load(value))
    return name, settings


def _top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets (a YAML list value keeps its commas)."""
    parts, depth, current = [], 0, []
    for character in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(character, 0)
        if character == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    return [*parts, "".join(current)]
