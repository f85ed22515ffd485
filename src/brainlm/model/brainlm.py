"""The BrainLM masked autoencoder: embeddings, encoder, decoder and loss (no I/O, no data handling).

Each parcel's window (``window_trs`` TRs) is cut into ``n_patches`` patches of ``patch_trs``
TRs; every (parcel, patch) is a token, so a window of P parcels is ``L = P * n_patches`` tokens
plus a CLS token. A token's embedding is ``Linear(patch)`` + the parcel's coordinate embedding +
a sinusoidal embedding of the patch index. The encoder sees the visible tokens only; a lighter
decoder gets them back in place, with a learned mask token elsewhere, and predicts the
``patch_trs`` values of every token; the loss is the MSE over masked tokens only.

Shapes: B windows, T = ``window_trs`` TRs, P parcels, N = ``n_patches`` patches per parcel,
k = ``patch_trs`` TRs per patch, L = P * N tokens, D the encoder width.

Turning recordings, files and corpora into model input (the preprocessing contract, atlas
checks, tiling, batching) is :mod:`brainlm.tasks.model_input`; reading and writing checkpoints
is :mod:`brainlm.checkpoints.folder`.
"""

from __future__ import annotations

import torch
from torch import nn

from brainlm.data.atlas import Atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.errors import BrainLMInputError
from brainlm.model.config import BrainLMConfig
from brainlm.model.encoder import EncoderOutput, run_encoder, tokens_in_place, visible_token_ids
from brainlm.model.family import ParcelPatchTokens
from brainlm.model.layers import Block, CoordinateEmbedding, sinusoidal_positions

__all__ = ["BrainLM", "EncoderOutput", "masked_mse"]


class BrainLM(ParcelPatchTokens, nn.Module):
    """Masked autoencoder over parcellated fMRI windows (a
    :class:`~brainlm.model.family.MaskedBrainModel` with parcel x time-patch tokens).

    Parameters
    ----------
    config : BrainLMConfig
    contract : PreprocessingContract, optional
        How raw data became the pretraining input (set by pretraining, saved with the
        checkpoint). Carried, never used here: :mod:`brainlm.tasks.model_input` applies it.
    atlas : Atlas, optional
        The parcellation the model was pretrained on (carried like ``contract``).
    """

    def __init__(self, config: BrainLMConfig, contract: PreprocessingContract | None = None,
                 atlas: Atlas | None = None):
        super().__init__()
        self.config, self.contract, self.atlas = config, contract, atlas
        c = config
        self.patch_embed = nn.Linear(c.patch_trs, c.dim)
        self.spatial = CoordinateEmbedding(c.dim, c.xyz_frequencies, c.xyz_scale_mm)
        self.register_buffer("temporal", sinusoidal_positions(c.n_patches, c.dim), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)

        self.decoder_embed = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.decoder_spatial = CoordinateEmbedding(c.decoder_dim, c.xyz_frequencies, c.xyz_scale_mm)
        self.register_buffer("decoder_temporal", sinusoidal_positions(c.n_patches, c.decoder_dim),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_dim, c.decoder_heads, c.mlp_ratio) for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(c.decoder_dim)
        self.decoder_pred = nn.Linear(c.decoder_dim, c.patch_trs)
        if c.spatial_prior_parcels:
            # The hybrid: a parcel mean and covariance of the pretraining data (model-input units),
            # set by pretraining and saved with the weights, and the embedding of the estimate.
            p = c.spatial_prior_parcels
            self.register_buffer("prior_mean", torch.zeros(p))
            self.register_buffer("prior_covariance", torch.eye(p))
            self.decoder_prior_embed = nn.Linear(c.patch_trs, c.decoder_dim)
        if c.forecast_carry == "linear":
            # One map from the last carry_lags TRs to each of carry_steps future TRs, shared by all
            # parcels; it starts at persistence (every step copies the last observed TR).
            weight = torch.zeros(c.carry_steps, c.carry_lags)
            weight[:, -1] = 1.0
            self.carry_weight = nn.Parameter(weight)
            self.carry_bias = nn.Parameter(torch.zeros(c.carry_steps))
        elif c.forecast_carry == "var":
            # A VAR over all parcels, fitted in closed form by fine-tuning and saved with the weights:
            # next TR [P] = carry_coef [P, P * lags] @ lags (parcel-major, oldest lag first) + intercept.
            # Until it is set, it is persistence.
            p, lags = c.carry_parcels, c.carry_lags
            coef = torch.zeros(p, p * lags)
            coef[torch.arange(p), torch.arange(p) * lags + lags - 1] = 1.0
            self.register_buffer("carry_coef", coef)
            self.register_buffer("carry_intercept", torch.zeros(p))
        if c.forecast_carry != "none":
            self.decoder_carry_embed = nn.Linear(c.patch_trs, c.decoder_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- encoder / decoder / loss ------------------------------------------------------------
    def forward_encoder(self, x: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor | None = None,
                        return_attention: bool = False) -> EncoderOutput:
        """x: [B, T, P]; xyz: [B, P, 3] (mm); mask: [B, P, N] bool (True = hidden) or None."""
        tokens = (self.patch_embed(self.patchify(x)) + self.spatial(xyz)[:, :, None, :]
                  + self.temporal[None, None]).flatten(1, 2)  # [B, L, D]
        return run_encoder(tokens, visible_token_ids(mask), self.cls_token, self.blocks, self.norm,
                           return_attention)

    def spatial_estimate(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The hybrid's linear estimate. x: [B, T, P]; mask: [B, P, N] (True = hidden) or None
        -> [B, P, N, patch_trs] float32: visible values as they are, hidden ones the Gaussian
        conditional mean ``mu_M + S_MV S_VV^-1 (x_V - mu_V)`` given the parcels visible in the
        same time patch (the prior mean where none is)."""
        p = x.shape[2]
        if p != self.config.spatial_prior_parcels:
            raise BrainLMInputError(
                f"this hybrid model's spatial prior covers the {self.config.spatial_prior_parcels} parcels of "
                f"its pretraining atlas; the data have {p} (a hybrid trained without prior_dropout cannot "
                "transfer to another atlas)")
        if mask is None:
            return self.patchify(x.float())
        mu, cov = self.prior_mean.float(), self.prior_covariance.float()
        centred = self.patchify(x.float() - mu).transpose(1, 2)  # [B, N, P, k]
        vis = (~mask).transpose(1, 2).float()  # [B, N, P]
        # One batched solve per time patch: the covariance restricted to the visible parcels,
        # with identity rows and columns for the hidden ones, whose right-hand side is 0.
        system = cov * vis[..., :, None] * vis[..., None, :] + torch.diag_embed(1.0 - vis)
        weights = torch.linalg.solve(system, centred * vis[..., None])
        estimate = (cov @ weights + mu[:, None]).transpose(1, 2)  # [B, P, N, k]
        return torch.where(mask[..., None], estimate, self.patchify(x.float()))

    def prior_estimate(self, x: torch.Tensor, mask: torch.Tensor | None,
                       xyz: torch.Tensor | None = None) -> torch.Tensor | None:
        """What the decoder of a hybrid receives: x [B, T, P], mask [B, P, N], xyz [B, P, 3] (MNI
        mm) -> [B, P, N, k] float32, or None for a model without the spatial prior.

        On its own atlas (the prior's parcel count and, where the model records its atlas, the
        same coordinates within 0.001 mm), :meth:`spatial_estimate`. On another atlas, a hybrid
        trained with ``prior_dropout`` receives zeros, the input it learned to reconstruct from
        on the dropped windows (its covariance has no entries for other parcels); one trained
        without it cannot run there.
        """
        c = self.config
        if not c.spatial_prior_parcels:
            return None
        if self._on_prior_atlas(x.shape[2], xyz):
            return self.spatial_estimate(x, mask)
        if c.prior_dropout:
            return x.new_zeros(x.shape[0], x.shape[2], c.n_patches, c.patch_trs, dtype=torch.float32)
        raise BrainLMInputError(
            f"this hybrid model's spatial prior covers the {c.spatial_prior_parcels} parcels of its pretraining "
            f"atlas; the data are on another ({x.shape[2]} parcels; a hybrid trained without prior_dropout "
            "cannot transfer to another atlas)")

    def _on_prior_atlas(self, n_parcels: int, xyz: torch.Tensor | None) -> bool:
        """Whether data with ``n_parcels`` parcels at ``xyz`` [B, P, 3] are on the atlas the prior
        was fitted on (by count alone where the model or the call has no coordinates)."""
        if n_parcels != self.config.spatial_prior_parcels:
            return False
        if self.atlas is None or xyz is None:
            return True
        own = torch.as_tensor(self.atlas.xyz, dtype=torch.float32, device=xyz.device)
        return bool(torch.allclose(xyz.float(), own.expand_as(xyz), rtol=0, atol=1e-3, equal_nan=True))

    @staticmethod
    def future_patches(mask: torch.Tensor) -> torch.Tensor:
        """mask [B, P, N] (True = hidden) -> [N] bool: the run of trailing time patches hidden in
        every parcel of every window (the future a forecaster predicts)."""
        hidden = mask.all(dim=1).all(dim=0)
        return hidden.flip(0).to(torch.int64).cumprod(0).flip(0).bool()

    def carry_estimate(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The forecasting carry path (``config.forecast_carry``). x: [B, T, P]; mask: [B, P, N]
        (True = hidden) or None -> [B, P, N, patch_trs] float32.

        The future is the run of trailing time patches hidden in every parcel of every window
        (``F`` patches). Its ``F * k`` TRs are forecast linearly from the last ``carry_lags``
        TRs before it; every other TR is the input where visible and 0 where hidden. Only
        visible values are read, so hidden ones never leak into the estimate.
        """
        c = self.config
        b, t, p = x.shape
        if mask is None:
            return self.patchify(x.float())
        n_future = int(self.future_patches(mask).sum())
        seen = (~mask).repeat_interleave(c.patch_trs, dim=2).transpose(1, 2)  # [B, T, P]
        observed = x.float() * seen
        if n_future == 0:
            return self.patchify(observed)
        start, steps = t - n_future * c.patch_trs, n_future * c.patch_trs
        if start < c.carry_lags:
            raise BrainLMInputError(f"the carry path reads the last {c.carry_lags} TRs before the future; "
                                    f"the window has {start} TRs of context")
        lags = observed[:, start - c.carry_lags:start]  # [B, lags, P]
        if c.forecast_carry == "linear":
            if steps > c.carry_steps:
                raise BrainLMInputError(f"this model's carry path predicts at most {c.carry_steps} TRs; "
                                        f"the mask hides {steps} future TRs")
            future = (torch.einsum("blp,sl->bsp", lags, self.carry_weight[:steps].float())
                      + self.carry_bias[:steps].float()[None, :, None])
        else:
            if p != c.carry_parcels:
                raise BrainLMInputError(f"this model's carry VAR covers {c.carry_parcels} parcels; the data "
                                        f"have {p} (a VAR cannot transfer to another atlas)")
            coef, intercept = self.carry_coef.float(), self.carry_intercept.float()
            history = lags.transpose(1, 2)  # [B, P, lags], oldest first
            frames = []
            for _ in range(steps):
                nxt = history.reshape(b, -1) @ coef.T + intercept  # [B, P]
                frames.append(nxt)
                history = torch.cat([history[..., 1:], nxt[..., None]], dim=2)
            future = torch.stack(frames, dim=1)  # [B, steps, P]
        return self.patchify(torch.cat([observed[:, :start], future], dim=1))

    def forward_decoder(self, enc: EncoderOutput, xyz: torch.Tensor, n_parcels: int,
                        prior: torch.Tensor | None = None, carry: torch.Tensor | None = None,
                        future: torch.Tensor | None = None) -> torch.Tensor:
        """-> predicted patches [B, P, N, patch_trs] for every token. ``prior`` [B, P, N, k]: the
        hybrid's :meth:`prior_estimate`; ``carry`` [B, P, N, k]: a forecaster's
        :meth:`carry_estimate`. The decoder sees both embedded and predicts the correction to
        one of them: the carry on the ``future`` patches ([N] bool, :meth:`future_patches`;
        needed where a hybrid has a carry path), where the prior knows no more than its mean,
        the prior everywhere else."""
        c = self.config
        if bool(c.spatial_prior_parcels) != (prior is not None):
            raise ValueError("the spatial estimate is needed by a hybrid model and only by one")
        if (c.forecast_carry != "none") != (carry is not None):
            raise ValueError("the carry estimate is needed by a model with a carry path and only by one")
        y = self.decoder_embed(enc.latent)
        b, n_tok = y.shape[0], n_parcels * c.n_patches
        full = tokens_in_place(y[:, 1:], enc.ids_visible, self.mask_token, n_tok)
        if prior is not None:
            full = full + self.decoder_prior_embed(prior.to(full.dtype)).flatten(1, 2)
        if carry is not None:
            full = full + self.decoder_carry_embed(carry.to(full.dtype)).flatten(1, 2)
        pos = (self.decoder_spatial(xyz)[:, :, None, :] + self.decoder_temporal[None, None]).flatten(1, 2)
        if c.decoder_attention == "full":
            h = torch.cat([y[:, :1], full + pos], dim=1)
            for blk in self.decoder_blocks:
                h, _ = blk(h)
            h = h[:, 1:]
        else:
            h = self._axial_decode(full + pos, b, n_parcels)
        pred = self.decoder_pred(self.decoder_norm(h)).view(b, n_parcels, c.n_patches, c.patch_trs)
        estimate = carry if prior is None else prior
        if prior is not None and carry is not None:
            if future is None:
                raise ValueError("a hybrid with a carry path needs the future patches")
            estimate = torch.where(future[None, None, :, None], carry, prior)
        return pred if estimate is None else pred + estimate.to(pred.dtype)

    def _axial_decode(self, h: torch.Tensor, b: int, p: int) -> torch.Tensor:
        """[B, P * N, D] -> [B, P * N, D]: even blocks attend across parcels within a time patch,
        odd blocks across time patches within a parcel (the CLS token, which predicts nothing,
        is left out: everything it carries is already in the visible tokens)."""
        n, d = self.config.n_patches, h.shape[-1]
        h = h.view(b, p, n, d)
        for i, blk in enumerate(self.decoder_blocks):
            if i % 2 == 0:
                g, _ = blk(h.transpose(1, 2).reshape(b * n, p, d))
                h = g.view(b, n, p, d).transpose(1, 2)
            else:
                g, _ = blk(h.reshape(b * p, n, d))
                h = g.view(b, p, n, d)
        return h.reshape(b, p * n, d)

    def forward(self, x: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor):
        """x: [B, T, P], xyz: [B, P, 3], mask: [B, P, N] -> (loss, predicted patches [B, P, N, k]).

        In training, a hybrid drops its spatial estimate for a ``config.prior_dropout`` fraction
        of the windows. A forecaster with a carry path adds its :meth:`carry_estimate`. The loss
        is the mean squared error over the values of masked tokens only.
        """
        enc = self.forward_encoder(x, xyz, mask)
        carry = self.carry_estimate(x, mask) if self.config.forecast_carry != "none" else None
        prior = self.prior_estimate(x, mask, xyz)
        if prior is not None and self.training and self.config.prior_dropout:
            # Dropped windows see no estimate at all (zeros), so their loss trains the encoder.
            keep = torch.rand(x.shape[0], device=x.device) >= self.config.prior_dropout
            prior = prior * keep[:, None, None, None].to(prior.dtype)
        future = self.future_patches(mask) if carry is not None and prior is not None else None
        pred = self.forward_decoder(enc, xyz, x.shape[2], prior, carry, future)
        return masked_mse(pred, self.patchify(x), mask), pred

    # -- bookkeeping --------------------------------------------------------------------------
    def count_parameters(self) -> dict[str, int]:
        """Trainable parameters: encoder (incl. embeddings), decoder, total."""
        dec = sum(p.numel() for n, p in self.named_parameters() if n.startswith(("decoder", "mask_token")))
        total = sum(p.numel() for p in self.parameters())
        return {"encoder": total - dec, "decoder": dec, "total": total}


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked tokens: pred, target [B, P, N, k], mask [B, P, N]."""
    err = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (err * mask).sum() / mask.sum().clamp(min=1)
