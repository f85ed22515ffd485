"""The two model families of the original BrainLM checkpoints (Hugging Face ``vandijklab/brainlm``).

Written from the documented forward semantics of upstream's code (vandijklab/BrainLM, commit
b591d88; see ``docs/upstream.md``), so that imported weights give upstream's numbers. Siblings of
:class:`brainlm.model.brainlm.BrainLM`, with the same interface where it applies: ``config``
(``window_trs``, ``n_patches``, ``dim``, ``depth``), ``forward_encoder(x, xyz, mask)`` ->
:class:`EncoderOutput`, ``forward_decoder``, ``forward`` -> ``(loss, pred)`` and ``blocks``.

* :class:`UpstreamBrainLM`, the paper's model (``old_13M``): one token per parcel and 20-TR patch,
  **post-norm** (BERT-style) blocks whose exact softmax attention adds a per-head convolution of
  kernel 65 along the *token sequence* over the values; ``Linear(3 -> d)`` on MNI xyz; the
  interleaved sinusoidal encoding of the patch index; no position on CLS; decoder head
  ``Linear -> LeakyReLU(0.1) -> Linear``.
* :class:`UpstreamViTMAE`, the image ViT-MAE (``vitmae_111M``, ``vitmae_650M``): parcels sorted by
  A424 y, divided by a constant, three identical channels, padded with -1 into a square image
  cut into square patches; pre-norm ViT blocks; fixed 2-D sine-cosine positions.

Token order. Upstream orders the encoder's tokens by its masking noise, even with nothing
masked; with the sequence convolution the paper model's output then depends on that order. Here
visible tokens keep their natural order unless an explicit ``order`` is given
(:func:`noise_order` gives upstream's), so inference is deterministic.

Shapes: B windows, T = ``window_trs`` TRs, P parcels, N = ``n_patches`` patches per parcel,
k = ``patch_trs`` TRs per patch, L tokens, D the encoder width. Parcels are in atlas (A424 label)
order, coordinates in MNI mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from brainlm.data.atlas import Atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.errors import BrainLMInputError
from brainlm.model.config import ConfigFields, PatchWindow
from brainlm.model.encoder import EncoderOutput, run_encoder, tokens_in_place, visible_token_ids
from brainlm.model.family import MembershipParcelReduction, ParcelPatchTokens
from brainlm.model.layers import sinusoidal_positions
from brainlm.model.masking import MaskSpec

__all__ = ["UpstreamBrainLM", "UpstreamBrainLMConfig", "UpstreamViTMAE", "UpstreamViTMAEConfig",
           "noise_order", "sincos_2d"]


def _check_fields(cfg, name: str) -> None:
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.type in ("int", "float") and f.name != "pad_value" and (not isinstance(v, (int, float)) or v <= 0):
            raise BrainLMInputError(f"{name} field {f.name!r} is {v!r}; expected a positive number")


@dataclass(frozen=True)
class UpstreamBrainLMConfig(PatchWindow, ConfigFields):
    """Architecture of upstream's paper model (``BrainLMForPretraining``), in our field names.

    Parameters
    ----------
    window_trs, patch_trs : int
        Window length and TRs per token (upstream ``num_timepoints_per_voxel`` 200,
        ``timepoint_patching_size`` 20).
    n_parcels : int
        Parcels the model was trained on (``num_brain_voxels``, 424 for A424); informative only,
        the model runs on any number of parcels.
    dim, depth, heads, intermediate
        Encoder width, layers, heads and MLP width.
    decoder_dim, decoder_depth, decoder_heads, decoder_intermediate
        The decoder (upstream requires ``decoder_dim == dim``).
    conv_kernel : int
        Taps of the per-head convolution over the value sequence (65).
    ln_eps : float
        LayerNorm epsilon (1e-12).
    loss : {"mse", "mae"}
        Error over masked values.
    tanh_decoder : bool
        A tanh on the predictions (``use_tanh_decoder``).
    mask_ratio : float
        Upstream's pretraining mask ratio (recorded, not used by the forward).
    """

    window_trs: int = 200
    patch_trs: int = 20
    n_parcels: int = 424
    dim: int = 256
    depth: int = 4
    heads: int = 4
    intermediate: int = 1024
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_intermediate: int = 1024
    conv_kernel: int = 65
    ln_eps: float = 1e-12
    loss: str = "mse"
    tanh_decoder: bool = False
    mask_ratio: float = 0.2

    #: Written to the checkpoint's config so that loading builds the right class.
    architecture = "upstream-brainlm"
    config_name = "upstream BrainLM config"

    def __post_init__(self) -> None:
        _check_fields(self, "upstream BrainLM config")
        if self.window_trs % self.patch_trs:
            raise BrainLMInputError(f"window_trs {self.window_trs} is not a multiple of patch_trs {self.patch_trs}")
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise BrainLMInputError("dim and decoder_dim must be divisible by their numbers of heads")
        if self.decoder_dim != self.dim:
            # Upstream adds Linear(3 -> dim) and a dim-wide encoding to the decoder's tokens.
            raise BrainLMInputError(f"decoder_dim {self.decoder_dim} differs from dim {self.dim}; the "
                                    "paper model only works with equal widths")
        if self.conv_kernel % 2 == 0:
            raise BrainLMInputError(f"conv_kernel {self.conv_kernel} must be odd (same-length convolution)")
        if self.loss not in ("mse", "mae"):
            raise BrainLMInputError(f"loss {self.loss!r}; expected 'mse' or 'mae'")


# -- paper model --------------------------------------------------------------------------------
def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, divisor: float,
                      return_weights: bool = False, chunk: int = 256):
    """``softmax(q k^T / divisor) v`` in upstream's order of operations.

    q, k, v: [B, H, L, d] -> (context [B, H, L, d], weights [B, H, L, L] or None). On CPU the
    scores are computed explicitly, ``chunk`` query rows at a time (memory ``B H chunk L``), which
    reproduces upstream's float32 results to ~1e-7; fused kernels (used on GPU) reorder the sums
    and differ by ~1e-5, which is why they are not used on CPU.
    """
    if return_weights:
        scores = q @ k.transpose(-2, -1)
        w = (scores if divisor == 1.0 else scores / divisor).softmax(dim=-1)
        return w @ v, w
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, scale=1.0 / divisor), None
    out = []
    for i in range(0, q.shape[2], chunk):
        scores = q[:, :, i:i + chunk] @ k.transpose(-2, -1)
        out.append((scores if divisor == 1.0 else scores / divisor).softmax(dim=-1) @ v)
    return torch.cat(out, dim=2), None


class ConvValueAttention(nn.Module):
    """Exact softmax attention plus a per-head convolution over the value sequence.

    ``softmax(q k^T / sqrt(d_head)) v + conv(v)``, where ``conv`` has one ``kernel``-tap filter per
    head along the token axis (zero padded, shared over ``d_head``). The convolution makes the
    block depend on token order.
    """

    def __init__(self, dim: int, heads: int, kernel: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.conv = nn.Conv2d(heads, heads, (kernel, 1), padding=(kernel // 2, 0), groups=heads, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        """x: [B, L, D] -> ([B, L, D] before the residual, weights [B, H, L, L] or None)."""
        b, n, d = x.shape
        dh = d // self.heads
        q, k, v = (lin(x).view(b, n, self.heads, dh).transpose(1, 2) for lin in (self.q, self.k, self.v))
        # Upstream scales q and k by d_head^(-1/4) each (same product, same rounding).
        s = math.sqrt(math.sqrt(dh))
        ctx, w = softmax_attention(q / s, k / s, v, 1.0, return_weights)
        ctx = ctx + self.conv(v)  # conv over [B, H, L, d_head]: kernel (K, 1) runs along L
        return self.proj(ctx.transpose(1, 2).reshape(b, n, d)), w


class PostNormBlock(nn.Module):
    """BERT-style block: ``a = LN(x + attn(x))``, ``out = LN(a + mlp(a))`` (exact-erf GELU)."""

    def __init__(self, dim: int, heads: int, intermediate: int, kernel: int, eps: float):
        super().__init__()
        self.attn = ConvValueAttention(dim, heads, kernel)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, intermediate), nn.GELU(), nn.Linear(intermediate, dim))
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        """x: [B, L, D] -> ([B, L, D], attention weights or None)."""
        a, w = self.attn(x, return_weights)
        h = self.norm1(a + x)
        return self.norm2(self.mlp(h) + h), w


class UpstreamBrainLM(ParcelPatchTokens, nn.Module):
    """Upstream's paper model (``old_13M`` family) as a masked autoencoder over [B, T, P] windows.

    Parameters
    ----------
    config : UpstreamBrainLMConfig
    contract, atlas : optional
        Carried for :mod:`brainlm.tasks.model_input` (as in :class:`BrainLM`), never applied here.
    """

    def __init__(self, config: UpstreamBrainLMConfig, contract: PreprocessingContract | None = None,
                 atlas: Atlas | None = None):
        super().__init__()
        self.config, self.contract, self.atlas = config, contract, atlas
        c = config
        self.patch_embed = nn.Linear(c.patch_trs, c.dim)
        self.spatial = nn.Linear(3, c.dim)  # raw MNI mm, no normalisation (as upstream trained)
        self.register_buffer("temporal", sinusoidal_positions(c.n_patches, c.dim), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.blocks = nn.ModuleList(PostNormBlock(c.dim, c.heads, c.intermediate, c.conv_kernel, c.ln_eps)
                                    for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.ln_eps)

        self.decoder_embed = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.decoder_spatial = nn.Linear(3, c.decoder_dim)
        self.decoder_blocks = nn.ModuleList(
            PostNormBlock(c.decoder_dim, c.decoder_heads, c.decoder_intermediate, c.conv_kernel, c.ln_eps)
            for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(c.decoder_dim, eps=c.ln_eps)
        self.decoder_pred = nn.Sequential(nn.Linear(c.decoder_dim, c.decoder_dim // 2), nn.LeakyReLU(0.1),
                                          nn.Linear(c.decoder_dim // 2, c.patch_trs))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # -- encoder / decoder / loss ------------------------------------------------------------
    def embed(self, x: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """x: [B, T, P], xyz: [B, P, 3] mm -> tokens [B, L, D], parcel-major (``p * N + patch``)."""
        tokens = self.patch_embed(self.patchify(x)) + self.spatial(xyz)[:, :, None, :]
        return (tokens + self.temporal[None, None]).flatten(1, 2)

    def forward_encoder(self, x: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor | None = None,
                        return_attention: bool = False, order: torch.Tensor | None = None) -> EncoderOutput:
        """x: [B, T, P]; xyz: [B, P, 3] (mm); mask: [B, P, N] bool (True = hidden) or None.

        order: [B, L_visible] token indices in the sequence order the encoder sees them (e.g.
        upstream's noise order from :func:`noise_order`); it replaces ``mask``. Without it the
        visible tokens keep their natural order. ``ids_visible`` is the order used (None when all
        tokens are seen in natural order).
        """
        ids = order if order is not None else visible_token_ids(mask)
        return run_encoder(self.embed(x, xyz), ids, self.cls_token, self.blocks, self.norm, return_attention)

    def forward_decoder(self, enc: EncoderOutput, xyz: torch.Tensor, n_parcels: int) -> torch.Tensor:
        """-> predicted patches [B, P, N, k] for every token (decoder in natural token order)."""
        c = self.config
        y = self.decoder_embed(enc.latent)
        b = y.shape[0]
        full = tokens_in_place(y[:, 1:], enc.ids_visible, self.mask_token, n_parcels * c.n_patches)
        full = full.view(b, n_parcels, c.n_patches, -1) + self.decoder_spatial(xyz)[:, :, None, :]
        h = torch.cat([y[:, :1], (full + self.temporal[None, None]).flatten(1, 2)], dim=1)
        for blk in self.decoder_blocks:
            h, _ = blk(h)
        pred = self.decoder_pred(self.decoder_norm(h)[:, 1:])
        if c.tanh_decoder:
            pred = torch.tanh(pred)
        return pred.view(b, n_parcels, c.n_patches, c.patch_trs)

    def forward_loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared (or absolute) error over the values of masked tokens.

        pred, target: [B, P, N, k]; mask: [B, P, N]. NaN when nothing is masked, as upstream.
        """
        err = (pred - target) ** 2 if self.config.loss == "mse" else (pred - target).abs()
        m = mask.to(err.dtype)[..., None].expand_as(err)
        return (err * m).sum() / m.sum()

    def forward(self, x: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor,
                order: torch.Tensor | None = None):
        """x: [B, T, P], xyz: [B, P, 3], mask: [B, P, N] -> (loss, predicted patches [B, P, N, k]).

        ``order`` as in :meth:`forward_encoder` (it must list exactly the unmasked tokens).
        """
        enc = self.forward_encoder(x, xyz, mask, order=order)
        pred = self.forward_decoder(enc, xyz, x.shape[2])
        return self.forward_loss(pred, self.patchify(x), mask), pred

    def count_parameters(self) -> dict[str, int]:
        """Trainable parameters: encoder (incl. embeddings), decoder, total."""
        dec = sum(p.numel() for n, p in self.named_parameters() if n.startswith(("decoder", "mask_token")))
        total = sum(p.numel() for p in self.parameters())
        return {"encoder": total - dec, "decoder": dec, "total": total}


def noise_order(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's masking from its noise: the lowest-noise tokens are kept, in ascending noise.

    noise: [B, L] -> (mask [B, L] bool, True = hidden; order [B, L_keep] token indices in
    sequence order), with ``L_keep = int(L * (1 - mask_ratio))``. Reshape the mask to the
    model's token grid ([B, P, N] for the paper model).
    """
    b, n = noise.shape
    keep = int(n * (1 - mask_ratio))
    order = noise.argsort(dim=1)[:, :keep]
    mask = torch.ones(b, n, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, order, False)
    return mask, order


# -- ViT-MAE family -----------------------------------------------------------------------------
@dataclass(frozen=True)
class UpstreamViTMAEConfig(ConfigFields):
    """Architecture and fixed input preparation of upstream's image ViT-MAE checkpoints.

    Parameters
    ----------
    window_trs, n_parcels : int
        The recording window (200 TRs x 424 parcels) placed in the image.
    image_size, patch_size, channels : int
        Square image side (432 for patch 16, 434 for patch 14), patch side, channels (3).
    dim, depth, heads, intermediate
        Encoder sizes; ``decoder_*`` the decoder's.
    ln_eps : float
    norm_pix_loss : bool
        Loss on the target normalised per parcel row over the window.
    mask_ratio : float
        Upstream's pretraining mask ratio (recorded).
    input_divisor : float
        Model input = window / ``input_divisor`` (upstream's ``max_val_to_scale``).
    pad_value : float
        Value of the padding around the window (-1).
    parcel_order : tuple of int
        Atlas parcel index of each image row (upstream: A424 parcels by ascending y, stable).
    """

    window_trs: int = 200
    n_parcels: int = 424
    image_size: int = 432
    patch_size: int = 16
    channels: int = 3
    dim: int = 768
    depth: int = 12
    heads: int = 12
    intermediate: int = 3072
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_intermediate: int = 2048
    ln_eps: float = 1e-12
    norm_pix_loss: bool = False
    mask_ratio: float = 0.75
    input_divisor: float = 5.6430855
    pad_value: float = -1.0
    parcel_order: tuple[int, ...] = ()

    architecture = "upstream-vitmae"
    config_name = "upstream ViT-MAE config"

    def __post_init__(self) -> None:
        object.__setattr__(self, "parcel_order", tuple(int(i) for i in self.parcel_order))
        _check_fields(self, "upstream ViT-MAE config")
        if self.image_size % self.patch_size:
            raise BrainLMInputError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.image_size < max(self.n_parcels, self.window_trs):
            raise BrainLMInputError(f"image_size {self.image_size} cannot hold {self.n_parcels} parcels "
                                    f"x {self.window_trs} TRs")
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise BrainLMInputError("dim and decoder_dim must be divisible by their numbers of heads")
        if self.parcel_order and sorted(self.parcel_order) != list(range(self.n_parcels)):
            raise BrainLMInputError(f"parcel_order is not a permutation of 0..{self.n_parcels - 1}")

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def n_tokens(self) -> int:
        return self.grid ** 2

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) pixels around the [P, T] window; odd excess goes right/bottom."""
        dt, dp = self.image_size - self.window_trs, self.image_size - self.n_parcels
        return dt // 2, dt - dt // 2, dp // 2, dp - dp // 2

    def to_dict(self) -> dict:
        """The fields as a plain dict, ``parcel_order`` as a list (JSON)."""
        d = super().to_dict()
        d["parcel_order"] = list(self.parcel_order)
        return d


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine table with a zero CLS row: [1 + grid^2, dim].

    Row ``1 + r * grid + c``: the first ``dim/2`` values encode the column ``c``, the last the row
    ``r``; each half is ``[sin(pos w), cos(pos w)]`` with ``w_i = 10000^(-i / (dim/4))``.
    """
    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        w = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
        a = pos[:, None] * w[None]
        return torch.cat([a.sin(), a.cos()], dim=1)

    r, c = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                          indexing="ij")
    table = torch.cat([one_axis(c.flatten()), one_axis(r.flatten())], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


class ViTAttention(nn.Module):
    """Multi-head softmax attention with separate q, k, v projections (ViT naming)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        """x: [B, L, D] -> ([B, L, D], weights [B, H, L, L] or None)."""
        b, n, d = x.shape
        dh = d // self.heads
        q, k, v = (lin(x).view(b, n, self.heads, dh).transpose(1, 2) for lin in (self.q, self.k, self.v))
        ctx, w = softmax_attention(q, k, v, math.sqrt(dh), return_weights)
        return self.proj(ctx.transpose(1, 2).reshape(b, n, d)), w


class PreNormBlock(nn.Module):
    """ViT block: ``h = x + attn(LN(x))``, ``out = h + mlp(LN(h))``."""

    def __init__(self, dim: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, intermediate), nn.GELU(), nn.Linear(intermediate, dim))

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        a, w = self.attn(self.norm1(x), return_weights)
        h = a + x
        return self.mlp(self.norm2(h)) + h, w


class UpstreamViTMAE(nn.Module):
    """Upstream's image ViT-MAE over [B, T, P] windows, with its fixed input preparation.

    A window in atlas parcel order becomes an image: rows = parcels in ``parcel_order`` (A424
    by y), columns = TRs, divided by ``input_divisor``, repeated to ``channels`` channels and
    padded with ``pad_value`` to ``image_size``. Tokens are the ``grid x grid`` patches in
    row-major order (token ``r * grid + c``): a patch row is a band of ``patch_size`` y-sorted
    parcels, a patch column a band of ``patch_size`` TRs; pure-padding patches are tokens too.
    ``xyz`` arguments are accepted for interface parity and ignored (positions are fixed).

    As a :class:`~brainlm.model.family.MaskedBrainModel`: token masks are [B, L] over the patch
    grid, a token belongs to every parcel of its row band, and the forward pass already returns
    window values.
    """

    has_parcel_patch_tokens = False

    def __init__(self, config: UpstreamViTMAEConfig, contract: PreprocessingContract | None = None,
                 atlas: Atlas | None = None):
        super().__init__()
        self.config, self.contract, self.atlas = config, contract, atlas
        c = config
        order = torch.tensor(c.parcel_order or range(c.n_parcels), dtype=torch.long)
        self.register_buffer("parcel_order", order, persistent=False)
        self.patch_embed = nn.Conv2d(c.channels, c.dim, c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        # Fixed tables, saved with the weights (as upstream) and checked on import.
        self.register_buffer("pos_embed", sincos_2d(c.dim, c.grid)[None])
        self.blocks = nn.ModuleList(PreNormBlock(c.dim, c.heads, c.intermediate, c.ln_eps) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.ln_eps)
        self.decoder_embed = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(c.decoder_dim, c.grid)[None])
        self.decoder_blocks = nn.ModuleList(
            PreNormBlock(c.decoder_dim, c.decoder_heads, c.decoder_intermediate, c.ln_eps)
            for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(c.decoder_dim, eps=c.ln_eps)
        self.decoder_pred = nn.Linear(c.decoder_dim, c.patch_size ** 2 * c.channels)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # -- input preparation and shapes ----------------------------------------------------------
    def to_image_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, P] (atlas order, input units) -> [B, P, T] rows in ``parcel_order``, divided
        by ``input_divisor`` (true float32 division, as upstream)."""
        c = self.config
        if x.shape[1:] != (c.window_trs, c.n_parcels):
            raise BrainLMInputError(f"window has shape {tuple(x.shape[1:])}; the model expects "
                                    f"({c.window_trs} TRs, {c.n_parcels} parcels)")
        return x.transpose(1, 2)[:, self.parcel_order] / c.input_divisor

    def from_image_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_image_rows`: [B, P, T] -> [B, T, P] in atlas order, input units."""
        out = torch.empty_like(rows)
        out[:, self.parcel_order] = rows * self.config.input_divisor
        return out.transpose(1, 2)

    def image(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, P, T] rows -> padded image [B, channels, S, S] (identical channels)."""
        c = self.config
        img = rows[:, None].expand(-1, c.channels, -1, -1)
        return F.pad(img, c.padding, value=c.pad_value)

    def crop(self, img: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] -> [B, P, T]: the window's pixels, averaged over channels."""
        c = self.config
        left, _, top, _ = c.padding
        return img[:, :, top:top + c.n_parcels, left:left + c.window_trs].mean(dim=1)

    def patchify(self, img: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] -> [B, L, ps * ps * C], each patch in (row, column, channel) order."""
        b, ch, s, _ = img.shape
        g, ps = self.config.grid, self.config.patch_size
        x = img.reshape(b, ch, g, ps, g, ps)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, g * g, ps * ps * ch)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, ps * ps * C] -> [B, C, S, S]."""
        b = patches.shape[0]
        g, ps, ch = self.config.grid, self.config.patch_size, self.config.channels
        x = patches.reshape(b, g, g, ps, ps, ch)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, ch, g * ps, g * ps)

    def pixel_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Token mask [B, L] -> [B, T, P] bool in atlas order: which values each token hid."""
        c = self.config
        m = mask.float()[..., None].expand(-1, -1, c.patch_size ** 2 * c.channels)
        rows = self.crop(self.unpatchify(m)) > 0.5
        out = torch.empty_like(rows)
        out[:, self.parcel_order] = rows
        return out.transpose(1, 2)

    def content_tokens(self) -> torch.Tensor:
        """[L] bool: True for the image tokens that hold at least one window value, False for
        the padding-only ones (27 of 729 at image 432, patch 16), which carry no data and are
        left out of mean pooling."""
        c = self.config
        left, _, top, _ = c.padding
        band = torch.arange(c.grid) * c.patch_size
        rows = (band + c.patch_size > top) & (band < top + c.n_parcels)
        cols = (band + c.patch_size > left) & (band < left + c.window_trs)
        return (rows[:, None] & cols[None, :]).flatten().to(self.pos_embed.device)

    def token_parcels(self) -> torch.Tensor:
        """[L, P] bool, atlas order: True where image token ``l`` holds values of parcel ``p``.

        A parcel is one image row, so it belongs to the tokens of one patch row (its band of
        ``patch_size`` y-sorted parcels), in every column band that holds window TRs; a token
        belongs to every parcel of its band. Padding-only tokens belong to none.
        """
        c = self.config
        left, _, top, _ = c.padding
        rows = torch.empty(c.n_parcels, dtype=torch.long, device=self.parcel_order.device)
        rows[self.parcel_order] = torch.arange(c.n_parcels, device=rows.device) + top  # image row of each parcel
        band = torch.arange(c.grid, device=rows.device)
        in_band = band[:, None] == (rows // c.patch_size)[None, :]  # [grid rows, P]
        starts = band * c.patch_size
        cols = (starts + c.patch_size > left) & (starts < left + c.window_trs)  # [grid columns]
        return (in_band[:, None, :] & cols[None, :, None]).reshape(c.n_tokens, c.n_parcels)

    def sample_mask(self, spec: MaskSpec, batch: int, n_parcels: int | None = None,
                    generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """[B, L] bool token mask on the patch grid (``random`` strategy only: image tokens do
        not line up with parcels or time patches)."""
        if spec.strategy != "random":
            raise BrainLMInputError(f"mask strategy {spec.strategy!r} is not defined for the image "
                                    "ViT-MAE; use 'random'")
        g = self.config.grid
        return spec.sample(batch, g, g, self.config.patch_size, generator, device).flatten(1)

    # -- the family's answers (brainlm.model.family.MaskedBrainModel) --------------------------
    def token_grid(self, n_parcels: int | None = None) -> tuple[int, ...]:
        """(L,): a window's token mask is one flag per image patch, whatever the parcels."""
        return (self.config.n_tokens,)

    def parcel_reduction(self, n_parcels: int | None = None) -> MembershipParcelReduction:
        """A parcel's value is the mean over the tokens of its row band that hold window TRs
        (:meth:`token_parcels`, atlas order); padding-only tokens count for no parcel."""
        return MembershipParcelReduction(self.token_parcels().float())

    def pool_tokens(self, enc: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """latent [B, 1 + L, D] -> (CLS [B, D], mean over the tokens that hold window values
        [B, D]): padding-only patches carry no data (:meth:`content_tokens`)."""
        tokens = enc.latent[:, 1:][:, self.content_tokens()]
        return enc.latent[:, 0], tokens.mean(dim=1)

    def prediction_values(self, pred: torch.Tensor) -> torch.Tensor:
        """The forward pass's predictions are window values [B, T, P] already."""
        return pred

    def token_mask_to_values(self, mask: torch.Tensor) -> torch.Tensor:
        """Token mask [B, L] -> [B, T, P] bool: a value is hidden when the image patch holding it
        is (:meth:`pixel_mask`)."""
        return self.pixel_mask(mask)

    # -- encoder / decoder / loss --------------------------------------------------------------
    def forward_encoder(self, x: torch.Tensor, xyz: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                        return_attention: bool = False, order: torch.Tensor | None = None) -> EncoderOutput:
        """x: [B, T, P] atlas order; mask: [B, L] bool over image tokens (True = hidden) or None;
        order: [B, L_visible] token indices in sequence order (replaces ``mask``).

        ``latent``: [B, 1 + L_visible, D] after the final LayerNorm, CLS first.
        """
        return self.encode_image(self.image(self.to_image_rows(x)), mask, return_attention, order)

    def encode_image(self, img: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False,
                     order: torch.Tensor | None = None) -> EncoderOutput:
        """img: [B, C, S, S] padded image -> :class:`EncoderOutput`."""
        tokens = self.patch_embed(img).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        ids = order if order is not None else visible_token_ids(mask)
        # The CLS token's position is row 0 of the fixed table.
        return run_encoder(tokens, ids, self.cls_token + self.pos_embed[:, :1], self.blocks, self.norm,
                           return_attention)

    def forward_decoder(self, enc: EncoderOutput, xyz: torch.Tensor | None = None,
                        n_parcels: int | None = None) -> torch.Tensor:
        """-> predicted patches [B, L, ps * ps * C] for every image token."""
        y = self.decoder_embed(enc.latent)
        full = tokens_in_place(y[:, 1:], enc.ids_visible, self.mask_token, self.config.n_tokens)
        h = torch.cat([y[:, :1], full], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            h, _ = blk(h)
        return self.decoder_pred(self.decoder_norm(h))[:, 1:]

    def forward_image(self, rows: torch.Tensor, mask: torch.Tensor, order: torch.Tensor | None = None):
        """Upstream's frame: rows [B, P, T] (y-sorted, divided) and a token mask [B, L] ->
        (loss, prediction [B, P, T], pixel mask [B, P, T]); loss is the MSE over masked window
        pixels (padding never counts), NaN when nothing is masked, as upstream."""
        enc = self.encode_image(self.image(rows), mask, order=order)
        pred = self.crop(self.unpatchify(self.forward_decoder(enc)))
        m = self.crop(self.unpatchify(mask.to(pred.dtype)[..., None].expand(-1, -1, self.decoder_pred.out_features)))
        target = self.crop(self.image(rows))
        if self.config.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2 * m).sum() / m.sum()
        return loss, pred, m

    def forward(self, x: torch.Tensor, xyz: torch.Tensor | None, mask: torch.Tensor,
                order: torch.Tensor | None = None):
        """x: [B, T, P] atlas order; mask: [B, L] token mask -> (loss in upstream's divided units,
        prediction [B, T, P] in atlas order and input units)."""
        loss, pred, _ = self.forward_image(self.to_image_rows(x), mask, order)
        return loss, self.from_image_rows(pred)

    def count_parameters(self) -> dict[str, int]:
        dec = sum(p.numel() for n, p in self.named_parameters() if n.startswith(("decoder", "mask_token")))
        total = sum(p.numel() for p in self.parameters())
        return {"encoder": total - dec, "decoder": dec, "total": total}


#: Architecture name (in a checkpoint's config) -> (model class, config class).
UPSTREAM_ARCHITECTURES = {
    UpstreamBrainLMConfig.architecture: (UpstreamBrainLM, UpstreamBrainLMConfig),
    UpstreamViTMAEConfig.architecture: (UpstreamViTMAE, UpstreamViTMAEConfig),
}
