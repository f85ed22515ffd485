"""The figures of ``brainlm networks`` and ``brainlm attention``, drawn from their saved results.

Each task writes numbers only (``networks.json`` / ``group_attention.json`` and a ``parcels.tsv``
table). The commands and the demo draw the PNGs into the results folder with
:func:`draw_network_folder` / :func:`draw_group_folder`, and ``brainlm report`` calls
:func:`draw_network_figures` / :func:`draw_group_figures` on the same saved files. So a results
folder written without figures still gets every figure in the report, and each figure has one
definition.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.data.atlas import Atlas
from brainlm.report.brain import (ParcelMapStyle, plot_confusion, plot_network_summary, plot_parcel_networks,
                                  plot_parcel_values)
from brainlm.tasks.group_attention import GroupAttentionResult
from brainlm.tasks.group_attention import read_parcels as read_group_parcels
from brainlm.tasks.networks import NetworksResult
from brainlm.tasks.networks import read_parcels as read_network_parcels

__all__ = ["draw_group_figures", "draw_group_folder", "draw_network_figures", "draw_network_folder"]


def draw_network_figures(result: NetworksResult, parcels: pd.DataFrame, folder: str | Path) -> dict[str, str]:
    """The figures of one network identification (``brainlm networks``), drawn from its saved
    results alone.

    Parameters
    ----------
    result : NetworksResult
        ``networks.json``.
    parcels : DataFrame
        ``parcels.tsv`` (:func:`brainlm.tasks.networks.read_parcels`): parcel, x, y, z (MNI mm), network, the kNN
        predictions per feature set and ``relative_cls_attention`` (1 = uniform).
    folder : path
        Where the PNGs go.

    Returns
    -------
    dict
        Figure name -> file name in ``folder``.
    """
    folder = Path(folder)
    atlas = Atlas.from_frame(parcels, result.atlas, names_column="parcel", source=str(folder))
    y_all = [n or None for n in parcels["network"].astype(str)]
    labelled = np.array([n is not None for n in y_all])
    order = result.confusion["labels"]
    acc = {f"{m.model}: {m.features}": m.knn_accuracy for m in result.methods}
    names = {}
    for key, fname in (("BrainLM: cls_attention (kNN)", "confusion_cls_attention.png"),
                       ("baseline: fc_profile (kNN)", "confusion_fc_profile.png")):
        tag = key.removesuffix(" (kNN)")
        plot_confusion(result.confusion[key], order, folder / fname,
                       title=f"{key}: accuracy {acc[tag]:.1%}\n(leave one parcel out, "
                       f"{result.labelled_parcels} parcels, {atlas.name})")
        names[key] = fname
    plot_parcel_networks(y_all, atlas, folder / "networks_true.png",
                         title=f"Network labels ({result.labels}), {atlas.name}")
    pred = parcels["knn[BrainLM: cls_attention]"].astype(str).to_numpy()
    wrong = labelled & (pred != parcels["network"].astype(str).to_numpy())
    plot_parcel_networks([p or None for p in pred], atlas, folder / "networks_predicted.png",
                         title=f"Networks predicted from CLS attention (kNN, leave one parcel out): "
                         f"{acc['BrainLM: cls_attention']:.1%} correct", marked=wrong,
                         marked_label="misclassified")
    cls_map = parcels["relative_cls_attention"].to_numpy(dtype=np.float64)
    plot_parcel_values(cls_map, atlas, folder / "cls_attention_map.png",
                       title=f"Mean CLS attention per parcel ({result.recordings} recordings, "
                       f"{result.windows} windows; 1 = uniform)",
                       style=ParcelMapStyle(cmap="magma_r", symmetric=False, colorbar_label="relative\nattention"))
    plot_network_summary(cls_map, y_all, folder / "cls_attention_networks.png",
                         title="Mean CLS attention by network", ylabel="relative CLS attention (1 = uniform)",
                         reference=1.0)
    names.update({"networks_true": "networks_true.png", "networks_predicted": "networks_predicted.png",
                  "cls_attention_map": "cls_attention_map.png",
                  "cls_attention_networks": "cls_attention_networks.png"})
    return names


def draw_group_figures(result: GroupAttentionResult, parcels: pd.DataFrame, folder: str | Path) -> dict[str, str]:
    """The figures of one group comparison (``brainlm attention``), drawn from its saved results
    alone.

    Parameters
    ----------
    result : GroupAttentionResult
        ``group_attention.json``.
    parcels : DataFrame
        ``parcels.tsv`` (:func:`brainlm.tasks.group_attention.read_parcels`): parcel, network, x, y, z (MNI mm) and per map
        (``attention``, ``fc_strength``) the group means, difference, Welch t, p, q, significance.
    folder : path
        Where the PNGs go.

    Returns
    -------
    dict
        Figure name -> file name in ``folder``.
    """
    folder = Path(folder)
    atlas = Atlas.from_frame(parcels, result.atlas, names_column="parcel", source=str(folder))
    nets = [n or None for n in parcels["network"].astype(str)]
    a, b, col = result.groups["a"], result.groups["b"], result.group_by
    alpha = result.settings["alpha"]

    def column(what, name):
        return parcels[f"{what}_{name}"].to_numpy(dtype=np.float64)

    significant = parcels["attention_significant"].astype(str).str.lower().eq("true").to_numpy()
    names = {}
    plot_parcel_values(column("attention", "difference"), atlas, folder / "difference_map.png",
                       title=f"CLS attention, {col}={b} minus {col}={a} "
                       f"({int(significant.sum())} parcel(s) FDR q < {alpha})",
                       style=ParcelMapStyle(cmap="RdBu_r", colorbar_label="difference\n(relative)"), marked=significant,
                       marked_label=f"FDR q < {alpha}")
    plot_parcel_values(column("attention", "t"), atlas, folder / "t_map.png",
                       title=f"Welch t, CLS attention {col}={b} vs {col}={a}",
                       style=ParcelMapStyle(cmap="RdBu_r", colorbar_label="t"),
                       marked=significant, marked_label=f"FDR q < {alpha}")
    means = {a: column("attention", "mean_a"), b: column("attention", "mean_b")}
    hi = float(max(m.max() for m in means.values()))
    lo = float(min(m.min() for m in means.values()))
    for g, mean in means.items():
        fname = f"group_{_safe(g)}_map.png"
        plot_parcel_values(mean, atlas, folder / fname,
                           title=f"Mean CLS attention, {col}={g} ({result.n[str(g)][result.unit + 's']} "
                           f"{result.unit}s; 1 = uniform)",
                           style=ParcelMapStyle(cmap="magma_r", vmin=lo, vmax=hi, symmetric=False,
                                                colorbar_label="relative\nattention"))
        names[f"group {g}"] = fname
    plot_network_summary(column("attention", "t"), nets, folder / "network_difference.png",
                         title=f"CLS attention, {col}={b} vs {col}={a}: t per parcel by network",
                         ylabel="Welch t")
    names.update({"difference": "difference_map.png", "t": "t_map.png", "networks": "network_difference.png"})
    if "fc_strength_t" in parcels.columns:
        plot_parcel_values(column("fc_strength", "t"), atlas, folder / "fc_strength_t_map.png",
                           title=f"Baseline: FC strength, Welch t {col}={b} vs {col}={a}",
                           style=ParcelMapStyle(cmap="RdBu_r", colorbar_label="t"))
        names["fc strength t"] = "fc_strength_t_map.png"
    return names


def draw_network_folder(folder: str | Path) -> dict[str, str]:
    """Draw the figures of a saved ``brainlm networks`` results folder (``networks.json``,
    ``parcels.tsv``) into that folder; figure name -> file name, as :func:`draw_network_figures`."""
    folder = Path(folder)
    return draw_network_figures(NetworksResult.read(folder / "networks.json"),
                                read_network_parcels(folder / "parcels.tsv"), folder)


def draw_group_folder(folder: str | Path) -> dict[str, str]:
    """Draw the figures of a saved ``brainlm attention`` results folder (``group_attention.json``,
    ``parcels.tsv``) into that folder; figure name -> file name, as :func:`draw_group_figures`."""
    folder = Path(folder)
    return draw_group_figures(GroupAttentionResult.read(folder / "group_attention.json"),
                              read_group_parcels(folder / "parcels.tsv"), folder)


def _safe(text: str) -> str:
    """A group level as a file-name part."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text))
