"""``brainlm import-upstream SRC --out CHECKPOINT``: an original BrainLM checkpoint as one of ours,
assuming one of upstream's input normalizations (``--normalization``), optionally with its
input gain calibrated on a corpus (``--calibrate CORPUS``) or set (``--input-gain``), relative
to the variant's own constant gain."""

from __future__ import annotations

import argparse

from brainlm.errors import BrainLMInputError
from brainlm.model.upstream_import import DEFAULT_NORMALIZATION, NORMALIZATIONS, UKB_TR, load_upstream, save_imported
from brainlm.tasks.calibration import apply_calibration, calibrate_input_gain

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``import-upstream`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser(
        "import-upstream", help="convert an original BrainLM checkpoint (vandijklab/brainlm) locally",
        description="Convert a checkpoint folder downloaded from the Hugging Face hub "
        "(vandijklab/brainlm: old_13M, vitmae_111M or vitmae_650M; config.json plus model.safetensors "
        "or pytorch_model.bin) into a brainlm checkpoint on the A424 atlas. The weights stay under "
        "the hub's licence terms: keep the converted folder for your own use (docs/upstream.md).")
    p.add_argument("src", help="the downloaded checkpoint folder")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
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
    model, report = load_upstream(args.src, target_tr=args.target_tr, normalization=args.normalization)
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
        result = calibrate_input_gain(model, args.calibrate, offsets=offsets, recordings=args.calibrate_recordings)
        apply_calibration(model, result)
        print(f"  input gain {result['calibrated_gain']:.3g}"
              + (f" (stored {result['input_gain']:.4g} with the variant's)" if result["variant_gain"] != 1.0 else "")
              + f", offset {result['input_offset']:g} (calibrated on "
              f"{result['windows']} windows of {len(result['recordings'])} recordings, mask "
              f"{result['mask_ratio']:g}): masked MSE {result['mse']:.4f}, R² {result['r2']:.3f}; "
              f"gain 1: MSE {result['gain_1_mse']:.4f}; predicting the median: MSE {result['zero_mse']:.4f}")
        if result["at_grid_edge"]:
            print("  warning: the best gain is at the end of the grid tried (a bound, not a minimum); "
                  "the model may only be predicting the median")
    save_imported(model, report, args.out)
    return 0
