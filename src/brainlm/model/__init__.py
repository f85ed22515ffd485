"""The BrainLM masked autoencoder: configuration and presets, masking, layers, checkpoints."""

from brainlm.model.brainlm import BrainLM, masked_mse
from brainlm.model.config import PRESETS, BrainLMConfig, preset
from brainlm.model.masking import MaskSpec

__all__ = ["BrainLM", "BrainLMConfig", "MaskSpec", "PRESETS", "preset", "masked_mse"]
