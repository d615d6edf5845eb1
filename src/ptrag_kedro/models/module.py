"""The torch module: STATE's set-to-set backbone with a swappable retrieval block.

STATE, vanilla RAG and PT-RAG are one :class:`PerturbationModel` built with a different
``retrieval`` in :class:`ModelConfig`; nothing else differs. Pure ``nn.Module``s: no AnnData,
files or trainer here. Shapes: B sentences, S cells per sentence, K candidates, G genes,
E embedding dimension, H hidden width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.energy import energy_distance

RetrievalKind = Literal["none", "vanilla", "ptrag"]
GateMode = Literal["deterministic", "sampled"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything that builds a :class:`PerturbationModel` (stored beside its weights)."""

    n_genes: int
    embedding_dim: int
    hidden_dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_layers: int = 2
    dropout: float = 0.0
    retrieval: RetrievalKind = "none"
    #: PT-RAG gate temperature and the weight of the mean-gate penalty in the loss
    tau: float = 0.5
    sparsity_weight: float = 0.1
    #: >0 adds a learned embedding of each control cell's batch (gem group)
    n_batches: int = 0

    def __post_init__(self) -> None:
        if self.retrieval not in ("none", "vanilla", "ptrag"):
            raise ValueError(
                f"model.retrieval must be none, vanilla or ptrag, not '{self.retrieval}'"
            )
        if self.hidden_dim % self.n_heads:
            raise ValueError(
                f"model.hidden_dim {self.hidden_dim} is not divisible by n_heads {self.n_heads}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ModelOutput:
    """Predicted cells and what the retrieval block decided."""

    predicted: torch.Tensor  # [B, S, G]
    gates: torch.Tensor | None = None  # [B, S, K] PT-RAG keep (1) / skip (0)


@dataclass
class LossOutput:
    """The loss to minimise and its named parts (logged alike for every variant)."""

    total: torch.Tensor
    energy: torch.Tensor
    sparsity: torch.Tensor


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, n_layers: int, dropout: float = 0.0
) -> nn.Sequential:
    """``n_layers`` linear layers with GELU between them."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(max(0, n_layers - 1)):
        layers += [nn.Linear(width, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class NoRetrieval(nn.Module):
    """STATE: the transformer input is the cell representation plus the perturbation's."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()

    def forward(
        self, cells: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor | None, **_: Any
    ) -> tuple[torch.Tensor, None]:
        return cells + query[:, None, :], None  # [B, S, H]


class VanillaRetrieval(nn.Module):
    """Cross-attention from every cell to its query's K retrieved candidates.

    The attended candidates are added to the STATE input (a residual), so each cell keeps its
    own basal state while reading the neighbours.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.candidate_projection = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.attention = nn.MultiheadAttention(
            config.hidden_dim, config.n_heads, dropout=config.dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(config.hidden_dim)

    def forward(
        self, cells: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor, **_: Any
    ) -> tuple[torch.Tensor, None]:
        state_input = cells + query[:, None, :]  # [B, S, H]
        memory = self.candidate_projection(candidates)  # [B, K, H]
        attended, _ = self.attention(self.norm(state_input), memory, memory, need_weights=False)
        return state_input + attended, None


class PTRAGRetrieval(nn.Module):
    """PT-RAG: a hard Gumbel-softmax gate per (cell, candidate) pair.

    For cell s and candidate k the scorer reads ``LayerNorm([h_s, q, c_k])`` through an MLP to two
    logits (skip, keep); the transformer input adds, over kept candidates, a projection of the
    same concatenation. Both are computed without materialising the [B, S, K, 3H] concatenation:

    - a linear map of a concatenation is the sum of three smaller maps (one per part), computed
      once per cell, per query and per candidate and broadcast over the pairs;
    - LayerNorm of the concatenation needs only its mean and variance, which follow from the
      per-part sums and sums of squares, so LayerNorm + first scorer layer is exact in that form.

    The kept-candidate sum is the STATE input plus ``n_kept * (P_h h_s + P_q q) + G @ (P_c C)``,
    so a cell whose gates all close falls back to STATE rather than to an empty input.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_dim
        self.tau = config.tau
        self.norm = nn.LayerNorm(3 * hidden)
        self.score_in = nn.Linear(3 * hidden, hidden)  # applied to the LayerNorm output
        self.score_out = nn.Sequential(nn.GELU(), nn.Linear(hidden, 2))  # -> (skip, keep)
        self.project = nn.Linear(3 * hidden, hidden, bias=False)

    def _scores(
        self, cells: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        hidden = cells.shape[-1]
        width = 3 * hidden
        # Statistics of the concatenation [h_s, q, c_k] from per-part sums.  [B, S, K]
        total = (
            cells.sum(-1)[:, :, None]
            + query.sum(-1)[:, None, None]
            + candidates.sum(-1)[:, None, :]
        )
        squares = (
            (cells**2).sum(-1)[:, :, None]
            + (query**2).sum(-1)[:, None, None]
            + (candidates**2).sum(-1)[:, None, :]
        )
        mean = total / width
        std = torch.sqrt(squares / width - mean**2 + self.norm.eps)
        # score_in(LayerNorm(v)) = W diag(gamma) (v - mean) / std + (W beta + b), with W diag(gamma) split in three.
        weight = self.score_in.weight * self.norm.weight  # [H1, 3H]
        w_cell, w_query, w_candidate = weight.split(hidden, dim=1)
        parts = (
            (cells @ w_cell.T)[:, :, None, :]  # [B, S, 1, H1]
            + (query @ w_query.T)[:, None, None, :]  # [B, 1, 1, H1]
            + (candidates @ w_candidate.T)[:, None, :, :]  # [B, 1, K, H1]
        )
        offset = self.score_in.weight @ self.norm.bias + self.score_in.bias  # [H1]
        first = (parts - mean[..., None] * weight.sum(1)) / std[..., None] + offset  # [B, S, K, H1]
        return self.score_out(first)  # [B, S, K, 2]

    def forward(
        self,
        cells: torch.Tensor,
        query: torch.Tensor,
        candidates: torch.Tensor,
        gate_mode: GateMode = "deterministic",
        **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._scores(cells, query, candidates)  # [B, S, K, 2]
        if self.training or gate_mode == "sampled":
            gates = F.gumbel_softmax(logits, tau=self.tau, hard=True)[
                ..., 1
            ]  # [B, S, K], straight-through
        else:
            gates = (logits[..., 1] > logits[..., 0]).to(cells.dtype)  # argmax: deterministic
        p_cell, p_query, p_candidate = self.project.weight.split(cells.shape[-1], dim=1)
        kept = gates.sum(-1, keepdim=True)  # [B, S, 1]
        retrieved = (
            kept * (cells @ p_cell.T + (query @ p_query.T)[:, None, :])
            + gates @ (candidates @ p_candidate.T)  # [B, S, K] @ [B, K, H]
        )
        return cells + query[:, None, :] + retrieved, gates


_RETRIEVAL_BLOCKS: dict[str, type[nn.Module]] = {
    "none": NoRetrieval,
    "vanilla": VanillaRetrieval,
    "ptrag": PTRAGRetrieval,
}


class PerturbationModel(nn.Module):
    """Control cells + perturbation embedding (+ retrieved candidates) -> predicted cells."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        self.basal_encoder = mlp(config.n_genes, hidden, hidden, config.mlp_layers, config.dropout)
        # One encoder for the query and the candidates: both are perturbation embeddings.
        self.perturbation_encoder = mlp(
            config.embedding_dim, hidden, hidden, config.mlp_layers, config.dropout
        )
        self.batch_embedding = nn.Embedding(config.n_batches, hidden) if config.n_batches else None
        self.retrieval = _RETRIEVAL_BLOCKS[config.retrieval](config)
        layer = nn.TransformerEncoderLayer(
            hidden,
            config.n_heads,
            dim_feedforward=4 * hidden,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.decoder = mlp(hidden, hidden, config.n_genes, config.mlp_layers, config.dropout)

    def forward(
        self, batch: dict[str, torch.Tensor], gate_mode: GateMode = "deterministic"
    ) -> ModelOutput:
        control = batch[keys.CONTROL]  # [B, S, G]
        cells = self.basal_encoder(control)  # [B, S, H]
        if self.batch_embedding is not None:
            cells = cells + self.batch_embedding(batch[keys.BATCH_INDEX])
        query = self.perturbation_encoder(batch[keys.PERTURBATION])  # [B, H]
        candidates = None
        if self.config.retrieval != "none":
            candidates = self.perturbation_encoder(batch[keys.CANDIDATES])  # [B, K, H]
        transformer_input, gates = self.retrieval(cells, query, candidates, gate_mode=gate_mode)
        hidden = self.transformer(transformer_input)  # [B, S, H], bidirectional over the sentence
        predicted = F.relu(control + self.decoder(hidden))  # residual on the control input
        return ModelOutput(predicted=predicted, gates=gates)

    def loss(self, batch: dict[str, torch.Tensor], output: ModelOutput) -> LossOutput:
        """Mean energy distance over sentences (+ the PT-RAG gate sparsity penalty)."""
        energy = energy_distance(output.predicted, batch[keys.TARGET]).mean()
        sparsity = output.gates.mean() if output.gates is not None else energy.new_zeros(())
        total = (
            energy + self.config.sparsity_weight * sparsity if output.gates is not None else energy
        )
        return LossOutput(total=total, energy=energy, sparsity=sparsity)
