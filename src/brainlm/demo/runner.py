"""The demo: the main job end to end on the data shipped with the package (``brainlm demo``).

1. Corpora from real fMRI: 7 HCP subjects on AAL2 at TR 0.72 s, and one Schaefer-100 run at
   TR 2 s resampled to 0.72 s. A miniature fMRIPrep folder of 4-D NIfTI scans, parcellated with
   an atlas image and denoised with fMRIPrep confounds in one ``prepare`` call. A synthetic cohort on AAL2 with known phenotype effects (age,
   group, a null score), simulated at three sites' TRs and resampled to 0.72 s. Every corpus is
   split by subject; each recording is robust-scaled by its own statistics.
2. The recipe for fresh cohorts (``hcp-fresh``'s, docs/quality.md): the ``small`` model (an
   axial decoder, mask ratios drawn per batch from 0.2-0.9, 50 epochs) as a hybrid whose
   decoder corrects the linear estimate of the pretraining covariance (dropped for half the
   windows, so the encoder still learns), with per-recording scaling and site augmentations,
   is pretrained on the HCP training subjects and validated on a held-out subject
   against trivial baselines. Embeddings from the exported checkpoint are checked to be
   deterministic.
3. Masked reconstruction on the HCP test subject, against interpolation and spatial baselines
   on the same masks.
4. Phenotype prediction on the synthetic cohort, with grouped nested cross-validation:
   zero-shot and fine-tuned BrainLM against FC + ridge and the other baselines.
5. Forecasting of the next 20 TRs from 180 on HCP: fine-tuned BrainLM against persistence,
   AR, VAR, LSTM, Neural ODE and the same architecture trained from scratch.
6. Functional-network identification from attention (HCP on AAL2 and the Schaefer-100 run),
   against FC and raw-signal baselines.
7. Group attention maps on the synthetic cohort (patients vs controls), with a permutation test.
8. The latent space of the synthetic cohort: a PCA map of the recordings' embeddings coloured by
   site, with the site's separability next to that of FC features.
9. ``DIR/report.html``, the self-contained report (``brainlm report DIR`` draws it again).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from brainlm.version import __version__
from brainlm.data.atomic import write_text_atomic
from brainlm.demo.settings import DemoSettings
from brainlm.demo.steps import STEPS, DemoRun, SummaryPart, training_device
from brainlm.report.console import make_console
from brainlm.report.html import render_report
from brainlm.report.layout import RunSummary
from brainlm.report.sections import software_versions

__all__ = ["command_line", "run_demo"]


def run_demo(out: Path, jobs: int = 2, settings: DemoSettings = DemoSettings()) -> RunSummary:
    """Run every step of :data:`~brainlm.demo.steps.STEPS` into ``out``; returns (and writes
    ``out/summary.json``) the key numbers, and draws ``out/report.html``."""
    con = make_console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = DemoRun(out, settings, jobs, con)
    if run.layout.results.exists():
        shutil.rmtree(run.layout.results)  # every result of this run comes from this run
    run.layout.results.mkdir()
    t0 = time.perf_counter()
    summary: dict = {"brainlm_version": __version__, "command": command_line(settings),
                     "settings": {"demo": asdict(settings)}, "seed": settings.seed, "device": _device(),
                     "key_numbers": [], "data_notes": {}}
    step_seconds = {}
    for i, step in enumerate(STEPS, start=1):
        con.rule(f"[bold]{i}. {step.title(settings)}")
        t = time.perf_counter()
        _merge(summary, step.run(run))
        step_seconds[step.name] = round(time.perf_counter() - t, 1)
    summary["step_seconds"] = step_seconds
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary["versions"] = software_versions()
    summary = RunSummary.from_json(summary)
    write_text_atomic(run.layout.summary, summary.dumps(indent=2))

    con.rule("[bold]Report")
    report = render_report(out)
    con.print(f"report: [bold]{report.resolve()}[/bold]")
    for k in summary.key_numbers:
        con.print(f"  {k['label']}: [bold]{k['value']}[/bold]")
    con.print(f"({summary.seconds / 60:.1f} min; summary: {run.layout.summary.resolve()})")
    return summary


def _merge(summary: dict, part: SummaryPart) -> None:
    summary.update(part.sections)
    summary["settings"].update(part.settings)
    summary["key_numbers"] += part.key_numbers


def command_line(s: DemoSettings) -> str:
    """The command line that reproduces a run with settings ``s``."""
    for flag, base in (("", DemoSettings()), (" --quick", DemoSettings.quick())):
        if replace(s, epochs=base.epochs) == base:
            return "brainlm demo" + flag + ("" if s.epochs == base.epochs else f" --epochs {s.epochs}")
    return f"brainlm.demo.run_demo(settings={s!r})"  # settings the command line cannot express


def _device() -> str:
    """Where the demo ran; the evaluation steps use the CPU even when training had a GPU."""
    if torch.cuda.is_available():
        return f"{training_device()} for training, {torch.get_num_threads()} CPU threads otherwise"
    return training_device()
