"""The ``brainlm`` command line: ``prepare``, ``info``, ``pretrain``, ``embed``, ``simulate``, ``demo``.

Bad input ends with one line naming the file and the problem (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from brainlm.errors import BrainLMInputError

#: Sub-commands that live next to the code they run. Each module has ``register(subparsers)``,
#: which adds one or more sub-commands and sets ``handler=run`` on them through
#: ``parser.set_defaults``, and ``run(args) -> int``.
COMMAND_MODULES = (
    "brainlm.report.command",
    "brainlm.simulate.command",
    "brainlm.tasks.attention_command",
    "brainlm.tasks.evaluate_command",
    "brainlm.tasks.forecasting.command",
)


def comma_floats(text: str) -> list[float]:
    """``argparse`` type for options such as ``--ratios 0.2,0.5``."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def comma_ints(text: str) -> list[int]:
    """``argparse`` type for options such as ``--layers 0,3``."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainlm", description="BrainLM, a foundation model of parcellated fMRI: prepare data, "
        "pretrain, embed, simulate cohorts, run the demo.")
    from brainlm import __version__

    parser.add_argument("--version", action="version", version=f"brainlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="build a corpus from parcellated time series or scans",
                       description="Read parcellated time series (.npy .npz .csv .tsv .txt .mat .h5 "
                       ".parquet; folders are searched) with --atlas, or scans (4-D NIfTI, GIfTI, "
                       "CIFTI; an fMRIPrep derivatives folder) with --atlas-image; clean and "
                       "resample them, split subjects into train/val/test, fit robust scaling on "
                       "train, and write a corpus.")
    p.add_argument("sources", nargs="+", help="files or folders (a participants.tsv in a folder is used)")
    p.add_argument("--out", required=True, help="corpus folder to create")
    p.add_argument("--atlas",
                   help="for parcellated time series: aal2 | schaefer100 | schaefer200 | "
                   "schaefer400 | a TSV with name,x,y,z[,network]")
    g = p.add_argument_group("scans (4-D NIfTI, GIfTI, CIFTI; fMRIPrep derivatives)")
    g.add_argument("--atlas-image", action="append", metavar="FILE",
                   help="atlas to parcellate scans with: a NIfTI (3-D labels or 4-D probabilistic "
                   "maps), a .dlabel.nii, or a surface atlas given twice (left and right .annot or "
                   ".label.gii); parcel centres are computed from it")
    g.add_argument("--atlas-labels", metavar="TABLE",
                   help="names of the atlas labels: TSV/CSV with index,name[,network] or a .txt")
    g.add_argument("--surface-mesh", action="append", metavar="MESH",
                   help="mesh of a surface atlas: fsaverage5 (default, bundled with nilearn) or "
                   "the left and right GIfTI surface files (given twice)")
    g.add_argument("--confounds", default="auto",
                   help="auto (simple when fMRIPrep confounds files are present, else none) | none | "
                   "simple | scrubbing | compcor | ica_aroma | a comma list of nilearn "
                   "load_confounds components (motion,wm_csf,high_pass,global_signal,compcor,scrub)")
    g.add_argument("--global-signal", choices=["basic", "power2", "derivatives", "full"],
                   help="add global signal regression to the confound strategy")
    g.add_argument("--fd-threshold", type=float, metavar="MM",
                   help="framewise displacement above which scrubbing censors a volume (nilearn: 0.5)")
    g.add_argument("--max-censored", type=float, default=0.5, metavar="FRACTION",
                   help="reject scans with more censored volumes than this (default 0.5)")
    g.add_argument("--space", help="BIDS space- of the scans to use (fMRIPrep writes several)")
    g.add_argument("--res", help="BIDS res- of the scans to use")
    g.add_argument("--read-volumes", type=int, default=32, metavar="N",
                   help="volumes of a 4-D NIfTI read at a time (bounds memory per worker)")
    g.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="parcellate on a Dask cluster (tcp://host:8786, or 'local'); needs brainlm[dask] "
                   "and an --out on a file system the workers share")
    g = p.add_argument_group("reading")
    g.add_argument("--tr", type=float, help="repetition time in seconds for files without a JSON sidecar")
    g.add_argument("--orientation", default="auto", choices=["auto", "time-by-parcel", "parcel-by-time"])
    g.add_argument("--key", help="array name inside .npz/.mat/.h5 files (default: inferred)")
    g.add_argument("--participants", help="participants table (BIDS participants.tsv)")
    g.add_argument("--id-column", help="subject id column of the participants table")
    g.add_argument("--allow-missing-phenotypes", action="store_true",
                   help="keep recordings whose subject is not in the participants table")
    g = p.add_argument_group("preprocessing contract")
    g.add_argument("--target-tr", type=float, help="resample every recording to this TR (seconds)")
    g.add_argument("--drop-initial", type=int, default=0, metavar="N", help="drop the first N frames")
    g.add_argument("--psc", action="store_true", help="convert raw BOLD to percent signal change")
    g.add_argument("--no-detrend", action="store_true", help="skip linear detrending")
    g.add_argument("--high-pass", type=float, metavar="HZ")
    g.add_argument("--low-pass", type=float, metavar="HZ")
    g.add_argument("--bad-parcels", default="error", choices=["error", "zero"],
                   help="parcels with NaN/Inf or no variance: stop, or mark missing (read as 0)")
    g.add_argument("--min-trs", type=int, default=200, help="minimum TRs after preprocessing (a window)")
    g.add_argument("--too-short", default="skip", choices=["skip", "error"])
    g.add_argument("--on-error", default="fail", choices=["fail", "skip"],
                   help="a recording that cannot be read: stop, or skip it and report it")
    g = p.add_argument_group("splits and storage")
    g.add_argument("--splits", type=comma_floats, default=[0.8, 0.1, 0.1], metavar="TRAIN,VAL,TEST")
    g.add_argument("--seed", type=int, default=0, help="split seed")
    g.add_argument("--split-by", default="subject", choices=["subject", "site"])
    g.add_argument("--jobs", type=int, default=1, help="worker processes (-1: all cores)")
    g.add_argument("--chunk-trs", type=int, default=512,
                   help="TRs per stored chunk (512 x 424 parcels is about 0.9 MB, one read per window)")
    g.add_argument("--compression", default="none", choices=["none", "lz4", "zstd"])
    g.add_argument("--overwrite", action="store_true", help="replace an existing corpus")
    g.add_argument("--restart", action="store_true", help="discard an unfinished build instead of resuming")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("info", help="describe a corpus")
    p.add_argument("corpus")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    p = sub.add_parser("pretrain", help="pretrain BrainLM on a corpus",
                       description="Masked-autoencoder pretraining with Lightning (CPU, one GPU, or "
                       "many GPUs/nodes through --devices/--num-nodes/--strategy).")
    p.add_argument("corpus")
    p.add_argument("--out", required=True, help="run folder (logs, checkpoints, model/)")
    p.add_argument("--preset", default="tiny", help="tiny | 13m | 111m | 650m")
    p.add_argument("--window-trs", type=int, help="window length in TRs (default 200)")
    p.add_argument("--patch-trs", type=int, help="TRs per token (default 20)")
    p.add_argument("--decoder-attention", choices=["full", "axial"],
                   help="decoder attention over all tokens, or alternating across parcels and across "
                   "time (default: the preset's; axial for 13m/111m/650m, see docs/model.md)")
    g = p.add_argument_group("masking")
    g.add_argument("--mask", default="random", choices=["random", "parcels", "time", "future"])
    g.add_argument("--mask-ratio", type=float, default=0.75)
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
    g.add_argument("--precision", default="auto", help="auto (bf16-mixed on GPU, 32-true on CPU) or a Lightning value")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("embed", help="embeddings of recordings from a pretrained checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder (RUN/model)")
    p.add_argument("data", nargs="+", help="a corpus, or time-series files/folders")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--per-window", action="store_true", help="one row per window instead of per recording")
    p.add_argument("--tr", type=float, help="TR in seconds for files without a sidecar")
    p.add_argument("--orientation", default="auto", choices=["auto", "time-by-parcel", "parcel-by-time"])
    p.add_argument("--key")
    p.add_argument("--transfer-atlas", action="store_true",
                   help="allow an atlas other than the checkpoint's (through parcel coordinates)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")

    import importlib

    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for parser_ in _as_list(module.register(sub)):
            parser_.set_defaults(handler=module.run)

    p = sub.add_parser("demo", help="the main job end to end on the embedded real data")
    p.add_argument("--out", default="demo-out", help="output folder (default: ./demo-out)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--epochs", type=int, help="pretraining epochs of the tiny model (default 50; --quick: 2)")
    p.add_argument("--quick", action="store_true",
                   help="every step with much less training (a smoke test of a few minutes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None and hasattr(signal, "SIGPIPE"):
        # `brainlm info corpus | head` should end quietly, as other Unix tools do.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            return _prepare(args)
        if args.command == "info":
            return _info(args)
        if args.command == "pretrain":
            return _pretrain(args)
        if args.command == "embed":
            from brainlm.tasks.embed import embed

            df = embed(args.checkpoint, args.data, args.out, per_window=args.per_window, tr=args.tr,
                       orientation=args.orientation, key=args.key, transfer_atlas=args.transfer_atlas,
                       batch_size=args.batch_size, device=args.device)
            print(f"{len(df)} rows of embeddings written to {args.out}")
            return 0
        if getattr(args, "handler", None) is not None:
            return args.handler(args)
        if args.command == "demo":
            from dataclasses import replace

            from brainlm.demo import DemoSettings, run_demo

            settings = DemoSettings.quick() if args.quick else DemoSettings()
            if args.epochs is not None:
                settings = replace(settings, epochs=args.epochs)
            run_demo(Path(args.out), jobs=args.jobs, settings=settings)
            return 0
    except BrainLMInputError as e:
        print(f"brainlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"brainlm {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 1


def _as_list(parsers) -> list:
    return list(parsers) if isinstance(parsers, (list, tuple)) else [parsers]


def _prepare(args) -> int:
    from brainlm.data.atlas import load_atlas
    from brainlm.data.contract import PreprocessingContract
    from brainlm.data.prepare import StoreLayout, prepare_corpus

    contract = PreprocessingContract(
        target_tr=args.target_tr, drop_initial_trs=args.drop_initial, percent_signal_change=args.psc,
        detrend=not args.no_detrend, high_pass_hz=args.high_pass, low_pass_hz=args.low_pass,
        bad_parcels=args.bad_parcels)
    if args.atlas is None and not args.atlas_image:
        raise BrainLMInputError("pass --atlas (parcellated time series) or --atlas-image (NIfTI, "
                                "GIfTI or CIFTI scans)")
    options = {k: v for k, v in (("global_signal", args.global_signal),
                                 ("fd_threshold", args.fd_threshold)) if v is not None}
    mesh = args.surface_mesh
    corpus = prepare_corpus(
        args.sources, args.out, atlas=load_atlas(args.atlas) if args.atlas else None,
        atlas_image=args.atlas_image, atlas_labels=args.atlas_labels,
        surface_mesh=mesh[0] if mesh and len(mesh) == 1 else mesh, confounds=args.confounds,
        confound_options=options, max_censored=args.max_censored, space=args.space, res=args.res,
        read_volumes=args.read_volumes, dask_scheduler=args.dask_scheduler,
        contract=contract, tr=args.tr,
        orientation=args.orientation, key=args.key, participants=args.participants,
        id_column=args.id_column, allow_missing_phenotypes=args.allow_missing_phenotypes,
        min_trs=args.min_trs, too_short=args.too_short, on_error=args.on_error,
        fractions=args.splits, split_seed=args.seed, split_by=args.split_by, jobs=args.jobs,
        layout=StoreLayout(chunk_trs=args.chunk_trs, compression=args.compression),
        overwrite=args.overwrite, restart=args.restart, progress=not args.quiet)
    print_summary(corpus.summary())
    ingestion = corpus.info.get("ingestion")
    if ingestion:
        conf = ingestion["confounds"]
        print(f"scans parcellated with {ingestion['atlas_image']['masker']}; confounds: "
              f"{conf['strategy']}" + (f" ({conf['loader']['function']})" if "loader" in conf else "")
              + f"; {ingestion['censored_volumes']} volume(s) censored, "
              f"{ingestion['interpolated_volumes']} interpolated, {ingestion['trimmed_volumes']} "
              "trimmed; per scan: ingestion.parquet")
    return 0


def _pretrain(args) -> int:
    from brainlm.train.pretrain import PretrainSettings, pretrain

    overrides = {k: v for k, v in (("window_trs", args.window_trs), ("patch_trs", args.patch_trs),
                                   ("decoder_attention", args.decoder_attention)) if v}
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    settings = PretrainSettings(
        corpus=str(Path(args.corpus).resolve()), preset=args.preset, model_overrides=overrides,
        mask_strategy=args.mask, mask_ratio=args.mask_ratio, future_trs=args.future_trs,
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


def _info(args) -> int:
    from brainlm.data.corpus import Corpus

    summary = Corpus(args.corpus).summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary)
    return 0


def make_console():
    """The rich console every command prints through. Off a terminal (a log file, CI) long lines
    are left whole rather than hard-wrapped at 80 columns, so tables and numbers stay on one line."""
    from rich.console import Console

    con = Console()
    if not con.is_terminal:
        con.soft_wrap = True
    return con


def print_summary(s: dict) -> None:
    """Corpus summary as rich tables."""
    from rich.table import Table

    con = make_console()
    n = s["n_trs"]
    con.print(f"[bold]{s['path']}[/bold]: {s['recordings']} recordings, {s['subjects']} subjects, "
              f"{s['hours']} h at TR {s['tr_s']} s (source TRs {s['source_trs_s']}); TRs per "
              f"recording min {n['min']} / median {n['median']:g} / max {n['max']}")
    a = s["atlas"]
    con.print(f"atlas {a['name']}: {a['parcels']} parcels ({a['space']}); networks: "
              f"{', '.join(a['networks']) or 'none'}")
    t = Table(title=f"splits by {s['split_by']} (seed {s['split_seed']})")
    for col in ("split", "recordings", "subjects", "hours"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for name, v in s["splits"].items():
        t.add_row(name, str(v["recordings"]), str(v["subjects"]), f"{v['hours']:g}")
    con.print(t)
    if s["phenotypes"]:
        t = Table(title="phenotypes")
        t.add_column("column")
        t.add_column("non-missing", justify="right")
        t.add_column("dtype")
        for name, v in s["phenotypes"].items():
            t.add_row(name, str(v["non_missing"]), v["dtype"])
        con.print(t)
    else:
        con.print("phenotypes: none")
    c = s["contract"]
    con.print(f"contract: drop {c['drop_initial_trs']} initial TRs, psc={c['percent_signal_change']}, "
              f"detrend={c['detrend']}, band-pass {c['high_pass_hz']}-{c['low_pass_hz']} Hz, "
              f"target TR {c['target_tr']}, bad parcels: {c['bad_parcels']}; robust scaling fitted on "
              f"{c['scaler_fit'].get('recordings')} training recordings")
    if s["recordings_with_missing_parcels"]:
        con.print(f"{s['recordings_with_missing_parcels']} recording(s) have missing parcels (read as 0)")
    if s["skipped"]:
        con.print(f"[yellow]{s['skipped']} recording(s) skipped[/yellow]: {s['skipped_reasons']}")


if __name__ == "__main__":
    sys.exit(main())
