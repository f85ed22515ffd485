"""Figures the report draws itself (training curves, reconstruction examples, prediction scores)
and :func:`save_figure`, through which every PNG of the project is written.

Every figure is written as PNG through :func:`save_figure` (temporary name, then rename), so a
report never embeds a half-written image. Other modules here: the brain-map and confusion-matrix
primitives in ``report.brain``, the network and group-attention figures in
``report.attention_figures``, forecasting error curves in ``report.forecasting_figures``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from brainlm.data.atomic import atomic_path  # noqa: E402
from brainlm.errors import BrainLMInputError  # noqa: E402
from brainlm.tasks.prediction.evaluate import PredictionResult  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 110, bbox_inches: str | None = "tight") -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and close it (every figure of the package
    goes through here: brain maps, forecasting curves and the report's own figures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=bbox_inches, facecolor="white")
    finally:
        plt.close(fig)
    return path


def training_curves(metrics_csv: str | Path, path: str | Path) -> Path:
    """Training loss per step and validation masked MSE / R^2 per epoch, with the trivial
    baselines, from a pretraining run's ``logs/csv/version_*/metrics.csv``."""
    try:
        log = pd.read_csv(metrics_csv)
    except (OSError, pd.errors.ParserError) as e:
        raise BrainLMInputError(f"cannot read the training log ({e})", str(metrics_csv)) from None
    needed = {"step", "train/loss", "val/masked_mse", "val/baseline_zero_mse", "val/baseline_mean_mse"}
    if missing := needed - set(log.columns):
        raise BrainLMInputError(f"training log lacks column(s) {sorted(missing)}", str(metrics_csv))
    train = log.dropna(subset=["train/loss"])
    val = log.dropna(subset=["val/masked_mse"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(train["step"], train["train/loss"], color="0.45", lw=1, label="training loss (masked MSE)")
    ax1.plot(val["step"], val["val/masked_mse"], "o-", color="C0", ms=3, label="validation masked MSE")
    ax1.plot(val["step"], val["val/baseline_zero_mse"], "--", color="C3", label="baseline: predict 0")
    ax1.plot(val["step"], val["val/baseline_mean_mse"], ":", color="C1",
             label="baseline: visible parcel mean")
    ax1.set(xlabel="optimizer step", ylabel="MSE (scaled units)", title="Pretraining")
    ax1.set_ylim(0, max(1.2 * val["val/baseline_mean_mse"].max(), float(val["val/masked_mse"].min()) * 1.5))
    ax1.legend(fontsize=8)
    if "val/r2" in log:
        ax2.plot(val["step"], val["val/r2"], "o-", color="C2", ms=3)
    ax2.axhline(0, color="0.6", lw=0.8)
    ax2.set(xlabel="optimizer step", ylabel="R$^2$ on masked values", title="Validation R$^2$ (held-out subjects)")
    fig.tight_layout()
    return save_figure(fig, path)


def reconstruction_example(target: np.ndarray, prediction: np.ndarray, mask: np.ndarray,
                           parcel_names: list[str], tr_s: float, path: str | Path,
                           title: str = "Masked reconstruction", n_traces: int = 3) -> Path:
    """Carpet plots (true, predicted where masked, absolute error) of one window and a few
    parcels' traces.

    Parameters
    ----------
    target, prediction : [T, P] window in model input units (scaled).
    mask : [T, P] bool, True where the model had to predict.
    tr_s : TR in seconds (x axis of the traces).
    """
    if not (target.shape == prediction.shape == mask.shape) or target.ndim != 2:
        raise BrainLMInputError(f"reconstruction arrays must all be [T, P]; got {target.shape}, "
                                f"{prediction.shape}, {mask.shape}")
    shown = np.where(mask, prediction, target)
    lim = float(np.percentile(np.abs(target), 99)) or 1.0
    fig = plt.figure(figsize=(11, 6.4))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.25, 1])
    panels = [(target.T, "true (scaled BOLD)", "RdBu_r", (-lim, lim)),
              (np.ma.masked_where(~mask.T, shown.T), "prediction at masked tokens", "RdBu_r", (-lim, lim)),
              (np.ma.masked_where(~mask.T, np.abs(prediction - target).T), "absolute error", "magma", (0, lim))]
    for k, (img, label, cmap, (lo, hi)) in enumerate(panels):
        ax = fig.add_subplot(grid[0, k])
        im = ax.imshow(img, aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set(title=label, xlabel="TR", ylabel="parcel" if k == 0 else None)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    # The parcels with the most masked values show the most of what the model filled in.
    order = np.argsort(-mask.sum(axis=0), kind="stable")[:n_traces]
    t = np.arange(target.shape[0]) * tr_s
    for k, p in enumerate(order):
        ax = fig.add_subplot(grid[1, k])
        ax.plot(t, target[:, p], color="0.2", lw=1, label="true")
        pred = np.where(mask[:, p], prediction[:, p], np.nan)
        ax.plot(t, pred, color="C3", lw=1.4, label="predicted (masked)")
        edges = np.flatnonzero(np.diff(np.r_[0, mask[:, p].astype(int), 0]))
        for a, b in zip(edges[::2], edges[1::2]):
            ax.axvspan(a * tr_s, b * tr_s, color="C3", alpha=0.08, lw=0)
        ax.set(title=parcel_names[p], xlabel="time (s)")
        if k == 0:
            ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def prediction_scores(results: list[PredictionResult], path: str | Path) -> Path:
    """One panel per predicted target: each method's primary metric (mean over seeds, error bar
    = SD over seeds, or over folds for methods run on one seed), the FC reference marked.

    ``results``: what ``brainlm evaluate predict`` returns (``prediction.json``).
    """
    if not results:
        raise BrainLMInputError("no prediction results to draw")
    fig, axes = plt.subplots(1, len(results), figsize=(5.6 * len(results), 0.32 * max(
        len(r.methods) for r in results) + 1.6), squeeze=False)
    family_colour = {}
    for ax, res in zip(axes[0], results):
        metric, ref = res.primary_metric, res.reference
        names = [m["name"] for m in res.methods]
        means = np.array([np.nan if res.mean(n) is None else res.mean(n) for n in names])
        spread = []
        for n in names:
            st = res.summary[n][metric]
            v = st["sd_seeds"] if st["sd_seeds"] is not None else st["sd_folds"]
            spread.append(0.0 if v is None else v)
        fams = [m["family"] for m in res.methods]
        for f in fams:
            family_colour.setdefault(f, f"C{len(family_colour)}")
        y = np.arange(len(names))[::-1]
        ax.barh(y, means, xerr=spread, color=[family_colour[f] for f in fams], alpha=0.85,
                error_kw={"lw": 1, "capsize": 2})
        ref_value = means[names.index(ref)]
        ax.axvline(ref_value, color="k", ls="--", lw=1)
        ax.set_yticks(y, [n + ("  (reference)" if n == ref else "") for n in names], fontsize=8)
        ax.set(xlabel=metric.replace("_", " "), title=f"{res.target['column']} ({res.target['task']})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in family_colour.values()]
    fig.legend(handles, list(family_colour), loc="lower center", ncol=len(family_colour), fontsize=8,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, path)
