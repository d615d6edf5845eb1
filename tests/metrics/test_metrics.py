"""Every metric against an independent implementation and on cases with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import energy_distance as scipy_energy_distance
from scipy.stats import pearsonr, wasserstein_distance
from sklearn.metrics import mean_absolute_error, mean_squared_error

from ptrag_kedro.metrics import (
    METRICS,
    MetricInputs,
    de_overlap,
    energy,
    evaluate,
    mae,
    metric_registry,
    mmd,
    mse,
    paired_test,
    pearson_delta,
    pearson_delta_context,
    w1,
    w2,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(37, 4))
Y = RNG.normal(0.5, 1.5, size=(53, 4))


def test_w1_equals_scipy_per_pc() -> None:
    expected = np.mean([wasserstein_distance(X[:, pc], Y[:, pc]) for pc in range(4)])
    assert w1(X, Y) == pytest.approx(expected, rel=1e-12)


def _w2_by_replication(x: np.ndarray, y: np.ndarray) -> float:
    """Independent 1-D W2: repeat both samples to a common size, then pair the sorted values."""
    n, m = len(x), len(y)
    size = math.lcm(n, m)
    return float(
        np.sqrt(np.mean((np.repeat(np.sort(x), size // n) - np.repeat(np.sort(y), size // m)) ** 2))
    )


def test_w2_equals_an_independent_implementation() -> None:
    expected = np.mean([_w2_by_replication(X[:, pc], Y[:, pc]) for pc in range(4)])
    assert w2(X, Y) == pytest.approx(expected, rel=1e-12)


def test_shifted_gaussians_known_w1_w2() -> None:
    base = np.random.default_rng(1).normal(size=(20_000, 2))
    assert w1(base, base + 0.7) == pytest.approx(0.7, abs=1e-9)
    assert w2(base, base + 0.7) == pytest.approx(0.7, abs=1e-9)
    # N(0, 1) vs N(1, 2^2): W2^2 = 1^2 + (2 - 1)^2 = 2 per dimension
    other = np.random.default_rng(2).normal(1.0, 2.0, size=(20_000, 2))
    assert w2(base, other) == pytest.approx(math.sqrt(2), rel=0.02)


@pytest.mark.parametrize("metric", [w1, w2, energy, mmd])
def test_identical_sets_have_zero_distance(metric) -> None:
    assert metric(X, X.copy()) == pytest.approx(0.0, abs=1e-12)
    assert metric(X, Y) > 0


def test_energy_matches_scipy_in_1d_and_brute_force_in_nd() -> None:
    # scipy's energy_distance is the square root of 2E|X-Y| - E|X-X'| - E|Y-Y'|
    assert energy(X[:, :1], Y[:, :1]) == pytest.approx(
        scipy_energy_distance(X[:, 0], Y[:, 0]) ** 2, rel=1e-10
    )

    def mean_distance(a, b):
        return np.mean([np.linalg.norm(p - q) for p, q in itertools.product(a, b)])

    expected = 2 * mean_distance(X, Y) - mean_distance(X, X) - mean_distance(Y, Y)
    assert energy(X, Y) == pytest.approx(expected, rel=1e-10)


def test_mmd_matches_brute_force_with_the_real_cells_bandwidth() -> None:
    distances = [np.linalg.norm(p - q) for i, p in enumerate(X) for q in X[i + 1 :]]
    sigma = np.median(distances)  # from the real cells only: every method meets this kernel

    def kernel_mean(a, b):
        return np.mean(
            [math.exp(-np.sum((p - q) ** 2) / (2 * sigma**2)) for p, q in itertools.product(a, b)]
        )

    expected = kernel_mean(X, X) + kernel_mean(Y, Y) - 2 * kernel_mean(X, Y)
    assert mmd(X, Y) == pytest.approx(expected, rel=1e-10)
    # a far-away prediction does not widen the kernel it is judged with
    assert mmd(X, Y + 100.0) == pytest.approx(kernel_mean(X, X) + kernel_mean(Y, Y), rel=1e-9)


def test_expression_metrics_match_scipy_and_sklearn() -> None:
    rng = np.random.default_rng(3)
    control, real, predicted = rng.random(200), rng.random(200), rng.random(200)
    assert pearson_delta(real, predicted, control) == pytest.approx(
        pearsonr(real - control, predicted - control)[0], rel=1e-12
    )
    assert mse(real, predicted) == pytest.approx(mean_squared_error(real, predicted), rel=1e-12)
    assert mae(real, predicted) == pytest.approx(mean_absolute_error(real, predicted), rel=1e-12)
    assert pearson_delta(real, control, control) == 0.0  # predicting no change: 0, not NaN
    perturbed = rng.random(200)
    assert pearson_delta_context(real, predicted, perturbed) == pytest.approx(
        pearsonr(real - perturbed, predicted - perturbed)[0], rel=1e-12
    )
    # copying the line's average perturbed cell has no perturbation-specific signal
    assert pearson_delta_context(real, perturbed, perturbed) == 0.0


def test_de_overlap_known_cases() -> None:
    control = np.zeros(10)
    real = np.array([5, 4, 3, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    assert de_overlap(real, real, control, n_top=3) == 1.0
    assert (
        de_overlap(real, np.array([0, 0, 0, 5, 4, 3, 0, 0, 0, 0], dtype=float), control, n_top=3)
        == 0.0
    )
    assert de_overlap(
        real, np.array([-5, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=float), control, n_top=3
    ) == pytest.approx(1 / 3)
    assert de_overlap(real, control, control, n_top=3) == 0.0  # no predicted change, no DE genes
    # N capped at the 3 genes the real perturbation moves
    assert de_overlap(real, real, control, n_top=100) == 1.0
    assert np.isnan(de_overlap(control, real, control, n_top=3))  # nothing moved: undefined


def test_evaluate_runs_every_registered_metric_and_validates() -> None:
    genes = np.random.default_rng(4).random((30, 12))

    def inputs(**overrides) -> MetricInputs:
        settings = {
            "real_genes": genes[:10],
            "predicted_genes": genes[10:20],
            "control_genes": genes[20:],
            "perturbed_mean": genes[:20].mean(0),
            "real_pca": X[:10],
            "predicted_pca": Y[:10],
        }
        return MetricInputs(**{**settings, **overrides})

    values = evaluate(inputs(), METRICS)
    assert set(values) == set(METRICS) and all(np.isfinite(list(values.values())))
    # each value is its metric on the right inputs: sets in PC space, means over cells in genes
    real, predicted, control = genes[:10].mean(0), genes[10:20].mean(0), genes[20:].mean(0)
    expected = {
        "w1": w1(X[:10], Y[:10]),
        "w2": w2(X[:10], Y[:10]),
        "energy": energy(X[:10], Y[:10]),
        "mmd": mmd(X[:10], Y[:10]),
        "pearson_delta": pearson_delta(real, predicted, control),
        "pearson_delta_context": pearson_delta_context(real, predicted, genes[:20].mean(0)),
        "mse": mse(real, predicted),
        "mae": mae(real, predicted),
        "de_overlap@100": de_overlap(real, predicted, control, n_top=100),
    }
    assert values == pytest.approx(expected, rel=1e-12)
    assert len(set(np.round(list(expected.values()), 9))) == len(expected)  # no two alike
    assert METRICS["w1"].arrow == "↓" and METRICS["pearson_delta"].arrow == "↑"
    with pytest.raises(ValueError, match="gene dimensions differ"):
        inputs(predicted_genes=genes[10:20, :5])
    registry = metric_registry(n_pcs=7, de_top_n=20)
    assert "de_overlap@20" in registry and "first 7 PCs" in registry["w1"].description
    assert registry["de_overlap@20"].chance(200) == pytest.approx(0.1)
    assert registry["w1"].chance is None


def _exact_two_sided_p(differences: np.ndarray) -> float:
    """Signed-rank p-value by enumerating all 2^n sign assignments (no ties, no zeros)."""
    ranks = np.argsort(np.argsort(np.abs(differences))) + 1
    observed = ranks[differences > 0].sum()
    centre = ranks.sum() / 2
    sums = [
        sum(rank for rank, positive in zip(ranks, signs, strict=True) if positive)
        for signs in itertools.product([False, True], repeat=len(ranks))
    ]
    return float(np.mean([abs(total - centre) >= abs(observed - centre) for total in sums]))


def test_paired_test_matches_an_exact_enumeration() -> None:
    rng = np.random.default_rng(5)
    reference = rng.random(11)
    values = reference - 0.2 + rng.normal(0, 0.15, 11)  # mostly lower
    result = paired_test(values, reference, higher_is_better=False)
    assert result["p_value"] == pytest.approx(_exact_two_sided_p(values - reference), rel=1e-9)
    assert result["n_conditions"] == 11
    assert result["mean_difference"] == pytest.approx(np.mean(values - reference))
    assert result["better_fraction"] == pytest.approx(np.mean(values < reference))
    flipped = paired_test(values, reference, higher_is_better=True)
    assert flipped["better_fraction"] == pytest.approx(1 - result["better_fraction"])
    with_gaps = paired_test(np.append(values, np.nan), np.append(reference, 1.0), False)
    assert with_gaps["n_conditions"] == 11 and with_gaps["p_value"] == result["p_value"]
    assert paired_test(reference, reference, False)["p_value"] == 1.0
