"""The data every forecaster sees: training recordings and deterministic context/target windows.

All values are in model input units: the corpus' cleaned signal robust-scaled, ``(x - median) /
IQR`` per parcel (missing parcels read as 0), with the statistics of ``scaler`` -- the
checkpoint's contract from :func:`brainlm.tasks.model_input.model_scaler` whenever a BrainLM model
takes part, so every method sees the numbers the model was pretrained on -- or, without one, the
corpus' own (fitted on its training split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.windows import WindowDataset, require_window
from brainlm.errors import BrainLMInputError
from brainlm.validation import positive_int
from brainlm.tasks.model_input import read_model_input


def check_lengths(context_trs: int, horizon_trs: int, patch_trs: int | None = None,
                  source: str | None = None) -> None:
    """Validate a context/horizon pair.

    Parameters
    ----------
    context_trs, horizon_trs : int
        TRs the forecaster sees and TRs it predicts.
    patch_trs : int, optional
        The BrainLM patch length: with it, ``horizon_trs`` must be a multiple (the future mask
        hides whole patches) and so must the window ``context_trs + horizon_trs``.
    """
    for name, v in (("context_trs", context_trs), ("horizon_trs", horizon_trs)):
        positive_int(v, f"{name} is", source, numpy_integers=True, of="TRs")
    if patch_trs is None:
        return
    if horizon_trs % patch_trs:
        raise BrainLMInputError(
            f"horizon_trs {horizon_trs} is not a multiple of the patch length {patch_trs} TRs; "
            "BrainLM predicts whole patches (use e.g. 20, 40, ...)", source)
    if (context_trs + horizon_trs) % patch_trs:
        raise BrainLMInputError(
            f"window context_trs + horizon_trs = {context_trs + horizon_trs} TRs is not a multiple "
            f"of the patch length {patch_trs} TRs", source)


@dataclass
class ForecastWindows:
    """Deterministic evaluation windows of one split.

    Attributes
    ----------
    context : ndarray, shape (W, context_trs, P), float32
        The first ``context_trs`` TRs of each tile: all a forecaster may see.
    target : ndarray, shape (W, horizon_trs, P), float32
        The next ``horizon_trs`` TRs: what it must predict.
    recording_ids : list of str, length W
    starts : ndarray, shape (W,)
        First TR of each tile in its recording (corpus TR grid).
    """

    context: np.ndarray
    target: np.ndarray
    recording_ids: list[str]
    starts: np.ndarray

    @property
    def n_windows(self) -> int:
        return self.context.shape[0]


def split_windows(tiles: np.ndarray, context_trs: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut tiles ``(W, context_trs + horizon_trs, P)`` into (context, target) copies."""
    return (np.ascontiguousarray(tiles[:, :context_trs]), np.ascontiguousarray(tiles[:, context_trs:]))


def forecast_windows(corpus: Corpus, context_trs: int, horizon_trs: int, *, split: str = "test",
                     stride: int | None = None, scaler: PreprocessingContract | None = None) -> ForecastWindows:
    """Tiles of ``context_trs + horizon_trs`` TRs from every recording of ``split``.

    Tiles start at 0, stride, 2 * stride ... (default stride: the window, i.e. non-overlapping);
    a recording's tail shorter than a window is not used. The same corpus and arguments always
    give the same windows in the same order. ``scaler``: see the module docstring.
    """
    check_lengths(context_trs, horizon_trs, source=corpus.path)
    window = context_trs + horizon_trs
    require_window(corpus, split, window, what="context + horizon")
    ds = WindowDataset(corpus, split, window_trs=window, mode="tiles", stride=stride, scaler=scaler)
    items = [ds[i] for i in range(len(ds))]
    tiles = np.stack([it["window"].numpy() for it in items])
    context, target = split_windows(tiles, context_trs)
    ids = [str(corpus.manifest["recording_id"].iat[it["recording"]]) for it in items]
    return ForecastWindows(context, target, ids, np.array([it["start"] for it in items]))


def split_recordings(corpus: Corpus, split: str, min_trs: int = 2, max_recordings: int | None = None,
                     scaler: PreprocessingContract | None = None) -> list[np.ndarray]:
    """Whole recordings of ``split``, scaled: a list of ``(T_i, P)`` float32 arrays.

    Recordings shorter than ``min_trs`` are left out; ``max_recordings`` keeps the first ones
    in manifest order (baselines load their training data into memory). ``scaler``: see the
    module docstring.
    """
    rows = corpus.split_indices(split)
    lengths = corpus.manifest["n_trs"].to_numpy()[rows]
    rows = rows[lengths >= min_trs]
    if max_recordings is not None:
        rows = rows[:max_recordings]
    if rows.size == 0:
        raise BrainLMInputError(f"no recording of split {split!r} has {min_trs} TRs", corpus.path)
    if scaler is None:
        return [corpus.read(int(r)) for r in rows]
    return read_model_input(corpus, rows, scaler)

