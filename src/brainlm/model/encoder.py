"""The encoder loop every model family shares (no I/O).

A family embeds a window as tokens its own way (parcel x time patches for :class:`BrainLM` and
the paper model, image patches for the ViT-MAE); from there on the encoder is the same: keep
the visible tokens, put the CLS token first, run the blocks, apply the final norm. The decoder
side shares :func:`tokens_in_place`, which puts the encoded tokens back among mask tokens.

Shapes: B windows, L tokens of a window, L_visible the tokens the encoder sees, D the width.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from brainlm.errors import BrainLMInputError


@dataclass
class EncoderOutput:
    """``latent``: [B, 1 + L_visible, D] (CLS first); ``ids_visible``: [B, L_visible] token
    indices (parcel-major: ``parcel * n_patches + patch``) or None when nothing is masked;
    ``attentions``: per layer [B, H, 1 + L_visible, 1 + L_visible] when requested."""

    latent: torch.Tensor
    ids_visible: torch.Tensor | None
    attentions: list[torch.Tensor] | None = None


def visible_token_ids(mask: torch.Tensor | None) -> torch.Tensor | None:
    """mask [B, P, N] bool (True = hidden) -> indices of the visible tokens [B, L_visible] in
    their natural (parcel-major) order, or None when nothing is hidden. Shared by every model
    that drops hidden tokens before its encoder."""
    if mask is None:
        return None
    hidden = mask.flatten(1)
    n_visible = int((~hidden[0]).sum())
    if bool((hidden.sum(dim=1) != hidden.shape[1] - n_visible).any()):
        raise BrainLMInputError("every sample of a batch must mask the same number of tokens")
    if n_visible == hidden.shape[1]:
        return None
    # A stable sort keeps visible tokens in their natural order.
    return hidden.to(torch.int8).argsort(dim=1, stable=True)[:, :n_visible]


def tokens_in_place(visible: torch.Tensor, ids_visible: torch.Tensor | None, mask_token: torch.Tensor,
                    n_tokens: int) -> torch.Tensor:
    """The decoder's full token sequence: visible [B, L_visible, D] tokens put back at
    ``ids_visible`` [B, L_visible] among ``n_tokens`` slots, the learned ``mask_token`` [1, 1, D]
    everywhere else -> [B, n_tokens, D] (``visible`` itself when nothing was hidden). Shared by
    every model that drops hidden tokens before its encoder."""
    if ids_visible is None:
        return visible
    # Under autocast the visible tokens come out of a Linear in the autocast dtype (bf16) while
    # the mask token is an fp32 parameter; scatter needs one dtype, and the cast keeps the mask
    # token's gradient.
    full = mask_token.to(visible.dtype).expand(visible.shape[0], n_tokens, -1).clone()
    return full.scatter(1, ids_visible[..., None].expand(-1, -1, visible.shape[-1]), visible)


def run_encoder(tokens: torch.Tensor, ids: torch.Tensor | None, cls: torch.Tensor, blocks: Iterable[nn.Module],
                norm: nn.Module, return_attention: bool = False) -> EncoderOutput:
    """The shared encoder: the tokens at ``ids``, the CLS token first, the blocks, the norm.

    tokens: [B, L, D] every token of the windows, embedded; ids: [B, L_visible] the tokens to
    keep, in the order the encoder sees them (None: all, in natural order); cls: [1, 1, D] the
    CLS token (with its position, where the family gives it one); blocks: modules called as
    ``blk(h, return_attention) -> (h, weights)``; norm: the final norm. Returns
    :class:`EncoderOutput` with ``ids_visible = ids`` and, with ``return_attention``, every
    block's weights [B, H, 1 + L_visible, 1 + L_visible].
    """
    if ids is not None:
        tokens = tokens.gather(1, ids[..., None].expand(-1, -1, tokens.shape[-1]))
    h = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    attentions = [] if return_attention else None
    for blk in blocks:
        h, w = blk(h, return_attention)
        if return_attention:
            attentions.append(w)
    return EncoderOutput(norm(h), ids, attentions)
