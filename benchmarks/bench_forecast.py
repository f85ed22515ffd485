"""Forecasting benchmark: fine-tuning time per epoch and forecast time per window, on CPU.

Fine-tuning: ``brainlm.tasks.forecasting.finetune`` (future mask, 180 -> 20 TRs, batch 16) on the
HCP sample corpus (5 training subjects, 94 AAL2 parcels), for the ``tiny`` and ``13m`` presets;
the time of each training epoch (validation excluded) and windows per second. Timing does not
depend on the weights, so the checkpoints are freshly initialised.

Forecast: seconds per test window for one pass (20 TRs) at batch 1 (latency) and batch 32
(throughput), and a 60-TR rollout (3 passes) at batch 32, for BrainLM ``tiny`` and ``13m``; the
same per-window prediction time for every baseline (fitted with its default settings, the LSTM
and neural ODE for one epoch: their prediction cost does not depend on training).

Runs with one torch thread by default (``--threads``): on the shared 2-core development machine
two threads made a small LSTM's forward pass 1900x slower (5.7 s vs 3 ms) through OpenMP
threads waiting on each other while other processes held the cores.

``--comparison NAME=RESULTS`` folds the mean metrics and per-step MSE of finished
``brainlm forecast evaluate`` runs (their ``forecast.json``) into the results.

    python benchmarks/bench_forecast.py \
        --comparison hcp=/tmp/fc/hcp-eval/forecast.json --comparison synthetic=/tmp/fc/sim-eval/forecast.json

Results: benchmarks/results/forecast.json (and a summary on stdout).

``--carry`` runs the carry-path comparison instead (docs/forecasting.md, "Carrying the present
forward"): the shipped ``hcp-small`` checkpoint fine-tuned on the demo's HCP corpus preparation
with each ``FinetuneSettings.carry`` (``none`` = the model before carry paths, ``var``,
``linear``), scored per step with persistence, the context mean, AR(p) and ridge VAR on the
validation subject (where the default is chosen) and on the test subject, which is
``hcp-small``'s one subject never trained on (377451: it only chose the pretraining epoch), so it
is in neither pretraining nor fine-tuning. ``--seeds`` repeats the fine-tuning with other seeds.

    python benchmarks/bench_forecast.py --carry --seeds 0,1,2
    python benchmarks/bench_forecast.py --carry --seeds 0,1,2 --carry-checkpoint hcp-fresh

Results: benchmarks/results/forecast_carry.json (``hcp-fresh``, a hybrid with per-recording
scaling, on a corpus scaled per recording: forecast_carry-hcp-fresh.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import write_text_atomic
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import HCP7_TR, load_hcp7_aal2
from brainlm.model import BrainLM, preset
from brainlm.checkpoints.folder import load_pretrained, save_pretrained
from brainlm.checkpoints.shipped import resolve_checkpoint, shipped_models
from brainlm.tasks.forecasting import (BASELINES, BaselineSettings, BrainLMForecaster, FinetuneSettings,
                                       NeuralTraining, evaluate, finetune, forecast_windows, make_baseline,
                                       predict_future)
from brainlm.tasks.forecasting.windows import split_recordings

CONTEXT, HORIZON = 180, 20

#: The carry comparison's split of the 7 embedded HCP subjects. ``hcp-small`` trained on all but
#: 377451, which only chose its best epoch: that one is the test subject. The validation subject
#: is the demo's (split seed 0); the other five fine-tune.
CARRY_TEST, CARRY_VAL = "377451", "101309"
CARRY_CHECKPOINT = "hcp-small"
CARRY_BASELINES = ("persistence", "context_mean", "ar", "var")
STEPS = (1, 5, 10, 20)


def time_call(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def finetune_timing(corpus, work: Path, name: str, epochs: int, crops: int) -> dict:
    torch.manual_seed(0)
    model = BrainLM(preset(name), contract=corpus.contract, atlas=corpus.atlas)
    ckpt = work / f"init-{name}"
    save_pretrained(model, ckpt)
    info = finetune(ckpt, corpus.path, work / f"ft-{name}", FinetuneSettings(
        epochs=epochs, crops_per_recording=crops, batch_size=16, scratch=False))["models"]["finetuned"]
    per_epoch = info["train_seconds_per_epoch"]
    return {"preset": name, "parameters": model.count_parameters()["total"], "epochs": epochs,
            "windows_per_epoch": info["train_windows_per_epoch"], "batch_size": 16,
            "train_seconds_per_epoch": per_epoch,
            "median_seconds_per_epoch": round(float(np.median(per_epoch)), 2),
            "windows_per_s": round(info["train_windows_per_epoch"] / float(np.median(per_epoch)), 2),
            "val_seconds_per_epoch": info["val_seconds_per_epoch"]}


def brainlm_forecast_timing(corpus, name: str, context: np.ndarray, repeats: int) -> dict:
    torch.manual_seed(0)
    model = BrainLM(preset(name), contract=corpus.contract, atlas=corpus.atlas).eval()
    xyz = np.array(corpus.atlas.xyz, dtype=np.float32)
    out = {"preset": name}
    for label, batch, horizon in (("one_pass_batch_1", 1, HORIZON), ("one_pass_batch_32", 32, HORIZON),
                                  ("rollout_60_batch_32", 32, 3 * HORIZON)):
        x = context[:batch]
        s = time_call(lambda: predict_future(model, x, xyz, horizon, batch_size=batch), repeats)
        out[label] = {"ms_per_window": round(1000 * s / len(x), 2), "windows": len(x), "horizon_trs": horizon}
    return out


def baseline_timing(corpus, context: np.ndarray, repeats: int) -> dict:
    train = split_recordings(corpus, "train")
    settings = BaselineSettings(neural=NeuralTraining(epochs=1, crops_per_recording=4))
    out = {}
    for name in BASELINES:
        t = time.perf_counter()
        model = make_baseline(name, CONTEXT, HORIZON, settings).fit(train)
        fit_s = time.perf_counter() - t
        s = time_call(lambda: model.predict(context), repeats)
        out[name] = {"ms_per_window_batch_32": round(1000 * s / len(context), 3),
                     "fit_seconds": round(fit_s, 2),
                     "fit_note": "one epoch of 4 crops per recording" if name in ("lstm", "neural_ode")
                     else "full fit"}
    return out


def comparison_summary(path: Path) -> dict:
    r = json.loads(Path(path).read_text())
    return {"corpus": r["corpus"], "context_trs": r["context_trs"], "horizon_trs": r["horizon_trs"],
            "n_windows": r["n_windows"], "n_test_recordings": r["n_test_recordings"],
            "stride_trs": r["stride_trs"], "summary": r["summary"],
            "mean": {n: m["mean"] for n, m in r["methods"].items()},
            "mse_per_step": {n: m["mse"] for n, m in r["methods"].items()},
            "best_by_step_mse": r["best_by_step"]["mse"], "finetune": r.get("finetune")}


def carry_corpus(work: Path, scaling: str = "pooled"):
    """The demo's preparation of the embedded HCP data (percent signal change at TR 0.72 s,
    robust scaling fitted on the training subjects, or per recording: ``scaling``), split as
    ``CARRY_TEST`` / ``CARRY_VAL``."""
    recordings = load_hcp7_aal2()
    splits = {f"{r.site}/{r.subject}": "test" if r.subject == CARRY_TEST else
              "val" if r.subject == CARRY_VAL else "train" for r in recordings}
    return prepare_corpus(recordings, work / "corpus-carry",
                          PrepareSettings.of(atlas=load_atlas("aal2"),
                                             contract=PreprocessingContract(target_tr=HCP7_TR, percent_signal_change=True,
                                                                            scaling=scaling),
                                             min_trs=200, split_assignments=splits, jobs=1, overwrite=True))


def _table(res: dict) -> dict:
    return {n: {"label": m["label"], "mean_mse": m["mean"]["mse"], "mean_r2": m["mean"]["r2"],
                "mean_pearson_r": m["mean"]["pearson_r"],
                **{f"mse_step_{k}": m["mse"][k - 1] for k in STEPS}, "mse_per_step": m["mse"]}
            for n, m in res["methods"].items()}


def carry_comparison(work: Path, carries: list[str], seeds: list[int], epochs: int, crops: int,
                     scratch_carries: list[str], checkpoint: str = CARRY_CHECKPOINT) -> dict:
    """Fine-tune ``checkpoint`` (a shipped model whose one unseen subject is ``CARRY_TEST``) with
    every carry path and seed; score all on val and test."""
    per_recording = load_pretrained(resolve_checkpoint(checkpoint)).contract.per_recording
    corpus = carry_corpus(work, "recording" if per_recording else "pooled")
    subjects = {k: sorted(corpus.manifest.iloc[corpus.split_indices(k)]["subject"].astype(str).unique())
                for k in ("train", "val", "test")}
    out = {"checkpoint": checkpoint, "subjects": subjects, "epochs": epochs, "crops_per_recording": crops,
           "seeds": seeds, "runs": {}, "evaluation": {}}
    models: dict[str, dict] = {s: {} for s in seeds}
    for seed in seeds:
        for carry in carries:
            settings = FinetuneSettings(epochs=epochs, crops_per_recording=crops, seed=seed, carry=carry,
                                        scratch=seed == seeds[0] and carry in scratch_carries)
            t = time.perf_counter()
            run = work / f"ft-{carry}-seed{seed}"
            info = finetune(checkpoint, corpus.path, run, settings, overwrite=True)
            key = f"{carry}/seed{seed}"
            out["runs"][key] = {"seconds": round(time.perf_counter() - t, 1), "carry": info["carry"],
                                **{k: {f: v[f] for f in ("val_mse_before", "best_val_mse", "best_epoch",
                                                         "val_mse_per_epoch", "fit_seconds")}
                                   for k, v in info["models"].items()}}
            print(f"fine-tune {key}: val {out['runs'][key]['finetuned']['val_mse_before']:.4f} -> "
                  f"{out['runs'][key]['finetuned']['best_val_mse']:.4f}", flush=True)
            models[seed][f"brainlm_finetuned:{carry}"] = run / "model"
            if settings.scratch:
                models[seed][f"brainlm_scratch:{carry}"] = run / "scratch"
    for seed in seeds:
        ms = {n: BrainLMForecaster(p, HORIZON, context_trs=CONTEXT, name=n) for n, p in models[seed].items()}
        if seed == seeds[0]:
            ms["brainlm_pretrained"] = BrainLMForecaster(checkpoint, HORIZON, context_trs=CONTEXT,
                                                         step_trs=HORIZON, name="brainlm_pretrained")
        for split in ("val", "test"):
            res = evaluate(corpus, context_trs=CONTEXT, horizon_trs=HORIZON, models=ms,
                           baselines=CARRY_BASELINES, split=split)
            out["evaluation"][f"{split}/seed{seed}"] = {"n_windows": res["n_windows"], "summary": res["summary"],
                                                        "methods": _table(res)}
            print(f"{split} seed {seed}: " + "; ".join(
                f"{m['label']} {m['mean_mse']:.4f} (step 1 {m['mse_step_1']:.4f})"
                for m in out["evaluation"][f"{split}/seed{seed}"]["methods"].values()), flush=True)
    # The default is chosen on the validation subject only: lowest mean MSE over seeds.
    val = {c: float(np.mean([out["evaluation"][f"val/seed{s}"]["methods"][f"brainlm_finetuned:{c}"]["mean_mse"]
                             for s in seeds])) for c in carries}
    out["choice"] = {"rule": "lowest validation mean MSE over 20 steps, averaged over seeds",
                     "val_mean_mse": val, "chosen": min(val, key=val.get)}
    out["test_mean_over_seeds"] = {
        n: {f: round(float(np.mean([out["evaluation"][f"test/seed{s}"]["methods"][n][f] for s in seeds
                                    if n in out["evaluation"][f"test/seed{s}"]["methods"]])), 4)
            for f in ("mean_mse", *(f"mse_step_{k}" for k in STEPS))}
        for n in out["evaluation"][f"test/seed{seeds[0]}"]["methods"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,13m")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs timed per preset")
    ap.add_argument("--crops", type=int, default=8, help="crops per training recording per epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared, oversubscribed machine two "
                    "OpenMP threads spin-wait on each other and small ops slow down by orders of magnitude)")
    ap.add_argument("--comparison", action="append", default=[], metavar="NAME=FORECAST_JSON")
    ap.add_argument("--out", help="results file (default: results/forecast.json, with --carry "
                    "results/forecast_carry.json)")
    ap.add_argument("--carry", action="store_true", help="run the carry-path comparison instead")
    ap.add_argument("--carries", default="none,var,linear", help="carry paths compared (--carry)")
    ap.add_argument("--scratch-carries", default="none,var",
                    help="carry paths whose from-scratch control is trained (first seed; --carry)")
    ap.add_argument("--seeds", default="0", help="fine-tuning seeds (--carry)")
    ap.add_argument("--carry-epochs", type=int, default=FinetuneSettings().epochs)
    ap.add_argument("--carry-crops", type=int, default=FinetuneSettings().crops_per_recording)
    ap.add_argument("--carry-checkpoint", default=CARRY_CHECKPOINT, choices=[m.name for m in shipped_models()],
                    help=f"the shipped model fine-tuned (--carry); none trained on the test subject {CARRY_TEST}")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results_dir = Path(__file__).parent / "results"
    if args.carry:
        default = "forecast_carry.json" if args.carry_checkpoint == CARRY_CHECKPOINT else \
            f"forecast_carry-{args.carry_checkpoint}.json"
        out = Path(args.out or results_dir / default)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = carry_comparison(Path(tmp), args.carries.split(","), [int(s) for s in args.seeds.split(",")],
                                   args.carry_epochs, args.carry_crops, args.scratch_carries.split(","),
                                   args.carry_checkpoint)
        res["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1)}
        write_text_atomic(out, json.dumps(res, indent=2))
        print(f"chosen on validation: {res['choice']}\nresults: {out}")
        return
    args.out = args.out or str(results_dir / "forecast.json")

    results = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "platform": platform.platform(), "load_average_at_start": os.getloadavg()},
               "setting": {"context_trs": CONTEXT, "horizon_trs": HORIZON, "corpus": "HCP sample: 7 x 1200 "
                           "TRs, 94 AAL2 parcels, TR 0.72 s (5 train / 1 val / 1 test subjects)"}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = prepare_corpus(load_hcp7_aal2(), work / "corpus",
                                PrepareSettings.of(atlas=load_atlas("aal2"),
                                                   contract=PreprocessingContract(percent_signal_change=True)))
        test = forecast_windows(corpus, CONTEXT, HORIZON, split="test", stride=HORIZON)
        context = test.context[:32]
        presets = [p for p in args.presets.split(",") if p]
        results["finetune"] = [finetune_timing(corpus, work, p, args.epochs, args.crops) for p in presets]
        for r in results["finetune"]:
            print(f"fine-tune {r['preset']}: {r['median_seconds_per_epoch']} s per epoch of "
                  f"{r['windows_per_epoch']} windows ({r['windows_per_s']} windows/s)", flush=True)
        results["forecast_brainlm"] = [brainlm_forecast_timing(corpus, p, context, args.repeats) for p in presets]
        for r in results["forecast_brainlm"]:
            print(f"forecast {r['preset']}: " + ", ".join(f"{k} {v['ms_per_window']} ms/window"
                                                          for k, v in r.items() if k != "preset"), flush=True)
        results["forecast_baselines"] = baseline_timing(corpus, context, args.repeats)
        for name, r in results["forecast_baselines"].items():
            print(f"forecast {name}: {r['ms_per_window_batch_32']} ms/window (fit {r['fit_seconds']} s)")
    results["comparisons"] = {}
    for item in args.comparison:
        name, _, path = item.partition("=")
        results["comparisons"][name] = comparison_summary(Path(path))
        print(f"{name}: {results['comparisons'][name]['summary']}")
    results["machine"]["load_average_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
