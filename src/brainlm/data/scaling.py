"""Per-parcel robust scaling, ``(x - median) / IQR``, with statistics pooled over a training split.

A corpus at UK Biobank scale (76k recordings x 490 TRs x 424 parcels) cannot be held in memory
to take exact pooled quantiles, so the statistics are computed in two streaming passes:

1. every recording reports its own per-parcel quartiles (cheap, done while it is cleaned);
2. the pooled quartiles of a mixture lie between the smallest and the largest per-recording
   quartile, so a fine histogram (``n_bins`` per parcel) on that range, filled recording by
   recording and summed, pins them down to a fraction of one bin (linear interpolation inside
   the bin, then numpy's linear interpolation between neighbouring order statistics; the error
   is about one bin, far below 0.1% of the IQR for real data). Histograms add, so the pass parallelises and does not depend on order.

Per-recording scaling (``PreprocessingContract(scaling="recording")``) instead scales each
recording by its own per-parcel median and IQR (:func:`recording_scaling`). Median and IQR are
equivariant under ``a * x + b`` (``a > 0``), so the scaled signal does not depend on the units
of the input: raw scanner values, percent signal change, demeaned and z-scored versions of one
recording reach the model as the same numbers.

Normalizations. Every normalization is one code path, a centre and a spread per parcel,
``(x - centre) / spread`` (:func:`robust_scale`), optionally followed by an affine map
``gain * . + offset`` (a checkpoint's input gain); only the statistics differ
(:data:`NORMALIZATIONS`):

* ``"robust"``: centre = median, spread = IQR (the default);
* ``"minmax"``: centre = min, spread = max - min, per parcel, so values span [0, 1];
* ``"minmax-global"``: one min and one max over every value of every parcel (the same
  centre and spread for all parcels);
* ``"demean"``: centre = mean, spread = 1 (only per recording: a pooled mean would leave each
  recording's own offset in).

Pooled (over a training split) or per recording, see ``PreprocessingContract.scaling``. Pooled
min and max stream cheaply: each recording reports its per-parcel extrema
(:func:`recording_extrema`), and the pooled ones are their minimum and maximum
(:class:`ExtremaRange`). A spread of 0 (a parcel constant over the data fitted on, or never
observed) becomes 1: the parcel is left unscaled, as upstream BrainLM's min-max code leaves it
(brainlm still subtracts the centre, so such a parcel reads as 0; cleaning marks constant
parcels missing anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainlm.errors import BrainLMInputError

QUARTILES = (0.25, 0.5, 0.75)
#: Per-parcel normalizations ``(x - centre) / spread``: which statistics are the centre and the
#: spread (module docstring).
NORMALIZATIONS = ("robust", "minmax", "minmax-global", "demean")
#: Each normalization in words, for records (contracts, corpora) and reports.
NORMALIZATION_FORMULAS = {
    "robust": "(x - median) / IQR per parcel",
    "minmax": "(x - min) / (max - min) per parcel",
    "minmax-global": "(x - min) / (max - min), one min and max over all parcels",
    "demean": "x - mean per parcel",
}
#: Normalizations that only make sense with each recording's own statistics.
PER_RECORDING_ONLY = ("demean",)


def _over_valid_parcels(x: np.ndarray, statistic, rows: int) -> np.ndarray:
    """``statistic`` (float64 [T, P_valid] -> [rows, P_valid]) of the parcels of ``x`` [T, P]
    without NaN; NaN columns (missing parcels) stay NaN. Returns [rows, P] float64."""
    out = np.full((rows, x.shape[1]), np.nan)
    valid = ~np.isnan(x).any(axis=0)
    if valid.any():
        out[:, valid] = statistic(x[:, valid].astype(np.float64))
    return out


#: Largest distance from its median, in IQRs, that a parcel's cleaned values may reach
#: (:func:`robust_deviation`); a parcel beyond it is a bad parcel. Robust scaling divides by the
#: IQR, so a parcel that is constant most of the time, with spikes (a near-constant parcel: IQR
#: near 0), or that holds a sentinel value (3e38 for "missing"), scales to tens to 1e36 where
#: BOLD scales to a few units. For a Gaussian the IQR is 1.35 s.d., so even its one-in-a-million
#: value lies 3.7 IQRs from the median; real BOLD has heavier tails: the embedded HCP
#: (7 x 1200 TRs, AAL2) and Schaefer-100 recordings reach 3.1-6.4 IQRs, by their own statistics or
#: pooled ones, under every cleaning (percent signal change, detrending or not, band-pass,
#: resampling; ``tests/test_bad_values.py``). 50 IQRs (67 s.d.) is 8 times the largest real value,
#: which leaves room for the motion spikes of undenoised data.
MAX_ROBUST_DEVIATION = 50.0


def robust_deviation(x: np.ndarray) -> np.ndarray:
    """Per-parcel largest distance from the median in IQRs, ``max_t |x - median| / IQR``: the
    largest magnitude robust scaling by the parcel's own statistics gives it.

    Parameters
    ----------
    x : ndarray, shape (T, P)
        Cleaned signal (any units: the result is unit-free); NaN columns mark missing parcels.

    Returns
    -------
    ndarray, shape (P,), float64: 0 for a constant parcel, ``inf`` for one with an IQR of 0 that
    still varies (constant in more than half its TRs), NaN for missing parcels. Compare with
    :data:`MAX_ROBUST_DEVIATION`.
    """
    def deviation(v: np.ndarray) -> np.ndarray:
        q25, med, q75 = np.quantile(v, QUARTILES, axis=0)
        far = np.abs(v - med).max(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(far > 0, far / (q75 - q25), 0.0)[None]

    return _over_valid_parcels(x, deviation, 1)[0]


def recording_quartiles(x: np.ndarray) -> np.ndarray:
    """Per-parcel 25th, 50th and 75th percentiles of one recording.

    Parameters
    ----------
    x : ndarray, shape (T, P)
        Cleaned signal; NaN columns mark missing parcels.

    Returns
    -------
    ndarray, shape (3, P), float64; NaN for missing parcels.
    """
    return _over_valid_parcels(x, lambda v: np.quantile(v, QUARTILES, axis=0), 3)


@dataclass
class QuartileHistogram:
    """Streaming per-parcel histogram from which pooled quartiles are read.

    Parameters
    ----------
    lo, hi : ndarray, shape (P,)
        Range per parcel that surely contains the pooled quartiles.
    n_bins : int
        Bins per parcel; the quartile error is below ``(hi - lo) / n_bins``.
    """

    lo: np.ndarray
    hi: np.ndarray
    n_bins: int = 8192

    def __post_init__(self) -> None:
        self.lo = np.asarray(self.lo, dtype=np.float64)
        self.hi = np.asarray(self.hi, dtype=np.float64)
        span = self.hi - self.lo
        # A parcel whose range collapsed (constant in every recording) still needs a valid grid.
        self.width = np.where(span > 0, span, 1.0) / self.n_bins
        # Columns: [below lo] + n_bins + [above hi]
        self.counts = np.zeros((self.lo.size, self.n_bins + 2), dtype=np.int64)

    @classmethod
    def from_quartiles(cls, quartiles: np.ndarray, n_bins: int = 8192) -> "QuartileHistogram":
        """Range from per-recording quartiles, ``quartiles`` of shape (R, 3, P)."""
        bounds = QuartileRange()
        for q in np.asarray(quartiles, dtype=np.float64):
            bounds.add(q)
        return bounds.histogram(n_bins)

    def add(self, x: np.ndarray) -> None:
        """Count the values of one recording, ``x`` of shape (T, P); NaN columns are ignored."""
        p = x.shape[1]
        keep = ~np.isnan(x)
        xf = np.where(keep, x, self.lo).astype(np.float64, copy=False)
        idx = np.floor((xf - self.lo) / self.width)
        np.clip(idx + 1, 0, self.n_bins + 1, out=idx)
        idx = idx.astype(np.int64)
        flat = (idx + np.arange(p) * (self.n_bins + 2))[keep]
        self.counts += np.bincount(flat, minlength=p * (self.n_bins + 2)).reshape(p, self.n_bins + 2)

    def merge(self, other: "QuartileHistogram") -> None:
        """Add the counts of another histogram built on the same range."""
        self.counts += other.counts

    def quantiles(self, probs=QUARTILES) -> np.ndarray:
        """Pooled quantiles, shape (len(probs), P); NaN for parcels never observed."""
        total = self.counts.sum(axis=1)
        cum = np.cumsum(self.counts, axis=1)
        rows = np.arange(self.lo.size)

        def order_statistic(j: np.ndarray) -> np.ndarray:
            # Position of the j-th smallest value (0-based), values spread evenly inside a bin.
            b = np.clip((cum <= j[:, None]).sum(axis=1), 1, self.n_bins)
            before, inside = cum[rows, b - 1], self.counts[rows, b]
            with np.errstate(all="ignore"):
                frac = np.where(inside > 0, (j - before + 0.5) / np.maximum(inside, 1), 0.5)
            return self.lo + (b - 1 + np.clip(frac, 0.0, 1.0)) * self.width

        out = np.empty((len(probs), self.lo.size))
        last = np.maximum(total - 1, 0)
        for k, prob in enumerate(probs):
            # numpy's default ("linear") definition: interpolate between neighbouring order statistics.
            rank = prob * last
            j0 = np.floor(rank)
            w = rank - j0
            out[k] = (1 - w) * order_statistic(j0) + w * order_statistic(np.minimum(j0 + 1, last))
        out[:, total == 0] = np.nan
        return out


class QuartileRange:
    """Running per-parcel range [min of 25th percentiles, max of 75th percentiles] over
    recordings: O(P) memory however many recordings stream through."""

    def __init__(self) -> None:
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def add(self, quartiles: np.ndarray) -> None:
        """One recording's quartiles, shape (3, P) (NaN for missing parcels)."""
        q = np.asarray(quartiles, dtype=np.float64)
        if self.lo is None:
            self.lo, self.hi = q[0].copy(), q[2].copy()
        else:
            # fmin/fmax ignore NaN, so a missing parcel never widens or blanks the range.
            np.fmin(self.lo, q[0], out=self.lo)
            np.fmax(self.hi, q[2], out=self.hi)

    def histogram(self, n_bins: int = 8192) -> QuartileHistogram:
        """An empty histogram on this range (parcels never observed get [0, 0])."""
        lo = np.nan_to_num(self.lo, nan=0.0)
        hi = np.nan_to_num(self.hi, nan=0.0)
        return QuartileHistogram(lo=lo, hi=hi, n_bins=n_bins)


def scaling_from_quartiles(q25: np.ndarray, median: np.ndarray, q75: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and IQR per parcel from pooled quartiles, with the degenerate-parcel policy.

    Returns
    -------
    median, iqr : ndarray, shape (P,), float64
        A parcel never observed gets median 0; one without variance (or unobserved) gets IQR 1,
        so scaling leaves it centred rather than dividing by zero.
    degenerate : ndarray of bool, shape (P,)
    """
    iqr = np.asarray(q75, dtype=np.float64) - np.asarray(q25, dtype=np.float64)
    degenerate = ~(np.isfinite(iqr) & (iqr > 0))
    median = np.asarray(median, dtype=np.float64)
    return np.where(np.isfinite(median), median, 0.0), np.where(degenerate, 1.0, iqr), degenerate


def recording_scaling(x: np.ndarray, quartiles: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One recording's own robust-scaling statistics (per-recording scaling).

    Parameters
    ----------
    x : ndarray, shape (T, P)
        The whole cleaned recording (not a window of it); NaN columns mark missing parcels.
    quartiles : ndarray, shape (3, P), optional
        Its :func:`recording_quartiles`, when already computed.

    Returns
    -------
    median, iqr : ndarray, shape (P,), float32
        A missing or constant parcel gets median 0 (if missing) and IQR 1, as in
        :func:`scaling_from_quartiles`.
    """
    q = recording_quartiles(x) if quartiles is None else np.asarray(quartiles, dtype=np.float64)
    med, iqr, _ = scaling_from_quartiles(q[0], q[1], q[2])
    return med.astype(np.float32), iqr.astype(np.float32)


def recording_extrema(x: np.ndarray) -> np.ndarray:
    """Per-parcel minimum and maximum of one recording.

    Parameters
    ----------
    x : ndarray, shape (T, P)
        Cleaned signal; NaN columns mark missing parcels.

    Returns
    -------
    ndarray, shape (2, P), float64: rows min and max; NaN for missing parcels.
    """
    return _over_valid_parcels(x, lambda v: np.stack([v.min(axis=0), v.max(axis=0)]), 2)


def recording_means(x: np.ndarray) -> np.ndarray:
    """Per-parcel mean of one recording, shape (P,) float64 (NaN for missing parcels)."""
    return _over_valid_parcels(x, lambda v: v.mean(axis=0)[None], 1)[0]


class ExtremaRange:
    """Running per-parcel [min, max] over recordings (pooled min-max statistics): O(P) memory
    however many recordings stream through, and independent of their order."""

    def __init__(self) -> None:
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None
        self.recordings = 0

    def add(self, extrema: np.ndarray) -> None:
        """One recording's :func:`recording_extrema`, shape (2, P) (NaN for missing parcels)."""
        e = np.asarray(extrema, dtype=np.float64)
        if self.lo is None:
            self.lo, self.hi = e[0].copy(), e[1].copy()
        else:
            # fmin/fmax ignore NaN: a parcel missing in one recording keeps the others' range.
            np.fmin(self.lo, e[0], out=self.lo)
            np.fmax(self.hi, e[1], out=self.hi)
        self.recordings += 1

    @property
    def extrema(self) -> np.ndarray:
        """Pooled extrema, shape (2, P) (NaN for parcels never observed)."""
        if self.lo is None:
            raise ValueError("no recording was added")
        return np.stack([self.lo, self.hi])


def check_normalization(normalization: str, scaling: str, source: str = "preprocessing contract") -> None:
    """Error unless ``normalization`` is one of :data:`NORMALIZATIONS` and makes sense with
    ``scaling`` (``"pooled"`` or ``"recording"``)."""
    if normalization not in NORMALIZATIONS:
        raise BrainLMInputError(f"field 'normalization' is {normalization!r}; expected one of {NORMALIZATIONS}",
                                source)
    if normalization in PER_RECORDING_ONLY and scaling != "recording":
        raise BrainLMInputError(f"field 'normalization' is {normalization!r} with scaling {scaling!r}; "
                                f"{normalization!r} subtracts each recording's own mean, so it needs "
                                "scaling 'recording'", source)


def normalization_statistics(normalization: str, *, quartiles: np.ndarray | None = None,
                             extrema: np.ndarray | None = None, means: np.ndarray | None = None
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and spread per parcel of ``normalization`` from summary statistics.

    Parameters
    ----------
    normalization : one of :data:`NORMALIZATIONS`
    quartiles : ndarray, shape (3, P)
        25th, 50th and 75th percentiles (``"robust"``).
    extrema : ndarray, shape (2, P)
        Min and max (``"minmax"``, ``"minmax-global"``).
    means : ndarray, shape (P,)
        Means (``"demean"``).
        NaN in any of them marks a parcel never observed.

    Returns
    -------
    centre, spread : ndarray, shape (P,), float64
        A parcel never observed gets centre 0; a spread that is 0 or undefined becomes 1 (the
        parcel is left unscaled, as upstream's min-max code does, not divided by zero).
        ``"minmax-global"`` repeats its one min and max for every parcel.
    degenerate : ndarray of bool, shape (P,)
        Parcels whose spread was set to 1.
    """
    if normalization == "robust":
        q = np.asarray(quartiles, dtype=np.float64)
        return scaling_from_quartiles(q[0], q[1], q[2])
    if normalization == "demean":
        m = np.asarray(means, dtype=np.float64)
        return np.where(np.isfinite(m), m, 0.0), np.ones_like(m), ~np.isfinite(m)
    e = np.asarray(extrema, dtype=np.float64)
    lo, hi = e[0], e[1]
    if normalization == "minmax-global":
        seen = np.isfinite(lo) & np.isfinite(hi)
        g_lo, g_hi = (float(lo[seen].min()), float(hi[seen].max())) if seen.any() else (0.0, 0.0)
        lo, hi = np.full_like(lo, g_lo), np.full_like(hi, g_hi)
    elif normalization != "minmax":
        raise ValueError(f"unknown normalization {normalization!r}")
    spread = hi - lo
    degenerate = ~(np.isfinite(spread) & (spread > 0))
    return np.where(np.isfinite(lo), lo, 0.0), np.where(degenerate, 1.0, spread), degenerate


def recording_statistics(x: np.ndarray, normalization: str = "robust", quartiles: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """One recording's own centre and spread per parcel for ``normalization`` (per-recording
    scaling).

    Parameters
    ----------
    x : ndarray, shape (T, P)
        The whole cleaned recording (not a window of it); NaN columns mark missing parcels.
    quartiles : ndarray, shape (3, P), optional
        Its :func:`recording_quartiles` (``"robust"``), when already computed.

    Returns
    -------
    centre, spread : ndarray, shape (P,), float32 (see :func:`normalization_statistics`).
    """
    if normalization == "robust":
        return recording_scaling(x, quartiles)
    if normalization == "demean":
        c, s, _ = normalization_statistics(normalization, means=recording_means(x))
    else:
        c, s, _ = normalization_statistics(normalization, extrema=recording_extrema(x))
    return c.astype(np.float32), s.astype(np.float32)


def pooled_scaling(recordings: list[np.ndarray], normalization: str = "robust"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`normalization_statistics` pooled exactly over recordings held in memory (each
    (T_i, P), NaN for missing parcels); corpora stream instead (histogram, :class:`ExtremaRange`).
    ``"demean"`` has no pooled form (:func:`check_normalization` refuses it)."""
    check_normalization(normalization, "pooled", "pooled scaling")
    if normalization == "robust":
        q25, med, q75 = np.nanpercentile(np.concatenate(recordings), [25, 50, 75], axis=0)
        return scaling_from_quartiles(q25, med, q75)
    pooled = ExtremaRange()
    for x in recordings:
        pooled.add(recording_extrema(x))
    return normalization_statistics(normalization, extrema=pooled.extrema)


def robust_scale(x: np.ndarray, median: np.ndarray, iqr: np.ndarray, gain: float = 1.0,
                 offset: float = 0.0) -> np.ndarray:
    """``gain * (x - centre) / spread + offset`` per parcel: every normalization's one formula
    (robust scaling: centre = median, spread = IQR).

    Parameters
    ----------
    x : ndarray, shape (..., P)
    median, iqr : ndarray, shape (P,)
        Centre and spread of the normalization.
    gain, offset : float
        Affine map after the normalization (a checkpoint's input gain; 1 and 0 by default).

    Returns
    -------
    ndarray, float32, same shape as ``x``. (Upstream BrainLM computed ``x - median / iqr``,
    which leaves each parcel's scale untouched; this is the intended formula.)
    """
    out = ((x - median) / iqr).astype(np.float32, copy=False)
    if gain != 1.0 or offset != 0.0:
        out = (out * np.float32(gain) + np.float32(offset)).astype(np.float32, copy=False)
    return out
