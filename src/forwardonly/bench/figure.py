"""The figure basics every plot of the package shares: matplotlib on the Agg backend, sizes, a grid of
panels, saving. Kept apart from :mod:`forwardonly.bench.plots` so that a suite's own plots
(:mod:`forwardonly.bench.convergence`) use them without importing the generic plots, which dispatch to
them (no import cycle); :mod:`~forwardonly.bench.plots` re-exports them.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import UserError

MAX_SERIES = 12  # bars or lines in one panel
MAX_COLS = 3
DPI = 100
FONT = 9


def plt_module():
    """``matplotlib.pyplot`` on the Agg backend, with the sizes every figure here uses."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'forwardonly[plot]' (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": FONT, "axes.titlesize": FONT + 1, "legend.fontsize": FONT,
                         "xtick.labelsize": FONT, "ytick.labelsize": FONT})
    return plt


def grid(n: int, panel_w: float, panel_h: float, ncols: int = MAX_COLS, legend_rows: int = 0):
    """A figure of ``n`` panels in rows of ``ncols`` (constrained layout, so outside legends get room),
    tall enough for a legend of ``legend_rows`` entries beside it."""
    plt = plt_module()
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    height = max(nrows * panel_h, 1.0 + 0.27 * legend_rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * panel_w, height), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def save(fig, path: Path) -> str:
    fig.savefig(path, dpi=DPI)
    plt_module().close(fig)
    return str(path)
