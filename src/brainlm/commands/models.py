"""``brainlm models``: the pretrained checkpoints shipped with the package, with their cards.
``--json`` prints what :func:`brainlm.list_models` returns."""

from __future__ import annotations

import argparse

from brainlm.data.atomic import to_json
from brainlm.checkpoints.shipped import shipped_models
from brainlm.tasks.api import list_models

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``models`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser(
        "models", help="list the pretrained checkpoints shipped with brainlm (usable by name)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of objects (name, path of the checkpoint folder, card)")
    return p


def run(args: argparse.Namespace) -> int:
    """Print every shipped model: name, checkpoint folder and card; 0 on success."""
    if args.json:
        print(to_json(list_models()))
        return 0
    models = shipped_models()
    if not models:
        print("no pretrained checkpoint is shipped with this installation")
        return 0
    for m in models:
        c = m.card
        print(f"{m.name}: {c.get('summary', '')}")
        print(f"  path: {m.path}")
        for key in ("architecture", "trained_on", "scores", "limits"):
            if key in c:
                value = c[key]
                if isinstance(value, dict):
                    value = "; ".join(f"{k} {_plain(v)}" for k, v in value.items())
                elif isinstance(value, list):
                    value = "; ".join(map(str, value))
                print(f"  {key.replace('_', ' ')}: {value}")
        print(f"  card: {m.path.parent / 'MODEL_CARD.md'}")
    return 0


def _plain(value) -> str:
    """A nested card entry on one line (``a: x, b: y``), not a Python repr."""
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}: {v}" for k, v in value.items()) + ")"
    return str(value)
