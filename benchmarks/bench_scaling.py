"""Scaling study: held-out quality against pretraining data and model size.

The paper's claim is that BrainLM's quality grows with pretraining data and model size. Here
both axes are measured on the one held-out HCP subject of fold 0 of the quality benchmark
(``bench_quality.py``: same test subject, same masks, same scoring), with every run given the
same number of optimizer steps (``EPOCHS`` epochs of ``WINDOWS_PER_EPOCH`` random crops), so
that a bigger model or more data gets no more compute than a smaller one:

* **model size**: four widths/depths of the ``small`` recipe (axial decoder, mask ratios drawn
  per batch from 0.2-0.9) on the 5 training subjects;
* **data**: the ``small`` model on 1, 3 and 5 training subjects (real recordings, 1,200 TRs
  each), and on the 5 real subjects plus ``SIMULATED`` simulated subjects on AAL2 (coupled
  oscillators on the HCP connectome; docs/simulation.md), which add windows but not real ones.

The spatial baseline is always fitted on the 5 real training subjects of the fold. Results go to
``results/scaling/`` (JSON, Markdown, a log-axis figure); runs are cached in ``WORK`` and resume.

    python benchmarks/bench_scaling.py --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


import torch
from joblib import Parallel, delayed

import bench_quality as bq
from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import write_json
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import HCP7_TR, load_hcp7_aal2
from brainlm.report.benchmark_figures import draw_scaling
from brainlm.simulate import CohortSpec, simulate_cohort
from brainlm.train.pretrain import PretrainSettings, pretrain

ROOT = Path(__file__).resolve().parent
EPOCHS = 20
WINDOWS_PER_EPOCH = 320
SIMULATED = 40
RECIPE = {"mask_ratio": 0.2, "mask_ratio_max": 0.9}
AXIAL = {"decoder_attention": "axial", "decoder_depth": 2}
SIZES = {
    "xs": {"dim": 32, "depth": 2, "heads": 4, "decoder_dim": 32, "decoder_heads": 4, **AXIAL},
    "s": {"dim": 64, "depth": 2, "heads": 4, "decoder_dim": 64, "decoder_heads": 4, **AXIAL},
    "m": {"dim": 96, "depth": 3, "heads": 4, "decoder_dim": 64, "decoder_heads": 4, **AXIAL},
    "l": {"dim": 128, "depth": 4, "heads": 4, "decoder_dim": 64, "decoder_heads": 4, **AXIAL},
}
FOLD = 0


def runs() -> dict[str, dict]:
    """Every run of the study: model size and training data."""
    out = {f"size-{k}": {"size": k, "subjects": 5, "simulated": 0} for k in SIZES}
    out |= {f"data-{n}subj": {"size": "m", "subjects": n, "simulated": 0} for n in (1, 3)}
    out[f"data-5subj+{SIMULATED}sim"] = {"size": "m", "subjects": 5, "simulated": SIMULATED}
    return out


def corpus_for(work: Path, subjects: int, simulated: int):
    """Fold 0's validation and test subjects plus the first ``subjects`` of its training subjects
    (and ``simulated`` simulated subjects, all in training)."""

    path = work / f"corpus-scaling-{subjects}subj-{simulated}sim"
    if (path / "corpus.json").is_file():
        return Corpus(path)
    fold = bq.fold_corpus(work, FOLD)
    split = {f"HCP/{s}": "train" for s in bq.train_subjects(fold)[:subjects]}
    m = fold.manifest
    for name in ("val", "test"):
        split |= {f"HCP/{s}": name for s in m.iloc[fold.split_indices(name)]["subject"].astype(str)}
    recordings = [r for r in load_hcp7_aal2() if f"HCP/{r.subject}" in split]
    if simulated:
        sims = simulate_cohort(CohortSpec(simulated, atlas="aal2", n_trs=1200, tr=HCP7_TR, seed=123), jobs=1)
        recordings += sims
        split |= {f"{r.site}/{r.subject}" if r.site else r.subject: "train" for r in sims}
    contract = PreprocessingContract(target_tr=HCP7_TR, percent_signal_change=True)
    return prepare_corpus(recordings, path,
                          PrepareSettings.of(atlas=load_atlas("aal2"), contract=contract, min_trs=200,
                                             split_assignments=split, jobs=1, overwrite=True))


def run_one(name: str, spec: dict, work: Path, threads: int) -> dict:

    torch.set_num_threads(threads)

    cache = work / "cache" / f"scaling-{name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    corpus = corpus_for(work, spec["subjects"], spec["simulated"])
    n_train = len(corpus.split_indices("train"))
    settings = PretrainSettings(corpus=corpus.path, preset="tiny", model_overrides=SIZES[spec["size"]],
                                epochs=EPOCHS, crops_per_recording=max(1, round(WINDOWS_PER_EPOCH / n_train)),
                                seed=FOLD, **RECIPE)
    run = work / "runs" / f"scaling-{name}"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    pretrain(settings, run, progress=False)
    seconds = time.perf_counter() - t0
    metrics = json.loads((run / "metrics.json").read_text())
    fold = bq.fold_corpus(work, FOLD)  # scored on the fold's corpus: spatial fitted on its 5 real subjects
    out = {"run": name, **spec, "train_recordings": n_train,
           "train_windows_seen": EPOCHS * settings.crops_per_recording * n_train,
           "parameters": metrics["parameters"]["total"], "pretrain_seconds": round(seconds, 1),
           "threads": threads, **bq.score_model(run / "model", fold, FOLD)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, cache)
    return out


def _net(r: dict, net: str, model: str = "BrainLM") -> float:
    return max(x["knn"] for x in r["networks"][net]["rows"] if x["model"] == model)


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# Scaling study ({meta['date']})", "", f"{meta['machine']}. Fold 0 of the quality benchmark "
             f"(test subject {meta['test_subjects']}); every run {EPOCHS} epochs of {WINDOWS_PER_EPOCH} "
             "windows (same optimizer steps); recipe: axial decoder, mask ratio per batch in 0.2-0.9. "
             "One seed: differences below ~0.01 R² are within fold-to-fold noise (see quality.md).", "",
             "| run | params | train subjects (+ simulated) | R² @0.2 | @0.5 | @0.75 | @0.9 | spatial @0.75 | "
             "networks AAL2 (best own / time-shifted) | Schaefer-100 (best own / time-shifted) | pretrain s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rr = r["reconstruction_r2"]
        lines.append(
            f"| {r['run']} | {r['parameters']:,} | {r['subjects']} (+{r['simulated']}) | "
            + " | ".join(f"{rr[str(x)]['brainlm']:.3f}" for x in bq.RATIOS)
            + f" | {rr['0.75']['spatial']:.3f} | {_net(r, 'hcp_aal2'):.3f} / "
            f"{_net(r, 'hcp_aal2', 'BrainLM, time-shifted input'):.3f} | {_net(r, 'schaefer100'):.3f} / "
            f"{_net(r, 'schaefer100', 'BrainLM, time-shifted input'):.3f} | {r['pretrain_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--work", default=os.environ.get("BRAINLM_BENCH_WORK", "/tmp/brainlm-bench-quality"))
    ap.add_argument("--out", default=str(ROOT / "results" / "scaling"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fold = bq.fold_corpus(work, FOLD)
    todo = runs()
    for spec in todo.values():  # corpora first, one at a time
        corpus_for(work, spec["subjects"], spec["simulated"])
    threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)
    t0 = time.perf_counter()
    # Longest runs first, so two workers finish together.
    order = sorted(todo, key=lambda n: -(SIZES[todo[n]["size"]]["dim"]))
    if args.jobs > 1:
        results = Parallel(n_jobs=args.jobs)(delayed(run_one)(n, todo[n], work, threads) for n in order)
    else:
        results = [run_one(n, todo[n], work, threads) for n in order]
    results.sort(key=lambda r: list(todo).index(r["run"]))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            # From the runs themselves: cached runs may have been trained by an earlier invocation.
            "machine": f"{os.cpu_count()} CPU cores, "
                       + ("one thread per run" if {r["threads"] for r in results} == {1} else "all threads per run")
                       + "; pretrain seconds are not a speed benchmark (other benchmarks shared the cores)",
            "test_subjects": bq.test_subjects(fold), "epochs": EPOCHS, "windows_per_epoch": WINDOWS_PER_EPOCH,
            "wall_seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "scaling.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    os.replace(tmp, out / "scaling.json")
    (out / "scaling.md.tmp").write_text(markdown(results, meta))
    os.replace(out / "scaling.md.tmp", out / "scaling.md")
    draw_scaling(results, out / "scaling.png")
    bq.PACKAGED.mkdir(parents=True, exist_ok=True)
    write_json(bq.PACKAGED / "scaling.json", {"meta": meta, "runs": results})
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
