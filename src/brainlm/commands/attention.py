"""``brainlm attention``: group differences in CLS attention per parcel, with brain maps.

Runs :func:`brainlm.tasks.group_attention.group_attention` (which writes
``group_attention.json``, ``group_attention.md``, ``parcels.tsv`` and ``recordings.parquet``),
then draws the brain maps into the same folder from those saved files
(:func:`brainlm.report.attention_figures.draw_group_folder`) unless ``--no-figures``. (The
attention extraction itself is :mod:`brainlm.tasks.attention`; ``brainlm networks`` uses it too.)
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from brainlm.commands.arguments import CHECKPOINT_HELP, add_attention_options, check_device, check_positive, comma_ints, two_levels
from brainlm.data.atomic import check_output_folder
from brainlm.report.attention_figures import draw_group_folder
from brainlm.report.console import make_console
from brainlm.tasks.group_attention import GroupAttentionResult, GroupAttentionSettings, group_attention

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``attention`` to the ``brainlm`` sub-parsers."""
    q = subparsers.add_parser(
        "attention", help="group differences in CLS attention per parcel, with brain maps",
        description="Mean CLS attention per parcel per group, the difference map, a Welch-t "
        "permutation test over subjects (or recordings) with Benjamini-Hochberg FDR, a per-network "
        "summary, the same test on FC strength as a baseline, and glass-brain figures.")
    q.add_argument("checkpoint", help=CHECKPOINT_HELP)
    q.add_argument("corpus", help="a prepared corpus with the group column in its manifest")
    q.add_argument("--group-by", required=True, metavar="COLUMN", help="manifest column with the groups")
    q.add_argument("--out", required=True, help="output folder (a new one, or with --overwrite one "
                   "that brainlm wrote, replaced when complete)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out folder written by brainlm")
    q.add_argument("--groups", type=two_levels, metavar="A,B", help="the two levels to compare (difference B - A)")
    q.add_argument("--unit", default="subject", choices=["subject", "recording"],
                   help="what group labels are permuted over (default: subject)")
    q.add_argument("--layers", type=comma_ints, metavar="I,J", help="encoder layers to average (default: all)")
    q.add_argument("--permutations", type=int, default=5000, help="random labellings (default 5000)")
    q.add_argument("--alpha", type=float, default=0.05, help="FDR level (default 0.05)")
    q.add_argument("--no-fc-baseline", action="store_true", help="skip the FC-strength baseline test")
    add_attention_options(q)
    return q


def run(args: argparse.Namespace) -> int:
    """Compare the groups, draw the brain maps, print the per-network table; 0 on success."""
    con = make_console()
    # Before any work: an existing folder needs --overwrite, and an input is never replaced.
    check_output_folder(args.out, overwrite=args.overwrite, sources=[args.checkpoint, args.corpus])
    check_positive(args.batch_size, "--batch-size")
    check_positive(args.permutations, "--permutations")
    check_device(args.device)
    r = group_attention(args.checkpoint, args.corpus, args.group_by, args.out, settings_from_args(args))
    if not args.no_figures:
        draw_group_folder(args.out)
    _print_groups(con, r)
    con.print(f"results in {args.out} ({r.seconds} s)")
    return 0


def settings_from_args(args: argparse.Namespace) -> GroupAttentionSettings:
    """The command line's options as the task's settings (the one place they are mapped)."""
    return GroupAttentionSettings(groups=args.groups, unit=args.unit, layers=args.layers,
                                  n_permutations=args.permutations, alpha=args.alpha,
                                  transfer_atlas=args.transfer_atlas, fc_baseline=not args.no_fc_baseline,
                                  batch_size=args.batch_size, device=args.device, seed=args.seed)


def _print_groups(con: Console, r: GroupAttentionResult) -> None:
    n = ", ".join(f"{r.group_by}={g}: {v[r.unit + 's']}" for g, v in r.n.items())
    t = Table(title=f"CLS attention by {r.group_by} ({n} {r.unit}s); {r.significant['attention']} "
              f"parcel(s) FDR q < {r.settings['alpha']}")
    for col in ("network", "parcels", "mean t", "significant", "shift p", "FC-strength mean t"):
        t.add_column(col, justify="left" if col == "network" else "right")
    fc = {x.network: x for x in r.networks.get("fc_strength", [])}
    for x in r.networks["attention"]:
        t.add_row(x.network, str(x.parcels), f"{x.mean_t:+.2f}", str(x.significant_parcels),
                  f"{x.shift_p:.4f}", f"{fc[x.network].mean_t:+.2f}" if x.network in fc else "")
    con.print(t)
