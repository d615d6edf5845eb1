"""The model layer between the pipelines: the record training writes and reporting reads.

A :class:`ModelRecord` is everything a trained variant is: the :class:`ModelConfig` that builds
its module, what it reads per sentence (:class:`SentenceSpec`), the gene and perturbation order
it was trained on, the fingerprints of its inputs, and one set of weights per training seed
with how each was selected. It is saved as plain containers and tensors (``to_dict``), so the
catalog loads it with ``torch.load(weights_only=True)``; a record of another format is refused
with the command that rebuilds it. Training writes it, inference and the notebooks read it,
and neither imports the other's pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptrag_kedro.models.config import ModelConfig, SentenceSpec
from ptrag_kedro.provenance import StaleArtefactError

if TYPE_CHECKING:
    import torch

    from ptrag_kedro.models.module import PerturbationModel

#: Version of the record's layout; a record of another version is refused at prediction.
RECORD_FORMAT = 3  # 3: the transformer is backbone.SetTransformer (its own parameter names)

RETRAIN = "kedro run --pipelines=training"


@dataclass
class ModelRecord:
    """A trained variant: how to build it, what it read, what it was trained on, its weights.

    Per-seed entries are keyed by the seed as a string (``"0"``), as they are stored.
    """

    config: ModelConfig
    sentences: SentenceSpec
    genes: list[str]
    perturbations: list[str]
    #: fingerprints of the inputs it was trained on (screen, embeddings, ...)
    provenance: dict[str, str]
    state_dicts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    selected_steps: dict[str, int] = field(default_factory=dict)
    selected_val_energy: dict[str, float | None] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [int(seed) for seed in self.state_dicts]

    def add_seed(
        self,
        seed: int,
        state_dict: dict[str, torch.Tensor],
        steps: int,
        selected_step: int,
        selected_val_energy: float | None,
    ) -> None:
        key = str(seed)
        self.state_dicts[key] = state_dict
        self.steps[key] = int(steps)
        self.selected_steps[key] = int(selected_step)
        self.selected_val_energy[key] = selected_val_energy

    def modules(self) -> Iterator[tuple[int, PerturbationModel]]:
        """(seed, module with that seed's weights) for every trained seed, on CPU."""
        from ptrag_kedro.models.module import PerturbationModel

        for seed, state_dict in self.state_dicts.items():
            module = PerturbationModel(self.config)
            module.load_state_dict(state_dict)
            yield int(seed), module

    def check_inputs(self, genes: list[str], provenance: dict[str, str]) -> None:
        """Refuse to predict on a screen of another gene order or from other inputs."""
        if self.genes != [str(gene) for gene in genes]:
            raise StaleArtefactError(
                f"the model was trained on another gene order; retrain it with `{RETRAIN}`"
            )
        for key, value in provenance.items():
            if self.provenance.get(key) != value:
                raise StaleArtefactError(
                    f"the model was trained on another {key.replace('_', ' ')} "
                    f"({self.provenance.get(key)}, now {value}); retrain it with `{RETRAIN}`"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only: what ``torch.load(weights_only=True)`` reads."""
        return {
            "record_format": RECORD_FORMAT,
            "config": self.config.to_dict(),
            "sentences": self.sentences.to_dict(),
            "genes": list(self.genes),
            "perturbations": list(self.perturbations),
            "provenance": dict(self.provenance),
            "state_dicts": dict(self.state_dicts),
            "steps": dict(self.steps),
            "selected_steps": dict(self.selected_steps),
            "selected_val_energy": dict(self.selected_val_energy),
        }

    @classmethod
    def from_dict(cls, stored: dict[str, Any], source: str = "the model record") -> ModelRecord:
        """The record of :meth:`to_dict`; another format, or a malformed one, is refused."""
        if not isinstance(stored, dict) or stored.get("record_format") != RECORD_FORMAT:
            raise StaleArtefactError(
                f"{source} was written by another version of ptrag-kedro; retrain it with "
                f"`{RETRAIN}`"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(stored))
        if missing:
            raise StaleArtefactError(
                f"{source} lacks {', '.join(missing)}; retrain it with `{RETRAIN}`"
            )
        values = {name: stored[name] for name in names}
        values["config"] = ModelConfig(**stored["config"])
        values["sentences"] = SentenceSpec(**stored["sentences"])
        return cls(**values)
