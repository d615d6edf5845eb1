"""Every metric against an independent implementation and on cases with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import energy_distance as scipy_energy_distance
from scipy.stats import mannwhitneyu, pearsonr, wasserstein_distance
from sklearn.metrics import mean_absolute_error, mean_squared_error

from ptrag_kedro.metrics import (
    METRICS,
    MetricInputs,
    centroid_accuracy,
    de_genes,
    de_overlap_fdr,
    discrimination_l1,
    energy,
    evaluate,
    log2_fold_change,
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
from ptrag_kedro.metrics.paired import hierarchical_bootstrap, holm

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


def test_centroid_accuracy_against_a_loop_and_known_cases() -> None:
    rng = np.random.default_rng(6)
    centroids = rng.normal(size=(9, 15))
    predicted = centroids[4] + rng.normal(0, 0.8, 15)
    own_distance = np.linalg.norm(predicted - centroids[4])
    farther = sum(
        np.linalg.norm(predicted - centroids[j]) > own_distance for j in range(9) if j != 4
    )
    assert centroid_accuracy(predicted, centroids, 4) == pytest.approx(farther / 8)
    assert centroid_accuracy(centroids[2], centroids, 2) == 1.0  # the exact centroid
    # a prediction equally far from every centroid: ties count as failures (Systema's ">")
    square = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert centroid_accuracy(np.zeros(2), square, 0) == 0.0
    # no information: a prediction unrelated to the condition scores 0.5 on average
    scores = [
        centroid_accuracy(rng.normal(size=15), centroids, int(rng.integers(9))) for _ in range(4000)
    ]
    assert np.mean(scores) == pytest.approx(0.5, abs=0.02)
    assert np.isnan(centroid_accuracy(predicted, centroids[:1], 0))


def test_discrimination_l1_matches_cell_evals_definition() -> None:
    """1 - rank / N over the real shifts by L1 distance, the target gene left out."""
    rng = np.random.default_rng(7)
    real = rng.normal(size=(6, 10))
    predicted = real[3] + rng.normal(0, 0.7, 10)
    kept = [gene for gene in range(10) if gene != 2]
    distances = cdist(real[:, kept], predicted[None, kept], "cityblock")[:, 0]
    rank = int(np.argsort(distances, kind="stable").tolist().index(3))
    assert discrimination_l1(predicted, real, 3, exclude=2) == pytest.approx(1 - rank / 6)
    assert discrimination_l1(real[1], real, 1) == 1.0
    # the target gene is excluded: the knockdown itself does not tell perturbations apart
    target = real.copy()
    target[1, 5] = target[0, 5] + 100.0
    off_target = target[1].copy()
    off_target[5] = target[0, 5]  # right everywhere but on the target gene
    assert discrimination_l1(off_target, target, 1, exclude=5) == 1.0
    assert discrimination_l1(off_target, target, 1) < 1.0
    # chance: (N + 1) / 2N on average for an uninformative prediction
    scores = [
        discrimination_l1(rng.normal(size=10), real, int(rng.integers(6))) for _ in range(4000)
    ]
    assert np.mean(scores) == pytest.approx(7 / 12, abs=0.02)


def _benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH adjusted p-values by their definition: min over j >= i of p_(j) m / j."""
    m = len(p_values)
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    for position, index in enumerate(order):
        adjusted[index] = min(
            1.0, min(p_values[order[j]] * m / (j + 1) for j in range(position, m))
        )
    return adjusted


def test_de_genes_are_a_per_gene_wilcoxon_with_fdr_ranked_by_fold_change() -> None:
    rng = np.random.default_rng(8)
    control = np.log1p(rng.poisson(2.0, (120, 30)).astype(float))
    perturbed = np.log1p(rng.poisson(2.0, (40, 30)).astype(float))
    perturbed[:, :6] = np.log1p(rng.poisson(np.array([8, 0.3, 6, 0.5, 5, 4.0]), (40, 6)))
    perturbed[:, 29] = 0.0
    control[:, 29] = 0.0  # a gene off everywhere is not DE
    p_values = np.array(
        [
            mannwhitneyu(perturbed[:, g], control[:, g], method="asymptotic").pvalue
            if np.ptp(np.r_[perturbed[:, g], control[:, g]])
            else 1.0
            for g in range(30)
        ]
    )
    significant = np.flatnonzero(_benjamini_hochberg(p_values) < 0.05)
    means = np.expm1(perturbed.mean(0)), np.expm1(control.mean(0))
    size = np.abs(np.log2(means[0] / np.where(means[1] == 0, np.nan, means[1])))
    expected = sorted(significant, key=lambda g: -size[g])
    found = de_genes(perturbed, control)
    assert found.tolist() == expected and set(range(6)) <= set(found.tolist())
    assert 29 not in found and log2_fold_change(perturbed, control)[29] == 0.0
    # overlap: of the k real DE genes, the share among the predicted top-k
    assert de_overlap_fdr(found, found) == 1.0
    assert de_overlap_fdr(found, found[::-1][: len(found) - 2]) == pytest.approx(
        len(set(found[::-1][: len(found) - 2]) & set(found)) / len(found)
    )
    assert de_overlap_fdr(found, np.array([], dtype=int)) == 0.0
    assert np.isnan(de_overlap_fdr(np.array([], dtype=int), found))


def _inputs(**overrides) -> MetricInputs:
    genes = np.random.default_rng(4).random((30, 12))
    centroids = np.vstack([genes[:10].mean(0), np.random.default_rng(9).random((3, 12))])
    settings = {
        "real_genes": genes[:10],
        "predicted_genes": genes[10:20],
        "control_genes": genes[20:],
        "reference_mean": genes[:20].mean(0),
        "real_pca": X[:10],
        "predicted_pca": Y[:10],
        "centroids": centroids,
        "centroids_pca": np.random.default_rng(10).normal(size=(4, X.shape[1])),
        "own_centroid": 0,
        "test_deltas": centroids[[0, 2]] - genes[20:].mean(0),
        "own_test": 0,
        "real_de": np.array([3, 1, 7]),
        "target_gene": 5,
    }
    return MetricInputs(**{**settings, **overrides})


def test_evaluate_runs_every_registered_metric_and_validates() -> None:
    inputs = _inputs()
    values = evaluate(inputs, METRICS)
    assert set(values) == set(METRICS) and all(np.isfinite(list(values.values())))
    # each value is its metric on the right inputs: sets in PC space, means over cells in genes
    genes = np.random.default_rng(4).random((30, 12))
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
        "centroid_accuracy": centroid_accuracy(predicted, inputs.centroids, 0),
        "centroid_accuracy_pca": centroid_accuracy(Y[:10].mean(0), inputs.centroids_pca, 0),
        "discrimination_l1": discrimination_l1(predicted - control, inputs.test_deltas, 0, 5),
        "de_overlap_fdr": de_overlap_fdr(np.array([3, 1, 7]), de_genes(genes[10:20], genes[20:])),
    }
    assert values == pytest.approx(expected, rel=1e-12)
    assert METRICS["w1"].arrow == "↓" and METRICS["pearson_delta"].arrow == "↑"
    assert METRICS["centroid_accuracy"].label == "centroid_accuracy ↑"
    with pytest.raises(ValueError, match="gene dimensions differ"):
        _inputs(predicted_genes=genes[10:20, :5])
    with pytest.raises(ValueError, match="not among the line's centroids"):
        _inputs(own_test=2)
    registry = metric_registry(n_pcs=7, de_fdr=0.1)
    assert "first 7 PCs" in registry["w1"].description
    assert "FDR < 0.1" in registry["de_overlap_fdr"].description
    chance = {name: spec.chance(inputs) for name, spec in registry.items() if spec.chance}
    assert chance == {
        "pearson_delta": 0.0,
        "pearson_delta_context": 0.0,
        "centroid_accuracy": 0.5,
        "centroid_accuracy_pca": 0.5,
        "discrimination_l1": 3 / 4,  # (N + 1) / 2N with N = 2 test shifts
        "de_overlap_fdr": 3 / 12,  # k / G
    }
    assert registry["w1"].chance is None


def test_holm_matches_its_definition() -> None:
    rng = np.random.default_rng(11)
    p_values = np.concatenate([rng.uniform(0, 0.02, 5), rng.uniform(0, 1, 10), [np.nan]])
    adjusted = holm(p_values)
    finite = p_values[:-1]
    order = np.argsort(finite)
    m = len(finite)
    for position, index in enumerate(order):
        step_down = max(min(1.0, (m - j) * finite[order[j]]) for j in range(position + 1))
        assert adjusted[index] == pytest.approx(step_down)
    assert np.isnan(adjusted[-1])
    assert np.all(adjusted[:-1] >= finite)


def test_the_hierarchical_bootstrap_covers_and_counts_seed_variance() -> None:
    """Its 95 % interval covers the true difference about 95 % of the time; seeds that
    disagree widen it; a large effect reaches the smallest p-value, no effect does not."""
    rng = np.random.default_rng(12)
    covered = []
    for _ in range(150):
        condition = rng.normal(0, 1, (20, 1))
        ours = condition + 0.3 + rng.normal(0, 0.5, (20, 3))
        theirs = condition + rng.normal(0, 0.5, (20, 3))
        result = hierarchical_bootstrap(ours, theirs, margin=0.1, resamples=400, seed=1)
        covered.append(result.ci_low <= 0.3 <= result.ci_high)
    assert 0.88 <= np.mean(covered) <= 0.99
    condition = rng.normal(0, 1, (25, 1))
    calm = hierarchical_bootstrap(condition + 0.2 + rng.normal(0, 0.01, (25, 5)), condition, 0.1)
    noisy = hierarchical_bootstrap(condition + 0.2 + rng.normal(0, 1.0, (25, 5)), condition, 0.1)
    assert noisy.ci_high - noisy.ci_low > 3 * (calm.ci_high - calm.ci_low)
    assert calm.p_value == pytest.approx(2 / 10_001) and calm.n_conditions == 25
    assert calm.mean_difference == pytest.approx(0.2, abs=0.01)
    # equivalence: a tiny difference within a generous margin is a tie; not within a tight one
    tie = condition + rng.normal(0, 0.01, (25, 5))
    assert hierarchical_bootstrap(tie, condition, margin=0.05).tost_p < 0.01
    assert hierarchical_bootstrap(tie, condition, margin=1e-4).tost_p > 0.05
    # conditions missing on either side are dropped
    gappy = condition.copy()
    gappy[3] = np.nan
    assert hierarchical_bootstrap(tie, gappy, margin=0.05).n_conditions == 24
    # the draws depend on the seed alone: the same call gives the same interval
    repeated = hierarchical_bootstrap(tie, condition, margin=0.05, seed=3)
    assert repeated == hierarchical_bootstrap(tie, condition, margin=0.05, seed=3)


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
