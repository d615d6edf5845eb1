"""Project commands: Kedro's own ``kedro run``, with the project's errors printed as one line.

Kedro picks up a project's ``cli.py`` and lets its commands override the framework's. ``run``
here is Kedro's ``run`` command, unchanged, except that an error a user can act on (a
:class:`~ptrag_kedro.errors.UserError`: a missing or stale input, a bad parameter, a bad file;
or Kedro's own parameter validation, which carries our message) ends the run with that one
line and exit status 1 instead of a traceback. Any other exception (a bug) keeps its traceback.
The traceback of a user-facing error is logged at DEBUG by ``ptrag_kedro.cli``: set that logger
to DEBUG in ``conf/logging.yml`` to see it.

This module imports only Kedro, click and ``ptrag_kedro.errors``: ``kedro --help`` in the
project must not pay for torch, faiss or anndata.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.validation.exceptions import ParameterValidationError

from ptrag_kedro.errors import ParameterError, one_line, user_error_in

logger = logging.getLogger(__name__)


def user_message(error: BaseException) -> str | None:
    """The one line to show for a user's error, or None for a bug (which keeps its traceback).

    A :class:`UserError` is shown as itself, also when Kedro wrapped it (an error raised while a
    dataset loads comes wrapped in Kedro's ``DatasetError``, whose message carries ours).
    """
    if isinstance(error, ParameterValidationError):
        return one_line(error)
    found = user_error_in(error)
    if found is None:
        return None
    # Kedro's catalog prefixes a dataset's error with the dataset's name ("screen: ..."): keep
    # that, but not the dataset's whole description that its load wrapper adds.
    outer, inner = one_line(error), one_line(found)
    name = outer.removesuffix(inner).removesuffix(": ")
    return outer if outer.endswith(inner) and name and " " not in name else inner


def _with_one_line_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except Exception as error:
            message = user_message(error)
            if message is None:
                raise
            logger.debug("Traceback of the error below", exc_info=True)
            raise click.ClickException(message) from None

    return run


@click.group(name="ptrag_kedro")
def cli() -> None:
    """Commands of the ptrag-kedro project."""


run = click.Command(
    name="run",
    callback=_with_one_line_errors(kedro_run.callback),
    params=kedro_run.params,
    help=kedro_run.help,
    short_help=kedro_run.short_help,
    context_settings=kedro_run.context_settings,
)
cli.add_command(run)


def _session(env: str | None, runtime_params: dict[str, Any] | None = None) -> Any:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.utils import find_kedro_project

    project = find_kedro_project(Path.cwd()) or Path.cwd()
    bootstrap_project(project)
    return KedroSession.create(project_path=project, env=env, runtime_params=runtime_params)


def cross_validate(env: str | None, only: str, pool_only: bool) -> None:
    """Run every fold of ``cross_validation.folds`` (a held-out line and a split seed), each in
    its own data folder, then the ``cross_validation`` pipeline that pools them."""
    from ptrag_kedro.parameters import CrossValidationParameters

    with _session(env) as session:
        loader = session.load_context().config_loader
        parameters, root = loader["parameters"], loader["globals"].get("data_root", "data")
    if not parameters.get("cross_validation"):
        raise ParameterError(
            f"environment {env or 'local'} has no cross_validation.folds: run "
            "`kedro cross-validate --env=cross_validation` (the demo) or add the block"
        )
    folds = CrossValidationParameters(**parameters["cross_validation"])
    chosen = [fold for fold in folds.folds if not only or fold.name in only.split(",")]
    unknown = sorted(set(filter(None, only.split(","))) - set(folds.names))
    if unknown:
        raise ParameterError(f"--folds: unknown fold(s) {unknown}; folds: {folds.names}")
    if not pool_only:
        if folds.prepare:
            with _session(env) as session:
                session.run(pipeline_name=folds.prepare)
        for position, fold in enumerate(chosen, start=1):
            logger.info("Fold %d of %d: %s", position, len(chosen), fold.name)
            runtime = {
                "data_root": f"{root}/folds/{fold.name}",
                "heldout_cell_line": fold.heldout_cell_line,
                "split_seed": fold.split_seed,
            }
            with _session(env, runtime) as session:
                session.run(pipeline_name=folds.pipeline)
    with _session(env) as session:
        session.run(pipeline_name="cross_validation")


@cli.command(name="cross-validate")
@click.option("--env", "-e", default=None, help="Kedro environment with cross_validation.folds")
@click.option("--folds", "only", default="", help="Comma-separated folds to run (default: all)")
@click.option("--pool-only", is_flag=True, help="Only pool folds that have already run")
def cross_validate_command(env: str | None, only: str, pool_only: bool) -> None:
    """Every fold of the environment's cross_validation.folds, then the pooled comparison."""
    _with_one_line_errors(cross_validate)(env, only, pool_only)
