"""Tracked runs (ptrag_kedro.tracking): the MLflow record of a run, read back with MlflowClient,
and the switches: tracking off, a bad store, the commit of a copy without git."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import yaml
from kedro.framework.session import KedroSession
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline, node

from ptrag_kedro.cli import user_message
from ptrag_kedro.errors import ParameterError
from ptrag_kedro.pipelines.reporting.report import RUN_COLUMNS, describe_run, run_identity
from ptrag_kedro.tracking import (
    LOCAL_ARTIFACTS,
    LOCAL_STORE,
    RUN_CONTEXT,
    RunTrackingHooks,
    TrackingError,
    TrackingParameters,
    git_commit,
)
from tests.conftest import PROJECT_ROOT, tiny_training
from tests.test_run import project  # noqa: F401 (the tiny project fixture)


def _trained(record_name: str) -> Pipeline:
    """A one-node pipeline that writes a variant's model: a run that trains, to the hook."""
    return Pipeline([node(lambda: None, inputs=None, outputs=record_name, name="train")])


def _start(tmp_path: Path, tracking: dict[str, Any]) -> tuple[RunTrackingHooks, DataCatalog]:
    """The hook's run start on a bare catalog (no session, no pipeline run); the context is
    what the hook reads of Kedro's: the env and the parameters of the config loader."""
    parameters = {"variants": {"state": {}}, "tracking": tracking}
    context = SimpleNamespace(env="local", config_loader={"parameters": parameters})
    catalog = DataCatalog()
    hooks = RunTrackingHooks()
    hooks.after_context_created(context)
    run_params = {"project_path": str(tmp_path), "run_id": "session"}
    hooks.before_pipeline_run(run_params, _trained("state.model"), catalog)
    return hooks, catalog


def test_kedro_help_loads_the_tracking_hook_but_not_mlflow() -> None:
    """`kedro --help` in the project reads settings.py (and so the hook's module): mlflow, its
    SQL store and alembic stay unloaded until a tracked run starts."""
    code = (
        "import json, sys\n"
        "from kedro.framework.cli import main\n"
        "sys.argv = ['kedro', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    environment = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    modules = set(json.loads(done.stdout.splitlines()[-1]))
    assert "ptrag_kedro.tracking" in modules
    assert not {name.split(".")[0] for name in modules} & {"mlflow", "sqlalchemy", "alembic"}


def test_tracking_off_leaves_no_store_and_still_gives_the_run_context(tmp_path: Path) -> None:
    _, catalog = _start(tmp_path, {"enabled": False})
    context = catalog.load(RUN_CONTEXT)
    assert context["run_id"] is None and context["env"] == "local"
    assert context["commit"] == "unknown"  # tmp_path is no git repository
    assert not (tmp_path / LOCAL_STORE).exists() and not (tmp_path / LOCAL_ARTIFACTS).exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # MLflow creates its SQLite schema (seconds)
def test_a_failed_pipeline_leaves_its_run_failed_in_the_project_store(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    hooks, catalog = _start(tmp_path, {"enabled": True})
    run_id = catalog.load(RUN_CONTEXT)["run_id"]
    hooks.on_pipeline_error(RuntimeError("a node failed"), {}, _trained("state.model"), catalog)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / LOCAL_STORE}")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["kedro_session_id"] == "session"
    assert run.data.params["tracking.enabled"] == "true"
    assert run.info.artifact_uri.startswith((tmp_path / LOCAL_ARTIFACTS).as_uri())


@pytest.mark.parametrize("uri", ["nosuchscheme://host/store", "{tmp_path}/mlruns"])
def test_a_bad_tracking_uri_stops_the_run_start_with_one_line(tmp_path: Path, uri: str) -> None:
    # A plain folder: MLflow's file store, which MLflow 3 refuses unless told otherwise.
    uri = uri.format(tmp_path=tmp_path)
    with pytest.raises(TrackingError) as raised:
        _start(tmp_path, {"uri": uri})
    message = user_message(raised.value)
    assert message == str(raised.value) and "\n" not in message
    assert f"MLflow tracking store '{uri}' cannot be used" in message
    assert "tracking.enabled=false" in message
    assert list(tmp_path.iterdir()) == []


def test_a_uri_shown_in_an_error_hides_its_password(tmp_path: Path) -> None:
    with pytest.raises(TrackingError) as raised:
        _start(tmp_path, {"uri": "nosuchscheme://alice:secret@host:5000/store"})
    assert "secret" not in str(raised.value) and "nosuchscheme://host:5000/store" in str(
        raised.value
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"enabled": "no"}, "tracking.enabled must be true or false, got 'no'"),
        ({"enable": False}, "tracking.enable must be one of tracking.enabled, tracking.uri"),
        ({"uri": ""}, "tracking.uri must be an MLflow tracking URI or null, got ''"),
        ({"experiment": None}, "tracking.experiment must be a non-empty name, got None"),
    ],
)
def test_tracking_parameters_name_the_bad_one(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match="^" + message.replace(".", r"\.")):
        TrackingParameters.from_params(block)


def test_the_store_is_the_parameter_then_the_environment_then_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = TrackingParameters()
    assert default.store_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db" and default.is_local()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default.store_uri(tmp_path) == "http://127.0.0.1:5000" and not default.is_local()
    chosen = TrackingParameters(uri="sqlite:///elsewhere.db")
    assert chosen.store_uri(tmp_path) == "sqlite:///elsewhere.db"


def test_git_commit_of_a_repository_and_of_a_copy_without_git(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"

    def git(*args: str) -> str:
        command = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "file.txt").write_text("one")
    git("add", "file.txt")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "file.txt").write_text("two")
    assert git_commit(tmp_path) == f"{head}-dirty"


def test_run_metadata_names_steps_line_env_commit_date_and_run() -> None:
    context = {"env": "replogle", "commit": "abc123", "started": "2026-12-01T10:00:00Z"}
    manifest = {"heldout_cell_line": None}
    metadata = describe_run(
        {**context, "run_id": "0123"}, manifest, tiny_training(max_steps=20, seeds=[0, 1])
    )
    assert list(metadata) == RUN_COLUMNS
    assert metadata["steps"] == 20 and metadata["seeds"] == "0 1"
    assert metadata["heldout_cell_line"] == "every line"
    assert run_identity(metadata) == (
        "Run: MLflow run `0123`; commit `abc123`; Kedro env `replogle`; "
        "started 2026-12-01T10:00:00Z."
    )
    untracked = describe_run({**context, "run_id": None}, manifest, tiny_training())
    assert "not tracked (tracking.enabled: false)" in run_identity(untracked)


@pytest.mark.slow
def test_a_kedro_run_is_one_mlflow_run_with_a_run_per_variant_and_seed(
    project: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    from mlflow import MlflowClient

    variants, seeds = ["state", "ptrag"], [0, 1]
    path = project / "conf" / "local" / "parameters.yml"
    parameters = yaml.safe_load(path.read_text())
    parameters["training"]["seeds"] = seeds
    parameters["run_variants"] = variants
    parameters["tracking"] = {"enabled": True}  # whatever the fixture chose for other tests
    path.write_text(yaml.safe_dump(parameters))
    with KedroSession.create(project_path=project) as session:
        session.run()

    client = MlflowClient(tracking_uri=f"sqlite:///{project / LOCAL_STORE}")
    experiment = client.get_experiment_by_name("ptrag-kedro")
    assert experiment.artifact_location == (project / LOCAL_ARTIFACTS).as_uri()
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["git_commit"] == "unknown" and tags["kedro_env"] == "local"
    assert "mlflow.source.git.commit" not in tags  # no repository: no commit claimed
    manifest = yaml.safe_load((project / "data/03_primary/split_manifest.json").read_text())
    assert tags["screen_fingerprint"] == manifest["screen_fingerprint"]
    assert tags["heldout_cell_line"] == "hepg2"
    assert len(tags["embeddings_fingerprint"]) == 16
    assert parent.data.params["training.max_steps"] == "2"
    assert parent.data.params["training.seeds"] == "[0, 1]"
    assert parent.data.params["variants.ptrag.model.retrieval"] == "ptrag"

    comparison = _latest_csv(project / "data/08_reporting/comparison.csv")
    state_w1 = comparison[(comparison["method"] == "state") & (comparison["metric"] == "w1")]
    assert parent.data.metrics["state.w1"] == pytest.approx(state_w1["mean"].item())
    assert set(comparison["run_id"]) == {parent.info.run_id}
    assert set(comparison["steps"]) == {2} and set(comparison["env"]) == {"local"}
    assert set(comparison["commit"]) == {"unknown"}
    assert set(comparison["heldout_cell_line"]) == {"hepg2"}
    report = client.download_artifacts(parent.info.run_id, "comparison_report.md", str(project))
    report = Path(report).read_text()
    assert f"MLflow run `{parent.info.run_id}`" in report and "Kedro env `local`" in report
    assert "training 2 steps" in report and "held-out line hepg2" in report
    artefacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"comparison_report.md", "comparison.csv", "paired_tests.csv"} <= artefacts

    children = {run.info.run_name: run for run in runs if run.info.run_id != parent.info.run_id}
    assert set(children) == {*variants, *(f"{v} seed {s}" for v in variants for s in seeds)}
    for variant in variants:
        run = children[variant]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["screen_fingerprint"] == manifest["screen_fingerprint"]
        assert run.data.params["model.retrieval"] == ("none" if variant == "state" else "ptrag")
        assert set(comparison.loc[comparison["method"] == variant, "metric"]) <= set(
            run.data.metrics
        )
        assert {item.path for item in client.list_artifacts(run.info.run_id, "model")} == {
            "model/model.pt",
            "model/record.json",
        }
        history = _latest_parquet(project / f"data/08_reporting/{variant}/loss_history.parquet")
        for seed in seeds:
            seed_run = children[f"{variant} seed {seed}"]
            assert seed_run.data.tags["mlflow.parentRunId"] == run.info.run_id
            assert seed_run.data.params["seed"] == str(seed)
            assert seed_run.data.params["steps"] == "2"
            train = history[(history["seed"] == seed) & (history["split"] == "train")]
            logged = client.get_metric_history(seed_run.info.run_id, "train.loss")
            assert [point.step for point in logged] == list(train["step"])
            assert [point.value for point in logged] == pytest.approx(list(train["loss"]))
            assert "test.w1" in seed_run.data.metrics


def _latest(path: Path) -> Path:
    """A dataset's file, versioned (``<path>/<timestamp>/<name>``: the latest) or not."""
    if path.is_file():
        return path
    return sorted(path.glob(f"*/{path.name}"))[-1]


def _latest_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(_latest(path))


def _latest_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(_latest(path))
