"""``brainlm forecast finetune`` and ``brainlm forecast evaluate``.

``evaluate`` scores the methods (the task writes ``forecast.json`` and ``forecast.md``), then
this command draws ``forecast_error.png`` from the saved ``forecast.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brainlm.commands.arguments import CHECKPOINT_HELP, check_positive, comma_names
from brainlm.data.atomic import check_output_folder
from brainlm.errors import BrainLMInputError
from brainlm.model.config import FORECAST_CARRY
from brainlm.report.forecasting_figures import draw_forecast_figure
from brainlm.tasks.forecasting.baselines import BASELINES, BaselineSettings, NeuralTraining
from brainlm.tasks.forecasting.evaluate import evaluate_run
from brainlm.tasks.forecasting.finetune import FinetuneSettings, finetune

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``forecast`` (``finetune`` | ``evaluate``) to the ``brainlm`` sub-parsers."""
    f, b, n = FinetuneSettings(), BaselineSettings(), NeuralTraining()
    p = subparsers.add_parser(
        "forecast", help="forecast future brain states: fine-tune BrainLM, compare with baselines",
        description="Fine-tune a pretrained BrainLM to predict the next TRs from the past ones (future "
        "masking), then compare it step by step with persistence, the context mean, parcel-wise AR(p), ridge "
        "VAR, LSTM, a neural ODE and the same architecture trained from scratch.")
    sub = p.add_subparsers(dest="forecast_command", required=True)

    ft = sub.add_parser("finetune", help="fine-tune a checkpoint with the future mask",
                        description="Fine-tune CHECKPOINT on the training split of CORPUS to predict "
                        "--horizon TRs from --context TRs (windows of context + horizon TRs, a multiple "
                        "of the patch length), and train the same architecture from random "
                        "initialisation with the same budget. The best epoch by validation forecast "
                        "MSE is kept. Writes OUT/model, OUT/scratch, OUT/finetune.json.")
    ft.add_argument("checkpoint", help=CHECKPOINT_HELP)
    ft.add_argument("corpus", help="a prepared corpus (train and val splits are used)")
    ft.add_argument("--out", required=True, help="folder to create")
    ft.add_argument("--context", type=int, default=f.context_trs, metavar="TRS", help="TRs seen (default 180)")
    ft.add_argument("--horizon", type=int, default=f.horizon_trs, metavar="TRS",
                    help="TRs predicted, a multiple of the patch length (default 20)")
    g = ft.add_argument_group("optimisation (the same for the scratch model)")
    g.add_argument("--epochs", type=int, default=f.epochs)
    g.add_argument("--batch-size", type=int, default=f.batch_size)
    g.add_argument("--crops-per-recording", type=int, default=f.crops_per_recording,
                   help="random windows per training recording per epoch")
    g.add_argument("--lr", type=float, default=f.lr, help="peak learning rate (AdamW, cosine, warm-up)")
    g.add_argument("--weight-decay", type=float, default=f.weight_decay)
    g.add_argument("--seed", type=int, default=f.seed)
    g.add_argument("--no-scratch", action="store_true", help="skip the randomly initialised control")
    ft.add_argument("--transfer-atlas", action="store_true",
                    help="allow a corpus on another atlas than the checkpoint's")
    ft.add_argument("--carry", default=f.carry, choices=["auto", *FORECAST_CARRY],
                    help="the path inside the model that carries the present forward, whose forecast the "
                    "decoder corrects: var (a ridge VAR fitted on the training split), linear (a learned "
                    "map from the last TRs, starting at persistence), none (the decoder alone). auto "
                    "(default): var for a BrainLM checkpoint, none for a hybrid or an upstream model")
    ft.add_argument("--carry-lags", type=int, metavar="TRS",
                    help="TRs the carry path reads (default: 2 for var, 20 for linear)")
    ft.add_argument("--accelerator", default=f.accelerator, help="auto | cpu | gpu")
    ft.add_argument("--precision", default=f.precision,
                    help="auto (default): bf16-mixed where bfloat16 is native (a GPU with bf16, a CPU with AMX-BF16 "
                   "or AVX512-BF16), else 32-true; or 32-true, bf16-mixed, 16-mixed (GPU only)")
    ft.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ft.add_argument("--quiet", action="store_true", help="no progress bar")

    ev = sub.add_parser("evaluate", help="score the fine-tuned models and the baselines per step",
                        description="Fit the baselines on the training split of CORPUS and score them, "
                        "the fine-tuned model, the scratch model and the pretrained checkpoint "
                        "(zero-shot) on the same deterministic test windows: MSE, R^2 and Pearson r "
                        "across parcels at every predicted step. Writes OUT/forecast.json, "
                        "OUT/forecast.md and OUT/forecast_error.png.")
    ev.add_argument("run", help="a folder written by `brainlm forecast finetune`")
    ev.add_argument("corpus", help="the prepared corpus (the test split is scored)")
    ev.add_argument("--out", required=True, help="results folder")
    ev.add_argument("--horizon", type=int, metavar="TRS",
                    help="TRs to score (default: the run's; longer horizons are rolled out)")
    ev.add_argument("--stride", type=int, metavar="TRS",
                    help="TRs between test windows (default: the horizon, so every test TR after the "
                    "first context is predicted once)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--baselines", type=comma_names, default=list(BASELINES), metavar="NAMES",
                    help=f"comma-separated, any of {','.join(BASELINES)} (default: all)")
    ev.add_argument("--no-zero-shot", action="store_true", help="skip the pretrained checkpoint without fine-tuning")
    g = ev.add_argument_group("baselines")
    g.add_argument("--ar-order", type=int, default=b.ar_order, help="lags of the per-parcel AR model")
    g.add_argument("--var-order", type=int, default=b.var_order, help="lags of the ridge VAR")
    g.add_argument("--lstm-hidden", type=int, default=b.lstm_hidden)
    g.add_argument("--ode-latent", type=int, default=b.ode_latent, help="neural-ODE latent size")
    g.add_argument("--ode-hidden", type=int, default=b.ode_hidden, help="neural-ODE vector-field width")
    g.add_argument("--ode-step", type=float, default=b.ode_step_trs, metavar="TRS",
                   help="neural-ODE RK4 step in TRs")
    g.add_argument("--epochs", type=int, default=n.epochs, help="LSTM and neural-ODE epochs")
    g.add_argument("--crops-per-recording", type=int, default=n.crops_per_recording,
                   help="LSTM and neural-ODE training windows per recording per epoch")
    g.add_argument("--seed", type=int, default=n.seed)
    g.add_argument("--max-train-recordings", type=int, metavar="N",
                   help="fit the baselines on the first N training recordings (they are held in memory)")
    ev.add_argument("--quiet", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``brainlm forecast finetune|evaluate``; 0 on success."""
    if args.forecast_command == "finetune":
        return _finetune(args)
    return _evaluate(args)


def _finetune(args: argparse.Namespace) -> int:
    check_output_folder(args.out, overwrite=args.overwrite, sources=[args.checkpoint, args.corpus])
    check_positive(args.epochs, "--epochs")
    check_positive(args.batch_size, "--batch-size")
    settings = FinetuneSettings(
        context_trs=args.context, horizon_trs=args.horizon, epochs=args.epochs, batch_size=args.batch_size,
        crops_per_recording=args.crops_per_recording, lr=args.lr, weight_decay=args.weight_decay,
        seed=args.seed, scratch=not args.no_scratch, transfer_atlas=args.transfer_atlas,
        accelerator=args.accelerator, precision=args.precision, carry=args.carry, carry_lags=args.carry_lags)
    summary = finetune(args.checkpoint, args.corpus, args.out, settings, overwrite=args.overwrite,
                       progress=not args.quiet)
    for kind, m in summary["models"].items():
        per_epoch = sum(m["train_seconds_per_epoch"]) / len(m["train_seconds_per_epoch"])
        print(f"{kind}: validation forecast MSE {m['val_mse_before']:.4f} before -> {m['best_val_mse']:.4f} "
              f"(best epoch {m['best_epoch']}), {per_epoch:.1f} s per epoch")
    if summary["carry"]["label"]:
        print(f"carry path: {summary['carry']['label']} ({summary['carry']['lags']} lags)")
    print(f"models: {args.out}/model" + (f", {args.out}/scratch" if "scratch" in summary["models"] else ""))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    for name in ("epochs", "crops_per_recording", "ar_order", "var_order", "lstm_hidden", "ode_latent",
                 "ode_hidden"):
        if getattr(args, name) < 1:
            raise BrainLMInputError(f"--{name.replace('_', '-')} is {getattr(args, name)}; expected at least 1")
    if not args.ode_step > 0:
        raise BrainLMInputError(f"--ode-step is {args.ode_step}; expected a positive number of TRs")
    settings = BaselineSettings(ar_order=args.ar_order, var_order=args.var_order, lstm_hidden=args.lstm_hidden,
                                ode_latent=args.ode_latent, ode_hidden=args.ode_hidden, ode_step_trs=args.ode_step,
                                neural=NeuralTraining(epochs=args.epochs, crops_per_recording=args.crops_per_recording,
                                                      seed=args.seed))
    results = evaluate_run(args.run, args.corpus, args.out, horizon_trs=args.horizon,
                           zero_shot=not args.no_zero_shot, baselines=args.baselines, settings=settings,
                           split=args.split, stride=args.stride, max_train_recordings=args.max_train_recordings,
                           progress=not args.quiet)
    # The task writes numbers only; the figure is drawn here from what it saved.
    draw_forecast_figure(Path(args.out))
    print(results.summary)
    print(f"results: {args.out}/forecast.json, forecast.md, forecast_error.png")
    return 0
