"""The scaler-fit phase of a build: pooled statistics of the contract's normalization.

Beside :mod:`brainlm.data.scaling`, which holds the streaming pieces (quartile histogram,
extrema range): here they are filled from the recordings a build wrote to its chunked store
(``BUILD/timeseries.zarr``), over the training split (or every recording of an
evaluation-only cohort), in parallel worker processes for the histogram.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.data.atlas import Atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.scaling import (ExtremaRange, QuartileHistogram, QuartileRange, normalization_statistics,
                                  recording_extrema, scaling_from_quartiles)
from brainlm.data.worker_processes import die_with_parent


def fit_pooled_statistics(build: Path, train: pd.DataFrame, train_range: QuartileRange, atlas: Atlas,
                contract: PreprocessingContract, jobs: int,
                train_extrema: dict[str, np.ndarray] | None = None) -> PreprocessingContract:
    """Pooled per-parcel statistics of the contract's normalization over the training
    recordings (module docstring): median and IQR from histograms, min and max from each
    recording's extrema (``train_extrema``, recording id -> (2, P); a recording without them is
    read again), none for ``"demean"`` (per recording only)."""
    fitted = PreprocessingContract.from_dict(contract.to_dict())
    ids = train["recording_id"].tolist()
    fit = {"split": "train", "recordings": len(ids), "timepoints": int(train["n_trs"].sum()),
           "normalization": contract.normalization}
    if contract.normalization == "demean":
        fitted.median = fitted.iqr = None
        fitted.scaler_fit = {**fit, "method": "none: demeaning is per recording (each recording's own "
                                               "per-parcel mean, spread 1)"}
        return fitted
    if contract.normalization == "robust":
        from joblib import Parallel, delayed

        hist = train_range.histogram()
        n_parts = max(1, min(len(ids), os.cpu_count() if jobs == -1 else jobs))
        parts = [ids[k::n_parts] for k in range(n_parts)]
        for counts in Parallel(n_jobs=n_parts)(delayed(_histogram_part)(build, part, hist, os.getpid())
                                               for part in parts):
            hist.counts += counts
        med, iqr, degenerate = scaling_from_quartiles(*hist.quantiles())
        method = f"pooled quartiles from a {hist.n_bins}-bin histogram per parcel"
        policy = "no variance in the training split: median 0 if unobserved, IQR 1"
    else:
        import zarr

        pooled = ExtremaRange()
        known = train_extrema or {}
        # A build resumed from before extrema were recorded reads those recordings again.
        group = None if set(ids) <= set(known) else zarr.open_group(build / "timeseries.zarr", mode="r")
        for rid in ids:
            pooled.add(known[rid] if rid in known else recording_extrema(group[rid][:]))
        med, iqr, degenerate = normalization_statistics(contract.normalization, extrema=pooled.extrema)
        method = ("pooled min and max " + ("per parcel" if contract.normalization == "minmax" else
                                           "over all parcels") + ", from each recording's extrema")
        policy = ("max equal to min in the training split: spread 1 (left unscaled, as upstream does), "
                  "min 0 if unobserved")
    fitted.median = [float(v) for v in med]
    fitted.iqr = [float(v) for v in iqr]
    fitted.scaler_fit = {
        **fit, "method": method,
        "degenerate_parcels": [atlas.parcel_names[i] for i in np.flatnonzero(degenerate)],
        "degenerate_policy": policy,
    }
    return fitted


def _histogram_part(build: Path, ids: list[str], template: QuartileHistogram,
                    parent_pid: int | None = None) -> np.ndarray:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    import zarr

    group = zarr.open_group(build / "timeseries.zarr", mode="r")
    hist = QuartileHistogram(template.lo, template.hi, template.n_bins)
    for rid in ids:
        hist.add(group[rid][:])
    return hist.counts
