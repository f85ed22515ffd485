"""``brainlm report RUN_DIR``: one self-contained HTML file from a run folder's saved results.

A run folder is what ``brainlm demo --out DIR`` writes: ``summary.json``, the pretraining run
and ``results/``, laid out and read back as typed results by
:class:`brainlm.report.layout.RunLayout` (its docstring lists the folders).

A *study* folder is the same without ``summary.json`` and pretraining: a user's own task results
on any checkpoint (an imported upstream one included), written with ``--out DIR/results/NAME``
under the names RunLayout uses; its report names the checkpoints and corpora the results record.

Every figure is drawn again from those results into ``DIR/figures/`` and embedded in the page
as a PNG data URI, so the HTML file can be mailed or archived alone. Sections whose results are
absent say so instead of failing, so a partial run still gets a report.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from brainlm.data.atomic import write_text_atomic
from brainlm.errors import BrainLMInputError
from brainlm.report import sections
from brainlm.report.layout import RunLayout

__all__ = ["render_report", "is_report"]

#: Every report's title (the template's): how a report file is told from the user's files.
REPORT_TITLE = "BrainLM report"


def is_report(path: str | Path) -> bool:
    """Whether ``path`` is an HTML report that brainlm wrote (its head holds the report's
    title), i.e. a file that rendering the report again may replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.lstrip().lower().startswith("<!doctype html>") and f"<title>{REPORT_TITLE}</title>" in head


def render_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render ``run_dir/report.html`` (or ``out``) from the run folder's saved results."""
    run_dir = Path(run_dir)
    summary = RunLayout(run_dir).read_summary()
    if summary is None:
        if not (run_dir / "results").is_dir():
            raise BrainLMInputError(
                "not a run folder: expected summary.json (written by `brainlm demo --out DIR`) or a "
                "results/ folder of task outputs (e.g. `brainlm evaluate recon CKPT CORPUS --out "
                "DIR/results/reconstruction`)", str(run_dir))
        summary = sections.study_summary(run_dir)
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    built = [builder(run_dir, summary, figures) for builder in sections.BUILDERS]
    keys = sections.key_numbers(run_dir, summary)
    page = _template().render(
        title=REPORT_TITLE, subtitle=sections.subtitle(summary), keys=keys,
        sections=[s for s in built if s is not None])
    out = Path(out) if out is not None else run_dir / "report.html"
    write_text_atomic(out, page)
    return out


def _template():
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("brainlm.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2")
