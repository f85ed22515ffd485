"""Augmentations of pretraining windows that mimic another site's data.

A model pretrained on one cohort meets others whose recordings differ in ways that cleaning
does not undo: the BOLD amplitude of a region (coil, field strength, vasculature), thermal and
physiological noise, and the direction of time is arbitrary for resting state. Each
augmentation here changes a training window the way such a site would, and the model learns to
reconstruct the changed window (input and target alike: the evaluation scores the data as
recorded, so the model must predict the noise-free part from noisy context, never the noise).

Windows are in model-input units (robust-scaled, about unit IQR per parcel). Every augmentation
hits each window independently with probability :data:`AUGMENT_PROBABILITY`, drawn from
PyTorch's global generator (seeded by ``lightning.seed_everything`` in pretraining):

* ``reverse``: the window in reverse time order;
* ``gain``: every parcel's fluctuations times its own factor, log-uniform in [1/2, 2];
* ``noise``: white Gaussian noise at a signal-to-noise ratio (variance) log-uniform in
  [:data:`NOISE_SNR_MIN`, 20], then the window divided by ``sqrt(1 + 1/snr)`` so its spread
  is what per-recording scaling of such a recording would give.
"""

from __future__ import annotations

import math

import torch

from brainlm.errors import BrainLMInputError

AUGMENTATIONS = ("reverse", "gain", "noise")
#: Chance that a window receives a given augmentation.
AUGMENT_PROBABILITY = 0.5
#: Largest per-parcel gain (and 1 / the smallest).
GAIN_MAX = 2.0
#: Smallest and largest signal-to-noise ratio (variance) of the added noise.
NOISE_SNR_MIN, NOISE_SNR_MAX = 1.0, 20.0


def check_augmentations(names) -> tuple[str, ...]:
    """Validated augmentation names, in :data:`AUGMENTATIONS` order; an unknown one is refused."""
    names = tuple(names or ())
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise BrainLMInputError(f"--augment {','.join(unknown)}: unknown augmentation(s); expected "
                                f"some of {','.join(AUGMENTATIONS)}")
    return tuple(n for n in AUGMENTATIONS if n in names)


def _chosen(b: int, device) -> torch.Tensor:
    return torch.rand(b, device="cpu").lt(AUGMENT_PROBABILITY).to(device)


def _log_uniform(shape, low: float, high: float, device) -> torch.Tensor:
    return torch.exp(torch.empty(shape).uniform_(math.log(low), math.log(high))).to(device)


def augment_windows(x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """x: [B, T, P] training windows (model-input units) -> [B, T, P], a new tensor.

    Draws are made on the CPU generator whatever the device, so a seed gives the same
    augmentations on every accelerator.
    """
    if not names:
        return x
    b, t, p = x.shape
    out = x.clone()
    if "reverse" in names:
        hit = _chosen(b, x.device)
        out[hit] = out[hit].flip(1)
    if "gain" in names:
        hit = _chosen(b, x.device)
        gain = _log_uniform((b, 1, p), 1 / GAIN_MAX, GAIN_MAX, x.device).to(x.dtype)
        centre = out.median(dim=1, keepdim=True).values
        gained = centre + (out - centre) * gain
        out = torch.where(hit[:, None, None], gained, out)
    if "noise" in names:
        hit = _chosen(b, x.device)
        snr = _log_uniform((b, 1, 1), NOISE_SNR_MIN, NOISE_SNR_MAX, x.device).to(x.dtype)
        spread = out.std(dim=1, keepdim=True)
        noisy = (out + torch.randn(out.shape).to(x.device, x.dtype) * spread / snr.sqrt()) / (1 + 1 / snr).sqrt()
        out = torch.where(hit[:, None, None], noisy, out)
    return out
