"""``brainlm embed``: embeddings of recordings from a pretrained checkpoint, as Parquet."""

from __future__ import annotations

import argparse

from brainlm.commands.arguments import (CHECKPOINT_HELP, add_data_file_options, check_device, check_output_file,
                                       check_positive, data_argument)
from brainlm.tasks.embed import embed

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``embed`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("embed", help="embeddings of recordings from a pretrained checkpoint")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("data", nargs="+", help="a corpus, or time-series files/folders (on the checkpoint's "
                   "atlas, or on --atlas)")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--per-window", action="store_true", help="one row per window instead of per recording")
    add_data_file_options(p)
    p.add_argument("--transfer-atlas", action="store_true",
                   help="allow an atlas other than the checkpoint's (through parcel coordinates)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    return p


def run(args: argparse.Namespace) -> int:
    """Write the embeddings to ``--out`` and say how many rows; 0 on success."""
    # Checked before the model is loaded and the data read: an error here costs nothing.
    check_output_file(args.out)
    check_positive(args.batch_size, "--batch-size")
    check_device(args.device)
    data = data_argument(args.data, args)
    df = embed(args.checkpoint, data, args.out, per_window=args.per_window, tr=args.tr,
               orientation=args.orientation, key=args.key, transfer_atlas=args.transfer_atlas,
               batch_size=args.batch_size, device=args.device)
    print(f"{len(df)} rows of embeddings written to {args.out}")
    return 0
