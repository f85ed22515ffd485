"""Baselines that BrainLM must beat, run on the same folds.

* functional connectivity (nilearn ``ConnectivityMeasure``, ``correlation`` or ``tangent``) +
  ridge / logistic regression. The tangent space is referenced to the geometric mean of the
  training subjects' covariances: it is fitted on each outer training fold, never on test
  subjects. The ridge penalty is then searched on inner folds of those features, so the inner
  validation subjects share the reference point (no target values enter it) — a geometric mean
  per inner fold would cost minutes per fold at 500 subjects on a CPU and leave every test
  subject's features unchanged;
* the raw signal: the first window of each recording flattened (window TRs x parcels), PCA
  (fitted on the training fold) and an RBF support-vector machine. Resting-state time courses
  are not aligned across people, so this baseline sees amplitude and noise structure more than
  anything a subject's brain does at a given moment: a floor, not a rival;
* an LSTM over the windows of the time series (:class:`brainlm.model.recurrent.LSTMNet`, hidden
  states averaged over time; one window in, one output; a recording averages its windows),
  trained on random crops with early stopping.
"""

from __future__ import annotations

import numpy as np
import torch
from nilearn.connectome import ConnectivityMeasure
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA

from brainlm.errors import BrainLMInputError
from brainlm.model.recurrent import LSTMNet
from brainlm.tasks.prediction.heads import make_head
from brainlm.tasks.prediction.training import (WindowedHead, check_series, random_crops,
                                              recording_tiles)

FC_KINDS = ("correlation", "tangent")
PCA_COMPONENTS = (10, 30)


def connectivity_measure(kind: str) -> ConnectivityMeasure:
    """nilearn's ``ConnectivityMeasure`` as every FC baseline uses it: Ledoit-Wolf covariance of
    z-scored time series, the P (P - 1) / 2 upper-triangle values (diagonal discarded)."""
    if kind not in FC_KINDS:
        raise BrainLMInputError(f"connectivity kind {kind!r}; expected one of {FC_KINDS}")
    return ConnectivityMeasure(kind=kind, vectorize=True, discard_diagonal=True,
                               standardize="zscore_sample")


def correlation_features(series: list[np.ndarray]) -> np.ndarray:
    """Pearson-correlation FC of each recording: (n, P (P - 1) / 2).

    Each recording's matrix depends on that recording alone (``fit`` learns nothing for
    ``kind="correlation"``), so computing it once for all recordings equals computing it per fold.
    """
    return connectivity_measure("correlation").fit_transform(series)


class TangentSpace(TransformerMixin, BaseEstimator):
    """Tangent-space FC (Varoquaux et al. 2010): covariances whitened by the geometric mean of
    the *training* recordings' covariances, then the matrix logarithm.

    ``fit`` (or ``fit_transform``) on a training fold's time series; ``transform`` projects new
    recordings onto that reference. The cross-validation fits it once per outer training fold,
    so test subjects never shape the reference point.
    """

    def fit(self, X, y=None):
        self.measure_ = connectivity_measure("tangent").fit(X)
        return self

    def fit_transform(self, X, y=None):
        self.measure_ = connectivity_measure("tangent")
        return self.measure_.fit_transform(X)

    def transform(self, X) -> np.ndarray:
        """X: list of (T, P) -> (n, P (P - 1) / 2)."""
        return self.measure_.transform(X)


class FirstWindow(TransformerMixin, BaseEstimator):
    """The first ``window_trs`` TRs of each recording, flattened: list of (T, P) ->
    (n, window_trs * P). Stateless."""

    def __init__(self, window_trs: int = 200):
        self.window_trs = window_trs

    def fit(self, X, y=None):
        return self

    def transform(self, X) -> np.ndarray:
        return np.stack([x[:self.window_trs].reshape(-1) for x in check_series(X, self.window_trs)])


def raw_pca_pipeline(task: str, n_train_min: int, window_trs: int = 200):
    """``FirstWindow -> PCA -> StandardScaler -> SVR|SVC`` and its grid (components and C)."""
    steps = [("window", FirstWindow(window_trs)), ("pca", PCA(random_state=0))]
    pipe, grid = make_head("svm", task, n_train_min, steps=steps)
    grid["pca__n_components"] = sorted({min(k, n_train_min - 1) for k in PCA_COMPONENTS})
    return pipe, grid


class LSTMEstimator(WindowedHead, BaseEstimator):
    """A one-layer LSTM on windows of the time series, with early stopping.

    Parameters
    ----------
    task : {"regression", "classification"}
    window_trs : int
        Window length in TRs (as BrainLM's, so both see the same stretch of signal).
    hidden : int
        LSTM hidden size.
    crops_per_recording : int
        Random windows per training recording per epoch (with one, a few hundred recordings
        give the LSTM too few steps per epoch to leave its initial plateau before early
        stopping ends it).
    lr, weight_decay : float
        AdamW settings.
    max_epochs, patience : int
        Early stopping on the validation loss.
    batch_size : int
    val_fraction : float
        Fraction of training subjects held out for early stopping.
    random_state : int
        Seeds initialisation, crops, shuffling and the validation split.

    ``fit(X, y, groups)`` takes X as a list of (T, P) model-input arrays.
    """

    def __init__(self, task: str = "regression", *, window_trs: int = 200, hidden: int = 64,
                 crops_per_recording: int = 8, lr: float = 1e-3, weight_decay: float = 1e-4,
                 max_epochs: int = 30, patience: int = 5, batch_size: int = 32, val_fraction: float = 0.2,
                 random_state: int = 0):
        self.task = task
        self.window_trs = window_trs
        self.hidden = hidden
        self.crops_per_recording = crops_per_recording
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.random_state = random_state

    def _prepare(self, X):
        return check_series(X, self.window_trs)

    def _build(self, items, targets):
        net = LSTMNet(items[0].shape[1], self.hidden, pooling="mean")
        return net, torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _train_examples(self, items, generator):
        crops = [random_crops(items, self.window_trs, generator) for _ in range(self.crops_per_recording)]
        return torch.cat(crops), np.tile(np.arange(len(items)), self.crops_per_recording)

    def _eval_examples(self, items):
        return recording_tiles(items, self.window_trs)
