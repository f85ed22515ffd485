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
from pathlib import Path

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

__all__ = ["DEFAULT_GAINS", "apply_calibration", "calibrate_input_gain", "variant_gain"]

#: Gains tried first: 2^(k/2) from 0.25 to 32 (then refined around the best one).
DEFAULT_GAINS = tuple(float(2.0 ** (k / 2)) for k in range(-4, 11))


def calibrate_input_gain(checkpoint: str | Path | BrainLM, corpus: str | Path | Corpus, *,
                         gains=DEFAULT_GAINS, offsets=(0.0,), recordings: int = 4, split: str = "train",
                         mask_ratio: float = 0.75, seed: int = 0, refine: bool = True,
                         transfer_atlas: bool = False, batch_size: int = 8, device: str = "cpu") -> dict:
    """The input gain (and offset) that minimises masked-reconstruction error on ``corpus``.

    Parameters
    ----------
    checkpoint : path or model
        An imported upstream checkpoint (any family), with pooled or per-recording scaling.
        Models with their own scaling statistics (brainlm's) are refused: their input is what
        they were trained on.
    corpus : path or Corpus
        Prepared with the checkpoint's cleaning (checked as by every task).
    gains, offsets : sequences of float
        Candidates, relative to the variant's input (:func:`variant_gain`); every (gain,
        offset) pair is scored. Gains must be > 0.
    recordings : int
        The first ``recordings`` recordings of ``split`` with at least one full window.
    mask_ratio, seed
        One random token mask per window at this ratio, drawn once from ``seed`` and used for
        every candidate.
    refine : bool
        Then try 8 more gains, log-spaced between the best gain's neighbours in ``gains``.

    Returns
    -------
    dict
        ``input_gain`` (to store: ``variant_gain * calibrated_gain``), ``calibrated_gain`` (the
        best of the grid), ``variant_gain``, ``input_offset``, and for them ``mse`` and ``r2``
        (masked values, in the variant's units; R^2 = 1 - SSE/SST around the masked targets'
        mean); ``gain_1_mse`` (the variant's input uncalibrated), ``zero_mse`` (predicting the
        centre, 0); ``at_grid_edge`` (the best gain is the smallest or largest in ``gains``: a
        bound only); ``table``: every candidate (relative gain, offset, mse, r2) in the order
        tried; the recordings, windows and settings.
    """
    t0 = time.perf_counter()
    gains, offsets = [float(g) for g in gains], [float(o) for o in offsets]
    if not gains or not offsets or not all(np.isfinite(g) and g > 0 for g in gains) \
            or not all(np.isfinite(o) for o in offsets):
        raise BrainLMInputError(f"gains {gains} and offsets {offsets}: expected gains > 0 and finite offsets")
    if recordings < 1:
        raise BrainLMInputError(f"recordings {recordings!r}; expected at least 1")
    spec = MaskSpec("random", mask_ratio)
    model = load_model(checkpoint, device)
    corpus = open_corpus(corpus)
    fit = model.contract.scaler_fit
    if "upstream_normalization" not in fit or (not model.contract.per_recording and model.contract.is_fitted):
        raise BrainLMInputError("this checkpoint has its own scaling statistics; an input gain is "
                                "for imported upstream checkpoints only", str(checkpoint))
    base_gain = variant_gain(model)
    # The units errors are measured in: the variant's input (the corpus' statistics of its
    # normalization, or each recording's own, times the variant's constant), with no
    # calibration yet; model_scaler also checks cleaning, normalization and atlas.
    scaler = _with_gain(model_scaler(model, corpus, transfer_atlas=transfer_atlas), base_gain)
    rows, windows = [], []
    for row, x in zip(corpus.split_indices(split), iter_model_input(corpus, corpus.split_indices(split), scaler)):
        if x.shape[0] < model.config.window_trs:
            continue
        windows.append(model_windows(model, x)[0])
        rows.append(int(row))
        if len(rows) == recordings:
            break
    if not windows:
        raise BrainLMInputError(f"no recording of split {split!r} has a full window of "
                                f"{model.config.window_trs} TRs", corpus.path)
    wins = torch.cat(windows)
    xyz = parcel_xyz(corpus.atlas)
    mask_tok = model.sample_mask(spec, len(wins), wins.shape[2], torch.Generator().manual_seed(seed))
    mask = model.token_mask_to_values(mask_tok).cpu().numpy()
    target = wins.numpy()[mask].astype(np.float64)
    sst = float(((target - target.mean()) ** 2).sum())

    table, seen = [], {}

    def score(g: float, o: float) -> float:
        if (g, o) not in seen:
            pred = predict_masked(model, wins * g + o, xyz, mask_tok, batch_size).numpy()
            back = (pred[mask].astype(np.float64) - o) / g
            sse = float(((back - target) ** 2).sum())
            seen[(g, o)] = sse / target.size
            table.append({"gain": g, "offset": o, "mse": sse / target.size, "r2": 1.0 - sse / sst})
        return seen[(g, o)]

    for o in offsets:
        for g in gains:
            score(g, o)
    best_g, best_o = min(seen, key=seen.get)
    if refine and len(gains) > 1:
        ordered = sorted(set(gains))
        i = ordered.index(best_g)
        lo, hi = ordered[max(i - 1, 0)], ordered[min(i + 1, len(ordered) - 1)]
        for g in np.geomspace(lo, hi, 10)[1:-1]:
            score(float(g), best_o)
        best_g, best_o = min(seen, key=seen.get)
    best = next(r for r in table if r["gain"] == best_g and r["offset"] == best_o)
    # A best gain at the end of the grid is a bound, not a minimum: widen the grid (a model that
    # only learned to predict the median keeps gaining as its predictions shrink back to 0).
    edge = best_g in (min(gains), max(gains)) and len(gains) > 1
    return {"input_gain": base_gain * best_g, "calibrated_gain": best_g, "variant_gain": base_gain,
            "input_offset": best_o, "mse": best["mse"], "r2": best["r2"],
            "at_grid_edge": bool(edge),
            "gain_1_mse": score(1.0, 0.0), "zero_mse": float((target ** 2).mean()),
            "corpus": str(corpus.path), "split": split, "recordings": rows, "windows": int(len(wins)),
            "mask_ratio": float(mask_ratio), "seed": int(seed),
            "normalization": model.contract.normalization, "scaling": model.contract.scaling,
            "units": (f"masked values in the variant's units ({base_gain:g} * (x - centre) / spread per "
                      f"parcel, normalization {model.contract.normalization!r})"),
            "table": table, "seconds": round(time.perf_counter() - t0, 2)}


def apply_calibration(model: BrainLM, result: dict) -> BrainLM:
    """Record a calibration in ``model.contract`` (in place): ``scaler_fit.input_gain``,
    ``input_offset`` and ``input_calibration`` (the result without its table). Saving the
    model then stores it with the checkpoint; returns ``model``."""
    if model.contract is None:
        raise BrainLMInputError("the model has no preprocessing contract to record the gain in")
    summary = {k: v for k, v in result.items() if k != "table"}
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
