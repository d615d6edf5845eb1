"""Typed parameter blocks: declared once here, validated when Kedro builds the run.

Kedro instantiates a dataclass-typed node parameter from its ``params:`` dict before any node
runs, so a wrong value stops the run at its start with the parameter's name; an unknown key is
an error too (a misspelt option must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ptrag_kedro.models.module import ModelConfig


class ParameterError(ValueError):
    """A parameter has a value the project cannot use; the message names it."""


def _set(instance: Any, name: str, value: Any) -> None:
    object.__setattr__(instance, name, value)  # normalising a frozen dataclass in __post_init__


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ParameterError(message)


@dataclass(frozen=True)
class TrainingParameters:
    """``training``: shared by every variant."""

    seeds: tuple[int, ...] = (0,)
    max_steps: int = 2000
    batch_size: int = 16
    cell_set_size: int = 32
    learning_rate: float = 1e-3
    same_batch_controls: bool = False
    batch_embedding: bool = False
    val_every_n_steps: int = 250
    checkpoint_every_n_steps: int = 500
    #: keep the weights of the validation check with the lowest val energy (not the last step)
    select_on_val: bool = True
    resume: bool = False
    keep_all_checkpoints: bool = False
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    bf16: bool = False
    progress_bar: bool = True

    def __post_init__(self) -> None:
        seeds = self.seeds if isinstance(self.seeds, list | tuple) else [self.seeds]
        _set(self, "seeds", tuple(int(seed) for seed in seeds))
        _require(
            len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
            f"training.seeds must be a non-empty list of distinct seeds, not {list(self.seeds)}",
        )
        for name in ("max_steps", "batch_size", "cell_set_size", "val_every_n_steps"):
            _require(int(getattr(self, name)) >= 1, f"training.{name} must be >= 1")
        _require(self.learning_rate > 0, "training.learning_rate must be > 0")


@dataclass(frozen=True)
class VariantParameters:
    """``variants.<name>``: what makes a variant, on top of the shared ``model`` backbone.

    Args:
        model: :class:`~ptrag_kedro.models.ModelConfig` fields that differ from ``model``
            (``retrieval`` at least).
        candidates_k: GenePT candidates per sentence for ``vanilla`` / ``ptrag`` (at most
            ``retrieval_index.k``).
        response_neighbours: neighbours per neighbour kind in the ``response`` block's slots.
        label: how tables and plots name the variant (default: its key).
    """

    model: dict[str, Any] = field(default_factory=dict)
    candidates_k: int = 0
    response_neighbours: int = 0
    label: str = ""

    def __post_init__(self) -> None:
        _set(self, "model", dict(self.model or {}))
        known = {f.name for f in dataclasses.fields(ModelConfig)} - {"n_genes", "embedding_dim"}
        unknown = sorted(set(self.model) - known)
        _require(not unknown, f"unknown model option(s) {unknown}; known: {sorted(known)}")
        retrieval = self.model.get("retrieval", "none")
        if retrieval in ("vanilla", "ptrag"):
            _require(self.candidates_k >= 1, f"retrieval '{retrieval}' needs candidates_k >= 1")
        if retrieval == "response":
            _require(
                self.response_neighbours >= 1, "retrieval 'response' needs response_neighbours >= 1"
            )

    def model_config(
        self, backbone: dict[str, Any], n_genes: int, embedding_dim: int, n_batches: int
    ) -> ModelConfig:
        """The variant's model: the shared backbone with its own settings on top."""
        return ModelConfig(
            n_genes=n_genes,
            embedding_dim=embedding_dim,
            n_batches=n_batches,
            **{**backbone, **self.model},
        )

    @property
    def retrieval(self) -> str:
        return str(self.model.get("retrieval", "none"))


@dataclass(frozen=True)
class ReportingParameters:
    """``reporting``: predictions, baselines, metrics and the paired comparison."""

    seed: int = 0
    same_batch_controls: bool = False
    n_pcs: int = 50
    de_top_n: int = 100
    baselines: tuple[str, ...] = (
        "control_mean",
        "perturbation_mean",
        "context",
        "linear",
        "line_linear",
    )
    ridge_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)
    reference_variant: str = "state"
    significance: float = 0.05

    def __post_init__(self) -> None:
        _set(self, "baselines", tuple(str(name) for name in self.baselines))
        _set(self, "ridge_alphas", tuple(float(alpha) for alpha in self.ridge_alphas))
        _require(len(self.baselines) > 0, "reporting.baselines must name at least one baseline")
        _require(self.n_pcs >= 1, "reporting.n_pcs must be >= 1")
        _require(self.de_top_n >= 1, "reporting.de_top_n must be >= 1")
        _require(
            len(self.ridge_alphas) > 0 and min(self.ridge_alphas) > 0,
            "reporting.ridge_alphas must be a non-empty list of positive values",
        )
        _require(0 < self.significance < 1, "reporting.significance must be in (0, 1)")
