"""The latent-space figure: PCA maps of BrainLM embeddings and of FC features, coloured by a
column, with the separability scores in the titles, drawn from the numbers that
:func:`brainlm.tasks.latent.latent_space` saved (nothing is recomputed here)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from brainlm.report.figures import save_figure  # noqa: E402
from brainlm.tasks.latent import LatentResult  # noqa: E402

__all__ = ["draw_latent_figure", "latent_caption", "score_text"]


def score_text(result: LatentResult, features: str) -> str:
    """One line for ``features`` ("brainlm" or "fc"): the score, its chance mean and p-value,
    e.g. ``silhouette 0.12 (chance -0.04, p=0.005)``."""
    sep = result.separability(features)
    name = "silhouette" if result.kind == "categorical" else "neighbour Spearman"
    chance = "n/a" if sep.get("chance_mean") is None else f"{sep['chance_mean']:.2f}"
    p = "n/a" if sep.get("p_value") is None else f"{sep['p_value']:.3g}"
    score = "n/a" if sep.get("score") is None else f"{sep['score']:.2f}"
    return f"{name} {score} (chance {chance}, p={p})"


def latent_caption(result: LatentResult) -> str:
    """A caption for the report: what is drawn and how the score reads."""
    return (f"PCA maps of {result.n_recordings} recordings' BrainLM embeddings ({result.pooling}), of their "
            f"{result.n_windows} windows, and of their functional connectivity (Fisher-z FC, "
            f"upper triangle), coloured by {result.column!r}. Score: {result.score['meaning']}; "
            f"chance is the mean over {result.settings['n_permutations']} permutations of the column.")


def draw_latent_figure(result: LatentResult | str | Path, path: str | Path) -> Path:
    """Draw a :func:`~brainlm.tasks.latent.latent_space` result (or its JSON file) to ``path``
    (PNG): BrainLM recordings, BrainLM windows (when any) and FC recordings side by side.

    Categorical columns get a legend (one colour per level), continuous ones a colour bar."""
    if not isinstance(result, LatentResult):
        result = LatentResult.read(result)
    rec, win = result.recordings, result.windows
    panels = [("BrainLM, recordings", rec["brainlm"]["pca"], rec["values"], score_text(result, "brainlm"))]
    if win["start_tr"]:
        panels.append(("BrainLM, windows", win["brainlm"]["pca"], win["values"], "(map only; scored per recording)"))
    panels.append(("FC, recordings", rec["fc"]["pca"], rec["values"], score_text(result, "fc")))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels) + 1.2, 4.2), squeeze=False)
    categorical = result.kind == "categorical"
    levels = result.levels or sorted({str(v) for v in rec["values"]})
    colours = {lv: plt.get_cmap("tab10" if len(levels) <= 10 else "tab20")(i % 20) for i, lv in enumerate(levels)}
    finite = np.array([v for v in rec["values"] if v is not None], dtype=float) if not categorical else None
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite is not None and len(finite) else (0.0, 1.0)
    mappable = None
    for ax, (title, pca, values, score) in zip(axes[0], panels):
        x, y = np.asarray(pca["x"], dtype=float), np.asarray(pca["y"], dtype=float)
        ms = 14 if title.endswith("windows") else 30
        if categorical:
            for lv in levels:
                sel = np.array([str(v) == lv for v in values], dtype=bool)
                ax.scatter(x[sel], y[sel], s=ms, color=colours[lv], label=lv, alpha=0.8, edgecolors="none")
        else:
            c = np.array([np.nan if v is None else v for v in values], dtype=float)
            mappable = ax.scatter(x, y, s=ms, c=c, cmap="viridis", vmin=vmin, vmax=vmax, alpha=0.85,
                                  edgecolors="none")
        ev = pca.get("explained_variance") or [0.0, 0.0]
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * (ev[1] if len(ev) > 1 else 0):.0f}% of variance)")
        ax.set_title(f"{title}\n{score}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if categorical:
        axes[0][-1].legend(title=result.column, fontsize=8, title_fontsize=8, loc="center left",
                           bbox_to_anchor=(1.02, 0.5), frameon=False)
    elif mappable is not None:
        fig.colorbar(mappable, ax=list(axes[0]), shrink=0.8, label=result.column)
    fig.suptitle(f"Latent space coloured by {result.column!r}", fontsize=10, y=1.04)
    return save_figure(fig, path)
