"""Brain figures: parcel values at their MNI coordinates on a glass brain, network maps,
per-network summaries and confusion matrices.

Every function draws one PNG with matplotlib's non-interactive Agg backend and writes it
atomically (rendered in memory, written to a temporary name, renamed), so the HTML report
never embeds a half-written image. Glass brains come from ``nilearn.plotting`` (markers at the
parcel centres), which needs no template download.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # figures are files: never open a window, work on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from brainlm.data.atlas import Atlas, network_order  # noqa: E402
from brainlm.report.figures import save_figure  # noqa: E402
from brainlm.errors import BrainLMInputError  # noqa: E402

__all__ = ["NETWORK_COLOURS", "ParcelMapStyle", "network_colour", "plot_confusion", "plot_network_summary",
           "plot_parcel_networks", "plot_parcel_values"]

#: The colours of the published Yeo-7 network colour table.
NETWORK_COLOURS = {
    "Vis": "#781286", "SomMot": "#4682B4", "DorsAttn": "#00760E", "SalVentAttn": "#C43AFA",
    "Limbic": "#B5C47A", "Cont": "#E69422", "Default": "#CD3E4E",
}
#: Colour of parcels without a network label.
UNLABELLED = "#9E9E9E"
_FALLBACK = plt.get_cmap("tab10")


def network_colour(name: str | None, index: int = 0) -> str:
    """Colour of a network: the Yeo-7 colour, grey for ``None``, else a tab10 colour by index."""
    if name is None:
        return UNLABELLED
    return NETWORK_COLOURS.get(name, matplotlib.colors.to_hex(_FALLBACK(index % 10)))


def _check_values(values, atlas: Atlas, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (atlas.n_parcels,):
        raise BrainLMInputError(f"{what} has shape {v.shape}; expected ({atlas.n_parcels},), one "
                                f"value per parcel of atlas {atlas.name!r}")
    return v


def _node_size(n_parcels: int) -> float:
    # Markers shrink with the parcel count so that 400 parcels do not merge into one blob.
    return float(np.clip(3000.0 / n_parcels, 8.0, 60.0))


def _drawable_range(vmin: float, vmax: float) -> tuple[float, float]:
    """The colour range, widened around its middle when nilearn could not draw it.

    nilearn writes the colour bar's bounds with 2 significant digits and fails on a range that
    rounds to one value: a constant map, or one spanning 0.996..1.004 (the near-uniform CLS
    attention of an untrained or imported model)."""
    def collapsed(lo, hi):
        return float(f"{lo:.2g}") >= float(f"{hi:.2g}")

    if not collapsed(vmin, vmax):
        return vmin, vmax
    mid = (vmin + vmax) / 2
    half = max((vmax - vmin) / 2, 1e-9 * max(abs(mid), 1e-9))
    while collapsed(mid - half, mid + half):
        half *= 2
    return mid - half, mid + half


@dataclass(frozen=True)
class ParcelMapStyle:
    """How :func:`plot_parcel_values` colours and lays out a map.

    Parameters
    ----------
    cmap : str
        Matplotlib colour map; use a diverging one (``"RdBu_r"``) for differences.
    vmin, vmax : float, optional
        Colour range (default: the data range, or +-max|value| when ``symmetric``).
    symmetric : bool, optional
        Centre the colour range on 0 (default: True when the values have both signs).
    colorbar_label : str, optional
        Written above the colour bar (the quantity and its unit).
    display_mode : str
        nilearn glass-brain views: ``"lzry"`` (left, top, right, front) or ``"ortho"`` ...
    node_size : float, optional
        Marker size in points^2 of a middling value (default: shrinks with the parcel count).

    Raises
    ------
    BrainLMInputError
        An unknown colour map, a range with ``vmin`` above ``vmax``, or a marker size that is
        not positive.
    """

    cmap: str = "viridis"
    vmin: float | None = None
    vmax: float | None = None
    symmetric: bool | None = None
    colorbar_label: str | None = None
    display_mode: str = "lzry"
    node_size: float | None = None

    def __post_init__(self):
        if self.cmap not in matplotlib.colormaps:
            raise BrainLMInputError(f"cmap {self.cmap!r}; expected a matplotlib colour map name "
                                    "(viridis, RdBu_r, magma_r ...)")
        if self.vmin is not None and self.vmax is not None and self.vmin > self.vmax:
            raise BrainLMInputError(f"vmin {self.vmin} is above vmax {self.vmax}; expected vmin <= vmax")
        if self.node_size is not None and not self.node_size > 0:
            raise BrainLMInputError(f"node_size {self.node_size!r}; expected a positive number")


def plot_parcel_values(values, atlas: Atlas, path: str | Path, *, title: str = "",
                       style: ParcelMapStyle = ParcelMapStyle(), marked=None,
                       marked_label: str = "marked") -> Path:
    """Draw one value per parcel as a marker at the parcel's MNI centre on a glass brain.

    Parameters
    ----------
    values : array-like, shape (P,)
        One number per parcel in atlas order; NaN parcels are left out.
    atlas : Atlas
        Parcel centres (``atlas.xyz``, MNI mm).
    path : path-like
        PNG file to write.
    title : str
    style : ParcelMapStyle
        Colour map and range, colour-bar label, views and marker size.
    marked : array-like of bool, shape (P,), optional
        Parcels ringed in black (e.g. significant ones), named ``marked_label`` in a legend.

    Returns
    -------
    pathlib.Path of the PNG.
    """
    # nilearn.plotting takes seconds to import; only the brain figures need it.
    from nilearn import plotting

    v = _check_values(values, atlas, "values")
    ring = None if marked is None else _check_values(marked, atlas, "marked").astype(bool)
    keep = np.isfinite(v)
    if not keep.any():
        raise BrainLMInputError("values are all NaN; nothing to draw")
    v, xyz = v[keep], atlas.xyz[keep].astype(np.float64)
    vmin, vmax, symmetric, cmap = style.vmin, style.vmax, style.symmetric, style.cmap
    if symmetric is None:
        symmetric = bool(v.min() < 0 < v.max())
    if symmetric:
        m = float(np.abs(v).max()) or 1.0
        vmin, vmax = (-m if vmin is None else vmin), (m if vmax is None else vmax)
    vmin = float(v.min()) if vmin is None else vmin
    vmax = float(v.max()) if vmax is None else vmax
    vmin, vmax = _drawable_range(vmin, vmax)
    fig = plt.figure(figsize=(11, 3.4))
    # Larger |value| -> larger marker as well as a stronger colour, so that the top parcels
    # stand out even where markers overlap in projection.
    rel = np.abs(v) / (np.abs(v).max() or 1.0) if symmetric else (v - vmin) / (vmax - vmin)
    base = style.node_size or _node_size(atlas.n_parcels)
    sizes = base * (0.45 + 1.1 * np.clip(rel, 0, 1))
    order = np.argsort(np.abs(v) if symmetric else v)  # strongest drawn last, on top
    display = plotting.plot_markers(v[order], xyz[order], node_size=sizes[order], node_cmap=cmap,
                                    node_vmin=vmin, node_vmax=vmax, display_mode=style.display_mode,
                                    figure=fig, title=None, colorbar=True, alpha=0.9,
                                    node_kwargs={"edgecolors": "k", "linewidths": 0.3})
    if ring is not None and ring.any():
        display.add_markers(atlas.xyz[ring].astype(np.float64), marker_color="none",
                            marker_size=float(sizes.max()) * 2.0, edgecolors="k", linewidths=1.4)
        fig.legend(handles=[plt.Line2D([], [], marker="o", color="none", markeredgecolor="k",
                                       markeredgewidth=1.4, markersize=8, label=marked_label)],
                   loc="lower center", frameon=False, bbox_to_anchor=(0.5, -0.06), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12, y=1.02)
    cbar = getattr(display, "_cbar", None)  # nilearn keeps its colour bar here
    if cbar is not None:
        # Round, evenly spaced ticks instead of nilearn's data-dependent ones.
        ticks = matplotlib.ticker.MaxNLocator(6).tick_values(vmin, vmax)
        cbar.set_ticks(ticks[(ticks >= vmin - 1e-12) & (ticks <= vmax + 1e-12)])
        cbar.ax.tick_params(labelsize=8)
        if style.colorbar_label:
            cbar.ax.set_title(style.colorbar_label, fontsize=8, pad=6)
    return save_figure(fig, path, dpi=150)


def plot_parcel_networks(labels: Sequence[str | None], atlas: Atlas, path: str | Path, *,
                         title: str = "", marked=None, marked_label: str = "marked",
                         display_mode: str = "lzry") -> Path:
    """Parcels coloured by network (Yeo-7 colours) on a glass brain, with a legend.

    Parameters
    ----------
    labels : sequence of str or None, length P
        Network of each parcel; ``None`` is drawn grey ("no label").
    marked : array-like of bool, shape (P,), optional
        Parcels drawn with a thick black edge (e.g. misclassified ones), named ``marked_label``
        in the legend.
    """
    # nilearn.plotting takes seconds to import; only the brain figures need it.
    from nilearn import plotting

    labels = list(labels)
    if len(labels) != atlas.n_parcels:
        raise BrainLMInputError(f"labels have {len(labels)} entries; expected {atlas.n_parcels} "
                                f"(one per parcel of atlas {atlas.name!r})")
    names = network_order(labels)
    colour = {n: network_colour(n, i) for i, n in enumerate(names)}
    colours = [colour.get(n, UNLABELLED) for n in labels]
    size = _node_size(atlas.n_parcels)
    fig = plt.figure(figsize=(11, 3.4))
    display = plotting.plot_connectome(
        np.zeros((atlas.n_parcels, atlas.n_parcels)), atlas.xyz.astype(np.float64), node_color=colours,
        node_size=size, display_mode=display_mode, figure=fig, colorbar=False,
        node_kwargs={"edgecolors": "k", "linewidths": 0.3})
    if marked is not None:
        marked = np.asarray(marked, dtype=bool)
        if marked.shape != (atlas.n_parcels,):
            raise BrainLMInputError(f"marked has shape {marked.shape}; expected ({atlas.n_parcels},)")
        if marked.any():
            display.add_markers(atlas.xyz[marked].astype(np.float64), marker_color="none",
                                marker_size=size * 2.2, edgecolors="k", linewidths=1.4)
    handles = [Patch(facecolor=colour[n], edgecolor="k", label=n) for n in names]
    if any(n is None for n in labels):
        handles.append(Patch(facecolor=UNLABELLED, edgecolor="k", label="no label"))
    if marked is not None and marked.any():
        handles.append(plt.Line2D([], [], marker="o", color="none", markeredgecolor="k",
                                  markeredgewidth=1.4, markersize=8, label=marked_label))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 9), frameon=False,
               bbox_to_anchor=(0.5, -0.1), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12, y=1.02)
    return save_figure(fig, path, dpi=150)


def plot_network_summary(values, networks: Sequence[str | None], path: str | Path, *,
                         title: str = "", ylabel: str = "value", reference: float | None = 0.0) -> Path:
    """Mean +- standard error of a per-parcel value within each network, parcels as dots.

    Parameters
    ----------
    values : array-like, shape (P,)
    networks : sequence of str or None, length P
        Parcels with ``None`` are grouped as "no label".
    reference : float, optional
        A horizontal line (0 for differences, 1 for relative attention; ``None``: none).
    """
    v = np.asarray(values, dtype=np.float64)
    nets = ["no label" if n is None else str(n) for n in networks]
    if v.shape != (len(nets),):
        raise BrainLMInputError(f"values have shape {v.shape}; expected ({len(nets)},), one per parcel")
    names = network_order(n for n in nets if n != "no label") + (["no label"] if "no label" in nets else [])
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.0, 3.8))
    rng = np.random.default_rng(0)  # fixed jitter: the same figure every time
    for i, n in enumerate(names):
        x = v[np.array(nets) == n]
        x = x[np.isfinite(x)]
        if not x.size:
            continue
        sem = x.std(ddof=1) / np.sqrt(x.size) if x.size > 1 else 0.0
        c = UNLABELLED if n == "no label" else network_colour(n, i)
        ax.bar(i, x.mean(), yerr=sem, color=c, edgecolor="k", linewidth=0.6, capsize=3, alpha=0.85)
        ax.scatter(i + rng.uniform(-0.25, 0.25, x.size), x, s=9, color="k", alpha=0.55, zorder=3,
                   linewidths=0)
    if reference is not None:
        ax.axhline(reference, color="k", linewidth=0.8)
    ax.set_xticks(range(len(names)), [f"{n}\n(n={int((np.array(nets) == n).sum())})" for n in names],
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def plot_confusion(matrix, labels: Sequence[str], path: str | Path, *, title: str = "",
                   normalize: bool = True) -> Path:
    """A confusion matrix (rows: true network, columns: predicted), counts annotated.

    Parameters
    ----------
    matrix : array-like, shape (K, K)
        Counts, as from ``sklearn.metrics.confusion_matrix``.
    normalize : bool
        Colour by the share of each true network (row), annotate "count" and the share.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (len(labels), len(labels)):
        raise BrainLMInputError(f"confusion matrix has shape {m.shape}; expected ({len(labels)}, {len(labels)})")
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(0.75 * len(labels) + 2.6, 0.7 * len(labels) + 1.8))
    disp = ConfusionMatrixDisplay(share if normalize else m, display_labels=list(labels))
    disp.plot(ax=ax, cmap="Blues", colorbar=True, include_values=False, xticks_rotation=45,
              im_kw={"vmin": 0, "vmax": 1} if normalize else None)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j] or i == j:
                dark = (share if normalize else m / max(m.max(), 1))[i, j] > 0.55
                ax.text(j, i, f"{int(m[i, j])}" + (f"\n{share[i, j]:.0%}" if normalize else ""),
                        ha="center", va="center", fontsize=7, color="white" if dark else "black")
    disp.im_.colorbar.set_label("share of the true network" if normalize else "parcels")
    ax.set_xlabel("predicted network")
    ax.set_ylabel("true network")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)
