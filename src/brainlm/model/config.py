"""Model configuration and the presets of the BrainLM paper."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType

from brainlm.errors import BrainLMInputError

DECODER_ATTENTION = ("full", "axial")
#: The forecasting carry path (``BrainLMConfig.forecast_carry``).
FORECAST_CARRY = ("none", "linear", "var")
CARRY_SIZES = ("carry_lags", "carry_steps", "carry_parcels")


class ConfigFields:
    """``to_dict`` / ``from_dict`` of a frozen config dataclass (every model family's), as
    written to and read from a checkpoint's ``config.json``.

    A subclass names itself in errors with ``config_name`` and lists in ``legacy_defaults``
    the fields that configs written before those fields existed lack, with the value such
    configs had.
    """

    config_name = "model config"
    legacy_defaults: Mapping = MappingProxyType({})

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready for every family's field types)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """The config of ``d``: unknown fields are an error naming them; missing fields take
        ``legacy_defaults``, then the dataclass defaults."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise BrainLMInputError(f"{cls.config_name} has unknown field(s) {unknown}")
        return cls(**{**cls.legacy_defaults, **d})


class PatchWindow:
    """``n_patches`` of a config with ``window_trs`` and ``patch_trs`` (parcel x time-patch
    tokens)."""

    @property
    def n_patches(self) -> int:
        """Tokens per parcel (time patches per window)."""
        return self.window_trs // self.patch_trs


@dataclass(frozen=True)
class BrainLMConfig(PatchWindow, ConfigFields):
    """Architecture of a BrainLM masked autoencoder.

    Parameters
    ----------
    window_trs : int
        Input window length in TRs (paper: 200).
    patch_trs : int
        TRs per token (paper: 20); ``window_trs`` must be a multiple.
    dim, depth, heads, mlp_ratio
        Encoder width, number of blocks, attention heads, MLP hidden size / width.
    decoder_dim, decoder_depth, decoder_heads
        The lighter decoder.
    decoder_attention : {"full", "axial"}
        ``full``: every decoder block attends over all ``P * N`` tokens (upstream; attention
        cost grows as ``(P * N)^2``). ``axial``: blocks alternate between attention across
        parcels within each time patch and attention across time patches within each parcel, so
        after any two blocks every token has heard from every other, at ``P^2 N + N^2 P`` cost.
        At 424 parcels x 10 patches that removes most of the decoder's attention FLOPs with the
        same weights (benchmarks/README.md). Needs an even ``decoder_depth``.
    xyz_frequencies : int
        Octaves of Fourier features of the MNI coordinates for the spatial embedding
        (0: upstream's plain ``Linear(3 -> d)``).
    xyz_scale_mm : float
        Coordinates are divided by this before the Fourier features (about the brain radius).
    spatial_prior_parcels : int
        0 (default): a pure BrainLM. ``P > 0``: the *hybrid* model, for data on one atlas of
        ``P`` parcels. It carries a parcel covariance fitted on its pretraining data; for every
        time patch it computes the linear (Gaussian conditional) estimate of the hidden parcels
        from the visible ones at the same TRs, which is the spatial baseline of the evaluation.
        The decoder receives that estimate and predicts only the residual. Never the default:
        every result of a hybrid model is labelled as one.
    prior_dropout : float
        The hybrid only: the fraction of training windows whose spatial estimate is replaced by
        zeros (the scaled median), so that on those the decoder must reconstruct from the encoder
        alone and the encoder keeps learning the signal (without it, the estimate does most of
        the work and the encoder learns less: docs/quality.md). Never applied outside training.
    forecast_carry : {"none", "linear", "var"}
        A forecaster's path that carries the present forward (docs/forecasting.md). ``none``
        (default): the decoder predicts the hidden future alone. Otherwise, for the trailing
        time patches hidden in every parcel (the future mask), a linear forecast from the last
        ``carry_lags`` visible TRs is computed inside the model; the decoder sees it and predicts
        the correction. ``linear``: one learned map from the last ``carry_lags`` TRs to each of
        ``carry_steps`` future TRs, shared by all parcels (starts at persistence). ``var``: a
        ridge VAR of order ``carry_lags`` over ``carry_parcels`` parcels, fitted in closed form
        on the fine-tuning data and saved as buffers with the weights, rolled out TR by TR.
        Every result of such a model is labelled with its carry path.
    carry_lags, carry_steps, carry_parcels : int
        Sizes of the carry path (0 without one): lags read; TRs the ``linear`` map predicts;
        parcels of the ``var`` model.
    """

    window_trs: int = 200
    patch_trs: int = 20
    dim: int = 512
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 2
    decoder_heads: int = 4
    xyz_frequencies: int = 6
    xyz_scale_mm: float = 100.0
    decoder_attention: str = "full"
    spatial_prior_parcels: int = 0
    prior_dropout: float = 0.0
    forecast_carry: str = "none"
    carry_lags: int = 0
    carry_steps: int = 0
    carry_parcels: int = 0

    config_name = "model config"
    # Checkpoints written before the fields existed had a full-attention decoder and no prior
    # (and no carry path: the dataclass defaults).
    legacy_defaults = MappingProxyType({"decoder_attention": "full", "spatial_prior_parcels": 0})

    def __post_init__(self) -> None:
        if self.decoder_attention not in DECODER_ATTENTION:
            raise BrainLMInputError(f"model config field 'decoder_attention' is {self.decoder_attention!r}; "
                                    f"expected one of {DECODER_ATTENTION}")
        if self.decoder_attention == "axial" and self.decoder_depth % 2:
            raise BrainLMInputError(f"decoder_attention 'axial' alternates parcel and time attention and "
                                    f"needs an even decoder_depth, got {self.decoder_depth}")
        if self.forecast_carry not in FORECAST_CARRY:
            raise BrainLMInputError(f"model config field 'forecast_carry' is {self.forecast_carry!r}; "
                                    f"expected one of {FORECAST_CARRY}")
        for f in fields(self):
            if f.name in ("decoder_attention", "forecast_carry"):
                continue
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or v < 0 or (v == 0 and f.name not in ("xyz_frequencies",
                                                                                  "spatial_prior_parcels",
                                                                                  "prior_dropout",
                                                                                  *CARRY_SIZES)):
                raise BrainLMInputError(f"model config field {f.name!r} is {v!r}; expected a positive number")
        if not self.prior_dropout < 1:
            raise BrainLMInputError(f"model config field 'prior_dropout' is {self.prior_dropout!r}; "
                                    "expected a fraction in [0, 1)")
        if self.prior_dropout and not self.spatial_prior_parcels:
            raise BrainLMInputError("model config field 'prior_dropout' needs the hybrid "
                                    "(spatial_prior_parcels > 0): there is no spatial estimate to drop")
        self._check_carry()
        if self.window_trs % self.patch_trs:
            raise BrainLMInputError(
                f"window_trs {self.window_trs} is not a multiple of patch_trs {self.patch_trs}")
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise BrainLMInputError("dim and decoder_dim must be divisible by their numbers of heads")

    def _check_carry(self) -> None:
        needed = {"none": (), "linear": ("carry_lags", "carry_steps"),
                  "var": ("carry_lags", "carry_parcels")}[self.forecast_carry]
        for name in CARRY_SIZES:
            v = getattr(self, name)
            if name in needed and not (isinstance(v, int) and v > 0):
                raise BrainLMInputError(f"model config field {name!r} is {v!r}; forecast_carry "
                                        f"{self.forecast_carry!r} needs a positive integer")
            if name not in needed and v:
                raise BrainLMInputError(f"model config field {name!r} is {v!r}; expected 0 with forecast_carry "
                                        f"{self.forecast_carry!r}")



#: Sizes of the paper (13M, 111M = ViT-B, 650M = ViT-H) plus two CPU-sized ones: ``tiny`` (the
#: first small-data recipe) and ``small``, the same encoder with a two-block axial decoder, which
#: is trained on mask ratios drawn per batch (``MASK_RATIOS``) and is the recipe that did best on
#: held-out subjects in benchmarks/results/quality/. The paper's sizes use the axial decoder (0.54x the FLOPs of full attention at 424 parcels, and at least
#: as good a reconstruction on the HCP data: benchmarks/results/decoder.json);
#: ``decoder_attention="full"`` gives upstream's decoder.
PRESETS: dict[str, BrainLMConfig] = {
    "tiny": BrainLMConfig(dim=96, depth=3, heads=4, decoder_dim=64, decoder_depth=1, decoder_heads=4),
    "small": BrainLMConfig(dim=96, depth=3, heads=4, decoder_dim=64, decoder_depth=2, decoder_heads=4,
                           decoder_attention="axial"),
    "13m": BrainLMConfig(dim=512, depth=4, heads=4, decoder_dim=512, decoder_depth=2, decoder_heads=4,
                         decoder_attention="axial"),
    "111m": BrainLMConfig(dim=768, depth=12, heads=12, decoder_dim=512, decoder_depth=8, decoder_heads=16,
                          decoder_attention="axial"),
    "650m": BrainLMConfig(dim=1280, depth=32, heads=16, decoder_dim=512, decoder_depth=8, decoder_heads=16,
                          decoder_attention="axial"),
}


def preset(name: str, **overrides) -> BrainLMConfig:
    """A preset by name, with optional field overrides (e.g. ``window_trs=180``)."""
    if name not in PRESETS:
        raise BrainLMInputError(f"unknown preset {name!r}; expected one of {list(PRESETS)}")
    return BrainLMConfig.from_dict({**PRESETS[name].to_dict(), **overrides})


#: Learning rate per 256 windows (peak lr = base * effective batch / 256). The paper's 1e-3 assumes
#: batches of 512; ``tiny`` trains on CPU with batches of ~16, where that rule would give 6e-5 and
#: next to no progress in minutes, so its default is 16x higher (peak 1e-3 at batch 16).
BASE_LR = {"tiny": 1.6e-2, "small": 1.6e-2, "13m": 1e-3, "111m": 1e-3, "650m": 1e-3}

#: Fractions of tokens masked in pretraining unless told otherwise: (smallest, largest); with a
#: largest, each batch draws its ratio from the range (``MaskSpec.ratio_max``). The paper trained
#: at 0.75 only; a model trained so is no better with 80% of the tokens visible than with 25%
#: (benchmarks/results/quality/), which a range of ratios mends.
MASK_RATIOS: dict[str, tuple[float, float | None]] = {
    "tiny": (0.75, None), "small": (0.2, 0.9), "13m": (0.75, None), "111m": (0.75, None), "650m": (0.75, None)}
