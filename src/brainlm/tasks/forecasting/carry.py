"""The carry path of a BrainLM forecaster: a linear forecast from the last observed TRs, inside
the model, which the decoder sees and corrects (``BrainLMConfig.forecast_carry``).

* ``var``: a ridge VAR over all parcels (the ``var`` baseline's estimator, fitted in closed form
  on the fine-tuning training split), saved as buffers with the weights and rolled out TR by TR.
  Before any training the forecaster *is* that VAR.
* ``linear``: one learned map from each parcel's last ``lags`` TRs to each future TR, shared by
  all parcels, starting at persistence and trained end to end with the rest of the model.

In both, the decoder's output layer and its embedding of the estimate start at zero, so the
model starts exactly at its carry path and fine-tuning learns the correction.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from brainlm.errors import BrainLMInputError
from brainlm.validation import positive_int
from brainlm.model.brainlm import BrainLM
from brainlm.model.config import FORECAST_CARRY
from brainlm.tasks.forecasting.baselines import RidgeVAR

#: How the results of a forecaster with a carry path are labelled (after the model's name).
CARRY_LABELS = {"linear": "linear carry from the last TRs", "var": "ridge VAR carry"}

#: Lags read by each carry path unless told otherwise (``var``: the VAR baseline's order).
DEFAULT_LAGS = {"linear": 20, "var": 2}


def carry_label(model) -> str | None:
    """``CARRY_LABELS`` entry of a model's carry path, or None for a model without one."""
    kind = getattr(getattr(model, "config", None), "forecast_carry", "none")
    return CARRY_LABELS.get(kind)


def resolve_carry(carry: str, model) -> str:
    """``FinetuneSettings.carry`` for ``model``: ``auto`` is ``var`` where the model can have a
    carry path (a BrainLM, hybrids included), else ``none``; anything else is checked."""
    if carry == "auto":
        return "var" if isinstance(model, BrainLM) else "none"
    if carry not in FORECAST_CARRY:
        raise BrainLMInputError(f"carry is {carry!r}; expected 'auto' or one of {FORECAST_CARRY}")
    return carry


def carry_lags(carry: str, lags: int | None) -> int:
    """The lags a carry path reads: ``lags``, or the default for ``carry``."""
    if carry not in FORECAST_CARRY:
        raise BrainLMInputError(f"carry is {carry!r}; expected one of {FORECAST_CARRY}")
    if carry == "none":
        return 0
    lags = DEFAULT_LAGS[carry] if lags is None else lags
    return positive_int(lags, "carry_lags is", numpy_integers=True, of="TRs")


def with_carry(model: BrainLM, carry: str, lags: int, horizon_trs: int, recordings=None) -> BrainLM:
    """``model``'s weights in the same architecture with a carry path, started (see
    :func:`start_carry`).

    Parameters
    ----------
    model : BrainLM without a carry path
    carry : {"linear", "var"}
    lags : int
        TRs read before the future.
    horizon_trs : int
        TRs the ``linear`` map predicts.
    recordings : list of ndarray (T_i, P), model input units
        The fine-tuning training split, to fit the ``var`` carry on.
    """
    if not isinstance(model, BrainLM):
        raise BrainLMInputError(f"a carry path needs a BrainLM model; got {type(model).__name__}")
    if model.config.forecast_carry != "none":
        raise BrainLMInputError(f"the model already has a carry path ({model.config.forecast_carry!r})")
    sizes = {"carry_lags": lags,
             "carry_steps": horizon_trs if carry == "linear" else 0,
             "carry_parcels": model.atlas.n_parcels if carry == "var" and model.atlas is not None else 0}
    if carry == "var" and recordings:
        sizes["carry_parcels"] = int(np.asarray(recordings[0]).shape[1])
    other = BrainLM(replace(model.config, forecast_carry=carry, **sizes), contract=model.contract,
                    atlas=model.atlas)
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith(("carry_", "decoder_carry_embed")) for k in missing):
        raise BrainLMInputError(f"cannot add a carry path: unexpected {unexpected}, missing {missing}")
    start_carry(other, recordings)
    other.forecast_trs = getattr(model, "forecast_trs", None)
    return other


def start_carry(model: BrainLM, recordings=None) -> BrainLM:
    """Put a carry model at its starting point, in place: the decoder's output layer and its
    embedding of the estimate at zero (the model outputs the carry estimate exactly), the
    ``linear`` map at persistence, the ``var`` buffers fitted on ``recordings``."""
    c = model.config
    if c.forecast_carry == "none":
        raise BrainLMInputError("the model has no carry path (config forecast_carry 'none')")
    with torch.no_grad():
        for layer in (model.decoder_pred, model.decoder_carry_embed):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if c.forecast_carry == "linear":
            model.carry_weight.zero_()
            model.carry_weight[:, -1] = 1.0
            model.carry_bias.zero_()
        else:
            if not recordings:
                raise BrainLMInputError("the 'var' carry path is fitted on training recordings; none given")
            coef, intercept = fit_var(recordings, c.carry_lags)
            if coef.shape != tuple(model.carry_coef.shape):
                raise BrainLMInputError(f"training recordings have {coef.shape[0]} parcels; the model's "
                                        f"carry VAR covers {c.carry_parcels}")
            model.carry_coef.copy_(torch.from_numpy(coef))
            model.carry_intercept.copy_(torch.from_numpy(intercept))
    return model


def fit_var(recordings, lags: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``var`` baseline fitted on ``recordings`` (ridge, leave-one-out penalty): coefficients
    (P, P * lags), parcel-major with the oldest lag first, and intercepts (P,), float32."""
    var = RidgeVAR(1, order=lags).fit(recordings)
    return (np.asarray(var.model_.coef_, dtype=np.float32),
            np.asarray(var.model_.intercept_, dtype=np.float32))
