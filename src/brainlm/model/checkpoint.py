"""Checkpoints without pickle: safetensors weights + JSON config, contract and atlas.

Layout of a checkpoint folder::

    model.safetensors   weights
    config.json         {"format", "brainlm_version", "architecture", "model": the model's config,
                         "sha256": of the weights file}
    contract.json       the preprocessing contract (required unless a bare model is asked for)
    atlas.json          the pretraining atlas (optional)
    digests.json        {"sha256": {file name: sha256}} of every other file of the checkpoint
                        (weights, config, contract, atlas, extra JSON such as
                        upstream_import.json); config.json says that it is there
    .brainlm-output.json  the marker of a folder brainlm wrote (not part of the checkpoint)

Loading is strict: missing, unexpected or mis-shaped tensors are an error (upstream silently
re-initialised them), the weights' sha256 must match the one recorded, and every file recorded
in digests.json must be present and unchanged (an edited config or contract would otherwise
load and silently change what the model computes). A checkpoint without a contract loads only
when the caller asks for a bare model (``bare=True``): every task needs to know how its input
was cleaned and scaled. ``architecture``
says which model class the config describes: ``brainlm`` (:class:`BrainLM`; assumed when absent,
as in checkpoints written before the field existed) or one of the imported upstream families
(:mod:`brainlm.model.upstream`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from brainlm.data.atlas import Atlas
from brainlm.data.atomic import atomic_directory, write_json
from brainlm.data.contract import PreprocessingContract
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.model.config import BrainLMConfig
from brainlm.model.shipped import resolve_checkpoint
from brainlm.model.upstream import UPSTREAM_ARCHITECTURES
from brainlm.version import __version__

FORMAT = "brainlm-checkpoint"
WEIGHTS = "model.safetensors"
DIGESTS = "digests.json"

#: ``architecture`` in config.json -> (model class, config class).
ARCHITECTURES = {"brainlm": (BrainLM, BrainLMConfig), **UPSTREAM_ARCHITECTURES}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_pretrained(model, directory, *, extra: dict[str, dict] | None = None) -> None:
    """Write ``model`` (a :class:`BrainLM` or an imported upstream model: weights, config, and
    the contract and atlas it carries) to ``directory``,
    published whole (built in a temporary folder, then renamed; an existing checkpoint is
    replaced only once the new one is complete). ``extra`` maps further JSON file names to
    their content (e.g. a forecaster's ``forecasting.json``)."""
    with atomic_directory(directory, overwrite=True, what="checkpoint") as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt"})
        write_json(tmp / "config.json", {"format": FORMAT, "brainlm_version": __version__,
                                         "architecture": getattr(model.config, "architecture", "brainlm"),
                                         "model": model.config.to_dict(), "sha256": sha256_file(tmp / WEIGHTS)})
        if model.contract is not None:
            model.contract.save(tmp / "contract.json")
        if model.atlas is not None:
            write_json(tmp / "atlas.json", model.atlas.to_dict(), indent=None)
        for name, content in (extra or {}).items():
            write_json(tmp / name, content)
        cfg = json.loads((tmp / "config.json").read_text())
        write_json(tmp / "config.json", {**cfg, "digests": DIGESTS})
        write_json(tmp / DIGESTS, {"sha256": {f.name: sha256_file(f) for f in sorted(tmp.iterdir())
                                              if f.is_file() and not f.name.startswith(".")}})


def _verify_digests(directory: Path, cfg: dict, bare: bool = False) -> None:
    """Every file recorded in ``digests.json`` is present (contract.json may be absent when
    ``bare``) and unchanged; an error naming the first that is not. Checkpoints written before digests.json existed (config.json does not
    name it) have only their weights checked."""
    if "digests" not in cfg:
        return
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


def load_pretrained(directory, map_location: str = "cpu", *, bare: bool = False):
    """Read a checkpoint folder into the model class its config names (:class:`BrainLM` or an
    upstream family); see the module docstring for what is checked. ``bare``: accept a
    checkpoint without contract.json (the model then carries no contract). ``directory`` may
    also be the name of a shipped model (:mod:`brainlm.model.shipped`)."""
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
    model.load_state_dict(state, strict=True)
    return model.to(map_location)
