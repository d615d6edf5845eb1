"""The set-to-set transformer: torch's encoder layer by default, the paper's Llama form in
conf/paper (parameter count held to arc-state's backbone)."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from ptrag_kedro.models import ModelConfig, PerturbationModel
from ptrag_kedro.models.backbone import SetTransformer
from tests.conftest import PROJECT_ROOT

B, S, H = 3, 7, 16


def _copy_torch_layer(ours: SetTransformer, theirs: nn.TransformerEncoder) -> None:
    with torch.no_grad():
        for mine, torchs in zip(ours.layers, theirs.layers, strict=True):
            mine.attention.qkv.weight.copy_(torchs.self_attn.in_proj_weight)
            mine.attention.qkv.bias.copy_(torchs.self_attn.in_proj_bias)
            mine.attention.out.weight.copy_(torchs.self_attn.out_proj.weight)
            mine.attention.out.bias.copy_(torchs.self_attn.out_proj.bias)
            mine.feed_forward.up.weight.copy_(torchs.linear1.weight)
            mine.feed_forward.up.bias.copy_(torchs.linear1.bias)
            mine.feed_forward.down.weight.copy_(torchs.linear2.weight)
            mine.feed_forward.down.bias.copy_(torchs.linear2.bias)
            for norm, torch_norm in (
                (mine.attention_norm, torchs.norm1),
                (mine.feed_forward_norm, torchs.norm2),
            ):
                norm.weight.copy_(torch_norm.weight)
                norm.bias.copy_(torch_norm.bias)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_default_layers_equal_torchs_encoder_layer(activation: str) -> None:
    """Same weights, same output as nn.TransformerEncoderLayer(norm_first=True): the form the
    project used before (and its parameter count)."""
    torch.manual_seed(0)
    theirs = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(
            H,
            4,
            dim_feedforward=4 * H,
            dropout=0.0,
            activation=activation,
            batch_first=True,
            norm_first=True,
        ),
        num_layers=2,
        enable_nested_tensor=False,
    ).eval()
    config = ModelConfig(
        n_genes=5, embedding_dim=3, hidden_dim=H, n_layers=2, n_heads=4, feed_forward=activation
    )
    ours = SetTransformer.from_config(config).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    _copy_torch_layer(ours, theirs)
    x = torch.randn(B, S, H)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def _paper_model() -> dict:
    path = PROJECT_ROOT / "conf" / "paper" / "parameters_training.yml"
    return yaml.safe_load(path.read_text())["model"]


def test_paper_backbone_has_arc_states_parameter_count() -> None:
    """arc-state's Llama backbone at the paper's settings (hidden 128, 8 layers, 12 heads x 58,
    SwiGLU 2,784, RMSNorm, no biases, final norm) has 11,405,440 parameters without token
    embeddings; per layer 3*128*696 + 696*128 (attention) + 3*128*2784 (SwiGLU) + 2*128 (norms),
    plus the final norm's 128."""
    config = ModelConfig(n_genes=2000, embedding_dim=1536, **_paper_model())
    transformer = SetTransformer.from_config(config)
    per_layer = 3 * 128 * 696 + 696 * 128 + 3 * 128 * 2784 + 2 * 128
    assert sum(p.numel() for p in transformer.parameters()) == 8 * per_layer + 128 == 11_405_440
    assert not any(name.endswith("bias") for name, _ in transformer.named_parameters())
    assert isinstance(transformer.final_norm, nn.RMSNorm)


def test_swiglu_rmsnorm_layer_equals_its_definition() -> None:
    """One Llama layer written out by hand: RMSNorm, attention of width heads x head_dim != H,
    SwiGLU; no position encoding, so permuting the cells permutes the output."""
    torch.manual_seed(1)
    transformer = SetTransformer(
        H,
        1,
        n_heads=3,
        head_dim=5,
        intermediate=24,
        feed_forward="swiglu",
        norm="rmsnorm",
        bias=False,
        final_norm=True,
    ).eval()
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.normal_(0, 0.3)
    layer = transformer.layers[0]
    x = torch.randn(B, S, H)

    def rms(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    normed = rms(x, layer.attention_norm.weight)
    w_q, w_k, w_v = layer.attention.qkv.weight.split(15)
    heads = [
        torch.softmax(
            (normed @ w_q[h * 5 : (h + 1) * 5].T)
            @ (normed @ w_k[h * 5 : (h + 1) * 5].T).mT
            / 5**0.5,
            dim=-1,
        )
        @ (normed @ w_v[h * 5 : (h + 1) * 5].T)
        for h in range(3)
    ]
    y = x + torch.cat(heads, dim=-1) @ layer.attention.out.weight.T
    w_gate, w_up = layer.feed_forward.up.weight.split(24)
    normed = rms(y, layer.feed_forward_norm.weight)
    y = y + (torch.nn.functional.silu(normed @ w_gate.T) * (normed @ w_up.T)) @ (
        layer.feed_forward.down.weight.T
    )
    expected = rms(y, transformer.final_norm.weight)
    torch.testing.assert_close(transformer(x), expected, rtol=1e-5, atol=1e-5)
    order = torch.randperm(S)
    torch.testing.assert_close(transformer(x[:, order]), expected[:, order], rtol=1e-5, atol=1e-5)


def test_paper_model_trains_one_step() -> None:
    """The paper's backbone inside the whole model: a forward and backward pass give gradients
    to every transformer weight."""
    config = ModelConfig(n_genes=12, embedding_dim=6, **{**_paper_model(), "n_layers": 2})
    model = PerturbationModel(config)
    batch = {
        "control": torch.rand(2, 4, 12),
        "target": torch.rand(2, 4, 12),
        "perturbation": torch.randn(2, 6),
    }
    model.loss(batch, model(batch)).total.backward()
    for name, parameter in model.transformer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_heads": 3}, "not divisible by n_heads 3"),
        ({"feed_forward": "swish"}, "model.feed_forward must be one of"),
        ({"norm": "batchnorm"}, "model.norm must be one of"),
        ({"head_dim": -1}, "head_dim and model.intermediate_dim must be >= 0"),
    ],
)
def test_backbone_options_are_checked(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(n_genes=5, embedding_dim=3, hidden_dim=16, **overrides)
    # with head_dim set, hidden need not divide: attention width 3 x 5 = 15
    config = ModelConfig(n_genes=5, embedding_dim=3, hidden_dim=16, n_heads=3, head_dim=5)
    assert SetTransformer.from_config(config).layers[0].attention.qkv.out_features == 3 * 15
