"""The building blocks of the HTML report: sections, tables, figures and cell formatting.

Shared by :mod:`brainlm.report.sections` (which fills them from saved results) and
:mod:`brainlm.report.html` (which renders them), so neither imports the other back.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


__all__ = ["Figure", "Section", "Table", "embed_png", "escape", "fmt", "row"]


@dataclass
class Table:
    """One table of a section: ``rows`` are ``{"cells": [str, ...], "highlight": bool}``."""

    caption: str
    columns: list[str]
    rows: list[dict]  # {"cells": [...], "highlight": bool}
    note: str = ""


@dataclass
class Figure:
    """One embedded figure: ``data`` is the PNG as base64 text."""

    name: str
    caption: str
    data: str  # base64 PNG


@dataclass
class Section:
    """One section of the page (one task), with its text, verdict, tables and figures."""

    anchor: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    verdict: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    pre: str = ""


def fmt(v, digits: int = 3) -> str:
    """A number for a table cell: fixed digits, ``n/a`` for missing. A non-zero value too small
    for the fixed digits (a permutation p of 1/2001) keeps two significant digits instead of
    reading as 0."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (float, np.floating)):
        if v != 0 and abs(v) < 0.5 * 10 ** -digits:
            return f"{v:.2g}"
        return f"{v:.{digits}f}"
    return str(v)


def row(cells, highlight: bool = False) -> dict:
    """A table row of formatted cells (:func:`fmt`)."""
    return {"cells": [fmt(c) for c in cells], "highlight": highlight}


def embed_png(path: Path, name: str, caption: str) -> Figure:
    """A PNG file as an embedded :class:`Figure`."""
    return Figure(name, caption, base64.b64encode(Path(path).read_bytes()).decode("ascii"))


def escape(text) -> str:
    """``text`` safe to put in HTML."""
    return html.escape(str(text))
