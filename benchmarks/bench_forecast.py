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
from brainlm.data.prepare import prepare_corpus
from brainlm.data.samples import load_hcp7_aal2
from brainlm.model import BrainLM, preset
from brainlm.model.checkpoint import save_pretrained
from brainlm.tasks.forecasting import (BASELINES, BaselineSettings, FinetuneSettings, NeuralTraining,
                                       finetune, forecast_windows, make_baseline, predict_future)
from brainlm.tasks.forecasting.windows import split_recordings

CONTEXT, HORIZON = 180, 20


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
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "forecast.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "platform": platform.platform(), "load_average_at_start": os.getloadavg()},
               "setting": {"context_trs": CONTEXT, "horizon_trs": HORIZON, "corpus": "HCP sample: 7 x 1200 "
                           "TRs, 94 AAL2 parcels, TR 0.72 s (5 train / 1 val / 1 test subjects)"}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = prepare_corpus(load_hcp7_aal2(), work / "corpus", atlas=load_atlas("aal2"),
                                contract=PreprocessingContract(percent_signal_change=True))
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
