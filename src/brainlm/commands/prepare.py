"""``brainlm prepare``: build a corpus from parcellated time series or scans.

With ``--like CHECKPOINT`` the cohort is prepared as the checkpoint's pretraining data: the
checkpoint is read here (the commands layer may read checkpoints; the data layer may not) and
its contract and atlas are passed down to :func:`brainlm.data.prepare.prepare_corpus` as a
:class:`~brainlm.data.contract.ReferenceContract`.
"""

from __future__ import annotations

import argparse

from brainlm.commands.arguments import ATLAS_HELP, CHECKPOINT_HELP, atlas_option, comma_floats
from brainlm.data.contract import SCALING_MODES, PreprocessingContract, ReferenceContract
from brainlm.data.prepare import prepare_corpus
from brainlm.data.prepare_settings import (CleaningSettings, ExecutionSettings, PrepareSettings, ReadingSettings,
                                           SplitSettings, StoreLayout)
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import load_pretrained
from brainlm.checkpoints.shipped import resolve_checkpoint
from brainlm.report.console import print_summary

__all__ = ["register", "run", "settings_from_args"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``prepare`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("prepare", help="build a corpus from parcellated time series or scans",
                              description="Read parcellated time series (.npy .npz .csv .tsv .txt .mat .h5 "
                              ".parquet; folders are searched) with --atlas, or scans (4-D NIfTI, GIfTI, "
                              "CIFTI; an fMRIPrep derivatives folder) with --atlas-image; clean and "
                              "resample them, split subjects into train/val/test, fit robust scaling on "
                              "train, and write a corpus.")
    p.add_argument("sources", nargs="+", help="files or folders (a participants.tsv in a folder is used)")
    p.add_argument("--out", required=True, help="corpus folder to create")
    p.add_argument("--atlas", help=ATLAS_HELP + " (with --like, default: the checkpoint's)")
    p.add_argument("--like", metavar="CHECKPOINT",
                   help="prepare the cohort exactly as this checkpoint's pretraining data: its cleaning, "
                   "target TR and scaling mode, and its scaling statistics when the atlas is its own "
                   "(else the cohort's own, recorded in the contract); every recording goes to split "
                   "test unless --splits is given. " + CHECKPOINT_HELP)
    g = p.add_argument_group("scans (4-D NIfTI, GIfTI, CIFTI; fMRIPrep derivatives)")
    g.add_argument("--atlas-image", action="append", metavar="FILE",
                   help="atlas to parcellate scans with: a424 (the original BrainLM checkpoints' "
                   "labels image, packaged; parcels in their order), a NIfTI (3-D labels or 4-D "
                   "probabilistic maps), a .dlabel.nii, or a surface atlas given twice (left and "
                   "right .annot or .label.gii); parcel centres are computed from a file")
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
    g = p.add_argument_group("preprocessing contract (with --like: from the checkpoint)")
    g.add_argument("--target-tr", type=float, help="resample every recording to this TR (seconds, 0.01-100)")
    g.add_argument("--drop-initial", type=int, metavar="N", help="drop the first N frames (default 0)")
    g.add_argument("--psc", action="store_true", help="convert raw BOLD to percent signal change")
    g.add_argument("--no-detrend", action="store_true", help="skip linear detrending")
    g.add_argument("--high-pass", type=float, metavar="HZ")
    g.add_argument("--low-pass", type=float, metavar="HZ")
    g.add_argument("--bad-parcels", choices=["error", "zero"],
                   help="parcels with NaN/Inf or no variance: stop (default), or mark missing (read as 0)")
    g.add_argument("--scaling", choices=list(SCALING_MODES),
                   help="robust scaling: pooled (default: median and IQR pooled over the training split) "
                   "or recording (each recording by its own median and IQR, so raw, percent-change, "
                   "demeaned and z-scored data reach the model alike)")
    g.add_argument("--min-trs", type=int, default=200, help="minimum TRs after preprocessing (a window)")
    g.add_argument("--too-short", default="skip", choices=["skip", "error"])
    g.add_argument("--on-error", default="fail", choices=["fail", "skip"],
                   help="a recording that cannot be read: stop, or skip it and report it")
    g = p.add_argument_group("splits and storage")
    g.add_argument("--splits", type=comma_floats, metavar="TRAIN,VAL,TEST",
                   help="fractions of subjects (default 0.8,0.1,0.1; with --like 0,0,1). With no "
                   "training split the scaling statistics come from the checkpoint (--like, same "
                   "atlas) or are pooled over all recordings (recorded in the contract)")
    g.add_argument("--seed", type=int, default=0, help="split seed")
    g.add_argument("--split-by", default="subject", choices=["subject", "site"])
    g.add_argument("--jobs", type=int, default=1, help="worker processes (-1: all cores)")
    g.add_argument("--chunk-trs", type=int, default=512,
                   help="TRs per stored chunk (512 x 424 parcels is about 0.9 MB, one read per window)")
    g.add_argument("--compression", default="none", choices=["none", "lz4", "zstd"])
    g.add_argument("--overwrite", action="store_true", help="replace an existing corpus")
    g.add_argument("--restart", action="store_true", help="discard an unfinished build instead of resuming")
    g.add_argument("--drop-scale-outliers", action="store_true",
                   help="leave recordings on another scale than the cohort out of the corpus (by default "
                   "training ones are kept, reported, and left out of the scaling statistics, and a "
                   "validation or test one, which the training statistics would scale wrongly, is an error)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def reference_contract(checkpoint: str) -> ReferenceContract:
    """The contract and atlas of a checkpoint (a folder or a shipped model's name), for
    ``--like``; a folder that is not a checkpoint is an error naming it."""
    path = resolve_checkpoint(checkpoint)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise BrainLMInputError("--like expects a checkpoint folder (RUN/model, with config.json, "
                                "model.safetensors and contract.json) or the name of a shipped model",
                                str(checkpoint))
    model = load_pretrained(path)
    return ReferenceContract(contract=model.contract, atlas=model.atlas, name=str(checkpoint), path=str(path))


def _contract(args: argparse.Namespace, like: ReferenceContract | None) -> PreprocessingContract | None:
    """The contract the flags describe; with ``--like``, the checkpoint's with the flags given on
    top (``prepare_corpus`` refuses any that differ from the checkpoint's), or None when none is."""
    flags = {"target_tr": args.target_tr, "drop_initial_trs": args.drop_initial,
             "percent_signal_change": args.psc or None, "detrend": False if args.no_detrend else None,
             "high_pass_hz": args.high_pass, "low_pass_hz": args.low_pass, "bad_parcels": args.bad_parcels,
             "scaling": args.scaling}
    given = {k: v for k, v in flags.items() if v is not None}
    if like is None:
        return PreprocessingContract(**given)
    if not given:
        return None
    return PreprocessingContract.from_dict({**like.contract.cleaning(), "scaling": like.contract.scaling,
                                            **given})


def settings_from_args(args: argparse.Namespace) -> PrepareSettings:
    """The :class:`PrepareSettings` that ``brainlm prepare``'s arguments describe: the one place
    where options become settings (``--like`` reads the checkpoint here)."""
    like = reference_contract(args.like) if args.like else None
    contract = _contract(args, like)
    if args.atlas is None and not args.atlas_image and like is None:
        raise BrainLMInputError("pass --atlas (parcellated time series) or --atlas-image (NIfTI, "
                                "GIfTI or CIFTI scans), or --like CHECKPOINT for files on its atlas")
    options = {k: v for k, v in (("global_signal", args.global_signal),
                                 ("fd_threshold", args.fd_threshold)) if v is not None}
    mesh = args.surface_mesh
    reading = ReadingSettings(
        atlas=atlas_option(args.atlas), atlas_image=args.atlas_image, atlas_labels=args.atlas_labels,
        surface_mesh=mesh[0] if mesh and len(mesh) == 1 else mesh, space=args.space, res=args.res,
        read_volumes=args.read_volumes, tr=args.tr, orientation=args.orientation, key=args.key,
        participants=args.participants, id_column=args.id_column,
        allow_missing_phenotypes=args.allow_missing_phenotypes)
    cleaning = CleaningSettings(
        contract=contract, confounds=args.confounds, confound_options=options, max_censored=args.max_censored,
        min_trs=args.min_trs, too_short=args.too_short, on_error=args.on_error,
        drop_scale_outliers=args.drop_scale_outliers)
    splits = SplitSettings(fractions=args.splits, split_seed=args.seed, split_by=args.split_by)
    execution = ExecutionSettings(
        jobs=args.jobs, dask_scheduler=args.dask_scheduler,
        layout=StoreLayout(chunk_trs=args.chunk_trs, compression=args.compression),
        overwrite=args.overwrite, restart=args.restart, progress=not args.quiet)
    return PrepareSettings(reading=reading, cleaning=cleaning, splits=splits, execution=execution, like=like)


def run(args: argparse.Namespace) -> int:
    """Prepare the corpus and print its summary; 0 on success."""
    settings = settings_from_args(args)
    like = settings.like
    corpus = prepare_corpus(args.sources, args.out, settings)
    print_summary(corpus.summary())
    scaling = corpus.info.get("scaling", {})
    if like is not None:
        print(f"prepared like {args.like}: {scaling.get('mode')} scaling, statistics from the "
              f"{corpus.info['prepared_like']['statistics']}" + (f" ({scaling['note']})" if "note" in scaling else ""))
    elif "note" in scaling:
        print(f"scaling: {scaling['note']}")
    ingestion = corpus.info.get("ingestion")
    if ingestion:
        conf = ingestion["confounds"]
        print(f"scans parcellated with {ingestion['atlas_image']['masker']}; confounds: "
              f"{conf['strategy']}" + (f" ({conf['loader']['function']})" if "loader" in conf else "")
              + f"; {ingestion['censored_volumes']} volume(s) censored, "
              f"{ingestion['interpolated_volumes']} interpolated, {ingestion['trimmed_volumes']} "
              "trimmed; per scan: ingestion.parquet")
    return 0
