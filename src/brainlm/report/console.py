"""What every command prints through: one rich console, and the corpus summary as tables.

Defined here, below the commands, so the command modules and the demo share one definition
without importing the dispatcher.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

__all__ = ["make_console", "print_summary"]


def make_console() -> Console:
    """The rich console every command prints through. Off a terminal (a log file, CI) long lines
    are left whole rather than hard-wrapped at 80 columns, so tables and numbers stay on one line."""
    con = Console()
    if not con.is_terminal:
        con.soft_wrap = True
    return con


def print_summary(s: dict) -> None:
    """A corpus summary (:meth:`brainlm.data.corpus.Corpus.summary`) as rich tables: recordings,
    subjects, hours and TRs, the atlas, the splits, the phenotypes and the preprocessing contract."""
    con = make_console()
    n = s["n_trs"]
    con.print(f"[bold]{s['path']}[/bold]: {s['recordings']} recordings, {s['subjects']} subjects, "
              f"{s['hours']} h at TR {s['tr_s']} s (source TRs {s['source_trs_s']}); TRs per "
              f"recording min {n['min']} / median {n['median']:g} / max {n['max']}")
    a = s["atlas"]
    con.print(f"atlas {a['name']}: {a['parcels']} parcels ({a['space']}); networks: "
              f"{', '.join(a['networks']) or 'none'}")
    t = Table(title=f"splits by {s['split_by']} (seed {s['split_seed']})")
    for col in ("split", "recordings", "subjects", "hours"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for name, v in s["splits"].items():
        t.add_row(name, str(v["recordings"]), str(v["subjects"]), f"{v['hours']:g}")
    con.print(t)
    if s["phenotypes"]:
        t = Table(title="phenotypes")
        t.add_column("column")
        t.add_column("non-missing", justify="right")
        t.add_column("dtype")
        for name, v in s["phenotypes"].items():
            t.add_row(name, str(v["non_missing"]), v["dtype"])
        con.print(t)
    else:
        con.print("phenotypes: none")
    c = s["contract"]
    con.print(f"contract: drop {c['drop_initial_trs']} initial TRs, psc={c['percent_signal_change']}, "
              f"detrend={c['detrend']}, band-pass {c['high_pass_hz']}-{c['low_pass_hz']} Hz, "
              f"target TR {c['target_tr']}, bad parcels: {c['bad_parcels']}; robust scaling fitted on "
              f"{c['scaler_fit'].get('recordings')} training recordings")
    if s["recordings_with_missing_parcels"]:
        con.print(f"{s['recordings_with_missing_parcels']} recording(s) have missing parcels (read as 0)")
    if s["skipped"]:
        con.print(f"[yellow]{s['skipped']} recording(s) skipped[/yellow]: {s['skipped_reasons']}")
