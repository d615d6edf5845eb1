"""The one kind of error a user can cause and fix, and how it is shown.

Every error a user's input, parameters or files can cause (a bad parameter, a malformed or
missing file, a stale artefact, a failed download) is a :class:`UserError`: its message is one
line naming the file, the field or the parameter, and what to do. The project's ``kedro run``
(``cli.py``) prints that line and exits with status 1; anything else is a bug and keeps its
traceback. This module imports nothing heavy, so the CLI can know the type without loading
torch, faiss or anndata.
"""

from __future__ import annotations

from kedro.io import DatasetError


class UserError(Exception):
    """Something the user can fix; the message says what, on one line."""


class ParameterError(UserError, ValueError):
    """A parameter has a value the project cannot use; the message names it."""


class DatasetFileError(UserError, DatasetError):
    """A dataset's file is missing, unreadable, or cannot be written (Kedro passes a
    ``DatasetError`` raised by a dataset through unchanged, so the type survives the catalog)."""


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """The message on one line (whitespace runs joined), at most ``limit`` characters."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text if limit is None else text[:limit]


def user_error_in(error: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``error``: itself, or one it was raised from (Kedro wraps
    an error raised while loading a dataset in its own ``DatasetError``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
