"""Plain progress lines for long loops: a log line every so many units, readable in any log.

A progress bar redraws one terminal line; written to a file (SLURM, CI, ``tee``) it shows
nothing until the end. Long nodes (training, ingestion's passes over X, embedding, prediction)
log through the project's loggers instead: ``<task>: <done>/<total> <unit> (<rate> <unit>/s)``,
then any fields the caller adds. No torch here: ingestion and the CLI import it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

_Item = TypeVar("_Item")

#: Lines a loop of known length logs, about (its last unit always logs one).
LINES_PER_LOOP = 10


def every_for(total: int, lines: int = LINES_PER_LOOP) -> int:
    """The interval that gives about ``lines`` lines over ``total`` units."""
    return max(1, math.ceil(total / lines))


class ProgressLog:
    """Logs ``task``'s progress each time ``done`` reaches a multiple of ``every``, and at
    ``total``; the rate is over the units since the previous line.

    Args:
        logger: the caller's logger (``logging.getLogger(__name__)``).
        task: what is progressing ("Training ptrag, seed 0").
        total: units in all.
        unit: what is counted ("steps", "raw rows").
        every: units between lines.
        done: units already done (a resumed run starts there).
    """

    def __init__(
        self,
        logger: logging.Logger,
        task: str,
        total: int,
        unit: str,
        every: int,
        done: int = 0,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.logger, self.task, self.total, self.unit, self.every = logger, task, total, unit, every
        self.done = done
        self._since = (done, time.perf_counter())

    def due(self, done: int) -> bool:
        """Whether :meth:`update` with ``done`` logs a line (an interval ends there, or the
        loop is complete): a caller formats its fields only then."""
        crossed = done // self.every > self.done // self.every
        return crossed or done >= self.total > self.done

    def update(self, done: int, **fields: str) -> bool:
        """``done`` units are done; logs a line (with ``fields``, already formatted) when an
        interval ends here or the loop is complete. Returns whether it logged."""
        due = self.due(done)
        self.done = done
        if not due:
            return False
        previous, started = self._since
        now = time.perf_counter()
        rate = (done - previous) / max(now - started, 1e-9)
        self._since = (done, now)
        extra = "".join(f", {name} {value}" for name, value in fields.items())
        self.logger.info(
            "%s: %s/%s %s (%.3g %s/s)%s",
            self.task,
            f"{done:,}",
            f"{self.total:,}",
            self.unit,
            rate,
            self.unit,
            extra,
        )
        return True


def logged(
    items: Iterable[_Item],
    logger: logging.Logger,
    task: str,
    total: int,
    unit: str,
    lines: int = LINES_PER_LOOP,
) -> Iterator[_Item]:
    """``items`` (``total`` of them), with about ``lines`` progress lines as they are consumed;
    a loop of one item logs nothing (its node's own line says when it is done)."""
    progress = (
        ProgressLog(logger, task, total, unit, every_for(total, lines)) if total > 1 else None
    )
    for done, item in enumerate(items, start=1):
        yield item
        if progress is not None:
            progress.update(done)
