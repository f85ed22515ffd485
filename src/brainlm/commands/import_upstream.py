"""``brainlm import-upstream SRC --out CHECKPOINT``: an original BrainLM checkpoint as one of ours."""

from __future__ import annotations

import argparse

from brainlm.model.upstream_import import UKB_TR, import_upstream

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
    return p


def run(args: argparse.Namespace) -> int:
    """Convert, say what was mapped and what was left out; 0 on success."""
    report = import_upstream(args.src, args.out, target_tr=args.target_tr)
    print(f"{report.family}: {report.n_tensors} tensors, {report.parameters:,} parameters from "
          f"{report.source} -> {args.out}")
    for name, why in report.ignored.items():
        print(f"  not used: {name} ({why})")
    for note in report.notes:
        print(f"  note: {note}")
    return 0
