"""What every model family answers, so that tasks never branch on a model's class (no I/O).

Two kinds of tokens exist. :class:`BrainLM` and the imported paper model
(:class:`~brainlm.model.upstream.UpstreamBrainLM`) cut each parcel's window into ``n_patches``
time patches of ``patch_trs`` TRs: a window of P parcels is P x N tokens (parcel-major), its
masks are [W, P, N] and its predictions [W, P, N, k] (:class:`ParcelPatchTokens` implements
that layout for both). The image ViT-MAE (:class:`~brainlm.model.upstream.UpstreamViTMAE`)
cuts a padded image of the window into ``grid x grid`` square patches: its masks are [W, L]
over that grid and its forward pass already returns [W, T, P].

:class:`MaskedBrainModel` is the protocol each family implements:

* token layout: ``has_parcel_patch_tokens``, :meth:`~MaskedBrainModel.token_grid` (the shape of
  one window's token mask) and :meth:`~MaskedBrainModel.parcel_reduction` (token values, token
  vectors and token-by-token attention per parcel, a :class:`ParcelReduction`);
* pooling: :meth:`~MaskedBrainModel.pool_tokens`, the CLS and mean embeddings of an encoder pass;
* masked values: :meth:`~MaskedBrainModel.token_mask_to_values` and
  :meth:`~MaskedBrainModel.prediction_values` put a token mask and a forward pass's predictions
  on the [W, T, P] grid of window values, so every task scores values, whatever the tokens were.

Shapes: W (or B) windows, T = ``window_trs`` TRs, P parcels, N = ``n_patches`` patches per
parcel, k = ``patch_trs`` TRs per patch, L tokens of a window, D the encoder width, H heads.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from brainlm.errors import BrainLMInputError
from brainlm.model.encoder import EncoderOutput
from brainlm.model.masking import MaskSpec


class ParcelReduction(Protocol):
    """How a model's token-level quantities become per-parcel ones (attention, embeddings)."""

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L] token values -> [..., P], each parcel's mean over its tokens."""

    def token_vectors(self, h: torch.Tensor) -> torch.Tensor:
        """[B, L, D] token vectors -> [B, P, D], each parcel's mean over its tokens."""

    def pairs(self, w: torch.Tensor) -> torch.Tensor:
        """Token-by-token attention [B, H, L, L] -> parcel-by-parcel [H, P, P] float64, summed
        over B: the mean over the query parcel's tokens of the attention summed over the key
        parcel's tokens."""


@runtime_checkable
class MaskedBrainModel(Protocol):
    """A masked autoencoder over [B, T, P] windows of parcellated fMRI, of any family.

    ``config`` has at least ``window_trs`` and ``dim``; ``contract`` and ``atlas`` are carried
    for :mod:`brainlm.tasks.model_input` (None on a model that was never pretrained).
    """

    config: Any
    contract: Any
    atlas: Any
    #: True where a token is one parcel's time patch (masks [W, P, N]); False for image tokens.
    has_parcel_patch_tokens: bool

    def forward_encoder(self, x: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor | None = None,
                        return_attention: bool = False) -> EncoderOutput:
        """x: [B, T, P]; xyz: [B, P, 3] MNI mm (the image model ignores it); mask: a token mask
        [B, *token_grid(P)] (True = hidden) or None -> latent [B, 1 + L_visible, D], CLS first."""

    def forward(self, x: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor):
        """x: [B, T, P]; xyz: [B, P, 3]; mask: [B, *token_grid(P)] -> (loss, predictions, which
        :meth:`prediction_values` puts on [B, T, P])."""

    def sample_mask(self, spec: MaskSpec, batch: int, n_parcels: int,
                    generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """A token mask drawn by ``spec``: [B, *token_grid(n_parcels)] bool, True = hidden."""

    def token_grid(self, n_parcels: int) -> tuple[int, ...]:
        """The shape of one window's token mask: (P, N), or (L,) for image tokens."""

    def parcel_reduction(self, n_parcels: int) -> ParcelReduction:
        """Token values, token vectors and token attention per parcel, for windows of
        ``n_parcels`` parcels."""

    def pool_tokens(self, enc: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS and mean token of an encoder pass with nothing masked: ([B, D], [B, D])."""

    def prediction_values(self, pred: torch.Tensor) -> torch.Tensor:
        """A forward pass's predictions -> [B, T, P] window values (atlas order, input units)."""

    def token_mask_to_values(self, mask: torch.Tensor) -> torch.Tensor:
        """Token mask [B, *token_grid] -> value mask [B, T, P] bool, True where the model had to
        predict."""


def require_parcel_patch_tokens(model: MaskedBrainModel, what: str) -> None:
    """Error naming ``what`` for a model whose tokens are not parcel x time patches."""
    if not model.has_parcel_patch_tokens:
        raise BrainLMInputError(f"{what} needs tokens that are one parcel's time patch; the "
                                f"{type(model).__name__} (image ViT-MAE) has image-patch tokens "
                                "(bands of y-sorted parcels x bands of TRs), so it cannot run this")


class PatchParcelReduction:
    """:class:`ParcelReduction` for parcel x time-patch tokens: a parcel's value is the mean
    over its ``n_patches`` tokens (tokens parcel-major, L = P * N)."""

    def __init__(self, n_parcels: int, n_patches: int):
        self.p, self.n = n_parcels, n_patches

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L] -> [..., P]."""
        return x.reshape(*x.shape[:-1], self.p, self.n).mean(-1)

    def token_vectors(self, h: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, P, D]."""
        return h.reshape(h.shape[0], self.p, self.n, -1).mean(2)

    def pairs(self, w: torch.Tensor) -> torch.Tensor:
        """[B, H, L, L] -> [H, P, P] float64, summed over B."""
        b, heads = w.shape[:2]
        tok = w.reshape(b, heads, self.p, self.n, self.p, self.n)
        return tok.sum(-1).mean(-2).sum(0, dtype=torch.float64)


class MembershipParcelReduction:
    """:class:`ParcelReduction` for tokens that each belong to a set of parcels.

    member: [L, P] float, 1 where token ``l`` holds values of parcel ``p``. A parcel's value is
    the mean over its tokens; in :meth:`pairs` a key token counts for every parcel it holds.
    Tokens that belong to no parcel (image padding) count for none.
    """

    def __init__(self, member: torch.Tensor):
        self.member, self.mean_weights = member, member / member.sum(dim=0, keepdim=True)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L] -> [..., P]."""
        return x @ self.mean_weights.to(x.device, x.dtype)

    def token_vectors(self, h: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, P, D]."""
        return torch.einsum("bld,lp->bpd", h, self.mean_weights.to(h.device, h.dtype))

    def pairs(self, w: torch.Tensor) -> torch.Tensor:
        """[B, H, L, L] -> [H, P, P] float64, summed over B."""
        mw, member = self.mean_weights.to(w.device, w.dtype), self.member.to(w.device, w.dtype)
        return (mw.T @ w @ member).sum(0, dtype=torch.float64)


class ParcelPatchTokens:
    """Tokens that are one parcel's patch of ``patch_trs`` consecutive TRs: how a window becomes
    tokens and back, the token masks drawn on them, and the :class:`MaskedBrainModel` answers
    for that layout. Shared by :class:`~brainlm.model.brainlm.BrainLM` and the original BrainLM
    paper model (:mod:`brainlm.model.upstream`); needs ``self.config`` with ``window_trs``,
    ``n_patches`` and ``patch_trs``."""

    has_parcel_patch_tokens = True

    # -- shapes ------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, P] window -> [B, P, N, patch_trs]."""
        b, t, p = x.shape
        if t != self.config.window_trs:
            raise BrainLMInputError(f"window has {t} TRs; the model expects {self.config.window_trs}")
        return x.transpose(1, 2).reshape(b, p, self.config.n_patches, self.config.patch_trs)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, P, N, patch_trs] -> [B, T, P]."""
        b, p, n, k = patches.shape
        return patches.reshape(b, p, n * k).transpose(1, 2)

    def sample_mask(self, spec: MaskSpec, batch: int, n_parcels: int,
                    generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """[B, P, N] bool mask drawn by ``spec`` (deterministic under a seeded generator)."""
        c = self.config
        return spec.sample(batch, n_parcels, c.n_patches, c.patch_trs, generator, device)

    # -- the family's answers ----------------------------------------------------------------
    def token_grid(self, n_parcels: int) -> tuple[int, ...]:
        """(P, N): a window's token mask is one flag per parcel and time patch."""
        return (n_parcels, self.config.n_patches)

    def parcel_reduction(self, n_parcels: int) -> PatchParcelReduction:
        """A parcel's value is the mean over its ``n_patches`` tokens."""
        return PatchParcelReduction(n_parcels, self.config.n_patches)

    def pool_tokens(self, enc: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """latent [B, 1 + L, D] -> (CLS [B, D], mean over every token [B, D])."""
        return enc.latent[:, 0], enc.latent[:, 1:].mean(dim=1)

    def prediction_values(self, pred: torch.Tensor) -> torch.Tensor:
        """[B, P, N, k] -> [B, T, P]."""
        return self.unpatchify(pred)

    def token_mask_to_values(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, P, N] -> [B, T, P] bool: each token hides its ``patch_trs`` TRs of its parcel."""
        return mask.repeat_interleave(self.config.patch_trs, dim=2).transpose(1, 2)
