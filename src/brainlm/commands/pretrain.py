"""``brainlm pretrain``: masked-autoencoder pretraining of BrainLM on a corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainlm.train.pretrain import RECIPES, PretrainSettings, pretrain

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``pretrain`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("pretrain", help="pretrain BrainLM on a corpus",
                              description="Masked-autoencoder pretraining with Lightning (CPU, one GPU, or "
                              "many GPUs/nodes through --devices/--num-nodes/--strategy).")
    p.add_argument("corpus")
    p.add_argument("--out", required=True, help="run folder (logs, checkpoints, model/)")
    p.add_argument("--recipe", default="custom", choices=sorted(RECIPES),
                   help="fresh-cohort: the recipe for cohorts the model never saw (the demo's and hcp-fresh's: "
                        "--spatial-prior --prior-dropout 0.5 --augment reverse,gain,noise, on a corpus prepared "
                        "with --scaling recording; docs/quality.md); options given explicitly override it. "
                        "custom (default): the options as given")
    p.add_argument("--preset", default="small",
                   help="small (default: the small-data recipe, benchmarks/results/quality) | tiny | 13m | 111m | 650m")
    p.add_argument("--window-trs", type=int, help="window length in TRs (default 200)")
    p.add_argument("--patch-trs", type=int, help="TRs per token (default 20)")
    p.add_argument("--decoder-attention", choices=["full", "axial"],
                   help="decoder attention over all tokens, or alternating across parcels and across "
                   "time (default: the preset's; axial for 13m/111m/650m, see docs/model.md)")
    p.add_argument("--spatial-prior", action="store_true",
                   help="the hybrid model: the decoder starts from the linear spatial estimate of each "
                        "hidden token (fitted on the training subjects) and learns the residual; labelled as "
                        "a hybrid in every result, and tied to the corpus' atlas unless --prior-dropout "
                        "(docs/model.md)")
    p.add_argument("--prior-dropout", type=float,
                   help="with --spatial-prior: fraction of training windows that get no spatial estimate, "
                        "so the encoder must still learn the signal (default 0)")
    p.add_argument("--augment",
                   help="comma-separated augmentations of training windows that mimic another site: "
                        "reverse (time), gain (per parcel, 0.5-2x), noise (SNR 1-20); default none "
                        "(brainlm.train.augment)")
    g = p.add_argument_group("masking")
    g.add_argument("--mask", default="random", choices=["random", "parcels", "time", "future"])
    g.add_argument("--mask-ratio", type=float,
                   help="fraction of tokens masked (with --mask-ratio-max: the smallest); default: the "
                        "preset's (small: a ratio per batch from 0.2-0.9; tiny and the paper's sizes: 0.75)")
    g.add_argument("--mask-ratio-max", type=float,
                   help="draw each batch's mask ratio uniformly from [--mask-ratio, this]")
    g.add_argument("--future-trs", type=int, default=20, help="TRs hidden at the end with --mask future")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate per 256 windows, scaled by the effective batch (default: 1e-3 "
                   "as in the paper; 1.6e-2 for tiny, whose CPU batches are small)")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of steps")
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    g.add_argument("--crops-per-recording", type=int, default=64, help="random windows per recording per epoch")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("hardware")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    g.add_argument("--devices", default="1", help="devices per node (number or 'auto')")
    g.add_argument("--num-nodes", type=int, default=1)
    g.add_argument("--strategy", default="auto", help="auto | ddp | fsdp | ...")
    g.add_argument("--precision", default="auto",
                   help="auto (default): bf16-mixed where bfloat16 is native (a GPU with bf16, a CPU with AMX-BF16 "
                   "or AVX512-BF16), else 32-true; or 32-true, bf16-mixed, 16-mixed (GPU only)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    """Pretrain and print the validation metrics and the model folder; 0 on success."""
    overrides = {k: v for k, v in (("window_trs", args.window_trs), ("patch_trs", args.patch_trs),
                                   ("decoder_attention", args.decoder_attention),
                                   ("prior_dropout", args.prior_dropout)) if v is not None}
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    # What the recipe sets unless the option is given.
    chosen = {k: v for k, v in (("spatial_prior", args.spatial_prior or None),
                                ("augment", None if args.augment is None else
                                 [a for a in args.augment.split(",") if a.strip()])) if v is not None}
    settings = PretrainSettings.recipe(
        args.recipe, str(Path(args.corpus).resolve()), preset=args.preset, model_overrides=overrides, **chosen,
        mask_strategy=args.mask, mask_ratio=args.mask_ratio, mask_ratio_max=args.mask_ratio_max, future_trs=args.future_trs,
        epochs=args.epochs, batch_size=args.batch_size, accumulate=args.accumulate, base_lr=args.lr,
        weight_decay=args.weight_decay, warmup_fraction=args.warmup, clip=args.clip,
        crops_per_recording=args.crops_per_recording, seed=args.seed, num_workers=args.workers,
        accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes,
        strategy=args.strategy, precision=args.precision)
    metrics = pretrain(settings, args.out, resume=args.resume, progress=not args.quiet)
    if metrics:
        print("validation: " + ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in sorted(metrics.items())))
    print(f"model: {Path(args.out) / 'model'}")
    return 0
