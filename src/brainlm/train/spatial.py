"""The spatial statistics of pretraining data: frames (TRs) sampled from a corpus, their mean and
Ledoit-Wolf covariance; and a parametric model of that covariance by inter-parcel distance and
hemisphere, which carries it to another atlas.

One estimator behind three things: the evaluation's spatial baselines
(:mod:`brainlm.tasks.reconstruction`), the zero-shot baseline stored with every checkpoint
(``spatial_baseline.safetensors``, written by :func:`brainlm.train.pretrain.pretrain`), and the
hybrid model's prior (``BrainLMConfig.spatial_prior_parcels``).

:func:`fit_distance_model` fits :class:`DistanceCovarianceModel` to such statistics and the
parcel coordinates they were computed on (MNI mm); :meth:`DistanceCovarianceModel.statistics`
evaluates it at any other parcel coordinates (the ``spatial_distance`` baseline of an unseen
atlas).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import least_squares
from sklearn.covariance import LedoitWolf

from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import SpatialStatistics

#: Frames (TRs) fitted by the spatial statistics, at most.
SPATIAL_MAX_FRAMES = 50_000


def sample_frames(corpus: Corpus, rows=None, scaler: PreprocessingContract | None = None,
                  max_frames: int = SPATIAL_MAX_FRAMES) -> np.ndarray:
    """Up to ``max_frames`` frames (TRs) of recordings ``rows`` (manifest rows; default: the
    training split), evenly spread over recordings and time (every k-th TR; deterministic).

    ``scaler``: whose robust scaling to read with (see ``Corpus.read``); default the corpus'
    own, which is what pretraining reads. Returns (n_frames, P) float32, model-input units.
    """
    rows = corpus.split_indices("train") if rows is None else np.asarray(rows)
    total = int(corpus.manifest["n_trs"].to_numpy()[rows].sum())
    step = max(1, math.ceil(total / max_frames))
    frames = [np.ascontiguousarray(corpus.read(int(i), scaler=scaler)[::step]) for i in rows]
    return np.concatenate(frames)[:max_frames]


def ledoit_wolf_statistics(frames: np.ndarray, **info: str) -> SpatialStatistics:
    """Mean (P,) and Ledoit-Wolf shrunk covariance (P, P), float64, of ``frames`` (n, P): the
    one estimator behind the spatial baselines and the hybrid's prior. ``info``: where the
    frames came from (strings, stored with the statistics)."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2 or frames.shape[0] < 2:
        raise BrainLMInputError(f"spatial statistics need at least 2 frames of P parcels; got an array "
                                f"of shape {frames.shape}")
    lw = LedoitWolf().fit(frames)
    return SpatialStatistics(lw.location_, lw.covariance_, int(frames.shape[0]), float(lw.shrinkage_),
                             {k: str(v) for k, v in info.items()})


def fit_spatial_statistics(corpus: Corpus, max_frames: int = SPATIAL_MAX_FRAMES) -> SpatialStatistics:
    """The spatial statistics of the corpus' training split as pretraining reads it (its own
    scaling), from up to ``max_frames`` frames; labelled with the split, scaling mode, atlas and
    the corpus' identity."""
    return ledoit_wolf_statistics(sample_frames(corpus, max_frames=max_frames), split="train",
                                  scaling=corpus.contract.scaling, atlas=corpus.atlas.name,
                                  corpus_identity=corpus.identity())


def fit_spatial_prior(model, corpus: Corpus, max_frames: int = SPATIAL_MAX_FRAMES) -> SpatialStatistics:
    """Set a hybrid model's prior mean and Ledoit-Wolf covariance (P, P) to
    :func:`fit_spatial_statistics` of the corpus (the same estimator and frames as the
    evaluation's spatial baseline); returns the statistics."""
    stats = fit_spatial_statistics(corpus, max_frames)
    with torch.no_grad():
        model.prior_mean.copy_(torch.from_numpy(stats.mean))
        model.prior_covariance.copy_(torch.from_numpy(stats.covariance))
    return stats


# -- a covariance model of distance and hemisphere ------------------------------------------------
#: Parcels whose centre lies within this distance (mm) of the midsagittal plane (|x| < MIDLINE_MM:
#: AAL2's vermis, medial parcels of some atlases) belong half to each hemisphere: their centre's
#: sign says little about which side they are on, and a soft membership keeps the model PSD.
MIDLINE_MM = 4.0
#: Smallest share of each parcel's variance left to the nugget (independent parcel noise): keeps
#: the modelled covariance positive definite, so every conditional-mean solve is well posed.
MIN_NUGGET = 0.01
#: Bounds of the length scales (mm): below a voxel, or well beyond the size of a brain, the
#: exponential is a constant the offsets already model.
LENGTH_BOUNDS_MM = (1.0, 400.0)
_AMPLITUDES = ("a_near", "a_hemi", "a_mirror", "b_all", "b_hemi")
_LENGTHS = ("l_near", "l_hemi", "l_mirror")


def hemisphere_membership(xyz: np.ndarray) -> np.ndarray:
    """Left-hemisphere membership of each parcel from its MNI x (mm): 1 for x <= -MIDLINE_MM, 0
    for x >= MIDLINE_MM, 0.5 for a parcel on the midline. xyz: (P, 3) -> (P,) float64."""
    x = np.asarray(xyz, dtype=np.float64)[:, 0]
    return np.where(x <= -MIDLINE_MM, 1.0, np.where(x >= MIDLINE_MM, 0.0, 0.5))


def _pair_geometry(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance, mirrored distance, same-hemisphere weight), each (P, P), for parcel centres
    xyz (P, 3) in mm. The mirrored distance is to the other parcel reflected across x = 0 (its
    homotopic location); the same-hemisphere weight is h_i h_j + (1 - h_i)(1 - h_j) for the
    left-membership h of :func:`hemisphere_membership` (1 or 0 for lateral parcels)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    mirror = xyz * np.array([-1.0, 1.0, 1.0])
    dist = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
    mdist = np.linalg.norm(xyz[:, None, :] - mirror[None, :, :], axis=-1)
    h = hemisphere_membership(xyz)
    same = np.outer(h, h) + np.outer(1 - h, 1 - h)
    return dist, mdist, same


def _smooth_kernel(params: dict, dist: np.ndarray, mdist: np.ndarray, same: np.ndarray) -> np.ndarray:
    """The smooth (non-nugget) part of the modelled correlation, same shape as ``dist``.

    Every term is positive semi-definite for non-negative amplitudes, so their sum is:
    exp(-d/l) is a valid kernel in 3-D (Matern 1/2); ``same`` is a sum of two outer products,
    and its elementwise product with a PSD kernel is PSD (Schur); the mirror term
    k(x, x') + k(x, Rx') for the reflection R across x = 0 is half of
    sum_{g, g' in {1, R}} k(gx, g'x'), a kernel of the feature map phi(x) + phi(Rx).
    """
    p = params
    return (p["a_near"] * np.exp(-dist / p["l_near"])
            + p["a_hemi"] * same * np.exp(-dist / p["l_hemi"])
            + p["a_mirror"] * 0.5 * (np.exp(-dist / p["l_mirror"]) + np.exp(-mdist / p["l_mirror"]))
            + p["b_all"] + p["b_hemi"] * same)


@dataclass(frozen=True)
class DistanceCovarianceModel:
    """Parcel covariance as a function of inter-parcel distance and hemisphere, in model-input
    units; fitted by :func:`fit_distance_model`.

    Correlation of parcels i != j at distance d (mm), mirrored distance m (to j reflected across
    x = 0) and same-hemisphere weight s (1 same side, 0 opposite sides, 0.5 with a midline parcel)::

        r = a_near exp(-d/l_near) + a_hemi s exp(-d/l_hemi)
            + a_mirror (exp(-d/l_mirror) + exp(-m/l_mirror)) / 2 + b_all + b_hemi s

    i.e. a cross-hemisphere part (``a_near``, ``b_all``), an extra within-hemisphere part
    (``a_hemi``, ``b_hemi``) and a homotopic part (``a_mirror``: parcels near each other's mirror
    image co-fluctuate). Each parcel's variance not explained by these terms is the nugget
    (independent noise, at least :data:`MIN_NUGGET`), so the diagonal is 1; where the terms alone
    exceed 1 - MIN_NUGGET the matrix is rescaled to unit diagonal. The result is positive definite
    for any coordinates, its smallest eigenvalue at least MIN_NUGGET (see :func:`_smooth_kernel`).
    The covariance is ``variance * r`` and the mean ``mean`` for every parcel: one pooled value
    each, since a new atlas' parcels have no counterpart to take their own from.

    Amplitudes are unitless, lengths ``l_*`` in mm. ``nugget``: the nugget of a parcel far from
    the midline; ``rmse``: root mean squared error of the fitted off-diagonal correlations;
    ``n_pairs``: the parcel pairs fitted; ``n_parcels``: parcels of the atlas it was fitted on.
    """

    a_near: float
    l_near: float
    a_hemi: float
    l_hemi: float
    a_mirror: float
    l_mirror: float
    b_all: float
    b_hemi: float
    mean: float
    variance: float
    nugget: float
    rmse: float
    n_pairs: int
    n_parcels: int

    @property
    def kernel_parameters(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in _AMPLITUDES + _LENGTHS}

    def correlation(self, xyz: np.ndarray) -> np.ndarray:
        """The modelled correlation matrix (P, P), unit diagonal, positive definite, at parcel
        centres ``xyz`` (P, 3) in MNI mm."""
        xyz = _check_xyz(xyz, "parcel centres")
        k = _smooth_kernel(self.kernel_parameters, *_pair_geometry(xyz))
        diag = np.diag(k).copy()
        # The nugget is what the smooth terms leave of a unit variance, and at least a share
        # MIN_NUGGET of it: then the smallest eigenvalue of the result is at least MIN_NUGGET.
        k[np.diag_indices_from(k)] = np.maximum(1.0, diag / (1.0 - MIN_NUGGET))
        scale = 1.0 / np.sqrt(np.diag(k))
        return k * scale[:, None] * scale[None, :]

    def statistics(self, xyz: np.ndarray, source: SpatialStatistics | None = None, **info: str) -> SpatialStatistics:
        """Mean (P,) and covariance (P, P) at parcel centres ``xyz`` (P, 3, MNI mm), as
        :class:`SpatialStatistics` for :class:`brainlm.tasks.reconstruction.SpatialImputer`.
        ``source``: the statistics the model was fitted on (their frame count and shrinkage are
        carried over); ``info``: labels stored with the result."""
        corr = self.correlation(xyz)
        return SpatialStatistics(np.full(corr.shape[0], self.mean), self.variance * corr,
                                 int(source.n_frames) if source is not None else 2,
                                 float(source.shrinkage) if source is not None else 0.0,
                                 {k: str(v) for k, v in info.items()})

    def describe(self) -> dict:
        """The parameters as a JSON-ready dict (6 significant digits)."""
        return {k: (v if isinstance(v, int) else float(f"{v:.6g}")) for k, v in asdict(self).items()}


def _check_xyz(xyz, what: str) -> np.ndarray:
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] < 2:
        raise BrainLMInputError(f"{what}: array of shape {xyz.shape}; expected (P, 3) MNI x, y, z in mm "
                                "for at least 2 parcels")
    if not np.isfinite(xyz).all():
        raise BrainLMInputError(f"{what}: coordinates hold NaN or infinite values; expected MNI mm")
    return xyz


def fit_distance_model(stats: SpatialStatistics, xyz: np.ndarray) -> DistanceCovarianceModel:
    """Fit :class:`DistanceCovarianceModel` to spatial statistics on parcels at ``xyz``.

    ``stats``: mean (P,) and covariance (P, P) (e.g. a checkpoint's pretraining statistics);
    ``xyz``: (P, 3) the centres of the same P parcels, MNI mm. The kernel parameters are fitted
    by bounded least squares to the P(P-1)/2 off-diagonal correlations (amplitudes >= 0, which
    keeps the model PSD; lengths in :data:`LENGTH_BOUNDS_MM`), from a few starting length
    scales (the problem is not convex in them); the mean and variance are the pooled means of
    the parcels' own. Deterministic.
    """
    xyz = _check_xyz(xyz, "pretraining atlas coordinates")
    cov = np.asarray(stats.covariance, dtype=np.float64)
    if cov.shape != (xyz.shape[0],) * 2:
        raise BrainLMInputError(f"spatial statistics cover {cov.shape[0]} parcels but the atlas gives "
                                f"{xyz.shape[0]} parcel centres; expected one centre (MNI mm) per parcel")
    sd = np.sqrt(np.diag(cov))
    if not (np.isfinite(sd).all() and (sd > 0).all()):
        raise BrainLMInputError("spatial statistics: covariance has a parcel with zero or undefined "
                                "variance; expected a positive definite covariance")
    corr = cov / np.outer(sd, sd)
    iu = np.triu_indices(xyz.shape[0], k=1)
    dist, mdist, same = (g[iu] for g in _pair_geometry(xyz))
    target = corr[iu]
    lo_l, hi_l = np.log(LENGTH_BOUNDS_MM[0]), np.log(LENGTH_BOUNDS_MM[1])
    lower = np.array([0.0] * len(_AMPLITUDES) + [lo_l] * len(_LENGTHS))
    upper = np.array([1.0] * len(_AMPLITUDES) + [hi_l] * len(_LENGTHS))

    def params(theta):
        # Lengths are fitted in log mm: the error surface is far closer to quadratic there.
        out = dict(zip(_AMPLITUDES, theta[:len(_AMPLITUDES)]))
        out.update(zip(_LENGTHS, np.exp(theta[len(_AMPLITUDES):])))
        return out

    def residual(theta):
        return _smooth_kernel(params(theta), dist, mdist, same) - target

    best = None
    for l_near, l_hemi, l_mirror in ((10, 30, 10), (30, 10, 10), (20, 60, 20), (60, 20, 40), (8, 100, 30)):
        start = np.array([0.1, 0.1, 0.1, 0.02, 0.02, *np.log([l_near, l_hemi, l_mirror])])
        fit = least_squares(residual, start, bounds=(lower, upper), x_scale="jac", max_nfev=2000)
        if best is None or fit.cost < best.cost:
            best = fit
    p = params(best.x)
    # The smooth part's diagonal for a parcel far from the midline (its mirror image is far away).
    lateral = p["a_near"] + p["a_hemi"] + p["a_mirror"] / 2 + p["b_all"] + p["b_hemi"]
    return DistanceCovarianceModel(
        **{k: float(v) for k, v in p.items()}, mean=float(np.mean(stats.mean)), variance=float(np.mean(sd ** 2)),
        nugget=float(max(1.0 - lateral, MIN_NUGGET)), rmse=float(np.sqrt(np.mean(best.fun ** 2))),
        n_pairs=int(target.size), n_parcels=int(xyz.shape[0]))
