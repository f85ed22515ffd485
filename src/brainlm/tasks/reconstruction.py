"""Masked reconstruction on a corpus split, next to baselines scored on the very same masks.

``brainlm evaluate recon CHECKPOINT CORPUS --split test`` tiles every recording of the split
into non-overlapping windows, draws one deterministic token mask per window and mask ratio
(seeded), and scores the model's prediction of the masked values against:

* ``zero``: the scaled median (0), what a model that learned nothing predicts;
* ``parcel_mean``: each parcel's mean over its visible values in the window;
* ``interpolation``: linear interpolation in time within each parcel over its visible samples
  (``numpy.interp``; constant beyond the first and last visible sample);
* the spatial baselines: the Gaussian conditional mean of the masked parcels given the visible
  parcels at the same TR, ``mu_M + S_MO S_OO^-1 (x_O - mu_O)``, with mean and (Ledoit-Wolf
  shrunk) covariance fitted on frames of other subjects. It is linear regression of each hidden
  parcel on whichever parcels are visible, so it handles any mask pattern. Each is labelled by
  where it was fitted:

  - ``spatial`` (*in-cohort*): on the *training* split of the evaluated corpus, when it has one;
  - ``spatial_zero_shot`` (*zero-shot*): on the checkpoint's pretraining data (the statistics
    stored with the checkpoint, ``spatial_baseline.safetensors``), when the corpus is on the
    checkpoint's atlas and read with its scaling, and is not the pretraining corpus itself
    (there the in-cohort fit is the same fit).
  - ``spatial_distance`` (*zero-shot*, any atlas): a parametric covariance of inter-parcel
    distance and hemisphere (:class:`~brainlm.train.spatial.DistanceCovarianceModel`) fitted to
    those same stored statistics at the checkpoint's atlas coordinates, then evaluated at the
    corpus' parcel coordinates (MNI mm). It is the zero-shot spatial baseline of an unseen atlas
    (``transfer_atlas``), where ``spatial_zero_shot`` has no entries for the parcels.
  - ``spatial_in_recording`` (*in-recording*, any atlas): fitted, for each scored window, on
    the frames of the *other* windows of the same recording, never on the scored window's own
    TRs. It needs every scored recording to have at least two windows.

  A spatial baseline that cannot be fitted is left out, and the result says why.

Metrics over masked values only: R^2 pooled over all masked values (1 - SSE/SST, SST around
the mean of the masked targets, as in the BrainLM paper), MSE and Pearson r; and the same per
parcel (R^2 not clipped, so a parcel predicted worse than its masked mean is negative).
Statistics are accumulated as sums, so the split is streamed window batch by window batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch

from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.checkpoints.folder import SpatialStatistics, pretraining_spatial_statistics
from brainlm.model.masking import MaskSpec
from brainlm.model.precision import resolve_precision
from brainlm.tasks.inference import predict_masked
from brainlm.tasks.model_input import (is_model, iter_model_input, load_model, model_scaler, model_windows,
                                       open_corpus, parcel_xyz)
from brainlm.tasks.results import Record, TaskResult
from brainlm.tasks.results_folder import check_results_folder, publish_results
from brainlm.tasks.settings import resolve_settings
from brainlm.train.spatial import (MIDLINE_MM, SPATIAL_MAX_FRAMES, fit_distance_model, ledoit_wolf_statistics,
                                   sample_frames)

__all__ = ["BASELINES", "SPATIAL_BASELINES", "ReconstructionResult", "ReconstructionScores",
           "ReconstructionSettings", "SpatialImputer", "evaluate_reconstruction", "impute_interpolation", "impute_parcel_mean",
           "reconstruction_markdown"]

#: Spatial baselines by where they were fitted: method key -> (fit source, table label).
SPATIAL_BASELINES = {
    "spatial": ("in-cohort", "spatial (in-cohort)"),
    "spatial_zero_shot": ("zero-shot", "spatial (zero-shot)"),
    "spatial_distance": ("zero-shot", "spatial (distance model, zero-shot)"),
    "spatial_in_recording": ("in-recording", "spatial (in-recording)"),
}
#: Spatial baselines fitted once for the whole corpus (the in-recording one is fitted per window).
_CORPUS_SPATIAL = ("spatial", "spatial_zero_shot", "spatial_distance")
#: Baselines scored next to the model, in table order (a spatial one only when it could be fitted).
BASELINES = ("zero", "parcel_mean", "interpolation", *SPATIAL_BASELINES)
DEFAULT_RATIOS = (0.2, 0.5, 0.75, 0.9)


# -- baselines ---------------------------------------------------------------------------------
def impute_parcel_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each parcel's mean over its visible values; 0 where a parcel has none.

    x, mask: (T, P); mask True = hidden. Returns (T, P) float32 predictions.
    """
    visible = ~mask
    n = visible.sum(axis=0)
    mean = np.where(n > 0, (x * visible).sum(axis=0) / np.maximum(n, 1), 0.0)
    return np.broadcast_to(mean, x.shape).astype(np.float32)


def impute_interpolation(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Linear interpolation in time within each parcel over its visible samples.

    x, mask: (T, P); mask True = hidden. Values before the first (after the last) visible sample
    take its value; a parcel with no visible sample is predicted as 0 (the scaled median).
    Returns (T, P) float32.
    """
    t = np.arange(x.shape[0])
    out = np.zeros_like(x, dtype=np.float32)
    for p in range(x.shape[1]):
        vis = ~mask[:, p]
        if vis.any():
            out[:, p] = np.interp(t, t[vis], x[vis, p])
    return out


class SpatialImputer:
    """Masked parcels predicted from the visible parcels at the same TR.

    Fits a mean ``mu`` (P,) and a Ledoit-Wolf shrunk covariance ``S`` (P, P) on training frames
    (one frame = the P parcel values at one TR); :meth:`impute` returns the conditional mean
    ``mu_M + S_MO S_OO^-1 (x_O - mu_O)`` for every TR, grouping TRs that share a mask pattern
    (token masks are constant within a patch) so each pattern costs one linear solve.
    """

    def fit(self, frames: np.ndarray) -> "SpatialImputer":
        """frames: (n_frames, P) float; returns self."""
        return self.use(ledoit_wolf_statistics(frames))

    def use(self, stats: SpatialStatistics) -> "SpatialImputer":
        """Statistics fitted elsewhere (e.g. stored with a checkpoint); returns self."""
        self.mean_, self.covariance_ = np.asarray(stats.mean, np.float64), np.asarray(stats.covariance, np.float64)
        self.shrinkage_, self.n_frames_ = float(stats.shrinkage), int(stats.n_frames)
        return self

    def impute(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """x, mask: (T, P), mask True = hidden -> (T, P) float32 predictions."""
        mu, cov = self.mean_, self.covariance_
        out = np.broadcast_to(mu, x.shape).astype(np.float64).copy()
        patterns, which = np.unique(mask, axis=0, return_inverse=True)
        for k, hidden in enumerate(patterns):
            rows = np.flatnonzero(which == k)
            obs, mis = np.flatnonzero(~hidden), np.flatnonzero(hidden)
            if obs.size == 0 or mis.size == 0:
                continue
            resid = x[np.ix_(rows, obs)].T - mu[obs, None]  # (|O|, n_rows)
            coef = np.linalg.solve(cov[np.ix_(obs, obs)], resid)
            out[np.ix_(rows, mis)] = (mu[mis, None] + cov[np.ix_(mis, obs)] @ coef).T
        return out.astype(np.float32)


# -- scores ------------------------------------------------------------------------------------
@dataclass
class ReconstructionScores:
    """Running sums over masked values, per parcel, for one method at one mask ratio."""

    n_parcels: int
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in ("n", "t", "tt", "p", "pp", "tp", "sse"):
            self.sums.setdefault(k, np.zeros(self.n_parcels, dtype=np.float64))

    def update(self, target: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> None:
        """target, prediction, mask: (..., P); only values where ``mask`` is True count."""
        m = mask.reshape(-1, self.n_parcels).astype(np.float64)
        t = target.reshape(-1, self.n_parcels).astype(np.float64) * m
        p = prediction.reshape(-1, self.n_parcels).astype(np.float64) * m
        s = self.sums
        s["n"] += m.sum(0)
        s["t"] += t.sum(0)
        s["tt"] += (t * t).sum(0)
        s["p"] += p.sum(0)
        s["pp"] += (p * p).sum(0)
        s["tp"] += (t * p).sum(0)
        s["sse"] += ((t - p) ** 2).sum(0)

    @staticmethod
    def _metrics(n, t, tt, p, pp, tp, sse):
        with np.errstate(invalid="ignore", divide="ignore"):
            sst = tt - t * t / n
            cov = tp - t * p / n
            var_p = pp - p * p / n
            return {"r2": 1.0 - sse / sst, "mse": sse / n, "pearson_r": cov / np.sqrt(sst * var_p)}

    def pooled(self) -> dict[str, float]:
        """R^2 (1 - SSE/SST over all masked values), MSE, Pearson r (None when undefined),
        number of values."""
        tot = {k: v.sum() for k, v in self.sums.items()}
        # A constant prediction (the zero baseline) has no correlation: null, not NaN.
        out = {k: float(v) if np.isfinite(v) else None for k, v in self._metrics(**tot).items()}
        return {**out, "n_values": int(tot["n"])}

    def per_parcel(self) -> dict[str, np.ndarray]:
        """(P,) arrays of R^2 (not clipped), MSE, Pearson r, and masked value counts; NaN where a
        parcel has fewer than two masked values or no variance."""
        out = self._metrics(**self.sums)
        return {**out, "n_values": self.sums["n"].astype(int)}


# -- evaluation --------------------------------------------------------------------------------
#: How results of a hybrid model (``BrainLMConfig.spatial_prior_parcels``) are labelled.
HYBRID_LABEL = "BrainLM hybrid (decoder corrects the spatial estimate)"


def _mask_seed(seed: int, ratio: float) -> int:
    # One stream per (seed, ratio), independent of which other ratios are evaluated.
    return int(seed) * 100_003 + int(round(ratio * 10_000))


def _spatial_baselines(model, corpus: Corpus, scaler, max_frames: int
                       ) -> tuple[dict[str, SpatialImputer], dict[str, dict]]:
    """The spatial baselines this corpus can have, and a description of each (fitted or not).

    Returns ``({method: imputer}, {method: {"fit", "label", "available", and "fitted_on",
    "frames", "ledoit_wolf_shrinkage" or "reason"}})`` for the methods of
    :data:`SPATIAL_BASELINES`.
    """
    imputers, info = {}, {}

    def add(method, imputer=None, *, fitted_on=None, reason=None, **extra):
        fit, label = SPATIAL_BASELINES[method]
        entry = {"fit": fit, "label": label, "available": imputer is not None}
        if imputer is None:
            entry["reason"] = reason
        else:
            imputers[method] = imputer
            entry.update(fitted_on=fitted_on, frames=imputer.n_frames_,
                         ledoit_wolf_shrinkage=round(imputer.shrinkage_, 6), **extra)
        info[method] = entry

    splits = sorted(set(corpus.manifest["split"]))
    if "train" in splits:
        add("spatial", SpatialImputer().fit(sample_frames(corpus, corpus.split_indices("train"), scaler, max_frames)),
            fitted_on="the training split of this corpus (other subjects of the evaluated cohort)",
            fit_split="train")
    else:
        add("spatial", reason=f"the corpus has no training split (splits present: {', '.join(splits)}): "
                              "no other subjects of this cohort to fit it on")

    stats = pretraining_spatial_statistics(model)
    reason = _zero_shot_refusal(model, corpus, scaler, stats)
    if reason is None:
        add("spatial_zero_shot", SpatialImputer().use(stats),
            fitted_on="the checkpoint's pretraining data (its training split), never this cohort",
            fit_split=stats.info.get("split", "train"), pretraining_atlas=stats.info.get("atlas"))
    else:
        add("spatial_zero_shot", reason=reason)

    reason = _distance_model_refusal(model, stats)
    if reason is None:
        dm = fit_distance_model(stats, np.asarray(model.atlas.xyz))
        n_midline = int(np.sum(np.abs(np.asarray(corpus.atlas.xyz)[:, 0]) < MIDLINE_MM))
        fitted = dm.statistics(np.asarray(corpus.atlas.xyz), stats, model="distance", atlas=corpus.atlas.name)
        add("spatial_distance", SpatialImputer().use(fitted),
            fitted_on=(f"the checkpoint's pretraining data (its training split), as a covariance of "
                       f"inter-parcel distance and hemisphere fitted at the pretraining atlas' coordinates "
                       f"and evaluated at this corpus' ({corpus.atlas.name}, {corpus.atlas.n_parcels} "
                       "parcels); never this cohort"),
            fit_split=stats.info.get("split", "train"), pretraining_atlas=model.atlas.name,
            distance_model=dm.describe(),
            hemisphere=(f"from the sign of MNI x (x < 0 left); parcels with |x| < {MIDLINE_MM:g} mm count "
                        f"half to each hemisphere ({n_midline} of this corpus' parcels)"))
    else:
        add("spatial_distance", reason=reason)
    return imputers, info

def _zero_shot_refusal(model, corpus: Corpus, scaler, stats: SpatialStatistics | None) -> str | None:
    """Why the pretraining statistics cannot serve as this corpus' zero-shot spatial baseline,
    or None when they can."""
    if stats is None:
        return ("the checkpoint carries no spatial statistics of its pretraining data "
                "(spatial_baseline.safetensors; written before they were stored, an imported "
                "upstream model, or a model built in memory)")
    if model.atlas is None or not corpus.atlas.matches(model.atlas) or stats.n_parcels != corpus.atlas.n_parcels:
        return (f"the corpus is on atlas {corpus.atlas.name!r} ({corpus.atlas.n_parcels} parcels), not the "
                "checkpoint's pretraining atlas"
                + (f" {model.atlas.name!r} ({model.atlas.n_parcels} parcels)" if model.atlas is not None else "")
                + ": the pretraining covariance has no entries for these parcels")
    if scaler is not model.contract:
        return ("the corpus is read with other scaling statistics than the checkpoint's, so the "
                "pretraining statistics are in other units")
    if stats.info.get("corpus_identity") == corpus.identity():
        return ("the corpus is the checkpoint's pretraining corpus: the pretraining statistics are "
                "the in-cohort fit (spatial)")
    return None


def _distance_model_refusal(model, stats: SpatialStatistics | None) -> str | None:
    """Why the distance model cannot be fitted on the checkpoint's pretraining statistics, or
    None when it can."""
    # The distance model needs the pretraining statistics and the coordinates of the parcels
    # they were computed on; the corpus' parcels always have coordinates (an Atlas requires them).
    if stats is None:
        return ("the checkpoint carries no spatial statistics of its pretraining data "
                "(spatial_baseline.safetensors) to fit the distance model on")
    if model.atlas is None:
        return ("the checkpoint records no atlas (atlas.json), so its pretraining parcels have no "
                "coordinates to fit the distance model on")
    if stats.n_parcels != model.atlas.n_parcels:
        return (f"the checkpoint's pretraining statistics cover {stats.n_parcels} parcels but its atlas "
                f"{model.atlas.name!r} has {model.atlas.n_parcels}")
    return None


def _in_recording_imputers(windows: np.ndarray) -> list[SpatialImputer] | None:
    """One imputer per window of a recording, each fitted (mean and Ledoit-Wolf covariance) on
    the frames of every *other* window, never on its own TRs. windows: (W, T, P) -> W imputers,
    or None when the recording has a single window (nothing else to fit on)."""
    if len(windows) < 2:
        return None
    return [SpatialImputer().fit(np.delete(windows, w, axis=0).reshape(-1, windows.shape[-1]))
            for w in range(len(windows))]


@dataclass(frozen=True)
class ReconstructionSettings:
    """How :func:`evaluate_reconstruction` scores a split.

    Attributes
    ----------
    split : {"test", "val", "train"}
        Recordings to reconstruct. The in-cohort spatial baseline (``spatial``) is fitted on the
        corpus' ``train`` split when it has one; the zero-shot one (``spatial_zero_shot``) comes
        from the checkpoint's stored pretraining statistics when the corpus is on its atlas, the
        distance model (``spatial_distance``) from them on any atlas; ``spatial_in_recording``
        from the other windows of each scored window's recording.
    ratios : tuple of float
        Fractions of tokens masked (paper: 0.2, 0.75, 0.9).
    strategy : {"random", "parcels", "time"}
        Mask strategy (see :class:`~brainlm.model.masking.MaskSpec`).
    seed : int
        Mask seed: the same seed gives the same masks and the same numbers.
    max_recordings : int, optional
        Use only the first N recordings of the split (a quick run).
    spatial_max_frames : int
        Training frames (TRs) used to fit the in-cohort spatial baseline.
    batch_size : int
        Windows per forward pass.
    transfer_atlas : bool
        Read a corpus on another atlas through parcel coordinates.
    device, precision : str
        The model's forward passes: ``32-true`` (default), ``bf16-mixed`` or ``auto``
        (:func:`brainlm.model.precision.resolve_precision`); the baselines are always float64/32.
    """

    split: str = "test"
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    strategy: str = "random"
    seed: int = 0
    max_recordings: int | None = None
    spatial_max_frames: int = SPATIAL_MAX_FRAMES
    batch_size: int = 16
    transfer_atlas: bool = False
    device: str = "cpu"
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if self.strategy not in ("random", "parcels", "time"):
            raise BrainLMInputError(f"mask strategy {self.strategy!r}; expected random, parcels or time")
        ratios = tuple(float(r) for r in self.ratios)
        if not ratios or len(set(ratios)) != len(ratios):
            raise BrainLMInputError(f"mask ratios {list(ratios)}; expected distinct fractions")
        object.__setattr__(self, "ratios", ratios)
        for r in ratios:
            MaskSpec(self.strategy, r)  # validates each ratio
        # An unknown or impossible precision: refused before any work.
        resolve_precision(self.precision, self.device)


@dataclass(frozen=True)
class MethodScores(Record):
    """One method's pooled metrics over the masked values at one ratio (None where undefined),
    and its per-parcel arrays (P,) of the same metrics (null where undefined)."""

    r2: float | None
    mse: float | None
    pearson_r: float | None
    n_values: int
    per_parcel: dict[str, list]


@dataclass(frozen=True)
class RatioScores(Record):
    """Every method's scores at one mask ratio, on the same masked values."""

    mask_ratio: float
    methods: dict[str, MethodScores]

    def best_baseline(self) -> str:
        """The baseline with the highest R² at this ratio (one with an undefined R² is skipped)."""
        present = [m for m, s in self.methods.items() if m != "brainlm" and s.r2 is not None]
        return max(present, key=lambda m: self.methods[m].r2)


@dataclass(frozen=True)
class ParcelTable(Record):
    """The scored atlas: parcel names, MNI centres (mm) and network labels (or None)."""

    names: list[str]
    xyz_mm: list[list[float]]
    networks: list[str] | None
    atlas: str


@dataclass(frozen=True)
class ReconstructionResult(TaskResult):
    """What :func:`evaluate_reconstruction` returns and writes as ``reconstruction.json``.

    ``methods`` are the methods scored, in table order; ``spatial_baselines`` says, for each of
    :data:`SPATIAL_BASELINES`, where it was fitted (with the distance model's parameters) or why
    it was left out; ``spatial_baseline`` is the in-cohort fit, or None; ``results`` holds per
    ratio the pooled metrics and per-parcel arrays of every method."""

    KIND: ClassVar[str] = "reconstruction"

    task: str
    checkpoint: str | None
    corpus: str
    split: str
    strategy: str
    seed: int
    mask_ratios: list[float]
    window_trs: int
    precision: str
    brainlm_label: str
    patch_trs: int | None
    recordings: int
    recordings_too_short: int
    windows: int
    units: str
    methods: list[str]
    method_labels: dict[str, str]
    spatial_baselines: dict[str, dict]
    spatial_baseline: dict | None
    parcels: ParcelTable
    results: list[RatioScores]
    seconds: float

    def at(self, ratio: float) -> RatioScores:
        """The scores at mask ratio ``ratio``; an error naming the ratios scored otherwise."""
        for entry in self.results:
            if entry.mask_ratio == ratio:
                return entry
        raise BrainLMInputError(f"no scores at mask ratio {ratio:g}; scored at {self.mask_ratios}")

    def middle_ratio(self) -> float:
        """0.75 (the paper's headline ratio) when scored, else the middle ratio scored."""
        return 0.75 if 0.75 in self.mask_ratios else self.mask_ratios[len(self.mask_ratios) // 2]


@dataclass
class _Tally:
    """What the pass over a split collects: scores per ratio and method, and counts."""

    scores: dict
    windows: int = 0
    used: int = 0
    too_short: int = 0
    single_window: list = field(default_factory=list)
    in_recording_frames: list = field(default_factory=list)
    in_recording_shrinkage: list = field(default_factory=list)


def evaluate_reconstruction(checkpoint: str | Path | BrainLM, corpus: str | Path | Corpus,
                            settings: ReconstructionSettings | None = None, *, out: str | Path | None = None,
                            overwrite: bool = False, **options) -> ReconstructionResult:
    """Masked reconstruction of a corpus split by the model and by the baselines, same masks.

    Parameters
    ----------
    checkpoint : path or BrainLM
        A checkpoint folder (``RUN/model``) or a loaded model.
    corpus : path or Corpus
        Prepared with the checkpoint's cleaning settings (and atlas, unless ``transfer_atlas``).
    settings : ReconstructionSettings, optional
        What to score and how; or give its fields as keywords (``split="val", seed=1``), not both.
    out : path, optional
        Folder for ``reconstruction.json`` and ``reconstruction.md``, published only when
        everything succeeded; an existing folder needs ``overwrite``.

    Returns
    -------
    ReconstructionResult
    """
    t0 = time.perf_counter()
    s = resolve_settings(ReconstructionSettings, settings, options)
    out = check_results_folder(out, overwrite)
    model = load_model(checkpoint, s.device)
    precision = resolve_precision(s.precision, s.device, getattr(model.config, "dim", None))
    corpus = open_corpus(corpus)
    scaler = model_scaler(model, corpus, transfer_atlas=s.transfer_atlas)
    rows = corpus.split_indices(s.split)
    if s.max_recordings is not None:
        rows = rows[:s.max_recordings]
    spatial, spatial_info = _spatial_baselines(model, corpus, scaler, s.spatial_max_frames)
    tally = _score_split(model, corpus, rows, scaler, spatial, s, precision)
    if tally.windows == 0:
        raise BrainLMInputError(f"no recording of split {s.split!r} has a full window of "
                                f"{model.config.window_trs} TRs", corpus.path)
    spatial_info["spatial_in_recording"] = _in_recording_info(tally, model.config.window_trs)
    result = _result(checkpoint, model, corpus, s, precision, tally, spatial_info, time.perf_counter() - t0)
    if out is not None:
        publish_results(out, {"reconstruction.json": result.dumps(indent=1),
                              "reconstruction.md": reconstruction_markdown(result)})
    return result


def _score_split(model, corpus: Corpus, rows, scaler, spatial: dict, s: ReconstructionSettings,
                 precision: str) -> _Tally:
    """Score every method on the same masks, one recording in memory at a time. A recording
    shorter than a window is counted and skipped; the in-recording baseline is scored wherever a
    recording has a second window to fit it on (left out at the end otherwise)."""
    cfg, p = model.config, corpus.atlas.n_parcels
    scored = ("brainlm",) + tuple(b for b in BASELINES if b not in SPATIAL_BASELINES or b in spatial
                                  or b == "spatial_in_recording")
    tally = _Tally({r: {m: ReconstructionScores(p) for m in scored} for r in s.ratios})
    specs = [MaskSpec(s.strategy, r) for r in s.ratios]
    generators = {r: torch.Generator().manual_seed(_mask_seed(s.seed, r)) for r in s.ratios}
    xyz = parcel_xyz(corpus.atlas)
    for row, x in zip(rows, iter_model_input(corpus, rows, scaler)):
        if x.shape[0] < cfg.window_trs:
            tally.too_short += 1
            continue
        wins, _ = model_windows(model, x)
        tally.used += 1
        tally.windows += len(wins)
        own = _in_recording_imputers(wins.numpy())
        if own is None:
            tally.single_window.append(str(corpus.manifest["recording_id"].iat[int(row)]))
        else:
            tally.in_recording_frames += [imp.n_frames_ for imp in own]
            tally.in_recording_shrinkage += [imp.shrinkage_ for imp in own]
        for r, spec in zip(s.ratios, specs):
            mask_tok = model.sample_mask(spec, len(wins), p, generators[r])
            pred = predict_masked(model, wins, xyz, mask_tok, s.batch_size, precision).numpy()
            _score_window_batch(tally.scores[r], wins.numpy(), pred,
                                model.token_mask_to_values(mask_tok).cpu().numpy(), spatial, own)
    return tally


def _score_window_batch(sc: dict, target: np.ndarray, pred: np.ndarray, mask: np.ndarray, spatial: dict,
                        own: list | None) -> None:
    """Add one recording's windows (W, T, P) at one ratio to every method's scores."""
    sc["brainlm"].update(target, pred, mask)
    sc["zero"].update(target, np.zeros_like(target), mask)
    for w in range(len(target)):
        xw, mw = target[w], mask[w]
        sc["parcel_mean"].update(xw, impute_parcel_mean(xw, mw), mw)
        sc["interpolation"].update(xw, impute_interpolation(xw, mw), mw)
        for name, imputer in spatial.items():
            sc[name].update(xw, imputer.impute(xw, mw), mw)
        if own is not None:
            sc["spatial_in_recording"].update(xw, own[w].impute(xw, mw), mw)


def _in_recording_info(tally: _Tally, window_trs: int) -> dict:
    """Where the in-recording baseline was fitted, or why it is left out: every method is scored
    on the very same masked values, so a baseline that cannot predict one recording's windows is
    left out for the whole split."""
    fit, label = SPATIAL_BASELINES["spatial_in_recording"]
    if tally.single_window:
        return {"fit": fit, "label": label, "available": False,
                "reason": (f"{len(tally.single_window)} of the {tally.used} scored recordings have a single "
                           f"window of {window_trs} TRs (e.g. {', '.join(tally.single_window[:3])}): no other "
                           "window of the same recording to fit it on")}
    return {"fit": fit, "label": label, "available": True,
            "fitted_on": ("the other windows of the same recording, for each scored window "
                          "(never its own TRs)"),
            "frames": int(min(tally.in_recording_frames)), "frames_max": int(max(tally.in_recording_frames)),
            "ledoit_wolf_shrinkage": round(float(np.mean(tally.in_recording_shrinkage)), 6),
            "fits": len(tally.in_recording_frames)}


def _result(checkpoint, model, corpus: Corpus, s: ReconstructionSettings, precision: str, tally: _Tally,
            spatial_info: dict, seconds: float) -> ReconstructionResult:
    """The typed result of a scored split."""
    cfg, atlas = model.config, corpus.atlas
    methods = [m for m in tally.scores[s.ratios[0]]
               if m != "spatial_in_recording" or not tally.single_window]
    # A hybrid is labelled as one wherever its numbers are shown.
    brainlm_label = HYBRID_LABEL if getattr(cfg, "spatial_prior_parcels", 0) else "BrainLM"
    in_cohort = spatial_info["spatial"]
    results = []
    for r in s.ratios:
        entry = {"mask_ratio": r, "methods": {}}
        for m in methods:
            pp = tally.scores[r][m].per_parcel()
            entry["methods"][m] = {**tally.scores[r][m].pooled(),
                                   "per_parcel": {k: _json_list(v) for k, v in pp.items()}}
        results.append(entry)
    return ReconstructionResult.from_json({
        "task": "reconstruction",
        "checkpoint": str(checkpoint) if not is_model(checkpoint) else None,
        "corpus": corpus.path, "split": s.split, "strategy": s.strategy, "seed": int(s.seed),
        "mask_ratios": list(s.ratios), "window_trs": cfg.window_trs, "precision": precision,
        "brainlm_label": brainlm_label,
        # TRs per token; None for the image ViT-MAE, whose tokens are image patches.
        "patch_trs": getattr(cfg, "patch_trs", None),
        "recordings": tally.used, "recordings_too_short": tally.too_short, "windows": tally.windows,
        "units": "model input: robust-scaled signal ((x - median) / IQR per parcel)",
        "methods": methods,
        "method_labels": {m: brainlm_label if m == "brainlm" else SPATIAL_BASELINES.get(m, (None, m))[1]
                          for m in methods},
        # Where each spatial baseline was fitted (zero-shot: the pretraining data; in-cohort:
        # this corpus' training split; in-recording: the other windows), or why it is left out.
        "spatial_baselines": spatial_info,
        # The in-cohort fit, as before the zero-shot one existed (None when left out).
        "spatial_baseline": ({k: in_cohort[k] for k in ("fit_split", "frames", "ledoit_wolf_shrinkage")}
                             if in_cohort["available"] else None),
        "parcels": {"names": list(atlas.parcel_names), "xyz_mm": np.asarray(atlas.xyz).round(2).tolist(),
                    "networks": list(atlas.networks) if atlas.networks is not None else None,
                    "atlas": atlas.name},
        "results": results,
        "seconds": round(seconds, 2),
    })


def _json_list(v: np.ndarray) -> list:
    """JSON-safe list: NaN/Inf become null, floats rounded to 6 significant digits."""
    if np.issubdtype(v.dtype, np.integer):
        return v.tolist()
    return [None if not np.isfinite(a) else float(f"{a:.6g}") for a in v.tolist()]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _label(result: dict, method: str) -> str:
    if method == "brainlm":
        return result.get("brainlm_label", "BrainLM")
    # Results written before the labels existed name the in-cohort fit plainly ``spatial``.
    return result.get("method_labels", {}).get(method, method)


def reconstruction_markdown(result: dict) -> str:
    """The pooled metrics as a Markdown table: one row per method, R^2 / MSE / r per ratio; where
    each spatial baseline was fitted (or why it is left out), and per ratio BrainLM against the
    best baseline and against each spatial baseline."""
    ratios = [e["mask_ratio"] for e in result["results"]]
    head = "| method | " + " | ".join(f"R² @{r:g} | MSE @{r:g} | r @{r:g}" for r in ratios) + " |"
    sep = "|---|" + "---:|" * (3 * len(ratios))
    lines = [f"Masked reconstruction, split `{result['split']}` of `{result['corpus']}`: "
             f"{result['recordings']} recordings, {result['windows']} windows of "
             f"{result['window_trs']} TRs, {result['strategy']} masks (seed {result['seed']}). "
             "Metrics over masked values only; R² pooled (1 - SSE/SST).", "", head, sep]
    for m in result["methods"]:
        cells = []
        for e in result["results"]:
            s = e["methods"][m]
            cells += [_fmt(s["r2"]), _fmt(s["mse"]), _fmt(s["pearson_r"])]
        lines.append(f"| {_label(result, m)} | " + " | ".join(cells) + " |")
    notes = []
    for m, info in result.get("spatial_baselines", {}).items():
        if info["available"]:
            frames = (f"{info['frames']}-{info['frames_max']} frames per fit" if "frames_max" in info
                      else f"{info['frames']} frames")
            note = (f"- `{m}` ({info['fit']}): fitted on {info['fitted_on']}; "
                    f"{frames}, Ledoit-Wolf shrinkage {info['ledoit_wolf_shrinkage']:.3f}")
            if "distance_model" in info:
                d = info["distance_model"]
                note += (f"; correlation {d['a_near']:.2f} exp(-d/{d['l_near']:.0f} mm) + {d['a_hemi']:.2f} "
                         f"same-hemisphere exp(-d/{d['l_hemi']:.0f} mm) + {d['a_mirror']:.2f} homotopic "
                         f"(l {d['l_mirror']:.0f} mm) + {d['b_all']:.2f} + {d['b_hemi']:.2f} same-hemisphere, "
                         f"nugget {d['nugget']:.2f}, fit RMSE {d['rmse']:.3f}; hemisphere {info['hemisphere']}")
            notes.append(note + ".")
        else:
            notes.append(f"- `{m}` ({info['fit']}): left out, {info['reason']}.")
    model = result.get("brainlm_label", "BrainLM")
    best = []
    for e in result["results"]:
        present = [b for b in result["methods"] if b != "brainlm" and e["methods"][b]["r2"] is not None]
        base = max(present, key=lambda b: e["methods"][b]["r2"])
        model_r2, base_r2 = e["methods"]["brainlm"]["r2"], e["methods"][base]["r2"]
        verdict = "beats" if model_r2 > base_r2 else "does not beat"
        line = (f"- mask ratio {e['mask_ratio']:g}: {model} R² {model_r2:.3f} {verdict} the best "
                f"baseline ({_label(result, base)}, R² {base_r2:.3f})")
        vs = [f"{'beats' if model_r2 > e['methods'][m]['r2'] else 'does not beat'} {_label(result, m)} "
              f"(R² {e['methods'][m]['r2']:.3f})"
              for m in present if m in SPATIAL_BASELINES and m != base]
        best.append(line + ("; " + "; ".join(vs) if vs else ""))
    return "\n".join(lines + [""] + (["Spatial baselines, by where they were fitted:"] + notes + [""] if notes else [])
                     + best) + "\n"
