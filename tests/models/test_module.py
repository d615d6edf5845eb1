"""The torch module: the exact PT-RAG algebra, gates, the authors' forms, the response block."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ptrag_kedro.models import ModelConfig, PerturbationModel, energy_distance
from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.module import PTRAGRetrieval, VanillaRetrieval

B, S, K, R, G, E, H = 3, 5, 4, 6, 12, 8, 16


def _batch(seed: int = 0, n_batches: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, R, dtype=torch.bool)
    mask[0, -2:] = False  # a query with two empty response slots
    batch = {
        keys.CONTROL: torch.rand(B, S, G, generator=generator),
        keys.TARGET: torch.rand(B, S + 2, G, generator=generator),
        keys.PERTURBATION: torch.randn(B, E, generator=generator),
        keys.CANDIDATES: torch.randn(B, K, E, generator=generator),
        keys.RESPONSES: torch.randn(B, R, G, generator=generator),
        keys.RESPONSE_FEATURES: torch.rand(B, R, keys.N_RESPONSE_FEATURES, generator=generator),
        keys.RESPONSE_MASK: mask,
    }
    if n_batches:
        batch[keys.BATCH_INDEX] = torch.randint(0, n_batches, (B, S), generator=generator)
    return batch


def _config(retrieval: str, **overrides) -> ModelConfig:
    settings = {"hidden_dim": H, "n_layers": 2, "n_heads": 2, "retrieval": retrieval}
    return ModelConfig(n_genes=G, embedding_dim=E, **{**settings, **overrides})


def _model(retrieval: str, **overrides) -> PerturbationModel:
    torch.manual_seed(0)
    return PerturbationModel(_config(retrieval, **overrides))


def _ptrag_block(**overrides) -> PTRAGRetrieval:
    torch.manual_seed(1)
    block = PTRAGRetrieval(_config("ptrag", **overrides))
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
    return block


def _concatenation(cells, query, candidates) -> torch.Tensor:
    return torch.cat(
        [
            cells[:, :, None, :].expand(B, S, K, H),
            query[:, None, None, :].expand(B, S, K, H),
            candidates[:, None, :, :].expand(B, S, K, H),
        ],
        dim=-1,
    )


def _parts(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, S, H, generator=generator),
        torch.randn(B, H, generator=generator),
        torch.randn(B, K, H, generator=generator),
    )


@pytest.mark.parametrize("projection", ["layernorm", "raw"])
@pytest.mark.parametrize("form", ["replace", "residual"])
def test_ptrag_equals_the_direct_concatenation(projection: str, form: str) -> None:
    """Scores, logit scaling, gates and the gated sum against the [B, S, K, 3H] computation."""
    block = _ptrag_block(gate_projection=projection, retrieval_form=form, gate_inference="expected")
    block.eval()
    cells, query, candidates = _parts()
    logits, projected = block.direct_parts(cells, query, candidates)  # [B, S, K, 2 / H]
    concatenation = _concatenation(cells, query, candidates)  # the direct form, written out
    normalised = block.norm(concatenation)
    by_hand = block.score_out(block.score_in(normalised))
    torch.testing.assert_close(logits, by_hand / by_hand.std(dim=(1, 2, 3), keepdim=True))
    by_hand = block.project(normalised if projection == "layernorm" else concatenation)
    torch.testing.assert_close(projected, by_hand)
    gates = torch.sigmoid(logits[..., 1] - logits[..., 0])
    expected = (gates[..., None] * projected).sum(2)
    if form == "residual":
        expected = expected + cells + query[:, None, :]
    output = block(cells, query, {keys.CANDIDATES: candidates}, encode=lambda x: x)
    torch.testing.assert_close(output.gates, gates, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.transformer_input, expected, rtol=1e-4, atol=1e-4)


def test_ptrag_logit_scaling_scopes() -> None:
    logits = torch.randn(B, S, K, 2) * torch.tensor([1.0, 10.0, 100.0])[:, None, None, None]
    per_sentence = _ptrag_block(gate_logit_norm="sentence_std")._scale(logits)
    assert torch.allclose(per_sentence.std(dim=(1, 2, 3)), torch.ones(B), atol=1e-5)
    per_batch = _ptrag_block(gate_logit_norm="batch_std")._scale(logits)
    assert per_batch.std().item() == pytest.approx(1.0, abs=1e-5)
    # Per batch, the big sentence dominates the scale; per sentence, each gets its own.
    assert per_batch[0].std() < 0.1
    assert torch.equal(_ptrag_block(gate_logit_norm="none")._scale(logits), logits)


def test_sampled_gates_follow_the_gumbel_softmax_law_and_are_seeded() -> None:
    """keep iff d + Logistic > 0: P(keep) = sigmoid(d), as a hard Gumbel-softmax over 2 logits."""
    block = _ptrag_block(gate_inference="sampled").eval()
    difference = torch.linspace(-3, 3, 7)[:, None].expand(7, 20_000)
    gates = block._gates(difference, torch.Generator().manual_seed(0))
    assert set(gates.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(gates.mean(1), torch.sigmoid(difference[:, 0]), atol=0.01, rtol=0)
    again = block._gates(difference, torch.Generator().manual_seed(0))
    other = block._gates(difference, torch.Generator().manual_seed(1))
    assert torch.equal(gates, again) and not torch.equal(gates, other)
    # torch's own hard Gumbel-softmax keeps at the same rate
    logits = torch.stack([torch.zeros_like(difference), difference], dim=-1)
    reference = torch.nn.functional.gumbel_softmax(logits, tau=0.5, hard=True)[..., 1]
    torch.testing.assert_close(reference.mean(1), gates.mean(1), atol=0.015, rtol=0)


def test_gate_inference_modes() -> None:
    difference = torch.tensor([[-2.0, -0.1, 0.3, 4.0]])
    expected = _ptrag_block(gate_inference="expected").eval()._gates(difference, None)
    torch.testing.assert_close(expected, torch.sigmoid(difference))
    argmax = _ptrag_block(gate_inference="argmax").eval()._gates(difference, None)
    assert argmax.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_gradients_reach_the_ptrag_scorer_through_hard_gates() -> None:
    model = _model("ptrag").train()
    batch = _batch()
    output = model(batch)
    assert set(output.gates.unique().tolist()) <= {0.0, 1.0}  # hard gates in the forward pass
    model.loss(batch, output).total.backward()
    assert model.retrieval.score_out[-1].weight.grad.abs().sum() > 0
    assert model.retrieval.score_in.weight.grad.abs().sum() > 0


def test_sampled_inference_is_reproducible_with_a_generator() -> None:
    model = _model("ptrag").eval()
    batch = _batch()
    with torch.no_grad():
        runs = [model(batch, torch.Generator().manual_seed(seed)).predicted for seed in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("form", ["replace", "residual"])
def test_vanilla_equals_single_head_attention(form: str) -> None:
    torch.manual_seed(3)
    block = VanillaRetrieval(_config("vanilla", retrieval_form=form))
    cells, query, _ = _parts()
    raw = torch.randn(B, K, E)
    state = cells + query[:, None, :]
    memory = block.candidate_projection(raw)
    weights = torch.zeros(B, S, K)
    for b, s, k in itertools.product(range(B), range(S), range(K)):
        weights[b, s, k] = block.query_projection(state[b, s]) @ block.key_projection(memory[b, k])
    attended = torch.softmax(weights / math.sqrt(H), dim=-1) @ block.value_projection(memory)
    output = block(cells, query, {keys.CANDIDATES: raw}, encode=lambda x: x).transformer_input
    expected = attended if form == "replace" else state + attended
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("retrieval", ["vanilla", "ptrag", "response"])
def test_predictions_change_when_the_candidates_change(retrieval: str) -> None:
    """Change what sentences 0 and 2 retrieve: their predictions change, sentence 1's do not."""
    model = _model(retrieval).eval()
    batch = _batch()
    other = dict(batch)
    if retrieval == "response":
        other[keys.RESPONSES] = batch[keys.RESPONSES].clone()
        other[keys.RESPONSES][[0, 2]] += 1.0
        with torch.no_grad():  # its zero-initialised paths start as STATE; give them weight
            model.retrieval.output_gain.fill_(1.0)
            model.retrieval.input_projection.weight.normal_(0.0, 0.1)
    else:
        other[keys.CANDIDATES] = torch.flip(batch[keys.CANDIDATES], dims=[0])  # 0 <-> 2
    with torch.no_grad():
        first = model(batch, torch.Generator().manual_seed(0)).predicted
        second = model(other, torch.Generator().manual_seed(0)).predicted
    change = (first - second).abs().amax(dim=(1, 2))  # [B]
    assert change[0] > 1e-3 and change[2] > 1e-3
    torch.testing.assert_close(first[1], second[1])  # no sentence reads another's candidates
    # The same change does nothing to STATE, which retrieves nothing.
    state = _model("none").eval()
    with torch.no_grad():
        torch.testing.assert_close(state(batch).predicted, state(other).predicted)


def test_response_block_starts_as_state() -> None:
    """Zero-initialised input projection and output gain: the untrained model is STATE."""
    response, state = _model("response").eval(), _model("none").eval()
    shared = {k: v for k, v in response.state_dict().items() if not k.startswith("retrieval.")}
    state.load_state_dict(shared)
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(response(batch).predicted, state(batch).predicted)


def test_response_weights_skip_empty_slots_and_sum_to_at_most_one() -> None:
    model = _model("response").eval()
    batch = _batch()
    with torch.no_grad():
        gates = model(batch).gates[:, 0, :]  # [B, R]: the same for every cell of a sentence
    assert torch.all(gates[0, -2:] == 0)
    assert torch.all(gates.sum(1) < 1.0) and torch.all(gates[:, :-2] > 0)
    batch[keys.RESPONSE_MASK] = torch.zeros(B, R, dtype=torch.bool)
    with torch.no_grad():
        output = model(batch)
    assert torch.all(output.gates == 0) and output.extra_metrics["kept_fraction"] == 0


def test_response_dropout_hides_whole_kinds_in_training_only() -> None:
    model = _model("response", response_dropout=0.6)
    batch = _batch()
    kinds = torch.arange(R) % 3  # three kinds of slot
    batch[keys.RESPONSE_FEATURES] = (
        torch.nn.functional.one_hot(kinds, keys.N_RESPONSE_FEATURES)[None].expand(B, R, -1).float()
    )
    batch[keys.RESPONSE_MASK] = torch.ones(B, R, dtype=torch.bool)
    torch.manual_seed(0)
    with torch.no_grad():
        trained = [model.train()(batch).gates[:, 0, :] for _ in range(5)]  # [B, R] each
        evaluated = model.eval()(batch).gates[:, 0, :]
    assert torch.all(evaluated > 0)
    hidden = torch.cat([gates == 0 for gates in trained])  # [5B, R]
    assert hidden.any() and not hidden.all()
    for kind in range(3):  # a kind is hidden or kept as a whole
        columns = hidden[:, kinds == kind]
        assert torch.equal(columns.all(1), columns.any(1))


@pytest.mark.parametrize("gate", ["features", "content", "query"])
def test_response_gate_reads_what_it_says(gate: str) -> None:
    model = _model("response", response_gate=gate).eval()
    batch = _batch()
    changed = {**batch, keys.RESPONSES: batch[keys.RESPONSES] * 3.0}
    with torch.no_grad():
        unchanged = torch.equal(model(batch).gates, model(changed).gates)
    assert unchanged == (gate == "features")


@pytest.mark.parametrize("retrieval", ["none", "vanilla", "ptrag", "response"])
def test_loss_is_scaled_energy_plus_penalty(retrieval: str) -> None:
    model = _model(retrieval, n_batches=3, energy_scale=0.5, sparsity_weight=0.2)
    batch = _batch(n_batches=3)
    output = model(batch)
    assert output.predicted.shape == (B, S, G) and (output.predicted >= 0).all()
    loss = model.loss(batch, output)
    energy = energy_distance(output.predicted, batch[keys.TARGET]).mean()
    penalty = output.gates.mean() if retrieval == "ptrag" else 0.0
    torch.testing.assert_close(loss.total, 0.5 * energy + 0.2 * penalty)
    assert (output.gates is not None) == (retrieval in ("ptrag", "response"))
    # the penalty and the block's diagnostics reach the training plan as extra metrics
    expected = {"ptrag": {"kept_fraction", "sparsity"}, "response": {"kept_fraction"}}
    assert set(loss.extra_metrics) == expected.get(retrieval, set())


def test_abs_sparsity_sends_no_gradient_through_skipped_pairs() -> None:
    """The authors' ``abs(gates).mean()`` has the value of ``gates.mean()`` (hard gates are 0 or
    1), but a skipped pair's gate is exactly 0, where |x| has no gradient: only kept pairs are
    pushed to close. The mean penalty pushes every pair."""
    batch = _batch()
    gradients = {}
    for sparsity in ("mean", "abs"):
        model = _model("ptrag", sparsity=sparsity).train()
        torch.manual_seed(5)  # the same sampled gates for both
        output = model(batch)
        gates = output.gates
        gates.retain_grad()
        output.penalty.backward()
        gradients[sparsity] = (gates.detach(), gates.grad)
    (hard, mean_grad), (same_hard, abs_grad) = gradients["mean"], gradients["abs"]
    assert torch.equal(hard, same_hard) and 0 < hard.mean() < 1
    skipped = hard == 0
    assert torch.all(abs_grad[skipped] == 0) and torch.all(mean_grad[skipped] != 0)
    torch.testing.assert_close(abs_grad[~skipped], mean_grad[~skipped])


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


def test_energy_distance_gradient_is_finite_for_identical_points() -> None:
    x = torch.ones(2, 4, 3, requires_grad=True)
    energy_distance(x, torch.zeros(2, 4, 3)).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("retrieval", ["none", "ptrag", "response"])
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retrieval", "knn"),
        ("retrieval_form", "sum"),
        ("gate_inference", "mode"),
        ("gate_projection", "mlp"),
        ("gate_logit_norm", "max"),
        ("response_gate", "all"),
    ],
)
def test_config_names_the_bad_field(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"model.{field} must be one of"):
        ModelConfig(n_genes=3, embedding_dim=2, **{field: value})
