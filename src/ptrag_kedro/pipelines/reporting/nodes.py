"""Nodes of the ``reporting`` pipeline: predictions, baselines, metrics and the comparison.

Predictions hold predicted cells only (obs ``perturbation``, ``cell_line``, ``seed``, ``kind``);
the real and control cells they are compared with are the ``screen``'s. Every method predicts
from the same control cells (one random draw, ``reporting.seed``), so differences between
methods are not differences between control samples.
"""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge

from ptrag_kedro.metrics import METRICS, evaluate
from ptrag_kedro.models import ModelConfig, PerturbationModel
from ptrag_kedro.models.sentences import SentenceSampler
from ptrag_kedro.pipelines.ingestion.nodes import CONTROL, PROVENANCE_KEY, TEST, TRAIN
from ptrag_kedro.provenance import StaleArtefactError, require_same

logger = logging.getLogger(__name__)

BASELINES = ("control_mean", "perturbation_mean", "linear")
GATES_KEY = "gate_kept_fraction"


def _dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _test_sampler(
    screen: ad.AnnData,
    embeddings: pd.DataFrame,
    candidates: pd.DataFrame,
    split_manifest: dict[str, Any],
    cell_set_size: int,
    k: int,
    same_batch_controls: bool,
) -> SentenceSampler:
    return SentenceSampler(
        screen,
        embeddings,
        candidates if k else pd.DataFrame(),
        split=TEST,
        cell_set_size=cell_set_size,
        same_batch_controls=same_batch_controls,
        k=k,
        control_label=split_manifest["control_label"],
    )


def _predictions_anndata(
    blocks: list[np.ndarray], obs_rows: list[pd.DataFrame], screen: ad.AnnData
) -> ad.AnnData:
    obs = pd.concat(obs_rows, ignore_index=True)
    for column in ("perturbation", "cell_line", "kind"):
        obs[column] = pd.Categorical(obs[column])
    obs.index = obs.index.astype(str)
    return ad.AnnData(
        X=np.vstack(blocks).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=screen.var_names.copy()),
    )


def _block_obs(group: Any, n_cells: int, seed: int | str, kind: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "perturbation": group.perturbation,
            "cell_line": group.cell_line,
            "seed": int(seed),
            "kind": kind,
        },
        index=range(n_cells),
    )


def predict_test_cells(
    model: dict[str, Any],
    screen: ad.AnnData,
    perturbation_embeddings: pd.DataFrame,
    retrieval_candidates: pd.DataFrame,
    split_manifest: dict[str, Any],
    reporting: dict[str, Any],
) -> ad.AnnData:
    """Predicted cells for every test (cell line, perturbation), as many as the real ones.

    One block per training seed (obs ``seed``); gates are deterministic (argmax). For PT-RAG the
    fraction of cells whose gate kept each candidate is in ``uns["gate_kept_fraction"]``.
    """
    fingerprint = screen.uns[PROVENANCE_KEY]["fingerprint"]
    require_same(
        "the model",
        "screen",
        model["provenance"]["screen_fingerprint"],
        fingerprint,
        "kedro run --pipeline=training",
    )
    if model["genes"] != [str(gene) for gene in screen.var_names]:
        raise StaleArtefactError(
            "the model was trained on another gene order; retrain it with `kedro run --pipeline=training`"
        )
    config = ModelConfig(**model["config"])
    sampler = _test_sampler(
        screen,
        perturbation_embeddings,
        retrieval_candidates,
        split_manifest,
        int(model["cell_set_size"]),
        int(model["candidates_k"]),
        bool(reporting["same_batch_controls"]),
    )
    candidate_names = np.asarray(perturbation_embeddings.index)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    blocks, obs_rows, gate_rows = [], [], []
    for seed, state_dict in model["state_dicts"].items():
        module = PerturbationModel(config)
        module.load_state_dict(state_dict)
        module.to(device).eval()
        rng = np.random.default_rng(int(reporting["seed"]))  # the same controls for every method
        for index, group in enumerate(sampler.groups):
            batch, _ = sampler.group_sentences(index, rng)
            with torch.no_grad():
                output = module({key: value.to(device) for key, value in batch.items()})
            n_cells = len(group.cells)
            blocks.append(output.predicted.reshape(-1, config.n_genes)[:n_cells].cpu().numpy())
            obs_rows.append(_block_obs(group, n_cells, seed, "predicted"))
            if output.gates is not None:
                kept = (
                    output.gates.reshape(-1, output.gates.shape[-1])[:n_cells]
                    .float()
                    .mean(0)
                    .cpu()
                    .numpy()
                )
                gate_rows.append(
                    pd.DataFrame(
                        {
                            "seed": int(seed),
                            "cell_line": group.cell_line,
                            "perturbation": group.perturbation,
                            "rank": np.arange(len(kept)),
                            "candidate": candidate_names[group.candidate_rows],
                            "kept_fraction": kept,
                        }
                    )
                )
    predictions = _predictions_anndata(blocks, obs_rows, screen)
    predictions.uns["method"] = {"retrieval": config.retrieval}
    predictions.uns["provenance"] = dict(model["provenance"])
    if gate_rows:
        predictions.uns[GATES_KEY] = pd.concat(gate_rows, ignore_index=True)
    logger.info("Predicted %d cells for %d test conditions", predictions.n_obs, len(sampler.groups))
    return predictions


def _group_means(screen: ad.AnnData, split_manifest: dict[str, Any]) -> tuple[dict, dict]:
    """Mean expression of every (line, train perturbation) group and of every line's controls.

    Sums through a sparse indicator matrix, so a large screen is never made dense.
    """
    obs = screen.obs
    line = obs["cell_line"].astype(str).to_numpy()
    perturbation = obs["perturbation"].astype(str).to_numpy()
    split = obs["split"].to_numpy()
    keys = pd.Series(
        [
            (name, CONTROL) if kind == CONTROL else (name, target)
            for name, target, kind in zip(line, perturbation, split, strict=True)
        ]
    )
    wanted = (split == TRAIN) | (split == CONTROL)
    codes, groups = pd.factorize(keys[wanted])
    indicator = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.flatnonzero(wanted))), shape=(len(groups), screen.n_obs)
    )
    sums = _dense(indicator @ screen.X)
    means = sums / np.bincount(codes)[:, None]
    by_group = dict(zip(groups, means, strict=True))
    control_means = {name: by_group[(name, CONTROL)] for name in split_manifest["cell_lines"]}
    train_means = {key: mean for key, mean in by_group.items() if key[1] != CONTROL}
    return train_means, control_means


def predict_baselines(
    screen: ad.AnnData,
    perturbation_embeddings: pd.DataFrame,
    split_manifest: dict[str, Any],
    reporting: dict[str, Any],
    cell_set_size: int,
) -> ad.AnnData:
    """The three baselines' predicted cells (obs ``method``): the line's controls plus a shift.

    - control_mean: no shift (predicts no change);
    - perturbation_mean: the same perturbation's mean shift in the lines where it is train
      (no shift when it is train in no other line: ``uns["perturbation_mean_fallbacks"]``);
    - linear: ridge regression from the embedding to the mean shift, fit on every train
      (line, perturbation).
    Shifted cells are clipped at zero like the models' ReLU output.
    """
    train_means, control_means = _group_means(screen, split_manifest)
    shifts = {key: mean - control_means[key[0]] for key, mean in train_means.items()}
    keys_with_embedding = [key for key in shifts if key[1] in perturbation_embeddings.index]
    ridge = Ridge(alpha=float(reporting["ridge_alpha"]))
    ridge.fit(
        perturbation_embeddings.loc[[key[1] for key in keys_with_embedding]].to_numpy(),
        np.stack([shifts[key] for key in keys_with_embedding]),
    )
    sampler = _test_sampler(
        screen,
        perturbation_embeddings,
        pd.DataFrame(),
        split_manifest,
        cell_set_size,
        0,
        bool(reporting["same_batch_controls"]),
    )
    rng = np.random.default_rng(int(reporting["seed"]))  # the controls the models predicted from
    blocks, obs_rows, fallbacks = [], [], []
    for index, group in enumerate(sampler.groups):
        _, control_rows = sampler.group_sentences(index, rng)
        controls = _dense(screen.X[control_rows])
        elsewhere = [
            shift
            for (line, name), shift in shifts.items()
            if name == group.perturbation and line != group.cell_line
        ]
        if not elsewhere:
            fallbacks.append(f"{group.cell_line}/{group.perturbation}")
        shift_by_method = {
            "control_mean": np.zeros(screen.n_vars),
            "perturbation_mean": np.mean(elsewhere, axis=0)
            if elsewhere
            else np.zeros(screen.n_vars),
            "linear": ridge.predict(perturbation_embeddings.loc[[group.perturbation]].to_numpy())[
                0
            ],
        }
        for method, shift in shift_by_method.items():
            blocks.append(np.maximum(controls + shift, 0.0))
            obs_rows.append(
                _block_obs(group, len(control_rows), 0, "predicted").assign(method=method)
            )
    predictions = _predictions_anndata(blocks, obs_rows, screen)
    predictions.obs["method"] = pd.Categorical(
        predictions.obs["method"], categories=list(BASELINES)
    )
    predictions.uns["perturbation_mean_fallbacks"] = fallbacks
    logger.info(
        "Baselines for %d test conditions (%d without the perturbation elsewhere)",
        len(sampler.groups),
        len(fallbacks),
    )
    return predictions


def evaluate_predictions(
    predictions: ad.AnnData, screen: ad.AnnData, reporting: dict[str, Any]
) -> pd.DataFrame:
    """Every metric per (method, seed, cell line, perturbation), then mean and median rows.

    PCA (``reporting.n_pcs`` components) is fitted per cell line on that line's real cells: every
    test perturbation's cells and the controls.
    """
    obs = screen.obs
    methods = (
        predictions.obs["method"]
        if "method" in predictions.obs
        else pd.Series("model", index=predictions.obs_names)
    )
    rows = []
    for line in predictions.obs["cell_line"].unique():
        # Only this line's test and control cells are made dense.
        in_line = ((obs["cell_line"] == line) & obs["split"].isin([TEST, CONTROL])).to_numpy()
        line_obs = obs[in_line]
        expression = _dense(screen.X[in_line])
        controls = expression[(line_obs["split"] == CONTROL).to_numpy()]
        fitted = np.vstack([expression[(line_obs["split"] == TEST).to_numpy()], controls])
        pca = PCA(
            n_components=min(int(reporting["n_pcs"]), *fitted.shape),
            svd_solver="full",
            random_state=0,
        ).fit(fitted)
        for perturbation in predictions.obs.loc[
            predictions.obs["cell_line"] == line, "perturbation"
        ].unique():
            real = expression[
                (
                    (line_obs["perturbation"] == perturbation) & (line_obs["split"] == TEST)
                ).to_numpy()
            ]
            real_pca = pca.transform(real)
            selected = (
                (predictions.obs["cell_line"] == line)
                & (predictions.obs["perturbation"] == perturbation)
            ).to_numpy()
            for (method, seed), index in (
                predictions.obs[selected]
                .assign(method=methods[selected].to_numpy())
                .groupby(["method", "seed"], observed=True)
                .groups.items()
            ):
                predicted = _dense(predictions[index].X)
                values = evaluate(real, predicted, controls, real_pca, pca.transform(predicted))
                rows += [
                    {
                        "method": method,
                        "seed": seed,
                        "cell_line": line,
                        "perturbation": perturbation,
                        "metric": name,
                        "value": value,
                    }
                    for name, value in values.items()
                ]
    table = pd.DataFrame(rows)
    per_seed = table.groupby(["method", "seed", "metric"], observed=True)["value"]
    summary = pd.concat(
        [
            per_seed.mean().reset_index().assign(level="mean"),
            per_seed.median().reset_index().assign(level="median"),
        ]
    )
    return pd.concat([table.assign(level="condition"), summary], ignore_index=True)


def compare_methods(
    state: pd.DataFrame, vanilla_rag: pd.DataFrame, ptrag: pd.DataFrame, baselines: pd.DataFrame
) -> tuple[pd.DataFrame, str]:
    """Methods x metrics: mean over conditions per seed, then mean and sd over seeds (+ median).

    Returns the long table and a markdown table with the direction of every metric.
    """
    tables = [
        metrics.assign(method=name)
        for name, metrics in (("state", state), ("vanilla_rag", vanilla_rag), ("ptrag", ptrag))
    ]
    metrics = pd.concat([*tables, baselines], ignore_index=True)
    per_seed_mean = metrics[metrics["level"] == "mean"]
    per_seed_median = metrics[metrics["level"] == "median"]
    comparison = (
        per_seed_mean.groupby(["method", "metric"], observed=True)["value"]
        .agg(
            mean="mean",
            sd=lambda values: values.std(ddof=1) if len(values) > 1 else 0.0,
            n_seeds="size",
        )
        .join(
            per_seed_median.groupby(["method", "metric"], observed=True)["value"]
            .mean()
            .rename("median")
        )
        .reset_index()
    )
    comparison["n_conditions"] = comparison["method"].map(
        metrics[metrics["level"] == "condition"]
        .groupby("method")[["cell_line", "perturbation"]]
        .apply(lambda frame: len(frame.drop_duplicates()))
    )
    order = ["state", "vanilla_rag", "ptrag", *BASELINES]
    comparison["method"] = pd.Categorical(comparison["method"], categories=order)
    comparison["metric"] = pd.Categorical(comparison["metric"], categories=list(METRICS))
    comparison = comparison.sort_values(["method", "metric"]).reset_index(drop=True)
    return comparison, _markdown(comparison)


def _markdown(comparison: pd.DataFrame) -> str:
    header = (
        "| method | " + " | ".join(f"{name} {spec.arrow}" for name, spec in METRICS.items()) + " |"
    )
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    for method, rows in comparison.groupby("method", observed=True):
        cells = rows.set_index("metric")
        values = [
            f"{cells.loc[name, 'mean']:.4f}"
            + (f" ± {cells.loc[name, 'sd']:.4f}" if cells.loc[name, "n_seeds"] > 1 else "")
            for name in METRICS
        ]
        lines.append(f"| {method} | " + " | ".join(values) + " |")
    n_seeds = int(comparison["n_seeds"].max())
    legend = (
        f"\nMean over test (cell line, perturbation) conditions, ± sd over {n_seeds} training seed(s) "
        "(baselines: one). ↓ lower is better, ↑ higher is better.\n"
    )
    return "\n".join(lines) + "\n" + legend
