"""What builds a model and what it reads per sentence: plain dataclasses, no torch.

:class:`ModelConfig` is stored beside a model's weights and rebuilds it; :class:`SentenceSpec`
says what a model reads per cell sentence, so inference reads what training read. Both are
torch-free, so parameters, the CLI and reporting can name them without loading torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ptrag_kedro.errors import ParameterError

RetrievalKind = Literal["none", "vanilla", "ptrag", "response"]
#: replace: the retrieval output *is* the transformer input (the authors' form);
#: residual: it is added to the STATE input (a cell keeps its own state whatever is retrieved).
RetrievalForm = Literal["replace", "residual"]
#: How PT-RAG's gates are set outside training: a seeded Gumbel sample (the authors'), the keep
#: probability itself, or the more likely choice.
GateInference = Literal["sampled", "expected", "argmax"]
#: What PT-RAG sums over kept candidates: Linear (with bias) of the LayerNorm'd concatenation
#: (the authors'), or a bias-free Linear of the raw concatenation (our first form).
GateProjection = Literal["layernorm", "raw"]
#: Gate logits divided by their standard deviation over each sentence, over the whole batch (the
#: authors' scope), or left alone.
GateLogitNorm = Literal["sentence_std", "batch_std", "none"]
#: PT-RAG's sparsity penalty: the mean gate (a skipped pair still sends the gradient of its soft
#: sample), or the authors' ``abs(gates).mean()`` (the same value; a hard skip is exactly 0, so
#: in their form a skipped pair sends none: the gradient of |x| at 0 is 0).
SparsityPenalty = Literal["mean", "abs"]
#: What the response block's gate reads: each slot's features (kind, similarity, cell count)
#: only; those and the slot's response with the sentence's cells; or also the query embedding.
ResponseGate = Literal["features", "content", "query"]
NormKind = Literal["layernorm", "rmsnorm"]
FeedForwardKind = Literal["relu", "gelu", "swiglu"]


def _check_choice(name: str, value: Any, kind: Any) -> None:
    choices = get_args(kind)
    if value not in choices:
        raise ParameterError(f"model.{name} must be one of {', '.join(choices)}, got {value!r}")


#: Which fields of :class:`ModelConfig` take one of a fixed set of values.
CHOICES: dict[str, Any] = {
    "retrieval": RetrievalKind,
    "retrieval_form": RetrievalForm,
    "gate_inference": GateInference,
    "gate_projection": GateProjection,
    "gate_logit_norm": GateLogitNorm,
    "sparsity": SparsityPenalty,
    "response_gate": ResponseGate,
    "feed_forward": FeedForwardKind,
    "norm": NormKind,
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything that builds a :class:`~ptrag_kedro.models.PerturbationModel` (stored beside
    its weights)."""

    n_genes: int
    embedding_dim: int
    hidden_dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    #: the transformer (see ``backbone.py``): per-head width (0: hidden_dim / n_heads, so the
    #: attention width is hidden), feed-forward kind and width (0: 4 x hidden), norm, whether
    #: its linear maps have biases, and a norm after the last layer. The defaults are torch's
    #: nn.TransformerEncoderLayer; conf/paper sets the paper's Llama form.
    head_dim: int = 0
    feed_forward: FeedForwardKind = "relu"
    intermediate_dim: int = 0
    norm: NormKind = "layernorm"
    transformer_bias: bool = True
    final_norm: bool = False
    #: linear layers of the basal, perturbation and output MLPs (the authors' is 1: one linear map)
    mlp_layers: int = 2
    dropout: float = 0.0
    retrieval: RetrievalKind = "none"
    retrieval_form: RetrievalForm = "replace"
    #: PT-RAG gate temperature, and the weight of the gate penalty in the loss
    tau: float = 0.5
    sparsity_weight: float = 0.1
    sparsity: SparsityPenalty = "mean"
    gate_logit_norm: GateLogitNorm = "sentence_std"
    gate_projection: GateProjection = "layernorm"
    gate_inference: GateInference = "sampled"
    #: the loss is energy_scale x energy distance (+ the penalty): 0.5 is geomloss's energy loss,
    #: the authors' scale, so their sparsity_weight 0.1 weighs what it weighed there
    energy_scale: float = 0.5
    response_gate: ResponseGate = "features"
    #: initial per-gene gain of the retrieved shift added to the output (0: training starts
    #: from STATE; 1: from "controls + retrieved shift")
    response_gain_init: float = 0.0
    #: in training, hide all slots of one kind from a sentence with this probability (per kind),
    #: so the model also learns to predict when a source is missing (e.g. a gene screened in
    #: no other line)
    response_dropout: float = 0.0
    #: >0 adds a learned embedding of each control cell's batch (gem group)
    n_batches: int = 0

    def __post_init__(self) -> None:
        for name, kind in CHOICES.items():
            _check_choice(name, getattr(self, name), kind)
        for name in ("n_genes", "embedding_dim", "hidden_dim", "n_layers", "n_heads", "mlp_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParameterError(f"model.{name} must be an integer >= 1, got {value!r}")
        if self.head_dim < 0 or self.intermediate_dim < 0:
            raise ParameterError(
                "model.head_dim and model.intermediate_dim must be >= 0 (0: derived), got "
                f"{self.head_dim!r} and {self.intermediate_dim!r}"
            )
        if not self.head_dim and self.hidden_dim % self.n_heads:
            raise ParameterError(
                f"model.hidden_dim {self.hidden_dim} is not divisible by n_heads {self.n_heads} "
                "(or set model.head_dim)"
            )
        if not 0.0 <= self.response_dropout < 1.0:
            raise ParameterError(
                f"model.response_dropout must be in [0, 1), got {self.response_dropout!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ParameterError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.tau <= 0 or self.energy_scale <= 0 or self.sparsity_weight < 0:
            raise ParameterError(
                "model.tau and model.energy_scale must be > 0 and model.sparsity_weight >= 0, "
                f"got {self.tau!r}, {self.energy_scale!r} and {self.sparsity_weight!r}"
            )

    @property
    def attention_head_dim(self) -> int:
        """The per-head width (``head_dim``, or hidden / heads when 0)."""
        return self.head_dim or self.hidden_dim // self.n_heads

    @property
    def feed_forward_dim(self) -> int:
        """The feed-forward width (``intermediate_dim``, or 4 x hidden when 0)."""
        return self.intermediate_dim or 4 * self.hidden_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The options a variant may set in ``variants.<name>.model`` (the data sets the others).
VARIANT_OPTIONS = frozenset(f.name for f in dataclasses.fields(ModelConfig)) - {
    "n_genes",
    "embedding_dim",
    "n_batches",
}


def check_model_options(options: dict[str, Any], where: str) -> None:
    """Refuse unknown ``model`` options and bad choices before anything is built (``where``
    names the parameter block, e.g. ``variants.ptrag.model``)."""
    unknown = sorted(set(options) - VARIANT_OPTIONS)
    if unknown:
        raise ParameterError(
            f"unknown {where} option(s) {unknown}; known: {sorted(VARIANT_OPTIONS)}"
        )
    for name, kind in CHOICES.items():
        if name in options and options[name] not in get_args(kind):
            raise ParameterError(
                f"{where}.{name} must be one of {', '.join(get_args(kind))}, got {options[name]!r}"
            )


@dataclass(frozen=True)
class SentenceSpec:
    """What a model reads per sentence; stored in its record so inference reads the same.

    Args:
        cell_set_size: S, cells per sentence.
        candidates_k: GenePT candidates per sentence (vanilla RAG, PT-RAG); 0 for none.
        response_neighbours: neighbours per neighbour kind in the response slots; 0: no
            responses are read.
        same_batch_controls: pair each perturbed cell with a control of its own batch (gem
            group) when the line has one there.
        response_kinds: the kinds of response slot that are filled (empty: every kind); the
            others stay in the layout, empty and masked.
    """

    cell_set_size: int
    candidates_k: int = 0
    response_neighbours: int = 0
    same_batch_controls: bool = False
    response_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "response_kinds", tuple(self.response_kinds))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "response_kinds": list(self.response_kinds)}
