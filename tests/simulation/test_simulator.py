"""The demo simulator: layout of the real file, and the biology that makes the task meaningful."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ptrag_kedro.errors import ParameterError
from ptrag_kedro.simulation import (
    CONTROL_LABEL,
    SimulationConfig,
    gene_module_table,
    plan_screen,
    simulate_gene_embeddings,
    simulate_screen,
    write_screen_h5ad,
)


def _log_normalised(screen: ad.AnnData) -> np.ndarray:
    counts = screen.X.toarray()
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)


@pytest.fixture(scope="module")
def responses(tiny_config: SimulationConfig) -> tuple[dict, dict, pd.DataFrame]:
    """Mean log shifts vs same-line controls per (line, perturbation), and the gene table.

    Controls are split in two halves and every shift is measured against each half, so that two
    shifts compared with each other never share the same control-mean noise. The target's own
    gene is left out of comparisons (its knockdown is tested separately), and so are lowly
    expressed genes.
    """
    # The perturbation-specific biology, without the line-wide systematic shift (tested apart).
    config = SimulationConfig.from_params(
        {**tiny_config.to_dict(), "cells_per_perturbation": 120, "systematic_effect": 0.0}
    )
    plan = plan_screen(config)
    screen = simulate_screen(plan)
    expression = _log_normalised(screen)
    obs = screen.obs
    shifts = {}  # key -> (all cells vs control half 1, all cells vs control half 2)
    halves = {}  # key -> (first half vs control half 1, second half vs control half 2)
    for line in config.cell_lines:
        in_line = (obs["cell_line"] == line).to_numpy()
        controls = expression[in_line & (obs["gene"] == CONTROL_LABEL).to_numpy()]
        middle = len(controls) // 2
        control_means = controls[:middle].mean(axis=0), controls[middle:].mean(axis=0)
        for perturbation in obs.loc[in_line, "gene"].unique():
            if perturbation == CONTROL_LABEL:
                continue
            rows = expression[in_line & (obs["gene"] == perturbation).to_numpy()]
            half = len(rows) // 2
            key = (line, perturbation)
            shifts[key] = tuple(rows.mean(axis=0) - mean for mean in control_means)
            halves[key] = (
                rows[:half].mean(axis=0) - control_means[0],
                rows[half:].mean(axis=0) - control_means[1],
            )
    # Compare well-expressed genes only: at 0.2 counts per cell the rest is mostly sampling noise.
    genes = plan.genes.assign(
        expressed=np.asarray(
            screen.X[(obs["gene"] == CONTROL_LABEL).to_numpy()].mean(axis=0)
        ).ravel()
        >= 1.0
    )
    return shifts, halves, genes


def _drop(vectors: tuple[np.ndarray, ...], genes: pd.DataFrame, *targets: str) -> list[np.ndarray]:
    keep = genes["expressed"].to_numpy() & ~genes.index.isin(targets)
    return [vector[keep] for vector in vectors]


def _correlation(
    first: np.ndarray, second: np.ndarray, genes: pd.DataFrame, *targets: str
) -> float:
    """Pearson r of two shift vectors, leaving out the knocked-down genes themselves."""
    return float(np.corrcoef(*_drop((first, second), genes, *targets))[0, 1])


def test_layout_matches_replogle_nadig(tiny_config: SimulationConfig) -> None:
    screen = simulate_screen(tiny_config)
    assert sp.issparse(screen.X) and screen.X.dtype == np.float32
    assert set(screen.obs.columns) == {"gene", "cell_line", "gem_group"}
    assert set(screen.obs["cell_line"]) == {"k562", "rpe1", "jurkat", "hepg2"}
    counts = screen.X.data
    assert (counts >= 0).all() and np.array_equal(counts, np.round(counts))
    assert screen.var_names.is_unique and screen.obs_names.is_unique
    # gem groups are per line and there are several per line
    per_line = screen.obs.groupby("cell_line", observed=True)["gem_group"].nunique()
    assert (per_line == tiny_config.batches_per_line).all()
    for line, fraction in (
        screen.obs.groupby("cell_line", observed=True)["gene"]
        .apply(lambda genes: (genes == CONTROL_LABEL).mean())
        .items()
    ):
        assert 0.05 <= fraction <= 0.10, line


def test_on_target_knockdown_visible(tiny_config: SimulationConfig) -> None:
    screen = simulate_screen(tiny_config)
    counts = screen.X.toarray()
    normalised = counts / counts.sum(axis=1, keepdims=True)
    obs = screen.obs
    ratios = []
    for (line, target), group in obs.groupby(["cell_line", "gene"], observed=True):
        if target == CONTROL_LABEL:
            continue
        column = screen.var_names.get_loc(target)
        controls = ((obs["cell_line"] == line) & (obs["gene"] == CONTROL_LABEL)).to_numpy()
        if counts[controls, column].mean() < 0.5:
            continue  # too lowly expressed to measure a ratio
        perturbed = normalised[obs.index.get_indexer(group.index), column].mean()
        ratios.append(perturbed / normalised[controls, column].mean())
    assert len(ratios) >= 10
    # Knockdown removes 60-95 % of the target's mRNA: the median ratio is well below one half.
    assert np.median(ratios) < 0.4
    assert np.mean(np.asarray(ratios) < 0.7) > 0.8


def test_module_members_respond_alike(responses) -> None:
    shifts, _, genes = responses
    strong = [key for key in shifts if genes.loc[key[1], "effect_strength"] > 0.5]
    module = genes["module"]
    same, different = [], []
    for i, first in enumerate(strong):
        for second in strong[i + 1 :]:
            if first[0] != second[0] or module[first[1]] < 0 or module[second[1]] < 0:
                continue
            r = _correlation(shifts[first][0], shifts[second][1], genes, first[1], second[1])
            (same if module[first[1]] == module[second[1]] else different).append(r)
    assert len(same) > 5 and len(different) > 5
    assert np.mean(same) > 0.25
    assert np.mean(same) > np.mean(different) + 0.25


def test_cell_lines_differ(responses) -> None:
    shifts, halves, genes = responses
    strong = {
        key
        for key in shifts
        if genes.loc[key[1], "effect_strength"] > 0.5 and genes.loc[key[1], "module"] >= 0
    }
    across, within = [], []
    for line, perturbation in strong:
        first, second = halves[(line, perturbation)]
        within.append(_correlation(first, second, genes, perturbation))
        for other_line, other in strong:
            if other == perturbation and other_line > line:
                across.append(_correlation(first, halves[(other_line, other)][1], genes, other))
    assert len(across) > 5
    # The shared component makes lines alike, the line-specific one makes them differ beyond noise.
    # Same number of cells on both sides: the gap is the line-specific programme, not noise.
    assert 0.1 < np.mean(across) < np.mean(within) - 0.1


def test_some_perturbations_are_weak(responses) -> None:
    shifts, halves, genes = responses
    # The dot product of two independent halves' shifts estimates |true shift|^2 without noise.
    signal = np.array([np.dot(*_drop(halves[key], genes, key[1])) for key in shifts])
    weak = genes.loc[[key[1] for key in shifts], "effect_strength"].to_numpy() < 0.1
    assert weak.any() and (~weak).any()
    assert np.median(signal[weak]) < 0.3 * np.median(signal[~weak])


def test_systematic_shift_of_perturbed_cells(tiny_config: SimulationConfig) -> None:
    """Perturbed cells of a line share a shift from its controls; controls are untouched."""
    settings = {**tiny_config.to_dict(), "cells_per_perturbation": 120}
    without = simulate_screen(SimulationConfig.from_params({**settings, "systematic_effect": 0.0}))
    with_shift = simulate_screen(
        SimulationConfig.from_params({**settings, "systematic_effect": 1.0})
    )
    obs = with_shift.obs
    assert obs.equals(without.obs)
    is_control = (obs["gene"] == CONTROL_LABEL).to_numpy()
    assert (with_shift.X[is_control] != without.X[is_control]).nnz == 0
    assert (with_shift.X[~is_control] != without.X[~is_control]).nnz > 0

    def mean_pairwise_correlation(screen: ad.AnnData) -> float:
        """Between the shifts of different perturbations of one line (half the controls each)."""
        expression, values = _log_normalised(screen), []
        line = (obs["cell_line"] == "k562").to_numpy()
        controls = expression[line & is_control]
        halves = controls[: len(controls) // 2].mean(0), controls[len(controls) // 2 :].mean(0)
        names = [name for name in obs.loc[line, "gene"].unique() if name != CONTROL_LABEL]
        shifts = [expression[line & (obs["gene"] == name).to_numpy()].mean(0) for name in names]
        for i, first in enumerate(shifts):
            for second in shifts[i + 1 :]:
                values.append(np.corrcoef(first - halves[0], second - halves[1])[0, 1])
        return float(np.mean(values))

    # Without it, unrelated perturbations barely correlate; with it, they all share a direction.
    assert mean_pairwise_correlation(with_shift) > mean_pairwise_correlation(without) + 0.2


def test_same_seed_same_file(tmp_path: Path, tiny_config: SimulationConfig) -> None:
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    simulate_screen(tiny_config).write_h5ad(tmp_path / "a.h5ad")
    simulate_screen(tiny_config).write_h5ad(tmp_path / "b.h5ad")
    assert digest(tmp_path / "a.h5ad") == digest(tmp_path / "b.h5ad")
    other = SimulationConfig.from_params({**tiny_config.to_dict(), "seed": tiny_config.seed + 1})
    first, second = simulate_screen(other), simulate_screen(tiny_config)
    assert first.shape != second.shape or (first.X != second.X).nnz > 0


def test_streamed_file_equals_in_memory_screen(
    tmp_path: Path, tiny_config: SimulationConfig
) -> None:
    small_blocks = SimulationConfig.from_params({**tiny_config.to_dict(), "block_cells": 97})
    path = write_screen_h5ad(small_blocks, tmp_path / "streamed.h5ad")
    streamed = ad.read_h5ad(path)
    in_memory = simulate_screen(tiny_config)
    assert (streamed.X != in_memory.X).nnz == 0
    pd.testing.assert_frame_equal(streamed.obs, in_memory.obs)
    assert list(streamed.var_names) == list(in_memory.var_names)
    assert [p.name for p in tmp_path.iterdir()] == ["streamed.h5ad"]


def test_embeddings_reflect_modules_partly(tiny_config: SimulationConfig) -> None:
    config = SimulationConfig()  # the demo: 1,536-d, 12 modules
    genes = plan_screen(config).genes
    embeddings = simulate_gene_embeddings(config, genes)
    assert embeddings.shape == (config.n_genes, config.embedding_dim)
    assert list(embeddings.index) == list(genes.index)
    np.testing.assert_allclose(np.linalg.norm(embeddings.to_numpy(), axis=1), 1.0, rtol=1e-5)
    vectors = embeddings.to_numpy()[genes["perturbed"].to_numpy()]
    module = genes["module"].to_numpy()[genes["perturbed"].to_numpy()]
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    top = np.argsort(-similarity, axis=1)[:, :10]
    in_module = module >= 0
    precision = (module[top] == module[:, None])[in_module].mean()
    chance = np.mean([(module == m).sum() - 1 for m in module[in_module]]) / (len(module) - 1)
    # Informative (far above chance) but not perfect (noise, topics and misleading genes).
    assert precision > 3 * chance
    assert precision < 0.9
    table = gene_module_table(genes)
    assert list(table.columns[:2]) == ["symbol", "module"]
    assert list(table["symbol"]) == list(genes.index)
    np.testing.assert_array_equal(table["module"], genes["module"])
    # a misleading gene's embedding points at another module than its own
    misleading = table["misleading_embedding"].to_numpy()
    np.testing.assert_array_equal(
        misleading, (table["embedding_module"] != table["module"]).to_numpy()
    )
    fraction = misleading[table["module"].to_numpy() >= 0].mean()
    assert 0.5 * config.misleading_fraction < fraction < 2 * config.misleading_fraction


def test_config_rejects_unknown_and_bad_fields() -> None:
    with pytest.raises(ValueError, match="unknown field"):
        SimulationConfig.from_params({"n_cells": 5})
    with pytest.raises(ValueError, match="'control_fraction'"):
        SimulationConfig.from_params({"control_fraction": 1.5})


def test_interaction_off_is_the_screen_without_it(tiny_config: SimulationConfig) -> None:
    """Weight 0 gives the defaults' screen and embeddings bit for bit, whatever the other fields."""
    assert SimulationConfig().interaction_weight == 0.0  # off by default
    default = tiny_config
    off = SimulationConfig.from_params(
        {
            **tiny_config.to_dict(),
            "interaction_weight": 0.0,
            "interaction_topics": 7,
            "interaction_embedding_weight": 3.0,
        }
    )
    plans = [plan_screen(default), plan_screen(off)]
    screens = [simulate_screen(plan) for plan in plans]
    assert (screens[0].X != screens[1].X).nnz == 0
    pd.testing.assert_frame_equal(screens[0].obs, screens[1].obs)
    pd.testing.assert_frame_equal(screens[0].var, screens[1].var)
    assert screens[0].uns == screens[1].uns
    # The record of an off screen is that of the simulator without the interaction fields.
    assert not {name for name in screens[1].uns["simulation"]["config"] if "interaction" in name}
    old_columns = [
        "module",
        "embedding_module",
        "misleading_embedding",
        "effect_strength",
        "perturbed",
    ]
    assert list(plans[1].genes.columns) == [*old_columns, "interaction_topic"]
    pd.testing.assert_frame_equal(plans[0].genes[old_columns], plans[1].genes[old_columns])
    embeddings = [simulate_gene_embeddings(config, plans[0].genes) for config in (default, off)]
    np.testing.assert_array_equal(embeddings[0].to_numpy(), embeddings[1].to_numpy())


def test_main_stream_is_that_of_the_simulator_before_the_interaction(
    tiny_config: SimulationConfig,
) -> None:
    """The interaction draws from a stream of its own: today's labels, pinned.

    Digest of the tiny screen's obs and gene-table labels as the simulator wrote them before the
    interaction existed (integer and uniform draws only, so it does not depend on the platform's
    floating-point exp/log). A change here means every existing demo screen changed: update the
    digest only on purpose.
    """
    plan = plan_screen(tiny_config)
    columns = ["module", "embedding_module", "misleading_embedding", "perturbed"]
    text = plan.obs.to_csv() + plan.genes[columns].to_csv()
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "294a9f65e61105cf"


def test_interaction_moves_only_its_own_draws(tiny_config: SimulationConfig) -> None:
    """On, only module genes' groups and embeddings change; topics do not depend on the weight."""
    settings = {**tiny_config.to_dict(), "interaction_topics": 2}
    off_config = SimulationConfig.from_params(settings)
    on_config = SimulationConfig.from_params({**settings, "interaction_weight": 1.0})
    off_plan, on_plan = plan_screen(off_config), plan_screen(on_config)
    off, on = simulate_screen(off_plan), simulate_screen(on_plan)
    pd.testing.assert_frame_equal(off.obs, on.obs)
    pd.testing.assert_frame_equal(off_plan.genes, on_plan.genes)
    genes = on_plan.genes
    topic, module = genes["interaction_topic"].to_numpy(), genes["module"].to_numpy()
    np.testing.assert_array_equal(topic == -1, module == -1)
    assert set(topic[module >= 0]) == {0, 1}
    np.testing.assert_array_equal(gene_module_table(genes)["interaction_topic"], topic)
    changed = (off.X != on.X).tocsr()
    labels = on.obs["gene"].astype(str).to_numpy()
    from_module = np.isin(labels, genes.index[module >= 0])
    assert changed[~from_module].nnz == 0  # controls and background perturbations untouched
    assert changed[from_module].nnz > 0
    vectors = [
        simulate_gene_embeddings(config, genes).to_numpy() for config in (off_config, on_config)
    ]
    np.testing.assert_array_equal(vectors[0][module == -1], vectors[1][module == -1])
    assert not np.allclose(vectors[0][module >= 0], vectors[1][module >= 0])


def _pair_statistics(config: SimulationConfig, line: str = "hepg2") -> dict[str, float]:
    """Over pairs of strong module perturbations of one line: same (module, topic) vs same module.

    Shifts are noise-free (the plan's group log means minus the line's control log mean); the two
    targets' own columns are left out of each correlation.
    """
    plan = plan_screen(config)
    embeddings = simulate_gene_embeddings(config, plan.genes)
    first_rows = plan.obs.iloc[plan.group_starts]
    in_line = np.flatnonzero((first_rows["cell_line"] == line).to_numpy())
    labels = first_rows["gene"].astype(str).to_numpy()
    control = next(group for group in in_line if labels[group] == CONTROL_LABEL)
    genes = plan.genes
    names, shifts = [], []
    for group in in_line:
        name = labels[group]
        if name != CONTROL_LABEL and genes.loc[name, "module"] >= 0:
            if genes.loc[name, "effect_strength"] > 0.5:
                names.append(name)
                shifts.append(plan.group_log_means[group] - plan.group_log_means[control])
    module = genes.loc[names, "module"].to_numpy()
    topic = genes.loc[names, "interaction_topic"].to_numpy()
    vectors = embeddings.loc[names].to_numpy()
    columns = genes.index.get_indexer(names)
    same_topic: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if module[i] != module[j]:
                continue
            keep = np.ones(len(genes), dtype=bool)
            keep[[columns[i], columns[j]]] = False
            r = np.corrcoef(shifts[i][keep], shifts[j][keep])[0, 1]
            same_topic[bool(topic[i] == topic[j])].append((r, float(vectors[i] @ vectors[j])))
    pair, module_only = np.array(same_topic[True]), np.array(same_topic[False])
    assert len(pair) >= 20 and len(module_only) >= 20
    r_gap, cos_gap = pair.mean(axis=0) - module_only.mean(axis=0)
    return {"r_gap": float(r_gap), "cos_gap": float(cos_gap)}


def test_genes_sharing_module_and_topic_respond_alike() -> None:
    """On, a (module, topic) pair shares a programme and its embeddings are closer; off, not."""
    settings = {"systematic_effect": 0.0}  # the demo's sizes; the line-wide shift tested apart
    off = _pair_statistics(SimulationConfig.from_params(settings))
    on = _pair_statistics(SimulationConfig.from_params({**settings, "interaction_weight": 1.0}))
    # Off, the topic is invisible: same-topic pairs are ordinary same-module pairs.
    assert abs(off["r_gap"]) < 0.05
    assert on["r_gap"] > 0.2
    # The topic direction draws the pair together (off, the gap is seed noise of about +-0.03).
    assert on["cos_gap"] > off["cos_gap"] + 0.03


def test_interaction_is_not_additive_in_module_and_topic() -> None:
    """The pair's programme is what a sum of a module part and a topic part cannot fit.

    Least squares of the noise-free shifts of one line's module perturbations on one-hot module +
    one-hot topic (what a linear map of the embedding sees) against one-hot (module, topic): the
    extra share of variance explained by the pair is large only with the interaction on.
    """

    def extra_share(weight: float) -> float:
        config = SimulationConfig(systematic_effect=0.0, interaction_weight=weight)
        plan = plan_screen(config)
        first_rows = plan.obs.iloc[plan.group_starts]
        labels = first_rows["gene"].astype(str).to_numpy()
        in_line = np.flatnonzero((first_rows["cell_line"] == "k562").to_numpy())
        control = next(group for group in in_line if labels[group] == CONTROL_LABEL)
        genes = plan.genes
        rows = [
            g for g in in_line if labels[g] != CONTROL_LABEL and genes.loc[labels[g], "module"] >= 0
        ]
        names = labels[rows]
        strength = genes.loc[names, "effect_strength"].to_numpy()[:, None]
        shifts = np.stack([plan.group_log_means[g] - plan.group_log_means[control] for g in rows])
        shifts = shifts / strength  # the effect strength only scales a response
        shifts[np.arange(len(rows)), genes.index.get_indexer(names)] = 0.0  # knockdown column
        module = genes.loc[names, "module"].to_numpy()
        topic = genes.loc[names, "interaction_topic"].to_numpy()
        additive = np.hstack(
            [np.eye(config.n_modules)[module], np.eye(config.interaction_topics)[topic][:, 1:]]
        )
        pair = np.eye(config.n_modules * config.interaction_topics)[
            module * config.interaction_topics + topic
        ]
        total = ((shifts - shifts.mean(0)) ** 2).sum()

        def residual(design: np.ndarray) -> float:
            coefficients = np.linalg.lstsq(design, shifts, rcond=None)[0]
            return float(((shifts - design @ coefficients) ** 2).sum())

        return (residual(additive) - residual(pair)) / total

    off, on = extra_share(0.0), extra_share(1.0)
    assert on > 0.1
    assert on > 3 * off


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("interaction_topics", 0),
        ("interaction_topics", 2.5),
        ("interaction_topics", True),
        ("interaction_weight", -0.1),
        ("interaction_weight", float("nan")),
        ("interaction_weight", float("inf")),
        ("interaction_weight", "1"),
        ("interaction_embedding_weight", -1.0),
        ("interaction_embedding_weight", None),
    ],
)
def test_config_rejects_bad_interaction_fields(name: str, value: object) -> None:
    with pytest.raises(ParameterError, match=f"invalid value for '{name}'"):
        SimulationConfig.from_params({name: value})


def test_config_accepts_edge_interaction_fields() -> None:
    config = SimulationConfig.from_params(
        {"interaction_topics": 1, "interaction_weight": 0, "interaction_embedding_weight": 0}
    )
    assert config.interaction_topics == 1 and config.interaction_weight == 0
