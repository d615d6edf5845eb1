"""Nodes of the ``demo`` pipeline: simulate the built-in demo screen."""

from __future__ import annotations

import logging

import anndata as ad
import pandas as pd

from ptrag_kedro.simulation import (
    SimulationConfig,
    gene_module_table,
    plan_screen,
    simulate_gene_embeddings,
    simulate_screen,
)

logger = logging.getLogger(__name__)


def simulate_demo_screen(
    simulation: SimulationConfig,
) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """Simulate the demo screen, its GenePT-format embeddings and the gene -> module truth."""
    config = simulation
    plan = plan_screen(config)
    screen = simulate_screen(plan)
    genes = plan.genes
    embeddings = simulate_gene_embeddings(config, genes)
    logger.info(
        "Simulated demo screen: %d cells x %d genes, %d perturbations in %d cell lines",
        screen.n_obs,
        screen.n_vars,
        int(genes["perturbed"].sum()),
        len(config.cell_lines),
    )
    return screen, embeddings, gene_module_table(genes)
