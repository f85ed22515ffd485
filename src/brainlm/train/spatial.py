"""The spatial statistics of pretraining data: frames (TRs) sampled from a corpus, their mean and
Ledoit-Wolf covariance.

One estimator behind three things: the evaluation's spatial baseline
(:mod:`brainlm.tasks.reconstruction`), the zero-shot baseline stored with every checkpoint
(``spatial_baseline.safetensors``, written by :func:`brainlm.train.pretrain.pretrain`), and the
hybrid model's prior (``BrainLMConfig.spatial_prior_parcels``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError
from brainlm.model.checkpoint import SpatialStatistics

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
