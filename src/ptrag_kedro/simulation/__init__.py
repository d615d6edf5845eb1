"""The built-in demo screen: a simulated CRISPRi Perturb-seq screen and its gene embeddings."""

from ptrag_kedro.simulation.simulator import (
    CONTROL_LABEL,
    SimulationConfig,
    gene_module_table,
    plan_screen,
    simulate_gene_embeddings,
    simulate_screen,
    write_screen_h5ad,
)

__all__ = [
    "CONTROL_LABEL",
    "SimulationConfig",
    "gene_module_table",
    "plan_screen",
    "simulate_gene_embeddings",
    "simulate_screen",
    "write_screen_h5ad",
]
