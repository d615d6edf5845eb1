"""The torch module: shapes, the exact PT-RAG algebra, gradients through hard gates, energy distance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ptrag_kedro.models import ModelConfig, PerturbationModel, energy_distance
from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.module import PTRAGRetrieval

B, S, K, G, E = 3, 5, 4, 12, 8


def _batch(seed: int = 0, n_batches: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batch = {
        keys.CONTROL: torch.rand(B, S, G, generator=generator),
        keys.TARGET: torch.rand(B, S + 2, G, generator=generator),
        keys.PERTURBATION: torch.randn(B, E, generator=generator),
        keys.CANDIDATES: torch.randn(B, K, E, generator=generator),
    }
    if n_batches:
        batch[keys.BATCH_INDEX] = torch.randint(0, n_batches, (B, S), generator=generator)
    return batch


def _model(retrieval: str, **overrides) -> PerturbationModel:
    torch.manual_seed(0)
    config = ModelConfig(
        n_genes=G,
        embedding_dim=E,
        hidden_dim=16,
        n_layers=2,
        n_heads=2,
        retrieval=retrieval,
        **overrides,
    )
    return PerturbationModel(config)


@pytest.mark.parametrize("retrieval", ["none", "vanilla", "ptrag"])
def test_output_shapes(retrieval: str) -> None:
    model = _model(retrieval, n_batches=3)
    batch = _batch(n_batches=3)
    output = model(batch)
    assert output.predicted.shape == (B, S, G)
    assert (output.predicted >= 0).all()  # ReLU on expression
    assert (output.gates is not None) == (retrieval == "ptrag")
    if output.gates is not None:
        assert output.gates.shape == (B, S, K)
    loss = model.loss(batch, output)
    assert loss.total.ndim == 0 and torch.isfinite(loss.total)


def test_ptrag_scores_equal_the_naive_concatenation() -> None:
    torch.manual_seed(1)
    config = ModelConfig(n_genes=G, embedding_dim=E, hidden_dim=16, n_heads=2, retrieval="ptrag")
    block = PTRAGRetrieval(config)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
    cells, query, candidates = torch.randn(B, S, 16), torch.randn(B, 16), torch.randn(B, K, 16)
    concatenation = torch.cat(
        [
            cells[:, :, None, :].expand(B, S, K, 16),
            query[:, None, None, :].expand(B, S, K, 16),
            candidates[:, None, :, :].expand(B, S, K, 16),
        ],
        dim=-1,
    )
    naive = block.score_out(block.score_in(block.norm(concatenation)))
    torch.testing.assert_close(block._scores(cells, query, candidates), naive, rtol=1e-4, atol=1e-5)
    block.eval()
    fused, gates = block(cells, query, candidates)
    naive_input = (
        cells + query[:, None, :] + (gates[..., None] * block.project(concatenation)).sum(2)
    )
    torch.testing.assert_close(fused, naive_input, rtol=1e-4, atol=1e-5)


def test_gradients_reach_the_ptrag_scorer_through_hard_gates() -> None:
    model = _model("ptrag")
    model.train()
    batch = _batch()
    output = model(batch)
    assert set(output.gates.unique().tolist()) <= {0.0, 1.0}  # hard gates in the forward pass
    model.loss(batch, output).total.backward()
    scorer = model.retrieval.score_out[-1].weight.grad
    assert scorer is not None and scorer.abs().sum() > 0
    assert model.retrieval.score_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("retrieval", ["vanilla", "ptrag"])
def test_deterministic_inference_is_repeatable(retrieval: str) -> None:
    model = _model(retrieval).eval()
    batch = _batch()
    with torch.no_grad():
        first, second = model(batch), model(batch)
    torch.testing.assert_close(first.predicted, second.predicted, rtol=0, atol=0)
    if retrieval == "ptrag":
        sampled = [model(batch, gate_mode="sampled").gates for _ in range(5)]
        assert any(not torch.equal(sampled[0], other) for other in sampled[1:])


def _brute_force_energy(x: np.ndarray, y: np.ndarray) -> float:
    def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([np.linalg.norm(p - q) for p, q in itertools.product(a, b)]))

    return 2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)


def test_energy_distance_matches_brute_force() -> None:
    generator = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(4, 7, 5, generator=generator, dtype=torch.float64),
        torch.randn(4, 9, 5, generator=generator, dtype=torch.float64) + 0.5,
    )
    batched = energy_distance(x, y)
    for index in range(4):
        assert batched[index].item() == pytest.approx(
            _brute_force_energy(x[index].numpy(), y[index].numpy()), rel=1e-9
        )
    assert torch.allclose(energy_distance(x, x), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    shifted = energy_distance(x, x + 3.0)
    assert (shifted > batched.abs().max()).all()


def test_energy_distance_gradient_is_finite_for_identical_points() -> None:
    x = torch.ones(2, 4, 3, requires_grad=True)
    energy_distance(x, torch.zeros(2, 4, 3)).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("retrieval", ["none", "ptrag"])
def test_tiny_dataset_is_overfit(retrieval: str) -> None:
    model = _model(retrieval)
    batch = _batch(seed=5)
    # The perturbed cells are the controls shifted along a fixed gene programme.
    batch[keys.TARGET] = batch[keys.CONTROL] + torch.linspace(0, 2, G)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        optimiser.zero_grad()
        loss = model.loss(batch, model(batch))
        loss.total.backward()
        optimiser.step()
        losses.append(loss.energy.item())
    assert losses[-1] < losses[0] / 10


def test_config_rejects_unknown_retrieval() -> None:
    with pytest.raises(ValueError, match="model.retrieval must be"):
        ModelConfig(n_genes=3, embedding_dim=2, retrieval="knn")
