"""The torch module: STATE's set-to-set backbone with a swappable retrieval block.

STATE, vanilla RAG, PT-RAG and response retrieval are one :class:`PerturbationModel` built with a
different ``retrieval`` in :class:`ModelConfig`; nothing else differs. Pure ``nn.Module``s: no
AnnData, files or trainer here. Shapes: B sentences, S cells per sentence, K candidates, R
response slots, G genes, E embedding dimension, H hidden width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.backbone import SetTransformer
from ptrag_kedro.models.config import ModelConfig
from ptrag_kedro.models.energy import energy_distance


@dataclass
class RetrievalOutput:
    """What a retrieval block hands back to the backbone."""

    transformer_input: torch.Tensor  # [B, S, H]
    gates: torch.Tensor | None = None  # [B, S, K] how much each cell used each candidate
    penalty: torch.Tensor | None = None  # scalar, weighted by sparsity_weight in the loss
    output_shift: torch.Tensor | None = None  # [B, G] added to the decoder's output
    #: scalars the block reports for the logs (e.g. ``kept_fraction``: how much was retrieved);
    #: the training plan logs every one as ``train_<name>`` / ``val_<name>`` without naming it
    extra_metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ModelOutput:
    """Predicted cells and what the retrieval block decided."""

    predicted: torch.Tensor  # [B, S, G]
    gates: torch.Tensor | None = None  # [B, S, K]
    penalty: torch.Tensor | None = None
    extra_metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    """The loss to minimise, the energy distance, and any other named parts (the gate penalty,
    the block's diagnostics), logged alike for every variant."""

    total: torch.Tensor
    energy: torch.Tensor  # the energy distance itself (not scaled)
    extra_metrics: dict[str, torch.Tensor] = field(default_factory=dict)


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


Encoder = Callable[[torch.Tensor], torch.Tensor]


class NoRetrieval(nn.Module):
    """STATE: the transformer input is the cell representation plus the perturbation's."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()

    def forward(
        self, cells: torch.Tensor, query: torch.Tensor, batch: dict, encode: Encoder, **_: Any
    ) -> RetrievalOutput:
        return RetrievalOutput(cells + query[:, None, :])  # [B, S, H]


class VanillaRetrieval(nn.Module):
    """Cross-attention from every cell to its query's K retrieved candidates (the authors' form).

    The candidates' GenePT vectors get their own projection; each cell's STATE input is the query
    of a single-head scaled dot-product attention over them. ``replace`` returns only the
    attention output (the cell's own state is dropped: the likely cause of the paper's "dramatic
    failure" of vanilla RAG); ``residual`` adds it to the STATE input.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_dim
        self.residual = config.retrieval_form == "residual"
        self.candidate_projection = nn.Linear(config.embedding_dim, hidden)
        self.query_projection = nn.Linear(hidden, hidden)
        self.key_projection = nn.Linear(hidden, hidden)
        self.value_projection = nn.Linear(hidden, hidden)

    def forward(
        self, cells: torch.Tensor, query: torch.Tensor, batch: dict, encode: Encoder, **_: Any
    ) -> RetrievalOutput:
        state_input = cells + query[:, None, :]  # [B, S, H]
        memory = self.candidate_projection(batch[keys.CANDIDATES])  # [B, K, H]
        scores = self.query_projection(state_input) @ self.key_projection(memory).transpose(1, 2)
        weights = torch.softmax(scores / math.sqrt(cells.shape[-1]), dim=-1)  # [B, S, K]
        attended = weights @ self.value_projection(memory)  # [B, S, H]
        return RetrievalOutput(state_input + attended if self.residual else attended)


def _logistic_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Difference of two standard Gumbels (a standard logistic), drawn from ``generator``."""
    uniform = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    uniform = uniform.clamp(1e-6, 1.0 - 1e-6)
    return torch.log(uniform) - torch.log1p(-uniform)


class PTRAGRetrieval(nn.Module):
    """PT-RAG: a hard Gumbel-softmax keep/skip gate per (cell, candidate) pair.

    For cell s and candidate k, ``v = LayerNorm([h_s, q, c_k])``; an MLP reads two logits (skip,
    keep) from ``v``, divided by their standard deviation; a hard Gumbel-softmax (temperature
    ``tau``, straight-through) gates the pair; the transformer input is the sum over kept
    candidates of ``Linear(v)`` (``replace``), or that sum added to the STATE input
    (``residual``). The [B, S, K, 3H] concatenation is never built:

    - a linear map of a concatenation is the sum of three smaller maps (one per part), computed
      once per cell, per query and per candidate and broadcast over the pairs;
    - LayerNorm of the concatenation needs only its mean and variance, which follow from the
      per-part sums and sums of squares;
    - a two-way softmax depends only on the keep-minus-skip logit difference, so sampling draws
      one logistic variable per pair rather than two Gumbels;
    - the gated sum of ``Linear(LayerNorm(v))`` over k splits the same way, with the gate divided
      by each pair's standard deviation: [B, S, K] weights times per-part maps.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_dim
        self.config = config
        self.norm = nn.LayerNorm(3 * hidden)
        self.score_in = nn.Linear(3 * hidden, hidden)  # applied to the LayerNorm output
        self.score_out = nn.Sequential(
            nn.GELU(), nn.Dropout(config.dropout), nn.Linear(hidden, 2)
        )  # -> (skip, keep)
        raw = config.gate_projection == "raw"
        self.project = nn.Linear(3 * hidden, hidden, bias=not raw)

    def _statistics(
        self, cells: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of every concatenation [h_s, q, c_k]: [B, S, K] each."""
        width = 3 * cells.shape[-1]
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
        return mean, torch.sqrt(squares / width - mean**2 + self.norm.eps)

    @staticmethod
    def _split_map(
        weight: torch.Tensor, cells: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``weight`` [O, 3H] applied to each part: [B, S, O], [B, O], [B, K, O]."""
        w_cell, w_query, w_candidate = weight.split(cells.shape[-1], dim=1)
        return cells @ w_cell.T, query @ w_query.T, candidates @ w_candidate.T

    def _logits(
        self, cells: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor, std: torch.Tensor
    ) -> torch.Tensor:
        """The scorer's (skip, keep) logits of every pair, before scaling: [B, S, K, 2]."""
        # score_in(LayerNorm(v)) = W diag(gamma) (v - mean) / std + (W beta + b). The pair's mean
        # is a sum of per-part sums over 3H, so "- mean x W diag(gamma) 1" folds into the three
        # per-part maps: the [B, S, K, H1] tensor is built by one broadcast sum and one addcmul.
        weight = self.score_in.weight * self.norm.weight  # [H1, 3H]
        row_sums = weight.sum(1) / weight.shape[1]  # [H1]
        by_cell, by_query, by_candidate = self._split_map(weight, cells, query, candidates)
        by_cell = by_cell - cells.sum(-1, keepdim=True) * row_sums
        by_query = by_query - query.sum(-1, keepdim=True) * row_sums
        by_candidate = by_candidate - candidates.sum(-1, keepdim=True) * row_sums
        centred = by_cell[:, :, None, :] + (by_query[:, None, :] + by_candidate)[:, None, :, :]
        offset = self.score_in.weight @ self.norm.bias + self.score_in.bias  # [H1]
        first = torch.addcmul(offset, centred, std.reciprocal()[..., None])  # [B, S, K, H1]
        return self.score_out(first)

    def _scale(self, logits: torch.Tensor) -> torch.Tensor:
        # "Scale to prevent saturation" (the authors): logits over their standard deviation.
        if self.config.gate_logit_norm == "batch_std":
            return logits / logits.std().clamp_min(1e-6)
        if self.config.gate_logit_norm == "sentence_std":
            return logits / logits.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return logits

    def _gates(self, difference: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Keep (1) / skip (0) per pair from the keep-minus-skip logit difference [B, S, K]."""
        mode = "sampled" if self.training else self.config.gate_inference
        if mode == "expected":
            return torch.sigmoid(difference)  # P(keep) of the Gumbel-softmax sample
        if mode == "argmax":
            return (difference > 0).to(difference.dtype)
        # Hard Gumbel-softmax over (skip, keep), straight-through: the forward pass is the hard
        # choice, the gradient that of the soft sample sigmoid((d + noise) / tau).
        noisy = difference + _logistic_noise(difference, generator)
        soft = torch.sigmoid(noisy / self.config.tau)
        hard = (noisy > 0).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly 0 or 1 forward; soft gradient

    def _kept_sum(
        self,
        gates: torch.Tensor,
        cells: torch.Tensor,
        query: torch.Tensor,
        candidates: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> torch.Tensor:
        """Sum over k of ``gates * project(v)`` without the [B, S, K, 3H] tensor: [B, S, H]."""
        if self.config.gate_projection == "raw":
            by_cell, by_query, by_candidate = self._split_map(
                self.project.weight, cells, query, candidates
            )
            kept = gates.sum(-1, keepdim=True)  # [B, S, 1]
            return kept * (by_cell + by_query[:, None, :]) + gates @ by_candidate
        weight = self.project.weight * self.norm.weight  # [H, 3H]
        by_cell, by_query, by_candidate = self._split_map(weight, cells, query, candidates)
        scaled = gates / std  # [B, S, K]
        offset = self.project.weight @ self.norm.bias + self.project.bias  # [H]
        return (
            scaled.sum(-1, keepdim=True) * (by_cell + by_query[:, None, :])
            + scaled @ by_candidate  # [B, S, K] @ [B, K, H]
            - (scaled * mean).sum(-1, keepdim=True) * weight.sum(1)
            + gates.sum(-1, keepdim=True) * offset
        )

    def direct_parts(
        self, cells: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The direct computation, materialising the [B, S, K, 3H] concatenation: the scaled
        (skip, keep) logits [B, S, K, 2] and each pair's projection [B, S, K, H]. Slow and
        memory-hungry; the reference the decomposed forward is tested and benchmarked against."""
        b, s, h = cells.shape
        k = candidates.shape[1]
        concatenation = torch.cat(
            [
                cells[:, :, None, :].expand(b, s, k, h),
                query[:, None, None, :].expand(b, s, k, h),
                candidates[:, None, :, :].expand(b, s, k, h),
            ],
            dim=-1,
        )  # [B, S, K, 3H]
        normalised = self.norm(concatenation)
        logits = self._scale(self.score_out(self.score_in(normalised)))
        raw = self.config.gate_projection == "raw"
        return logits, self.project(concatenation if raw else normalised)

    def forward(
        self,
        cells: torch.Tensor,
        query: torch.Tensor,
        batch: dict,
        encode: Encoder,
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> RetrievalOutput:
        candidates = encode(batch[keys.CANDIDATES])  # [B, K, H], the query's encoder
        mean, std = self._statistics(cells, query, candidates)
        logits = self._scale(self._logits(cells, query, candidates, std))
        gates = self._gates(logits[..., 1] - logits[..., 0], generator)  # [B, S, K]
        retrieved = self._kept_sum(gates, cells, query, candidates, mean, std)
        if self.config.retrieval_form == "residual":
            retrieved = cells + query[:, None, :] + retrieved
        # "abs" is the authors' abs(gates).mean(): the same value, but |x| has no gradient at
        # a hard skip (exactly 0), so only kept pairs are pushed to close.
        penalty = gates.abs().mean() if self.config.sparsity == "abs" else gates.mean()
        return RetrievalOutput(
            retrieved,
            gates=gates,
            penalty=penalty,
            extra_metrics={"kept_fraction": gates.detach().mean()},
        )


class ResponseRetrieval(nn.Module):
    """Response retrieval (ours): a soft gate over observed train responses, per sentence.

    Each slot holds a mean shift from controls of a train (cell line, perturbation), transferred
    to the query's line (see ``models/response_bank.py``), with features saying what it is. A scorer
    gives each slot a score (``response_gate``: from its features alone; or from
    ``LayerNorm([mean cell state, encoded response + features])``; or with the query embedding
    too); a softmax over the slots and a learned "nothing" option turns the scores into weights
    (the gates). The weighted mean shift enters twice, both initialised at zero so training
    starts from STATE: as a projection added to every cell's transformer input (the backbone can
    shape the distribution around it), and as a per-gene gain (``response_gain_init``) times the
    shift added to the decoder's output (a residual in gene space). In training,
    ``response_dropout`` hides each kind of slot from a sentence with that probability, so the
    model also learns to predict when a source is missing.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_dim
        self.gate_reads = config.response_gate
        self.slot_dropout = config.response_dropout
        self.feature_encoder = nn.Linear(keys.N_RESPONSE_FEATURES, hidden)
        if self.gate_reads == "features":
            self.scorer = mlp(hidden, hidden, 1, 2, config.dropout)
        else:
            parts = 3 if self.gate_reads == "query" else 2
            self.response_encoder = mlp(config.n_genes, hidden, hidden, 2, config.dropout)
            self.norm = nn.LayerNorm(parts * hidden)
            self.scorer = mlp(parts * hidden, hidden, 1, 2, config.dropout)
        self.nothing_score = nn.Parameter(torch.zeros(1))
        self.input_projection = nn.Linear(config.n_genes, hidden)
        self.output_gain = nn.Parameter(torch.full((config.n_genes,), config.response_gain_init))
        nn.init.zeros_(self.input_projection.weight)
        nn.init.zeros_(self.input_projection.bias)

    def _scores(self, cells: torch.Tensor, query: torch.Tensor, batch: dict) -> torch.Tensor:
        slots = self.feature_encoder(batch[keys.RESPONSE_FEATURES])  # [B, R, H]
        if self.gate_reads == "features":
            return self.scorer(slots)[..., 0]
        responses = batch[keys.RESPONSES]
        slots = slots + self.response_encoder(responses)
        parts = [cells.mean(1)]  # [B, H]: the sentence's basal population
        if self.gate_reads == "query":
            parts.append(query)
        context = [part[:, None, :].expand(-1, responses.shape[1], -1) for part in parts]
        return self.scorer(self.norm(torch.cat([*context, slots], dim=-1)))[..., 0]  # [B, R]

    def _mask(self, batch: dict) -> torch.Tensor:
        """Filled slots; in training, minus the kinds dropped for each sentence."""
        mask = batch[keys.RESPONSE_MASK]  # [B, R]
        if not (self.training and self.slot_dropout):
            return mask
        n_kinds = len(keys.RESPONSE_KINDS)
        kind = batch[keys.RESPONSE_FEATURES][..., :n_kinds].argmax(-1)  # [B, R]
        kept = torch.rand(len(mask), n_kinds, device=mask.device) >= self.slot_dropout
        return mask & torch.gather(kept, 1, kind)

    def forward(
        self, cells: torch.Tensor, query: torch.Tensor, batch: dict, encode: Encoder, **_: Any
    ) -> RetrievalOutput:
        responses = batch[keys.RESPONSES]  # [B, R, G]
        scores = self._scores(cells, query, batch).masked_fill(~self._mask(batch), -torch.inf)
        weights = torch.softmax(
            torch.cat([self.nothing_score.expand(len(scores), 1), scores], dim=1), dim=1
        )
        slot_weights = weights[:, 1:]  # [B, R]
        retrieved = torch.einsum("br,brg->bg", slot_weights, responses)  # [B, G]
        transformer_input = cells + query[:, None, :] + self.input_projection(retrieved)[:, None]
        return RetrievalOutput(
            transformer_input,
            gates=slot_weights[:, None, :].expand(-1, cells.shape[1], -1),
            output_shift=self.output_gain * retrieved,
            extra_metrics={"kept_fraction": (1.0 - weights[:, 0]).detach().mean()},
        )


RETRIEVAL_BLOCKS: dict[str, type[nn.Module]] = {
    "none": NoRetrieval,
    "vanilla": VanillaRetrieval,
    "ptrag": PTRAGRetrieval,
    "response": ResponseRetrieval,
}


class PerturbationModel(nn.Module):
    """Control cells + perturbation embedding (+ retrieved candidates) -> predicted cells."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        self.basal_encoder = mlp(config.n_genes, hidden, hidden, config.mlp_layers, config.dropout)
        # One encoder for the query and (PT-RAG) the candidates: both are perturbation embeddings.
        self.perturbation_encoder = mlp(
            config.embedding_dim, hidden, hidden, config.mlp_layers, config.dropout
        )
        self.batch_embedding = nn.Embedding(config.n_batches, hidden) if config.n_batches else None
        self.retrieval = RETRIEVAL_BLOCKS[config.retrieval](config)
        self.transformer = SetTransformer.from_config(config)
        self.decoder = mlp(hidden, hidden, config.n_genes, config.mlp_layers, config.dropout)

    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> ModelOutput:
        """Predicted cells; ``generator`` seeds PT-RAG's sampled gates (reproducible inference)."""
        control = batch[keys.CONTROL]  # [B, S, G]
        cells = self.basal_encoder(control)  # [B, S, H]
        query = self.perturbation_encoder(batch[keys.PERTURBATION])  # [B, H]
        retrieved = self.retrieval(
            cells, query, batch, self.perturbation_encoder, generator=generator
        )
        transformer_input = retrieved.transformer_input
        if self.batch_embedding is not None:  # after retrieval, as the authors add it
            transformer_input = transformer_input + self.batch_embedding(batch[keys.BATCH_INDEX])
        hidden = self.transformer(transformer_input)  # [B, S, H], bidirectional over the sentence
        change = self.decoder(hidden)  # [B, S, G]
        if retrieved.output_shift is not None:
            change = change + retrieved.output_shift[:, None, :]
        predicted = F.relu(control + change)  # residual on the control input
        return ModelOutput(
            predicted=predicted,
            gates=retrieved.gates,
            penalty=retrieved.penalty,
            extra_metrics=retrieved.extra_metrics,
        )

    def loss(self, batch: dict[str, torch.Tensor], output: ModelOutput) -> LossOutput:
        """``energy_scale`` x mean energy distance over sentences (+ the gate penalty)."""
        energy = energy_distance(output.predicted, batch[keys.TARGET]).mean()
        total = self.config.energy_scale * energy
        extra_metrics = dict(output.extra_metrics)
        if output.penalty is not None:
            total = total + self.config.sparsity_weight * output.penalty
            extra_metrics["sparsity"] = output.penalty.detach()
        return LossOutput(total=total, energy=energy, extra_metrics=extra_metrics)

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of parameters (those that get gradients, by default)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
