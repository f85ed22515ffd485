"""Forecasting with BrainLM: predict the next TRs of a recording from its past.

A forward pass hides the last ``step_trs`` TRs of a window (``MaskSpec(strategy="future")``):
the encoder sees only the ``window_trs - step_trs`` TRs of context and the decoder predicts the
hidden patches. Longer horizons are rolled out: each pass's prediction is appended to the
context of the next.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.validation import positive_int
from brainlm.model.brainlm import BrainLM
from brainlm.checkpoints.folder import load_pretrained
from brainlm.model.masking import MaskSpec
from brainlm.tasks.model_input import is_model, preprocess

#: Written beside the weights of a fine-tuned forecaster: the context and horizon it learned.
FORECASTING_FILE = "forecasting.json"


def with_window(model: BrainLM, window_trs: int) -> BrainLM:
    """The same weights at another window length.

    The temporal embeddings are sinusoidal functions of the patch index, not learned tables, so
    a model pretrained on 200-TR windows runs on any multiple of its patch length.
    """
    if window_trs == model.config.window_trs:
        return model
    if window_trs % model.config.patch_trs:
        raise BrainLMInputError(f"window of {window_trs} TRs is not a multiple of the model's patch "
                                f"length {model.config.patch_trs} TRs")
    other = type(model)(replace(model.config, window_trs=int(window_trs)), contract=model.contract,
                        atlas=model.atlas)
    other.load_state_dict(model.state_dict(), strict=True)
    device = next(model.parameters()).device
    other.forecast_trs = getattr(model, "forecast_trs", None)
    return other.to(device)


def load_forecaster(directory, map_location: str = "cpu") -> BrainLM:
    """Load a checkpoint; a fine-tuned forecaster's horizon (``forecasting.json``) becomes the
    default ``step_trs`` of :func:`forecast` (attribute ``forecast_trs``)."""
    model = load_pretrained(directory, map_location=map_location)
    info = Path(directory) / FORECASTING_FILE
    model.forecast_trs = json.loads(info.read_text())["horizon_trs"] if info.is_file() else None
    return model


def _step(model: BrainLM, step_trs: int | None) -> int:
    c = model.config
    step = step_trs or getattr(model, "forecast_trs", None) or c.patch_trs
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step % c.patch_trs \
            or not 0 < step < c.window_trs:
        raise BrainLMInputError(f"step_trs {step!r}: expected a positive multiple of the patch length "
                                f"{c.patch_trs} TRs shorter than the window ({c.window_trs} TRs)")
    return int(step)


@torch.inference_mode()
def predict_future(model: BrainLM, context: np.ndarray, xyz: np.ndarray, horizon_trs: int, *,
                   step_trs: int | None = None, batch_size: int = 32) -> np.ndarray:
    """Forecast after each context window, rolling out as many passes as ``horizon_trs`` needs.

    Parameters
    ----------
    context : ndarray, shape (B, C, P)
        Model input units; only its last ``window_trs - step_trs`` TRs are used, and
        ``C`` must be at least that.
    xyz : ndarray, shape (P, 3)
        Parcel MNI coordinates, mm.
    horizon_trs : int
        TRs to predict (any positive number; the last pass is trimmed).
    step_trs : int, optional
        TRs hidden and predicted per pass (a multiple of the patch length). Default: the
        horizon the model was fine-tuned for (``model.forecast_trs``), else one patch.

    Returns
    -------
    ndarray, shape (B, horizon_trs, P), float32.
    """
    positive_int(horizon_trs, "horizon_trs is", numpy_integers=True, of="TRs")
    c = model.config
    step = _step(model, step_trs)
    need = c.window_trs - step
    context = np.asarray(context, dtype=np.float32)
    if context.ndim != 3 or context.shape[1] < need:
        raise BrainLMInputError(
            f"context has shape {context.shape}; expected (windows, at least {need} TRs, parcels): the "
            f"model reads {need} TRs to predict the next {step} (window {c.window_trs} TRs)")
    model.eval()
    dev = next(model.parameters()).device
    p = context.shape[2]
    xyz_t = torch.tensor(np.array(xyz, dtype=np.float32), device=dev)
    spec = MaskSpec("future", future_trs=step)
    out = []
    for i in range(0, len(context), batch_size):
        seq = torch.from_numpy(context[i:i + batch_size, -need:]).to(dev)
        b = seq.shape[0]
        mask = model.sample_mask(spec, b, p, device=dev)
        coords = xyz_t.expand(b, -1, -1)
        parts, done = [], 0
        while done < horizon_trs:
            # The hidden TRs are filled with zeros (the scaled median); the encoder drops them.
            x = torch.cat([seq, seq.new_zeros(b, step, p)], dim=1)
            _, pred = model(x, coords, mask)
            future = model.unpatchify(pred.float())[:, need:]
            parts.append(future)
            seq = torch.cat([seq, future], dim=1)[:, -need:]
            done += step
        out.append(torch.cat(parts, dim=1)[:, :horizon_trs].cpu().numpy())
    return np.concatenate(out)


def forecast(model: BrainLM | str | Path, recording: Recording | np.ndarray, horizon: int, *,
             step_trs: int | None = None, context_end: int | None = None,
             transfer_atlas: bool = False) -> np.ndarray:
    """Forecast the ``horizon`` TRs that follow a recording's context.

    Parameters
    ----------
    model : BrainLM or path of a checkpoint folder
        Best a forecaster fine-tuned by :func:`brainlm.tasks.forecasting.finetune.finetune`.
    recording : Recording or ndarray (T, P)
        A raw :class:`Recording` is preprocessed with the model's contract (cleaning, TR
        resampling, robust scaling; :func:`brainlm.tasks.model_input.preprocess`); an array is taken as already in model input units, on the
        model's atlas.
    horizon : int
        TRs to forecast, at the contract's TR. Beyond one pass (``step_trs``) the forecast is
        rolled out by feeding predictions back as context, so errors compound.
    step_trs : int, optional
        TRs predicted per pass; see :func:`predict_future`.
    context_end : int, optional
        TR (exclusive, on the preprocessed grid) where the context ends; default: the end of
        the recording. The context is the ``window_trs - step_trs`` TRs before it.
    transfer_atlas : bool
        Allow a recording on another atlas (through parcel coordinates).

    Returns
    -------
    ndarray, shape (horizon, P), float32, in model input units (robust-scaled).
    """
    if not is_model(model):
        model = load_forecaster(model)
    if isinstance(recording, Recording):
        data = preprocess(model, recording, transfer_atlas=transfer_atlas)
        xyz = np.array(recording.atlas.xyz, dtype=np.float32)
    else:
        data = np.asarray(recording, dtype=np.float32)
        if model.atlas is None:
            raise BrainLMInputError("the model has no atlas; pass a Recording (with its atlas) instead "
                                    "of an array")
        if data.ndim != 2 or data.shape[1] != model.atlas.n_parcels:
            raise BrainLMInputError(f"array has shape {data.shape}; expected (TRs, {model.atlas.n_parcels} "
                                    f"parcels of atlas {model.atlas.name!r})")
        xyz = np.array(model.atlas.xyz, dtype=np.float32)
    end = len(data) if context_end is None else int(context_end)
    if not 0 < end <= len(data):
        raise BrainLMInputError(f"context_end {context_end!r} is outside the recording (1..{len(data)} TRs)")
    need = model.config.window_trs - _step(model, step_trs)
    if end < need:
        raise BrainLMInputError(f"the recording has {end} TRs of context (after preprocessing); the "
                                f"model needs {need}")
    return predict_future(model, data[None, end - need:end], xyz, horizon, step_trs=step_trs)[0]


class BrainLMForecaster:
    """A BrainLM checkpoint with the baselines' ``fit``/``predict`` interface (it is fine-tuned
    beforehand, so ``fit`` does nothing).

    Parameters
    ----------
    model : BrainLM or checkpoint folder
    horizon_trs : int
    context_trs : int, optional
        When given, the model is run at window ``context_trs + step`` (weights unchanged).
    name : str
    """

    def __init__(self, model: BrainLM | str | Path, horizon_trs: int, *, context_trs: int | None = None,
                 name: str = "brainlm", step_trs: int | None = None, batch_size: int = 32):
        self.source = None if is_model(model) else str(model)
        model = model if is_model(model) else load_forecaster(model)
        self.step_trs = _step(model, step_trs)
        if context_trs is not None:
            model = with_window(model, context_trs + self.step_trs)
        self.model, self.horizon_trs, self.name, self.batch_size = model, int(horizon_trs), name, batch_size
        if model.atlas is None:
            raise BrainLMInputError("checkpoint has no atlas; cannot place its parcels", self.source)
        self.xyz = np.array(model.atlas.xyz, dtype=np.float32)

    def fit(self, recordings, val=None) -> "BrainLMForecaster":
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        """context: (B, C, P) -> (B, horizon_trs, P)."""
        return predict_future(self.model, context, self.xyz, self.horizon_trs, step_trs=self.step_trs,
                              batch_size=self.batch_size)

    def describe(self) -> dict:
        return {"checkpoint": self.source, "window_trs": self.model.config.window_trs,
                "carry": getattr(self.model.config, "forecast_carry", "none"),
                "step_trs": self.step_trs, "rollout_passes": -(-self.horizon_trs // self.step_trs),
                "parameters": self.model.count_parameters()["total"]}
