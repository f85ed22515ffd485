"""Checkpoints without pickle: safetensors weights + JSON config, contract and atlas.

Layout of a checkpoint folder::

    model.safetensors   weights
    config.json         {"format", "brainlm_version", "architecture", "model": the model's config,
                         "sha256": of the weights file}
    contract.json       the preprocessing contract (required unless a bare model is asked for)
    atlas.json          the pretraining atlas (optional)
    spatial_baseline.safetensors
                        the spatial statistics of the pretraining data (optional; written by
                        ``brainlm pretrain``): parcel ``mean`` (P,) and Ledoit-Wolf ``covariance``
                        (P, P), float64, in model-input units, with the number of frames and the
                        shrinkage in the file's metadata; see :class:`SpatialStatistics`
    digests.json        {"sha256": {file name: sha256}} of every other file of the checkpoint
                        (weights, config, contract, atlas, extra JSON such as
                        upstream_import.json, extra tensor files); config.json says that it is
                        there
    .brainlm-output.json  the marker of a folder brainlm wrote (not part of the checkpoint)

Loading is strict: missing, unexpected or mis-shaped tensors are an error (upstream silently
re-initialised them), and so are NaN or infinite weights; the weights' sha256 must match the one
recorded, and every file recorded in digests.json must be present and unchanged (an edited
config or contract would otherwise load and silently change what the model computes). A
checkpoint without digests is refused (:func:`record_digests` vouches for an old one). A checkpoint without a contract loads only
when the caller asks for a bare model (``bare=True``): every task needs to know how its input
was cleaned and scaled. Extra tensor files (``save_pretrained(..., tensors=...)``) are
safetensors too, and are read back only through :func:`load_tensors`, which checks them against
digests.json. ``architecture``
says which model class the config describes: ``brainlm`` (:class:`BrainLM`; assumed when absent,
as in checkpoints written before the field existed) or one of the imported upstream families
(:mod:`brainlm.model.upstream`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from brainlm.data.atlas import Atlas
from brainlm.data.atomic import atomic_directory, atomic_path, write_json
from brainlm.data.contract import PreprocessingContract
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.model.config import BrainLMConfig
from brainlm.checkpoints.shipped import resolve_checkpoint
from brainlm.model.upstream import UPSTREAM_ARCHITECTURES
from brainlm.version import __version__

FORMAT = "brainlm-checkpoint"
WEIGHTS = "model.safetensors"
DIGESTS = "digests.json"
#: The pretraining data's spatial statistics (see :class:`SpatialStatistics`).
SPATIAL_BASELINE = "spatial_baseline.safetensors"
SPATIAL_FORMAT = "brainlm-spatial-baseline"

#: ``architecture`` in config.json -> (model class, config class).
ARCHITECTURES = {"brainlm": (BrainLM, BrainLMConfig), **UPSTREAM_ARCHITECTURES}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SpatialStatistics:
    """Parcel mean and Ledoit-Wolf shrunk covariance of a set of frames (one frame = the P
    parcel values at one TR), in model-input units (robust-scaled signal).

    ``mean``: (P,) float64; ``covariance``: (P, P) float64, symmetric positive definite;
    ``n_frames``: frames fitted on; ``shrinkage``: the Ledoit-Wolf shrinkage in [0, 1];
    ``info``: where the frames came from (plain strings: ``split``, ``scaling``, ``atlas``,
    ``corpus_identity``), stored as safetensors metadata.
    """

    mean: np.ndarray
    covariance: np.ndarray
    n_frames: int
    shrinkage: float
    info: dict[str, str] = field(default_factory=dict)

    @property
    def n_parcels(self) -> int:
        return int(self.mean.shape[0])

    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """(tensors, metadata) for :func:`save_pretrained`'s ``tensors``."""
        meta = {**{str(k): str(v) for k, v in self.info.items()}, "format": SPATIAL_FORMAT,
                "n_frames": str(int(self.n_frames)), "shrinkage": repr(float(self.shrinkage))}
        return ({"mean": np.ascontiguousarray(self.mean, dtype=np.float64),
                 "covariance": np.ascontiguousarray(self.covariance, dtype=np.float64)}, meta)

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], metadata: dict[str, str], source: str) -> "SpatialStatistics":
        """The statistics stored by :meth:`to_tensors`; an error naming ``source`` and the field
        when a tensor or a metadata entry is missing, mis-shaped or not finite."""
        if metadata.get("format") != SPATIAL_FORMAT:
            raise BrainLMInputError(f"metadata 'format' is {metadata.get('format')!r}; expected "
                                    f"{SPATIAL_FORMAT!r}", source)
        for name in ("mean", "covariance"):
            if name not in tensors:
                raise BrainLMInputError(f"tensor {name!r} is missing; expected 'mean' (P,) and "
                                        "'covariance' (P, P)", source)
        mean = np.asarray(tensors["mean"], dtype=np.float64)
        cov = np.asarray(tensors["covariance"], dtype=np.float64)
        if mean.ndim != 1 or cov.shape != (mean.shape[0],) * 2:
            raise BrainLMInputError(f"tensors 'mean' {mean.shape} and 'covariance' {cov.shape}; expected "
                                    "(P,) and (P, P)", source)
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise BrainLMInputError("tensors 'mean' or 'covariance' hold NaN or infinite values", source)
        try:
            n_frames, shrinkage = int(metadata["n_frames"]), float(metadata["shrinkage"])
        except (KeyError, ValueError):
            raise BrainLMInputError("metadata 'n_frames' (an integer) or 'shrinkage' (a number) is "
                                    "missing or not a number", source) from None
        if n_frames < 2 or not (math.isfinite(shrinkage) and 0.0 <= shrinkage <= 1.0):
            raise BrainLMInputError(f"metadata n_frames {n_frames}, shrinkage {shrinkage}; expected at "
                                    "least 2 frames and a shrinkage in [0, 1]", source)
        info = {k: v for k, v in metadata.items() if k not in ("format", "n_frames", "shrinkage")}
        return cls(mean, cov, n_frames, shrinkage, info)


def _check_tensor_file_name(name: str) -> None:
    if (not name.endswith(".safetensors") or name == WEIGHTS or Path(name).name != name
            or name.startswith(".")):
        raise ValueError(f"extra tensor file {name!r}: expected a plain file name ending in "
                         f".safetensors other than {WEIGHTS}")


def save_pretrained(model, directory, *, extra: dict[str, dict] | None = None,
                    tensors: dict[str, tuple[dict[str, np.ndarray], dict[str, str] | None]] | None = None) -> None:
    """Write ``model`` (a :class:`BrainLM` or an imported upstream model: weights, config, and
    the contract and atlas it carries) to ``directory``,
    published whole (built in a temporary folder, then renamed; an existing checkpoint is
    replaced only once the new one is complete). ``extra`` maps further JSON file names to
    their content (e.g. a forecaster's ``forecasting.json``). ``tensors`` maps further
    safetensors file names (e.g. :data:`SPATIAL_BASELINE`) to ``(arrays, metadata)``: numpy
    arrays by name and string metadata; read them back with :func:`load_tensors`. Every file
    is recorded in digests.json."""
    for name in tensors or {}:
        _check_tensor_file_name(name)
    with atomic_directory(directory, overwrite=True, what="checkpoint") as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        # Through atomic_path for its permissions: safetensors writes weight files private (0600),
        # which a checkpoint shared on a cluster must not be.
        with atomic_path(tmp / WEIGHTS) as f:
            save_file(state, f, metadata={"format": "pt"})
        write_json(tmp / "config.json", {"format": FORMAT, "brainlm_version": __version__,
                                         "architecture": getattr(model.config, "architecture", "brainlm"),
                                         "model": model.config.to_dict(), "sha256": sha256_file(tmp / WEIGHTS)})
        if model.contract is not None:
            model.contract.save(tmp / "contract.json")
        if model.atlas is not None:
            write_json(tmp / "atlas.json", model.atlas.to_dict(), indent=None)
        for name, content in (extra or {}).items():
            write_json(tmp / name, content)
        for name, (arrays, metadata) in (tensors or {}).items():
            with atomic_path(tmp / name) as f:
                safetensors.numpy.save_file({k: np.ascontiguousarray(np.asarray(v)) for k, v in arrays.items()},
                                            f, metadata=dict(metadata or {}))
        _write_digests(tmp)


def _write_digests(directory: Path) -> None:
    """Name digests.json in config.json, then record the sha256 of every other file."""
    cfg = json.loads((directory / "config.json").read_text())
    write_json(directory / "config.json", {**cfg, "digests": DIGESTS})
    write_json(directory / DIGESTS, {"sha256": {f.name: sha256_file(f) for f in sorted(directory.iterdir())
                                                if f.is_file() and not f.name.startswith(".")
                                                and f.name != DIGESTS}})


def record_digests(directory) -> None:
    """Record the sha256 of every file of a checkpoint written before digests.json existed, so
    that it loads again (:func:`load_pretrained` refuses a checkpoint without digests, since
    removing them would otherwise let an edited config or contract through). Only for a
    checkpoint whose files you trust as they are: this vouches for them. A checkpoint that
    already has digests is refused (its files are checked, not re-recorded)."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BrainLMInputError(f"cannot read config.json ({e})", str(directory)) from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise BrainLMInputError("not a brainlm checkpoint (config.json's format)", str(directory))
    if "digests" in cfg or (directory / DIGESTS).exists():
        raise BrainLMInputError(f"checkpoint already has {DIGESTS}; its files are checked against it",
                                str(directory))
    if sha256_file(directory / WEIGHTS) != cfg.get("sha256"):
        raise BrainLMInputError(f"{WEIGHTS} does not match the sha256 in config.json", str(directory))
    _write_digests(directory)


def load_tensors(directory, name: str) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
    """An extra tensor file of a checkpoint written by :func:`save_pretrained` (``tensors=``):
    ``(arrays by name, metadata)``, or None when the checkpoint has no such file.

    The file must be recorded in digests.json with its sha256 (an altered file, or one added
    after the checkpoint was written, is an error naming it).
    """
    _check_tensor_file_name(name)
    directory = resolve_checkpoint(directory)
    path = directory / name
    try:
        cfg = json.loads((directory / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BrainLMInputError(f"cannot read config.json ({e})", str(directory)) from None
    if not isinstance(cfg, dict) or "digests" not in cfg:
        raise BrainLMInputError(f"config.json names no {DIGESTS}: {name} cannot be checked", str(directory))
    recorded = _recorded_digests(directory)
    if name not in recorded:
        if path.exists():
            raise BrainLMInputError(f"{name} is not recorded in {DIGESTS}: it was added after the "
                                    "checkpoint was written", str(path))
        return None
    if not path.is_file():
        raise BrainLMInputError(f"checkpoint lacks {name}, which it was written with", str(directory))
    if sha256_file(path) != recorded[name]:
        raise BrainLMInputError(f"{name} was altered or damaged after the checkpoint was written "
                                "(its sha256 differs from the one in digests.json)", str(path))
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise BrainLMInputError(f"cannot read {name} ({e})", str(path)) from None


def load_spatial_statistics(directory) -> SpatialStatistics | None:
    """The pretraining data's spatial statistics stored with a checkpoint
    (:data:`SPATIAL_BASELINE`), or None for a checkpoint without them (written before they were
    stored, an imported upstream model). Digest-checked; mean and covariance must fit the
    checkpoint's atlas (its parcel count) when it has one."""
    found = load_tensors(directory, SPATIAL_BASELINE)
    if found is None:
        return None
    directory = resolve_checkpoint(directory)
    stats = SpatialStatistics.from_tensors(*found, source=str(directory / SPATIAL_BASELINE))
    atlas_path = directory / "atlas.json"
    if atlas_path.is_file():
        n = Atlas.from_dict(json.loads(atlas_path.read_text())).n_parcels
        if stats.n_parcels != n:
            raise BrainLMInputError(f"tensor 'mean' has {stats.n_parcels} parcels; expected the "
                                    f"{n} of the checkpoint's atlas.json", str(directory / SPATIAL_BASELINE))
    return stats


def pretraining_spatial_statistics(model) -> SpatialStatistics | None:
    """The spatial statistics that :func:`load_pretrained` attached to ``model``
    (``model.spatial_statistics``); None for a model built in memory or loaded from a
    checkpoint without them."""
    stats = getattr(model, "spatial_statistics", None)
    return stats if isinstance(stats, SpatialStatistics) else None


def _recorded_digests(directory: Path) -> dict:
    """{file name: sha256} from digests.json; an error naming it when missing or damaged."""
    path = directory / DIGESTS
    try:
        recorded = json.loads(path.read_text())["sha256"]
        if not isinstance(recorded, dict):
            raise TypeError
    except FileNotFoundError:
        raise BrainLMInputError(f"checkpoint lacks {DIGESTS} (config.json says it has one)",
                                str(directory)) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise BrainLMInputError(f"{DIGESTS} is damaged (expected {{\"sha256\": {{file: digest}}}})",
                                str(path)) from None
    return recorded


def _verify_digests(directory: Path, cfg: dict, bare: bool = False) -> None:
    """Every file recorded in ``digests.json`` is present (contract.json may be absent when
    ``bare``) and unchanged, and every file of the checkpoint is recorded; an error naming the
    first that is not. A checkpoint without digests is refused: deleting them must not turn an
    edited config or contract into an "old" checkpoint that loads (:func:`record_digests`
    vouches for one written before digests existed)."""
    if "digests" not in cfg:
        raise BrainLMInputError(
            f"config.json names no {DIGESTS}, so its files cannot be checked (a checkpoint written "
            "before digests, or one whose digests were removed); if you trust its files as they are, "
            "run brainlm.checkpoints.folder.record_digests on the folder once", str(directory))
    recorded = _recorded_digests(directory)
    for name in ("config.json", WEIGHTS, "contract.json", "atlas.json"):
        if (directory / name).is_file() and name not in recorded:
            raise BrainLMInputError(f"{name} is not recorded in {DIGESTS}: it was added or the digests "
                                    "were edited after the checkpoint was written", str(directory))
    for name, digest in sorted(recorded.items()):
        f = directory / str(name)
        if not f.is_file():
            if bare and name == "contract.json":
                continue
            raise BrainLMInputError(f"checkpoint lacks {name}, which it was written with"
                                    + ("; load it with bare=True for the bare model" if name == "contract.json" else ""),
                                    str(directory))
        if sha256_file(f) != digest:
            raise BrainLMInputError(f"{name} was altered or damaged after the checkpoint was written "
                                    "(its sha256 differs from the one in digests.json)", str(f))


def is_checkpoint(directory) -> bool:
    """Whether ``directory`` holds a brainlm checkpoint (its config.json says this format);
    a quick look that reads no weights, for telling checkpoints from corpora and other folders."""
    try:
        cfg = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == FORMAT


def load_pretrained(directory, map_location: str = "cpu", *, bare: bool = False):
    """Read a checkpoint folder into the model class its config names (:class:`BrainLM` or an
    upstream family); see the module docstring for what is checked. ``bare``: accept a
    checkpoint without contract.json (the model then carries no contract). ``directory`` may
    also be the name of a shipped model (:mod:`brainlm.checkpoints.shipped`)."""
    directory = resolve_checkpoint(directory)
    if not directory.is_dir():
        raise BrainLMInputError("checkpoint is not a folder", str(directory))
    cfg_path, weights = directory / "config.json", directory / WEIGHTS
    for p in (cfg_path, weights):
        if not p.is_file():
            raise BrainLMInputError(f"checkpoint lacks {p.name}", str(directory))
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BrainLMInputError(f"config.json is not valid JSON ({e})", str(directory)) from None
    if not isinstance(cfg, dict):
        raise BrainLMInputError(f"config.json holds a {type(cfg).__name__}; expected a brainlm checkpoint "
                                "config (an object)", str(directory))
    if not isinstance(cfg.get("model"), dict):
        raise BrainLMInputError("config.json has no model settings (\"model\" is missing or not an "
                                "object)", str(directory))
    if cfg.get("format") != FORMAT:
        raise BrainLMInputError(f"config.json is not a brainlm checkpoint config (format {cfg.get('format')!r})",
                                str(directory))
    digest = sha256_file(weights)
    if digest != cfg.get("sha256"):
        raise BrainLMInputError(
            f"{WEIGHTS} is truncated or altered: sha256 {digest[:16]}... does not match the recorded "
            f"{str(cfg.get('sha256'))[:16]}...", str(directory))
    _verify_digests(directory, cfg, bare)
    contract = None
    if (directory / "contract.json").is_file():
        contract = PreprocessingContract.load(directory / "contract.json")
    elif not bare:
        raise BrainLMInputError("checkpoint lacks contract.json (how its training data were cleaned "
                                "and scaled); no task can prepare input for it. Load it with "
                                "bare=True for the bare model", str(directory))
    atlas = None
    if (directory / "atlas.json").is_file():
        atlas = Atlas.from_dict(json.loads((directory / "atlas.json").read_text()))
    arch = cfg.get("architecture", "brainlm")
    if arch not in ARCHITECTURES:
        raise BrainLMInputError(f"config.json names architecture {arch!r}; this brainlm knows "
                                f"{sorted(ARCHITECTURES)} (a newer brainlm wrote it?)", str(directory))
    model_cls, config_cls = ARCHITECTURES[arch]
    try:
        model = model_cls(config_cls.from_dict(cfg["model"]), contract=contract, atlas=atlas)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise BrainLMInputError(f"config.json's model settings cannot build a model ({type(e).__name__}: "
                                f"{' '.join(str(e).split())})", str(directory)) from None
    try:
        state = load_file(weights, device=map_location)
    except SafetensorError as e:
        raise BrainLMInputError(f"cannot read {WEIGHTS} ({e})", str(directory)) from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise BrainLMInputError(
            "weights do not match the architecture in config.json: "
            + "; ".join(filter(None, [missing and f"missing {missing[:5]}",
                                      unexpected and f"unexpected {unexpected[:5]}",
                                      shapes and f"shape {shapes[:3]}"])), str(directory))
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise BrainLMInputError(f"weights hold NaN or infinite values ({', '.join(bad[:3])}"
                                f"{', ...' if len(bad) > 3 else ''}); a model with them computes only NaN",
                                str(directory / WEIGHTS))
    model.load_state_dict(state, strict=True)
    # Carried like the contract and the atlas (never applied by the model): the zero-shot
    # spatial baseline of `brainlm evaluate recon` reads it.
    model.spatial_statistics = load_spatial_statistics(directory)
    return model.to(map_location)
