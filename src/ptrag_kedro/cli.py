"""Project commands: Kedro's own ``kedro run``, with the project's errors printed as one line.

Kedro picks up a project's ``cli.py`` and lets its commands override the framework's. ``run``
here is Kedro's ``run`` command, unchanged, except that an error this project raises for a user
to act on (a missing or stale input, a bad parameter, a bad file) ends the run with that one
line and exit status 1 instead of a traceback. Any other exception (a bug) keeps its traceback.
The traceback of a user-facing error is logged at DEBUG by ``ptrag_kedro.cli``: set that logger
to DEBUG in ``conf/logging.yml`` to see it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.io import DatasetError
from kedro.validation.exceptions import ParameterValidationError

from ptrag_kedro.download import DownloadError
from ptrag_kedro.parameters import ParameterError
from ptrag_kedro.pipelines.genept.nodes import GeneEmbeddingError
from ptrag_kedro.pipelines.ingestion.nodes import ScreenError
from ptrag_kedro.pipelines.retrieval_index.nodes import RetrievalError
from ptrag_kedro.provenance import StaleArtefactError
from ptrag_kedro.variants import VariantError

logger = logging.getLogger(__name__)

#: Errors that tell a user what to do; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    DatasetError,
    DownloadError,
    GeneEmbeddingError,
    ParameterError,
    ParameterValidationError,
    RetrievalError,
    ScreenError,
    StaleArtefactError,
    VariantError,
)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined)."""
    return " ".join(str(error).split()) or type(error).__name__


def _with_one_line_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except USER_ERRORS as error:
            logger.debug("Traceback of the error below", exc_info=True)
            raise click.ClickException(one_line(error)) from None

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
