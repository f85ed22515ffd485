"""A synthetic cohort with known answers, subject by subject: spec -> design -> BOLD -> scanner.

:func:`iter_cohort` and :func:`simulate_cohort` run a :class:`~brainlm.simulate.design.CohortSpec`:
the cohort's tables and each subject's latent variables and parameters
(:mod:`~brainlm.simulate.subjects`), the oscillators and hemodynamics integrated batch by batch
(:mod:`~brainlm.simulate.neural`), and what the scanner adds (:mod:`~brainlm.simulate.measurement`).
:func:`~brainlm.simulate.writing.write_cohort` writes the result.

Randomness is keyed by subject: subject ``i`` of seed ``s`` is the same in a cohort of 10 or
of 10,000, whatever the batch size or number of jobs, and a larger cohort extends a smaller one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.simulate.design import PHENOTYPES, CohortSpec, _count
from brainlm.simulate.measurement import measure
from brainlm.simulate.neural import Hemodynamics, Oscillators, simulate_bold
from brainlm.simulate.subjects import (CohortDesign, build_design, effective_coupling,
                                       subject_parameters, subject_rngs)

__all__ = ["SimulatedRecording", "auto_batch_size", "iter_cohort", "simulate_cohort"]


@dataclass(eq=False, repr=False)
class SimulatedRecording(Recording):
    """A :class:`~brainlm.data.recording.Recording` with the parameters that generated it.

    ``ground_truth`` holds the subject's latent variables and every model parameter derived
    from them (global coupling, trait and group coupling factors, hemodynamic constants,
    measurement noise, drift and spikes), JSON-ready.
    """

    ground_truth: dict[str, Any] = field(default_factory=dict)


def _simulate_batch(design: CohortDesign, subjects: list[tuple[int, dict]], n_trs: int,
                    units: str, width: int) -> list[SimulatedRecording]:
    indices = [i for i, _ in subjects]
    gts = [gt for _, gt in subjects]
    streams = [subject_rngs(design.seed, i) for i in indices]
    neural_rngs = [s[1] for s in streams]
    measure_rngs = [s[2] for s in streams]
    m = design.model
    p = design.connectome.n_parcels
    tr = gts[0]["tr"]
    coupling = effective_coupling(design, gts, neural_rngs)
    frequency = np.stack([design.base_frequency + m.frequency_jitter_hz * r.standard_normal(p)
                          for r in neural_rngs])
    frequency = np.clip(frequency, 0.1 * m.frequency_hz, None)
    kappa = np.array([gt["signal_decay_per_s"] for gt in gts])[:, None]
    tau = np.array([gt["transit_time_s"] for gt in gts])[:, None]
    bold = simulate_bold(coupling, Oscillators(frequency, m.bifurcation, m.neural_noise), tr=tr,
                         n_trs=n_trs, rngs=neural_rngs,
                         hemodynamics=Hemodynamics(kappa, tau, m.balloon), dt_max=m.dt,
                         burn_in_s=m.burn_in_s)
    out = []
    for b, (i, gt) in enumerate(subjects):
        data, extra = measure(design, gt, bold[b], measure_rngs[b], units)
        subject = f"{i + 1:0{width}d}"
        truth = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in gt.items()}
        truth.update(extra)
        truth["units"] = units
        out.append(SimulatedRecording(
            timeseries=data, tr=tr, atlas=design.connectome.atlas, subject=subject, task="rest",
            site=gt["site"], phenotypes={k: gt[k] for k in PHENOTYPES if k != "site"},
            source=(f"brainlm:simulate/{design.connectome.atlas.name}/seed-{design.seed}/"
                    f"sub-{subject}"),
            ground_truth=truth))
    return out


def iter_cohort(spec: CohortSpec, *, batch_size: int | None = None,
                jobs: int = 1) -> Iterator[SimulatedRecording]:
    """Simulate a cohort batch by batch, lazily.

    Same parameters as :func:`simulate_cohort`; the run options are checked at once, and the
    returned iterator yields the recordings in subject order as their batches finish. Use it
    to write large cohorts without holding them in memory
    (``write_cohort(iter_cohort(spec), out)``).
    """
    if not isinstance(spec, CohortSpec):
        raise BrainLMInputError(f"field 'spec' is {spec!r}; expected a CohortSpec")
    if batch_size is not None:
        batch_size = _count(batch_size, "batch_size", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs == 0:
        raise BrainLMInputError(f"field 'jobs' is {jobs!r}; expected a worker count >= 1, or -1 "
                                "for all cores")
    jobs = int(jobs)
    n_subjects = spec.n_subjects
    design = build_design(spec)
    if batch_size is None:
        # Enough batches to keep every worker busy.
        workers = jobs if jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + jobs)
        batch_size = max(1, min(auto_batch_size(design.connectome.n_parcels),
                                math.ceil(n_subjects / workers)))
    subjects = [(i, subject_parameters(design, i, spec)) for i in range(n_subjects)]
    width = max(4, len(str(n_subjects)))
    return _in_subject_order(_run_batches(design, _batches(subjects, batch_size), spec.n_trs,
                                          spec.units, width, jobs))


def _batches(subjects: list[tuple[int, dict]], batch_size: int) -> list[list[tuple[int, dict]]]:
    """Subjects grouped into batches of at most ``batch_size``, ordered by their first subject.

    One batch shares one time grid, so batches never mix sites with different TRs. Batches
    are filled in subject order so that recordings can be yielded in order while only a few
    batches wait in memory.
    """
    batches: list[list[tuple[int, dict]]] = []
    filling: dict[float, list[tuple[int, dict]]] = {}
    for item in subjects:
        batch = filling.setdefault(item[1]["tr"], [])
        batch.append(item)
        if len(batch) == batch_size:
            batches.append(filling.pop(item[1]["tr"]))
    batches += [b for b in filling.values() if b]
    batches.sort(key=lambda b: b[0][0])
    return batches


def auto_batch_size(n_parcels: int) -> int:
    """Subjects per batch so that their coupling matrices (float32) take about 5 MB.

    The integration is bound by reading the (B, P, P) couplings at every step; a batch that
    stays in the CPU cache runs up to twice as fast (32 subjects at 200 parcels, 8 at 400).
    """
    return int(np.clip(round(1.3e6 / n_parcels ** 2), 4, 64))


def _in_subject_order(batches: Iterable[list[SimulatedRecording]]) -> Iterator[SimulatedRecording]:
    ready: dict[int, SimulatedRecording] = {}
    next_index = 0
    for batch in batches:
        for rec in batch:
            ready[int(rec.subject) - 1] = rec
        while next_index in ready:
            yield ready.pop(next_index)
            next_index += 1


def _run_batches(design, batches, n_trs, units, width, jobs) -> Iterator[list[SimulatedRecording]]:
    if jobs == 1 or len(batches) == 1:
        for batch in batches:
            yield _simulate_batch(design, batch, n_trs, units, width)
        return
    from joblib import Parallel, delayed

    runner = Parallel(n_jobs=jobs, return_as="generator")
    yield from runner(delayed(_simulate_batch)(design, batch, n_trs, units, width)
                      for batch in batches)


def simulate_cohort(spec: CohortSpec, *, batch_size: int | None = None,
                    jobs: int = 1) -> list[SimulatedRecording]:
    """Simulate resting-state fMRI of ``spec.n_subjects`` with known phenotype effects.

    Parameters
    ----------
    spec : CohortSpec
        The cohort: subjects, atlas, length, sites, seed, measurement artefacts, units,
        effect sizes and model settings (checked when the spec is built).
    batch_size : int, optional
        Subjects integrated together (vectorised); default: :func:`auto_batch_size`. Does
        not change the result.
    jobs : int
        Worker processes over batches (-1: all cores); does not change the result.

    Returns
    -------
    list of SimulatedRecording, length spec.n_subjects
        In subject order; ``subject`` ``"0001"``, ``"0002"`` ...; ``timeseries`` float32
        (n_trs, P); ``tr`` the site's TR; ``site``; ``task="rest"``; ``phenotypes``
        ``{"age", "trait", "group", "null_score"}``; ``ground_truth`` the generating parameters.

    Raises
    ------
    BrainLMInputError
        ``spec`` is not a :class:`CohortSpec`, or an impossible batch size or worker count.
    """
    return list(iter_cohort(spec, batch_size=batch_size, jobs=jobs))
