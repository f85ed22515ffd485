"""``argparse`` types shared by the command modules, defined once."""

from __future__ import annotations

import argparse

__all__ = ["add_attention_options", "comma_floats", "comma_ints", "comma_names", "two_levels"]


def comma_floats(text: str) -> list[float]:
    """``argparse`` type for options such as ``--ratios 0.2,0.5``."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def comma_ints(text: str) -> list[int]:
    """``argparse`` type for options such as ``--layers 0,3``."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def comma_names(text: str) -> list[str]:
    """``argparse`` type for options such as ``--baselines ar,var``: the non-empty names."""
    return [t.strip() for t in text.split(",") if t.strip()]


def two_levels(text: str) -> list[str]:
    """``argparse`` type for ``--groups A,B``: exactly two non-empty levels."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two levels as A,B, got {text!r}")
    return parts


def add_attention_options(p: argparse.ArgumentParser) -> None:
    """The options ``brainlm networks`` and ``brainlm attention`` share: atlas transfer, batch
    size, device, seed and ``--no-figures``."""
    p.add_argument("--transfer-atlas", action="store_true",
                   help="allow an atlas other than the checkpoint's (through parcel coordinates)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true", help="write tables only")
