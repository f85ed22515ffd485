"""Evaluation benchmark: the full ``brainlm evaluate predict`` on a 500-subject synthetic cohort
on CPU, the other known-answer targets, and reconstruction on the held-out HCP subject.

1. Checkpoint: the ``tiny`` preset pretrained with ``brainlm pretrain`` on the embedded HCP
   sample (5 training subjects, AAL2, percent signal change, 40 epochs), unless
   ``--checkpoint`` names one (it must have the same cleaning settings).
2. Cohort: ``brainlm simulate --subjects 500 --atlas aal2 --n-trs 600 --tr 0.72`` and
   ``brainlm prepare --atlas aal2 --psc`` (3 windows of 200 TRs per subject).
3. ``age``: every method with the default settings (5 outer folds x 3 seeds, 3 inner folds;
   LSTM and full / LoRA fine-tuning on the first seed), timed end to end.
4. ``trait``, ``group``, ``null_score``: every method except the three trained on windows
   (LSTM, full, LoRA), same folds and seeds.
5. Reconstruction R^2 of the checkpoint on the HCP test subject next to the baselines.

    python benchmarks/bench_predict.py [--subjects 500] [--checkpoint RUN/model]

Results: benchmarks/results/predict.json and a summary on stdout. ``--blas-threads`` and
``--torch-threads`` (default 1 each) cap the threads: on a machine shared with other jobs,
multi-threaded BLAS and torch kernels spin-wait and run many times slower than one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import write_text_atomic
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import load_hcp7_aal2
from brainlm.simulate import CohortSpec, iter_cohort, write_cohort
from brainlm.tasks.prediction import PredictionSettings, evaluate_prediction, prediction_markdown
from brainlm.tasks.reconstruction import evaluate_reconstruction, reconstruction_markdown
from brainlm.train.pretrain import PretrainSettings, pretrain

CONTRACT = PreprocessingContract(percent_signal_change=True)
NOT_DEEP = ["zero_shot", "random", "fc_correlation_ridge", "fc_tangent_ridge", "raw_pca_svr",
            "finetune_linear_probe"]


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=500)
    ap.add_argument("--checkpoint", help="a checkpoint with the HCP corpus' cleaning (psc, no target TR)")
    ap.add_argument("--work", help="folder for the cohort, corpora and run (default: a temp folder)")
    ap.add_argument("--epochs", type=int, default=40, help="pretraining epochs when no --checkpoint")
    ap.add_argument("--finetune-epochs", type=int, default=PredictionSettings().finetune_epochs)
    ap.add_argument("--blas-threads", type=int, default=1)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--targets", default="age,trait,group,null_score")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "predict.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "blas_threads": args.blas_threads,
                          "load_average_at_start": _load()}}
    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        hcp_corpus = work / "hcp-corpus"
        if not (hcp_corpus / "corpus.json").exists():
            prepare_corpus(load_hcp7_aal2(), hcp_corpus,
                           PrepareSettings.of(atlas=load_atlas("aal2"), contract=CONTRACT))
        checkpoint = Path(args.checkpoint) if args.checkpoint else work / "run-tiny" / "model"
        if not (checkpoint / "model.safetensors").exists():
            t = time.perf_counter()
            pretrain(PretrainSettings(corpus=str(hcp_corpus), preset="tiny", epochs=args.epochs),
                     work / "run-tiny")
            report["pretraining"] = {"preset": "tiny", "corpus": "embedded HCP sample, 5 training subjects",
                                     "epochs": args.epochs, "seconds": round(time.perf_counter() - t, 1)}
        report["checkpoint"] = str(checkpoint)

        cohort, corpus = work / f"cohort{args.subjects}", work / f"corpus{args.subjects}"
        if not (corpus / "corpus.json").exists():
            t = time.perf_counter()
            write_cohort(iter_cohort(CohortSpec(args.subjects, atlas="aal2", n_trs=600, tr=0.72, seed=0)), cohort)
            prepare_corpus([cohort], corpus,
                           PrepareSettings.of(atlas=load_atlas("aal2"), contract=CONTRACT, jobs=2))
            report["cohort_seconds"] = round(time.perf_counter() - t, 1)

        t = time.perf_counter()
        recon = evaluate_reconstruction(checkpoint, hcp_corpus, split="test")
        report["reconstruction_hcp_test"] = {
            "seconds": round(time.perf_counter() - t, 1), "windows": recon["windows"],
            "r2": {str(e["mask_ratio"]): {m: round(v["r2"], 4) for m, v in e["methods"].items()}
                   for e in recon["results"]},
            "mse": {str(e["mask_ratio"]): {m: round(v["mse"], 4) for m, v in e["methods"].items()}
                    for e in recon["results"]}}
        print(reconstruction_markdown(recon))

        settings = replace(PredictionSettings(), finetune_epochs=args.finetune_epochs)
        report["settings"] = {**settings.__dict__, "seeds": list(settings.seeds)}
        report["targets"] = {}
        for i, target in enumerate(args.targets.split(",")):
            methods = None if i == 0 else NOT_DEEP
            if target == "group":
                methods = [m.replace("ridge", "logistic").replace("svr", "svc") for m in NOT_DEEP]
            t, load = time.perf_counter(), _load()
            r = evaluate_prediction(checkpoint, corpus, target, methods=methods, settings=settings,
                                    progress=True)
            seconds = time.perf_counter() - t
            print(prediction_markdown(r))
            report["targets"][target] = {
                "methods": "all" if methods is None else methods, "wall_seconds": round(seconds, 1),
                "load_average_at_start": load, "recordings": r["recordings"], "subjects": r["subjects"],
                "primary_metric": r["primary_metric"], "reference": r["reference"],
                "summary": r["summary"], "comparison": r["comparison"],
                "timing_seconds": r["timing_seconds"], "shared_feature_seconds": r["shared_feature_seconds"],
                "table": prediction_markdown(r)}
            _save(args.out, report, complete=False)  # a long run keeps what it has finished
    report["load_average_at_end"] = _load()
    _save(args.out, report, complete=True)
    print(f"results in {args.out}")


def _save(path: str, report: dict, complete: bool) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({**report, "complete": complete}, indent=1))


if __name__ == "__main__":
    main()
