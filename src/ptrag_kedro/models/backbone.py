"""STATE's set-to-set transformer: bidirectional self-attention over a sentence of cells.

One pre-norm layer covers both forms the project needs:

- the form it started from, torch's ``nn.TransformerEncoderLayer(norm_first=True)``: LayerNorm,
  a ReLU feed-forward of 4 x hidden, biases, and ``hidden / heads`` per head (the defaults; a test
  holds this layer to torch's on the same weights);
- the paper's and arc-state's Llama form: RMSNorm, a SwiGLU feed-forward with its own
  intermediate size, no biases, an attention width (heads x head_dim) independent of hidden, and
  a final RMSNorm (``conf/paper``; a test holds its parameter count to arc-state's backbone).

There is no position encoding: a sentence is a set (arc-state replaces Llama's rotary embedding
by the identity for the same reason). Attention goes through
``torch.nn.functional.scaled_dot_product_attention``, which picks a fused kernel where one exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptrag_kedro.models.config import FeedForwardKind, ModelConfig, NormKind

#: Llama's RMSNorm epsilon (Hugging Face's default, arc-state's setting)
RMS_EPS = 1e-6


def make_norm(kind: NormKind, width: int) -> nn.Module:
    if kind == "rmsnorm":
        return nn.RMSNorm(width, eps=RMS_EPS)
    return nn.LayerNorm(width)


class SelfAttention(nn.Module):
    """Multi-head self-attention whose width (heads x head_dim) need not equal hidden."""

    def __init__(
        self, hidden: int, n_heads: int, head_dim: int, bias: bool, dropout: float
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, head_dim, dropout
        # q, k and v in one matmul: rows ordered (q | k | v), each (head, head_dim)
        self.qkv = nn.Linear(hidden, 3 * n_heads * head_dim, bias=bias)
        self.out = nn.Linear(n_heads * head_dim, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, S, head_dim]
        attended = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.dropout if self.training else 0.0
        )  # bidirectional: no mask
        return self.out(attended.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    """``down(act(up(x)))``, or SwiGLU ``down(silu(gate(x)) * up(x))``."""

    def __init__(
        self, hidden: int, intermediate: int, kind: FeedForwardKind, bias: bool, dropout: float
    ) -> None:
        super().__init__()
        self.kind = kind
        # SwiGLU's gate and up projections in one matmul
        width = 2 * intermediate if kind == "swiglu" else intermediate
        self.up = nn.Linear(hidden, width, bias=bias)
        self.down = nn.Linear(intermediate, hidden, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            gate, up = self.up(x).chunk(2, dim=-1)
            inner = F.silu(gate) * up
        elif self.kind == "gelu":
            inner = F.gelu(self.up(x))
        else:
            inner = F.relu(self.up(x))
        return self.down(self.dropout(inner))


class TransformerLayer(nn.Module):
    """Pre-norm: ``x + attention(norm(x))``, then ``x + feed_forward(norm(x))``."""

    def __init__(
        self,
        hidden: int,
        n_heads: int,
        head_dim: int,
        intermediate: int,
        feed_forward: FeedForwardKind,
        norm: NormKind,
        bias: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.attention_norm = make_norm(norm, hidden)
        self.attention = SelfAttention(hidden, n_heads, head_dim, bias, dropout)
        self.feed_forward_norm = make_norm(norm, hidden)
        self.feed_forward = FeedForward(hidden, intermediate, feed_forward, bias, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x)))
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


class SetTransformer(nn.Module):
    """``n_layers`` :class:`TransformerLayer` s and an optional final norm: [B, S, H] -> same."""

    def __init__(
        self,
        hidden: int,
        n_layers: int,
        n_heads: int,
        head_dim: int,
        intermediate: int,
        feed_forward: FeedForwardKind = "relu",
        norm: NormKind = "layernorm",
        bias: bool = True,
        final_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(
                hidden, n_heads, head_dim, intermediate, feed_forward, norm, bias, dropout
            )
            for _ in range(n_layers)
        )
        self.final_norm = make_norm(norm, hidden) if final_norm else nn.Identity()

    @classmethod
    def from_config(cls, config: ModelConfig) -> SetTransformer:
        """The transformer a model's settings describe."""
        return cls(
            config.hidden_dim,
            config.n_layers,
            config.n_heads,
            head_dim=config.attention_head_dim,
            intermediate=config.feed_forward_dim,
            feed_forward=config.feed_forward,
            norm=config.norm,
            bias=config.transformer_bias,
            final_norm=config.final_norm,
            dropout=config.dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)
