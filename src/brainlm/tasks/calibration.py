"""Input-gain calibration of an imported upstream checkpoint on the user's own recordings.

Upstream never released the scaling statistics its weights were trained with, so an imported
checkpoint reads a corpus with the corpus' own statistics of the chosen upstream normalization
(:func:`brainlm.tasks.model_input.model_scaler`; robust scaling by default). Its amplitude need
not be the one the weights expect (independent users found ``old_13M`` needs about 7x on
robust-scaled data). The calibration feeds ``gain * x + offset`` to the model, where ``x`` is
the variant's input (its normalization times its own constant gain, e.g. ``1 / 41.44047`` for
upstream's subtract-mean-divide-global-std column), for a grid of gains (and offsets), on a few
recordings with one fixed, seeded random mask, maps the predictions back
(``(pred - offset) / gain``) and measures the masked-reconstruction error in the variant's
units, so that every candidate is scored on the same numbers. The grid is relative to the
variant: the stored gain is the product, ``variant gain * calibrated gain``. The best gain (and
offset) is stored in the checkpoint's contract (``scaler_fit.input_gain``, ``input_offset``) by
:func:`apply_calibration`, and :func:`brainlm.tasks.model_input.with_input_gain` applies it to
every window made from then on. ``brainlm import-upstream SRC --out CK --calibrate CORPUS``
does both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.model.masking import MaskSpec
from brainlm.tasks.inference import predict_masked
from brainlm.tasks.model_input import (iter_model_input, load_model, model_scaler, model_windows, open_corpus,
                                       parcel_xyz)
from brainlm.tasks.results import TaskResult
from brainlm.tasks.settings import resolve_settings

__all__ = ["DEFAULT_GAINS", "CalibrationResult", "CalibrationSettings", "apply_calibration", "calibrate_input_gain", "variant_gain"]

#: Gains tried first: 2^(k/2) from 0.25 to 32 (then refined around the best one).
DEFAULT_GAINS = tuple(float(2.0 ** (k / 2)) for k in range(-4, 11))


@dataclass(frozen=True)
class CalibrationSettings:
    """How :func:`calibrate_input_gain` searches.

    Attributes
    ----------
    gains, offsets : tuples of float
        Candidates, relative to the variant's input (:func:`variant_gain`); every (gain,
        offset) pair is scored. Gains must be > 0.
    recordings : int
        The first ``recordings`` recordings of ``split`` with at least one full window.
    split : str
        The corpus split read.
    mask_ratio, seed
        One random token mask per window at this ratio, drawn once from ``seed`` and used for
        every candidate.
    refine : bool
        Then try 8 more gains, log-spaced between the best gain's neighbours in ``gains``.
    transfer_atlas, batch_size, device :
        How the corpus is read and the model run.
    """

    gains: tuple[float, ...] = DEFAULT_GAINS
    offsets: tuple[float, ...] = (0.0,)
    recordings: int = 4
    split: str = "train"
    mask_ratio: float = 0.75
    seed: int = 0
    refine: bool = True
    transfer_atlas: bool = False
    batch_size: int = 8
    device: str = "cpu"

    def __post_init__(self) -> None:
        gains, offsets = tuple(float(g) for g in self.gains), tuple(float(o) for o in self.offsets)
        if not gains or not offsets or not all(np.isfinite(g) and g > 0 for g in gains) \
                or not all(np.isfinite(o) for o in offsets):
            raise BrainLMInputError(f"gains {list(gains)} and offsets {list(offsets)}: expected gains > 0 and "
                                    "finite offsets")
        if self.recordings < 1:
            raise BrainLMInputError(f"recordings {self.recordings!r}; expected at least 1")
        object.__setattr__(self, "gains", gains)
        object.__setattr__(self, "offsets", offsets)
        MaskSpec("random", self.mask_ratio)  # validates the ratio


@dataclass(frozen=True)
class CalibrationResult(TaskResult):
    """What :func:`calibrate_input_gain` returns: ``input_gain`` (to store: ``variant_gain *
    calibrated_gain``), ``calibrated_gain`` (the best of the grid), ``variant_gain``,
    ``input_offset``, and for them ``mse`` and ``r2`` (masked values, in the variant's units;
    R^2 = 1 - SSE/SST around the masked targets' mean); ``gain_1_mse`` (the variant's input
    uncalibrated), ``zero_mse`` (predicting the centre, 0); ``at_grid_edge`` (the best gain is
    the smallest or largest in ``gains``: a bound only); ``table``: every candidate (relative
    gain, offset, mse, r2) in the order tried; the recordings, windows and settings."""

    KIND: ClassVar[str] = "calibration"

    input_gain: float
    calibrated_gain: float
    variant_gain: float
    input_offset: float
    mse: float
    r2: float
    at_grid_edge: bool
    gain_1_mse: float
    zero_mse: float
    corpus: str
    split: str
    recordings: list[int]
    windows: int
    mask_ratio: float
    seed: int
    normalization: str
    scaling: str
    units: str
    table: list[dict]
    seconds: float


class _GainSearch:
    """Masked-reconstruction error of ``gain * x + offset`` inputs, every candidate on the same
    windows and the same mask, in the variant's units; remembers each candidate scored."""

    def __init__(self, model, wins: torch.Tensor, xyz: torch.Tensor, s: CalibrationSettings):
        self.model, self.wins, self.xyz, self.batch_size = model, wins, xyz, s.batch_size
        self.mask_tok = model.sample_mask(MaskSpec("random", s.mask_ratio), len(wins), wins.shape[2],
                                          torch.Generator().manual_seed(s.seed))
        self.mask = model.token_mask_to_values(self.mask_tok).cpu().numpy()
        self.target = wins.numpy()[self.mask].astype(np.float64)
        self.sst = float(((self.target - self.target.mean()) ** 2).sum())
        self.table, self.seen = [], {}

    def score(self, g: float, o: float) -> float:
        if (g, o) not in self.seen:
            pred = predict_masked(self.model, self.wins * g + o, self.xyz, self.mask_tok, self.batch_size).numpy()
            back = (pred[self.mask].astype(np.float64) - o) / g
            sse = float(((back - self.target) ** 2).sum())
            self.seen[(g, o)] = sse / self.target.size
            self.table.append({"gain": g, "offset": o, "mse": sse / self.target.size, "r2": 1.0 - sse / self.sst})
        return self.seen[(g, o)]

    def best(self) -> tuple[float, float]:
        return min(self.seen, key=self.seen.get)

    def search(self, gains: tuple, offsets: tuple, refine: bool) -> tuple[float, float]:
        """Score the grid, then (``refine``) 8 gains log-spaced between the best one's
        neighbours; the best (gain, offset)."""
        for o in offsets:
            for g in gains:
                self.score(g, o)
        best_g, best_o = self.best()
        if refine and len(gains) > 1:
            ordered = sorted(set(gains))
            i = ordered.index(best_g)
            lo, hi = ordered[max(i - 1, 0)], ordered[min(i + 1, len(ordered) - 1)]
            for g in np.geomspace(lo, hi, 10)[1:-1]:
                self.score(float(g), best_o)
        return self.best()


def calibrate_input_gain(checkpoint: str | Path | BrainLM, corpus: str | Path | Corpus,
                         settings: CalibrationSettings | None = None, **options) -> CalibrationResult:
    """The input gain (and offset) that minimises masked-reconstruction error on ``corpus``.

    Parameters
    ----------
    checkpoint : path or model
        An imported upstream checkpoint (any family), with pooled or per-recording scaling.
        Models with their own scaling statistics (brainlm's) are refused: their input is what
        they were trained on.
    corpus : path or Corpus
        Prepared with the checkpoint's cleaning (checked as by every task).
    settings : CalibrationSettings, optional
        Or its fields as keywords (``gains=(1, 2, 4)``), not both.

    Returns
    -------
    CalibrationResult
    """
    t0 = time.perf_counter()
    s = resolve_settings(CalibrationSettings, settings, options)
    model = load_model(checkpoint, s.device)
    corpus = open_corpus(corpus)
    fit = model.contract.scaler_fit
    if "upstream_normalization" not in fit or (not model.contract.per_recording and model.contract.is_fitted):
        raise BrainLMInputError("this checkpoint has its own scaling statistics; an input gain is "
                                "for imported upstream checkpoints only", str(checkpoint))
    base_gain = variant_gain(model)
    # The units errors are measured in: the variant's input (the corpus' statistics of its
    # normalization, or each recording's own, times the variant's constant), with no
    # calibration yet; model_scaler also checks cleaning, normalization and atlas.
    scaler = _with_gain(model_scaler(model, corpus, transfer_atlas=s.transfer_atlas), base_gain)
    rows, wins = _calibration_windows(model, corpus, scaler, s)
    grid = _GainSearch(model, wins, parcel_xyz(corpus.atlas), s)
    best_g, best_o = grid.search(s.gains, s.offsets, s.refine)
    best = next(r for r in grid.table if r["gain"] == best_g and r["offset"] == best_o)
    # A best gain at the end of the grid is a bound, not a minimum: widen the grid (a model that
    # only learned to predict the median keeps gaining as its predictions shrink back to 0).
    edge = best_g in (min(s.gains), max(s.gains)) and len(s.gains) > 1
    return CalibrationResult.from_json({
        "input_gain": base_gain * best_g, "calibrated_gain": best_g, "variant_gain": base_gain,
        "input_offset": best_o, "mse": best["mse"], "r2": best["r2"],
        "at_grid_edge": bool(edge),
        "gain_1_mse": grid.score(1.0, 0.0), "zero_mse": float((grid.target ** 2).mean()),
        "corpus": str(corpus.path), "split": s.split, "recordings": rows, "windows": int(len(wins)),
        "mask_ratio": float(s.mask_ratio), "seed": int(s.seed),
        "normalization": model.contract.normalization, "scaling": model.contract.scaling,
        "units": (f"masked values in the variant's units ({base_gain:g} * (x - centre) / spread per "
                  f"parcel, normalization {model.contract.normalization!r})"),
        "table": grid.table, "seconds": round(time.perf_counter() - t0, 2)})


def _calibration_windows(model, corpus: Corpus, scaler: PreprocessingContract,
                         s: CalibrationSettings) -> tuple[list[int], torch.Tensor]:
    """The rows of the first ``s.recordings`` recordings of the split with a full window, and all
    their windows (N, T, P)."""
    rows, windows = [], []
    split_rows = corpus.split_indices(s.split)
    for row, x in zip(split_rows, iter_model_input(corpus, split_rows, scaler)):
        if x.shape[0] < model.config.window_trs:
            continue
        windows.append(model_windows(model, x)[0])
        rows.append(int(row))
        if len(rows) == s.recordings:
            break
    if not windows:
        raise BrainLMInputError(f"no recording of split {s.split!r} has a full window of "
                                f"{model.config.window_trs} TRs", corpus.path)
    return rows, torch.cat(windows)


def apply_calibration(model: BrainLM, result: CalibrationResult) -> BrainLM:
    """Record a calibration in ``model.contract`` (in place): ``scaler_fit.input_gain``,
    ``input_offset`` and ``input_calibration`` (the result without its table). Saving the
    model then stores it with the checkpoint; returns ``model``."""
    if model.contract is None:
        raise BrainLMInputError("the model has no preprocessing contract to record the gain in")
    summary = {k: v for k, v in result.items() if k not in ("table", "schema", "schema_version")}
    model.contract.scaler_fit = {**model.contract.scaler_fit, "input_gain": float(result["input_gain"]),
                                 "input_offset": float(result["input_offset"]), "input_calibration": summary}
    return model


def variant_gain(model: BrainLM) -> float:
    """The constant gain of the checkpoint's upstream normalization (``scaler_fit.variant_gain``,
    e.g. ``1 / 41.44047`` for ``Subtract_Mean_Divide_Global_STD_Normalized_Recording``; 1 when
    absent): what a calibration's grid is relative to."""
    g = float(model.contract.scaler_fit.get("variant_gain", 1.0)) if model.contract is not None else 1.0
    if not (np.isfinite(g) and g > 0):
        raise BrainLMInputError(f"contract.json has variant_gain {g!r}; expected a number > 0")
    return g


def _with_gain(scaler: PreprocessingContract, gain: float) -> PreprocessingContract:
    """A copy of ``scaler`` with gain ``gain`` and offset 0 (the variant's input, uncalibrated)."""
    out = PreprocessingContract.from_dict(scaler.to_dict())
    out.gain, out.offset = float(gain), 0.0
    return out
