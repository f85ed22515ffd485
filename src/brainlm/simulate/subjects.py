"""Subjects of a synthetic cohort: latent variables -> model parameters.

:func:`build_design` turns a :class:`~brainlm.simulate.design.CohortSpec` into the tables fixed
for the whole cohort (connectome, parcel frequencies, site profiles, effect masks);
:func:`subject_parameters` draws one subject's latent variables (age, trait, group, site,
null score) and derives the documented model parameters from them (the table is in
:mod:`~brainlm.simulate.design`); :func:`effective_coupling` builds each subject's coupling.

On top come individual differences no variable explains (a per-subject global-coupling factor,
per-edge coupling jitter or, for AAL2, one of seven real individual connectomes, and
oscillator frequencies), so that phenotypes are predictable but not perfectly.

Randomness is keyed by subject: subject ``i`` of seed ``s`` is the same in a cohort of 10 or
of 10,000, whatever the batch size or number of jobs, and a larger cohort extends a smaller one.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainlm.data.atlas import Atlas
from brainlm.errors import BrainLMInputError
from brainlm.simulate.connectomes import Connectome, load_connectome
from brainlm.simulate.design import GLOBAL_COUPLING, CohortSpec, LatentEffects, ModelSettings, Site

__all__ = ["CohortDesign", "build_design", "effect_masks", "effective_coupling",
           "limbic_prefrontal", "subject_parameters", "subject_rngs"]

# Parcel names of the AAL2 regions that are limbic by anatomy but carry no Yeo-7 label.
_AAL2_LIMBIC_PREFIXES = ("Hippocampus", "ParaHippocampal", "Amygdala")
_PREFRONTAL_NETWORKS = ("Cont", "Default", "SalVentAttn")


@dataclass
class CohortDesign:
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


def build_design(spec: CohortSpec) -> CohortDesign:
    """The per-cohort tables of ``spec``: connectome, parcel frequencies, site profiles, masks."""
    atlas, sites, effects, model, seed = (spec.atlas, spec.site_list, spec.effects, spec.model,
                                          spec.seed)
    connectome = load_connectome(atlas)
    p = connectome.n_parcels
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    # Parcel frequencies are seeded by the atlas, not the cohort: how far the brain sits from
    # the synchronisation transition depends on them, and must not change with the seed.
    atlas_rng = np.random.default_rng(zlib.crc32(atlas.encode()))
    spread = np.clip(atlas_rng.standard_normal(p), -2.5, 2.5)
    trait_mask, group_mask = effect_masks(connectome.atlas, effects.trait_network)
    return CohortDesign(
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


def subject_rngs(seed: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent streams for one subject: latent draws, neural noise, measurement."""
    children = np.random.SeedSequence(seed, spawn_key=(1, index)).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)


def subject_parameters(design: CohortDesign, index: int, spec: CohortSpec) -> dict[str, Any]:
    """Latent variables and scalar parameters of subject ``index`` (JSON-ready); the
    measurement artefacts (noise, drift, spikes) come from ``spec``."""
    e, m = design.effects, design.model
    rng = subject_rngs(design.seed, index)[0]
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
        "measurement_noise_pct": spec.measurement_noise * site.noise_scale
        * (1.0 + e.age_on_noise * a),
        "drift_pct": spec.drift,
        "spike_rate_per_min": spec.spike_rate,
        "spike_size_pct": spec.spike_size,
        "site_index": site_index,
    }
    if connectome_index is not None:
        gt["connectome_index"] = connectome_index
    return gt


def effective_coupling(design: CohortDesign, subjects: Sequence[dict], rngs) -> np.ndarray:
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
