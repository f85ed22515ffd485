"""The shift suite: held-out HCP subjects made to look like another site's data.

A fresh cohort differs from the pretraining cohort in ways we can write down: the units its
files are in, each region's BOLD amplitude, the TR, the noise, the filtering. This benchmark
takes the quality benchmark's held-out subject of each fold (``bench_quality.py``: 3 folds, a
model pretrained on 5 other subjects per fold and recipe), changes its raw recording the way
such a site would, prepares it as a user would (``brainlm prepare --like CHECKPOINT``: the
checkpoint's cleaning, TR and scaling), and scores masked reconstruction at 0.2 / 0.5 / 0.75 /
0.9 for the model and every baseline on the very same masks (``evaluate_reconstruction``, mask
seed = fold). The headline comparator is ``spatial_zero_shot``: the Gaussian imputation of the
checkpoint's own pretraining covariance, the simplest thing the model could have learned.

Shifts of the raw recording ``x`` (T x P scanner values; ``m`` each parcel's mean over time,
``f = x - m`` its fluctuation; every random draw seeded by the fold):

* ``clean``: as recorded;
* ``scanner-scale``: ``3 x + 500``, another scanner's intensity scale;
* ``psc``: distributed as percent signal change, ``100 f / m`` (mean 0);
* ``demeaned``: ``f``;
* ``zscored``: ``f / sd(f)`` per parcel;
* ``gain``: ``m + g f`` with a gain ``g`` per parcel, log-uniform in [0.5, 2];
* ``tr-1.44``: anti-alias low-pass and every second frame (TR 1.44 s), prepared back to the
  checkpoint's 0.72 s;
* ``noise-snr2``: white noise with half each parcel's fluctuation variance (SNR 2);
* ``unfiltered``: band-limited noise at 0.15-0.6 Hz with each parcel's fluctuation variance
  (respiration and other high-frequency content that band-pass filtering would remove);
* ``combined``: demeaned, gain, TR 1.44 s and SNR 2 at once.

A shift whose data the checkpoint's preparation refuses (a percent-signal-change model given
demeaned data) is recorded as refused, with the message: the user cannot run that model on it.

    python benchmarks/bench_shift.py --recipes "small-50;small-50, per-recording scaling" --folds 3

Results: ``benchmarks/results/shift/shift.json`` and ``shift.md``. Models are the quality
benchmark's runs (its ``--work`` folder), trained here when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import RATIOS, RECIPES, _slug, fold_corpus, test_subjects, trained_run  # noqa: E402

from brainlm.commands.prepare import reference_contract  # noqa: E402
from brainlm.data.prepare import PrepareSettings, prepare_corpus  # noqa: E402
from brainlm.data.recording import Recording  # noqa: E402
from brainlm.data.samples import load_hcp7_aal2  # noqa: E402
from brainlm.errors import BrainLMInputError  # noqa: E402
from brainlm.tasks.reconstruction import evaluate_reconstruction  # noqa: E402

ROOT = Path(__file__).resolve().parent
SHIFTS = ("clean", "scanner-scale", "psc", "demeaned", "zscored", "gain", "tr-1.44", "noise-snr2",
          "unfiltered", "combined")


# -- shifts of a raw recording ----------------------------------------------------------------
def _gain(f: np.ndarray, rng) -> np.ndarray:
    return f * np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=f.shape[1]))


def _tr2(x: np.ndarray) -> np.ndarray:
    return signal.decimate(x, 2, axis=0, zero_phase=True)


def _white(f: np.ndarray, rng, snr: float) -> np.ndarray:
    return rng.standard_normal(f.shape) * f.std(axis=0) / np.sqrt(snr)


def _high_frequency(f: np.ndarray, rng, tr: float) -> np.ndarray:
    sos = signal.butter(4, [0.15, 0.6], btype="bandpass", fs=1 / tr, output="sos")
    n = signal.sosfiltfilt(sos, rng.standard_normal(f.shape), axis=0)
    return n / n.std(axis=0) * f.std(axis=0)


def shifted(x: np.ndarray, tr: float, shift: str, seed: int) -> tuple[np.ndarray, float]:
    """The recording ``x`` (T x P raw scanner values, TR ``tr`` s) as another site would hand
    it over: ``(T' x P values, TR' in s)`` (module docstring)."""
    rng = np.random.default_rng(seed)
    x = x.astype(np.float64)
    m = x.mean(axis=0)
    f = x - m
    if shift == "clean":
        return x, tr
    if shift == "scanner-scale":
        return 3 * x + 500, tr
    if shift == "psc":
        return 100 * f / m, tr
    if shift == "demeaned":
        return f, tr
    if shift == "zscored":
        return f / f.std(axis=0), tr
    if shift == "gain":
        return m + _gain(f, rng), tr
    if shift == "tr-1.44":
        return _tr2(x), 2 * tr
    if shift == "noise-snr2":
        return x + _white(f, rng, 2.0), tr
    if shift == "unfiltered":
        return x + _high_frequency(f, rng, tr), tr
    if shift == "combined":
        g = _tr2(_gain(f, rng))
        return g + _white(g, rng, 2.0), 2 * tr
    raise ValueError(f"unknown shift {shift!r}; expected one of {SHIFTS}")


# -- one (recipe, fold) -------------------------------------------------------------------------
def score_shifts(recipe: str, fold: int, work: Path, shifts) -> dict:
    """Every shift of the fold's held-out subject, scored for ``recipe``'s model of that fold."""
    torch.set_num_threads(1)
    cache = work / "shift-cache" / f"{_slug(recipe)}--fold{fold}.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {"recipe": recipe, "fold": fold, "shifts": {}}
    todo = [s for s in shifts if s not in done["shifts"]]
    if not todo:
        return done
    run, corpus, _ = trained_run(recipe, fold, work)
    like = reference_contract(str(run / "model"))
    subjects = test_subjects(corpus)
    recordings = [r for r in load_hcp7_aal2() if r.subject in subjects]
    done["test_subjects"] = subjects
    for shift in todo:
        out = work / "shift" / f"{run.name}" / shift
        recs = []
        for i, r in enumerate(recordings):
            values, tr = shifted(r.timeseries, r.tr, shift, seed=1000 * fold + i)
            recs.append(Recording(timeseries=values.astype(np.float32), tr=tr, atlas=r.atlas, subject=r.subject,
                                  session=r.session, run=r.run, task=r.task, site=f"shift:{shift}",
                                  source=f"{r.source}#{shift}"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TR differs from the checkpoint's: resampled, on purpose
                shifted_corpus = prepare_corpus(recs, out / "corpus",
                                                PrepareSettings.of(atlas=recs[0].atlas, like=like, min_trs=200,
                                                                   jobs=1, overwrite=True))
            res = evaluate_reconstruction(run / "model", shifted_corpus, split="test", ratios=RATIOS, seed=fold)
        except BrainLMInputError as e:
            done["shifts"][shift] = {"refused": str(e)}
            continue
        model_key = next(m for m in res["methods"] if m not in res["spatial_baselines"]
                         and m not in ("zero", "parcel_mean", "interpolation"))
        done["shifts"][shift] = {
            "model_method": model_key,
            "r2": {str(e["mask_ratio"]): {m: round(e["methods"][m]["r2"], 5) for m in e["methods"]}
                   for e in res["results"]}}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(done, indent=1))
    os.replace(tmp, cache)
    return done


# -- tables -------------------------------------------------------------------------------------
def aggregate(runs: list[dict], shifts) -> dict:
    """recipe -> shift -> {"folds", "refused", per ratio: {method: mean R²}, "margin": model -
    spatial_zero_shot per ratio (mean over folds), "min_margin": the smallest per-fold margin}."""
    table: dict = {}
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        rows = [r for r in runs if r["recipe"] == recipe]
        table[recipe] = {}
        for shift in shifts:
            cells = [r["shifts"][shift] for r in rows if shift in r["shifts"]]
            scored = [c for c in cells if "r2" in c]
            entry = {"folds": len(scored), "refused": len(cells) - len(scored)}
            if any("refused" in c for c in cells):
                entry["reason"] = next(c["refused"] for c in cells if "refused" in c)
            if scored:
                for ratio in map(str, RATIOS):
                    methods = {}
                    for c in scored:
                        for m, v in c["r2"][ratio].items():
                            methods.setdefault("model" if m == c["model_method"] else m, []).append(v)
                    entry[ratio] = {m: round(float(np.mean(v)), 4) for m, v in methods.items()}
                    if "spatial_zero_shot" in methods:
                        margins = np.subtract(methods["model"], methods["spatial_zero_shot"])
                        entry[ratio]["margin"] = round(float(margins.mean()), 4)
                        entry[ratio]["min_margin"] = round(float(margins.min()), 4)
            table[recipe][shift] = entry
    return table


def markdown(table: dict, meta: dict) -> str:
    lines = ["# Shift suite: held-out HCP subjects made to look like another site", "",
             f"{meta['date']}; folds {meta['folds']} (test subjects {meta['test_subjects']}); "
             "masked R², mean over folds. `spatial 0-shot` is the Gaussian imputation of the checkpoint's "
             "own pretraining covariance; margin = model - spatial 0-shot (worst fold in brackets); "
             "`best other` is the best of every other baseline scored.", ""]
    for recipe, shifts in table.items():
        lines += [f"## {recipe}", "",
                  "| shift | folds | " + " | ".join(f"model @{r} | 0-shot @{r} | margin @{r}" for r in RATIOS)
                  + " | best other @0.75 |",
                  "|---|---|" + "---|" * (3 * len(RATIOS) + 1)]
        for shift, e in shifts.items():
            if not e["folds"]:
                lines.append(f"| {shift} | refused: {e.get('reason', '')[:90]} |")
                continue
            cells = []
            for r in map(str, RATIOS):
                d = e[r]
                zs = d.get("spatial_zero_shot")
                cells += [f"{d['model']:.3f}", "-" if zs is None else f"{zs:.3f}",
                          "-" if zs is None else f"{d['margin']:+.3f} ({d['min_margin']:+.3f})"]
            others = {m: v for m, v in e["0.75"].items() if m not in ("model", "spatial_zero_shot", "margin",
                                                                      "min_margin")}
            best = max(others, key=others.get) if others else None
            lines.append(f"| {shift} | {e['folds']} | " + " | ".join(cells)
                         + (f" | {best} {others[best]:.3f} |" if best else " | - |"))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", required=True,
                    help="quality-benchmark recipe names separated by ';', each optionally NAME:N (its first N folds)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--shifts", default=",".join(SHIFTS))
    ap.add_argument("--jobs", type=int, default=1, help="(recipe, fold) pairs at once, one thread each")
    ap.add_argument("--work", default=os.environ.get("BRAINLM_BENCH_WORK", "/tmp/brainlm-bench-quality"))
    ap.add_argument("--out", default=str(ROOT / "results" / "shift"))
    args = ap.parse_args()
    # "NAME:N" scores a recipe on its first N folds only (at most --folds), as in bench_quality.py.
    wanted = [r.rsplit(":", 1) if ":" in r else (r, str(args.folds)) for r in args.recipes.split(";") if r]
    recipes = {name: min(int(n), args.folds) for name, n in wanted}
    unknown = [r for r in recipes if r not in RECIPES]
    shifts = [s for s in args.shifts.split(",") if s]
    if unknown or set(shifts) - set(SHIFTS):
        ap.error(f"unknown recipe(s) {unknown} or shift(s) {sorted(set(shifts) - set(SHIFTS))}")
    work = Path(args.work)
    folds = list(range(args.folds))
    for f in folds:  # corpora first, sequentially: the runs share them
        for scaling in sorted({RECIPES[r].get("corpus_scaling", "pooled") for r in recipes}):
            fold_corpus(work, f, scaling)
    t0 = time.perf_counter()
    tasks = [(r, f) for r, n in recipes.items() for f in folds[:n]]
    runs = Parallel(n_jobs=args.jobs)(delayed(score_shifts)(r, f, work, shifts) for r, f in tasks)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "folds": folds,
            "test_subjects": [test_subjects(fold_corpus(work, f)) for f in folds], "shifts": shifts,
            "ratios": list(RATIOS), "recipes": {r: RECIPES[r] for r in recipes},
            "wall_seconds": round(time.perf_counter() - t0, 1)}
    table = aggregate(runs, shifts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("shift.json", json.dumps({"meta": meta, "table": table, "runs": runs}, indent=1)),
                       ("shift.md", markdown(table, meta))):
        (out / (name + ".tmp")).write_text(text)
        os.replace(out / (name + ".tmp"), out / name)
    print(markdown(table, meta))


if __name__ == "__main__":
    main()
