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

Weights come from ``BrainLM.forward_encoder(..., return_attention=True)``; the inference path
without weights stays on ``scaled_dot_product_attention`` and is untouched. Each layer's full
``[B, H, 1 + L, 1 + L]`` weights are reduced as soon as the layer has run (a forward hook on the
block), so memory holds one layer's weights at a time instead of all ``depth`` of them: at 424
parcels and 12 heads one layer is 0.9 GB per window.

Data reach the model as :class:`ModelInput` (one recording's windows and parcel coordinates)
through :func:`model_inputs`, from a prepared corpus, time-series files, or ``Recording``
objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from brainlm.data.atlas import Atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.tasks.corpus_input import input_atlas, recording_windows

__all__ = ["AttentionMaps", "ModelInput", "extract_attention", "model_inputs", "recording_attention"]


@dataclass
class ModelInput:
    """One recording ready for the model.

    Attributes
    ----------
    ids : dict
        ``recording_id``, ``subject`` (and, where known, session, task, run, site, split).
    windows : torch.Tensor, shape (W, window_trs, P), float32
        Deterministic non-overlapping tiles of the preprocessed (scaled) recording.
    xyz : torch.Tensor, shape (P, 3), float32
        Parcel centres, MNI mm.
    atlas : Atlas
        The parcellation of the data (the model's, or another one with ``transfer_atlas``).
    """

    ids: dict
    windows: torch.Tensor
    xyz: torch.Tensor
    atlas: Atlas

    @property
    def timeseries(self) -> np.ndarray:
        """The tiles end to end: (W * window_trs, P) float32, the model's input signal."""
        w = self.windows.numpy()
        return w.reshape(-1, w.shape[2])


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

    def __init__(self, n_parcels: int, n_patches: int, parcel_matrix: bool):
        self.p, self.n, self.parcel_matrix = n_parcels, n_patches, parcel_matrix
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
        self.cls.append(w[:, :, 0, 1:].reshape(b, heads, self.p, self.n).mean(-1))
        if self.parcel_matrix:
            tok = w[:, :, 1:, 1:].reshape(b, heads, self.p, self.n, self.p, self.n)
            self.parcel.append(tok.sum(-1).mean(-2).sum(0, dtype=torch.float64))
        return h, None


@torch.inference_mode()
def extract_attention(model: BrainLM, windows: torch.Tensor, xyz: torch.Tensor, *,
                      batch_size: int = 8, parcel_matrix: bool = True,
                      token_embeddings: bool = False) -> AttentionMaps:
    """CLS and parcel-by-parcel attention of every layer and head, with nothing masked.

    Parameters
    ----------
    model : BrainLM
        Runs on the device its parameters are on (CPU or GPU); put into eval mode.
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
    n = model.config.n_patches
    reducers = [_LayerReducer(p, n, parcel_matrix) for _ in model.blocks]
    handles = [blk.register_forward_hook(r) for blk, r in zip(model.blocks, reducers)]
    emb = []
    try:
        for i in range(0, w_count, batch_size):
            x = windows[i:i + batch_size].to(dev)
            enc = model.forward_encoder(x, xyz.to(dev).expand(len(x), -1, -1), mask=None,
                                        return_attention=True)
            if token_embeddings:
                emb.append(enc.latent[:, 1:].float().reshape(len(x), p, n, -1).mean(2).cpu())
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


def recording_attention(model: BrainLM, inputs: Iterable[ModelInput], *, batch_size: int = 8,
                        parcel_matrix: bool = False, token_embeddings: bool = False,
                        ) -> Iterator[tuple[ModelInput, AttentionMaps]]:
    """:func:`extract_attention` for each recording of ``inputs``, one at a time."""
    for item in inputs:
        yield item, extract_attention(model, item.windows, item.xyz, batch_size=batch_size,
                                      parcel_matrix=parcel_matrix, token_embeddings=token_embeddings)


# -- data -> model input ---------------------------------------------------------------------
def model_inputs(model: BrainLM, data, *, transfer_atlas: bool = False, target_tr: float | None = None,
                 tr: float | None = None, orientation: str = "auto", key: str | None = None,
                 ) -> Iterator[ModelInput]:
    """Model input for every recording of ``data``.

    Parameters
    ----------
    model : BrainLM
        A pretrained model with its preprocessing contract.
    data : path, list of paths, or list of Recording
        * a prepared corpus folder (its cleaning must match the checkpoint's contract; on the
          checkpoint's atlas the checkpoint's scaling is applied, on another atlas the corpus'
          own training-split scaling), or time-series files/folders on the checkpoint's atlas
          (read with ``tr``, ``orientation``, ``key``) -- exactly as ``brainlm embed`` reads them;
        * ``Recording`` objects: on the checkpoint's atlas, ``model.preprocess``; on another
          atlas (``transfer_atlas``), cleaned with the checkpoint's settings, resampled to
          ``target_tr`` (default: the contract's) and robust-scaled with statistics pooled over
          the recordings given (the checkpoint has none for that atlas).
    transfer_atlas : bool
        Allow an atlas other than the checkpoint's (through parcel coordinates).

    Yields
    ------
    ModelInput
        Recordings shorter than one window are skipped for corpora (as in ``brainlm embed``)
        and an error for ``Recording`` objects.
    """
    if isinstance(data, Recording):
        data = [data]
    if isinstance(data, (str, Path)):
        data = [data]
    data = list(data)
    if not data:
        raise BrainLMInputError("no data given; expected a corpus, files, or recordings")
    if all(isinstance(d, Recording) for d in data):
        yield from _from_recordings(model, data, transfer_atlas, target_tr)
        return
    if any(isinstance(d, Recording) for d in data):
        raise BrainLMInputError("data mixes Recording objects and paths; pass one kind")
    atlas = input_atlas(model, data)
    for ids, windows, _, xyz in recording_windows(model, data, tr=tr, orientation=orientation, key=key,
                                                  transfer_atlas=transfer_atlas):
        yield ModelInput(ids=ids, windows=windows, xyz=xyz, atlas=atlas)


def _from_recordings(model: BrainLM, recordings: list[Recording], transfer_atlas: bool,
                     target_tr: float | None) -> Iterator[ModelInput]:
    atlas = recordings[0].atlas
    for rec in recordings:
        if not rec.atlas.matches(atlas):
            raise BrainLMInputError(f"recordings are on different atlases ({atlas.name!r} and "
                                    f"{rec.atlas.name!r}); pass recordings of one atlas",
                                    rec.source or rec.id)
        model.check_atlas(rec.atlas, transfer=transfer_atlas, source=rec.source or rec.id)
    if model.contract is None:
        raise BrainLMInputError("the model has no preprocessing contract; load a pretrained checkpoint")
    xyz = torch.from_numpy(np.array(atlas.xyz, dtype=np.float32))
    on_model_atlas = model.atlas is not None and atlas.matches(model.atlas)
    if on_model_atlas and target_tr is None:
        scaled = [model.preprocess(rec) for rec in recordings]
    else:
        cleaning = {k: v for k, v in model.contract.to_dict().items()
                    if k not in ("median", "iqr", "scaler_fit")}
        if target_tr is not None:
            cleaning["target_tr"] = float(target_tr)
        contract = PreprocessingContract.from_dict(cleaning)
        cleaned = [contract.clean(r.timeseries, r.tr, confounds=r.confounds,
                                  parcel_names=r.atlas.parcel_names, source=r.source or r.id).data
                   for r in recordings]
        if on_model_atlas:
            contract.median, contract.iqr = model.contract.median, model.contract.iqr
        else:
            # The checkpoint holds no scaling statistics for this atlas: pool them over the data.
            pooled = np.concatenate(cleaned)
            q1, med, q3 = np.nanpercentile(pooled, [25, 50, 75], axis=0)
            iqr = np.where(q3 - q1 > 0, q3 - q1, 1.0)
            contract.median, contract.iqr = np.nan_to_num(med).tolist(), iqr.tolist()
        scaled = [contract.scale(c) for c in cleaned]
    for rec, x in zip(recordings, scaled):
        try:
            windows, _ = model.windows(x)
        except BrainLMInputError as e:
            raise BrainLMInputError(e.reason, rec.source or rec.id) from None
        ids = {"recording_id": rec.id, "subject": rec.subject, "session": rec.session,
               "task": rec.task, "run": rec.run, "site": rec.site, **dict(rec.phenotypes)}
        yield ModelInput(ids=ids, windows=windows, xyz=xyz, atlas=atlas)
