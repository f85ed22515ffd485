"""``brainlm demo``: argument parsing only; the steps are :mod:`brainlm.demo`."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from brainlm.demo import DemoSettings, run_demo

__all__ = ["register", "run", "settings_from_args"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("demo", help="the main job end to end on the embedded real data")
    p.add_argument("--out", default="demo-out", help="output folder (default: ./demo-out)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--epochs", type=int, help="pretraining epochs of the small model (default 50; --quick: 2)")
    p.add_argument("--quick", action="store_true",
                   help="every step with much less training (a smoke test of a few minutes)")
    return p


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The command line's options as the demo's settings."""
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    return settings if args.epochs is None else replace(settings, epochs=args.epochs)


def run(args: argparse.Namespace) -> int:
    """Run the demo with the parsed ``demo`` arguments; 0 on success."""
    run_demo(Path(args.out), jobs=args.jobs, settings=settings_from_args(args))
    return 0
