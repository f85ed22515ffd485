"""The BrainLM masked autoencoder: configuration and presets, masking, layers, checkpoints, and the
two model families of the original BrainLM checkpoints (:mod:`brainlm.model.upstream`)."""

from brainlm.model.brainlm import BrainLM, masked_mse
from brainlm.model.config import PRESETS, BrainLMConfig, preset
from brainlm.model.masking import MaskSpec
from brainlm.model.upstream import UpstreamBrainLM, UpstreamViTMAE

__all__ = ["BrainLM", "BrainLMConfig", "MaskSpec", "PRESETS", "preset", "masked_mse", "UpstreamBrainLM",
           "UpstreamViTMAE"]
