"""Differentially expressed genes by a real test, and the overlap of real and predicted ones.

The test is cell-eval's (through pdex): per gene, a two-sided Mann-Whitney U of the perturbed
cells against the controls (asymptotic, tie-corrected, with continuity correction),
Benjamini-Hochberg across genes, significant at FDR < ``fdr``; the significant genes are ranked
by |log2 fold change| of the means on the count scale, ``log2(expm1(mean_p) / expm1(mean_c))``
with no pseudocount (a gene off in one group ranks first).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import false_discovery_control, mannwhitneyu


def log2_fold_change(perturbed: np.ndarray, control: np.ndarray) -> np.ndarray:
    """Per gene, log2 of the ratio of mean expression on the count scale (log1p data in)."""
    numerator = np.expm1(perturbed.mean(axis=0))
    denominator = np.expm1(control.mean(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.log2(numerator / denominator)
    change[(numerator == 0) & (denominator == 0)] = 0.0
    return change


def de_genes(perturbed: np.ndarray, control: np.ndarray, fdr: float = 0.05) -> np.ndarray:
    """Indices of the genes differentially expressed between the two sets of cells (rows), most
    changed first (|log2 fold change|, descending; ties in gene order)."""
    constant = np.ptp(np.vstack([perturbed, control]), axis=0) == 0
    p_values = np.ones(perturbed.shape[1])
    varying = ~constant  # a gene equal in every cell is not tested (its p-value is 1)
    if varying.any():
        p_values[varying] = mannwhitneyu(
            perturbed[:, varying],
            control[:, varying],
            alternative="two-sided",
            method="asymptotic",
            use_continuity=True,
            axis=0,
        ).pvalue
    adjusted = false_discovery_control(np.nan_to_num(p_values, nan=1.0))
    significant = np.flatnonzero(adjusted < fdr)
    size = np.abs(log2_fold_change(perturbed, control))[significant]
    return significant[np.argsort(-size, kind="stable")]


def de_overlap_fdr(real_de: np.ndarray, predicted_de: np.ndarray) -> float:
    """Of the k genes the real test calls DE, the fraction among the predicted cells' top-k DE
    genes (cell-eval's ``overlap_at_N``). NaN when the real perturbation moves no gene."""
    k = len(real_de)
    if k == 0:
        return float("nan")
    return len(set(real_de.tolist()) & set(predicted_de[:k].tolist())) / k
