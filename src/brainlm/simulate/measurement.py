"""What the scanner adds to clean BOLD: measurement noise, slow drift, motion-like spikes, and
the site's baseline and parcel gains (raw units).

Each subject's additions are drawn from its own measurement stream
(:func:`~brainlm.simulate.subjects.subject_rngs`), in a fixed order: white noise, then drift
(if any), then spikes (if any).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brainlm.simulate.subjects import CohortDesign

__all__ = ["measure", "motion_spikes", "slow_drift"]


def slow_drift(rng: np.random.Generator, n_trs: int, tr: float, p: int,
               size: float) -> np.ndarray:
    """Slow drift (T, P) in percent: a cosine basis below 1/128 Hz, half shared by all parcels."""
    duration = n_trs * tr
    n_basis = max(1, int(2 * duration / 128.0))
    t = (np.arange(n_trs) + 0.5) / n_trs
    basis = np.cos(np.pi * np.arange(1, n_basis + 1)[None, :] * t[:, None])  # (T, K)
    basis /= np.sqrt(np.mean(basis ** 2, axis=0))
    shared = basis @ rng.standard_normal(n_basis)
    own = basis @ rng.standard_normal((n_basis, p))
    drift = np.sqrt(0.5) * (shared[:, None] + own) / np.sqrt(n_basis)
    return size * drift


def motion_spikes(rng: np.random.Generator, n_trs: int, tr: float, p: int, rate_per_min: float,
                  size: float) -> tuple[np.ndarray, list[int]]:
    """Motion-like spikes (T, P) in percent and the frames they hit.

    A head jerk shifts the whole brain at once: every parcel jumps in the same frame, by a
    parcel-specific fraction of one amplitude, and 40 % of it lingers into the next frame
    (spin history).
    """
    out = np.zeros((n_trs, p))
    n = int(rng.poisson(rate_per_min * n_trs * tr / 60.0))
    frames = np.sort(rng.choice(n_trs, size=min(n, n_trs), replace=False))
    for f in frames:
        amplitude = size * (1.0 + abs(rng.standard_normal())) * rng.choice((-1.0, 1.0))
        jump = amplitude * rng.uniform(0.5, 1.5, p)
        out[f] += jump
        if f + 1 < n_trs:
            out[f + 1] += 0.4 * jump
    return out, [int(f) for f in frames]


def measure(design: CohortDesign, gt: dict, bold: np.ndarray, rng: np.random.Generator,
            units: str) -> tuple[np.ndarray, dict]:
    """Scanner output (T, P) float32 from clean BOLD in percent, and what was added."""
    n_trs, p = bold.shape
    site = gt["site_index"]
    noise = gt["measurement_noise_pct"] * design.site_noise_profile[site]
    y = bold.astype(np.float64) + noise * rng.standard_normal((n_trs, p))
    extra: dict[str, Any] = {}
    if gt["drift_pct"] > 0:
        y += slow_drift(rng, n_trs, gt["tr"], p, gt["drift_pct"])
    if gt["spike_rate_per_min"] > 0:
        spikes, frames = motion_spikes(rng, n_trs, gt["tr"], p, gt["spike_rate_per_min"],
                                       gt["spike_size_pct"])
        y += spikes
        extra["spike_frames"] = frames
    if units == "percent":
        return y.astype(np.float32), extra
    baseline = design.sites[site].baseline * design.site_gain[site]
    return (baseline * (1.0 + y / 100.0)).astype(np.float32), extra
