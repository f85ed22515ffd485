"""Masked reconstruction on a corpus split, next to baselines scored on the very same masks.

``brainlm evaluate recon CHECKPOINT CORPUS --split test`` tiles every recording of the split
into non-overlapping windows, draws one deterministic token mask per window and mask ratio
(seeded), and scores the model's prediction of the masked values against:

* ``zero``: the scaled median (0), what a model that learned nothing predicts;
* ``parcel_mean``: each parcel's mean over its visible values in the window;
* ``interpolation``: linear interpolation in time within each parcel over its visible samples
  (``numpy.interp``; constant beyond the first and last visible sample);
* ``spatial``: the Gaussian conditional mean of the masked parcels given the visible parcels
  at the same TR, ``mu_M + S_MO S_OO^-1 (x_O - mu_O)``, with mean and (Ledoit-Wolf shrunk)
  covariance fitted on the *training* split. It is linear regression of each hidden parcel on
  whichever parcels are visible, so it handles any mask pattern.

Metrics over masked values only: R^2 pooled over all masked values (1 - SSE/SST, SST around
the mean of the masked targets, as in the BrainLM paper), MSE and Pearson r; and the same per
parcel (R^2 not clipped, so a parcel predicted worse than its masked mean is negative).
Statistics are accumulated as sums, so the split is streamed window batch by window batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from brainlm.data.atomic import to_json
from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.model.masking import MaskSpec
from brainlm.tasks.model_input import (is_model, iter_model_input, load_model, model_scaler, model_windows,
                                       open_corpus, parcel_xyz, predict_masked, token_mask_to_values)
from brainlm.tasks.results_folder import check_results_folder, publish_results

__all__ = ["BASELINES", "ReconstructionScores", "SpatialImputer", "evaluate_reconstruction",
           "impute_interpolation", "impute_parcel_mean", "reconstruction_markdown"]

#: Baselines scored next to the model, in table order.
BASELINES = ("zero", "parcel_mean", "interpolation", "spatial")
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
        lw = LedoitWolf().fit(np.asarray(frames, dtype=np.float64))
        self.mean_, self.covariance_, self.shrinkage_ = lw.location_, lw.covariance_, float(lw.shrinkage_)
        self.n_frames_ = int(len(frames))
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


def _training_frames(corpus: Corpus, scaler, max_frames: int) -> np.ndarray:
    """Up to ``max_frames`` frames (TRs) of the training split, evenly spread over recordings and
    time (deterministic): (n_frames, P) float32."""
    rows = corpus.split_indices("train")
    lengths = corpus.manifest["n_trs"].to_numpy()[rows]
    step = max(1, int(math.ceil(lengths.sum() / max_frames)))
    frames = [np.ascontiguousarray(x[::step]) for x in iter_model_input(corpus, rows, scaler)]
    return np.concatenate(frames)[:max_frames]


def evaluate_reconstruction(checkpoint: str | Path | BrainLM, corpus: str | Path | Corpus, *,
                            split: str = "test", ratios=DEFAULT_RATIOS, strategy: str = "random",
                            seed: int = 0, max_recordings: int | None = None,
                            spatial_max_frames: int = 50_000, batch_size: int = 16,
                            transfer_atlas: bool = False, device: str = "cpu",
                            out: str | Path | None = None, overwrite: bool = False) -> dict:
    """Masked reconstruction of a corpus split by the model and by the baselines, same masks.

    Parameters
    ----------
    checkpoint : path or BrainLM
        A checkpoint folder (``RUN/model``) or a loaded model.
    corpus : path or Corpus
        Prepared with the checkpoint's cleaning settings (and atlas, unless ``transfer_atlas``).
    split : {"test", "val", "train"}
        Recordings to reconstruct; the spatial baseline is always fitted on ``train``.
    ratios : sequence of float
        Fractions of tokens masked (paper: 0.2, 0.75, 0.9).
    strategy : {"random", "parcels", "time"}
        Mask strategy (see :class:`~brainlm.model.masking.MaskSpec`).
    seed : int
        Mask seed: the same seed gives the same masks and the same numbers.
    max_recordings : int, optional
        Use only the first N recordings of the split (a quick run).
    spatial_max_frames : int
        Training frames (TRs) used to fit the spatial baseline.
    batch_size : int
        Windows per forward pass.
    out : path, optional
        Folder for ``reconstruction.json`` and ``reconstruction.md``, published only when
        everything succeeded; an existing folder needs ``overwrite``.

    Returns
    -------
    dict (the JSON): settings, ``parcels`` (names, MNI xyz in mm, networks), and per ratio the
    pooled metrics and per-parcel arrays of every method.
    """
    t0 = time.perf_counter()
    if strategy not in ("random", "parcels", "time"):
        raise BrainLMInputError(f"mask strategy {strategy!r}; expected random, parcels or time")
    ratios = [float(r) for r in ratios]
    if not ratios or len(set(ratios)) != len(ratios):
        raise BrainLMInputError(f"mask ratios {ratios}; expected distinct fractions")
    specs = [MaskSpec(strategy, r) for r in ratios]  # validates each ratio
    out = check_results_folder(out, overwrite)
    model = load_model(checkpoint, device)
    corpus = open_corpus(corpus)
    scaler = model_scaler(model, corpus, transfer_atlas=transfer_atlas)
    rows = corpus.split_indices(split)
    if max_recordings is not None:
        rows = rows[:max_recordings]
    cfg = model.config
    p = corpus.atlas.n_parcels
    spatial = SpatialImputer().fit(_training_frames(corpus, scaler, spatial_max_frames))

    methods = ("brainlm",) + BASELINES
    scores = {r: {m: ReconstructionScores(p) for m in methods} for r in ratios}
    generators = {r: torch.Generator().manual_seed(_mask_seed(seed, r)) for r in ratios}
    xyz = parcel_xyz(corpus.atlas)
    n_windows, used, too_short = 0, 0, 0
    for x in iter_model_input(corpus, rows, scaler):  # one recording in memory at a time
        if x.shape[0] < cfg.window_trs:
            too_short += 1
            continue
        wins, _ = model_windows(model, x)
        used += 1
        n_windows += len(wins)
        for r, spec in zip(ratios, specs):
            mask_tok = model.sample_mask(spec, len(wins), p, generators[r])
            pred = predict_masked(model, wins, xyz, mask_tok, batch_size).numpy()
            mask = token_mask_to_values(model, mask_tok)
            target = wins.numpy()
            sc = scores[r]
            sc["brainlm"].update(target, pred, mask)
            sc["zero"].update(target, np.zeros_like(target), mask)
            for w in range(len(wins)):
                xw, mw = target[w], mask[w]
                sc["parcel_mean"].update(xw, impute_parcel_mean(xw, mw), mw)
                sc["interpolation"].update(xw, impute_interpolation(xw, mw), mw)
                sc["spatial"].update(xw, spatial.impute(xw, mw), mw)
    if n_windows == 0:
        raise BrainLMInputError(f"no recording of split {split!r} has a full window of "
                                f"{cfg.window_trs} TRs", corpus.path)

    atlas = corpus.atlas
    result = {
        "task": "reconstruction",
        "checkpoint": str(checkpoint) if not is_model(checkpoint) else None,
        "corpus": corpus.path, "split": split, "strategy": strategy, "seed": int(seed),
        "mask_ratios": ratios, "window_trs": cfg.window_trs,
        # A hybrid is labelled as one wherever its numbers are shown.
        "brainlm_label": HYBRID_LABEL if getattr(cfg, "spatial_prior_parcels", 0) else "BrainLM",
        # TRs per token; None for the image ViT-MAE, whose tokens are image patches.
        "patch_trs": getattr(cfg, "patch_trs", None),
        "recordings": used, "recordings_too_short": too_short, "windows": n_windows,
        "units": "model input: robust-scaled signal ((x - median) / IQR per parcel)",
        "methods": list(methods),
        "spatial_baseline": {"fit_split": "train", "frames": spatial.n_frames_,
                             "ledoit_wolf_shrinkage": round(spatial.shrinkage_, 6)},
        "parcels": {"names": list(atlas.parcel_names), "xyz_mm": np.asarray(atlas.xyz).round(2).tolist(),
                    "networks": list(atlas.networks) if atlas.networks is not None else None,
                    "atlas": atlas.name},
        "results": [],
    }
    for r in ratios:
        entry = {"mask_ratio": r, "methods": {}}
        for m in methods:
            pp = scores[r][m].per_parcel()
            entry["methods"][m] = {**scores[r][m].pooled(),
                                   "per_parcel": {k: _json_list(v) for k, v in pp.items()}}
        result["results"].append(entry)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        publish_results(out, {"reconstruction.json": to_json(result, indent=1),
                       "reconstruction.md": reconstruction_markdown(result)})
    return result


def _json_list(v: np.ndarray) -> list:
    """JSON-safe list: NaN/Inf become null, floats rounded to 6 significant digits."""
    if np.issubdtype(v.dtype, np.integer):
        return v.tolist()
    return [None if not np.isfinite(a) else float(f"{a:.6g}") for a in v.tolist()]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def reconstruction_markdown(result: dict) -> str:
    """The pooled metrics as a Markdown table: one row per method, R^2 / MSE / r per ratio."""
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
        name = result.get("brainlm_label", "BrainLM") if m == "brainlm" else m
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    best = []
    for e in result["results"]:
        base = max(BASELINES, key=lambda b: e["methods"][b]["r2"])
        model_r2, base_r2 = e["methods"]["brainlm"]["r2"], e["methods"][base]["r2"]
        verdict = "beats" if model_r2 > base_r2 else "does not beat"
        best.append(f"- mask ratio {e['mask_ratio']:g}: {result.get('brainlm_label', 'BrainLM')} R² "
                    f"{model_r2:.3f} {verdict} the best "
                    f"baseline ({base}, R² {base_r2:.3f})")
    return "\n".join(lines + [""] + best) + "\n"
