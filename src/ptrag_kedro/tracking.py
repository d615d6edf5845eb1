"""Tracked runs: every ``kedro run`` that trains or reports is one MLflow run.

The project hook :class:`RunTrackingHooks` opens the run when the pipeline starts (the store is
checked then: a store MLflow cannot use stops the run with one line before any node runs) and,
once the pipeline has finished, logs what it produced or read, read back from the catalog so
any runner works:

- the parent run: every parameter of the run (flattened, and whole as ``parameters.json``), the
  git commit, the Kedro env and session, the screen's fingerprint and held-out line, each
  method's comparison metrics (``<method>.<metric>``: mean over seeds), and the markdown report
  and the comparison tables as artefacts;
- a nested run per variant: its parameters, the fingerprints of the screen and gene embeddings
  its model record was trained on, its comparison metrics (mean and sd over seeds) and the model
  record (``model/model.pt``, the catalog's format, and ``model/record.json`` without weights);
- nested in it, a run per training seed: its steps and selected step, the loss history as metric
  steps (``train.loss``, ``val.energy``, ...) and the seed's test metrics.

Every run also gets a ``run_context`` dataset (env, commit, start time, MLflow run id) that the
report and the ``comparison`` table carry, tracked or not. The store defaults to an embedded
SQLite file in the project (``mlflow.db``, artefacts in ``mlartifacts/``: what ``mlflow ui`` in
the project root opens); ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` points it at any MLflow
store or server, and ``tracking.enabled: false`` switches it off (nothing is written, mlflow is
not imported). mlflow is imported inside the hook's methods only: ``kedro --help`` and runs with
tracking off never load it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from kedro.framework.hooks import hook_impl

from ptrag_kedro.errors import ParameterError, UserError, one_line

if TYPE_CHECKING:
    import pandas as pd
    from kedro.framework.context import KedroContext
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Pipeline
    from mlflow import MlflowClient

    from ptrag_kedro.models.record import ModelRecord

logger = logging.getLogger(__name__)

#: The embedded store, relative to the project root: MLflow's own default database name, so
#: `mlflow ui` started in the project root opens it with no options.
LOCAL_STORE = "mlflow.db"
#: Artefacts of the embedded store's experiments (absolute file URIs, recorded per experiment).
LOCAL_ARTIFACTS = "mlartifacts"
#: The catalog dataset the hook fills at run start: what the report and ``comparison`` carry.
RUN_CONTEXT = "run_context"
UNKNOWN = "unknown"

#: MLflow's limits: characters of a parameter value, parameters and metrics per batch call.
_MAX_PARAM_LENGTH = 6000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
#: Characters MLflow allows in a metric or parameter key (others become "_").
_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-. /]")


class TrackingError(UserError, RuntimeError):
    """The MLflow store cannot be used (a bad URI, a server that does not answer)."""


@dataclasses.dataclass(frozen=True)
class TrackingParameters:
    """``tracking`` (conf/base/parameters_tracking.yml): where the run is logged, if at all.

    ``uri``: an MLflow tracking URI; null: ``MLFLOW_TRACKING_URI`` when it is set, otherwise the
    project's embedded store (``sqlite:///<project>/mlflow.db``).
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str = "ptrag-kedro"

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ParameterError(f"tracking.enabled must be true or false, got {self.enabled!r}")
        if self.uri is not None and (not isinstance(self.uri, str) or not self.uri.strip()):
            raise ParameterError(
                f"tracking.uri must be an MLflow tracking URI or null, got {self.uri!r}"
            )
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise ParameterError(
                f"tracking.experiment must be a non-empty name, got {self.experiment!r}"
            )

    @classmethod
    def from_params(cls, params: Any) -> TrackingParameters:
        """The block as it is in the parameters (absent: the defaults); an unknown key is an
        error, so a misspelt ``enable: false`` does not leave tracking on."""
        if params is None:
            return cls()
        if not isinstance(params, dict):
            raise ParameterError(
                f"tracking must be a mapping (enabled, uri, experiment), got {params!r}"
            )
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ParameterError(
                f"tracking.{unknown[0]} must be one of tracking.{', tracking.'.join(known)}, "
                f"got {unknown[0]!r}"
            )
        return cls(**params)

    def store_uri(self, project_path: Path) -> str:
        return (
            self.uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(project_path / LOCAL_STORE).as_posix()}"
        )

    def is_local(self) -> bool:
        """Whether the run goes to the project's embedded store."""
        return not (self.uri or os.environ.get("MLFLOW_TRACKING_URI"))


def git_commit(path: Path) -> str:
    """The commit checked out in the repository holding ``path``, with ``-dirty`` when tracked
    files differ from it; ``unknown`` outside a repository or without git (never an error: a
    copy of the project without its history still runs)."""
    try:

        def git(*args: str) -> str:
            command = ["git", "-C", str(path), *args]
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
            return done.stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return f"{commit}-dirty" if dirty else commit


def _shown_uri(uri: str) -> str:
    """The URI without user name and password (a server URI may carry them)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _without_credentials(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters as logged: a ``tracking.uri`` without its user name and password."""
    tracking = parameters.get("tracking")
    if not isinstance(tracking, dict) or not isinstance(tracking.get("uri"), str):
        return parameters
    return {**parameters, "tracking": {**tracking, "uri": _shown_uri(tracking["uri"])}}


@contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """An error of the store (or of reaching it) as one line naming the URI and the fix."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, SQLAlchemyError, OSError) as error:
        shown = _shown_uri(uri)
        reason = one_line(one_line(error).replace(uri, shown), 300)
        raise TrackingError(
            f"MLflow tracking store {shown!r} cannot be used: {reason}; set tracking.uri "
            "(conf/base/parameters_tracking.yml) or MLFLOW_TRACKING_URI to a working store, "
            "or switch tracking off with --params=tracking.enabled=false"
        ) from error


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as MLflow parameters: dotted keys, JSON values (lists, null)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[_KEY_CHARACTERS.sub("_", name)] = text
    return flat


def tracked_variants(pipeline: Pipeline, parameters: dict[str, Any]) -> list[str]:
    """The variants whose model the pipeline trains or reads (a run that trains or reports),
    in the parameters' order; empty for a run that does neither (``prepare``)."""
    datasets = pipeline.datasets()
    return [name for name in parameters.get("variants") or {} if f"{name}.model" in datasets]


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunTrackingHooks:
    """Opens an MLflow run when a run that trains or reports starts, logs its results when it
    ends, and gives every run its ``run_context``. One instance serves every session of the
    process (a notebook, the test suite): each run starts from a clean state."""

    def __init__(self) -> None:
        self._context: KedroContext | None = None
        self._run: TrackedRun | None = None

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._context = context

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        self._run = None
        if self._context is None:
            raise RuntimeError("a pipeline run started before its Kedro context was made")
        loader = self._context.config_loader
        # As written (env and --params merged): the catalog's `parameters` holds the typed
        # blocks Kedro instantiated for this pipeline's nodes, which differ from run to run.
        parameters = loader["parameters"]
        tracking = TrackingParameters.from_params(parameters.get("tracking"))
        project_path = Path(run_params["project_path"])
        context = {
            # None when the run names no env: the config loader's default (conf/local)
            "env": self._context.env or getattr(loader, "default_run_env", "") or "base",
            "commit": git_commit(project_path),
            "started": _utc_now(),
            "run_id": None,
        }
        variants = tracked_variants(pipeline, parameters)
        if tracking.enabled and variants:
            self._run = TrackedRun.start(tracking, project_path, run_params, parameters, context)
            context["run_id"] = self._run.run_id
        catalog[RUN_CONTEXT] = context

    @hook_impl
    def after_pipeline_run(
        self,
        run_params: dict[str, Any],
        run_result: dict[str, Any],
        pipeline: Pipeline,
        catalog: CatalogProtocol,
    ) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.log_results(pipeline, catalog)
        except BaseException:
            run.finish_after_error()
            raise
        run.finish("FINISHED")

    @hook_impl
    def on_pipeline_error(
        self,
        error: Exception,
        run_params: dict[str, Any],
        pipeline: Pipeline,
        catalog: CatalogProtocol,
    ) -> None:
        run, self._run = self._run, None
        if run is not None:
            run.finish_after_error()


class TrackedRun:
    """The MLflow run of one ``kedro run``, written through :class:`mlflow.MlflowClient` (no
    global active run: a notebook's own MLflow runs are left alone)."""

    def __init__(
        self,
        client: MlflowClient,
        uri: str,
        experiment_id: str,
        run_id: str,
        parameters: dict[str, Any],
        tags: dict[str, str],
    ) -> None:
        self._client = client
        self._uri = uri
        self._experiment_id = experiment_id
        self.run_id = run_id
        self._parameters = parameters
        #: tags every nested run repeats (commit, env), so a child found alone says them too
        self._tags = tags

    @classmethod
    def start(
        cls,
        tracking: TrackingParameters,
        project_path: Path,
        run_params: dict[str, Any],
        parameters: dict[str, Any],
        context: dict[str, Any],
    ) -> TrackedRun:
        """Open the parent run (the store is reached here: a bad URI fails before any node)."""
        uri = tracking.store_uri(project_path)
        with _store_errors(uri):
            from mlflow import MlflowClient
            from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME

            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(tracking.experiment)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:
                # The embedded store keeps its artefacts in the project too, wherever the run
                # is started from; a server chooses its own.
                location = (
                    (project_path / LOCAL_ARTIFACTS).resolve().as_uri()
                    if tracking.is_local()
                    else None
                )
                experiment_id = client.create_experiment(
                    tracking.experiment, artifact_location=location
                )
            tags = {
                "git_commit": context["commit"],
                "kedro_env": context["env"],
                "kedro_session_id": str(run_params.get("run_id")),
            }
            commit = context["commit"].removesuffix("-dirty")
            run_tags = {
                **tags,
                MLFLOW_SOURCE_NAME: "kedro run",
                **({MLFLOW_GIT_COMMIT: commit} if commit != UNKNOWN else {}),
                "kedro_pipelines": ",".join(run_params.get("pipeline_names") or ["__default__"]),
            }
            run = client.create_run(
                experiment_id, run_name=f"kedro run {context['started']}", tags=run_tags
            )
            tracked = cls(client, uri, experiment_id, run.info.run_id, parameters, tags)
            logged = _without_credentials(parameters)
            tracked._log_params(tracked.run_id, flatten(logged))
            client.log_dict(tracked.run_id, logged, "parameters.json")
        logger.info(
            "Tracking this run in MLflow: experiment %r, run %s (%s)",
            tracking.experiment,
            tracked.run_id,
            _shown_uri(uri),
        )
        return tracked

    def log_results(self, pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        """What the finished pipeline produced or read: the comparison and report on the parent
        run, a nested run per variant and per seed. Datasets are read outside the store's
        error scope, so a dataset's own error is not reported as the store's."""
        datasets = pipeline.datasets()

        def read(name: str) -> Any:
            return catalog.load(name) if name in datasets else None

        manifest, comparison = read("split_manifest"), read("comparison")
        paired, report = read("paired_tests"), read("comparison_report")
        with _store_errors(self._uri):
            if manifest is not None:
                line = manifest.get("heldout_cell_line") or "every line"
                self._client.set_tag(self.run_id, "heldout_cell_line", line)
                fingerprint = manifest.get("screen_fingerprint")
                self._client.set_tag(self.run_id, "screen_fingerprint", fingerprint)
            if comparison is not None:
                points = (
                    (f"{row.method}.{row.metric}", row.mean, 0)
                    for row in comparison.itertuples(index=False)
                )
                self._log_metrics(self.run_id, points)
                self._log_table(self.run_id, comparison, "comparison.csv")
            if paired is not None:
                self._log_table(self.run_id, paired, "paired_tests.csv")
            if report is not None:
                self._client.log_text(self.run_id, report, "comparison_report.md")
        embeddings = set()
        # One variant at a time: a record holds every seed's weights.
        for variant in tracked_variants(pipeline, self._parameters):
            record = catalog.load(f"{variant}.model")
            history, metrics = read(f"{variant}_loss_history"), read(f"{variant}_metrics")
            embeddings.add(record.provenance.get("embeddings_fingerprint"))
            with _store_errors(self._uri):
                self._log_variant(variant, record, comparison, history, metrics)
        if len(embeddings) == 1:
            with _store_errors(self._uri):
                self._client.set_tag(self.run_id, "embeddings_fingerprint", embeddings.pop())

    def finish(self, status: str) -> None:
        with _store_errors(self._uri):
            self._client.set_terminated(self.run_id, status)

    def finish_after_error(self) -> None:
        """Mark the run FAILED while another error is on its way out: a store that fails
        here too is logged, so that the error the run stopped for is the one raised."""
        try:
            self.finish("FAILED")
        except TrackingError as error:
            logger.warning("The MLflow run %s stays unfinished: %s", self.run_id, error)

    def _log_variant(
        self,
        variant: str,
        record: ModelRecord,
        comparison: pd.DataFrame | None,
        history: pd.DataFrame | None,
        metrics: pd.DataFrame | None,
    ) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {
            **self._tags,
            MLFLOW_PARENT_RUN_ID: self.run_id,
            "variant": variant,
            "retrieval": record.config.retrieval,
            **{key: str(value) for key, value in record.provenance.items()},
        }
        run_id = self._client.create_run(self._experiment_id, run_name=variant, tags=tags)
        run_id = run_id.info.run_id
        self._log_params(run_id, flatten((self._parameters.get("variants") or {})[variant]))
        if comparison is not None:
            rows = comparison[comparison["method"] == variant]
            self._log_metrics(
                run_id,
                (
                    (f"{row.metric}{suffix}", value, 0)
                    for row in rows.itertuples(index=False)
                    for suffix, value in (("", row.mean), (".sd", row.sd))
                ),
            )
        self._log_record(run_id, record)
        for seed in record.seeds:
            self._log_seed(variant, run_id, record, seed, history, metrics)
        self._client.set_terminated(run_id, "FINISHED")

    def _log_seed(
        self,
        variant: str,
        variant_run: str,
        record: ModelRecord,
        seed: int,
        history: pd.DataFrame | None,
        metrics: pd.DataFrame | None,
    ) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        key = str(seed)
        tags = {**self._tags, MLFLOW_PARENT_RUN_ID: variant_run, "variant": variant}
        run = self._client.create_run(
            self._experiment_id, run_name=f"{variant} seed {seed}", tags={**tags, "seed": key}
        )
        run_id = run.info.run_id
        self._log_params(
            run_id,
            {
                "seed": key,
                "steps": str(record.steps[key]),
                "selected_step": str(record.selected_steps[key]),
            },
        )
        points: list[tuple[str, Any, int]] = []
        energy = record.selected_val_energy.get(key)
        if energy is not None:
            points.append(("selected_val_energy", energy, record.selected_steps[key]))
        if history is not None:
            rows = history[history["seed"] == seed]
            values = [name for name in rows.columns if name not in ("step", "split", "seed")]
            for row in rows.to_dict("records"):
                points += [(f"{row['split']}.{name}", row[name], row["step"]) for name in values]
        if metrics is not None:
            means = metrics[(metrics["level"] == "mean") & (metrics["seed"] == seed)]
            pairs = zip(means["metric"], means["value"], strict=True)
            points += [(f"test.{metric}", value, 0) for metric, value in pairs]
        self._log_metrics(run_id, points)
        self._client.set_terminated(run_id, "FINISHED")

    def _log_record(self, run_id: str, record: ModelRecord) -> None:
        """The record as the catalog stores it, and its readable part (no weights) as JSON."""
        import torch

        readable = {key: value for key, value in record.to_dict().items() if key != "state_dicts"}
        self._client.log_dict(run_id, readable, "model/record.json")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.pt"
            torch.save(record.to_dict(), path)
            self._client.log_artifact(run_id, str(path), "model")

    def _log_table(self, run_id: str, table: pd.DataFrame, name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            table.to_csv(path, index=False)
            self._client.log_artifact(run_id, str(path))

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        # A longer value (a long gene list) is cut here; parameters.json keeps it whole.
        entries = [Param(key, value[:_MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(entries), _PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=entries[start : start + _PARAMS_PER_BATCH])

    def _log_metrics(self, run_id: str, points: Iterable[tuple[str, Any, int]]) -> None:
        """(key, value, step) points; missing values (a metric a check did not compute) are
        left out rather than logged as NaN."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = ((key, None if v is None else float(v), step) for key, v, step in points)
        entries = [
            Metric(_KEY_CHARACTERS.sub("_", key), value, now, int(step))
            for key, value, step in values
            if value is not None and not math.isnan(value)
        ]
        for start in range(0, len(entries), _METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=entries[start : start + _METRICS_PER_BATCH])
