"""``brainlm report RUN_DIR [--out FILE]``: render the HTML report of a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainlm.commands.arguments import check_output_file
from brainlm.errors import BrainLMInputError
from brainlm.report.html import is_report, render_report

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``report`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser(
        "report", help="render the HTML report of a run folder from its saved results",
        description="Draw every figure again from the saved results of RUN_DIR (written by "
        "`brainlm demo --out RUN_DIR`) and write one self-contained HTML file with the figures "
        "embedded.")
    p.add_argument("run_dir", help="a run folder (with summary.json and results/)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html, which is "
                   "replaced when it is an earlier report)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out report")
    return p


def run(args: argparse.Namespace) -> int:
    """Render the report and print its path; 0 on success."""
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise BrainLMInputError("not a run folder (no such folder); expected the folder of `brainlm demo "
                                "--out DIR` or one holding results/", str(run_dir))
    default = run_dir / "report.html"
    if args.out is None or Path(args.out).resolve() == default.resolve():
        # The run folder's own report: drawn again in place, never over a file it did not write.
        check_output_file(default, "--out", overwrite=True, replaceable=is_report)
        out = default
    else:
        # Anywhere else, outside the results it is drawn from (which a report must not replace).
        out = check_output_file(args.out, "--out", overwrite=args.overwrite, sources=[run_dir],
                                replaceable=is_report)
    path = render_report(run_dir, out)
    print(f"report: {path.resolve()}")
    return 0
