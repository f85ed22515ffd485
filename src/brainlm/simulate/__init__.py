"""Synthetic resting-state fMRI with known ground truth (``brainlm simulate``).

A :class:`CohortSpec` (:mod:`~brainlm.simulate.design`) names the cohort. Subject-level latent
variables (age, trait, group, site) change documented model parameters
(:mod:`~brainlm.simulate.subjects`); coupled Stuart-Landau oscillators on a real connectome
(:mod:`~brainlm.simulate.neural`) drive a Balloon-Windkessel model
(:mod:`~brainlm.simulate.hemodynamics`) to BOLD; the scanner adds noise, drift and spikes
(:mod:`~brainlm.simulate.measurement`). :mod:`~brainlm.simulate.cohort` runs it batch by batch
and :mod:`~brainlm.simulate.writing` writes the cohort folder, so that every downstream task has
a right answer.
"""

from brainlm.simulate.cohort import SimulatedRecording, iter_cohort, simulate_cohort
from brainlm.simulate.connectomes import Connectome, load_connectome, reference_fc
from brainlm.simulate.design import DEFAULT_SITES, CohortSpec, LatentEffects, ModelSettings, Site
from brainlm.simulate.subjects import effect_masks, limbic_prefrontal
from brainlm.simulate.writing import write_cohort

__all__ = ["DEFAULT_SITES", "CohortSpec", "Connectome", "LatentEffects", "ModelSettings",
           "SimulatedRecording", "Site", "effect_masks", "iter_cohort", "limbic_prefrontal",
           "load_connectome", "reference_fc", "simulate_cohort", "write_cohort"]
