"""The ``brainlm`` command line: one module per command, one registration convention, one dispatch.

Every module in :data:`COMMANDS` has ``register(subparsers)``, which adds its parser (with any
sub-commands beneath it), and ``run(args) -> int``, which executes it. :func:`main` builds the
parser from them in this order, and :func:`dispatch` runs the chosen one.

Bad input ends with one line naming the file and the problem (exit status 2), never a traceback;
Ctrl-C ends with exit status 130.
"""

from __future__ import annotations

import argparse
import signal
import sys

from brainlm import __version__
from brainlm.commands import (attention, demo, embed, evaluate, forecast, import_upstream, info, models,
                              networks, prepare, pretrain, report, simulate)
from brainlm.errors import BrainLMInputError

__all__ = ["COMMANDS", "build_parser", "dispatch", "main"]

#: Sub-command name -> module, in the order ``brainlm --help`` lists them.
COMMANDS = {
    "prepare": prepare, "info": info, "pretrain": pretrain, "embed": embed, "report": report,
    "simulate": simulate, "networks": networks, "attention": attention, "evaluate": evaluate,
    "forecast": forecast, "import-upstream": import_upstream, "models": models, "demo": demo,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``brainlm`` parser with every command of :data:`COMMANDS` registered."""
    parser = argparse.ArgumentParser(
        prog="brainlm", description="BrainLM, a foundation model of parcellated fMRI: prepare data, "
        "pretrain, embed, simulate cohorts, run the demo.")
    parser.add_argument("--version", action="version", version=f"brainlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.register(sub)
    return parser


def dispatch(args: argparse.Namespace) -> int:
    """Run the command named by ``args.command``; its exit status.

    ``BrainLMInputError`` becomes one line ``brainlm CMD: error: ...`` on stderr and status 2;
    an interrupt becomes a hint to re-run and status 130.
    """
    try:
        return COMMANDS[args.command].run(args)
    except BrainLMInputError as e:
        print(f"brainlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"brainlm {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """The ``brainlm`` entry point: parse ``argv`` (default: the process arguments) and dispatch."""
    if argv is None and hasattr(signal, "SIGPIPE"):
        # `brainlm info corpus | head` should end quietly, as other Unix tools do.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return dispatch(build_parser().parse_args(argv))
