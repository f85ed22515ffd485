"""The Python API that mirrors the command line: ``brainlm.list_models``, ``brainlm.load``,
``brainlm.embed`` and ``brainlm.info`` (re-exported, lazily, by the package root).

Each returns what its command prints, as Python values, and the commands print what these
return (``brainlm models --json``, ``brainlm info``), so the two cannot drift apart:

=====================================  =======================================================
Python                                 command
=====================================  =======================================================
``brainlm.list_models()``              ``brainlm models --json``
``brainlm.load(name | path | hf id)``  the ``CHECKPOINT`` argument of every command
``brainlm.embed(checkpoint, data)``    ``brainlm embed CHECKPOINT DATA --out x.parquet``
``brainlm.info(path)``                 ``brainlm info PATH --json``
=====================================  =======================================================

A checkpoint is named as everywhere: a folder (``RUN/model``), a shipped model's name
(``hcp-small``) or a Hugging Face Hub id (``hf://ORG/REPO[@REVISION][/SUBFOLDER]``). Here, unlike
on the command line, an Hub id of an original BrainLM checkpoint (``hf://vandijklab/brainlm/old_13M``)
is converted on first use (once per revision, then reused; the weights' licence is printed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.data.atlas import Atlas
from brainlm.data.corpus import Corpus
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import is_checkpoint, load_pretrained, pretraining_spatial_statistics
from brainlm.checkpoints.hub import fetch, is_hub_id, is_upstream_config, parse_hub_id
from brainlm.checkpoints.shipped import resolve_checkpoint, shipped_models
from brainlm.checkpoints.upstream_import import import_from_hub
from brainlm.tasks.embed import embed as embed_task
from brainlm.tasks.model_input import is_model, load_model

__all__ = ["checkpoint_summary", "embed", "info", "list_models", "load", "resolve"]


def list_models() -> list[dict]:
    """The pretrained checkpoints shipped with brainlm, as ``brainlm models --json`` prints them:
    one dict per model, sorted by name, with ``name``, ``path`` (its checkpoint folder, a str)
    and the entries of its card (``summary``, ``scores``, ``limits`` ...)."""
    return [m.to_dict() for m in shipped_models()]


def resolve(checkpoint: str | Path) -> Path:
    """The checkpoint folder that ``checkpoint`` names (see the module docstring). An ``hf://``
    id of an original BrainLM checkpoint is converted here the first time (with
    ``brainlm import-upstream``'s default options), its licence printed to stderr."""
    if is_hub_id(checkpoint) and is_upstream_config(fetch(parse_hub_id(checkpoint)).path):
        done = import_from_hub(checkpoint)
        if done.converted:
            print(f"brainlm: converted {done.snapshot.hub_id} (commit {done.snapshot.commit[:12]}) into "
                  f"{done.path}", file=sys.stderr)
        print(f"brainlm: {done.licence_line}", file=sys.stderr)
        return done.path
    return resolve_checkpoint(checkpoint)


def load(checkpoint, device: str = "cpu"):
    """A model (:class:`~brainlm.model.BrainLM` or an imported upstream family) with its
    preprocessing contract and atlas, from a checkpoint folder, a shipped model's name or a
    Hub id; a model given is returned as it is."""
    if is_model(checkpoint):
        return checkpoint
    return load_model(resolve(checkpoint), device)


def embed(checkpoint, data, *, tr: float | None = None, atlas: Atlas | None = None, per_window: bool = False,
          transfer_atlas: bool = False, orientation: str = "auto", key: str | None = None,
          batch_size: int = 32, device: str = "cpu", precision: str = "32-true") -> pd.DataFrame:
    """Embeddings as ``brainlm embed`` writes them: one row per recording (``per_window``: per
    window), with its ids, ``n_windows``, ``cls_0000 ...`` and ``mean_0000 ...`` (D float32
    columns each; no masking, deterministic tiles: the same input gives the same numbers).

    Parameters
    ----------
    checkpoint : str, path or model
        A checkpoint folder, shipped model's name, Hub id, or a loaded model.
    data : path, list of paths, Recording(s) or list of (T, P) arrays
        A prepared corpus, time-series files or folders, Recordings, or raw arrays (rows TRs,
        columns parcels in ``atlas`` order; they need ``tr``).
    tr : float, optional
        Repetition time in seconds, of files without a sidecar and of arrays.
    atlas : Atlas, optional
        Atlas of arrays (default: the checkpoint's; another one needs ``transfer_atlas``).
    """
    model = load(checkpoint, device)
    items = data if isinstance(data, (list, tuple)) else [data]
    if any(isinstance(x, np.ndarray) for x in items):
        atlas = atlas if atlas is not None else model.atlas
        if tr is None:
            raise BrainLMInputError("arrays have no TR: pass tr= (seconds; e.g. a nilearn masker's t_r)",
                                    "brainlm.embed(data=...)")
        if atlas is None:
            raise BrainLMInputError("the checkpoint has no atlas: pass atlas= for arrays", "brainlm.embed(data=...)")
        items = [x if isinstance(x, Recording) else
                 Recording(np.asarray(x, dtype=np.float32), float(tr), atlas, subject=f"{i:04d}",
                           source=f"data[{i}]") for i, x in enumerate(items)]
    return embed_task(model, items, per_window=per_window, tr=tr, orientation=orientation, key=key,
                      transfer_atlas=transfer_atlas, batch_size=batch_size, device=device, precision=precision)


def checkpoint_summary(checkpoint: str) -> dict:
    """What a checkpoint is and expects, as plain Python values: ``architecture``,
    ``parameters``, ``model`` (window and patch in TRs, parcels, width, depth), ``atlas``,
    ``preprocessing`` (cleaning, TR in seconds, normalization, scaling and where its statistics
    come from, input gain), ``spatial_baseline`` (whether the zero-shot baseline is stored),
    ``hybrid`` (a hybrid's prior size and prior dropout; absent otherwise),
    ``upstream`` (an imported checkpoint's import record, with the weights' ``licence``),
    ``forecasting`` (a forecaster's horizon) and ``prepare`` (the command that prepares data
    for it)."""
    path = resolve_checkpoint(checkpoint)
    model = load_pretrained(path)
    c, cfg = model.contract, model.config
    keys = ("window_trs", "patch_trs", "n_parcels", "dim", "depth", "heads", "image_size", "patch_size")
    out = {"path": str(path), "architecture": getattr(cfg, "architecture", "brainlm"),
           "parameters": int(sum(p.numel() for p in model.parameters())),
           "model": {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}}
    atlas = model.atlas
    out["atlas"] = None if atlas is None else {"name": atlas.name, "parcels": atlas.n_parcels}
    if c is not None:
        fit = c.scaler_fit
        pooled = None
        if c.median is not None:
            pooled = f"pooled over {fit['recordings']} pretraining recordings" if "recordings" in fit else "stored"
        if c.per_recording:  # pooled statistics, where stored, are not applied
            statistics = "each recording's own" + (f" (those {pooled} kept for reference)" if pooled else "")
        else:
            statistics = pooled or "none stored: a corpus' own, fitted on its training split"
        out["preprocessing"] = {
            **c.cleaning(), "normalization": c.normalization, "scaling": c.scaling,
            "statistics": statistics,
            "input_gain": float(fit.get("input_gain", 1.0)), "input_offset": float(fit.get("input_offset", 0.0))}
    out["spatial_baseline"] = pretraining_spatial_statistics(model) is not None
    if getattr(cfg, "spatial_prior_parcels", 0):
        out["hybrid"] = {"spatial_prior_parcels": cfg.spatial_prior_parcels, "prior_dropout": cfg.prior_dropout}
    for name, key in (("upstream_import.json", "upstream"), ("forecasting.json", "forecasting")):
        if (path / name).is_file():
            out[key] = json.loads((path / name).read_text())
    like = f"--like {checkpoint}"
    if atlas is None:
        out["prepare"] = f"brainlm prepare DATA --atlas ATLAS {like} --out CORPUS"
    elif atlas.name == "a424":
        out["prepare"] = (f"brainlm prepare SCANS --atlas-image a424 {like} --out CORPUS "
                          f"(or time series: --atlas a424)")
    else:
        out["prepare"] = f"brainlm prepare DATA --atlas {atlas.name} {like} --out CORPUS"
    return out


def info(path: str | Path) -> dict:
    """What ``brainlm info PATH --json`` prints: a checkpoint's summary
    (:func:`checkpoint_summary`; ``kind`` ``"checkpoint"``) or a corpus' (recordings, splits,
    TRs, atlas, contract; ``kind`` ``"corpus"``), as a dict of plain Python values. ``path``:
    a corpus folder, a checkpoint folder, a shipped model's name or a Hub id."""
    if not is_hub_id(path) and Path(path).exists() and not is_checkpoint(path):
        return {"kind": "corpus", **Corpus(path).summary()}
    return {"kind": "checkpoint", **checkpoint_summary(str(path))}
