"""``brainlm report RUN_DIR [--out FILE]``: render the HTML report of a run folder."""

from __future__ import annotations

import argparse

from brainlm.report.html import render_report

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``report`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser(
        "report", help="render the HTML report of a run folder from its saved results",
        description="Draw every figure again from the saved results of RUN_DIR (written by "
        "`brainlm demo --out RUN_DIR`) and write one self-contained HTML file with the figures "
        "embedded.")
    p.add_argument("run_dir", help="a run folder (with summary.json and results/)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    return p


def run(args: argparse.Namespace) -> int:
    """Render the report and print its path; 0 on success."""
    path = render_report(args.run_dir, args.out)
    print(f"report: {path.resolve()}")
    return 0
