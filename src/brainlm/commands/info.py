"""``brainlm info``: describe a corpus."""

from __future__ import annotations

import argparse

from brainlm.data.atomic import to_json
from brainlm.data.corpus import Corpus
from brainlm.report.console import print_summary

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``info`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("info", help="describe a corpus")
    p.add_argument("corpus")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the corpus summary as tables (or JSON with ``--json``); 0 on success."""
    summary = Corpus(args.corpus).summary()
    if args.json:
        print(to_json(summary))
    else:
        print_summary(summary)
    return 0
