"""``brainlm networks`` and ``brainlm attention``: the command-line side of the attention analyses.

``register(subparsers)`` adds both sub-commands; ``run(args)`` executes the one chosen.
"""

from __future__ import annotations

import argparse

from brainlm.cli import comma_ints

__all__ = ["register", "run"]


def _two(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two levels as A,B, got {text!r}")
    return parts


def register(subparsers) -> list[argparse.ArgumentParser]:
    """Add ``networks`` and ``attention`` to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "networks", help="identify functional networks from attention, against baselines",
        description="Give every parcel a feature vector from the pretrained model (CLS attention, "
        "parcel-by-parcel attention, token embeddings) and classify parcels into known networks "
        "(Yeo-7) by leave-one-parcel-out kNN and logistic regression, and cluster them (k-means); "
        "against FC-profile, raw-time-series and coordinate baselines, spectral clustering of FC, "
        "a randomly initialised model, the model on input with parcels shifted in time "
        "independently (co-fluctuation removed) and chance. Writes networks.json, networks.md, parcels.tsv "
        "and figures to --out.")
    p.add_argument("checkpoint", help="a checkpoint folder (RUN/model)")
    p.add_argument("data", nargs="+", help="a prepared corpus, or time-series files/folders on the checkpoint's atlas")
    p.add_argument("--out", required=True, help="output folder (replaced when complete)")
    p.add_argument("--labels", help="TSV/CSV with columns name, network (default: the atlas' networks)")
    p.add_argument("--neighbors", type=int, default=5, metavar="K", help="k of the kNN classifier (default 5)")
    p.add_argument("--max-recordings", type=int, metavar="N", help="use the first N recordings only")
    p.add_argument("--no-untrained-control", action="store_true",
                   help="skip the randomly initialised model of the same architecture")
    p.add_argument("--no-shifted-control", action="store_true",
                   help="skip the pretrained model on input whose parcels are shifted in time "
                   "independently (co-fluctuation removed)")
    _common(p)
    p.add_argument("--tr", type=float, help="TR in seconds for files without a sidecar")
    p.add_argument("--orientation", default="auto", choices=["auto", "time-by-parcel", "parcel-by-time"])
    p.add_argument("--key", help="array name inside .npz/.mat/.h5 files")

    q = subparsers.add_parser(
        "attention", help="group differences in CLS attention per parcel, with brain maps",
        description="Mean CLS attention per parcel per group, the difference map, a Welch-t "
        "permutation test over subjects (or recordings) with Benjamini-Hochberg FDR, a per-network "
        "summary, the same test on FC strength as a baseline, and glass-brain figures.")
    q.add_argument("checkpoint", help="a checkpoint folder (RUN/model)")
    q.add_argument("corpus", help="a prepared corpus with the group column in its manifest")
    q.add_argument("--group-by", required=True, metavar="COLUMN", help="manifest column with the groups")
    q.add_argument("--out", required=True, help="output folder (replaced when complete)")
    q.add_argument("--groups", type=_two, metavar="A,B", help="the two levels to compare (difference B - A)")
    q.add_argument("--unit", default="subject", choices=["subject", "recording"],
                   help="what group labels are permuted over (default: subject)")
    q.add_argument("--layers", type=comma_ints, metavar="I,J", help="encoder layers to average (default: all)")
    q.add_argument("--permutations", type=int, default=5000, help="random labellings (default 5000)")
    q.add_argument("--alpha", type=float, default=0.05, help="FDR level (default 0.05)")
    q.add_argument("--no-fc-baseline", action="store_true", help="skip the FC-strength baseline test")
    _common(q)
    return [p, q]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transfer-atlas", action="store_true",
                   help="allow an atlas other than the checkpoint's (through parcel coordinates)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true", help="write tables only")


def run(args) -> int:
    from brainlm.cli import make_console

    con = make_console()
    if args.command == "networks":
        from brainlm.tasks.networks import identify_networks

        r = identify_networks(args.checkpoint, args.data, args.out, labels=args.labels,
                              transfer_atlas=args.transfer_atlas, n_neighbors=args.neighbors,
                              max_recordings=args.max_recordings,
                              untrained_control=not args.no_untrained_control,
                              shifted_control=not args.no_shifted_control, batch_size=args.batch_size,
                              device=args.device, seed=args.seed, figures=not args.no_figures,
                              tr=args.tr, orientation=args.orientation, key=args.key)
        _print_networks(con, r)
    else:
        from brainlm.tasks.group_attention import group_attention

        r = group_attention(args.checkpoint, args.corpus, args.group_by, args.out, groups=args.groups,
                            unit=args.unit, layers=args.layers, n_permutations=args.permutations,
                            alpha=args.alpha, transfer_atlas=args.transfer_atlas,
                            fc_baseline=not args.no_fc_baseline, batch_size=args.batch_size,
                            device=args.device, seed=args.seed, figures=not args.no_figures)
        _print_groups(con, r)
    con.print(f"results in {args.out} ({r['seconds']} s)")
    return 0


def _print_networks(con, r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"network identification, {r['atlas']}: {r['labelled_parcels']} labelled parcels, "
              f"{len(r['networks'])} networks, {r['recordings']} recordings")
    for col in ("model", "features", "kNN acc", "logreg acc", "k-means ARI", "NMI"):
        t.add_column(col, justify="left" if col in ("model", "features") else "right")
    for m in r["methods"]:
        t.add_row(m["model"], m["features"], f"{m['knn_accuracy']:.3f}", f"{m['logreg_accuracy']:.3f}",
                  f"{m['kmeans_ari']:.3f}", f"{m['kmeans_nmi']:.3f}")
    for k, v in r["spectral"].items():
        t.add_row("spectral", k, "", "", f"{v['ari']:.3f}", f"{v['nmi']:.3f}")
    c = r["chance"]
    t.add_row("chance", "majority / stratified", f"{c['majority_accuracy']:.3f} / {c['stratified_accuracy']:.3f}",
              "", "0", f"{c['nmi_mean']:.3f}")
    con.print(t)


def _print_groups(con, r: dict) -> None:
    from rich.table import Table

    n = ", ".join(f"{r['group_by']}={g}: {v[r['unit'] + 's']}" for g, v in r["n"].items())
    t = Table(title=f"CLS attention by {r['group_by']} ({n} {r['unit']}s); {r['significant']['attention']} "
              f"parcel(s) FDR q < {r['settings']['alpha']}")
    for col in ("network", "parcels", "mean t", "significant", "shift p", "FC-strength mean t"):
        t.add_column(col, justify="left" if col == "network" else "right")
    fc = {x["network"]: x for x in r["networks"].get("fc_strength", [])}
    for x in r["networks"]["attention"]:
        t.add_row(x["network"], str(x["parcels"]), f"{x['mean_t']:+.2f}", str(x["significant_parcels"]),
                  f"{x['shift_p']:.4f}", f"{fc[x['network']]['mean_t']:+.2f}" if x["network"] in fc else "")
    con.print(t)
