"""``BrainLMEmbedding``: a pretrained (or randomly initialised) BrainLM as a scikit-learn
transformer, in the style of nilearn's ``ConnectivityMeasure``.

``fit`` / ``transform`` take a list of recordings (``T x P`` arrays or
:class:`~brainlm.data.recording.Recording` objects) and return one row of features per
recording: the encoder's embeddings of the recording's deterministic, non-overlapping windows,
averaged over windows. It drops into a :class:`sklearn.pipeline.Pipeline`::

    from sklearn.pipeline import make_pipeline
    from sklearn.linear_model import RidgeCV

    pipe = make_pipeline(BrainLMEmbedding("run/model", pooling="mean"), RidgeCV())
    pipe.fit(train_series, train_age).predict(test_series)
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from brainlm.data.atlas import Atlas
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.model.precision import resolve_precision
from brainlm.tasks.model_input import (check_atlas, embed_windows, load_model, model_windows, preprocess,
                                       random_like)

POOLINGS = ("cls", "mean", "both")
WEIGHTS = ("pretrained", "random")



class BrainLMEmbedding(TransformerMixin, BaseEstimator):
    """Recording embeddings from a BrainLM encoder (nothing masked, deterministic).

    Parameters
    ----------
    checkpoint : str, path or BrainLM
        A checkpoint folder (``RUN/model``) or a loaded model.
    pooling : {"cls", "mean", "both"}
        The CLS token, the mean over patch tokens, or both concatenated (CLS first).
    weights : {"pretrained", "random"}
        ``random`` re-initialises the architecture with ``random_state`` (the untrained-model
        control: what the architecture alone gives).
    random_state : int
        Seed of the random initialisation.
    atlas : Atlas, optional
        Atlas of array inputs (default: the checkpoint's). Another atlas than the checkpoint's
        needs ``transfer_atlas``.
    transfer_atlas : bool
        Allow data on another atlas (through parcel coordinates).
    batch_size : int
        Windows per forward pass.
    device : str
        Torch device.
    precision : str
        Forward passes in ``32-true`` (default) or ``bf16-mixed`` (``auto``: bf16 where it is
        native and pays for this model's width; :func:`brainlm.model.precision.resolve_precision`).

    Attributes
    ----------
    model_ : BrainLM
        The (frozen) model.
    n_features_out_ : int
        D, or 2 D with ``pooling="both"``.

    Notes
    -----
    Array inputs are taken to be model input already: cleaned and scaled with the checkpoint's
    preprocessing contract (what :func:`brainlm.tasks.model_input.preprocess` and a corpus read give). ``Recording``
    inputs are raw and go through :func:`~brainlm.tasks.model_input.preprocess` here. Each recording needs at least one
    window (``config.window_trs`` TRs); the tail shorter than a window is not used.
    ``fit`` learns nothing from the data (the encoder is frozen), so the transform of a
    recording does not depend on which other recordings were in the training fold.
    """

    def __init__(self, checkpoint=None, *, pooling: str = "cls", weights: str = "pretrained",
                 random_state: int = 0, atlas: Atlas | None = None, transfer_atlas: bool = False,
                 batch_size: int = 32, device: str = "cpu", precision: str = "32-true"):
        self.checkpoint = checkpoint
        self.pooling = pooling
        self.weights = weights
        self.random_state = random_state
        self.atlas = atlas
        self.transfer_atlas = transfer_atlas
        self.batch_size = batch_size
        self.device = device
        self.precision = precision

    def fit(self, X, y=None):
        """Load (or initialise) the model; ``X`` is checked, not learned from."""
        if self.pooling not in POOLINGS:
            raise BrainLMInputError(f"pooling {self.pooling!r}; expected one of {POOLINGS}")
        if self.weights not in WEIGHTS:
            raise BrainLMInputError(f"weights {self.weights!r}; expected one of {WEIGHTS}")
        if self.checkpoint is None:
            raise BrainLMInputError("BrainLMEmbedding needs a checkpoint (a folder or a BrainLM)")
        model = load_model(self.checkpoint, self.device)
        self.precision_ = resolve_precision(self.precision, self.device, getattr(model.config, "dim", None))
        if self.weights == "random":
            model = random_like(model, self.random_state)
        model.eval()
        atlas = self.atlas if self.atlas is not None else model.atlas
        if atlas is None:
            raise BrainLMInputError("the checkpoint has no atlas; pass atlas= for array inputs")
        check_atlas(model, atlas, transfer=self.transfer_atlas, source="BrainLMEmbedding(atlas=...)")
        self.model_, self.atlas_ = model, atlas
        self.n_features_out_ = model.config.dim * (2 if self.pooling == "both" else 1)
        self._inputs(X)
        return self

    def _inputs(self, X) -> list[tuple[np.ndarray, np.ndarray]]:
        """(model-input array (T, P), parcel xyz (P, 3) mm) for each item of ``X``."""
        if isinstance(X, (np.ndarray, torch.Tensor)) and np.ndim(X) == 2:
            raise BrainLMInputError("X is one 2-D array; expected a list of T x P recordings "
                                    "(wrap a single recording in a list)")
        try:
            items = list(X)
        except TypeError:
            raise BrainLMInputError(f"X is {type(X).__name__}; expected a list of T x P arrays or "
                                    "Recordings") from None
        if not items:
            raise BrainLMInputError("X is empty; expected at least one recording")
        model, w = self.model_, self.model_.config.window_trs
        out = []
        for i, item in enumerate(items):
            where = f"X[{i}]"
            if isinstance(item, Recording):
                if model.atlas is not None and not item.atlas.matches(model.atlas):
                    raise BrainLMInputError(
                        f"recording is on atlas {item.atlas.name!r}, not the checkpoint's; prepare "
                        "it into a corpus and pass its arrays with atlas= and transfer_atlas=True",
                        item.source or where)
                x = preprocess(model, item)
                xyz = np.array(item.atlas.xyz, dtype=np.float32)
            else:
                x = np.asarray(item, dtype=np.float32)
                if x.ndim != 2:
                    raise BrainLMInputError(f"array has shape {x.shape}; expected 2-D (T x P)", where)
                if x.shape[1] != self.atlas_.n_parcels:
                    raise BrainLMInputError(
                        f"array has {x.shape[1]} parcel columns; atlas {self.atlas_.name!r} has "
                        f"{self.atlas_.n_parcels}", where)
                if not np.isfinite(x).all():
                    raise BrainLMInputError("array has NaN/Inf values; expected finite model input", where)
                xyz = np.array(self.atlas_.xyz, dtype=np.float32)
            if x.shape[0] < w:
                raise BrainLMInputError(f"recording has {x.shape[0]} TRs; the model needs at least one "
                                        f"window of {w} TRs", where)
            out.append((x, xyz))
        return out

    def transform_windows(self, X) -> list[np.ndarray]:
        """Per-window embeddings: a list with one (W_i, n_features_out_) float32 array per
        recording, windows in time order (starts 0, window_trs, 2 window_trs ...)."""
        check_is_fitted(self, "model_")
        out = []
        for x, xyz in self._inputs(X):
            wins, _ = model_windows(self.model_, x)
            cls, mean = embed_windows(self.model_, wins, torch.from_numpy(xyz), self.batch_size, self.precision_)
            parts = {"cls": [cls], "mean": [mean], "both": [cls, mean]}[self.pooling]
            out.append(torch.cat(parts, dim=1).numpy())
        return out

    def transform(self, X) -> np.ndarray:
        """Recording embeddings, window embeddings averaged: (n_recordings, n_features_out_)."""
        return np.stack([w.mean(axis=0) for w in self.transform_windows(X)]).astype(np.float32)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``cls_0000 ...`` and/or ``mean_0000 ...`` (as ``brainlm embed`` names its columns)."""
        check_is_fitted(self, "model_")
        d = self.model_.config.dim
        kinds = ["cls", "mean"] if self.pooling == "both" else [self.pooling]
        return np.array([f"{k}_{i:04d}" for k in kinds for i in range(d)], dtype=object)
