"""Attention of a pretrained BrainLM, reduced to parcels.

The encoder attends over ``1 + L`` tokens (CLS, then ``L = P * N`` tokens in parcel-major order:
token ``parcel * N + patch``, ``N`` time patches per window). Two reductions are kept per layer
and head:

* **CLS attention to a parcel**: the CLS token's attention weights to the parcel's ``N`` tokens,
  averaged over the time patches. Summed over parcels and multiplied by ``N`` it is ``1`` minus
  the CLS token's attention to itself.
* **parcel-by-parcel attention**: entry ``[i, j]`` is the attention that a token of parcel ``i``
  pays to all tokens of parcel ``j`` (summed over ``j``'s patches, averaged over ``i``'s
  patches). Each row sums to ``1`` minus the attention of parcel ``i``'s tokens to CLS.

The image ViT-MAE (an imported ``vitmae_*`` checkpoint) has image-patch tokens instead: a token
belongs to every parcel of its row band of y-sorted parcels. Its maps are put on parcels by the
model's :meth:`parcel_reduction` (:class:`brainlm.model.family.ParcelReduction`): a parcel's CLS
attention is the mean over the tokens of its band that hold window TRs, and the parcel-by-parcel
entry ``[i, j]`` sums over the tokens of ``j``'s band (so parcels of one band share their values).

Weights come from ``BrainLM.forward_encoder(..., return_attention=True)``; the inference path
without weights stays on ``scaled_dot_product_attention`` and is untouched. Each layer's full
``[B, H, 1 + L, 1 + L]`` weights are reduced as soon as the layer has run (a forward hook on the
block), so memory holds one layer's weights at a time instead of all ``depth`` of them: at 424
parcels and 12 heads one layer is 0.9 GB per window.

Data reach the model as :class:`brainlm.tasks.model_input.ModelInput` (one recording's windows
and parcel coordinates), from :func:`brainlm.tasks.model_input.model_inputs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from brainlm.errors import BrainLMInputError
from brainlm.model.family import MaskedBrainModel, ParcelReduction
from brainlm.tasks.model_input import ModelInput

__all__ = ["AttentionMaps", "extract_attention", "recording_attention"]


@dataclass
class AttentionMaps:
    """Attention of one set of windows, reduced to parcels.

    Attributes
    ----------
    cls : ndarray, shape (W, layers, heads, P), float32
        Per window, layer and head: CLS-to-parcel attention (mean over the parcel's time patches).
    cls_self : ndarray, shape (W, layers, heads), float32
        The CLS token's attention to itself.
    parcel : ndarray, shape (layers, heads, P, P), float64, or None
        Parcel-by-parcel attention (row: attending parcel, column: attended parcel), mean over
        the windows.
    embeddings : ndarray, shape (W, P, D), float32, or None
        Final-layer (normed) token embeddings averaged over each parcel's time patches.
    """

    cls: np.ndarray
    cls_self: np.ndarray
    parcel: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    n_windows: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_windows = int(self.cls.shape[0])

    def relative_cls(self, layers=None, heads=None) -> np.ndarray:
        """CLS attention per window as a share of its uniform value: (W, P), mean 1 over parcels.

        Averaged over the selected ``layers`` and ``heads`` (indices; ``None``: all), then divided
        by the mean over parcels, so recordings whose CLS token attends more to itself are
        comparable with the others.
        """
        a = self.cls
        if layers is not None:
            a = a[:, list(layers)]
        if heads is not None:
            a = a[:, :, list(heads)]
        a = a.mean(axis=(1, 2), dtype=np.float64)
        return a / a.mean(axis=1, keepdims=True)


class _LayerReducer:
    """Forward hook on an encoder block: turns its [B, H, 1+L, 1+L] weights into the parcel
    reductions, then drops them, so the encoder never holds more than one layer's weights."""

    def __init__(self, reduction: ParcelReduction, parcel_matrix: bool):
        self.reduction, self.parcel_matrix = reduction, parcel_matrix
        self.cls: list[torch.Tensor] = []
        self.cls_self: list[torch.Tensor] = []
        self.parcel: list[torch.Tensor] = []

    def __call__(self, module, inputs, output):
        h, w = output
        if w is None:
            return None
        b, heads = w.shape[:2]
        w = w.float()
        self.cls_self.append(w[:, :, 0, 0])
        self.cls.append(self.reduction.tokens(w[:, :, 0, 1:]))
        if self.parcel_matrix:
            self.parcel.append(self.reduction.pairs(w[:, :, 1:, 1:]))
        return h, None


@torch.inference_mode()
def extract_attention(model: MaskedBrainModel, windows: torch.Tensor, xyz: torch.Tensor, *,
                      batch_size: int = 8, parcel_matrix: bool = True,
                      token_embeddings: bool = False) -> AttentionMaps:
    """CLS and parcel-by-parcel attention of every layer and head, with nothing masked.

    Parameters
    ----------
    model : MaskedBrainModel
        Any family; runs on the device its parameters are on (CPU or GPU); put into eval mode.
    windows : torch.Tensor, shape (W, window_trs, P)
        Model input (preprocessed, scaled), e.g. ``ModelInput.windows``.
    xyz : torch.Tensor, shape (P, 3)
        Parcel centres in MNI mm.
    batch_size : int
        Windows per forward pass. Memory per window is about ``heads * (1 + P * N)^2 * 4`` bytes
        (one layer at a time), e.g. 14 MB for the tiny model on AAL2.
    parcel_matrix : bool
        Also return the (layers, heads, P, P) parcel-by-parcel attention.
    token_embeddings : bool
        Also return the final-layer embedding of every parcel per window.

    Returns
    -------
    AttentionMaps
        Deterministic: the same call gives the same numbers.
    """
    if windows.ndim != 3:
        raise BrainLMInputError(f"windows have shape {tuple(windows.shape)}; expected (W, TRs, parcels)")
    w_count, _, p = windows.shape
    if w_count == 0:
        raise BrainLMInputError("no windows to run the model on")
    if xyz.shape != (p, 3):
        raise BrainLMInputError(f"xyz has shape {tuple(xyz.shape)}; expected ({p}, 3) (MNI mm per parcel)")
    if batch_size < 1:
        raise BrainLMInputError(f"batch_size is {batch_size}; expected an integer >= 1")
    model.eval()
    dev = next(model.parameters()).device
    reduction = model.parcel_reduction(p)
    reducers = [_LayerReducer(reduction, parcel_matrix) for _ in model.blocks]
    handles = [blk.register_forward_hook(r) for blk, r in zip(model.blocks, reducers)]
    emb = []
    try:
        for i in range(0, w_count, batch_size):
            x = windows[i:i + batch_size].to(dev)
            enc = model.forward_encoder(x, xyz.to(dev).expand(len(x), -1, -1), mask=None,
                                        return_attention=True)
            if token_embeddings:
                emb.append(reduction.token_vectors(enc.latent[:, 1:].float()).cpu())
    finally:
        for hd in handles:
            hd.remove()
    if any(len(r.cls) != -(-w_count // batch_size) for r in reducers):
        raise RuntimeError("encoder blocks did not return attention weights; "
                           "BrainLM.forward_encoder(return_attention=True) changed")
    # [W, layers, heads, P]: concatenate batches per layer, then stack the layers.
    cls = torch.stack([torch.cat(r.cls) for r in reducers], dim=1).cpu().numpy()
    cls_self = torch.stack([torch.cat(r.cls_self) for r in reducers], dim=1).cpu().numpy()
    parcel = None
    if parcel_matrix:
        parcel = torch.stack([torch.stack(r.parcel).sum(0) for r in reducers]).cpu().numpy() / w_count
    return AttentionMaps(cls=cls, cls_self=cls_self, parcel=parcel,
                         embeddings=torch.cat(emb).numpy() if token_embeddings else None)


def recording_attention(model: MaskedBrainModel, inputs: Iterable[ModelInput], *, batch_size: int = 8,
                        parcel_matrix: bool = False, token_embeddings: bool = False,
                        ) -> Iterator[tuple[ModelInput, AttentionMaps]]:
    """:func:`extract_attention` for each recording of ``inputs``, one at a time."""
    for item in inputs:
        yield item, extract_attention(model, item.windows, item.xyz, batch_size=batch_size,
                                      parcel_matrix=parcel_matrix, token_embeddings=token_embeddings)
