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
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.validation.exceptions import ParameterValidationError

from ptrag_kedro.errors import one_line, user_error_in

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
