"""``brainlm networks``: identify functional networks from attention, against baselines.

Runs :func:`brainlm.tasks.networks.identify_networks` (which writes ``networks.json``,
``networks.md`` and ``parcels.tsv``), then draws the PNGs into the same folder from those
saved files (:func:`brainlm.report.attention_figures.draw_network_folder`) unless
``--no-figures``.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from brainlm.commands.arguments import (CHECKPOINT_HELP, add_attention_options, add_data_file_options, check_device,
                                       check_positive, data_argument)
from brainlm.data.atomic import check_output_folder
from brainlm.report.attention_figures import draw_network_folder
from brainlm.report.console import make_console
from brainlm.tasks.networks import NetworksResult, NetworksSettings, identify_networks

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``networks`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser(
        "networks", help="identify functional networks from attention, against baselines",
        description="Give every parcel a feature vector from the pretrained model (CLS attention, "
        "parcel-by-parcel attention, token embeddings) and classify parcels into known networks "
        "(Yeo-7) by leave-one-parcel-out kNN and logistic regression, and cluster them (k-means); "
        "against FC-profile, raw-time-series and coordinate baselines, spectral clustering of FC, "
        "a randomly initialised model, the model on input with parcels shifted in time "
        "independently (co-fluctuation removed) and chance. Writes networks.json, networks.md, parcels.tsv "
        "and figures to --out.")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("data", nargs="+", help="a prepared corpus, or time-series files/folders (on the "
                   "checkpoint's atlas, or on --atlas)")
    p.add_argument("--out", required=True, help="output folder (a new one, or with --overwrite one "
                   "that brainlm wrote, replaced when complete)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder written by brainlm")
    p.add_argument("--labels", help="TSV/CSV with columns name, network (default: the atlas' networks)")
    p.add_argument("--neighbors", type=int, default=5, metavar="K", help="k of the kNN classifier (default 5)")
    p.add_argument("--max-recordings", type=int, metavar="N", help="use the first N recordings only")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="feature sets scored at once, one process each (-1: all cores); the "
                   "leave-one-parcel-out fits dominate the run time, the numbers do not change")
    p.add_argument("--no-untrained-control", action="store_true",
                   help="skip the randomly initialised model of the same architecture")
    p.add_argument("--no-shifted-control", action="store_true",
                   help="skip the pretrained model on input whose parcels are shifted in time "
                   "independently (co-fluctuation removed)")
    add_attention_options(p)
    add_data_file_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Identify the networks, draw the figures, print the methods table; 0 on success."""
    con = make_console()
    # Before any work: an existing folder needs --overwrite, and an input is never replaced.
    check_output_folder(args.out, overwrite=args.overwrite,
                        sources=[args.checkpoint, *args.data, *([args.labels] if args.labels else [])])
    check_positive(args.batch_size, "--batch-size")
    check_positive(args.neighbors, "--neighbors")
    check_device(args.device)
    data = data_argument(args.data, args)
    r = identify_networks(args.checkpoint, data, args.out, settings_from_args(args))
    if not args.no_figures:
        draw_network_folder(args.out)
    _print_networks(con, r)
    con.print(f"results in {args.out} ({r.seconds} s)")
    return 0


def settings_from_args(args: argparse.Namespace) -> NetworksSettings:
    """The command line's options as the task's settings (the one place they are mapped)."""
    return NetworksSettings(labels=args.labels, transfer_atlas=args.transfer_atlas, n_neighbors=args.neighbors,
                            max_recordings=args.max_recordings, untrained_control=not args.no_untrained_control,
                            shifted_control=not args.no_shifted_control, batch_size=args.batch_size,
                            device=args.device, seed=args.seed, tr=args.tr, orientation=args.orientation,
                            key=args.key, jobs=args.jobs)


def _print_networks(con: Console, r: NetworksResult) -> None:
    t = Table(title=f"network identification, {r.atlas}: {r.labelled_parcels} labelled parcels, "
              f"{len(r.networks)} networks, {r.recordings} recordings")
    for col in ("model", "features", "kNN acc", "logreg acc", "k-means ARI", "NMI"):
        t.add_column(col, justify="left" if col in ("model", "features") else "right")
    for m in r.methods:
        t.add_row(m.model, m.features, f"{m.knn_accuracy:.3f}", f"{m.logreg_accuracy:.3f}",
                  f"{m.kmeans_ari:.3f}", f"{m.kmeans_nmi:.3f}")
    for k, v in r.spectral.items():
        t.add_row("spectral", k, "", "", f"{v.ari:.3f}", f"{v.nmi:.3f}")
    c = r.chance
    t.add_row("chance", "majority / stratified", f"{c.majority_accuracy:.3f} / {c.stratified_accuracy:.3f}",
              "", "0", f"{c.nmi_mean:.3f}")
    con.print(t)
