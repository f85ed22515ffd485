"""``brainlm evaluate recon|predict``: honest evaluation of a checkpoint against baselines.

Results go to an ``--out`` folder (JSON for machines, Markdown for people), published only when
the evaluation finished.
"""

from __future__ import annotations

import argparse

from brainlm.commands.arguments import CHECKPOINT_HELP, check_device, check_positive, comma_floats, comma_ints
from brainlm.data.atomic import check_output_folder
from brainlm.errors import BrainLMInputError
from brainlm.tasks.prediction.evaluate import (GROUPS, PredictionSettings, evaluate_prediction,
                                               prediction_markdown)
from brainlm.tasks.reconstruction import (DEFAULT_RATIOS, ReconstructionSettings, evaluate_reconstruction,
                                          reconstruction_markdown)

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``evaluate`` with its ``recon`` and ``predict`` sub-commands."""
    ev = subparsers.add_parser(
        "evaluate", help="masked reconstruction and phenotype prediction against baselines",
        description="Evaluate a checkpoint on a prepared corpus, always next to strong baselines "
        "scored on the same masks or the same subject-grouped folds.")
    sub = ev.add_subparsers(dest="evaluation", required=True)

    p = sub.add_parser(
        "recon", help="masked reconstruction vs zero / mean / interpolation / spatial baselines",
        description="Reconstruct masked tokens of a corpus split (deterministic masks at several "
        "ratios) and score the model and its baselines on the very same masks: R^2 pooled over "
        "masked values and per parcel, MSE, Pearson r. The spatial baseline is labelled by where "
        "it was fitted: zero-shot (on the checkpoint's pretraining data, stored with it; when the "
        "corpus is on the checkpoint's atlas) and in-cohort (on the corpus' training split, when "
        "it has one). One that cannot be fitted is left out and the results say why.")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("corpus", help="a corpus prepared with the checkpoint's cleaning settings")
    p.add_argument("--out", required=True, help="results folder (reconstruction.json, .md)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--ratios", type=comma_floats, default=list(DEFAULT_RATIOS), metavar="R,R,...",
                   help="mask ratios (default 0.2,0.5,0.75,0.9)")
    p.add_argument("--mask", default="random", choices=["random", "parcels", "time"])
    p.add_argument("--seed", type=int, default=0, help="mask seed")
    p.add_argument("--max-recordings", type=int, metavar="N", help="only the first N recordings")
    p.add_argument("--batch-size", type=int, default=16)
    _common(p)

    d = PredictionSettings()
    p = sub.add_parser(
        "predict", help="phenotype prediction: BrainLM zero-shot and fine-tuned vs FC, PCA, LSTM",
        description="Predict a manifest column (e.g. age) with nested cross-validation grouped by "
        "subject: BrainLM embeddings (CLS, mean) into ridge/SVR/kNN/logistic, fine-tuned heads "
        "(linear probe, full, LoRA), and baselines on the same folds (FC correlation and tangent "
        "+ ridge/logistic, raw-signal PCA + SVR, LSTM, BrainLM with random weights).")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("corpus", help="a corpus prepared with the checkpoint's cleaning settings")
    p.add_argument("--target", required=True, metavar="COLUMN", help="manifest column to predict")
    p.add_argument("--out", required=True, help="results folder (prediction.json, .md, predictions.parquet)")
    p.add_argument("--task", default="auto", choices=["auto", "regression", "classification"])
    p.add_argument("--methods", default="all", metavar="NAMES",
                   help=f"comma-separated method names or groups {', '.join(GROUPS)} (default all)")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="only recordings of this split (default: all)")
    g = p.add_argument_group("cross-validation")
    g.add_argument("--folds", type=int, default=d.n_folds, help=f"outer folds (default {d.n_folds})")
    g.add_argument("--inner-folds", type=int, default=d.inner_folds,
                   help=f"folds of the nested search (default {d.inner_folds})")
    g.add_argument("--seeds", type=comma_ints, default=list(d.seeds), metavar="S,S,...",
                   help="one outer split per seed (default 0,1,2)")
    g.add_argument("--deep-seeds", type=int, default=d.deep_seeds, metavar="N",
                   help="run LSTM and full/LoRA fine-tuning on the first N seeds (default 1)")
    g.add_argument("--max-missing", type=float, default=d.max_missing,
                   help="largest fraction of recordings without a target (default 0.5)")
    g = p.add_argument_group("training")
    g.add_argument("--lstm-epochs", type=int, default=d.lstm_epochs)
    g.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    g.add_argument("--probe-epochs", type=int, default=d.probe_epochs)
    g.add_argument("--patience", type=int, default=d.patience)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _common(p)
    return ev


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transfer-atlas", action="store_true",
                   help="allow a corpus on another atlas than the checkpoint's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true",
                   help="the model's forward passes (and fine-tuning): 32-true (default: exact, the same "
                   "on every machine), bf16-mixed (faster where bfloat16 is native), or auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run(args: argparse.Namespace) -> int:
    """Run ``brainlm evaluate recon`` or ``brainlm evaluate predict``; 0 on success."""
    if args.evaluation == "recon":
        return _recon(args)
    return _predict(args)


def _recon(args: argparse.Namespace) -> int:
    check_output_folder(args.out, overwrite=args.overwrite, sources=[args.checkpoint, args.corpus])
    check_positive(args.batch_size, "--batch-size")
    if args.max_recordings is not None:
        check_positive(args.max_recordings, "--max-recordings")
    check_device(args.device)
    settings = ReconstructionSettings(split=args.split, ratios=args.ratios, strategy=args.mask, seed=args.seed,
                                      max_recordings=args.max_recordings, batch_size=args.batch_size,
                                      transfer_atlas=args.transfer_atlas, device=args.device,
                                      precision=args.precision)
    result = evaluate_reconstruction(args.checkpoint, args.corpus, settings, out=args.out, overwrite=args.overwrite)
    print(reconstruction_markdown(result))
    print(f"results in {args.out} ({result.seconds} s)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    settings = PredictionSettings(
        n_folds=args.folds, inner_folds=args.inner_folds, seeds=tuple(args.seeds),
        deep_seeds=args.deep_seeds, lstm_epochs=args.lstm_epochs, finetune_epochs=args.finetune_epochs,
        probe_epochs=args.probe_epochs, patience=args.patience, batch_size=args.batch_size,
        lora_rank=args.lora_rank, max_missing=args.max_missing, precision=args.precision)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise BrainLMInputError("--methods is empty; expected method names or groups")
    check_output_folder(args.out, overwrite=args.overwrite, sources=[args.checkpoint, args.corpus])
    check_positive(args.batch_size, "--batch-size")
    check_device(args.device)
    result = evaluate_prediction(
        args.checkpoint, args.corpus, args.target, task=args.task, methods=methods, settings=settings,
        split=args.split, transfer_atlas=args.transfer_atlas, device=args.device, out=args.out,
        overwrite=args.overwrite, progress=not args.quiet)
    print(prediction_markdown(result))
    print(f"results in {args.out} ({result.seconds} s)")
    return 0
