"""``brainlm embed``: embeddings of recordings from a pretrained checkpoint, as Parquet."""

from __future__ import annotations

import argparse

from brainlm.commands.arguments import (CHECKPOINT_HELP, add_data_file_options, check_device, check_output_file,
                                       check_positive, data_argument)
from brainlm.data.atomic import write_parquet_atomic
from brainlm.report.latent_figures import draw_latent_figure
from brainlm.tasks.embed import corpus_columns, embed, embed_all
from brainlm.tasks.latent import check_column_name, latent_paths, latent_space, write_latent

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
    p.add_argument("--plot", metavar="COLUMN",
                   help="also map the latent space coloured by COLUMN (an id or phenotype: site, task, age ...) "
                   "next to functional connectivity, with separability scores: writes OUT.latent-COLUMN.json "
                   "and .png beside --out")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="embedding that --plot maps and scores (default: cls)")
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
    if args.plot is not None:
        # A corpus lists its columns: a misspelt --plot fails before minutes of embedding.
        check_column_name(args.plot, corpus_columns(data), str(args.data[0]))
        return _run_with_plot(args, data)
    df = embed(args.checkpoint, data, args.out, per_window=args.per_window, tr=args.tr,
               orientation=args.orientation, key=args.key, transfer_atlas=args.transfer_atlas,
               batch_size=args.batch_size, device=args.device)
    print(f"{len(df)} rows of embeddings written to {args.out}")
    return 0


def _run_with_plot(args: argparse.Namespace, data) -> int:
    """Embeddings, then the latent-space numbers (checked before anything is written, so a bad
    column leaves no file behind), then the Parquet, the JSON and the figure."""
    emb = embed_all(args.checkpoint, data, tr=args.tr, orientation=args.orientation, key=args.key,
                    transfer_atlas=args.transfer_atlas, batch_size=args.batch_size, device=args.device, fc=True)
    result = latent_space(emb, args.plot, pooling=args.pooling, source=str(args.out))
    df = emb.windows if args.per_window else emb.recordings
    write_parquet_atomic(df, args.out)
    json_path, png_path = latent_paths(args.out, args.plot)
    write_latent(result, json_path)
    draw_latent_figure(result, png_path)
    print(f"{len(df)} rows of embeddings written to {args.out}")
    for name, label in (("brainlm", "BrainLM"), ("fc", "FC")):
        sep = result["recordings"][name]["separability"]
        print(f"{label:8s} {result['score']['name']} of {args.plot!r}: {sep['score']:.3f} "
              f"(chance {sep['chance_mean']:.3f}, p={sep['p_value']:.3g})")
    print(f"latent space: {json_path} and {png_path}")
    return 0
