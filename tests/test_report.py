"""The HTML report: rendered from a quick demo run, checked in a real headless Chromium."""

import json
import os
import shutil
from pathlib import Path

import pytest

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.report.blocks import fmt
from brainlm.report.html import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Every figure the report must carry after a full demo run.
EXPECTED_FIGURES = {
    "training_curves", "reconstruction_example", "reconstruction_r2_brain", "prediction_scores",
    "forecast_error_by_step", "networks_confusion", "networks_brain", "attention_group_difference",
    "latent_site", "benchmark_quality", "benchmark_scaling",
}


def test_report_has_every_section_and_figure(demo_run, tmp_path):
    page = (demo_run / "report.html").read_text()
    for anchor in ("data", "pretraining", "reconstruction", "prediction", "forecasting", "networks",
                   "attention", "latent", "benchmarks", "provenance"):
        assert f'<section id="{anchor}">' in page
    assert "Not in this run" not in page
    found = {name for name in EXPECTED_FIGURES if f'data-figure="{name}"' in page}
    assert found == EXPECTED_FIGURES
    assert page.count("data:image/png;base64,") >= len(EXPECTED_FIGURES)
    assert "src=\"http" not in page and "href=\"http" not in page  # self-contained
    # `brainlm report` renders the same page again from the saved results alone.
    again = tmp_path / "again.html"
    assert main(["report", str(demo_run), "--out", str(again)]) == 0
    assert again.read_text().count("<figure") == page.count("<figure")


def test_report_draws_every_figure_from_the_saved_numbers(demo_run, tmp_path, capsys):
    # The tasks' own PNGs are not needed: the report redraws from JSON and TSV results.
    run = tmp_path / "run"
    shutil.copytree(demo_run, run, ignore=shutil.ignore_patterns("*.png", "report.html", "again.html"))
    assert not list(run.rglob("*.png"))
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert {name for name in EXPECTED_FIGURES if f'data-figure="{name}"' in page} == EXPECTED_FIGURES
    assert page.count("<figure") == (demo_run / "report.html").read_text().count("<figure")
    # A damaged results table is named in a one-line error, not a traceback.
    (run / "results" / "attention" / "parcels.tsv").write_text("parcel\tnetwork\nA\tVis\n")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "parcels.tsv" in err and "lacks column(s)" in err and "Traceback" not in err
    (run / "results" / "attention" / "parcels.tsv").unlink()
    assert main(["report", str(run)]) == 2
    assert "results table not found" in capsys.readouterr().err


def test_report_of_a_study_folder_of_task_results(demo_run, tmp_path, capsys):
    # A user's own task results (no summary.json, no pretraining) get a report too.
    study = tmp_path / "study"
    shutil.copytree(demo_run / "results", study / "results", ignore=shutil.ignore_patterns("*.png"))
    assert main(["report", str(study)]) == 0
    page = (study / "report.html").read_text()
    for anchor in ("reconstruction", "networks", "attention", "provenance"):
        assert f'<section id="{anchor}">' in page
    assert 'data-figure="reconstruction_r2_brain"' in page and 'data-figure="networks_confusion"' in page
    assert '<section id="benchmarks">' not in page          # brainlm's own recipe: not this study's
    assert "Not in this run: a pretraining run" in page
    checkpoint = json.loads((demo_run / "results" / "reconstruction" / "reconstruction.json").read_text())["checkpoint"]
    assert f"checkpoint(s) {checkpoint}" in page
    # A corpus the results name but that cannot be read from here is named, not described.
    recon = study / "results" / "reconstruction" / "reconstruction.json"
    res = json.loads(recon.read_text())
    recon.write_text(json.dumps({**res, "corpus": str(tmp_path / "moved-away")}))
    assert main(["report", str(study)]) == 0
    assert "moved-away</b>: named by the results but not readable from here" in (study / "report.html").read_text()


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "expected summary.json" in err and "results/" in err and str(tmp_path) in err
    assert "Traceback" not in err
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(BrainLMInputError, match="not valid JSON"):
        render_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                    reason="Chromium is not installed (Debian: apt-get install chromium); CI installs it")
def test_report_loads_in_headless_chromium(demo_run, tmp_path):
    assert CHROMIUM is not None, "CI must install Debian's chromium package (.ci/run does)"
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto((demo_run / "report.html").resolve().as_uri(), wait_until="load")
        figures = page.eval_on_selector_all(
            "figure[data-figure] img",
            "imgs => imgs.map(i => [i.closest('figure').dataset.figure, i.complete, i.naturalWidth, i.naturalHeight])")
        shot = Path(os.environ.get("BRAINLM_REPORT_SCREENSHOT", tmp_path / "report.png"))
        page.screenshot(path=str(shot), full_page=True)
        title = page.title()
        browser.close()
    assert errors == []
    assert title == "BrainLM report"
    names = {f[0] for f in figures}
    assert names >= EXPECTED_FIGURES
    for name, complete, width, height in figures:
        assert complete and width > 200 and height > 100, (name, width, height)
    assert shot.stat().st_size > 50_000


def test_table_numbers_never_round_a_real_value_to_zero():
    assert fmt(1 / 2001) == "0.0005" and fmt(-3e-6) == "-3e-06"
    assert fmt(0.0) == "0.000" and fmt(0.12345) == "0.123" and fmt(1234) == "1,234"
    assert fmt(float("nan")) == "n/a" and fmt(None) == "n/a"
