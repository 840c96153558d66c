"""The few drawing habits every analysis figure shares: colours, grids, log axes when they fit."""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib
import numpy as np
from matplotlib.axes import Axes

__all__ = ["color", "finish", "positive_log"]


def color(i: int) -> tuple[float, float, float]:
    """The i-th colour of matplotlib's tab10 cycle (wrapping), so series keep their colour across panels."""
    colors = matplotlib.colormaps["tab10"].colors
    return colors[i % len(colors)]


def positive_log(ax: Axes, values: Iterable[float], axis: str = "y") -> bool:
    """Use a log scale on `axis` when every finite value is positive (a log axis cannot show zero)."""
    array = np.asarray(list(values), dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size and (array > 0).all():
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        return True
    return False


def finish(ax: Axes, *, legend: bool = True, grid_axis: str = "both", fontsize: float | None = None,
           title: str | None = None) -> None:
    """A light grid and, when asked and something is labelled, a legend."""
    ax.grid(alpha=0.3, which="both", axis=grid_axis)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, title=title)
