"""``brainlm simulate``: write a synthetic cohort with known ground truth.

The output folder is BIDS-like and ``brainlm prepare OUT --atlas NAME`` reads it as it is
(add ``--target-tr`` when the sites have different TRs, ``--psc`` for raw units).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from brainlm import __version__
from brainlm.data.progress import ProgressBar
from brainlm.errors import BrainLMInputError
from brainlm.simulate.cohort import iter_cohort
from brainlm.simulate.connectomes import SIMULATION_ATLASES
from brainlm.simulate.design import (DEFAULT_SITES, GLOBAL_COUPLING, MEASUREMENT_NOISE, UNITS,
                                     CohortSpec, LatentEffects, ModelSettings)
from brainlm.simulate.writing import FORMATS, write_cohort

__all__ = ["register", "run"]

_DESCRIPTION = (
    "Simulate resting-state fMRI of a cohort: coupled Stuart-Landau oscillators on a real HCP "
    "connectome drive Balloon-Windkessel hemodynamics to BOLD, sampled at each site's TR, with "
    "measurement noise (optionally drift and motion spikes). Subject-level age, trait, group "
    "and site change documented model parameters, so phenotype prediction, group differences "
    "and harmonization have known answers. Writes sub-*/func/*_bold.npy with JSON sidecars "
    "(RepetitionTime, ground truth) and participants.tsv.")


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``simulate`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("simulate", help="write a synthetic cohort with known ground truth",
                              description=_DESCRIPTION)
    p.add_argument("--subjects", type=int, required=True, metavar="N", help="number of subjects")
    p.add_argument("--atlas", default="schaefer200", type=str.lower, metavar="NAME",
                   help=f"{' | '.join(SIMULATION_ATLASES)} (default: schaefer200)")
    p.add_argument("--out", required=True, help="cohort folder to create")
    g = p.add_argument_group("acquisition")
    g.add_argument("--n-trs", type=int, default=1200, metavar="T",
                   help="TRs per recording (default 1200)")
    g.add_argument("--sites", type=int, default=3, metavar="N",
                   help=f"number of sites, 1-{len(DEFAULT_SITES)} (TRs "
                   f"{', '.join(f'{s.name}: {s.tr:g} s' for s in DEFAULT_SITES)}; default 3)")
    g.add_argument("--tr", type=float, metavar="S", help="one repetition time (s) for every site")
    g.add_argument("--noise", type=float, default=MEASUREMENT_NOISE, metavar="PCT",
                   help="measurement noise SD, percent of the baseline signal "
                   f"(default {MEASUREMENT_NOISE:g})")
    g.add_argument("--drift", type=float, default=0.0, metavar="PCT",
                   help="RMS slow drift, percent (default 0: none)")
    g.add_argument("--spike-rate", type=float, default=0.0, metavar="PER_MIN",
                   help="motion-like spikes per minute (default 0: none)")
    g.add_argument("--spike-size", type=float, default=1.5, metavar="PCT",
                   help="typical spike amplitude, percent (default 1.5)")
    g.add_argument("--units", default="raw", choices=UNITS,
                   help="raw scanner-like intensities (use prepare --psc) or percent signal change")
    g = p.add_argument_group("latent variables")
    g.add_argument("--age-min", type=float, default=20.0, metavar="YEARS",
                   help="youngest age, years (default 20)")
    g.add_argument("--age-max", type=float, default=80.0, metavar="YEARS",
                   help="oldest age, years (default 80)")
    g.add_argument("--patient-fraction", type=float, default=0.5, metavar="P",
                   help="probability of group 1 (patient), default 0.5")
    g.add_argument("--effect-scale", type=float, default=1.0, metavar="X",
                   help="multiplies every latent effect (0: phenotypes without effect; default 1)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    g.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes (-1: all cores)")
    g.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="subjects integrated together (speed only; default: as many as fit "
                   "the CPU cache, 32 at 200 parcels)")
    g.add_argument("--format", default="npy", choices=FORMATS, help="time-series file format")
    g.add_argument("--overwrite", action="store_true", help="replace an existing cohort folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _effects(args: argparse.Namespace) -> LatentEffects:
    base = LatentEffects()
    scale = args.effect_scale
    return replace(base, age_min=args.age_min, age_max=args.age_max,
                   patient_fraction=args.patient_fraction,
                   age_on_coupling=scale * base.age_on_coupling,
                   age_on_hemodynamics=scale * base.age_on_hemodynamics,
                   age_on_noise=scale * base.age_on_noise,
                   trait_on_coupling=scale * base.trait_on_coupling,
                   group_on_coupling=scale * base.group_on_coupling)


def cohort_spec(args: argparse.Namespace) -> CohortSpec:
    """The :class:`CohortSpec` of parsed ``simulate`` arguments (the one place they meet it)."""
    if not isinstance(args.effect_scale, (int, float)) or not args.effect_scale >= 0:
        raise BrainLMInputError(f"option 'effect_scale' is {args.effect_scale!r}; expected a "
                                "number >= 0")
    return CohortSpec(args.subjects, atlas=args.atlas, n_trs=args.n_trs, tr=args.tr,
                      sites=args.sites, seed=args.seed, measurement_noise=args.noise,
                      drift=args.drift, spike_rate=args.spike_rate, spike_size=args.spike_size,
                      units=args.units, effects=_effects(args), model=ModelSettings())


def run(args: argparse.Namespace) -> int:
    """Simulate and write the cohort described by parsed ``simulate`` arguments; 0 on success
    (bad input raises ``BrainLMInputError``, which :func:`brainlm.commands.dispatch` reports)."""
    spec = cohort_spec(args)
    atlas = spec.atlas
    settings = {"brainlm_version": __version__, **spec.to_dict(),
                "global_coupling_at_age_50": GLOBAL_COUPLING[atlas]}
    start = time.perf_counter()
    cohort = iter_cohort(spec, batch_size=args.batch_size, jobs=args.jobs)
    seen = {"trs": set(), "sites": set()}

    def tracked():
        with ProgressBar(not args.quiet, "simulating", args.subjects) as advance:
            for rec in cohort:
                seen["trs"].add(rec.tr)
                seen["sites"].add(rec.site)
                yield rec
                advance()

    out = write_cohort(tracked(), args.out, fmt=args.format, overwrite=args.overwrite,
                       settings=settings)
    seconds = time.perf_counter() - start
    trs = sorted(seen["trs"])
    hint = f" --target-tr {trs[0]:g}" if len(trs) > 1 else ""
    psc = " --psc" if args.units == "raw" else ""
    print(f"wrote {args.subjects} recordings ({args.n_trs} TRs, atlas {atlas}, sites "
          f"{', '.join(sorted(seen['sites']))}, TR {', '.join(f'{t:g}' for t in trs)} s) to "
          f"{out} in {seconds:.1f} s")
    print(f"next: brainlm prepare {out} --out CORPUS --atlas {atlas}{psc}{hint}")
    return 0
