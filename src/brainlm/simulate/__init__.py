"""Synthetic resting-state fMRI with known ground truth (``brainlm simulate``).

Coupled Stuart-Landau oscillators on a real connectome (:mod:`~brainlm.simulate.neural`) drive a
Balloon-Windkessel model (:mod:`~brainlm.simulate.hemodynamics`) to BOLD; subject-level latent
variables (age, trait, group, site) change documented model parameters
(:mod:`~brainlm.simulate.cohort`), so that every downstream task has a right answer.
"""

from brainlm.simulate.cohort import (DEFAULT_SITES, LatentEffects, ModelSettings,
                                     SimulatedRecording, Site, iter_cohort, simulate_cohort,
                                     write_cohort)
from brainlm.simulate.connectomes import Connectome, load_connectome, reference_fc

__all__ = ["DEFAULT_SITES", "Connectome", "LatentEffects", "ModelSettings", "SimulatedRecording",
           "Site", "iter_cohort", "load_connectome", "reference_fc", "simulate_cohort",
           "write_cohort"]
