"""The design of a synthetic cohort: what is simulated, checked before anything runs.

:class:`CohortSpec` names the cohort (subjects, atlas, length, sites, seed, measurement
artefacts, units) and carries the sizes of the latent-variable effects (:class:`LatentEffects`)
and the settings of the neural and hemodynamic model (:class:`ModelSettings`). Each subject gets
latent variables drawn independently of each other, and every one of them acts on the
simulation in a documented way (``docs/simulation.md`` has the full table; the draws are in
:mod:`~brainlm.simulate.subjects`):

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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from brainlm.errors import BrainLMInputError
from brainlm.validation import finite_float, integer_at_least, non_negative_float, positive_float
from brainlm.simulate.connectomes import check_atlas_name
from brainlm.simulate.hemodynamics import BalloonParameters

__all__ = ["DEFAULT_SITES", "GLOBAL_COUPLING", "MEASUREMENT_NOISE", "PHENOTYPES", "UNITS",
           "CohortSpec", "LatentEffects", "ModelSettings", "Site"]

#: Phenotype columns written to ``participants.tsv`` (after ``participant_id``), in order.
PHENOTYPES = ("age", "trait", "group", "site", "null_score")
UNITS = ("raw", "percent")
#: Default measurement noise, percent of the baseline signal (SD of white noise at a site with
#: ``noise_scale`` 1, for a 50-year-old).
MEASUREMENT_NOISE = 0.3
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


@dataclass(frozen=True)
class CohortSpec:
    """What a synthetic cohort is: everything that decides its numbers, checked at construction.

    Two cohorts with equal specs are the same recordings, bit for bit, whatever the batch size
    or number of workers they are simulated with (those are arguments of
    :func:`~brainlm.simulate.cohort.iter_cohort`, not of the spec).

    Parameters
    ----------
    n_subjects : int
        Number of subjects (>= 1), one recording each.
    atlas : {"aal2", "schaefer100", "schaefer200", "schaefer400"}
        Parcellation; sets the connectome (see :mod:`brainlm.simulate.connectomes`). Stored
        lower-cased.
    n_trs : int
        Time points per recording (TRs, >= 2).
    tr : float, optional
        Repetition time for every site, seconds (> 0 and <= 30); default: each site's own TR.
    sites : int or sequence of Site
        The first ``sites`` of :data:`DEFAULT_SITES` (1-4), or explicit sites (stored as a
        tuple); :attr:`site_list` resolves either.
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

    Raises
    ------
    BrainLMInputError
        Impossible values (no subjects, TR <= 0, unknown atlas, negative noise ...), naming
        the field.
    """

    n_subjects: int
    atlas: str = "schaefer200"
    n_trs: int = 1200
    tr: float | None = None
    sites: int | Sequence[Site] = 3
    seed: int = 0
    measurement_noise: float = MEASUREMENT_NOISE
    drift: float = 0.0
    spike_rate: float = 0.0
    spike_size: float = 1.5
    units: str = "raw"
    effects: LatentEffects = field(default_factory=LatentEffects)
    model: ModelSettings = field(default_factory=ModelSettings)

    def __post_init__(self) -> None:
        normal = {"n_subjects": _count(self.n_subjects, "n_subjects", 1),
                  "n_trs": _count(self.n_trs, "n_trs", 2),
                  "seed": _count(self.seed, "seed", 0),
                  "atlas": check_atlas_name(self.atlas)}
        sites = self.sites
        if isinstance(sites, (int, np.integer)) and not isinstance(sites, bool):
            sites = int(sites)
        else:
            sites = tuple(sites) if isinstance(sites, Iterable) else ()  # () names the field
        _resolve_sites(sites, self.tr)
        normal["sites"] = sites
        normal["tr"] = None if self.tr is None else float(self.tr)
        for name in ("measurement_noise", "drift", "spike_rate", "spike_size"):
            normal[name] = _non_negative(getattr(self, name), name)
        if self.units not in UNITS:
            raise BrainLMInputError(f"field 'units' is {self.units!r}; expected one of "
                                    f"{list(UNITS)}")
        for name, kind in (("effects", LatentEffects), ("model", ModelSettings)):
            if not isinstance(getattr(self, name), kind):
                raise BrainLMInputError(f"field {name!r} is {getattr(self, name)!r}; expected a "
                                        f"{kind.__name__}")
        self.effects.check()
        self.model.check()
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    @property
    def site_list(self) -> tuple[Site, ...]:
        """The sites subjects are drawn from, in order, with :attr:`tr` applied if given."""
        return _resolve_sites(self.sites, self.tr)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, fields in order (``effects`` and ``model`` as nested dicts)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if not isinstance(out["sites"], int):
            out["sites"] = [asdict(s) for s in out["sites"]]
        out["effects"], out["model"] = asdict(self.effects), asdict(self.model)
        return out


# -- input checks: brainlm.validation's, with the simulation's naming ("field 'tr' is 0; ...") --
def _finite(value, name, where=None) -> float:
    return finite_float(value, f"field {name!r} is", where)


def _non_negative(value, name, where=None, unit="") -> float:
    return non_negative_float(value, f"field {name!r} is", where, unit=unit)


def _positive(value, name, where=None, upper=None, unit="") -> float:
    return positive_float(value, f"field {name!r} is", where, upper=upper, unit=unit)


def _count(value, name, minimum) -> int:
    return integer_at_least(value, f"field {name!r} is", minimum)


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
