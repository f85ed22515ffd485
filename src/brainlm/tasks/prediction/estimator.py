"""BrainLM as scikit-learn transformers, in the style of nilearn's ``ConnectivityMeasure``
(also importable from :mod:`brainlm.sklearn`).

* :class:`BrainLMEmbedding`: recordings -> ``(n_recordings, D)`` encoder embeddings;
* :class:`LatentConnectivity`: recordings -> the co-fluctuation of parcels in the model's latent
  space, one vectorised ``(P, P)`` matrix per recording, as ``ConnectivityMeasure(vectorize=True)``
  returns its matrices.

``fit`` / ``transform`` take a list of recordings: ``T x P`` arrays (model input, or raw at
``tr`` seconds) or :class:`~brainlm.data.recording.Recording` objects. They drop into a
:class:`sklearn.pipeline.Pipeline`, ``cross_val_score`` and ``GridSearchCV``, and clone and
pickle like any estimator (the pickle holds the fitted model's weights)::

    from sklearn.pipeline import make_pipeline
    from sklearn.linear_model import RidgeCV

    pipe = make_pipeline(BrainLMEmbedding("hcp-small", pooling="mean", tr=0.72), RidgeCV())
    pipe.fit(train_series, train_age).predict(test_series)

**A fitted transformer refits nothing.** ``fit`` loads the frozen, pretrained encoder and
checks the checkpoint, the atlas and the TR; it learns nothing from ``X`` or ``y``. So the
features of a recording are the same whichever recordings were in the training fold, and
putting the transformer inside cross-validation cannot leak test data into training, nor does it
need refitting per fold to be honest (the steps after it, scalers and heads, are what each fold
fits). Refitting in each fold gives the same numbers, only slower. Fine-tuning the encoder on the
training fold is another estimator: :class:`~brainlm.tasks.prediction.finetune.BrainLMFineTuner`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from nilearn.connectome import sym_matrix_to_vec
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from brainlm.data.atlas import Atlas
from brainlm.data.recording import Recording
from brainlm.data.volumes import load_volume_atlas
from brainlm.errors import BrainLMInputError
from brainlm.model.precision import resolve_precision
from brainlm.tasks.inference import embed_windows
from brainlm.tasks.model_input import (ModelInput, check_atlas, load_model, model_windows, preprocess,
                                       random_like)
from brainlm.tasks.networks import latent_connectivity

__all__ = ["BrainLMEmbedding", "LatentConnectivity", "masker_atlas"]

POOLINGS = ("cls", "mean", "both")
WEIGHTS = ("pretrained", "random")



#: Model input is scaled per parcel to an IQR near 1 (pooled statistics, or min-max into [0, 1]);
#: an array whose median parcel IQR or median level is above this is raw signal (scanner units,
#: percent change), given without ``tr``.
UNSCALED_LEVEL = 20.0


def masker_atlas(masker) -> Atlas:
    """The :class:`~brainlm.data.atlas.Atlas` of a nilearn ``NiftiLabelsMasker``: its
    ``labels_img`` (a NIfTI path) and ``labels`` (names, optionally with the background's first),
    parcels in the masker's column order (ascending label value), centres of mass in mm.

    Raises
    ------
    BrainLMInputError
        Not a labels masker, or its ``labels_img`` is not a file (save the image first).
    """
    img = getattr(masker, "labels_img", None)
    if img is None:
        raise BrainLMInputError(f"{type(masker).__name__} has no labels_img; expected a nilearn "
                                "NiftiLabelsMasker", "masker")
    if not isinstance(img, (str, Path)):
        raise BrainLMInputError("masker.labels_img is an image in memory; save it (img.to_filename(path)) "
                                "and build the masker with the path, so the atlas can be read from it",
                                "masker.labels_img")
    vol = load_volume_atlas(img, kind="labels")
    names = list(getattr(masker, "labels", None) or [])
    if names and len(names) == vol.atlas.n_parcels + 1:
        names = names[1:]  # nilearn's labels list the background first
    if names and len(names) == vol.atlas.n_parcels and tuple(map(str, names)) != vol.atlas.parcel_names:
        return Atlas(name=vol.atlas.name, parcel_names=[str(n) for n in names], xyz=vol.atlas.xyz,
                     networks=vol.atlas.networks)
    return vol.atlas


class _EncoderFeatures(TransformerMixin, BaseEstimator):
    """What both transformers share: the checkpoint, atlas and TR checks of ``fit`` and the
    turning of ``X`` into model input. Subclasses set their parameters in ``__init__``."""

    def _check_params(self) -> None:
        if self.checkpoint is None:
            raise BrainLMInputError(f"{type(self).__name__} needs a checkpoint (a folder, a shipped "
                                    "model's name, a Hub id or a BrainLM)")
        if self.tr is not None and not (isinstance(self.tr, (int, float)) and not isinstance(self.tr, bool)
                                        and math.isfinite(self.tr) and 0.01 <= self.tr <= 100):
            raise BrainLMInputError(f"tr {self.tr!r}; expected the repetition time in seconds "
                                    "(0.01-100), or None for arrays that are model input already",
                                    f"{type(self).__name__}(tr=...)")

    def _fit_model(self, X, weights: str = "pretrained", random_state: int = 0):
        """Load the model (random weights for ``weights="random"``), check the atlas; sets
        ``model_``, ``atlas_``, ``precision_``; checks ``X``."""
        model = load_model(self.checkpoint, self.device)
        self.precision_ = resolve_precision(self.precision, self.device, getattr(model.config, "dim", None))
        if weights == "random":
            model = random_like(model, random_state)
        model.eval()
        atlas = self.atlas if self.atlas is not None else model.atlas
        if atlas is None:
            raise BrainLMInputError("the checkpoint has no atlas; pass atlas= for array inputs")
        check_atlas(model, atlas, transfer=self.transfer_atlas, source=f"{type(self).__name__}(atlas=...)")
        self.model_, self.atlas_ = model, atlas
        self._inputs(X)

    def _raw(self, x: np.ndarray, where: str) -> np.ndarray:
        """A raw (T, P) array at ``tr`` through the checkpoint's contract."""
        # preprocess refuses an atlas the checkpoint's pooled statistics do not cover.
        rec = Recording(x, float(self.tr), self.atlas_, subject=where, source=where)
        return preprocess(self.model_, rec, transfer_atlas=self.transfer_atlas)

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
                if model.atlas is not None and not item.atlas.matches(model.atlas) and not self.transfer_atlas:
                    raise BrainLMInputError(
                        f"recording is on atlas {item.atlas.name!r}, not the checkpoint's; pass "
                        "transfer_atlas=True to run it through parcel coordinates", item.source or where)
                x = preprocess(model, item, transfer_atlas=self.transfer_atlas)
                xyz = np.array(item.atlas.xyz, dtype=np.float32)
            else:
                x = np.asarray(item, dtype=np.float32)
                if x.ndim != 2:
                    raise BrainLMInputError(f"array has shape {x.shape}; expected 2-D (T x P)", where)
                if x.shape[1] != self.atlas_.n_parcels:
                    raise BrainLMInputError(
                        f"array has {x.shape[1]} parcel columns; expected {self.atlas_.n_parcels}, the "
                        f"parcels of atlas {self.atlas_.name!r} (rows are TRs, columns parcels)", where)
                if not np.isfinite(x).all():
                    raise BrainLMInputError("array has NaN/Inf values; expected finite values", where)
                if self.tr is not None:
                    x = self._raw(x, where)
                else:
                    q1, q3 = np.percentile(x, [25, 75], axis=0)
                    level = max(float(np.median(q3 - q1)), float(np.median(np.abs(np.median(x, axis=0)))))
                    if level > UNSCALED_LEVEL:
                        raise BrainLMInputError(
                            f"array looks unscaled (median parcel level or IQR {level:.3g}) and no TR was "
                            "given: pass tr= (seconds, e.g. a nilearn masker's t_r) for raw time series, "
                            "which are then cleaned and scaled with the checkpoint's contract; arrays "
                            "without tr= must be model input already", where)
                xyz = np.array(self.atlas_.xyz, dtype=np.float32)
            if x.shape[0] < w:
                raise BrainLMInputError(f"recording has {x.shape[0]} TRs" + (" after resampling" if self.tr else "")
                                        + f"; the model needs at least one window of {w} TRs", where)
            out.append((x, xyz))
        return out


class BrainLMEmbedding(_EncoderFeatures):
    """Recording embeddings from a BrainLM encoder (nothing masked, deterministic).

    Parameters
    ----------
    checkpoint : str, path or BrainLM
        A checkpoint folder (``RUN/model``), a shipped model's name (``hcp-small``), a Hugging
        Face Hub id (``hf://ORG/REPO/SUBFOLDER``) or a loaded model.
    pooling : {"cls", "mean", "both"}
        The CLS token, the mean over patch tokens, or both concatenated (CLS first).
    weights : {"pretrained", "random"}
        ``random`` re-initialises the architecture with ``random_state`` (the untrained-model
        control: what the architecture alone gives).
    random_state : int
        Seed of the random initialisation.
    atlas : Atlas, optional
        Atlas of array inputs (default: the checkpoint's). Another atlas than the checkpoint's
        needs ``transfer_atlas``; :func:`masker_atlas` reads a nilearn masker's.
    transfer_atlas : bool
        Allow data on another atlas (through parcel coordinates).
    tr : float, optional
        Repetition time (s) of array inputs that are raw time series (e.g. a nilearn masker's
        output): they are then cleaned, resampled and scaled with the checkpoint's contract,
        like Recordings. None (default): arrays are model input already; an array that looks
        unscaled is then refused, naming the missing TR.
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
    atlas_ : Atlas
        The atlas of array inputs.
    n_features_out_ : int
        D, or 2 D with ``pooling="both"``.

    Notes
    -----
    Array inputs without ``tr`` are model input: cleaned and scaled with the checkpoint's
    preprocessing contract (what :func:`brainlm.tasks.model_input.preprocess` and a corpus read
    give). ``Recording`` inputs are raw and go through
    :func:`~brainlm.tasks.model_input.preprocess` here. Each recording needs at least one window
    (``config.window_trs`` TRs); the tail shorter than a window is not used. ``fit`` learns
    nothing from the data (the encoder is frozen; see the module docstring), so the transform of
    a recording does not depend on which other recordings were in the training fold.
    """

    def __init__(self, checkpoint=None, *, pooling: str = "cls", weights: str = "pretrained",
                 random_state: int = 0, atlas: Atlas | None = None, transfer_atlas: bool = False,
                 tr: float | None = None, batch_size: int = 32, device: str = "cpu", precision: str = "32-true"):
        self.checkpoint = checkpoint
        self.pooling = pooling
        self.weights = weights
        self.random_state = random_state
        self.atlas = atlas
        self.transfer_atlas = transfer_atlas
        self.tr = tr
        self.batch_size = batch_size
        self.device = device
        self.precision = precision

    def fit(self, X, y=None):
        """Load (or initialise) the model and check the checkpoint, the atlas, the TR and ``X``;
        nothing is learned from ``X`` or ``y``."""
        if self.pooling not in POOLINGS:
            raise BrainLMInputError(f"pooling {self.pooling!r}; expected one of {POOLINGS}")
        if self.weights not in WEIGHTS:
            raise BrainLMInputError(f"weights {self.weights!r}; expected one of {WEIGHTS}")
        self._check_params()
        self._fit_model(X, self.weights, self.random_state)
        self.n_features_out_ = self.model_.config.dim * (2 if self.pooling == "both" else 1)
        return self

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


class LatentConnectivity(_EncoderFeatures):
    """Latent connectivity: how parcels co-fluctuate in the model's latent space, one matrix per
    recording, vectorised like nilearn's ``ConnectivityMeasure(vectorize=True)``.

    For each recording: the Fisher-z correlation between parcels' final-layer token vectors,
    over its windows and time patches, each parcel's mean vector removed first (what the
    coordinate embedding puts there), nothing masked (:func:`brainlm.tasks.networks.latent_connectivity`,
    the ``latent_connectivity`` feature of ``brainlm networks``). The diagonal is 0.

    Parameters
    ----------
    checkpoint, atlas, transfer_atlas, tr, batch_size, device, precision
        As :class:`BrainLMEmbedding`. The model must have parcel x time-patch tokens
        (brainlm's own, or the imported paper model; not the image ViT-MAE).
    vectorize : bool
        Return the lower triangle of each (P, P) matrix, row by row, as one row of features
        (:func:`nilearn.connectome.sym_matrix_to_vec`); False: the matrices.
    discard_diagonal : bool
        With ``vectorize``, leave the diagonal out: P (P - 1) / 2 features instead of
        P (P + 1) / 2.

    Attributes
    ----------
    model_, atlas_
        As :class:`BrainLMEmbedding`.
    n_features_out_ : int
        P (P + 1) / 2, or P (P - 1) / 2 with ``discard_diagonal``.

    Notes
    -----
    ``fit`` learns nothing from the data, as for :class:`BrainLMEmbedding`.
    """

    def __init__(self, checkpoint=None, *, atlas: Atlas | None = None, transfer_atlas: bool = False,
                 tr: float | None = None, vectorize: bool = True, discard_diagonal: bool = False,
                 batch_size: int = 8, device: str = "cpu", precision: str = "32-true"):
        self.checkpoint = checkpoint
        self.atlas = atlas
        self.transfer_atlas = transfer_atlas
        self.tr = tr
        self.vectorize = vectorize
        self.discard_diagonal = discard_diagonal
        self.batch_size = batch_size
        self.device = device
        self.precision = precision

    def fit(self, X, y=None):
        """Load the model and check the checkpoint, the atlas, the TR and ``X``; nothing is
        learned from ``X`` or ``y``."""
        self._check_params()
        self._fit_model(X)
        if not self.model_.has_parcel_patch_tokens:
            raise BrainLMInputError("latent connectivity needs one token per parcel and time patch; this "
                                    f"model ({type(self.model_).__name__}) has image-patch tokens",
                                    f"{type(self).__name__}(checkpoint=...)")
        p = self.atlas_.n_parcels
        self.n_features_out_ = p * (p - 1) // 2 if self.discard_diagonal else p * (p + 1) // 2
        return self

    def transform(self, X) -> np.ndarray:
        """(n_recordings, n_features_out_) float64 with ``vectorize``, else (n_recordings, P, P)."""
        check_is_fitted(self, "model_")
        mats = []
        for x, xyz in self._inputs(X):
            wins, _ = model_windows(self.model_, x)
            item = ModelInput({}, wins, torch.from_numpy(xyz), self.atlas_)
            mats.append(latent_connectivity(self.model_, [item], self.batch_size))
        mats = np.stack(mats)
        if not self.vectorize:
            return mats
        return sym_matrix_to_vec(mats, discard_diagonal=self.discard_diagonal)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``latent_connectivity_I_J`` for parcels I >= J (I > J with ``discard_diagonal``), in
        the order of :func:`nilearn.connectome.sym_matrix_to_vec`."""
        check_is_fitted(self, "model_")
        p = self.atlas_.n_parcels
        rows, cols = np.tril_indices(p, k=-1 if self.discard_diagonal else 0)
        return np.array([f"latent_connectivity_{i:03d}_{j:03d}" for i, j in zip(rows, cols)], dtype=object)
