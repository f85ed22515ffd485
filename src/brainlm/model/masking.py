"""Which tokens the encoder does not see.

A mask is a boolean tensor ``(B, P, N)`` over parcels x time patches, ``True`` = masked. Every
strategy masks the same number of tokens in every sample, so visible tokens can be gathered into
a dense ``(B, L_visible, D)`` tensor without padding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from brainlm.errors import BrainLMInputError

STRATEGIES = ("random", "parcels", "time", "future")
#: Spacing of the mask fractions drawn with ``MaskSpec.ratio_max``.
RATIO_STEP = 0.05


@dataclass(frozen=True)
class MaskSpec:
    """A masking strategy.

    Parameters
    ----------
    strategy : {"random", "parcels", "time", "future"}
        ``random``: a fraction of all tokens (paper: 0.2, 0.75, 0.9); ``parcels``: a fraction of
        whole parcels (all their patches); ``time``: a fraction of whole time patches (all
        parcels); ``future``: the last ``future_trs`` TRs of every parcel (e.g. 180 -> 20).
    ratio : float
        Fraction masked for ``random``, ``parcels`` and ``time``.
    future_trs : int
        TRs masked at the end for ``future`` (a multiple of the patch length).
    ratio_max : float, optional
        With ``random``, ``parcels`` and ``time``: each call draws its fraction uniformly from
        ``ratio, ratio + 0.05, ...`` up to ``ratio_max`` (one fraction per batch, so every sample
        masks the same number of tokens). Training on a range teaches the model to use however
        much is visible, where a single ratio (upstream: 0.75) leaves it no better at 0.2 than
        at 0.75. The fractions are a grid of ``RATIO_STEP`` rather than continuous because each
        distinct number of visible tokens is a new tensor shape, and CPU kernels keep state per
        shape: continuous draws grew a training process by about 100 MB per epoch.
    """

    strategy: str = "random"
    ratio: float = 0.75
    future_trs: int = 20
    ratio_max: float | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise BrainLMInputError(f"mask strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.strategy != "future" and not 0.0 < self.ratio < 1.0:
            raise BrainLMInputError(f"mask ratio {self.ratio}; expected a fraction strictly between 0 and 1")
        if self.ratio_max is not None and not self.ratio <= self.ratio_max < 1.0:
            raise BrainLMInputError(f"largest mask ratio {self.ratio_max}; expected a fraction from the "
                                    f"smallest ({self.ratio}) up to, not including, 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def sample(self, batch: int, n_parcels: int, n_patches: int, patch_trs: int,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Draw a mask, ``(batch, n_parcels, n_patches)`` bool.

        Deterministic for a seeded ``generator``.
        """
        shape = (batch, n_parcels, n_patches)
        ratio = self.ratio
        if self.ratio_max is not None and self.strategy != "future":
            steps = int(math.floor((self.ratio_max - self.ratio) / RATIO_STEP + 1e-9))
            ratio += RATIO_STEP * int(torch.randint(steps + 1, (1,), generator=generator))
        if self.strategy == "future":
            if self.future_trs % patch_trs or not 0 < self.future_trs < n_patches * patch_trs:
                raise BrainLMInputError(
                    f"future_trs {self.future_trs} must be a positive multiple of the patch length "
                    f"{patch_trs} shorter than the window ({n_patches * patch_trs} TRs)")
            mask = torch.zeros(shape, dtype=torch.bool, device=device)
            mask[:, :, n_patches - self.future_trs // patch_trs:] = True
            return mask
        if self.strategy == "random":
            n = n_parcels * n_patches
            k = _count(ratio, n)
            order = torch.rand(batch, n, generator=generator).argsort(dim=1)
            mask = torch.zeros(batch, n, dtype=torch.bool)
            mask.scatter_(1, order[:, :k], True)
            return mask.view(shape).to(device)
        axis_len = n_parcels if self.strategy == "parcels" else n_patches
        k = _count(ratio, axis_len)
        order = torch.rand(batch, axis_len, generator=generator).argsort(dim=1)
        chosen = torch.zeros(batch, axis_len, dtype=torch.bool)
        chosen.scatter_(1, order[:, :k], True)
        if self.strategy == "parcels":
            mask = chosen[:, :, None].expand(shape)
        else:
            mask = chosen[:, None, :].expand(shape)
        return mask.contiguous().to(device)


def _count(ratio: float, n: int) -> int:
    """Masked count: at least one token masked and one visible."""
    return min(max(int(round(ratio * n)), 1), n - 1)
