"""Quality benchmark: pretraining recipes against the classical baselines on held-out subjects.

Protocol (fixed; every recipe and every baseline sees the same folds, masks and recordings):

* Data: the 7 embedded HCP resting-state recordings on AAL2 (one subject each, 1,200 TRs at
  0.72 s), prepared as in the demo (percent signal change, robust scaling fitted on the training
  subjects). A fold is a subject-level split, 5 training / 1 validation / 1 test subject; the
  folds rotate the test subject (``FOLD_SPLIT_SEEDS``), and fold ``k`` also seeds the model, the
  crops and the masks with ``k``: folds x seeds, so 3 folds are 3 seeds on 3 test subjects.
* Reconstruction: masked R² on the test subject at mask ratios 0.2 / 0.5 / 0.75 / 0.9, against
  the spatial (Gaussian conditional) imputation fitted on the same training subjects, on the same
  masks (:func:`brainlm.tasks.reconstruction.evaluate_reconstruction`).
* Networks: Yeo-7 network of each parcel by kNN (leave one parcel out) from the test subject's
  recording on AAL2, and from the Schaefer-100 run (atlas transfer), with the model's best own
  feature, the paper's CLS attention, FC profiles, and the time-shifted control (each parcel
  shifted in time by its own offset: co-fluctuation removed).
* Forecasting (``--forecast``): 20 TRs from 180, the model fine-tuned for 5 epochs, against ridge
  VAR and persistence, per step, on the test subject.

Each (recipe, fold) result is cached in ``WORK/cache/`` as it finishes, so an interrupted run
resumes and recipes can be added later; the runs of an earlier ``--out/quality.json`` count as
cached too (``--fresh``: not), so a fresh machine adds folds without training the rest again. The
tables, of the recipes named in ``--recipes`` only, are written to ``--out`` (JSON + Markdown +
figure). Run one heavy job at a time on a small machine (``--jobs`` runs several folds at once,
one thread each).

    python benchmarks/bench_quality.py --recipes baseline,long --folds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed

from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import write_json
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import HCP7_TR, load_hcp7_aal2, load_schaefer100_rest
from brainlm.report.benchmark_figures import draw_quality
from brainlm.tasks.forecasting.baselines import BaselineSettings
from brainlm.tasks.forecasting.comparison import compare
from brainlm.tasks.forecasting.finetune import FinetuneSettings
from brainlm.tasks.networks import identify_networks
from brainlm.tasks.reconstruction import evaluate_reconstruction
from brainlm.train.pretrain import FRESH_COHORT, PretrainSettings, pretrain

ROOT = Path(__file__).resolve().parent
PACKAGED = ROOT.parent / "src" / "brainlm" / "report" / "benchmarks"
RATIOS = (0.2, 0.5, 0.75, 0.9)

#: Split seeds whose test subjects are all different (checked in ``fold_corpus``).
FOLD_SPLIT_SEEDS = (0, 1, 3, 4, 8)

#: Pretraining recipes: PretrainSettings fields (``preset``, ``epochs``, ``mask_ratio``...) and
#: model overrides. ``baseline`` is the demo's recipe before this benchmark.
RECIPES: dict[str, dict] = {
    "baseline": {"preset": "tiny", "epochs": 50},
    "mask-range": {"preset": "tiny", "epochs": 50, "mask_ratio": 0.2, "mask_ratio_max": 0.9},
    # The small preset (tiny's encoder, 2-block axial decoder) with its default masking (0.2-0.9).
    "small-50": {"preset": "small", "epochs": 50},
    "small": {"preset": "small", "epochs": 100},
    "small-50, per-recording scaling": {"preset": "small", "epochs": 50, "corpus_scaling": "recording"},
    # Labelled everywhere: the decoder starts from the spatial baseline's estimate.
    "small-50 hybrid (spatial prior)": {"preset": "small", "epochs": 50, "spatial_prior": True},
    "patch10": {"preset": "small", "epochs": 50, "model_overrides": {"patch_trs": 10}},
    # Issue 26, recipes for fresh cohorts (also scored by bench_shift.py).
    "small-50, per-recording, augmented": {"preset": "small", "epochs": 50, "corpus_scaling": "recording",
                                           "augment": ["reverse", "gain", "noise"]},
    # The recipe for fresh cohorts (FRESH_COHORT: the demo's and hcp-fresh's).
    "small-50 hybrid, per-recording, prior dropout 0.5, augmented": {
        **FRESH_COHORT.settings, "epochs": 50, "corpus_scaling": FRESH_COHORT.corpus_scaling},
}


def fold_corpus(work: Path, fold: int, scaling: str = "pooled"):
    """The HCP corpus of fold ``fold`` (prepared once, then reused); ``scaling``: the
    contract's robust scaling, pooled over the training subjects or per recording."""

    path = work / (f"corpus-fold{fold}" + ("" if scaling == "pooled" else f"-{scaling}"))
    if (path / "corpus.json").is_file():
        return Corpus(path)
    contract = PreprocessingContract(target_tr=HCP7_TR, percent_signal_change=True, scaling=scaling)
    corpus = prepare_corpus(load_hcp7_aal2(), path,
                            PrepareSettings.of(atlas=load_atlas("aal2"), contract=contract, min_trs=200,
                                               split_seed=FOLD_SPLIT_SEEDS[fold], jobs=1, overwrite=True))
    return corpus


def test_subjects(corpus) -> list[str]:
    m = corpus.manifest
    return sorted(m.iloc[corpus.split_indices("test")]["subject"].astype(str).unique())


def train_subjects(corpus) -> list[str]:
    m = corpus.manifest
    return sorted(m.iloc[corpus.split_indices("train")]["subject"].astype(str).unique())


def run_one(recipe: str, fold: int, work: Path, forecast: bool, threads: int) -> dict:
    """Pretrain ``recipe`` on fold ``fold`` and score it; the result dict (also cached)."""

    torch.set_num_threads(threads)

    cache = _cache_file(work, recipe, fold)
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if not forecast or "forecasting" in cached:
            return cached
    run, corpus, settings = trained_run(recipe, fold, work)
    pretrain_s = json.loads((run / "bench_seconds.json").read_text())
    model = run / "model"
    metrics = json.loads((run / "metrics.json").read_text())

    out = {"recipe": recipe, "fold": fold, "settings": asdict(settings) | {"corpus": "HCP fold"},
           "test_subjects": test_subjects(corpus), "train_subjects": train_subjects(corpus),
           "pretrain_seconds": pretrain_s, "threads": threads,
           "parameters": metrics["parameters"]["total"], "val": metrics["metrics_last_epoch"],
           **score_model(model, corpus, fold)}
    if forecast:
        out["forecasting"] = _forecast(model, corpus, run, fold)
    _write_cache(cache, out)
    return out


def trained_run(recipe: str, fold: int, work: Path):
    """The run folder of ``recipe`` pretrained on fold ``fold`` (trained now unless a finished
    run is there), its fold corpus and its settings: ``(run, corpus, PretrainSettings)``."""
    spec = dict(RECIPES[recipe])
    corpus = fold_corpus(work, fold, spec.pop("corpus_scaling", "pooled"))
    run = work / "runs" / f"{_slug(recipe)}--fold{fold}"
    settings = PretrainSettings(corpus=corpus.path, seed=fold, **spec)
    assert not set(test_subjects(corpus)) & set(train_subjects(corpus))
    timing = run / "bench_seconds.json"
    if not timing.is_file():  # a finished run is reused (e.g. to add forecasting or shifts)
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        pretrain(settings, run, progress=False)
        timing.write_text(json.dumps(round(time.perf_counter() - t0, 1)))
    return run, corpus, settings


def _slug(recipe: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", recipe)


def _cache_file(work: Path, recipe: str, fold: int) -> Path:
    return work / "cache" / f"{_slug(recipe)}--fold{fold}.json"


def seed_cache(work: Path, results: Path) -> int:
    """Count the runs of an earlier results file (``results/quality.json``) as cached, so a
    fresh machine (an empty ``WORK``) adds recipes or folds without training the others again.
    A run already in the cache wins. Returns how many runs were taken from ``results``."""
    if not results.is_file():
        return 0
    n = 0
    for run in json.loads(results.read_text())["runs"]:
        cache = _cache_file(work, run["recipe"], run["fold"])
        if not cache.is_file():
            _write_cache(cache, run)
            n += 1
    return n


def _write_cache(cache: Path, result: dict) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, cache)


def score_model(model: Path, corpus, seed: int) -> dict:
    """Masked reconstruction and network identification of a checkpoint on ``corpus``'s test
    subject (the fold's protocol): ``reconstruction_r2`` {ratio: {method: R²}} and ``networks``
    {dataset: {chance, rows: [{model, features, knn}]}}."""

    rec = evaluate_reconstruction(model, corpus, split="test", ratios=RATIOS, seed=seed)
    recon = {str(e["mask_ratio"]): {m: e["methods"][m]["r2"] for m in e["methods"]} for e in rec["results"]}
    return {"reconstruction_r2": recon, "networks": score_networks(model, corpus, seed)}


def score_networks(model: Path, corpus, seed: int) -> dict:
    """Network identification from the test subject's recording (AAL2) and the Schaefer-100 run."""

    tests = set(test_subjects(corpus))
    test_recordings = [r for r in load_hcp7_aal2() if r.subject in tests]
    networks = {}
    for name, data, kw in (("hcp_aal2", test_recordings, {}),
                           ("schaefer100", [load_schaefer100_rest()],
                            {"transfer_atlas": True, "target_tr": HCP7_TR})):
        res = identify_networks(model, data, seed=seed, untrained_control=True, **kw)
        networks[name] = {"chance": res["chance"]["majority_accuracy"],
                          "rows": [{"model": m["model"], "features": m["features"],
                                    "knn": m["knn_accuracy"]} for m in res["methods"]]}
    return networks


def _forecast(model: Path, corpus, run: Path, fold: int) -> dict:

    res = compare(model, corpus.path, run / "forecasting",
                  finetune_settings=FinetuneSettings(epochs=5, crops_per_recording=16, seed=fold, scratch=False),
                  baseline_settings=BaselineSettings(), baselines=("persistence", "var"), overwrite=True)
    return {name: {"label": m["label"], "per_step_mse": m["mse"], "mean_mse": m["mean"]["mse"]}
            for name, m in res["methods"].items()}


# -- aggregation ------------------------------------------------------------------------------
def _mean_sd(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)), 4) if len(v) > 1 else None,
            "n": int(len(v))}


def _knn(row_set: list, model: str, features: str):
    return next((r["knn"] for r in row_set if r["model"] == model and r["features"] == features), None)


def aggregate(results: list[dict]) -> dict:
    """Per recipe: mean and sd over folds of every score."""
    table = {}
    for recipe in dict.fromkeys(r["recipe"] for r in results):
        rs = [r for r in results if r["recipe"] == recipe]
        row = {"folds": sorted(r["fold"] for r in rs), "pretrain_seconds": _mean_sd(r["pretrain_seconds"] for r in rs),
               "parameters": rs[0]["parameters"], "settings": RECIPES.get(recipe, rs[0]["settings"]),
               "reconstruction_r2": {}, "networks": {}}
        for ratio in map(str, RATIOS):
            row["reconstruction_r2"][ratio] = {
                m: _mean_sd(r["reconstruction_r2"][ratio][m] for r in rs)
                for m in ("brainlm", "spatial", "interpolation", "parcel_mean")}
        for net in ("hcp_aal2", "schaefer100"):
            feats = {}
            for model in ("BrainLM", "BrainLM untrained", "BrainLM, time-shifted input"):
                # In the order of the rows, not a set's: a set of strings iterates in an order that
                # changes between processes, and tied features were then picked at random.
                for f in dict.fromkeys(x["features"] for x in rs[0]["networks"][net]["rows"] if x["model"] == model):
                    feats[f"{model}: {f}"] = _mean_sd(_knn(r["networks"][net]["rows"], model, f) for r in rs)
            base = dict.fromkeys(x["features"] for x in rs[0]["networks"][net]["rows"]
                                 if not x["model"].startswith("BrainLM"))
            for f in base:
                model = next(x["model"] for x in rs[0]["networks"][net]["rows"] if x["features"] == f)
                feats[f"{model}: {f}"] = _mean_sd(_knn(r["networks"][net]["rows"], model, f) for r in rs)
            own = [k for k in feats if k.startswith("BrainLM: ")]
            best = max(own, key=lambda k: feats[k]["mean"])
            row["networks"][net] = {"chance": rs[0]["networks"][net]["chance"], "knn": feats,
                                    "best_own_feature": best.removeprefix("BrainLM: ")}
        if all("forecasting" in r for r in rs):
            row["forecasting"] = {
                name: {"label": rs[0]["forecasting"][name]["label"],
                       "per_step_mse": np.mean([r["forecasting"][name]["per_step_mse"] for r in rs], axis=0).round(4).tolist(),
                       "mean_mse": _mean_sd(r["forecasting"][name]["mean_mse"] for r in rs)}
                for name in rs[0]["forecasting"]}
        table[recipe] = row
    return table


def _label(name: str, row: dict) -> str:
    n = len(row["folds"])
    return f"{name} ({n} fold{'s' if n > 1 else ''})"


def markdown(table: dict, meta: dict) -> str:
    def ms(d):
        return f"{d['mean']:.3f}" + (f" ± {d['sd']:.3f}" if d.get("sd") is not None else "")

    lines = [f"# Quality benchmark ({meta['date']})", "",
             f"{meta['machine']}. Held-out HCP subject per fold (folds {meta['folds']}, each its own seed); "
             "mean ± sd over folds. Spatial = Gaussian conditional imputation fitted on the same training "
             "subjects, on the same masks.", "",
             "## Masked reconstruction R² (test subject)", "",
             "| recipe | params | pretrain s | " + " | ".join(f"BrainLM @{r}" for r in RATIOS)
             + " | " + " | ".join(f"spatial @{r}" for r in RATIOS) + " |",
             "|---" * (3 + 2 * len(RATIOS)) + "|"]
    for name, row in table.items():
        rr = row["reconstruction_r2"]
        lines.append(f"| {_label(name, row)} | {row['parameters']:,} | {row['pretrain_seconds']['mean']:.0f} | "
                     + " | ".join(ms(rr[str(r)]["brainlm"]) for r in RATIOS) + " | "
                     + " | ".join(ms(rr[str(r)]["spatial"]) for r in RATIOS) + " |")
    for net, title in (("hcp_aal2", "Networks, HCP test subject on AAL2"),
                       ("schaefer100", "Networks, Schaefer-100 run (atlas transfer)")):
        lines += ["", f"## {title}: kNN accuracy (leave one parcel out)", "",
                  "| recipe | best own feature | own | own, time-shifted | CLS attention (paper) | "
                  "CLS attention, time-shifted | untrained, same feature | FC profile | chance |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, row in table.items():
            n = row["networks"][net]
            f = n["best_own_feature"]
            k = n["knn"]
            fc = next(v for key, v in k.items() if key.endswith(": fc_profile"))
            lines.append(f"| {_label(name, row)} | {f} | {ms(k['BrainLM: ' + f])} | {ms(k['BrainLM, time-shifted input: ' + f])} | "
                         f"{ms(k['BrainLM: cls_attention'])} | {ms(k['BrainLM, time-shifted input: cls_attention'])} | "
                         f"{ms(k['BrainLM untrained: ' + f])} | {ms(fc)} | {n['chance']:.3f} |")
    lines += ["", "## Latent connectivity: what pretraining adds (kNN accuracy, mean over folds)", "",
              "The correlation of the model's token vectors (co-fluctuation by construction), pretrained "
              "against an untrained model of the same architecture; the gap is its own number.", "",
              "| recipe | data | latent connectivity | untrained | gap (pretrained - untrained) | "
              "time-shifted | FC profile |", "|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        for net in ("hcp_aal2", "schaefer100"):
            k = row["networks"][net]["knn"]
            if "BrainLM: latent_connectivity" not in k:
                continue
            own, untrained = k["BrainLM: latent_connectivity"], k["BrainLM untrained: latent_connectivity"]
            fc = next(v for key, v in k.items() if key.endswith(": fc_profile"))
            lines.append(f"| {_label(name, row)} | {net} | {ms(own)} | {ms(untrained)} | "
                         f"{own['mean'] - untrained['mean']:+.3f} | "
                         f"{ms(k['BrainLM, time-shifted input: latent_connectivity'])} | {ms(fc)} |")
    fc_rows = {k: v for k, v in table.items() if "forecasting" in v}
    if fc_rows:
        lines += ["", "## Forecasting 20 TRs from 180 (test subject): MSE per step (mean over folds)", "",
                  "| recipe | method | mean | steps 1 / 5 / 10 / 20 |", "|---|---|---|---|"]
        for name, row in fc_rows.items():
            for m, v in row["forecasting"].items():
                s = v["per_step_mse"]
                lines.append(f"| {_label(name, row)} | {v['label']} | {ms(v['mean_mse'])} | "
                             + " / ".join(f"{s[i]:.3f}" for i in (0, 4, 9, len(s) - 1)) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=";".join(RECIPES),
                    help="recipe names separated by ';', each optionally NAME:FOLDS (fewer folds than --folds, "
                         "e.g. a screening run on fold 0 only; the tables say how many folds each has)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--forecast", action="store_true", help="also fine-tune and score forecasting")
    ap.add_argument("--jobs", type=int, default=1, help="(recipe, fold) runs at once, one thread each")
    ap.add_argument("--work", default=os.environ.get("BRAINLM_BENCH_WORK", "/tmp/brainlm-bench-quality"))
    ap.add_argument("--out", default=str(ROOT / "results" / "quality"))
    ap.add_argument("--fresh", action="store_true",
                    help="ignore the runs of an earlier --out/quality.json (they count as cached by default)")
    args = ap.parse_args()
    wanted = [r.rsplit(":", 1) if ":" in r else (r, str(args.folds)) for r in args.recipes.split(";")]
    recipes = {name: min(int(n), args.folds) for name, n in wanted}
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}; expected some of {list(RECIPES)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.fresh:
        seeded = seed_cache(work, Path(args.out) / "quality.json")
        if seeded:
            print(f"{seeded} run(s) taken from {Path(args.out) / 'quality.json'} (--fresh trains them again)")
    folds = list(range(args.folds))
    scalings = {"pooled"} | {RECIPES[r].get("corpus_scaling", "pooled") for r in recipes}
    for f in folds:  # sequentially: corpora are shared by the runs
        for scaling in sorted(scalings):
            fold_corpus(work, f, scaling)
    tests = [test_subjects(fold_corpus(work, f)) for f in folds]
    assert len({tuple(t) for t in tests}) == len(folds), f"folds share a test subject: {tests}"
    tasks = [(r, f) for r, n in recipes.items() for f in folds[:n]]
    threads = 1 if args.jobs > 1 else max(os.cpu_count() or 1, 1)
    t0 = time.perf_counter()
    if args.jobs > 1:
        results = Parallel(n_jobs=args.jobs)(delayed(run_one)(r, f, work, args.forecast, threads) for r, f in tasks)
    else:
        results = [run_one(r, f, work, args.forecast, threads) for r, f in tasks]
    table = aggregate(results)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            # From the runs themselves: cached runs may have been trained by an earlier invocation.
            "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
                       + ("one thread per run, two runs at once" if {r["threads"] for r in results} == {1}
                          else "all threads per run")
                       + "; pretrain seconds are not a speed benchmark (other jobs shared the cores)",
            "folds": folds, "test_subjects": tests, "ratios": list(RATIOS), "wall_seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "recipes": table, "runs": results}
    tmp = out / "quality.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "quality.json")
    (out / "quality.md.tmp").write_text(markdown(table, meta))
    os.replace(out / "quality.md.tmp", out / "quality.md")
    draw_quality(table, out / "quality.png")
    # The report's copy (package data): what `brainlm report` shows of the recipe's evidence.
    PACKAGED.mkdir(parents=True, exist_ok=True)
    write_json(PACKAGED / "quality.json", {"meta": meta, "recipes": table})
    print(markdown(table, meta))


if __name__ == "__main__":
    main()
