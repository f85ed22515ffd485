"""Import an original BrainLM checkpoint folder (Hugging Face ``vandijklab/brainlm``) as one of ours.

A source folder holds upstream's ``config.json`` and ``model.safetensors`` or
``pytorch_model.bin``, as downloaded from the hub (e.g. its ``old_13M`` or ``vitmae_111M``
subfolder). :func:`import_upstream` recognises the family from the config, maps every tensor
to :mod:`brainlm.model.upstream` (anything it does not use is listed, never dropped silently),
and writes a brainlm checkpoint (safetensors, config with its ``architecture``, a preprocessing
contract and the A424 atlas) through :func:`brainlm.checkpoints.folder.save_pretrained`.

Bad input (a folder of another model type, sizes in the config that disagree with the tensors,
a truncated weights file, a missing tensor) is a one-line :class:`BrainLMInputError` naming the
file and the tensor.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from brainlm.data.atlas import Atlas, load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.scaling import NORMALIZATION_FORMULAS
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import is_checkpoint, save_pretrained
from brainlm.checkpoints.hub import DEFAULT_SETTINGS, HubSnapshot, converted_folder, fetch, is_upstream_config, parse_hub_id
from brainlm.model.layers import sinusoidal_positions
from brainlm.model.upstream import (UpstreamBrainLM, UpstreamBrainLMConfig, UpstreamViTMAE,
                                    UpstreamViTMAEConfig, sincos_2d)

__all__ = ["DEFAULT_NORMALIZATION", "FAMILY_NORMALIZATIONS", "HubImport", "ImportReport", "NORMALIZATIONS",
           "UpstreamNormalization", "import_from_hub", "import_upstream", "load_upstream", "read_upstream",
           "save_imported"]


@dataclass(frozen=True)
class UpstreamNormalization:
    """One input normalization of upstream's data-conversion script and how brainlm repeats it.

    Attributes
    ----------
    column : str
        Upstream's column name (``convert_ukbiobank_to_arrow.py``).
    normalization : str
        brainlm's per-parcel normalization (:data:`brainlm.data.scaling.NORMALIZATIONS`).
    scaling : {"pooled", "recording"}
        Statistics pooled over a corpus' training split, or each recording's own.
    gain : float
        Constant factor after the normalization (upstream's global s.d. or 99th percentile,
        inverted); the contract's ``scaler_fit.input_gain`` starts at it.
    formula : str
        Upstream's formula, for records and messages.
    """

    column: str
    normalization: str
    scaling: str
    gain: float = 1.0
    formula: str = ""


#: Upstream's global s.d. and 99th percentile of mean-subtracted UK Biobank values (constants of
#: its conversion script; the 99th percentile as the script writes it).
UPSTREAM_GLOBAL_STD = 41.44047
UPSTREAM_GLOBAL_99TH = 111.13143061224855

#: The input normalizations of upstream's data-conversion script (the statistics were never
#: released), by ``--normalization`` name: kebab-case of upstream's column names. Upstream
#: normalized raw parcellated intensities with no other cleaning, and its min-max statistics
#: over "all patients" are over its training recordings (a corpus' training split here).
NORMALIZATIONS: dict[str, UpstreamNormalization] = {
    "voxelwise-robust": UpstreamNormalization(
        "Voxelwise_RobustScaler_Normalized_Recording", "robust", "pooled",
        formula="(x - median) / IQR per parcel"),
    "all-patient-all-voxel": UpstreamNormalization(
        "All_Patient_All_Voxel_Normalized_Recording", "minmax-global", "pooled",
        formula="(x - min) / (max - min), one min and max over every value of every training recording"),
    "per-voxel-all-patient": UpstreamNormalization(
        "Per_Voxel_All_Patient_Normalized_Recording", "minmax", "pooled",
        formula="(x - min) / (max - min) per parcel, over all training recordings"),
    "per-patient-all-voxel": UpstreamNormalization(
        "Per_Patient_All_Voxel_Normalized_Recording", "minmax-global", "recording",
        formula="(x - min) / (max - min), min and max over all values of one recording"),
    "per-patient-per-voxel": UpstreamNormalization(
        "Per_Patient_Per_Voxel_Normalized_Recording", "minmax", "recording",
        formula="(x - min) / (max - min) per parcel of one recording"),
    "subtract-mean": UpstreamNormalization(
        "Subtract_Mean_Normalized_Recording", "demean", "recording",
        formula="x - mean per parcel of one recording"),
    "subtract-mean-global-std": UpstreamNormalization(
        "Subtract_Mean_Divide_Global_STD_Normalized_Recording", "demean", "recording",
        gain=1.0 / UPSTREAM_GLOBAL_STD, formula=f"(x - mean) / {UPSTREAM_GLOBAL_STD}"),
    "subtract-mean-global-99th": UpstreamNormalization(
        "Subtract_Mean_Divide_Global_99thPercent_Normalized_Recording", "demean", "recording",
        gain=1.0 / UPSTREAM_GLOBAL_99TH, formula=f"(x - mean) / {UPSTREAM_GLOBAL_99TH}"),
}
#: The default: upstream's training-script default column, brainlm's behaviour before the choice.
DEFAULT_NORMALIZATION = "voxelwise-robust"
#: The column each family's own scripts read: the paper model's training script defaults to the
#: robust-scaler column; the ViT-MAE tutorials read the all-patient-all-voxel column (and divide
#: by 5.6430855 inside the model, which ``UpstreamViTMAE`` does itself).
FAMILY_NORMALIZATIONS = {
    "upstream-brainlm": "voxelwise-robust",
    "upstream-vitmae": "all-patient-all-voxel",
}

#: UK Biobank's TR (s): most of upstream's pretraining data (HCP: 0.72 s).
UKB_TR = 0.735


@dataclass
class ImportReport:
    """What :func:`import_upstream` did.

    Attributes
    ----------
    family : {"upstream-brainlm", "upstream-vitmae"}
    source : str
        The weights file read.
    n_tensors : int
        Tensors mapped into the model.
    ignored : dict
        Upstream tensor name -> why it is not used (e.g. the paper model's dead ``decoder_pred``).
    parameters : int
        Parameters of the imported model.
    notes : list of str
        Anything else a user should know (e.g. a ``train_mode`` other than auto-encoding).
    normalization : str
        The upstream input normalization assumed (a key of :data:`NORMALIZATIONS`).
    licence : str or None
        The weights' licence, when known (the Hub repository's, e.g. ``cc-by-nc-nd-4.0``).
    hub : dict or None
        Where the weights came from on the Hugging Face Hub: ``id``, ``repo_id``,
        ``subfolder``, ``revision`` (as asked) and ``commit`` (as fetched); None for a local
        folder.
    """

    family: str
    source: str
    n_tensors: int
    ignored: dict[str, str]
    parameters: int
    notes: list[str] = field(default_factory=list)
    normalization: str = "voxelwise-robust"
    licence: str | None = None
    hub: dict | None = None


# -- reading ------------------------------------------------------------------------------------
def read_upstream(src) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(config.json as a dict, state dict, weights file) of an upstream checkpoint folder."""
    src = Path(src)
    if not src.is_dir():
        raise BrainLMInputError("not a folder; expected a downloaded checkpoint folder with config.json "
                                "and model.safetensors or pytorch_model.bin", str(src))
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise BrainLMInputError("no config.json in the checkpoint folder", str(src))
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BrainLMInputError(f"not valid JSON ({e})", str(cfg_path)) from None
    if not isinstance(cfg, dict):
        raise BrainLMInputError("expected a JSON object", str(cfg_path))
    st, pt = src / "model.safetensors", src / "pytorch_model.bin"
    if st.is_file():
        try:
            state = load_file(st, device="cpu")
        except (SafetensorError, OSError) as e:
            raise BrainLMInputError(f"cannot read the weights (truncated or not safetensors: {e})", str(st)) from None
        return cfg, state, st
    if pt.is_file():
        # The hub's older checkpoints are pickles. weights_only=True restricts unpickling to
        # tensors and plain containers, so a malicious file cannot run code; this is the only
        # pickle load in brainlm (our own checkpoints are safetensors).
        try:
            state = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise BrainLMInputError(f"cannot read the weights (truncated, or holds more than tensors: "
                                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                                    str(pt)) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise BrainLMInputError("expected a flat state dict of tensors", str(pt))
        return cfg, state, pt
    if (src / "model.safetensors.index.json").is_file() or (src / "pytorch_model.bin.index.json").is_file():
        raise BrainLMInputError("sharded checkpoints are not supported; expected one weights file", str(src))
    raise BrainLMInputError("no model.safetensors or pytorch_model.bin in the checkpoint folder", str(src))


def family_of(cfg: dict, source: str) -> str:
    """``upstream-brainlm`` (paper model) or ``upstream-vitmae`` from upstream's config.json."""
    model_type, arches = cfg.get("model_type"), cfg.get("architectures") or []
    if model_type == "brainlm_mae" or "BrainLMForPretraining" in arches:
        return UpstreamBrainLMConfig.architecture
    if model_type == "vit_mae" or "ViTMAEForPreTraining" in arches:
        return UpstreamViTMAEConfig.architecture
    raise BrainLMInputError(f"model_type {model_type!r} (architectures {arches}) is not an original BrainLM "
                            "checkpoint; expected 'brainlm_mae' (old_13M) or 'vit_mae' (vitmae_111M, vitmae_650M)",
                            source)


def _get(cfg: dict, key: str, source: str, default=None):
    if key in cfg:
        return cfg[key]
    if default is not None:
        return default
    raise BrainLMInputError(f"lacks field {key!r}", source)


def convert_config(cfg: dict, family: str, source: str, atlas: Atlas):
    """Our config for an upstream config.json (``source`` names the file in errors)."""
    g = lambda k, d=None: _get(cfg, k, source, d)  # noqa: E731
    if g("hidden_act", "gelu") != "gelu":
        raise BrainLMInputError(f"hidden_act {cfg['hidden_act']!r} is not supported; expected 'gelu'", source)
    try:
        if family == UpstreamBrainLMConfig.architecture:
            if g("num_landmarks") != g("segment_means_seq_len"):
                raise BrainLMInputError("num_landmarks differs from segment_means_seq_len: upstream then uses the "
                                        "Nystrom approximation, which brainlm does not implement", source)
            if cfg.get("conv_kernel_size") is None:
                raise BrainLMInputError("conv_kernel_size is null; expected the value convolution (65)", source)
            return UpstreamBrainLMConfig(
                window_trs=g("num_timepoints_per_voxel"), patch_trs=g("timepoint_patching_size"),
                n_parcels=g("num_brain_voxels"), dim=g("hidden_size"), depth=g("num_hidden_layers"),
                heads=g("num_attention_heads"), intermediate=g("intermediate_size"),
                decoder_dim=g("decoder_hidden_size"), decoder_depth=g("decoder_num_hidden_layers"),
                decoder_heads=g("decoder_num_attention_heads"), decoder_intermediate=g("decoder_intermediate_size"),
                conv_kernel=g("conv_kernel_size"), ln_eps=float(g("layer_norm_eps")), loss=g("loss_fn", "mse"),
                tanh_decoder=bool(cfg.get("use_tanh_decoder", False)), mask_ratio=float(g("mask_ratio")))
        size = g("image_size")
        size = size if isinstance(size, int) else size[0] if len(set(size)) == 1 else None
        if size is None:
            raise BrainLMInputError(f"image_size {cfg['image_size']} is not square", source)
        if not cfg.get("qkv_bias", True):
            raise BrainLMInputError("qkv_bias false is not supported", source)
        order = np.argsort(atlas.xyz[:, 1], kind="stable")  # A424 by ascending y, ties in label order
        return UpstreamViTMAEConfig(
            image_size=int(size), patch_size=g("patch_size"), channels=g("num_channels"), dim=g("hidden_size"),
            depth=g("num_hidden_layers"), heads=g("num_attention_heads"), intermediate=g("intermediate_size"),
            decoder_dim=g("decoder_hidden_size"), decoder_depth=g("decoder_num_hidden_layers"),
            decoder_heads=g("decoder_num_attention_heads"), decoder_intermediate=g("decoder_intermediate_size"),
            ln_eps=float(g("layer_norm_eps")), norm_pix_loss=bool(cfg.get("norm_pix_loss", False)),
            mask_ratio=float(g("mask_ratio")), n_parcels=atlas.n_parcels, parcel_order=tuple(order.tolist()))
    except BrainLMInputError as e:
        raise BrainLMInputError(e.reason, source) from None
    except TypeError as e:
        raise BrainLMInputError(f"a size field has the wrong type ({e})", source) from None


# -- tensor names -------------------------------------------------------------------------------
_BLOCK_PAPER = [("attention.self.query.", "attn.q."), ("attention.self.key.", "attn.k."),
                ("attention.self.value.", "attn.v."), ("attention.self.conv.", "attn.conv."),
                ("attention.output.dense.", "attn.proj."), ("attention.output.LayerNorm.", "norm1."),
                ("intermediate.dense.", "mlp.0."), ("output.dense.", "mlp.2."), ("output.LayerNorm.", "norm2.")]
_BLOCK_VIT = [("attention.attention.query.", "attn.q."), ("attention.attention.key.", "attn.k."),
              ("attention.attention.value.", "attn.v."), ("attention.output.dense.", "attn.proj."),
              ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
              ("intermediate.dense.", "mlp.0."), ("output.dense.", "mlp.2.")]
_TOP_PAPER = {"vit.embeddings.signal_embedding_projection.": "patch_embed.",
              "vit.embeddings.xyz_embedding_projection.": "spatial.", "vit.embeddings.cls_token": "cls_token",
              "vit.layernorm.": "norm.", "decoder.decoder_embed.": "decoder_embed.",
              "decoder.mask_token": "mask_token", "decoder.decoder_xyz_projection.": "decoder_spatial.",
              "decoder.decoder_norm.": "decoder_norm.", "decoder.decoder_pred1.": "decoder_pred.0.",
              "decoder.decoder_pred2.": "decoder_pred.2."}
_TOP_VIT = {"vit.embeddings.cls_token": "cls_token", "vit.embeddings.patch_embeddings.projection.": "patch_embed.",
            "vit.embeddings.position_embeddings": "pos_embed", "vit.layernorm.": "norm.",
            "decoder.decoder_embed.": "decoder_embed.", "decoder.mask_token": "mask_token",
            "decoder.decoder_pos_embed": "decoder_pos_embed", "decoder.decoder_norm.": "decoder_norm.",
            "decoder.decoder_pred.": "decoder_pred."}
_IGNORED_PAPER = {
    "decoder.decoder_pred.weight": "dead ViT-MAE head: the paper model's forward never uses it",
    "decoder.decoder_pred.bias": "dead ViT-MAE head: the paper model's forward never uses it",
    "vit.embeddings.pos_embedding.pe": "fixed sinusoidal table, recomputed (checked equal)",
    "decoder.pos_embedding.pe": "fixed sinusoidal table, recomputed (checked equal)",
}


def our_name(name: str, family: str) -> str | None:
    """Our parameter name for upstream tensor ``name`` (None when it has no counterpart)."""
    paper = family == UpstreamBrainLMConfig.architecture
    m = re.match(r"^(vit\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.*)$", name)
    if m:
        prefix = "blocks" if m.group(1).startswith("vit") else "decoder_blocks"
        for theirs, ours in (_BLOCK_PAPER if paper else _BLOCK_VIT):
            if m.group(3).startswith(theirs):
                return f"{prefix}.{m.group(2)}.{ours}{m.group(3)[len(theirs):]}"
        return None
    for theirs, ours in (_TOP_PAPER if paper else _TOP_VIT).items():
        if name == theirs or (theirs.endswith(".") and name.startswith(theirs)):
            return ours + name[len(theirs):]
    return None


def map_state(state: dict[str, torch.Tensor], model, family: str, source: str,
              config_file: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Upstream state dict -> (our state dict, ignored upstream tensors with the reason).

    Every upstream tensor is mapped or listed as ignored; an unknown one, a missing one or a
    shape that disagrees with ``config_file`` is an error naming the tensor.
    """
    own = model.state_dict()
    out, ignored = {}, {}
    for name, t in state.items():
        if family == UpstreamBrainLMConfig.architecture and name in _IGNORED_PAPER:
            ignored[name] = _IGNORED_PAPER[name]
            if name.endswith(".pe"):
                n, d = model.config.n_patches, t.shape[-1]
                if t.ndim != 2 or t.shape[0] < n or not torch.allclose(t[:n].float(), sinusoidal_positions(n, d),
                                                                       atol=1e-6):
                    raise BrainLMInputError(f"tensor {name!r} is not the sinusoidal table the paper model uses",
                                            source)
            continue
        ours = our_name(name, family)
        if ours is None or ours not in own:
            raise BrainLMInputError(f"tensor {name!r} is not part of the {family} architecture described by "
                                    f"{config_file} (a different model type, or more layers than the config says)",
                                    source)
        if tuple(t.shape) != tuple(own[ours].shape):
            raise BrainLMInputError(f"tensor {name!r} has shape {tuple(t.shape)} but {config_file} implies "
                                    f"{tuple(own[ours].shape)}", source)
        out[ours] = t.detach().to(torch.float32).contiguous()
    missing = [k for k in own if k not in out]
    if missing:
        theirs = {our_name(n, family): n for n in _all_upstream_names(model, family)}
        raise BrainLMInputError(f"missing tensor {theirs.get(missing[0], missing[0])!r} (and {len(missing) - 1} "
                                f"more) that {config_file} implies", source)
    return out, ignored


def _all_upstream_names(model, family: str) -> list[str]:
    """Upstream names of the model's tensors, to name a missing one in upstream's terms."""
    paper = family == UpstreamBrainLMConfig.architecture
    names = []
    for k in model.state_dict():
        m = re.match(r"^(blocks|decoder_blocks)\.(\d+)\.(.*)$", k)
        if m:
            prefix = "vit.encoder.layer" if m.group(1) == "blocks" else "decoder.decoder_layers"
            for theirs, ours in (_BLOCK_PAPER if paper else _BLOCK_VIT):
                if m.group(3).startswith(ours):
                    names.append(f"{prefix}.{m.group(2)}.{theirs}{m.group(3)[len(ours):]}")
            continue
        for theirs, ours in (_TOP_PAPER if paper else _TOP_VIT).items():
            if k == ours or (ours.endswith(".") and k.startswith(ours)):
                names.append(theirs + k[len(ours):])
    return names


# -- the API ------------------------------------------------------------------------------------
def normalization_choice(name: str) -> UpstreamNormalization:
    """The :data:`NORMALIZATIONS` entry ``name``; a one-line error listing the names otherwise."""
    if name not in NORMALIZATIONS:
        raise BrainLMInputError(f"normalization {name!r} is not an upstream variant; expected one of "
                                f"{', '.join(NORMALIZATIONS)}", "--normalization")
    return NORMALIZATIONS[name]


def imported_contract(family: str, target_tr: float = UKB_TR,
                      normalization: str = DEFAULT_NORMALIZATION) -> PreprocessingContract:
    """The preprocessing contract of an imported checkpoint.

    Cleaning: resampling to ``target_tr`` (UK Biobank's 0.735 s by default), with a linear
    detrend for ``voxelwise-robust`` (brainlm's contract before the choice existed) and none for
    the other variants (upstream normalized raw intensities as extracted, so a detrend would
    remove the baseline that min-max scaling keeps). No pooled statistics: upstream never
    released them, so a corpus' own training split stands in (see docs/upstream.md), or each
    recording's own statistics for the per-patient variants. ``scaler_fit`` records the upstream
    column, the family's own column, and the variant's constant gain (``input_gain`` starts at
    it; a calibration multiplies it).
    """
    v = normalization_choice(normalization)
    robust = normalization == DEFAULT_NORMALIZATION
    source = "the corpus' own" if v.scaling == "pooled" else "each recording's own"
    split = " (training split)" if v.scaling == "pooled" else ""
    return PreprocessingContract(
        target_tr=target_tr, detrend=robust, scaling=v.scaling, normalization=v.normalization,
        scaler_fit={"statistics": "none (upstream never released its scaling statistics)",
                    "upstream_normalization": v.column,
                    "family_normalization": NORMALIZATIONS[FAMILY_NORMALIZATIONS[family]].column,
                    "upstream_formula": v.formula,
                    "applied": (f"{source} per-parcel robust scaling{split}" if robust else
                                f"{NORMALIZATION_FORMULAS[v.normalization]}, with {source} statistics{split}"
                                + (f", times {v.gain:.8g}" if v.gain != 1.0 else "")),
                    "variant_gain": v.gain,
                    "input_gain": v.gain})


def load_upstream(src, *, target_tr: float = UKB_TR, normalization: str = DEFAULT_NORMALIZATION):
    """An upstream checkpoint folder as a model in memory, with its import report.

    Parameters
    ----------
    src : path
        The downloaded checkpoint folder.
    target_tr : float
        TR (s) the contract resamples to.
    normalization : str
        The upstream input normalization the weights are assumed to have seen, a key of
        :data:`NORMALIZATIONS` (default ``"voxelwise-robust"``): it sets the contract's
        normalization, scaling mode, cleaning and input gain (:func:`imported_contract`).

    Returns
    -------
    (UpstreamBrainLM or UpstreamViTMAE, ImportReport)
    """
    normalization_choice(normalization)  # a bad name fails before the weights are read
    cfg, state, weights = read_upstream(src)
    config_file = str(Path(src) / "config.json")
    family = family_of(cfg, config_file)
    atlas = load_atlas("a424")
    config = convert_config(cfg, family, config_file, atlas)
    cls = UpstreamBrainLM if family == UpstreamBrainLMConfig.architecture else UpstreamViTMAE
    model = cls(config, contract=imported_contract(family, target_tr, normalization), atlas=atlas)
    if family == UpstreamViTMAEConfig.architecture and config.n_parcels != 424:
        raise BrainLMInputError("the ViT-MAE family is built for the 424 A424 parcels", config_file)
    mapped, ignored = map_state(state, model, family, str(weights), Path(config_file).name)
    model.load_state_dict(mapped, strict=True)
    notes = []
    if normalization != FAMILY_NORMALIZATIONS[family]:
        notes.append(f"normalization {normalization!r} is not the one this family's own scripts read "
                     f"({FAMILY_NORMALIZATIONS[family]!r})")
    if family == UpstreamViTMAEConfig.architecture:
        mode = cfg.get("train_mode", "auto_encode")
        if mode != "auto_encode":
            notes.append(f"train_mode {mode!r}: upstream masked the last time patches in training; "
                         "brainlm's masks are chosen by each task")
        for name in ("pos_embed", "decoder_pos_embed"):
            t = mapped[name][0]
            if not torch.allclose(t, sincos_2d(t.shape[-1], config.grid), atol=1e-5):
                notes.append(f"{name} differs from the fixed 2-D sine-cosine table (used as stored)")
    report = ImportReport(family=family, source=str(weights), n_tensors=len(mapped), ignored=ignored,
                          parameters=sum(p.numel() for p in model.parameters()), notes=notes,
                          normalization=normalization)
    return model.eval(), report


def import_upstream(src, out, *, target_tr: float = UKB_TR,
                    normalization: str = DEFAULT_NORMALIZATION) -> ImportReport:
    """Convert the upstream checkpoint folder ``src`` into a brainlm checkpoint folder ``out``,
    assuming the upstream input ``normalization`` (see :func:`load_upstream`).

    ``out`` then loads with :func:`brainlm.checkpoints.folder.load_pretrained` (and every
    ``brainlm`` command that takes a checkpoint). The import report is also written to
    ``out/upstream_import.json``. Converted weights stay under the hub's licence terms
    (docs/upstream.md): convert locally, do not redistribute.
    """
    model, report = load_upstream(src, target_tr=target_tr, normalization=normalization)
    save_imported(model, report, out)
    return report


def save_imported(model, report: ImportReport, out) -> None:
    """Write a model from :func:`load_upstream` (its contract possibly given an input gain, see
    :mod:`brainlm.tasks.calibration`) as a checkpoint folder, with ``upstream_import.json``."""
    save_pretrained(model, out, extra={"upstream_import.json": {
        "family": report.family, "source": report.source, "n_tensors": report.n_tensors,
        "ignored": report.ignored, "parameters": report.parameters, "notes": report.notes,
        "normalization": report.normalization,
        "upstream_column": NORMALIZATIONS[report.normalization].column,
        "licence": report.licence, "hub": report.hub}})


# -- from the Hugging Face Hub -------------------------------------------------------------------
@dataclass(frozen=True)
class HubImport:
    """An original checkpoint fetched from the Hub and converted (or found converted).

    Attributes
    ----------
    path : Path
        The converted brainlm checkpoint folder (in the conversion cache, or ``out``).
    snapshot : HubSnapshot
        The fetched folder, its commit and licence.
    report : ImportReport or None
        What the conversion did; None when a cached conversion was reused.
    converted : bool
        Whether this call converted the weights (False: reused from the cache).
    """

    path: Path
    snapshot: HubSnapshot
    report: ImportReport | None
    converted: bool

    @property
    def licence_line(self) -> str:
        """The line to print wherever the weights are imported."""
        return f"licence of the weights ({self.snapshot.hub_id.repo_id}): {self.snapshot.licence_text}"


def settings_key(target_tr: float, normalization: str) -> str:
    """The conversion cache's key of the import options (:data:`~brainlm.checkpoints.hub.DEFAULT_SETTINGS`
    for ``brainlm import-upstream``'s defaults, which ``hf://`` ids resolve to)."""
    if normalization == DEFAULT_NORMALIZATION and float(target_tr) == UKB_TR:
        return DEFAULT_SETTINGS
    return f"{normalization}-tr{float(target_tr):g}"


def fetch_upstream(hub_id, *, subfolder: str | None = None, revision: str | None = None) -> HubSnapshot:
    """Fetch an original checkpoint's folder from the Hub (``hf://ORG/REPO[@REV][/SUB]`` or
    ``ORG/REPO`` with ``subfolder`` / ``revision``); an error when the folder holds a brainlm
    checkpoint instead (which loads as it is, with no import)."""
    snapshot = fetch(parse_hub_id(str(hub_id), subfolder=subfolder, revision=revision))
    if not is_upstream_config(snapshot.path):
        raise BrainLMInputError("holds a brainlm checkpoint, not an original BrainLM one: nothing to "
                                f"import; use {snapshot.hub_id} wherever a checkpoint is asked for",
                                str(snapshot.hub_id))
    return snapshot


def import_from_hub(hub_id, *, subfolder: str | None = None, revision: str | None = None,
                    target_tr: float = UKB_TR, normalization: str = DEFAULT_NORMALIZATION) -> HubImport:
    """An original BrainLM checkpoint on the Hub as a brainlm checkpoint, converted once per
    commit, subfolder and import options and kept in the conversion cache
    (:func:`brainlm.checkpoints.hub.converted_folder`); a later call with the same options returns
    the cached folder without reading the weights again. The weights' licence is recorded in the
    checkpoint's ``upstream_import.json`` (``licence``, ``hub``)."""
    normalization_choice(normalization)
    snapshot = fetch_upstream(hub_id, subfolder=subfolder, revision=revision)
    out = converted_folder(snapshot, settings_key(target_tr, normalization))
    if is_checkpoint(out):
        return HubImport(out, snapshot, None, converted=False)
    model, report = load_upstream(snapshot.path, target_tr=target_tr, normalization=normalization)
    record_hub(report, snapshot)
    save_imported(model, report, out)
    return HubImport(out, snapshot, report, converted=True)


def record_hub(report: ImportReport, snapshot: HubSnapshot) -> None:
    """Put where the weights came from, and their licence, on ``report`` (saved with it)."""
    h = snapshot.hub_id
    report.licence = snapshot.licence
    report.hub = {"id": str(h), "repo_id": h.repo_id, "subfolder": h.subfolder, "revision": h.revision,
                  "commit": snapshot.commit}
