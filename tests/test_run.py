"""End-to-end runs through Kedro: a session on the demo, and the CLI on a user's screen."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import DatasetError

from ptrag_kedro.datasets import TorchModelDataset
from ptrag_kedro.metrics import metric_registry
from ptrag_kedro.models.record import ModelRecord
from tests.conftest import PROJECT_ROOT, TINY_BACKBONE, TINY_SIMULATION, TINY_VARIANTS

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's configuration in tmp_path, with a tiny demo screen in conf/local."""
    shutil.copytree(
        PROJECT_ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local")
    )
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src").mkdir()  # Kedro checks it exists; the package itself is installed
    (tmp_path / "conf" / "local").mkdir()
    overrides = {
        "simulation": {key: value for key, value in TINY_SIMULATION.items()},
        "ingestion": {"features": {"n_top_genes": 100}},
        "retrieval_index": {"k": 5},
        "training": {
            "max_steps": 2,
            "batch_size": 4,
            "cell_set_size": 8,
            "val_every_n_steps": 2,
            "checkpoint_every_n_steps": 2,
            "progress_bar": False,
        },
        "model": TINY_BACKBONE,
        "variants": TINY_VARIANTS,
        "reporting": {"n_pcs": 10},
        # MLflow's store costs 10-20 s per session; tests/test_tracking.py covers tracking.
        "tracking": {"enabled": False},
    }
    (tmp_path / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(overrides))
    monkeypatch.chdir(tmp_path)  # catalog paths are relative to the working directory
    bootstrap_project(tmp_path)
    return tmp_path


def _run(
    project: Path, pipeline: str | None = None, runtime_params: dict[str, Any] | None = None
) -> None:
    with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
        session.run(pipeline_name=pipeline)


def _record(path: Path) -> ModelRecord:
    """A trained variant's record, as the catalog loads it (``weights_only=True``)."""
    return TorchModelDataset(filepath=str(path)).load()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def latest(path: Path) -> Path:
    """The newest version of a versioned artefact (models, reports, plots): Kedro writes
    ``<path>/<run timestamp>/<name>``."""
    versions = sorted(path.glob(f"*/{path.name}"))
    assert versions, f"{path}: no version saved"
    return versions[-1]


VARIANTS = list(TINY_VARIANTS)
BASELINES = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_reporting.yml").read_text())[
    "reporting"
]["baselines"]
N_METRICS = len(metric_registry())


def _add_variant_in_parameters(project: Path) -> None:
    """A fifth variant written in conf/local only: PT-RAG in our first (residual, argmax) form."""
    path = project / "conf" / "local" / "parameters.yml"
    parameters = yaml.safe_load(path.read_text())
    parameters["variants"]["ptrag_residual"] = {
        "model": {"retrieval": "ptrag", "retrieval_form": "residual", "gate_inference": "argmax"},
        "candidates_k": 2,
    }
    path.write_text(yaml.safe_dump(parameters))


def test_default_kedro_run_on_demo(project: Path) -> None:
    _add_variant_in_parameters(project)
    _run(project)
    screen = ad.read_h5ad(project / "data/03_primary/screen.h5ad")
    manifest = json.loads((project / "data/03_primary/split_manifest.json").read_text())
    assert screen.n_vars == 100
    assert {"perturbation", "cell_line", "batch", "split"} <= set(screen.obs.columns)
    assert manifest["screen_fingerprint"] == screen.uns["ptrag"]["fingerprint"]
    assert manifest["heldout_cell_line"] == "hepg2"
    assert (project / "data/01_raw/demo/gene_embeddings.pickle").is_file()
    assert (project / "data/01_raw/demo/gene_modules.parquet").is_file()
    embeddings = pd.read_parquet(project / "data/04_feature/perturbation_embeddings.parquet")
    assert embeddings.shape[1] == TINY_SIMULATION["embedding_dim"]
    assert embeddings.attrs["screen_fingerprint"] == manifest["screen_fingerprint"]
    candidates = pd.read_parquet(project / "data/05_model_input/retrieval_candidates.parquet")
    assert (candidates.groupby("perturbation").size() == 5).all()
    responses = pd.read_parquet(project / "data/05_model_input/perturbation_responses.parquet")
    train = {(line, g) for line, entry in manifest["cell_lines"].items() for g in entry["train"]}
    assert set(zip(responses["cell_line"], responses["perturbation"], strict=True)) == train
    diagnostics = json.loads(
        latest(project / "data/08_reporting/retrieval_diagnostics.json").read_text()
    )
    assert (
        diagnostics["module_precision"]["precision"]
        > diagnostics["module_precision"]["random_expectation"]
    )
    variants = [*VARIANTS, "ptrag_residual"]
    for variant in variants:
        record = _record(latest(project / f"data/06_models/{variant}/model.pt"))
        assert record.steps == {"0": 2}
        assert record.provenance["screen_fingerprint"] == manifest["screen_fingerprint"]
        history = pd.read_parquet(
            latest(project / f"data/08_reporting/{variant}/loss_history.parquet")
        )
        assert list(history["split"]) == ["train", "train", "val"]
        assert (project / f"data/06_models/{variant}/checkpoints/seed_0/last.ckpt").is_file()
        gates = pd.read_parquet(project / f"data/07_model_output/{variant}/gates.parquet")
        assert gates.empty == (variant in ("state", "vanilla_rag"))
    residual = _record(latest(project / "data/06_models/ptrag_residual/model.pt"))
    assert residual.config.retrieval_form == "residual"
    comparison = pd.read_csv(latest(project / "data/08_reporting/comparison.csv"))
    assert list(dict.fromkeys(comparison["method"])) == [*variants, *BASELINES]
    assert len(comparison) == len(variants + BASELINES) * N_METRICS
    assert not comparison[["mean", "sd", "median"]].isna().any().any()
    assert "pearson_delta_context" in set(comparison["metric"])
    paired = pd.read_csv(latest(project / "data/08_reporting/paired_tests.csv"))
    assert set(paired["method"]) == set(variants)
    assert set(paired.loc[paired["role"] == "reference", "comparator"]) == {"state"}
    report = latest(project / "data/08_reporting/comparison.md").read_text()
    assert "| ptrag_residual |" in report and "w1 ↓" in report and "## Paired tests" in report
    for plot in ("comparison_metrics.png", "w1_vs_reference.png", "loss_curves.png", "gates.png"):
        assert latest(project / "data/08_reporting" / plot).stat().st_size > 10_000, plot
    bars = json.loads(latest(project / "data/08_reporting/comparison_metrics.json").read_text())[
        "data"
    ]
    assert [bar["name"] for bar in bars] == list(dict.fromkeys(comparison["metric"]))
    assert all(bar["x"] == [*variants, *BASELINES] for bar in bars)
    predictions = ad.read_h5ad(project / "data/07_model_output/ptrag/predictions.h5ad")
    assert {"perturbation", "cell_line", "seed", "kind", "control_cell"} <= set(
        predictions.obs.columns
    )
    assert (project / "data/07_model_output/baselines/predictions.h5ad").is_file()

    # The notebook reads the catalog and draws its figure; kedro-viz builds every pipeline.
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "comparison.ipynb", as_version=4)
    (project / "notebooks").mkdir()
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(project / "notebooks")}},
    ).execute()
    outputs = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    ]
    assert any(
        output.get("output_type") == "display_data" and "image/png" in output.get("data", {})
        for output in outputs
    )
    assert any("correlation" in output.get("text", "") for output in outputs)
    kedro = Path(sys.executable).with_name("kedro")
    build = subprocess.run(
        [str(kedro), "viz", "build"],
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (project / "build" / "index.html").is_file()


def test_registered_training_pipelines_run(project: Path) -> None:
    _run(project, "demo")
    _run(project, "analysis", {"heldout_cell_line": "rpe1"})
    for variant in VARIANTS:
        before = latest(project / f"data/06_models/{variant}/model.pt")
        _run(project, f"train_{variant}")
        after = latest(project / f"data/06_models/{variant}/model.pt")
        assert after.parent.name > before.parent.name and before.is_file()  # a new version


def test_a_fresh_clone_trains_ptrag_with_one_command_first(project: Path) -> None:
    """The design card's command stops with one line naming `prepare`; then it trains."""
    failed = _kedro_cli(project, "--pipelines=train_ptrag", check=False)
    assert failed.returncode == 1
    output = failed.stdout + failed.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: screen: {project}/data/03_primary/screen.h5ad: no such h5ad file; create it "
        "first with `kedro run --pipelines=prepare`"
    ]
    assert "Traceback" not in output and "│" not in output  # no (rich) traceback box
    # Nothing half-written is left behind.
    assert not [path for path in (project / "data").rglob(".*") if path.name != ".gitkeep"]
    _kedro_cli(project, "--pipelines=prepare")
    _kedro_cli(project, "--pipelines=train_ptrag")
    record = _record(latest(project / "data/06_models/ptrag/model.pt"))
    assert record.config.retrieval == "ptrag"


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: (size, mtime in ns)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.max_steps=0", "training.max_steps must be an integer >= 1, got 0"),
        ("training.max_steps=2.5", "training.max_steps must be an integer >= 1, got 2.5"),
        ("ingestion.split.seed=abc", "ingestion.split.seed must be an integer"),
        ("training.checkpoint_every_n_steps=-5", "training.checkpoint_every_n_steps must be"),
        ("training.accelerator=abc", "training.accelerator must be one of"),
        ("reporting.reference_variant=nosuch", "reporting.reference_variant"),
        ("reporting.baselines=linear", "reporting.baselines must be a list"),
        ("retrieval_index.k=-1", "retrieval_index.k must be a positive integer or auto"),
    ],
)
def test_a_bad_parameter_stops_the_run_at_its_start_in_one_line(
    project: Path, override: str, message: str
) -> None:
    before = _listing(project / "data")
    failed = _kedro_cli(project, f"--params={override}", check=False)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert failed.returncode == 1 and len(errors) == 1, failed.stderr[-2000:]
    assert message in errors[0]
    assert "Traceback" not in failed.stderr
    assert _listing(project / "data") == before  # nothing written: no node ran


def test_runtime_params_select_heldout_line(project: Path) -> None:
    _run(project, runtime_params={"heldout_cell_line": "k562"})
    manifest = json.loads((project / "data/03_primary/split_manifest.json").read_text())
    assert manifest["heldout_cell_line"] == "k562"
    screen = ad.read_h5ad(project / "data/03_primary/screen.h5ad", backed="r")
    k562_test = screen.obs[(screen.obs["cell_line"] == "k562") & (screen.obs["split"] == "test")]
    assert sorted(manifest["cell_lines"]["k562"]["test"]) == sorted(
        k562_test["perturbation"].astype(str).unique()
    )
    assert (
        len(k562_test) > 0
        and not (screen.obs["split"] == "test").loc[screen.obs["cell_line"] != "k562"].any()
    )


def test_demo_never_overwrites_a_users_screen(project: Path, tiny_screen: ad.AnnData) -> None:
    user_file = project / "my_screen.h5ad"
    tiny_screen.write_h5ad(user_file)
    before = _digest(user_file)
    with pytest.raises(DatasetError, match="refusing to write"):
        _run(project, runtime_params={"raw_screen_path": str(user_file)})
    assert _digest(user_file) == before
    assert not (project / "data/03_primary/screen.h5ad").exists()


def test_truncated_screen_leaves_nothing(project: Path, tiny_screen: ad.AnnData) -> None:
    user_file = project / "truncated.h5ad"
    tiny_screen.write_h5ad(user_file)
    user_file.write_bytes(user_file.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="not a readable h5ad file"):
        _run(project, "ingestion", {"raw_screen_path": str(user_file)})
    assert not (project / "data/03_primary/screen.h5ad").exists()
    assert not (project / "data/03_primary/split_manifest.json").exists()


def _limit_file_size(limit_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn``: files the child writes stop at ``limit_bytes``, as on a full disk (a
    write past it fails with EFBIG; SIGXFSZ, which would kill the child, is ignored)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return limit


def test_a_full_disk_during_the_screen_write_is_one_line_and_keeps_the_old_screen(
    project: Path,
) -> None:
    """HDF5 fails part-way through the screen's X: exit 1 with one line naming the file, never a
    crash (h5py's cached chunks used to fail again at exit, status 139), the previous screen
    untouched and no temporary file left."""
    _run(project, "demo")
    _run(project, "ingestion")
    screen = project / "data/03_primary/screen.h5ad"
    before = _digest(screen)
    failed = _kedro_cli(
        project,
        "--pipelines=ingestion",
        "--params=ingestion.split.seed=1",
        check=False,
        file_size_limit=screen.stat().st_size // 2,
    )
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert failed.returncode == 1 and len(errors) == 1, failed.stderr[-3000:]
    assert "screen.h5ad: cannot write it" in errors[0] and "File too large" in errors[0]
    assert "Traceback" not in failed.stderr and "Exception ignored" not in failed.stderr
    assert _digest(screen) == before
    assert not list(screen.parent.glob(".*.tmp*"))


def _kedro_cli(
    project: Path,
    *arguments: str,
    check: bool = True,
    command: str = "run",
    file_size_limit: int | None = None,
) -> subprocess.CompletedProcess:
    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run(
        [str(kedro), command, *arguments],
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=None if file_size_limit is None else _limit_file_size(file_size_limit),
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_cli_genept_with_a_users_embedding_file(project: Path) -> None:
    """`--params=gene_embeddings_path=PATH` picks the file (format from its extension)."""
    _run(project, "demo")
    _run(project, "ingestion")
    manifest = json.loads((project / "data/03_primary/split_manifest.json").read_text())
    perturbations = sorted(
        {
            p
            for line in manifest["cell_lines"].values()
            for kind in ("train", "val", "test")
            for p in line[kind]
        }
    )
    user_vectors = pd.DataFrame(
        np.random.default_rng(0).normal(size=(len(perturbations), 12)).astype(np.float32),
        index=pd.Index(
            [p.lower() for p in perturbations], name="symbol"
        ),  # other case: still matched
    )
    user_vectors.columns = [str(c) for c in user_vectors.columns]
    user_file = project / "my_vectors.parquet"
    user_vectors.to_parquet(user_file)
    before = _digest(user_file)
    _kedro_cli(project, "--pipelines=genept", f"--params=gene_embeddings_path={user_file}")
    embeddings = pd.read_parquet(project / "data/04_feature/perturbation_embeddings.parquet")
    assert embeddings.shape == (len(perturbations) + 1, 12)
    assert embeddings.attrs["source"] == str(user_file)
    assert _digest(user_file) == before
    _run(project, "retrieval_index")  # consumes the new embeddings without complaint
    assert (project / "data/05_model_input/retrieval_candidates.parquet").is_file()
    # A mistyped path: one line naming it, and nothing written (the summary cache included).
    typo = project / "my_vectrs.parquet"
    listing = _listing(project / "data")
    failed = _kedro_cli(
        project, "--pipelines=genept", f"--params=gene_embeddings_path={typo}", check=False
    )
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert failed.returncode == 1 and len(errors) == 1, failed.stderr[-2000:]
    assert f"{typo}: no such gene-embedding file" in errors[0]
    assert _listing(project / "data") == listing


def test_cli_ingestion_of_a_real_screen(project: Path, shared_data: Path) -> None:
    """The exact command of the README, on real counts with a split file."""
    raw = shared_data / "papalexi2021_thp1_crispr_counts.h5ad"
    split_file = project / "thp1_split.json"
    split_file.write_text(
        json.dumps({"val": ["STAT1", "IRF7"], "test": ["JAK2", "IFNGR1", "MYC", "NOT_A_GENE"]})
    )
    before = _digest(raw)
    _kedro_cli(
        project,
        "--pipelines=ingestion",
        f"--params=raw_screen_path={raw},heldout_cell_line=thp1,split_file={split_file}",
    )
    manifest = json.loads((project / "data/03_primary/split_manifest.json").read_text())
    assert manifest["source"] == str(split_file)
    assert manifest["cell_lines"]["thp1"]["val"] == ["IRF7", "STAT1"]
    assert manifest["cell_lines"]["thp1"]["test"] == ["IFNGR1", "JAK2", "MYC"]
    assert manifest["missing_from_screen"]["test"] == ["NOT_A_GENE"]
    screen = ad.read_h5ad(project / "data/03_primary/screen.h5ad")
    assert screen.uns["ptrag"]["raw_screen"] == str(raw)
    assert _digest(raw) == before  # a raw input is never written


def test_cross_validate_runs_every_fold_of_an_unseen_gene_split(project: Path) -> None:
    """`kedro cross-validate`: the demo once, each fold in its own data folder (its held-out
    line and split seed), then the pooled comparison; an unseen_gene split throughout."""
    local = project / "conf" / "local" / "parameters.yml"
    overrides = yaml.safe_load(local.read_text())
    overrides["ingestion"]["split"] = {"mode": "unseen_gene"}
    overrides["cross_validation"] = {
        "prepare": "demo",
        "folds": [
            {"heldout_cell_line": "k562", "split_seed": 0},
            {"heldout_cell_line": "hepg2", "split_seed": 1},
        ],
    }
    local.write_text(yaml.safe_dump(overrides))
    _kedro_cli(project, command="cross-validate")
    for fold, line in (("k562_s0", "k562"), ("hepg2_s1", "hepg2")):
        folder = project / "data" / "folds" / fold
        manifest = json.loads((folder / "03_primary/split_manifest.json").read_text())
        assert manifest["mode"] == "unseen_gene" and manifest["heldout_cell_line"] == line
        held = {g for e in manifest["cell_lines"].values() for g in (*e["val"], *e["test"])}
        train = {g for e in manifest["cell_lines"].values() for g in e["train"]}
        assert held and not held & train
        assert latest(folder / "08_reporting/ptrag/metrics.csv").is_file()
    assert not (project / "data/03_primary/screen.h5ad").exists()  # only the folds' folders
    pooled = pd.read_csv(latest(project / "data/08_reporting/cross_validation/comparison.csv"))
    assert set(pooled["fold"]) == {"pooled", "k562_s0", "hepg2_s1"}
    sizes = pooled.groupby("fold")["n_conditions"].max()
    assert sizes["pooled"] == sizes["k562_s0"] + sizes["hepg2_s1"]
    paired = pd.read_csv(latest(project / "data/08_reporting/cross_validation/paired_tests.csv"))
    # every condition pooled; a metric undefined on some (de_overlap_fdr where the real test
    # finds no DE gene) has fewer
    assert (paired.loc[paired["metric"] == "w1", "n_conditions"] == sizes["pooled"]).all()
    assert (paired["n_conditions"] <= sizes["pooled"]).all()
    report = latest(project / "data/08_reporting/cross_validation/report.md").read_text()
    assert "k562 (split seed 0), hepg2 (split seed 1)" in report
    failed = _kedro_cli(project, "--folds=nope", check=False, command="cross-validate")
    assert failed.returncode == 1
    assert [line for line in failed.stderr.splitlines() if line.startswith("Error:")] == [
        "Error: --folds: unknown fold(s) ['nope']; folds: ['k562_s0', 'hepg2_s1']"
    ]
