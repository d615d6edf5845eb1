"""Figures built without pyplot: no backend switch, no global figure registry.

Nodes return these to matplotlib catalog datasets; notebooks keep their own (inline) backend.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure


def new_figure(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True
) -> tuple[Figure, Any]:
    """A figure and its axes, laid out tightly when saved."""
    figure = Figure(figsize=figsize, layout="tight")
    return figure, figure.subplots(nrows, ncols, squeeze=squeeze)
