"""Transformer blocks and the token embeddings of BrainLM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention on ``scaled_dot_product_attention`` (flash / memory-efficient
    kernels on GPU). Attention weights are computed explicitly only when asked for."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        """x: [B, L, D] -> ([B, L, D], weights [B, H, L, L] or None)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if return_weights:
            w = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(dim=-1)
            out = w @ v
        else:
            w = None
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), w


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        """x: [B, L, D] -> ([B, L, D], attention weights or None)."""
        a, w = self.attn(self.norm1(x), return_weights)
        x = x + a
        return x + self.mlp(self.norm2(x)), w


class CoordinateEmbedding(nn.Module):
    """Spatial embedding of a parcel from its MNI coordinates.

    ``xyz / scale`` and, for ``frequencies`` octaves, ``sin`` and ``cos`` of ``2^k * pi * xyz /
    scale``, projected linearly to ``dim``. Fourier features let a linear layer represent
    fine spatial detail (neighbouring parcels a few mm apart) that upstream's plain
    ``Linear(3 -> d)`` cannot; ``frequencies=0`` is exactly upstream's embedding. Because it is
    a function of coordinates, one model runs on any atlas.
    """

    def __init__(self, dim: int, frequencies: int = 6, scale_mm: float = 100.0):
        super().__init__()
        self.scale_mm = scale_mm
        self.register_buffer("octaves", (2.0 ** torch.arange(frequencies)) * math.pi, persistent=False)
        self.proj = nn.Linear(3 + 6 * frequencies, dim)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """xyz: [B, P, 3] in mm -> [B, P, dim]."""
        u = xyz / self.scale_mm
        if self.octaves.numel():
            ang = (u[..., None] * self.octaves).flatten(-2)  # [B, P, 3 * F]
            u = torch.cat([u, ang.sin(), ang.cos()], dim=-1)
        return self.proj(u)


def sinusoidal_positions(n: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine embedding of positions ``0..n-1``: [n, dim]."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    emb = torch.zeros(n, dim)
    emb[:, 0::2] = torch.sin(pos * freq)
    emb[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return emb
