"""The BrainLM masked autoencoder: configuration and presets, masking, layers, the shared encoder
loop, the two model families of the original BrainLM checkpoints (:mod:`brainlm.model.upstream`),
and the protocol every family implements (:class:`MaskedBrainModel`, :mod:`brainlm.model.family`).
No file I/O: checkpoints are read and written by :mod:`brainlm.checkpoints`."""

from brainlm.model.brainlm import BrainLM, masked_mse
from brainlm.model.config import PRESETS, BrainLMConfig, preset
from brainlm.model.family import MaskedBrainModel
from brainlm.model.masking import MaskSpec
from brainlm.model.upstream import UpstreamBrainLM, UpstreamViTMAE

__all__ = ["BrainLM", "BrainLMConfig", "MaskSpec", "MaskedBrainModel", "PRESETS", "preset", "masked_mse",
           "UpstreamBrainLM", "UpstreamViTMAE"]
