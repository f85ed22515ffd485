"""``brainlm import-upstream SRC --out CHECKPOINT``: an original BrainLM checkpoint as one of ours,
assuming one of upstream's input normalizations (``--normalization``), optionally with its
input gain calibrated on a corpus (``--calibrate CORPUS``) or set (``--input-gain``), relative
to the variant's own constant gain.

SRC is a downloaded folder, or a Hugging Face Hub id (``vandijklab/brainlm --subfolder old_13M``,
or ``hf://vandijklab/brainlm/old_13M``; ``--revision`` for a branch, tag or commit), fetched
with ``huggingface_hub`` (its cache, ``HF_HOME`` and ``HF_HUB_OFFLINE`` apply). Without
``--out`` a Hub checkpoint is converted into brainlm's conversion cache, once per revision,
and is then usable as ``hf://ORG/REPO/SUBFOLDER`` wherever a checkpoint is asked for. The
weights' licence is printed and recorded in the checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.hub import is_hub_id
from brainlm.checkpoints.upstream_import import (DEFAULT_NORMALIZATION, NORMALIZATIONS, UKB_TR, fetch_upstream,
                                           import_from_hub, load_upstream, record_hub, save_imported)
from brainlm.tasks.calibration import CalibrationSettings, apply_calibration, calibrate_input_gain

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``import-upstream`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser(
        "import-upstream", help="convert an original BrainLM checkpoint (vandijklab/brainlm) locally",
        description="Convert an original BrainLM checkpoint (Hugging Face vandijklab/brainlm: old_13M, "
        "vitmae_111M or vitmae_650M; config.json plus model.safetensors or pytorch_model.bin), a "
        "downloaded folder or a Hub id, into a brainlm checkpoint on the A424 atlas. The weights stay "
        "under the Hub's licence terms (printed, and recorded in the checkpoint): keep the converted "
        "folder for your own use (docs/upstream.md).")
    p.add_argument("src", help="a downloaded checkpoint folder, or a Hub id: ORG/REPO (with --subfolder) or "
                   "hf://ORG/REPO[@REVISION]/SUBFOLDER, fetched through the Hugging Face cache")
    p.add_argument("--subfolder", default=None, help="folder of the Hub repository (old_13M, vitmae_111M, "
                   "vitmae_650M for vandijklab/brainlm)")
    p.add_argument("--revision", default=None, help="branch, tag or commit of the Hub repository (default main)")
    p.add_argument("--out", default=None, help="checkpoint folder to write (required for a local folder; for "
                   "a Hub id, default: brainlm's conversion cache, reused by hf:// ids)")
    p.add_argument("--target-tr", type=float, default=UKB_TR,
                   help=f"TR (s) the checkpoint's contract resamples to (default {UKB_TR}, UK Biobank's)")
    g = p.add_argument_group("input scaling (upstream's statistics were never released)")
    g.add_argument("--normalization", default=DEFAULT_NORMALIZATION, choices=list(NORMALIZATIONS), metavar="NAME",
                   help="which of upstream's input normalizations the weights saw (its data-conversion "
                   "columns, kebab-case): " + ", ".join(NORMALIZATIONS) + f" (default {DEFAULT_NORMALIZATION}: "
                   "per-parcel median/IQR pooled over the corpus' training split; see docs/upstream.md)")
    g.add_argument("--input-gain", type=float, default=None, metavar="G",
                   help="multiply the variant's input by G (default 1, or the calibrated gain); the "
                   "stored gain is G times the variant's own (e.g. 1/41.44047)")
    g.add_argument("--calibrate", default=None, metavar="CORPUS",
                   help="choose the input gain that minimises masked-reconstruction error on a few "
                   "recordings of CORPUS (prepared with the checkpoint's cleaning) and store it")
    g.add_argument("--calibrate-recordings", type=int, default=4, metavar="N",
                   help="training recordings used by --calibrate (default 4)")
    g.add_argument("--calibrate-offset", action="store_true",
                   help="also try offsets -0.5..0.5 (default: gain only)")
    return p


def run(args: argparse.Namespace) -> int:
    """Convert, say what was mapped and what was left out; 0 on success."""
    if args.calibrate is not None and args.input_gain is not None:
        raise BrainLMInputError("pass --calibrate or --input-gain, not both")
    hub = not Path(args.src).exists() and (is_hub_id(args.src) or args.subfolder is not None
                                          or args.revision is not None or args.src.count("/") == 1)
    if not hub:
        if args.out is None:
            raise BrainLMInputError("--out is required for a local folder (the checkpoint folder to write)",
                                    args.src)
        if args.subfolder or args.revision:
            raise BrainLMInputError("--subfolder and --revision apply to a Hub id (ORG/REPO); this is a "
                                    "local folder: name the subfolder in the path", args.src)
    elif args.out is None:
        return _into_cache(args)
    snapshot = fetch_upstream(args.src, subfolder=args.subfolder, revision=args.revision) if hub else None
    if snapshot is not None:
        print(f"{snapshot.hub_id} at commit {snapshot.commit[:12]}")
        print(f"  licence of the weights ({snapshot.hub_id.repo_id}): {snapshot.licence_text}")
    model, report = load_upstream(snapshot.path if hub else args.src, target_tr=args.target_tr,
                                  normalization=args.normalization)
    if snapshot is not None:
        record_hub(report, snapshot)
    variant = NORMALIZATIONS[report.normalization]
    print(f"{report.family}: {report.n_tensors} tensors, {report.parameters:,} parameters from "
          f"{report.source} -> {args.out}")
    print(f"  normalization {report.normalization} ({variant.column}: {variant.formula}); brainlm applies "
          f"{variant.normalization}, {variant.scaling} statistics"
          + (f", gain {variant.gain:.8g}" if variant.gain != 1.0 else "")
          + ("" if model.contract.detrend else ", no detrend"))
    for name, why in report.ignored.items():
        print(f"  not used: {name} ({why})")
    for note in report.notes:
        print(f"  note: {note}")
    if args.input_gain is not None:
        if not args.input_gain > 0:
            raise BrainLMInputError(f"--input-gain {args.input_gain}; expected a number > 0")
        gain = variant.gain * float(args.input_gain)
        model.contract.scaler_fit = {**model.contract.scaler_fit, "input_gain": gain}
        print(f"  input gain {args.input_gain:g} (set)" + (f": {gain:.6g} with the variant's" if variant.gain != 1.0 else ""))
    if args.calibrate is not None:
        offsets = (-0.5, -0.25, 0.0, 0.25, 0.5) if args.calibrate_offset else (0.0,)
        r = calibrate_input_gain(model, args.calibrate,
                                 CalibrationSettings(offsets=offsets, recordings=args.calibrate_recordings))
        apply_calibration(model, r)
        print(f"  input gain {r.calibrated_gain:.3g}"
              + (f" (stored {r.input_gain:.4g} with the variant's)" if r.variant_gain != 1.0 else "")
              + f", offset {r.input_offset:g} (calibrated on {r.windows} windows of {len(r.recordings)} "
              f"recordings, mask {r.mask_ratio:g}): masked MSE {r.mse:.4f}, R² {r.r2:.3f}; "
              f"gain 1: MSE {r.gain_1_mse:.4f}; predicting the median: MSE {r.zero_mse:.4f}")
        if r.at_grid_edge:
            print("  warning: the best gain is at the end of the grid tried (a bound, not a minimum); "
                  "the model may only be predicting the median")
    save_imported(model, report, args.out)
    return 0


def _into_cache(args: argparse.Namespace) -> int:
    """A Hub checkpoint converted into (or found in) the conversion cache; 0 on success."""
    if args.calibrate is not None or args.input_gain is not None:
        raise BrainLMInputError("--calibrate and --input-gain change the converted model: pass --out FOLDER "
                                "to write it there (the cache holds conversions with fixed options only)")
    done = import_from_hub(args.src, subfolder=args.subfolder, revision=args.revision,
                           target_tr=args.target_tr, normalization=args.normalization)
    snap, report = done.snapshot, done.report
    print(f"{snap.hub_id} at commit {snap.commit[:12]}")
    print(f"  {done.licence_line}")
    if report is None:
        print(f"  already converted (cached for this revision): {done.path}")
    else:
        print(f"  {report.family}: {report.n_tensors} tensors, {report.parameters:,} parameters -> {done.path}")
        for name, why in report.ignored.items():
            print(f"  not used: {name} ({why})")
        for note in report.notes:
            print(f"  note: {note}")
    hub_id = snap.hub_id
    use = str(hub_id) if (args.target_tr, args.normalization) == (UKB_TR, DEFAULT_NORMALIZATION) else str(done.path)
    print(f"  use it as a checkpoint: {use}")
    return 0
