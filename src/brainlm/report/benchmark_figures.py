"""Figures and tables of the committed model-quality benchmarks, drawn from their saved numbers.

``benchmarks/bench_quality.py`` (pretraining recipes on held-out HCP subjects against the
spatial baseline) and ``benchmarks/bench_scaling.py`` (held-out quality against model size and
pretraining data) write their results to ``benchmarks/results/`` and a compact copy, the
report's input, to ``brainlm/report/benchmarks/`` (package data, so an installed brainlm can
show what its default recipe rests on). Both scripts and the report draw through here.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from brainlm.report.figures import save_figure

__all__ = ["RATIOS", "draw_quality", "draw_scaling", "load_benchmark", "best_own_knn"]

RATIOS = ("0.2", "0.5", "0.75", "0.9")


def load_benchmark(name: str) -> dict | None:
    """The packaged summary ``quality`` or ``scaling``, or None when it was never written."""
    f = resources.files("brainlm.report").joinpath("benchmarks", f"{name}.json")
    return json.loads(f.read_text()) if f.is_file() else None


def best_own_knn(rows: list[dict], model: str = "BrainLM") -> float:
    """The best kNN accuracy of ``model``'s own feature sets (one scaling-study run)."""
    return max(r["knn"] for r in rows if r["model"] == model)


def draw_quality(recipes: dict, path: str | Path) -> Path:
    """Masked R² of every recipe against the mask ratio (mean ± sd over folds), with the spatial
    baseline fitted on the same training subjects, from ``quality.json``'s ``recipes``."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.arange(len(RATIOS))
    for name, row in recipes.items():
        rr = row["reconstruction_r2"]
        ax.errorbar(x, [rr[r]["brainlm"]["mean"] for r in RATIOS], yerr=[rr[r]["brainlm"]["sd"] or 0 for r in RATIOS],
                    marker="o", capsize=3, label=name)
    first = next(iter(recipes.values()))["reconstruction_r2"]
    ax.errorbar(x, [first[r]["spatial"]["mean"] for r in RATIOS], yerr=[first[r]["spatial"]["sd"] or 0 for r in RATIOS],
                color="k", ls="--", lw=2, capsize=3, label="spatial baseline (same subjects, same masks)")
    ax.set_xticks(x, RATIOS)
    ax.set_xlabel("fraction of tokens masked")
    ax.set_ylabel("masked R², held-out subject")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def draw_scaling(runs: list[dict], path: str | Path) -> Path:
    """Held-out masked R² minus the spatial baseline's (same masks, same units: each run scales
    with its own checkpoint's statistics) against parameters (left) and real training subjects
    (right), log x axes, from ``scaling.json``'s ``runs``; above 0 the model beats the baseline."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    size = sorted((r for r in runs if r["run"].startswith("size-")), key=lambda r: r["parameters"])
    data = [r for r in runs if r["run"].startswith("data-") and not r["simulated"]]
    data += [r for r in size if r["size"] == "m"]  # the 5-subject point of the same model
    data.sort(key=lambda r: r["subjects"])

    def gap(r, ratio):
        rr = r["reconstruction_r2"][ratio]
        return rr["brainlm"] - rr["spatial"]

    for ax, rows, key, label in ((axes[0], size, "parameters", "parameters"),
                                 (axes[1], data, "subjects", "real training subjects")):
        for ratio, style in (("0.2", "o-"), ("0.75", "s-")):
            ax.plot([r[key] for r in rows], [gap(r, ratio) for r in rows], style, label=f"mask {ratio}")
        ax.axhline(0, color="k", ls="--", lw=1, label="spatial baseline")
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (log scale)")
        ax.grid(alpha=0.3)
    for r in (r for r in runs if r["simulated"]):
        for ratio, marker in (("0.2", "r*"), ("0.75", "m*")):
            axes[1].plot([r["subjects"]], [gap(r, ratio)], marker, ms=12,
                         label=f"5 real + {r['simulated']} simulated, mask {ratio}")
    subjects = sorted({r["subjects"] for r in data})
    axes[1].set_xticks(subjects, [str(n) for n in subjects])
    axes[1].minorticks_off()
    axes[0].set_title("model size (5 training subjects, same optimizer steps)", fontsize=9)
    axes[1].set_title("pretraining data (model m, same optimizer steps)", fontsize=9)
    axes[0].set_ylabel("held-out masked R² minus spatial baseline's")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    return save_figure(fig, path)
