"""The model's forward passes on prepared windows, and the high-level API on them.

* :func:`embed_windows`: CLS and mean-token embeddings of windows with nothing masked;
* :func:`predict_masked`: the reconstruction of masked windows, as window values;
* :func:`encode` and :func:`reconstruct` (also ``brainlm.encode`` / ``brainlm.reconstruct``):
  the same on raw recordings, through :mod:`brainlm.tasks.model_input`.

Every function takes a model of any family (:class:`~brainlm.model.family.MaskedBrainModel`)
and asks the model, not its class, how its tokens pool and how its predictions and masks
become window values.
"""

from __future__ import annotations

from pathlib import Path

import torch

from brainlm.data.recording import Recording
from brainlm.model.family import MaskedBrainModel
from brainlm.model.masking import MaskSpec
from brainlm.model.precision import autocast
from brainlm.tasks.model_input import load_model, model_inputs, model_windows, parcel_xyz, preprocess

__all__ = ["embed_windows", "predict_masked", "encode", "reconstruct"]


@torch.inference_mode()
def embed_windows(model: MaskedBrainModel, windows: torch.Tensor, xyz: torch.Tensor,
                  batch_size: int = 32, precision: str = "32-true") -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder embeddings of windows with nothing masked.

    windows: (W, T, P), xyz: (P, 3) mm -> (cls (W, D), mean over tokens (W, D)) float32 on CPU
    (``model.pool_tokens``: the image model's mean leaves its padding-only tokens out).
    Deterministic: no masking, no shuffling, a fixed order of operations. ``precision``: one of
    :data:`brainlm.model.precision.PRECISIONS` (``bf16-mixed``: about 2 significant digits less,
    faster where bfloat16 is native).
    """
    model.eval()
    dev = next(model.parameters()).device
    cls, mean = [], []
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size].to(dev)
        with autocast(precision, dev):
            c, m = model.pool_tokens(model.forward_encoder(x, xyz.to(dev).expand(len(x), -1, -1)))
        cls.append(c.float().cpu())
        mean.append(m.float().cpu())
    return torch.cat(cls), torch.cat(mean)


@torch.inference_mode()
def predict_masked(model: MaskedBrainModel, windows: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor,
                   batch_size: int = 32, precision: str = "32-true") -> torch.Tensor:
    """The model's reconstruction of masked windows.

    windows: (W, T, P); xyz: (P, 3) mm; mask: (W, *model.token_grid(P)) bool, True where hidden
    ((W, P, N); the image model: (W, L) over its patch grid) -> predictions (W, T, P) float32 on
    CPU (every value, masked or not; ``model.prediction_values``). ``precision`` as in
    :func:`embed_windows`.
    """
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(windows), batch_size):
        x, m = windows[i:i + batch_size].to(dev), mask[i:i + batch_size].to(dev)
        with autocast(precision, dev):
            _, pred = model(x, xyz.to(dev).expand(len(x), -1, -1), m)
        out.append(model.prediction_values(pred.float()).cpu())
    return torch.cat(out)


def encode(model: MaskedBrainModel | str | Path, recordings: list[Recording] | Recording, *,
           batch_size: int = 32, transfer_atlas: bool = False, target_tr: float | None = None,
           precision: str = "32-true") -> list[dict]:
    """Embeddings of raw recordings, per window and averaged over each recording's windows
    (``precision`` as in :func:`embed_windows`).

    Returns
    -------
    list of dict, one per recording: ``windows_cls``, ``windows_mean`` (W, D) float32,
    ``cls``, ``mean`` (D,), and ``ids``.
    """
    model = load_model(model)
    out = []
    for item in model_inputs(model, recordings, transfer_atlas=transfer_atlas, target_tr=target_tr):
        cls, mean = embed_windows(model, item.windows, item.xyz, batch_size, precision)
        out.append({"ids": item.ids, "windows_cls": cls.numpy(), "windows_mean": mean.numpy(),
                    "cls": cls.mean(0).numpy(), "mean": mean.mean(0).numpy()})
    return out


def reconstruct(model: MaskedBrainModel | str | Path, recording: Recording,
                mask: MaskSpec | torch.Tensor = MaskSpec(), *, seed: int = 0, transfer_atlas: bool = False,
                precision: str = "32-true") -> dict:
    """Masked reconstruction of a raw recording's tiles.

    Parameters
    ----------
    mask : MaskSpec (drawn with ``seed``) or bool Tensor (W, *model.token_grid(P)).
    precision : str
        As in :func:`embed_windows`.

    Returns
    -------
    dict with ``target`` and ``prediction`` (W, T, P) in model input units, ``mask`` (W, T, P)
    bool (True where the model had to predict) and ``starts`` (W,).
    """
    model = load_model(model)
    data = preprocess(model, recording, transfer_atlas=transfer_atlas)
    wins, starts = model_windows(model, data, source=recording.source or recording.id)
    if isinstance(mask, MaskSpec):
        mask = model.sample_mask(mask, len(wins), wins.shape[2], torch.Generator().manual_seed(seed))
    pred = predict_masked(model, wins, parcel_xyz(recording.atlas), mask, precision=precision)
    return {"target": wins.numpy(), "prediction": pred.numpy(),
            "mask": model.token_mask_to_values(mask).cpu().numpy(), "starts": starts}
