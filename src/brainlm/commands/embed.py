"""``brainlm embed``: embeddings of recordings from a pretrained checkpoint, as Parquet.

``--out NAME.parquet`` writes one file. Any other ``--out`` is a folder: the sharded, resumable
Parquet dataset of a corpus (:mod:`brainlm.tasks.embed_bank`), which ``--shard K/N`` splits
across processes and ``--jobs`` across local worker processes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq

from brainlm.commands.arguments import (CHECKPOINT_HELP, add_data_file_options, check_device, check_output_file,
                                       check_positive, data_argument)
from brainlm.data.atomic import write_parquet_atomic
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.shipped import resolve_checkpoint
from brainlm.report.latent_figures import draw_latent_figure
from brainlm.tasks.embed import EMBEDDING_PREFIXES, corpus_columns, embed, embed_all
from brainlm.tasks.embed_bank import DEFAULT_SHARD_SIZE, DatasetSettings, embed_dataset, parse_shard
from brainlm.tasks.latent import check_column_name, latent_paths, latent_space, write_latent
from brainlm.tasks.model_input import is_corpus

__all__ = ["register", "run"]

#: ``--out`` names ending so are one Parquet file; any other name is a dataset folder.
FILE_SUFFIXES = (".parquet", ".pq")


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``embed`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("embed", help="embeddings of recordings from a pretrained checkpoint")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("data", nargs="+", help="a corpus, or time-series files/folders (on the checkpoint's "
                   "atlas, or on --atlas)")
    p.add_argument("--out", required=True,
                   help="NAME.parquet: one Parquet file; any other name: a folder holding a sharded, "
                   "resumable Parquet dataset of a corpus (run the same command again to resume; "
                   "docs/scale.md)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (only embeddings that brainlm wrote)")
    p.add_argument("--per-window", action="store_true", help="one row per window instead of per recording")
    add_data_file_options(p)
    p.add_argument("--transfer-atlas", action="store_true",
                   help="allow an atlas other than the checkpoint's (through parcel coordinates)")
    p.add_argument("--plot", metavar="COLUMN",
                   help="also map the latent space coloured by COLUMN (an id or phenotype: site, task, age ...) "
                   "next to functional connectivity, with separability scores: writes OUT.latent-COLUMN.json "
                   "and .png beside --out (one-file --out only)")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="embedding that --plot maps and scores (default: cls)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true",
                   help="the encoder's forward passes: 32-true (default: the same embeddings on every "
                   "machine), bf16-mixed (about twice as fast for 13m and wider where bfloat16 is native; "
                   "values within about 2%%), or auto")
    g = p.add_argument_group("dataset folder (--out without .parquet)")
    g.add_argument("--shard-size", type=int, metavar="R",
                   help=f"recordings per shard file (default {DEFAULT_SHARD_SIZE})")
    g.add_argument("--shard", metavar="K/N",
                   help="compute only the shards i with i %% N == K (one of N processes, e.g. a SLURM array "
                   "task); the last to finish, or a run without --shard, completes the dataset")
    g.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="worker processes on this machine, each loading the model once (default 1)")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def run(args: argparse.Namespace) -> int:
    """Write the embeddings to ``--out`` and say how many rows; 0 on success."""
    # Checked before the model is loaded and the data read: an error here costs nothing.
    check_positive(args.batch_size, "--batch-size")
    check_device(args.device)
    if not Path(args.out).name.endswith(FILE_SUFFIXES):
        return _run_dataset(args)
    for option, given in (("--shard", args.shard is not None), ("--shard-size", args.shard_size is not None),
                          ("--jobs", args.jobs != 1)):
        if given:
            raise BrainLMInputError(f"{option} is for a dataset folder; --out {args.out} names one Parquet "
                                    "file (give a folder name, without .parquet, for a sharded dataset)")
    sources = [resolve_checkpoint(args.checkpoint), *args.data]
    check_output_file(args.out, overwrite=args.overwrite, sources=sources, replaceable=_is_embeddings_file)
    data = data_argument(args.data, args)
    if args.plot is not None:
        # A corpus lists its columns: a misspelt --plot fails before minutes of embedding.
        check_column_name(args.plot, corpus_columns(data), str(args.data[0]))
        return _run_with_plot(args, data)
    df = embed(args.checkpoint, data, args.out, per_window=args.per_window, tr=args.tr,
               orientation=args.orientation, key=args.key, transfer_atlas=args.transfer_atlas,
               batch_size=args.batch_size, device=args.device, precision=args.precision)
    print(f"{len(df)} rows of embeddings written to {args.out}")
    return 0


def _is_embeddings_file(path: Path) -> bool:
    """Whether ``path`` is a Parquet table of brainlm embeddings (recording ids and embedding
    columns): the only kind of file ``--overwrite`` replaces."""
    try:
        names = pq.read_schema(path).names
    except Exception:  # noqa: BLE001 - not Parquet, unreadable: not ours
        return False
    return "recording_id" in names and any(n.startswith(EMBEDDING_PREFIXES) for n in names)


def _run_dataset(args: argparse.Namespace) -> int:
    """``--out`` is a folder: the sharded dataset of one corpus (see :mod:`brainlm.tasks.embed_bank`)."""
    if args.plot is not None:
        raise BrainLMInputError("--plot needs the embeddings in one file: give --out NAME.parquet "
                                "(or map a finished dataset from brainlm.tasks.embed.read_embeddings)")
    if not is_corpus([Path(d) for d in args.data]):
        raise BrainLMInputError("a dataset folder (--out without .parquet) is made from one prepared corpus; "
                                "prepare the files first (brainlm prepare ... --like CHECKPOINT), or give "
                                "--out NAME.parquet for one file", str(args.data[0]))
    data_argument(args.data, args)  # --atlas, if given, must name the corpus' atlas
    check_positive(args.jobs, "--jobs")
    if args.shard_size is not None:
        check_positive(args.shard_size, "--shard-size")
    shard = parse_shard(args.shard) if args.shard is not None else (0, 1)
    settings = DatasetSettings(per_window=args.per_window, transfer_atlas=args.transfer_atlas,
                               batch_size=args.batch_size, shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
                               precision=args.precision)
    result = embed_dataset(args.checkpoint, args.data[0], args.out, settings=settings, shard=shard,
                           jobs=args.jobs, device=args.device, overwrite=args.overwrite,
                           progress=not args.quiet)
    share = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(f"{result.computed} shards computed{share}, {result.found} found done, "
          f"{result.recordings} recordings and {result.windows} windows embedded in {result.seconds:.1f} s")
    if result.complete:
        print(f"{result.rows} rows of embeddings in {result.shards} shards: {args.out} is complete")
    else:
        print(f"{len(result.missing)} of {result.shards} shards still missing (other processes' share); "
              f"the last process to finish, or this command without --shard, completes {args.out}")
    return 0


def _run_with_plot(args: argparse.Namespace, data) -> int:
    """Embeddings, then the latent-space numbers (checked before anything is written, so a bad
    column leaves no file behind), then the Parquet, the JSON and the figure."""
    emb = embed_all(args.checkpoint, data, tr=args.tr, orientation=args.orientation, key=args.key,
                    transfer_atlas=args.transfer_atlas, batch_size=args.batch_size, device=args.device, fc=True,
                    precision=args.precision)
    result = latent_space(emb, args.plot, pooling=args.pooling, source=str(args.out))
    df = emb.windows if args.per_window else emb.recordings
    write_parquet_atomic(df, args.out)
    json_path, png_path = latent_paths(args.out, args.plot)
    write_latent(result, json_path)
    draw_latent_figure(result, png_path)
    print(f"{len(df)} rows of embeddings written to {args.out}")
    for name, label in (("brainlm", "BrainLM"), ("fc", "FC")):
        sep = result.separability(name)
        print(f"{label:8s} {result.score['name']} of {args.plot!r}: {sep['score']:.3f} "
              f"(chance {sep['chance_mean']:.3f}, p={sep['p_value']:.3g})")
    print(f"latent space: {json_path} and {png_path}")
    return 0
