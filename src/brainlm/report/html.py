"""``brainlm report RUN_DIR``: one self-contained HTML file from a run folder's saved results.

A run folder (what ``brainlm demo --out DIR`` writes) holds::

    summary.json                        settings, timings, key numbers, versions
    run-tiny/logs/csv/version_0/        the pretraining log (metrics.csv)
    results/reconstruction/             brainlm evaluate recon     (reconstruction.json)
    results/reconstruction_example.npz  one test window: target, prediction, mask [T, P]
    results/prediction/                 brainlm evaluate predict   (prediction.json)
    results/forecasting/                brainlm forecast evaluate  (forecast.json)
    results/networks/                   brainlm networks           (networks.json)
    results/attention/                  brainlm attention          (attention.json)

Every figure is drawn again from those results into ``DIR/figures/`` and embedded in the page
as a PNG data URI, so the HTML file can be mailed or archived alone. Sections whose results are
absent say so instead of failing, so a partial run still gets a report.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainlm.data.atomic import write_text_atomic
from brainlm.errors import BrainLMInputError


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[dict]  # {"cells": [...], "highlight": bool}
    note: str = ""


@dataclass
class Figure:
    name: str
    caption: str
    data: str  # base64 PNG


@dataclass
class Section:
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
    return {"cells": [fmt(c) for c in cells], "highlight": highlight}


def embed_png(path: Path, name: str, caption: str) -> Figure:
    return Figure(name, caption, base64.b64encode(Path(path).read_bytes()).decode("ascii"))


def read_json(path: Path) -> dict | None:
    """A results file, or None when the step did not run; an error when it is damaged."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BrainLMInputError(f"results file is not valid JSON ({e})", str(path)) from None


def render_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render ``run_dir/report.html`` (or ``out``) from the run folder's saved results."""
    from brainlm.report import sections

    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json")
    if summary is None:
        raise BrainLMInputError("not a run folder: summary.json is missing (it is written by "
                                "`brainlm demo --out DIR`)", str(run_dir))
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    built = [builder(run_dir, summary, figures) for builder in sections.BUILDERS]
    keys = sections.key_numbers(run_dir, summary)
    page = _template().render(
        title="BrainLM report", subtitle=sections.subtitle(summary), keys=keys,
        sections=[s for s in built if s is not None])
    out = Path(out) if out is not None else run_dir / "report.html"
    write_text_atomic(out, page)
    return out


def _template():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("brainlm.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2")


def escape(text) -> str:
    return html.escape(str(text))
