"""The figure of ``brainlm forecast evaluate``: each metric against the predicted step (TR), one
curve per method, drawn from ``forecast.json`` and saved as PNG.

The forecasting task writes numbers only; ``brainlm forecast evaluate``, the demo and
``brainlm report`` draw this figure from the saved ``forecast.json``.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from brainlm.report.figures import save_figure
from brainlm.tasks.forecasting.evaluate import ForecastResult

__all__ = ["draw_forecast_figure", "plot_step_curves"]

#: Titles and whether lower is better, per metric key.
_METRIC_TITLES = {"mse": ("MSE", "lower is better"), "r2": ("R$^2$", "higher is better"),
                  "pearson_r": ("Pearson r across parcels", "higher is better")}


def plot_step_curves(results: ForecastResult, path: str | Path, metrics=("mse", "r2", "pearson_r"),
                     dpi: int = 120) -> Path:
    """One panel per metric, one line per method, against the predicted step.

    Parameters
    ----------
    results : ForecastResult
        What :func:`brainlm.tasks.forecasting.evaluate` returns. BrainLM methods
        (``kind == "brainlm"``) are drawn solid, baselines dashed.
    path : path of the PNG to write (atomically: a temporary file renamed into place).
    metrics : sequence of metric keys present for every method.

    Returns
    -------
    Path of the written figure.
    """
    path = Path(path)
    methods = results.methods
    horizon = int(results.horizon_trs)
    steps = list(range(1, horizon + 1))
    # A Figure on the Agg canvas directly: no pyplot global state, no display needed.
    fig = Figure(figsize=(5.2 * len(metrics), 4.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)
    colors = colormaps["tab10"]
    for ax, key in zip(axes[0], metrics):
        for i, (name, m) in enumerate(methods.items()):
            brainlm = m.kind == "brainlm"
            ax.plot(steps, getattr(m, key), label=m.label, color=colors(i % 10),
                    linestyle="-" if brainlm else "--", linewidth=2.0 if brainlm else 1.4,
                    marker="o" if brainlm else None, markersize=3)
        title, better = _METRIC_TITLES.get(key, (key, ""))
        ax.set_title(f"{title} ({better})" if better else title, fontsize=10)
        tr = results.tr_s
        ax.set_xlabel(f"predicted step (TR{f' = {tr:g} s' if tr else ''})")
        ax.set_xlim(0.5, horizon + 0.5)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # One legend below the panels, so no curve is hidden behind it.
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = min(len(labels), 5)
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"Forecast of {horizon} TRs from {results.context_trs} TRs "
                 f"({results.n_windows} test windows)", fontsize=11)
    fig.tight_layout(rect=(0, 0.04 + 0.05 * rows, 1, 1))
    return save_figure(fig, path, dpi=dpi, bbox_inches=None)


def draw_forecast_figure(folder: str | Path) -> Path:
    """``folder/forecast_error.png`` drawn from ``folder/forecast.json`` (a results folder of
    ``brainlm forecast evaluate`` or the demo's forecasting step); returns its path."""
    folder = Path(folder)
    return plot_step_curves(ForecastResult.read(folder / "forecast.json"), folder / "forecast_error.png")
