"""The preprocessing contract: one serialisable object that says how raw parcel time series
become model input.

Pretraining fits it once (the robust-scaling statistics come from the training split only), the
corpus and every checkpoint store it, and ``contract.transform(recording)`` on new data repeats
exactly what pretraining saw. Steps, in order:

1. drop the first ``drop_initial_trs`` frames (non-steady-state volumes, at the source TR);
2. find bad parcels (any NaN/Inf; constant; near-constant: values more than
   :data:`~brainlm.data.scaling.MAX_ROBUST_DEVIATION` IQRs from the parcel's median, such as a
   parcel constant most of the time with spikes, or a sentinel value) and apply ``bad_parcels``
   (``"error"`` or ``"zero"``: the parcel is marked missing and reads as 0 after scaling);
3. optional percent signal change (for raw scanner units, e.g. HCP ROI means around 9,500);
4. linear detrend, optional band-pass and confound regression (``nilearn.signal.clean``, at the
   source TR);
5. resampling to ``target_tr`` seconds with a polyphase anti-aliasing filter
   (``scipy.signal.resample_poly``), e.g. UK Biobank 0.735 s and HCP 0.72 s onto one grid, or
   2 s data up-sampled;
6. per-parcel scaling ``(x - centre) / spread``, by default robust (centre = median, spread =
   IQR; ``normalization`` picks min-max or demeaning instead, see
   :data:`brainlm.data.scaling.NORMALIZATIONS`): with ``scaling="pooled"`` (the default) the
   statistics are pooled over the training split and stored in the contract; with
   ``scaling="recording"`` every recording is scaled by its own statistics (computed over the
   whole recording, never over a window), so raw, percent-change, demeaned and z-scored data
   reach the model alike (for robust and per-parcel min-max scaling). An affine ``gain * . + offset``
   (1 and 0 unless a checkpoint asks for an input gain) follows.

Per-recording scaling also bridges units: a contract with percent signal change refuses data
without a positive baseline (demeaned, z-scored) under pooled scaling, but under per-recording
robust or per-parcel min-max scaling such a recording is cleaned without the conversion, which
gives the same model input (percent signal change is ``a * x + b`` per parcel, and these remove
any such map; per-recording demeaning or one min-max over all parcels do not, so they bridge
nothing).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from brainlm.data.atlas import Atlas
from brainlm.data.atomic import write_json
from brainlm.data.recording import Recording
from brainlm.data.scaling import (MAX_ROBUST_DEVIATION, check_normalization, recording_statistics, robust_deviation,
                                  robust_scale)
from brainlm.errors import BrainLMInputError

#: Plausible repetition times (seconds), for the TR of a source and for ``target_tr``: outside,
#: a TR is a unit mistake (milliseconds given as seconds), and resampling to it would multiply
#: or divide the length of every recording by a thousand; one below 1e-6 s would even be
#: stored as 0.
TR_RANGE_S = (0.01, 100.0)

BAD_PARCEL_POLICIES = ("error", "zero")
#: ``"pooled"``: statistics pooled over a training split, stored in the contract;
#: ``"recording"``: each recording by its own statistics (median and IQR, or those of the
#: contract's ``normalization``).
SCALING_MODES = ("pooled", "recording")
#: The fields that say how cleaned data are scaled on read (step 6), apart from the fitted
#: statistics: what ``prepare --like`` copies from a checkpoint besides the cleaning.
SCALING_FIELDS = ("scaling", "normalization")
#: Units of the input, as :func:`input_units` classifies a recording: ``"raw"`` (scanner units
#: with a positive baseline), ``"centred"`` (demeaned or z-scored: no baseline); a contract may
#: also say ``"mixed"`` (its recordings came in both).
UNITS = ("raw", "centred", "mixed")
#: The fields that decide how raw data become the cleaned signal (steps 1-5); scaling is not
#: among them (it is applied on read).
CLEANING_FIELDS = ("target_tr", "drop_initial_trs", "percent_signal_change", "detrend", "high_pass_hz",
                   "low_pass_hz", "confounds", "bad_parcels")
CONTRACT_VERSION = 1


@dataclass
class CleanedSeries:
    """Output of :meth:`PreprocessingContract.clean`.

    Attributes
    ----------
    data : ndarray, shape (T_out, P), float32
        Cleaned signal on the target TR grid, before scaling; missing parcels are NaN.
    tr : float
        Sampling interval of ``data`` in seconds.
    bad_parcels : list of int
        Parcel indices marked missing (policy ``"zero"``).
    units : {"raw", "centred"}
        Units of the input (:func:`input_units`).
    percent_signal_change : bool
        Whether the data were converted to percent signal change (False when the contract
        asks for it but the input is centred and per-recording scaling bridges it).
    """

    data: np.ndarray
    tr: float
    bad_parcels: list[int]
    units: str = "raw"
    percent_signal_change: bool = False


def input_units(x: np.ndarray, good: np.ndarray | None = None) -> str:
    """``"raw"`` when every usable parcel of ``x`` (T, P) has a positive baseline (mean above 5
    standard deviations, as scanner units have), else ``"centred"`` (demeaned or z-scored data).
    ``good``: indices of the usable parcels (default: all)."""
    x = np.asarray(x, dtype=np.float64)
    cols = np.arange(x.shape[1]) if good is None else np.asarray(good, dtype=int)
    if cols.size == 0:
        return "raw"
    mean, sd = x[:, cols].mean(axis=0), x[:, cols].std(axis=0)
    return "raw" if bool(np.all(mean > 5 * sd)) else "centred"


@dataclass
class PreprocessingContract:
    """How raw parcel time series become model input (see module docstring for the steps).

    Parameters
    ----------
    target_tr : float or None
        Output sampling interval in seconds, within :data:`TR_RANGE_S`; ``None`` keeps each
        recording's TR (then all recordings of a corpus must share one TR).
    drop_initial_trs : int
        Frames removed from the start of every recording, counted at its own TR.
    percent_signal_change : bool
        Convert each parcel to ``100 * (x / mean - 1)`` before cleaning.
    detrend : bool
        Remove a linear trend (and the mean) per parcel.
    high_pass_hz, low_pass_hz : float or None
        Butterworth band-pass edges in Hz (``None``: no filter on that side).
    confounds : list of str or None
        Confound columns to regress out (names in ``Recording.confounds``); ``None``: none.
    bad_parcels : {"error", "zero"}
        What to do with parcels holding NaN/Inf, no variance, or values beyond
        :data:`~brainlm.data.scaling.MAX_ROBUST_DEVIATION` IQRs from their median.
    median, iqr : list of float or None
        Pooled scaling statistics per parcel (length P): the centre and the spread of
        ``normalization``, despite the names (kept so stored contracts load): median and IQR
        for ``"robust"``, min and max - min for ``"minmax"``, the one min and max - min over all
        parcels repeated P times for ``"minmax-global"``. Set by fitting on the training split
        (or taken from a checkpoint, see ``scaler_fit``); used when ``scaling="pooled"`` (with
        per-recording scaling they are kept for reference, and None for ``"demean"``).
    scaler_fit : dict
        Where the statistics come from and how they were fitted.
    scaling : {"pooled", "recording"}
        ``"pooled"``: ``(x - median) / iqr`` with the statistics above; ``"recording"``: every
        recording by its own per-parcel centre and spread (no statistics needed). Contracts
        written before this field existed load as ``"pooled"``.
    units : {"raw", "centred", "mixed"} or None
        Units of the data the contract was made for (None: not recorded). With
        ``percent_signal_change`` and pooled scaling only ``"raw"`` data can be used.
    normalization : {"robust", "minmax", "minmax-global", "demean"}
        Which centre and spread scale each parcel (:data:`brainlm.data.scaling.NORMALIZATIONS`):
        median/IQR, per-parcel min/(max - min), one min/(max - min) over all parcels, or
        mean/1. ``"demean"`` needs ``scaling="recording"``. Contracts written before this field
        existed load as ``"robust"``.
    gain, offset : float
        Affine map after the normalization, ``gain * (x - centre) / spread + offset`` (gain > 0).
        1 and 0 for data; the tasks layer sets them from a checkpoint's input gain
        (``brainlm.tasks.model_input.with_input_gain``), so they work with either scaling mode.
        Missing parcels still read as ``fill_missing``.
    """

    target_tr: float | None = None
    drop_initial_trs: int = 0
    percent_signal_change: bool = False
    detrend: bool = True
    high_pass_hz: float | None = None
    low_pass_hz: float | None = None
    confounds: list[str] | None = None
    bad_parcels: str = "error"
    median: list[float] | None = None
    iqr: list[float] | None = None
    scaler_fit: dict = field(default_factory=dict)
    scaling: str = "pooled"
    units: str | None = None
    normalization: str = "robust"
    gain: float = 1.0
    offset: float = 0.0
    version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        src = "preprocessing contract"
        if self.target_tr is not None and not TR_RANGE_S[0] <= self.target_tr <= TR_RANGE_S[1]:
            raise BrainLMInputError(
                f"field 'target_tr' (--target-tr) is {self.target_tr!r} s; expected a repetition time "
                f"within {TR_RANGE_S[0]:g}-{TR_RANGE_S[1]:g} s, as for a source's TR (milliseconds given "
                "as seconds?)", src)
        if int(self.drop_initial_trs) != self.drop_initial_trs or self.drop_initial_trs < 0:
            raise BrainLMInputError(
                f"field 'drop_initial_trs' is {self.drop_initial_trs!r}; expected an integer >= 0", src)
        self.drop_initial_trs = int(self.drop_initial_trs)
        if self.bad_parcels not in BAD_PARCEL_POLICIES:
            raise BrainLMInputError(
                f"field 'bad_parcels' is {self.bad_parcels!r}; expected one of {BAD_PARCEL_POLICIES}", src)
        for name in ("high_pass_hz", "low_pass_hz"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise BrainLMInputError(f"field {name!r} is {v!r}; expected a frequency > 0 Hz or None", src)
        if self.high_pass_hz and self.low_pass_hz and self.high_pass_hz >= self.low_pass_hz:
            raise BrainLMInputError(
                f"band-pass is empty: high_pass_hz {self.high_pass_hz} >= low_pass_hz {self.low_pass_hz}", src)
        if self.scaling not in SCALING_MODES:
            raise BrainLMInputError(
                f"field 'scaling' is {self.scaling!r}; expected one of {SCALING_MODES}", src)
        check_normalization(self.normalization, self.scaling, src)
        if not (np.isfinite(self.gain) and self.gain > 0 and np.isfinite(self.offset)):
            raise BrainLMInputError(f"fields 'gain' {self.gain!r} and 'offset' {self.offset!r}; expected a "
                                    "gain > 0 and a finite offset", src)
        self.gain, self.offset = float(self.gain), float(self.offset)
        if self.units is not None and self.units not in UNITS:
            raise BrainLMInputError(f"field 'units' is {self.units!r}; expected one of {UNITS} or None", src)
        if (self.median is None) != (self.iqr is None):
            raise BrainLMInputError("fields 'median' and 'iqr' must be given together", src)
        if self.median is not None and len(self.median) != len(self.iqr):
            raise BrainLMInputError("fields 'median' and 'iqr' differ in length", src)
        if self.version > CONTRACT_VERSION:
            raise BrainLMInputError(
                f"contract version {self.version} is newer than this brainlm supports "
                f"({CONTRACT_VERSION}); upgrade brainlm", src)

    # -- steps 1-5 -------------------------------------------------------------------------
    def output_tr(self, tr: float) -> float:
        """Sampling interval after resampling, seconds."""
        return float(tr) if self.target_tr is None else float(self.target_tr)

    def output_length(self, n_timepoints: int, tr: float) -> int:
        """Number of TRs after dropping frames and resampling a run of ``n_timepoints`` at ``tr``."""
        n = max(n_timepoints - self.drop_initial_trs, 0)
        up, down = _resampling_ratio(tr, self.output_tr(tr))
        return -(-n * up // down)

    def _bad_parcels(self, x: np.ndarray, names: list[str], source: str) -> np.ndarray:
        """Step 2 on the input ``x`` (T, P) after the dropped frames: the sorted indices of its
        bad parcels (NaN/Inf values; constant; near-constant: values more than
        :data:`~brainlm.data.scaling.MAX_ROBUST_DEVIATION` IQRs from the parcel's median, which
        robust scaling would blow up), or, with ``bad_parcels="error"``, an error naming them.

        The near-constant test uses the parcel's own median and IQR, so it is the same under
        pooled and per-recording scaling. It is made on the input, like the other two: the
        cleaning steps are linear and leave the ratio of a real signal alone (only a parcel whose
        every frequency a filter removes is left as edge transients over nothing)."""
        finite = np.isfinite(x)
        nonfinite = ~finite.all(axis=0)
        # Constant over its finite values (an all-NaN parcel is already bad).
        constant = (np.ptp(np.where(finite, x, x[0]), axis=0) == 0) & ~nonfinite
        varying = np.flatnonzero(~(nonfinite | constant))
        deviation = robust_deviation(x[:, varying])
        far = varying[~(deviation <= MAX_ROBUST_DEVIATION)]
        bad = np.flatnonzero(nonfinite | constant | np.isin(np.arange(x.shape[1]), far))
        if bad.size and self.bad_parcels == "error":
            what = []
            if nonfinite.any():
                what.append(f"NaN/Inf values in parcel(s) {[names[i] for i in np.flatnonzero(nonfinite)[:5]]}"
                            f" ({int((~finite).sum())} value(s), first at TR "
                            f"{int(np.nonzero(~finite)[0][0]) + self.drop_initial_trs})")
            if constant.any():
                what.append(f"constant parcel(s) {[names[i] for i in np.flatnonzero(constant)[:5]]}")
            if far.size:
                what.append(f"near-constant parcel(s) {[names[i] for i in far[:5]]} (values up to "
                            f"{deviation[~(deviation <= MAX_ROBUST_DEVIATION)].max():.3g} IQRs from the median: "
                            "constant most of the time with spikes, or sentinel values, which robust scaling "
                            f"would blow up; expected at most {MAX_ROBUST_DEVIATION:g}, as real BOLD stays "
                            "within about 7)")
            raise BrainLMInputError(
                "; ".join(what) + ". Expected finite, varying signal in every parcel; "
                "use bad_parcels='zero' (--bad-parcels zero) to mark such parcels missing", source)
        return bad

    def clean(self, timeseries: np.ndarray, tr: float, *, confounds=None, parcel_names=None,
              source: str = "recording") -> CleanedSeries:
        """Apply steps 1-5 to a raw array.

        Parameters
        ----------
        timeseries : ndarray, shape (T, P)
            Raw signal; may contain NaN/Inf (handled by the ``bad_parcels`` policy).
        tr : float
            Sampling interval of ``timeseries`` in seconds.
        confounds : pandas.DataFrame, optional
            ``T`` rows of nuisance regressors; required when ``self.confounds`` is set.
        parcel_names : sequence of str, optional
            Used in error messages.

        Returns
        -------
        CleanedSeries
        """
        # A copy: the steps below work in place, and must not change the caller's array.
        x = np.array(timeseries, dtype=np.float64)
        if x.ndim != 2:
            raise BrainLMInputError(f"time series has shape {x.shape}; expected 2-D (T x P)", source)
        names = list(parcel_names) if parcel_names is not None else [str(i) for i in range(x.shape[1])]
        x = x[self.drop_initial_trs:]
        if x.shape[0] < 3:
            raise BrainLMInputError(
                f"{x.shape[0]} time point(s) left after dropping {self.drop_initial_trs} initial "
                "frame(s); expected at least 3", source)

        bad = self._bad_parcels(x, names, source)
        x[:, bad] = 0.0

        good = np.setdiff1d(np.arange(x.shape[1]), bad)
        units = input_units(x, good)
        psc = self.percent_signal_change and not (units == "centred" and self.unit_free)
        if psc:
            _to_percent_signal_change(x, good, names, source)
        conf = self._confound_matrix(confounds, x.shape[0], source) if self.confounds else None

        nyquist = 0.5 / tr
        if self.low_pass_hz is not None and self.low_pass_hz >= nyquist:
            raise BrainLMInputError(
                f"low_pass_hz {self.low_pass_hz} is at or above the Nyquist frequency "
                f"{nyquist:.3f} Hz of TR {tr} s", source)
        if self.detrend or self.high_pass_hz or self.low_pass_hz or conf is not None:
            from nilearn import signal  # deferred: nilearn import is slow and often unused

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=FutureWarning)
                warnings.simplefilter("ignore", category=DeprecationWarning)
                x = signal.clean(x, detrend=self.detrend, standardize=False, confounds=conf,
                                 low_pass=self.low_pass_hz, high_pass=self.high_pass_hz, t_r=tr,
                                 filter="butterworth" if (self.high_pass_hz or self.low_pass_hz) else False)
            x[:, bad] = 0.0

        out_tr = self.output_tr(tr)
        up, down = _resampling_ratio(tr, out_tr)
        if up != down:
            # 'line' padding extends each edge linearly, so the anti-aliasing filter does not
            # pull the first and last TRs towards zero.
            x = resample_poly(x, up, down, axis=0, padtype="line")
        x = x.astype(np.float32)
        x[:, bad] = np.nan
        return CleanedSeries(data=x, tr=out_tr, bad_parcels=bad.tolist(), units=units,
                             percent_signal_change=psc)

    def _confound_matrix(self, confounds, n_rows: int, source: str) -> np.ndarray:
        """The contract's confound columns of ``confounds`` after the dropped initial frames,
        (``n_rows``, C) float64, missing values (fMRIPrep's leading n/a) as 0."""
        if confounds is None:
            raise BrainLMInputError(
                f"contract regresses confounds {self.confounds} but this recording has none", source)
        missing = [c for c in self.confounds if c not in confounds.columns]
        if missing:
            raise BrainLMInputError(
                f"confound column(s) {missing} missing; found {list(confounds.columns)[:10]}", source)
        conf = confounds[self.confounds].to_numpy(dtype=np.float64)[self.drop_initial_trs:]
        if conf.shape[0] != n_rows:
            raise BrainLMInputError(
                f"confounds have {conf.shape[0] + self.drop_initial_trs} rows; expected "
                f"{n_rows + self.drop_initial_trs} (one per TR)", source)
        if not np.isfinite(conf).all():
            # fMRIPrep derivatives columns start with n/a; the first value is the convention.
            conf = np.where(np.isfinite(conf), conf, 0.0)
        return conf

    # -- step 6 ----------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """True when the contract can scale: its pooled statistics are set, or it scales every
        recording by its own statistics (``scaling="recording"``)."""
        return self.scaling == "recording" or self.median is not None

    @property
    def per_recording(self) -> bool:
        """Whether each recording is scaled by its own statistics."""
        return self.scaling == "recording"

    @property
    def unit_free(self) -> bool:
        """Whether the scaled signal does not depend on the units of the input (any map
        ``a * x + b`` per parcel, ``a > 0``, e.g. percent signal change): per-recording robust or
        per-parcel min-max scaling. Demeaning keeps the scale ``a``, and one min and max over all
        parcels keeps the ratios between parcels' ``a``."""
        return self.per_recording and self.normalization in ("robust", "minmax")

    def cleaning(self) -> dict:
        """The settings of steps 1-5 (:data:`CLEANING_FIELDS`): two contracts with equal
        cleaning give the same cleaned signal."""
        return {k: getattr(self, k) for k in CLEANING_FIELDS}

    def scaling_settings(self) -> dict:
        """The scaling mode and normalization (:data:`SCALING_FIELDS`), without statistics."""
        return {k: getattr(self, k) for k in SCALING_FIELDS}

    def scale(self, cleaned: np.ndarray, fill_missing: float = 0.0, *,
              statistics: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``gain * (x - centre) / spread + offset`` per parcel (robust: centre = median, spread
        = IQR); missing (NaN) parcels become ``fill_missing``.

        Parameters
        ----------
        cleaned : ndarray, shape (..., P)
            Cleaned signal. With per-recording scaling and no ``statistics`` it must be a whole
            recording (T, P): its own statistics (of ``normalization``) are used.
        statistics : (centre, spread), each shape (P,), optional
            With per-recording scaling: the statistics of ``normalization`` of the whole
            recording that ``cleaned`` is a window of
            (:meth:`brainlm.data.corpus.Corpus.recording_statistics`). Ignored for pooled scaling.

        Returns
        -------
        ndarray, float32, same shape.
        """
        if not self.is_fitted:
            raise BrainLMInputError("preprocessing contract has no scaling statistics; fit it on a "
                                    "training split first (brainlm prepare does)")
        if self.per_recording:
            if statistics is None:
                if cleaned.ndim != 2:
                    raise BrainLMInputError(f"per-recording scaling needs a whole recording (T x P) "
                                            f"or its statistics; got shape {cleaned.shape}")
                statistics = recording_statistics(cleaned, self.normalization)
            med, iqr = (np.asarray(v, dtype=np.float32) for v in statistics)
        else:
            med = np.asarray(self.median, dtype=np.float32)
            iqr = np.asarray(self.iqr, dtype=np.float32)
        if cleaned.shape[-1] != med.size:
            raise BrainLMInputError(
                f"data has {cleaned.shape[-1]} parcels; the contract was fitted on {med.size}")
        out = robust_scale(cleaned, med, iqr, self.gain, self.offset)
        return np.nan_to_num(out, nan=fill_missing, copy=False)

    def transform(self, recording: Recording) -> np.ndarray:
        """Full contract on one recording: steps 1-6 (per-recording scaling: by the statistics
        of this whole cleaned recording).

        Returns
        -------
        ndarray, shape (T_out, P), float32, on the ``target_tr`` grid.
        """
        cleaned = self.clean(recording.timeseries, recording.tr, confounds=recording.confounds,
                             parcel_names=recording.atlas.parcel_names,
                             source=recording.source or recording.id)
        return self.scale(cleaned.data)

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessingContract":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise BrainLMInputError(f"preprocessing contract has unknown field(s) {unknown}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically: a temporary file renamed into place)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "PreprocessingContract":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise BrainLMInputError("preprocessing contract not found", str(path)) from None
        except json.JSONDecodeError as e:
            raise BrainLMInputError(f"preprocessing contract is not valid JSON ({e})", str(path)) from None
        try:
            return cls.from_dict(d)
        except BrainLMInputError as e:
            raise BrainLMInputError(e.reason, str(path)) from None


@dataclass(frozen=True)
class ReferenceContract:
    """Data that a new cohort is to be prepared like: the contract and atlas of a checkpoint's
    pretraining data (``brainlm prepare --like``). The commands and tasks layers read the
    checkpoint and pass this down; the data layer never reads checkpoints.

    Attributes
    ----------
    contract : PreprocessingContract
        The checkpoint's fitted contract: its cleaning, scaling mode and normalization are
        copied, and its
        pooled statistics are used when the cohort is on ``atlas``.
    atlas : Atlas or None
        The pretraining atlas (None: unknown, statistics are then the cohort's own).
    name : str
        Where it came from (the checkpoint folder or shipped model), for records and messages.
    path : str, optional
        The checkpoint folder: an input, which the corpus may not be written over or into.
    """

    contract: PreprocessingContract
    atlas: Atlas | None
    name: str
    path: str | None = None

    def contract_for(self, atlas: Atlas) -> tuple[PreprocessingContract, bool]:
        """A new contract for a cohort on ``atlas``: the checkpoint's cleaning, scaling mode and
        normalization, with its pooled statistics when ``atlas`` is the checkpoint's. Returns
        (contract, whether the statistics came from the checkpoint)."""
        d = {**self.contract.cleaning(), **self.contract.scaling_settings()}
        out = PreprocessingContract.from_dict(d)
        same = (self.atlas is not None and atlas.matches(self.atlas) and self.contract.median is not None
                and len(self.contract.median) == atlas.n_parcels)
        if same:
            out.median, out.iqr = list(self.contract.median), list(self.contract.iqr)
        return out, same


def _to_percent_signal_change(x: np.ndarray, good: np.ndarray, names: list[str], source: str) -> None:
    """Convert the ``good`` parcels of ``x`` (T, P) float64 to percent signal change, in place:
    ``100 * (x / mean - 1)``; an error for a parcel without a positive baseline (mean at most
    5 s.d.: demeaned or z-scored data)."""
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    weak = good[~(mean[good] > 5 * sd[good])]
    if weak.size:
        raise BrainLMInputError(
            f"percent signal change needs raw BOLD with a positive baseline, but parcel(s) "
            f"{[names[i] for i in weak[:5]]} have mean {mean[weak[0]]:.3g} vs s.d. {sd[weak[0]]:.3g} "
            "(already demeaned or z-scored?). Prepare such data without --psc, or with "
            "per-recording scaling (--scaling recording: raw, demeaned and z-scored data are "
            "then scaled alike); a checkpoint pretrained with --psc and pooled scaling cannot "
            "take them, use one pretrained with --scaling recording (the shipped hcp-fresh)", source)
    x[:, good] = 100.0 * (x[:, good] / mean[good] - 1.0)


def _resampling_ratio(tr_in: float, tr_out: float) -> tuple[int, int]:
    """Integers ``up, down`` with ``up / down ~= tr_in / tr_out`` (to 0.1%)."""
    if abs(tr_in - tr_out) <= 1e-6 * tr_out:
        return 1, 1
    frac = Fraction(tr_in / tr_out).limit_denominator(1000)
    return frac.numerator, frac.denominator
