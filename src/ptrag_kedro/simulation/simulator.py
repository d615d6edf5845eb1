"""Simulated CRISPRi Perturb-seq screens in the layout of the Replogle-Nadig file.

The biology is built so that the prediction task is meaningful but not trivially solvable:

- genes fall into functional modules; knocking down a module member shifts expression (log
  scale) along its module's response programme, so members of one module respond alike;
- every programme has a component shared by all cell lines and a line-specific one, so the same
  knockdown differs between lines; perturbation strength also varies a little per line;
- a fraction of perturbations has a weak or no effect;
- the target's own expression drops (on-target knockdown);
- counts are negative binomial around the means, with per-cell library sizes and per-batch
  (``gem_group``) shifts; about ``control_fraction`` of each line's cells are controls;
- optionally (``interaction_weight > 0``) a non-linear, local part: every module gene has an
  *interaction topic*, and the genes sharing both a module and a topic share a programme of their
  own, visible in their embeddings only as the sum of a module and a topic direction.

The matching gene-embedding table (GenePT's format: symbol -> 1,536 floats) reflects module
membership only partly: a shared offset (text embeddings are all alike), a module direction of
varying weight, noise, and some genes pointing at the wrong module (misleading neighbours).

Why the interaction: without it a gene's response is linear in its module's programme and its
embedding is linear in its module's direction, so a parametric map embedding -> response learns
what nearest-neighbour retrieval would retrieve. With it, a module-m gene of topic t adds the
programme ``R[m, t]`` (one per pair) to its response and the shared direction ``topic[t]`` to its
embedding. A linear map of the embedding sees module and topic additively (``a_m + b_t``) and
cannot produce a programme specific to the pair, while the pair's genes are each other's nearest
embedding neighbours and share it: the part of the response only retrieval can get.

Generation is two-phase: :func:`plan_screen` draws every per-gene, per-line and per-cell label
(small), then :func:`iter_count_blocks` draws counts block by block from per-group random
streams. The in-memory screen and the streamed h5ad are therefore identical for one seed, and a
1M-cell screen is written without ever holding a dense matrix.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag_kedro.errors import ParameterError

logger = logging.getLogger(__name__)

CONTROL_LABEL = "non-targeting"
NO_MODULE = -1


@dataclass(frozen=True)
class SimulationConfig:
    """Sizes and biology of a simulated screen (defaults: the built-in demo)."""

    seed: int = 0
    cell_lines: tuple[str, ...] = ("k562", "rpe1", "jurkat", "hepg2")
    n_genes: int = 1000
    n_modules: int = 12
    module_size: int = 40
    n_perturbations: int = 120
    #: probability that a perturbation is screened in a given line (each is in at least one)
    line_coverage: float = 0.8
    cells_per_perturbation: int = 40
    #: fraction of perturbations with very few cells (QC should drop them)
    sparse_group_fraction: float = 0.03
    control_fraction: float = 0.08
    batches_per_line: int = 2
    embedding_dim: int = 1536
    # --- expression and noise
    median_expression: float = 0.25
    expression_log_sd: float = 1.2
    line_baseline_sd: float = 0.4
    dispersion: float = 0.25
    library_size_log_sd: float = 0.3
    batch_effect_sd: float = 0.1
    # --- response programmes
    module_effect: float = 1.0
    downstream_fraction: float = 0.15
    line_specific_weight: float = 0.5
    gene_specific_weight: float = 0.2
    weak_fraction: float = 0.2
    knockdown_range: tuple[float, float] = (0.6, 0.95)
    #: line-wide shift of every perturbed cell against the line's controls (0: none); the sd
    #: of its log fold changes on the ``systematic_fraction`` of genes it touches
    systematic_effect: float = 0.8
    systematic_fraction: float = 0.3
    #: line-specific share of the systematic programme (the rest is shared by all lines)
    systematic_line_weight: float = 0.5
    # --- embeddings
    embedding_offset_weight: float = 1.2
    embedding_module_weight_range: tuple[float, float] = (0.3, 1.0)
    misleading_fraction: float = 0.12
    #: shared text "topics" unrelated to modules; they create plausible but wrong neighbours
    n_embedding_topics: int = 40
    embedding_topic_weight: float = 0.7
    # --- interaction (non-linear, local embedding -> response link; off at weight 0)
    #: number of interaction topics T; every module gene gets one (0..T-1), drawn from a stream
    #: of its own, so the topics never move any other draw (recorded as ``interaction_topic``)
    interaction_topics: int = 3
    #: weight of the (module, topic) programme R[m, t] in a module-m, topic-t gene's response
    #: (scaled by the gene's effect strength like the rest of it). R mixes a part shared by every
    #: line and a line-specific part with ``line_specific_weight``, like the module programmes;
    #: each part is sparse (``downstream_fraction`` of genes) with sd 0.8 * ``module_effect``, so
    #: weight 1 is about as strong as the module programme. 0: off, the screen, its embeddings
    #: and its ``uns`` record are exactly those of the simulator without the interaction.
    interaction_weight: float = 0.0
    #: weight of the topic's unit direction in the gene's embedding (added only while
    #: ``interaction_weight > 0``), before the final normalisation; 0.5 is below the module
    #: direction's weights (``embedding_module_weight_range``), so a gene's nearest neighbours are
    #: on average its (module, topic) pair, then its module, then its topic
    interaction_embedding_weight: float = 0.5
    # cells per block when streaming counts
    block_cells: int = 50_000

    def __post_init__(self) -> None:
        # Lists from YAML become tuples (the config is frozen and hashable), then every field is
        # checked: Kedro builds this from `params:simulation` before the run starts.
        for field_ in dataclasses.fields(self):
            value = getattr(self, field_.name)
            if isinstance(value, list):
                object.__setattr__(self, field_.name, tuple(value))
        self._check()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SimulationConfig:
        """Build from a parameters dict; unknown or ill-typed fields fail with their name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ParameterError(f"parameters 'simulation': unknown field(s) {unknown}")
        return cls(**params)

    def _check(self) -> None:
        """Check sizes and ranges; raise naming the field."""
        checks = {
            "cell_lines": len(self.cell_lines) >= 1
            and len(set(self.cell_lines)) == len(self.cell_lines),
            "n_genes": self.n_genes >= 10,
            "n_modules": self.n_modules >= 1,
            "module_size": self.module_size >= 2
            and self.n_modules * self.module_size <= self.n_genes,
            "n_perturbations": 1 <= self.n_perturbations <= self.n_genes,
            "line_coverage": 0.0 < self.line_coverage <= 1.0,
            "cells_per_perturbation": self.cells_per_perturbation >= 1,
            "sparse_group_fraction": 0.0 <= self.sparse_group_fraction < 1.0,
            "control_fraction": 0.0 < self.control_fraction < 1.0,
            "batches_per_line": self.batches_per_line >= 1,
            "embedding_dim": self.embedding_dim >= 2,
            "median_expression": self.median_expression > 0,
            "dispersion": self.dispersion > 0,
            "weak_fraction": 0.0 <= self.weak_fraction <= 1.0,
            "misleading_fraction": 0.0 <= self.misleading_fraction <= 1.0,
            "knockdown_range": 0.0 <= self.knockdown_range[0] <= self.knockdown_range[1] < 1.0,
            "systematic_effect": self.systematic_effect >= 0.0,
            "systematic_fraction": 0.0 <= self.systematic_fraction <= 1.0,
            "systematic_line_weight": 0.0 <= self.systematic_line_weight <= 1.0,
            "interaction_topics": _is_int(self.interaction_topics) and self.interaction_topics >= 1,
            "interaction_weight": _is_real(self.interaction_weight)
            and 0.0 <= self.interaction_weight < np.inf,
            "interaction_embedding_weight": _is_real(self.interaction_embedding_weight)
            and 0.0 <= self.interaction_embedding_weight < np.inf,
            "block_cells": self.block_cells >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ParameterError(
                    f"parameters 'simulation': invalid value for '{name}': {getattr(self, name)!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


#: Fields that change nothing while ``interaction_weight`` is 0 (left out of ``uns`` then).
INTERACTION_FIELDS = ("interaction_topics", "interaction_weight", "interaction_embedding_weight")


@dataclass
class ScreenPlan:
    """Everything about a screen except the counts: genes, programmes and per-cell labels."""

    config: SimulationConfig
    #: index symbol; module, embedding_module, misleading_embedding, effect_strength, perturbed,
    #: interaction_topic (-1 outside modules)
    genes: pd.DataFrame
    obs: pd.DataFrame  # one row per cell, in file order: gene, cell_line, gem_group
    group_starts: np.ndarray  # row where each (line, perturbation) group starts in obs
    group_log_means: list[np.ndarray] = field(repr=False)  # per group: [n_genes] log mean
    cell_batch_index: np.ndarray = field(repr=False)  # per cell: index into batch_shifts
    batch_shifts: np.ndarray = field(repr=False)  # [n_batches, n_genes] log shift per gem group


def _gene_symbols(n_genes: int) -> pd.Index:
    return pd.Index([f"SIM{index:05d}" for index in range(n_genes)], name="symbol")


def _draw_genes(config: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Module membership, embedding module (sometimes misleading) and perturbation strength."""
    symbols = _gene_symbols(config.n_genes)
    module = np.full(config.n_genes, NO_MODULE, dtype=np.int64)
    members = rng.permutation(config.n_genes)[: config.n_modules * config.module_size]
    module[members] = np.repeat(np.arange(config.n_modules), config.module_size)

    # Perturbations are mostly module members (essential-gene screens), some background genes.
    n_from_modules = min(len(members), round(0.9 * config.n_perturbations))
    background = np.flatnonzero(module == NO_MODULE)
    n_background = min(len(background), config.n_perturbations - n_from_modules)
    n_from_modules = config.n_perturbations - n_background
    perturbed = np.zeros(config.n_genes, dtype=bool)
    perturbed[rng.choice(members, n_from_modules, replace=False)] = True
    if n_background:
        perturbed[rng.choice(background, n_background, replace=False)] = True

    weak = rng.random(config.n_genes) < config.weak_fraction
    strength = np.where(
        weak, rng.uniform(0.0, 0.1, config.n_genes), rng.uniform(0.6, 1.4, config.n_genes)
    )

    misleading = (rng.random(config.n_genes) < config.misleading_fraction) & (module != NO_MODULE)
    embedding_module = module.copy()
    if config.n_modules > 1:
        # A misleading gene's text points at another module: shift by 1..n_modules-1.
        shift = rng.integers(1, config.n_modules, config.n_genes)
        embedding_module[misleading] = (module[misleading] + shift[misleading]) % config.n_modules
    return pd.DataFrame(
        {
            "module": module,
            "embedding_module": embedding_module,
            "misleading_embedding": misleading,
            "effect_strength": strength.astype(np.float32),
            "perturbed": perturbed,
        },
        index=symbols,
    )


def _sparse_programme(
    config: SimulationConfig, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """A sparse random log-fold-change vector over all genes (downstream targets)."""
    programme = np.zeros(config.n_genes)
    hits = rng.random(config.n_genes) < config.downstream_fraction
    programme[hits] = rng.normal(0.0, scale, hits.sum())
    return programme


def _draw_programmes(
    config: SimulationConfig, genes: pd.DataFrame, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shared [modules, genes] and line-specific [lines, modules, genes] response programmes."""
    module = genes["module"].to_numpy()
    shared = np.zeros((config.n_modules, config.n_genes))
    for index in range(config.n_modules):
        programme = _sparse_programme(config, rng, 0.5 * config.module_effect)
        own = module == index
        # The module's own genes move together (same sign, varying size): the pathway's signature.
        sign = rng.choice([-1.0, 1.0])
        programme[own] = sign * np.abs(rng.normal(0.8, 0.3, own.sum())) * config.module_effect
        shared[index] = programme
    line_specific = np.stack(
        [
            np.stack(
                [
                    _sparse_programme(config, rng, 0.8 * config.module_effect)
                    for _ in range(config.n_modules)
                ]
            )
            for _ in config.cell_lines
        ]
    )
    return shared, line_specific


@dataclass
class _Biology:
    """Everything drawn once per screen that the per-line groups are built from."""

    genes: pd.DataFrame
    shared: np.ndarray  # [modules, genes] programme shared by every line
    line_specific: np.ndarray  # [lines, modules, genes]
    gene_specific: np.ndarray  # [perturbed genes, genes]
    coverage: np.ndarray  # [perturbed genes, lines] screened there or not
    base_log_mean: np.ndarray  # [genes]
    systematic: np.ndarray  # [lines, genes] shift of every perturbed cell of the line
    systematic_scale: np.ndarray  # [perturbed genes, lines] its size per group
    #: [lines, modules, topics, genes] (module, topic) programmes; None while the interaction is off
    interaction: np.ndarray | None = None

    @property
    def perturbed_index(self) -> np.ndarray:
        return np.flatnonzero(self.genes["perturbed"].to_numpy())


def _draw_systematic(config: SimulationConfig, n_perturbed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-line systematic shift of perturbed cells against controls, and its size per group.

    Real screens show a line-wide difference between perturbed and control cells that most
    perturbations share (selection, stress, cell cycle: Viñas Torné et al. 2025, "Systema"), so
    the line's average perturbed cell predicts much of any one perturbation's shift. Drawn from a
    stream of its own, so ``systematic_effect: 0`` gives exactly the screen without it.
    """
    rng = np.random.default_rng([config.seed, 3])
    n_lines = len(config.cell_lines)

    def programme() -> np.ndarray:
        values = np.zeros(config.n_genes)
        hits = rng.random(config.n_genes) < config.systematic_fraction
        values[hits] = rng.normal(0.0, config.systematic_effect, hits.sum())
        return values

    shared = programme()
    weight = config.systematic_line_weight
    systematic = np.stack([(1.0 - weight) * shared + weight * programme() for _ in range(n_lines)])
    return systematic, rng.uniform(0.6, 1.0, (n_perturbed, n_lines))


def _interaction_rng(config: SimulationConfig) -> np.random.Generator:
    """The interaction's own stream (topics, then programmes): no other draw depends on it."""
    return np.random.default_rng([config.seed, 4])


def _draw_interaction(
    config: SimulationConfig, module: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Each gene's interaction topic (-1 outside modules) and the (module, topic) programmes.

    Topics are drawn for every gene first (whatever the weight), so a gene's topic depends only on
    the seed, ``n_genes`` and ``interaction_topics``. The programmes [lines, modules, topics,
    genes] are drawn only when ``interaction_weight > 0``: ``(1 - w) * shared + w * line``, with
    ``w = line_specific_weight``.
    """
    rng = _interaction_rng(config)
    n_topics = config.interaction_topics
    topic = rng.integers(0, n_topics, config.n_genes)
    topic = np.where(module != NO_MODULE, topic, NO_MODULE).astype(np.int64)
    if config.interaction_weight <= 0:
        return topic, None
    scale = 0.8 * config.module_effect

    def programmes() -> np.ndarray:  # [modules, topics, genes]
        return np.stack(
            [
                np.stack([_sparse_programme(config, rng, scale) for _ in range(n_topics)])
                for _ in range(config.n_modules)
            ]
        )

    shared = programmes()
    w = config.line_specific_weight
    interaction = np.stack([(1.0 - w) * shared + w * programmes() for _ in config.cell_lines])
    return topic, interaction


def _draw_biology(config: SimulationConfig, rng: np.random.Generator) -> _Biology:
    genes = _draw_genes(config, rng)
    topic, interaction = _draw_interaction(config, genes["module"].to_numpy())
    genes["interaction_topic"] = topic
    shared, line_specific = _draw_programmes(config, genes, rng)
    n_perturbed = int(genes["perturbed"].sum())
    gene_specific = np.stack([_sparse_programme(config, rng, 0.5) for _ in range(n_perturbed)])
    # Coverage: each perturbation is screened in a random subset of lines (at least one).
    n_lines = len(config.cell_lines)
    coverage = rng.random((n_perturbed, n_lines)) < config.line_coverage
    coverage[np.arange(n_perturbed), rng.integers(0, n_lines, n_perturbed)] = True
    base_log_mean = np.log(config.median_expression) + rng.normal(
        0.0, config.expression_log_sd, config.n_genes
    )
    systematic, systematic_scale = _draw_systematic(config, n_perturbed)
    return _Biology(
        genes,
        shared,
        line_specific,
        gene_specific,
        coverage,
        base_log_mean,
        systematic,
        systematic_scale,
        interaction,
    )


def _group_size(config: SimulationConfig, rng: np.random.Generator) -> int:
    quarter = config.cells_per_perturbation // 4
    n_cells = config.cells_per_perturbation + int(rng.integers(-quarter, quarter + 1))
    if rng.random() < config.sparse_group_fraction:
        n_cells = int(rng.integers(1, 4))
    return max(n_cells, 1)


def _line_groups(
    config: SimulationConfig,
    biology: _Biology,
    line_index: int,
    line_base: np.ndarray,
    rng: np.random.Generator,
) -> list[tuple[str, np.ndarray, int]]:
    """(label, log mean, cell count) of every group of one line, controls first."""
    genes = biology.genes
    module = genes["module"].to_numpy()
    topic = genes["interaction_topic"].to_numpy()
    strength = genes["effect_strength"].to_numpy(dtype=np.float64)
    groups: list[tuple[str, np.ndarray, int]] = []
    for row, gene_index in enumerate(biology.perturbed_index):
        if not biology.coverage[row, line_index]:
            continue
        n_cells = _group_size(config, rng)
        response = config.gene_specific_weight * biology.gene_specific[row]
        if module[gene_index] != NO_MODULE:
            m, w = module[gene_index], config.line_specific_weight
            response = (
                response + (1.0 - w) * biology.shared[m] + w * biology.line_specific[line_index, m]
            )
            if biology.interaction is not None:
                # The (module, topic) programme: shared only with the genes of the same pair.
                response = (
                    response
                    + config.interaction_weight
                    * (biology.interaction[line_index, m, topic[gene_index]])
                )
        # Strength varies a little per line, so lines differ in magnitude as well as direction.
        response = strength[gene_index] * rng.uniform(0.7, 1.3) * response
        systematic = biology.systematic_scale[row, line_index] * biology.systematic[line_index]
        log_mean = line_base + systematic + response
        knockdown = rng.uniform(*config.knockdown_range)
        log_mean[gene_index] += np.log1p(-knockdown)
        groups.append((genes.index[gene_index], log_mean, n_cells))
    n_perturbed_cells = sum(size for _, _, size in groups)
    n_control = max(
        1, round(config.control_fraction / (1 - config.control_fraction) * n_perturbed_cells)
    )
    return [(CONTROL_LABEL, line_base.copy(), n_control), *groups]


def _gem_numbers(config: SimulationConfig, n_batches: int) -> np.ndarray:
    """gem_group numbers unique per line (like the real file): line L's batches are L*100+1..."""
    return np.array(
        [
            (index // config.batches_per_line + 1) * 100 + index % config.batches_per_line + 1
            for index in range(n_batches)
        ]
    )


def plan_screen(config: SimulationConfig) -> ScreenPlan:
    """Draw genes, programmes, baselines and every cell's labels (no counts yet)."""
    rng = np.random.default_rng(config.seed)
    biology = _draw_biology(config, rng)
    n_batches = len(config.cell_lines) * config.batches_per_line
    batch_shifts = rng.normal(0.0, config.batch_effect_sd, (n_batches, config.n_genes))
    batch_shifts += rng.normal(0.0, config.batch_effect_sd, (n_batches, 1))  # per-batch depth

    obs_parts: list[pd.DataFrame] = []
    group_log_means: list[np.ndarray] = []
    group_sizes: list[int] = []
    batch_index_parts: list[np.ndarray] = []
    for line_index, line in enumerate(config.cell_lines):
        line_base = biology.base_log_mean + rng.normal(0.0, config.line_baseline_sd, config.n_genes)
        for label, log_mean, n_cells in _line_groups(config, biology, line_index, line_base, rng):
            group_log_means.append(log_mean)
            group_sizes.append(n_cells)
            batch_index_parts.append(
                line_index * config.batches_per_line
                + rng.integers(0, config.batches_per_line, n_cells)
            )
            obs_parts.append(pd.DataFrame({"gene": np.repeat(label, n_cells), "cell_line": line}))

    obs = pd.concat(obs_parts, ignore_index=True)
    cell_batch_index = np.concatenate(batch_index_parts)
    obs["gem_group"] = _gem_numbers(config, n_batches)[cell_batch_index]
    obs["gene"] = pd.Categorical(obs["gene"])
    obs["cell_line"] = pd.Categorical(obs["cell_line"], categories=list(config.cell_lines))
    obs.index = pd.Index([f"cell{index:07d}" for index in range(len(obs))])
    group_starts = np.concatenate([[0], np.cumsum(group_sizes)[:-1]]).astype(np.int64)
    return ScreenPlan(
        config, biology.genes, obs, group_starts, group_log_means, cell_batch_index, batch_shifts
    )


def _group_counts(plan: ScreenPlan, group: int) -> sp.csr_matrix:
    """Negative-binomial counts of one (line, perturbation) group, from its own random stream."""
    config = plan.config
    start = plan.group_starts[group]
    stop = plan.group_starts[group + 1] if group + 1 < len(plan.group_starts) else len(plan.obs)
    rng = np.random.default_rng([config.seed, 1, group])
    n_cells = stop - start
    library = np.exp(rng.normal(0.0, config.library_size_log_sd, (n_cells, 1)))
    log_mean = (
        plan.group_log_means[group][None, :] + plan.batch_shifts[plan.cell_batch_index[start:stop]]
    )
    mean = np.exp(log_mean) * library
    # Gamma-Poisson mixture = negative binomial with variance mean + dispersion * mean^2.
    rate = rng.gamma(1.0 / config.dispersion, mean * config.dispersion)
    counts = rng.poisson(rate).astype(np.float32)
    return sp.csr_matrix(counts)


def iter_count_blocks(plan: ScreenPlan) -> Iterator[sp.csr_matrix]:
    """Yield CSR count blocks of about ``block_cells`` rows, in obs order."""
    pending: list[sp.csr_matrix] = []
    pending_rows = 0
    for group in range(len(plan.group_starts)):
        block = _group_counts(plan, group)
        pending.append(block)
        pending_rows += block.shape[0]
        if pending_rows >= plan.config.block_cells:
            yield sp.vstack(pending, format="csr")
            pending, pending_rows = [], 0
    if pending:
        yield sp.vstack(pending, format="csr")


def _var(plan: ScreenPlan) -> pd.DataFrame:
    return pd.DataFrame(index=pd.Index(plan.genes.index.astype(str), name=None))


def _uns(plan: ScreenPlan) -> dict[str, Any]:
    config = plan.config.to_dict()
    if plan.config.interaction_weight <= 0:
        # Off, the interaction fields change nothing: the record is that of a screen without them.
        for name in INTERACTION_FIELDS:
            config.pop(name)
    return {"simulation": {"config": config, "control_label": CONTROL_LABEL}}


def simulate_screen(config: SimulationConfig | ScreenPlan) -> ad.AnnData:
    """The whole screen in memory: sparse float32 counts, obs ``gene``/``cell_line``/``gem_group``.

    Pass a :class:`ScreenPlan` to reuse one already drawn (it holds the gene table too).
    """
    plan = config if isinstance(config, ScreenPlan) else plan_screen(config)
    counts = sp.vstack(list(iter_count_blocks(plan)), format="csr")
    return ad.AnnData(X=counts, obs=plan.obs, var=_var(plan), uns=_uns(plan))


def write_screen_h5ad(config: SimulationConfig, path: str | Path) -> Path:
    """Stream a simulated screen to ``path`` block by block (for screens too big for memory).

    Written to a temporary file beside ``path`` and renamed on success.
    """
    from ptrag_kedro.datasets._files import atomic_write_path
    from ptrag_kedro.h5ad_writer import write_h5ad_in_blocks

    plan = plan_screen(config)
    path = Path(path)
    skeleton = ad.AnnData(obs=plan.obs, var=_var(plan), uns=_uns(plan))
    with atomic_write_path(path) as tmp_path:
        write_h5ad_in_blocks(tmp_path, skeleton, iter_count_blocks(plan), config.n_genes)
    logger.info(
        "Wrote simulated screen %s (%d cells x %d genes)", path, len(plan.obs), config.n_genes
    )
    return path


def simulate_gene_embeddings(
    config: SimulationConfig, genes: pd.DataFrame | None = None
) -> pd.DataFrame:
    """GenePT-format table (symbol -> ``embedding_dim`` floats, unit norm) for every gene.

    Geometry: ``offset_weight * shared offset + w_g * module direction + topics + noise``.
    ``w_g`` varies per gene, a ``misleading_fraction`` of genes use another module's direction,
    genes outside any module carry no module direction, and every gene mixes two random text
    topics unrelated to modules (plausible but wrong neighbours). While ``interaction_weight > 0``
    a module gene also carries ``interaction_embedding_weight * topic[t]`` for its interaction
    topic t (``genes["interaction_topic"]``; T unit directions shared by all modules, from the
    interaction's stream), so the genes of one (module, topic) pair are each other's nearest
    neighbours; at weight 0 the vectors are exactly those without the interaction.
    """
    if genes is None:
        genes = plan_screen(config).genes
    rng = np.random.default_rng([config.seed, 2])
    dim = config.embedding_dim
    offset = rng.normal(0.0, 1.0, dim)
    offset /= np.linalg.norm(offset)
    directions = rng.normal(0.0, 1.0, (config.n_modules, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    noise = rng.normal(0.0, 1.0 / np.sqrt(dim), (len(genes), dim))
    weight = rng.uniform(*config.embedding_module_weight_range, len(genes))
    embedding_module = genes["embedding_module"].to_numpy()
    in_module = embedding_module != NO_MODULE
    vectors = config.embedding_offset_weight * offset + noise
    if config.n_embedding_topics:
        topics = rng.normal(0.0, 1.0, (config.n_embedding_topics, dim))
        topics /= np.linalg.norm(topics, axis=1, keepdims=True)
        for _ in range(2):
            chosen = rng.integers(0, config.n_embedding_topics, len(genes))
            vectors += (
                config.embedding_topic_weight
                * rng.uniform(0.0, 1.0, (len(genes), 1))
                * topics[chosen]
            )
    vectors[in_module] += weight[in_module, None] * directions[embedding_module[in_module]]
    if config.interaction_weight > 0:
        if "interaction_topic" not in genes:
            raise ParameterError(
                "simulate_gene_embeddings: the genes table has no 'interaction_topic' column "
                "(pass plan_screen(config).genes)"
            )
        topic = genes["interaction_topic"].to_numpy()
        # A branch of the interaction's stream of its own, so the directions move no other draw.
        topic_rng = np.random.default_rng([config.seed, 4, 1])
        topic_directions = topic_rng.normal(0.0, 1.0, (config.interaction_topics, dim))
        topic_directions /= np.linalg.norm(topic_directions, axis=1, keepdims=True)
        has_topic = topic != NO_MODULE
        vectors[has_topic] += (
            config.interaction_embedding_weight * topic_directions[topic[has_topic]]
        )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pd.DataFrame(
        vectors.astype(np.float32), index=pd.Index(genes.index.astype(str), name="symbol")
    )


def gene_module_table(genes: pd.DataFrame) -> pd.DataFrame:
    """Ground truth gene -> module table for retrieval diagnostics (module and topic -1: none)."""
    table = genes.reset_index().rename(columns={"index": "symbol"})
    return table[
        [
            "symbol",
            "module",
            "embedding_module",
            "misleading_embedding",
            "effect_strength",
            "perturbed",
            "interaction_topic",
        ]
    ]
