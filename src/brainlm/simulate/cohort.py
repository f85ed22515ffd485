"""A synthetic cohort with known answers: latent variables -> model parameters -> recordings.

Each subject gets latent variables drawn independently of each other, and every one of them
acts on the simulation in a documented way (``docs/simulation.md`` has the full table):

==============  ===================================  ==============================================
variable        distribution                         effect
==============  ===================================  ==============================================
``age``         uniform, 20-80 years                 with ``A = (age - 50) / 30`` in [-1, 1]:
                                                     global coupling x ``(1 + age_on_coupling A)``;
                                                     transit time ``tau`` and signal decay time
                                                     ``1/kappa`` x ``(1 + age_on_hemodynamics A)``;
                                                     measurement noise x ``(1 + age_on_noise A)``
``trait``       standard normal                      coupling between parcels of ``trait_network``
                                                     (Default) x ``exp(trait_on_coupling trait)``
``group``       0 (control) / 1 (patient),           patients: coupling added to every
                Bernoulli(``patient_fraction``)      limbic-limbic and limbic-prefrontal pair,
                                                     raising a limbic parcel's strength by
                                                     ``group_on_coupling`` x the mean node strength
``site``        uniform over the sites               TR, noise level and its parcel profile,
                                                     scanner baseline and parcel gains
``null_score``  standard normal                      none: a negative control
==============  ===================================  ==============================================

Trait and group redistribute coupling without changing its total, so that the overall level
of synchrony (and of FC) belongs to age alone.

On top come individual differences no variable explains (a per-subject global-coupling factor,
per-edge coupling jitter or, for AAL2, one of seven real individual connectomes, and
oscillator frequencies), so that phenotypes are predictable but not perfectly.

Randomness is keyed by subject: subject ``i`` of seed ``s`` is the same in a cohort of 10 or
of 10,000, whatever the batch size or number of jobs, and a larger cohort extends a smaller one.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainlm.data.atlas import Atlas
from brainlm.data.atomic import atomic_directory, write_json
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.simulate.connectomes import Connectome, check_atlas_name, load_connectome
from brainlm.simulate.hemodynamics import BalloonParameters
from brainlm.simulate.neural import simulate_bold
from brainlm.version import __version__

__all__ = ["DEFAULT_SITES", "LatentEffects", "ModelSettings", "SimulatedRecording", "Site",
           "iter_cohort", "simulate_cohort", "write_cohort"]

#: Phenotype columns written to ``participants.tsv`` (after ``participant_id``), in order.
PHENOTYPES = ("age", "trait", "group", "site", "null_score")
UNITS = ("raw", "percent")
#: Default measurement noise, percent of the baseline signal (SD of white noise at a site with
#: ``noise_scale`` 1, for a 50-year-old).
MEASUREMENT_NOISE = 0.3
FORMATS = ("npy", "tsv")

# Parcel names of the AAL2 regions that are limbic by anatomy but carry no Yeo-7 label.
_AAL2_LIMBIC_PREFIXES = ("Hippocampus", "ParaHippocampal", "Amygdala")
_PREFRONTAL_NETWORKS = ("Cont", "Default", "SalVentAttn")
_MAX_TR_S = 30.0


@dataclass(frozen=True)
class Site:
    """An acquisition site.

    Parameters
    ----------
    name : str
        Letters and digits only (it becomes a BIDS entity value).
    tr : float
        Repetition time, seconds.
    noise_scale : float
        Multiplies the cohort's measurement noise (thermal and physiological noise differ
        between scanners and protocols).
    baseline : float
        Mean raw signal in scanner units (the BOLD changes are percentages of it).
    """

    name: str
    tr: float
    noise_scale: float
    baseline: float

    def check(self, where: str = "site") -> None:
        if not (isinstance(self.name, str) and self.name.isalnum()):
            raise BrainLMInputError(f"field 'name' is {self.name!r}; expected letters and digits",
                                    where)
        _positive(self.tr, "tr", where, upper=_MAX_TR_S, unit="seconds")
        _non_negative(self.noise_scale, "noise_scale", where)
        _positive(self.baseline, "baseline", where, unit="scanner units")


#: Sites used by default, in order (``sites=3`` takes the first three): HCP-, UK Biobank- and
#: ABCD-like multiband protocols, and a conventional single-band protocol.
DEFAULT_SITES = (
    Site("A", tr=0.72, noise_scale=1.0, baseline=10_000.0),
    Site("B", tr=0.735, noise_scale=1.35, baseline=8_000.0),
    Site("C", tr=0.8, noise_scale=0.8, baseline=12_000.0),
    Site("D", tr=2.0, noise_scale=0.6, baseline=1_500.0),
)


@dataclass(frozen=True)
class LatentEffects:
    """The ground truth: how each latent variable changes the model (see module docstring).

    Parameters
    ----------
    age_min, age_max : float
        Range of the uniform age distribution, years.
    age_on_coupling : float
        Fractional change of the global coupling per unit of ``A = (age - 50) / 30``.
    age_on_hemodynamics : float
        Fractional lengthening of the transit time and of the signal decay time per unit ``A``.
    age_on_noise : float
        Fractional change of the measurement noise per unit ``A``.
    trait_network : str
        Network whose internal coupling the trait changes.
    trait_on_coupling : float
        Log-factor of that coupling per standard deviation of the trait.
    patient_fraction : float
        Probability that a subject is a patient (``group = 1``).
    group_on_coupling : float
        Coupling strength a patient's limbic parcel gains, as a fraction of the mean node
        strength, spread evenly over its limbic and prefrontal partners (the same amount is
        added to every such pair). Additive, because the functional-connectivity-derived
        couplings of the low-signal limbic parcels are near zero and scaling them would
        change nothing; negative values remove coupling (weights are floored at 0).
    """

    age_min: float = 20.0
    age_max: float = 80.0
    age_on_coupling: float = -0.05
    age_on_hemodynamics: float = 0.15
    age_on_noise: float = 0.2
    trait_network: str = "Default"
    trait_on_coupling: float = 0.15
    patient_fraction: float = 0.5
    group_on_coupling: float = 0.15

    def check(self) -> None:
        where = "latent effects"
        for name in ("age_min", "age_max"):
            _finite(getattr(self, name), name, where)
        if not self.age_min < self.age_max:
            raise BrainLMInputError(f"fields 'age_min' {self.age_min} and 'age_max' "
                                    f"{self.age_max}: expected age_min < age_max", where)
        for name in ("age_on_coupling", "age_on_hemodynamics", "age_on_noise"):
            value = _finite(getattr(self, name), name, where)
            if value <= -1:
                raise BrainLMInputError(f"field {name!r} is {value}; expected a fractional change "
                                        "> -1 (a factor that stays positive)", where)
        _finite(self.trait_on_coupling, "trait_on_coupling", where)
        _finite(self.group_on_coupling, "group_on_coupling", where)
        if not 0 <= self.patient_fraction <= 1:
            raise BrainLMInputError(f"field 'patient_fraction' is {self.patient_fraction!r}; "
                                    "expected a probability in [0, 1]", where)


@dataclass(frozen=True)
class ModelSettings:
    """Parameters of the neural and hemodynamic model shared by all subjects.

    Parameters
    ----------
    global_coupling : float or None
        ``G`` for a 50-year-old, 1/s; ``None`` takes the value tuned for the atlas
        (:data:`GLOBAL_COUPLING`).
    bifurcation : float
        ``a`` of every oscillator, 1/s (slightly negative: just below the Hopf bifurcation).
    frequency_hz : float
        Mean intrinsic frequency of the oscillators, Hz. Infra-slow on purpose: unfiltered
        resting BOLD has a falling ("pink") spectrum with most power at 0.01-0.04 Hz, which
        oscillators near 0.02 Hz reproduce; the 0.04-0.07 Hz often used in Hopf models fits
        band-passed BOLD and gives a spectral peak real scans do not have.
    frequency_sd_hz : float
        Standard deviation of the parcels' frequencies around the mean, Hz (normal, cut at
        2.5 SD, and never below 10 % of the mean). The same parcel frequencies serve every
        cohort on an atlas, so that the distance to the synchronisation transition does not
        depend on the seed.
    frequency_jitter_hz : float
        Standard deviation of each subject's deviation from the parcel frequency, Hz.
    neural_noise : float
        Amplitude ``sigma`` of the oscillators' noise.
    coupling_jitter : float
        Individual variability of coupling: standard deviation of a log-normal factor per
        subject on ``G`` and per edge on the connectome (Schaefer atlases).
    dt : float
        Largest integration step, seconds.
    burn_in_s : float
        Simulated seconds discarded before the first TR.
    balloon : BalloonParameters
        Hemodynamic constants for a 50-year-old.
    """

    global_coupling: float | None = None
    bifurcation: float = -0.05
    frequency_hz: float = 0.02
    frequency_sd_hz: float = 0.01
    frequency_jitter_hz: float = 0.002
    neural_noise: float = 0.032
    coupling_jitter: float = 0.03
    dt: float = 0.1
    burn_in_s: float = 120.0
    balloon: BalloonParameters = field(default_factory=BalloonParameters)

    def check(self) -> None:
        where = "model settings"
        if self.global_coupling is not None:
            _non_negative(self.global_coupling, "global_coupling", where)
        _finite(self.bifurcation, "bifurcation", where)
        _positive(self.frequency_hz, "frequency_hz", where, unit="Hz")
        _non_negative(self.frequency_sd_hz, "frequency_sd_hz", where)
        _non_negative(self.frequency_jitter_hz, "frequency_jitter_hz", where)
        _non_negative(self.neural_noise, "neural_noise", where)
        _non_negative(self.coupling_jitter, "coupling_jitter", where)
        _positive(self.dt, "dt", where, upper=1.0, unit="seconds")
        _non_negative(self.burn_in_s, "burn_in_s", where)


#: Global coupling ``G`` (1/s) at age 50 per atlas, tuned so that simulated young adults
#: (22-36 years, as in HCP) at site A match the FC strength and lag-1 autocorrelation of the
#: real HCP sample (see docs/simulation.md).
GLOBAL_COUPLING = {"aal2": 0.81, "schaefer100": 0.82, "schaefer200": 0.84, "schaefer400": 0.82}


@dataclass(eq=False, repr=False)
class SimulatedRecording(Recording):
    """A :class:`~brainlm.data.recording.Recording` with the parameters that generated it.

    ``ground_truth`` holds the subject's latent variables and every model parameter derived
    from them (global coupling, trait and group coupling factors, hemodynamic constants,
    measurement noise, drift and spikes), JSON-ready.
    """

    ground_truth: dict[str, Any] = field(default_factory=dict)


# -- input checks ----------------------------------------------------------------------------
def _finite(value, name, where=None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BrainLMInputError(f"field {name!r} is {value!r}; expected a number", where) from None
    if not math.isfinite(v) or isinstance(value, bool):
        raise BrainLMInputError(f"field {name!r} is {value!r}; expected a finite number", where)
    return v


def _non_negative(value, name, where=None, unit="") -> float:
    v = _finite(value, name, where)
    if v < 0:
        raise BrainLMInputError(f"field {name!r} is {value!r}; expected a number >= 0"
                                f"{' ' + unit if unit else ''}", where)
    return v


def _positive(value, name, where=None, upper=None, unit="") -> float:
    v = _finite(value, name, where)
    if v <= 0 or (upper is not None and v > upper):
        bound = f" and <= {upper:g}" if upper is not None else ""
        raise BrainLMInputError(f"field {name!r} is {value!r}; expected a number > 0{bound}"
                                f"{' ' + unit if unit else ''}", where)
    return v


def _count(value, name, minimum) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BrainLMInputError(f"field {name!r} is {value!r}; expected an integer >= {minimum}")
    return int(value)


def _resolve_sites(sites, tr) -> tuple[Site, ...]:
    if isinstance(sites, (int, np.integer)) and not isinstance(sites, bool):
        if not 1 <= sites <= len(DEFAULT_SITES):
            raise BrainLMInputError(f"field 'sites' is {sites}; expected 1 to {len(DEFAULT_SITES)} "
                                    "default sites, or a list of Site")
        chosen = DEFAULT_SITES[: int(sites)]
    else:
        chosen = tuple(sites)
        if not chosen or not all(isinstance(s, Site) for s in chosen):
            raise BrainLMInputError("field 'sites' must be a number of default sites or a "
                                    "non-empty list of Site")
        names = [s.name for s in chosen]
        if len(set(names)) != len(names):
            raise BrainLMInputError(f"field 'sites' has duplicate names {names}")
    if tr is not None:
        tr = _positive(tr, "tr", upper=_MAX_TR_S, unit="seconds")
        chosen = tuple(Site(s.name, tr, s.noise_scale, s.baseline) for s in chosen)
    for s in chosen:
        s.check(f"site {s.name!r}")
    return chosen


# -- the design: latent variables and subject parameters ------------------------------------
@dataclass
class _Design:
    """Everything fixed before integration: per-cohort tables and per-subject scalars."""

    connectome: Connectome
    sites: tuple[Site, ...]
    effects: LatentEffects
    model: ModelSettings
    global_coupling: float
    base_frequency: np.ndarray       # (P,) Hz
    site_noise_profile: np.ndarray   # (n_sites, P) multiplicative
    site_gain: np.ndarray            # (n_sites, P) multiplicative on the baseline
    trait_mask: np.ndarray           # (P, P) bool
    group_mask: np.ndarray           # (P, P) bool
    group_pair_weight: float         # coupling added per group pair for an effect of 1
    seed: int


def limbic_prefrontal(atlas: Atlas) -> tuple[np.ndarray, np.ndarray]:
    """The parcels of the group effect.

    Returns
    -------
    limbic : ndarray, shape (P,), bool
        Yeo ``Limbic`` parcels, plus, in AAL2, hippocampus, parahippocampal gyrus and
        amygdala (limbic by anatomy, without a Yeo label).
    prefrontal : ndarray, shape (P,), bool
        ``Cont``, ``Default`` or ``SalVentAttn`` parcels anterior of MNI y = 0 mm.
    """
    nets = np.array([n or "" for n in (atlas.networks or [None] * atlas.n_parcels)])
    limbic = nets == "Limbic"
    limbic |= np.array([n.startswith(_AAL2_LIMBIC_PREFIXES) for n in atlas.parcel_names])
    prefrontal = np.isin(nets, _PREFRONTAL_NETWORKS) & (atlas.xyz[:, 1] > 0) & ~limbic
    return limbic, prefrontal


def effect_masks(atlas: Atlas, trait_network: str = "Default") -> tuple[np.ndarray, np.ndarray]:
    """Parcel pairs whose coupling the trait and the group change.

    Parameters
    ----------
    atlas : Atlas
    trait_network : str
        Network whose internal pairs the trait acts on.

    Returns
    -------
    trait_mask : ndarray, shape (P, P), bool
        Pairs of distinct parcels both in ``trait_network``.
    group_mask : ndarray, shape (P, P), bool
        Pairs of distinct parcels that are both limbic, or limbic and prefrontal
        (see :func:`limbic_prefrontal`).
    """
    nets = np.array([n or "" for n in (atlas.networks or [None] * atlas.n_parcels)])
    if trait_network not in set(nets):
        raise BrainLMInputError(f"field 'trait_network' is {trait_network!r}; atlas {atlas.name!r} "
                                f"has networks {atlas.network_names}", "latent effects")
    limbic, prefrontal = limbic_prefrontal(atlas)
    off_diagonal = ~np.eye(atlas.n_parcels, dtype=bool)
    in_net = nets == trait_network
    trait_mask = in_net[:, None] & in_net[None, :] & off_diagonal
    either = limbic | prefrontal
    group_mask = ((limbic[:, None] & either[None, :]) | (either[:, None] & limbic[None, :])) \
        & off_diagonal
    return trait_mask, group_mask


def _group_pair_weight(connectome: Connectome) -> float:
    """Weight per group pair that raises a limbic parcel's strength by one mean node strength."""
    limbic, prefrontal = limbic_prefrontal(connectome.atlas)
    partners = int(limbic.sum() + prefrontal.sum()) - 1
    if not limbic.any() or partners < 1:
        return 0.0
    return float(connectome.coupling.sum(axis=1).mean() / partners)


def _design(atlas: str, sites, effects: LatentEffects, model: ModelSettings, seed: int) -> _Design:
    connectome = load_connectome(atlas)
    p = connectome.n_parcels
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    # Parcel frequencies are seeded by the atlas, not the cohort: how far the brain sits from
    # the synchronisation transition depends on them, and must not change with the seed.
    atlas_rng = np.random.default_rng(zlib.crc32(atlas.encode()))
    spread = np.clip(atlas_rng.standard_normal(p), -2.5, 2.5)
    trait_mask, group_mask = effect_masks(connectome.atlas, effects.trait_network)
    return _Design(
        connectome=connectome, sites=sites, effects=effects, model=model,
        global_coupling=(GLOBAL_COUPLING[atlas] if model.global_coupling is None
                         else float(model.global_coupling)),
        base_frequency=model.frequency_hz + model.frequency_sd_hz * spread,
        # Coil sensitivity and susceptibility make noise and intensity vary over parcels in a
        # scanner-specific way: the spatial signature harmonization has to remove.
        site_noise_profile=np.exp(0.3 * rng.standard_normal((len(sites), p))),
        site_gain=np.exp(0.1 * rng.standard_normal((len(sites), p))),
        trait_mask=trait_mask, group_mask=group_mask,
        group_pair_weight=_group_pair_weight(connectome), seed=seed)


def _subject_rngs(seed: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent streams for one subject: latent draws, neural noise, measurement."""
    children = np.random.SeedSequence(seed, spawn_key=(1, index)).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)


def _subject(design: _Design, index: int, measurement: dict) -> dict[str, Any]:
    """Latent variables and scalar parameters of subject ``index`` (JSON-ready)."""
    e, m = design.effects, design.model
    rng = _subject_rngs(design.seed, index)[0]
    # Effects are computed from the values as written to participants.tsv.
    age = round(float(rng.uniform(e.age_min, e.age_max)), 2)
    trait = round(float(rng.standard_normal()), 4)
    group = int(rng.random() < e.patient_fraction)
    site_index = int(rng.integers(len(design.sites)))
    null_score = round(float(rng.standard_normal()), 4)
    individual = rng.standard_normal()
    connectome_index = (int(rng.integers(len(design.connectome.individual)))
                        if design.connectome.individual is not None else None)
    a = (age - 50.0) / 30.0
    site = design.sites[site_index]
    hemo = 1.0 + e.age_on_hemodynamics * a
    gt = {
        "age": age, "trait": trait, "group": group, "site": site.name, "null_score": null_score,
        "tr": site.tr,
        "global_coupling": design.global_coupling * (1.0 + e.age_on_coupling * a)
        * math.exp(m.coupling_jitter * individual),
        "trait_coupling_factor": math.exp(e.trait_on_coupling * trait),
        "group_coupling_added": e.group_on_coupling if group else 0.0,
        "transit_time_s": design.model.balloon.tau * hemo,
        "signal_decay_per_s": design.model.balloon.kappa / hemo,
        "measurement_noise_pct": measurement["noise"] * site.noise_scale
        * (1.0 + e.age_on_noise * a),
        "drift_pct": measurement["drift"],
        "spike_rate_per_min": measurement["spike_rate"],
        "spike_size_pct": measurement["spike_size"],
        "site_index": site_index,
    }
    if connectome_index is not None:
        gt["connectome_index"] = connectome_index
    return gt


def _coupling(design: _Design, subjects: Sequence[dict], rngs) -> np.ndarray:
    """Effective coupling ``K`` of each subject, shape (B, P, P), 1/s."""
    c = design.connectome
    out = np.empty((len(subjects), c.n_parcels, c.n_parcels))
    jitter = design.model.coupling_jitter
    for b, (gt, rng) in enumerate(zip(subjects, rngs)):
        if c.individual is not None:
            w = c.individual[gt["connectome_index"]].copy()
        else:
            noise = rng.standard_normal((c.n_parcels, c.n_parcels))
            w = c.coupling * np.exp(jitter * np.triu(noise, 1) + jitter * np.triu(noise, 1).T)
        total = w.sum()
        w[design.trait_mask] *= gt["trait_coupling_factor"]
        if gt["group_coupling_added"]:
            w[design.group_mask] = np.maximum(
                w[design.group_mask] + gt["group_coupling_added"] * design.group_pair_weight, 0.0)
        # Trait and group move coupling between parcel pairs but keep its total: the global
        # level (hence overall synchrony and FC strength) belongs to age alone.
        out[b] = gt["global_coupling"] * w * (total / w.sum())
    return out


# -- measurement: noise, drift, spikes, scanner units ----------------------------------------
def _drift(rng: np.random.Generator, n_trs: int, tr: float, p: int, size: float) -> np.ndarray:
    """Slow drift (T, P) in percent: a cosine basis below 1/128 Hz, half shared by all parcels."""
    duration = n_trs * tr
    n_basis = max(1, int(2 * duration / 128.0))
    t = (np.arange(n_trs) + 0.5) / n_trs
    basis = np.cos(np.pi * np.arange(1, n_basis + 1)[None, :] * t[:, None])  # (T, K)
    basis /= np.sqrt(np.mean(basis ** 2, axis=0))
    shared = basis @ rng.standard_normal(n_basis)
    own = basis @ rng.standard_normal((n_basis, p))
    drift = np.sqrt(0.5) * (shared[:, None] + own) / np.sqrt(n_basis)
    return size * drift


def _spikes(rng: np.random.Generator, n_trs: int, tr: float, p: int, rate_per_min: float,
            size: float) -> tuple[np.ndarray, list[int]]:
    """Motion-like spikes (T, P) in percent and the frames they hit.

    A head jerk shifts the whole brain at once: every parcel jumps in the same frame, by a
    parcel-specific fraction of one amplitude, and 40 % of it lingers into the next frame
    (spin history).
    """
    out = np.zeros((n_trs, p))
    n = int(rng.poisson(rate_per_min * n_trs * tr / 60.0))
    frames = np.sort(rng.choice(n_trs, size=min(n, n_trs), replace=False))
    for f in frames:
        amplitude = size * (1.0 + abs(rng.standard_normal())) * rng.choice((-1.0, 1.0))
        jump = amplitude * rng.uniform(0.5, 1.5, p)
        out[f] += jump
        if f + 1 < n_trs:
            out[f + 1] += 0.4 * jump
    return out, [int(f) for f in frames]


def _measure(design: _Design, gt: dict, bold: np.ndarray, rng: np.random.Generator,
             units: str) -> tuple[np.ndarray, dict]:
    """Scanner output (T, P) float32 from clean BOLD in percent, and what was added."""
    n_trs, p = bold.shape
    site = gt["site_index"]
    noise = gt["measurement_noise_pct"] * design.site_noise_profile[site]
    y = bold.astype(np.float64) + noise * rng.standard_normal((n_trs, p))
    extra: dict[str, Any] = {}
    if gt["drift_pct"] > 0:
        y += _drift(rng, n_trs, gt["tr"], p, gt["drift_pct"])
    if gt["spike_rate_per_min"] > 0:
        spikes, frames = _spikes(rng, n_trs, gt["tr"], p, gt["spike_rate_per_min"],
                                 gt["spike_size_pct"])
        y += spikes
        extra["spike_frames"] = frames
    if units == "percent":
        return y.astype(np.float32), extra
    baseline = design.sites[site].baseline * design.site_gain[site]
    return (baseline * (1.0 + y / 100.0)).astype(np.float32), extra


# -- the cohort ------------------------------------------------------------------------------
def _simulate_batch(design: _Design, subjects: list[tuple[int, dict]], n_trs: int, units: str,
                    width: int) -> list[SimulatedRecording]:
    indices = [i for i, _ in subjects]
    gts = [gt for _, gt in subjects]
    streams = [_subject_rngs(design.seed, i) for i in indices]
    neural_rngs = [s[1] for s in streams]
    measure_rngs = [s[2] for s in streams]
    m = design.model
    p = design.connectome.n_parcels
    tr = gts[0]["tr"]
    coupling = _coupling(design, gts, neural_rngs)
    frequency = np.stack([design.base_frequency + m.frequency_jitter_hz * r.standard_normal(p)
                          for r in neural_rngs])
    frequency = np.clip(frequency, 0.1 * m.frequency_hz, None)
    kappa = np.array([gt["signal_decay_per_s"] for gt in gts])[:, None]
    tau = np.array([gt["transit_time_s"] for gt in gts])[:, None]
    bold = simulate_bold(coupling, frequency_hz=frequency, bifurcation=m.bifurcation,
                         noise=m.neural_noise, tr=tr, n_trs=n_trs, rngs=neural_rngs, kappa=kappa,
                         tau=tau, dt_max=m.dt, burn_in_s=m.burn_in_s, balloon=m.balloon)
    out = []
    for b, (i, gt) in enumerate(subjects):
        data, extra = _measure(design, gt, bold[b], measure_rngs[b], units)
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


def iter_cohort(n_subjects: int, *, atlas: str = "schaefer200", n_trs: int = 1200,
                tr: float | None = None, sites: int | Sequence[Site] = 3, seed: int = 0,
                measurement_noise: float = MEASUREMENT_NOISE, drift: float = 0.0,
                spike_rate: float = 0.0, spike_size: float = 1.5, units: str = "raw",
                effects: LatentEffects = LatentEffects(), model: ModelSettings = ModelSettings(),
                batch_size: int | None = None, jobs: int = 1) -> Iterator[SimulatedRecording]:
    """Simulate a cohort batch by batch, lazily.

    Same parameters as :func:`simulate_cohort`; the parameters are checked at once, and the
    returned iterator yields the recordings in subject order as their batches finish. Use it
    to write large cohorts without holding them in memory
    (``write_cohort(iter_cohort(...), out)``).
    """
    n_subjects = _count(n_subjects, "n_subjects", 1)
    n_trs = _count(n_trs, "n_trs", 2)
    seed = _count(seed, "seed", 0)
    if batch_size is not None:
        batch_size = _count(batch_size, "batch_size", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs == 0:
        raise BrainLMInputError(f"field 'jobs' is {jobs!r}; expected a worker count >= 1, or -1 "
                                "for all cores")
    jobs = int(jobs)
    name = check_atlas_name(atlas)
    site_list = _resolve_sites(sites, tr)
    for field_name, value in (("measurement_noise", measurement_noise), ("drift", drift),
                              ("spike_rate", spike_rate), ("spike_size", spike_size)):
        _non_negative(value, field_name)
    if units not in UNITS:
        raise BrainLMInputError(f"field 'units' is {units!r}; expected one of {list(UNITS)}")
    effects.check()
    model.check()
    design = _design(name, site_list, effects, model, seed)
    if batch_size is None:
        # Enough batches to keep every worker busy.
        workers = jobs if jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + jobs)
        batch_size = max(1, min(auto_batch_size(design.connectome.n_parcels),
                                math.ceil(n_subjects / workers)))
    measurement = {"noise": float(measurement_noise), "drift": float(drift),
                   "spike_rate": float(spike_rate), "spike_size": float(spike_size)}
    subjects = [(i, _subject(design, i, measurement)) for i in range(n_subjects)]
    # One batch shares one time grid, so batches never mix sites with different TRs.
    # Batches are filled in subject order so that recordings can be yielded in order while
    # only a few batches wait in memory.
    batches: list[list[tuple[int, dict]]] = []
    filling: dict[float, list[tuple[int, dict]]] = {}
    for item in subjects:
        batch = filling.setdefault(item[1]["tr"], [])
        batch.append(item)
        if len(batch) == batch_size:
            batches.append(filling.pop(item[1]["tr"]))
    batches += [b for b in filling.values() if b]
    batches.sort(key=lambda b: b[0][0])
    width = max(4, len(str(n_subjects)))
    return _in_subject_order(_run_batches(design, batches, n_trs, units, width, jobs))


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


def simulate_cohort(n_subjects: int, *, atlas: str = "schaefer200", n_trs: int = 1200,
                    tr: float | None = None, sites: int | Sequence[Site] = 3, seed: int = 0,
                    measurement_noise: float = MEASUREMENT_NOISE, drift: float = 0.0,
                    spike_rate: float = 0.0, spike_size: float = 1.5, units: str = "raw",
                    effects: LatentEffects = LatentEffects(),
                    model: ModelSettings = ModelSettings(), batch_size: int | None = None,
                    jobs: int = 1) -> list[SimulatedRecording]:
    """Simulate resting-state fMRI of ``n_subjects`` with known phenotype effects.

    Parameters
    ----------
    n_subjects : int
        Number of subjects (>= 1), one recording each.
    atlas : {"aal2", "schaefer100", "schaefer200", "schaefer400"}
        Parcellation; sets the connectome (see :mod:`brainlm.simulate.connectomes`).
    n_trs : int
        Time points per recording (TRs, >= 2).
    tr : float, optional
        Repetition time for every site, seconds; default: each site's own TR.
    sites : int or sequence of Site
        The first ``sites`` of :data:`DEFAULT_SITES` (1-4), or explicit sites.
    seed : int
        Seed (>= 0); subject ``i`` depends only on ``seed`` and ``i``.
    measurement_noise : float
        Standard deviation of the white measurement noise for a 50-year-old at a site with
        ``noise_scale`` 1, percent of the baseline signal (>= 0).
    drift : float
        Root-mean-square slow drift (periods above 128 s), percent (0: none).
    spike_rate : float
        Motion-like spikes per minute (Poisson; 0: none).
    spike_size : float
        Typical spike amplitude, percent.
    units : {"raw", "percent"}
        ``"raw"``: scanner-like intensities (site baseline x parcel gain x (1 + BOLD%/100),
        around 1,500-12,000; use ``--psc`` in ``brainlm prepare``); ``"percent"``: signal
        change in percent.
    effects : LatentEffects
        Sizes of the latent-variable effects.
    model : ModelSettings
        Neural and hemodynamic settings.
    batch_size : int, optional
        Subjects integrated together (vectorised); default: :func:`auto_batch_size`. Does
        not change the result.
    jobs : int
        Worker processes over batches (-1: all cores); does not change the result.

    Returns
    -------
    list of SimulatedRecording, length n_subjects
        In subject order; ``subject`` ``"0001"``, ``"0002"`` ...; ``timeseries`` float32
        (n_trs, P); ``tr`` the site's TR; ``site``; ``task="rest"``; ``phenotypes``
        ``{"age", "trait", "group", "null_score"}``; ``ground_truth`` the generating parameters.

    Raises
    ------
    BrainLMInputError
        Impossible parameters: no subjects, TR <= 0, unknown atlas, negative noise ...
    """
    return list(iter_cohort(n_subjects, atlas=atlas, n_trs=n_trs, tr=tr, sites=sites, seed=seed,
                            measurement_noise=measurement_noise, drift=drift, spike_rate=spike_rate,
                            spike_size=spike_size, units=units, effects=effects, model=model,
                            batch_size=batch_size, jobs=jobs))


# -- writing ---------------------------------------------------------------------------------
_COLUMN_DESCRIPTIONS = {
    "participant_id": {"Description": "subject identifier"},
    "age": {"Description": "age; lowers global coupling, slows hemodynamics, raises noise",
            "Units": "years"},
    "trait": {"Description": "continuous trait (standard normal); scales coupling inside one "
                             "network"},
    "group": {"Description": "diagnostic group; patients have weaker limbic and "
                             "limbic-prefrontal coupling",
              "Levels": {"0": "control", "1": "patient"}},
    "site": {"Description": "acquisition site; sets TR, noise level and scanner baseline"},
    "null_score": {"Description": "standard normal score with no effect (negative control)"},
}


def write_cohort(recordings: Iterable[Recording], out_dir: str | Path, *, fmt: str = "npy",
                 overwrite: bool = False, settings: dict | None = None) -> Path:
    """Write a cohort as a BIDS-style folder that ``brainlm prepare`` reads as it is.

    Layout::

        OUT/participants.tsv              participant_id, age, trait, group, site, null_score
        OUT/participants.json             column descriptions (BIDS)
        OUT/dataset_description.json      BIDS dataset description; ``settings`` if given
        OUT/sub-0001/func/sub-0001_task-rest_bold.npy   (T, P) float32, or .tsv with a header
        OUT/sub-0001/func/sub-0001_task-rest_bold.json  RepetitionTime (s), atlas, ground truth

    Parameters
    ----------
    recordings : iterable of Recording
        Consumed one at a time (a generator from :func:`iter_cohort` is never held whole).
    out_dir : path
        Folder to create. Everything is written to a temporary folder beside it and renamed
        into place at the end, so ``out_dir`` is either absent or complete.
    fmt : {"npy", "tsv"}
    overwrite : bool
        Replace an existing ``out_dir`` (only once the new cohort is complete).
    settings : dict, optional
        How the cohort was simulated, stored in ``dataset_description.json``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    if fmt not in FORMATS:
        raise BrainLMInputError(f"field 'fmt' is {fmt!r}; expected one of {list(FORMATS)}",
                                str(out))
    with atomic_directory(out, overwrite=overwrite, suffix=".partial") as build:
        rows, atlases = [], set()
        for rec in recordings:
            rows.append(_write_recording(rec, build, fmt))
            atlases.add(rec.atlas.name)
        if not rows:
            raise BrainLMInputError("no recordings to write; expected at least one", str(out))
        table = pd.DataFrame(rows)
        if table["participant_id"].duplicated().any():
            dupes = table.loc[table["participant_id"].duplicated(), "participant_id"].tolist()
            raise BrainLMInputError(f"duplicate subjects {dupes[:5]}; expected one recording per "
                                    "subject", str(out))
        known = [c for c in PHENOTYPES if c in table.columns]
        columns = ["participant_id"] + known + [c for c in table.columns
                                                if c not in known and c != "participant_id"]
        table[columns].to_csv(build / "participants.tsv", sep="\t", index=False, na_rep="n/a")
        described = {c: _COLUMN_DESCRIPTIONS[c] for c in columns if c in _COLUMN_DESCRIPTIONS}
        write_json(build / "participants.json", described)

        description = {"Name": "brainlm synthetic resting-state cohort", "BIDSVersion": "1.9.0",
                       "DatasetType": "derivative",
                       "GeneratedBy": [{"Name": "brainlm simulate", "Version": __version__}],
                       "Atlas": sorted(atlases)}
        if settings is not None:
            description["SimulationSettings"] = settings
        write_json(build / "dataset_description.json", description)
    return out


def _write_recording(rec: Recording, root: Path, fmt: str) -> dict:
    sub = f"sub-{rec.subject}"
    func = root / sub / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = func / f"{sub}_task-{rec.task or 'rest'}_bold"
    if fmt == "npy":
        np.save(stem.with_suffix(".npy"), rec.timeseries)
    else:
        pd.DataFrame(rec.timeseries, columns=rec.atlas.parcel_names).to_csv(
            stem.with_suffix(".tsv"), sep="\t", index=False, float_format="%.7g")
    sidecar = {"RepetitionTime": rec.tr, "TaskName": rec.task or "rest", "Atlas": rec.atlas.name}
    truth = getattr(rec, "ground_truth", None)
    if truth:
        sidecar["GroundTruth"] = truth
    stem.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    row = {"participant_id": sub}
    row.update({k: v for k, v in rec.phenotypes.items() if k != "site"})
    if rec.site is not None:
        row["site"] = rec.site
    return row

