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
    """Held-out masked R² and network accuracy against parameters (left) and real training
    subjects (right), log axes, from ``scaling.json``'s ``runs``."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    size = sorted((r for r in runs if r["run"].startswith("size-")), key=lambda r: r["parameters"])
    data = sorted((r for r in runs if r["run"].startswith("data-") and not r["simulated"]) or [],
                  key=lambda r: r["subjects"])
    base = next((r for r in size if r["subjects"] == 5 and r["size"] == "m"), None)
    if base is not None:
        data = sorted(data + [base], key=lambda r: r["subjects"])
    spatial = runs[0]["reconstruction_r2"]["0.75"]["spatial"]
    for ax, rows, key, label in ((axes[0], size, "parameters", "parameters"),
                                 (axes[1], data, "subjects", "real training subjects")):
        for ratio, style in (("0.2", "o-"), ("0.75", "s-")):
            ax.plot([r[key] for r in rows], [r["reconstruction_r2"][ratio]["brainlm"] for r in rows], style,
                    label=f"masked R² @{ratio}")
        ax.plot([r[key] for r in rows], [best_own_knn(r["networks"]["hcp_aal2"]["rows"]) for r in rows], "^:",
                label="networks kNN (AAL2, best own feature)")
        ax.axhline(spatial, color="k", ls="--", label="spatial baseline R² @0.75")
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (log scale)")
        ax.grid(alpha=0.3)
    for r in (r for r in runs if r["simulated"]):
        axes[1].plot([r["subjects"]], [r["reconstruction_r2"]["0.75"]["brainlm"]], "r*", ms=12,
                     label=f"+ {r['simulated']} simulated subjects, R² @0.75")
    axes[0].set_title("model size (5 training subjects, same optimizer steps)", fontsize=9)
    axes[1].set_title("pretraining data (same model, same optimizer steps)", fontsize=9)
    axes[0].set_ylabel("held-out score")
    axes[1].legend(fontsize=7)
    return save_figure(fig, path)
