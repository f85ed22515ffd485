"""Synthetic-cohort benchmark: simulation speed, and validation against real HCP data.

Speed: seconds per simulated subject at 1200 TRs x 200 parcels (Schaefer-200, TR 0.72 s) with
1 and 2 worker processes, the 500-subject time extrapolated from it, and a measured
500-subject cohort written to disk exactly as ``brainlm simulate --subjects 500 --jobs 2``
does (three sites, default settings).

Validation, per atlas: the simulated group FC of HCP-like subjects (22-36 years, site A, TR
0.72 s, 1200 TRs) against the real HCP group FC; lag-1 autocorrelation, mean FC and the share
of BOLD power below 0.1 Hz against the seven real HCP scans embedded in brainlm; and how well
an FC + ridge baseline (5-fold CV) recovers age, trait, group, site and a null score.

    python benchmarks/bench_simulate.py --jobs 2

Results: benchmarks/results/simulate.json (and a summary on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import detrend, welch
from scipy.stats import pearsonr
from sklearn.linear_model import RidgeClassifierCV, RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

from brainlm.data.samples import load_hcp7_aal2
from brainlm.simulate import (CohortSpec, LatentEffects, iter_cohort, reference_fc, simulate_cohort,
                              write_cohort)

ATLASES = ("aal2", "schaefer100", "schaefer200", "schaefer400")
YOUNG = LatentEffects(age_min=22, age_max=36)


def bold_stats(x: np.ndarray, tr: float) -> dict[str, float]:
    """Median lag-1 autocorrelation over parcels, mean FC, median share of power in
    (0, 0.1) Hz and the median spectral peak (Hz) of one (T, P) recording, linearly detrended."""
    x = detrend(np.asarray(x, dtype=np.float64), axis=0)
    x = x / x.std(axis=0)
    fc = np.corrcoef(x, rowvar=False)
    f, power = welch(x, fs=1.0 / tr, nperseg=256, axis=0)
    pos = f > 0
    return {"lag1_autocorrelation": float(np.median(np.mean(x[1:] * x[:-1], axis=0))),
            "mean_fc": float(fc[np.triu_indices_from(fc, 1)].mean()),
            "power_below_0.1hz": float(np.median(power[pos & (f < 0.1)].sum(0)
                                                 / power[pos].sum(0))),
            "peak_hz": float(np.median(f[pos][np.argmax(power[pos], axis=0)]))}


def group_fc(recordings) -> np.ndarray:
    return np.mean([np.corrcoef(detrend(r.timeseries.astype(np.float64), axis=0), rowvar=False)
                    for r in recordings], axis=0)


def upper(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices_from(m, 1)]


def summarise(values: list[dict], real: pd.DataFrame | None = None) -> dict:
    df = pd.DataFrame(values)
    out = {}
    for col in df.columns:
        entry = {"median": round(float(df[col].median()), 3),
                 "q10": round(float(df[col].quantile(0.1)), 3),
                 "q90": round(float(df[col].quantile(0.9)), 3)}
        if real is not None and col in real:
            lo, hi = real[col].min(), real[col].max()
            entry["share_in_real_range"] = round(float(df[col].between(lo, hi).mean()), 3)
        out[col] = entry
    return out


# -- speed -----------------------------------------------------------------------------------
def bench_speed(n: int, jobs_list: list[int]) -> dict:
    out = {}
    simulate_cohort(CohortSpec(2, atlas="schaefer200", n_trs=50, sites=1))  # imports and file loads
    for jobs in jobs_list:
        t, cpu = time.perf_counter(), time.process_time()
        simulate_cohort(CohortSpec(n, atlas="schaefer200", n_trs=1200, sites=1, seed=1), jobs=jobs)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        out[f"jobs_{jobs}"] = {"subjects": n, "seconds": round(seconds, 2),
                               "seconds_per_subject": round(seconds / n, 4),
                               "extrapolated_500_subjects_s": round(500 * seconds / n, 1)}
        if jobs == 1:
            # CPU time is what a busy shared machine cannot inflate.
            out["jobs_1"]["cpu_seconds_per_subject"] = round(cpu / n, 4)
        print(f"speed: {n} subjects x 1200 TRs x 200 parcels, jobs={jobs}: {seconds:.1f} s "
              f"({seconds / n:.3f} s/subject; 500 subjects ~ {500 * seconds / n:.0f} s)",
              flush=True)
    return out


def bench_cohort(n: int, jobs: int) -> dict:
    """A cohort written to disk as `brainlm simulate --subjects n --jobs jobs` does."""
    root = Path(tempfile.mkdtemp(prefix="bench_simulate_"))
    try:
        t = time.perf_counter()
        write_cohort(iter_cohort(CohortSpec(n, atlas="schaefer200", n_trs=1200), jobs=jobs),
                     root / "cohort")
        seconds = time.perf_counter() - t
        size = sum(f.stat().st_size for f in (root / "cohort").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"cohort: {n} subjects written in {seconds:.1f} s ({size / 1e6:.0f} MB)", flush=True)
    return {"subjects": n, "atlas": "schaefer200", "n_trs": 1200, "sites": 3, "jobs": jobs,
            "seconds": round(seconds, 1), "seconds_per_subject": round(seconds / n, 4),
            "megabytes": round(size / 1e6, 1)}


# -- validation ------------------------------------------------------------------------------
def validate_real(atlas: str, n: int, seed: int, real: pd.DataFrame) -> dict:
    recs = simulate_cohort(CohortSpec(n, atlas=atlas, n_trs=1200, sites=1, seed=seed, effects=YOUNG,
                                      units="percent"), jobs=2)
    r = float(np.corrcoef(upper(group_fc(recs)), upper(reference_fc(atlas)))[0, 1])
    stats = summarise([bold_stats(x.timeseries, x.tr) for x in recs], real)
    print(f"{atlas}: group FC r = {r:.3f}; " + ", ".join(
        f"{k} {v['median']:.3f}" for k, v in stats.items()), flush=True)
    return {"subjects": n, "group_fc_r_vs_real": round(r, 3),
            "real_group_mean_fc": round(float(upper(reference_fc(atlas)).mean()), 3), **stats}


def validate_recovery(atlas: str, n: int, seed: int) -> dict:
    recs = simulate_cohort(CohortSpec(n, atlas=atlas, n_trs=1200, sites=3, seed=seed, units="percent"),
                           jobs=2)
    x = np.array([upper(np.corrcoef(detrend(r.timeseries.astype(np.float64), axis=0),
                                    rowvar=False)) for r in recs])
    x = np.arctanh(np.clip(x, -0.999, 0.999))
    table = pd.DataFrame([{**r.phenotypes, "site": r.site} for r in recs])
    alphas = np.logspace(-1, 5, 25)
    folds = KFold(5, shuffle=True, random_state=0)
    strat = StratifiedKFold(5, shuffle=True, random_state=0)
    out = {"subjects": n}
    for name in ("age", "trait", "null_score"):
        y = table[name].to_numpy()
        pred = cross_val_predict(RidgeCV(alphas=alphas), x, y, cv=folds)
        out[f"{name}_r"] = round(float(pearsonr(pred, y)[0]), 3)
    group = table["group"].to_numpy()
    decision = cross_val_predict(RidgeClassifierCV(alphas=alphas), x, group, cv=strat,
                                 method="decision_function")
    out["group_auc"] = round(float(roc_auc_score(group, decision)), 3)
    out["group_accuracy"] = round(float(np.mean((decision > 0) == group)), 3)
    site = table["site"].to_numpy()
    site_pred = cross_val_predict(RidgeClassifierCV(alphas=alphas), x, site, cv=strat)
    out["site_accuracy"] = round(float(np.mean(site_pred == site)), 3)
    out["site_chance"] = round(float(pd.Series(site).value_counts(normalize=True).max()), 3)
    print(f"{atlas}: FC + ridge on {n} subjects: " + ", ".join(
        f"{k} {v}" for k, v in out.items() if k != "subjects"), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed-subjects", type=int, default=64)
    ap.add_argument("--cohort", type=int, default=500,
                    help="subjects of the measured cohort (0: skip)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--recovery-subjects", type=int, default=160)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-validation", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "simulate.json"))
    args = ap.parse_args()

    # Sections run now replace their entries; skipped sections keep earlier results.
    out = Path(args.out)
    results: dict = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__, "platform": platform.platform(),
                          "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    if not args.skip_speed:
        results["speed"] = bench_speed(args.speed_subjects, sorted({1, args.jobs}))
        if args.cohort:
            results["cohort"] = bench_cohort(args.cohort, args.jobs)
    if not args.skip_validation:
        hcp = pd.DataFrame([bold_stats(r.timeseries, r.tr) for r in load_hcp7_aal2()])
        results["real_hcp7"] = {c: {"min": round(float(hcp[c].min()), 3),
                                    "median": round(float(hcp[c].median()), 3),
                                    "max": round(float(hcp[c].max()), 3)} for c in hcp}
        results["validation_vs_real"] = {a: validate_real(a, 24, 11, hcp) for a in ATLASES}
        results["phenotype_recovery"] = {a: validate_recovery(a, args.recovery_subjects, 0)
                                         for a in ATLASES}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
