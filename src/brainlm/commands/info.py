"""``brainlm info PATH``: describe a corpus, or a checkpoint (brainlm's own, shipped or imported
from upstream): what it is, what data it expects and how to prepare data for it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from brainlm.data.atomic import to_json
from brainlm.data.corpus import Corpus, unfinished_build
from brainlm.errors import BrainLMInputError
from brainlm.model.checkpoint import is_checkpoint, load_pretrained, pretraining_spatial_statistics
from brainlm.model.shipped import resolve_checkpoint, shipped_models
from brainlm.report.console import print_summary

__all__ = ["checkpoint_summary", "register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``info`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("info", help="describe a corpus or a checkpoint",
                              description="Describe a corpus (recordings, splits, atlas, contract), or a "
                              "checkpoint folder or shipped model's name (architecture, atlas, the "
                              "preprocessing and input scaling it expects, and how to prepare data for it).")
    p.add_argument("path", metavar="CORPUS_OR_CHECKPOINT")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def checkpoint_summary(checkpoint: str) -> dict:
    """What a checkpoint is and expects, as plain Python values: ``architecture``,
    ``parameters``, ``model`` (window and patch in TRs, parcels, width, depth), ``atlas``,
    ``preprocessing`` (cleaning, TR in seconds, normalization, scaling and where its statistics
    come from, input gain), ``spatial_baseline`` (whether the zero-shot baseline is stored),
    ``upstream`` (an imported checkpoint's import record), ``forecasting`` (a forecaster's
    horizon) and ``prepare`` (the command that prepares data for it)."""
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
        statistics = (f"pooled over {fit['recordings']} pretraining recordings" if c.median is not None
                      and "recordings" in fit else "stored" if c.median is not None
                      else "each recording's own" if c.per_recording
                      else "none stored: a corpus' own, fitted on its training split")
        out["preprocessing"] = {
            **c.cleaning(), "normalization": c.normalization, "scaling": c.scaling,
            "statistics": statistics,
            "input_gain": float(fit.get("input_gain", 1.0)), "input_offset": float(fit.get("input_offset", 0.0))}
    out["spatial_baseline"] = pretraining_spatial_statistics(model) is not None
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


def _print_checkpoint(s: dict) -> None:
    print(f"checkpoint {s['path']}: {s['architecture']}, {s['parameters']:,} parameters")
    print("  model: " + ", ".join(f"{k} {v}" for k, v in s["model"].items()))
    a = s["atlas"]
    print(f"  atlas: {a['name']} ({a['parcels']} parcels)" if a else "  atlas: not recorded")
    p = s.get("preprocessing")
    if p:
        band = (f"band-pass {p['high_pass_hz']}-{p['low_pass_hz']} Hz"
                if p["high_pass_hz"] or p["low_pass_hz"] else "no band-pass")
        print(f"  cleaning: TR {p['target_tr']} s, detrend {p['detrend']}, percent signal change "
              f"{p['percent_signal_change']}, {band}, drop {p['drop_initial_trs']} initial TRs")
        print(f"  input scaling: {p['normalization']} ({p['scaling']}), statistics {p['statistics']}; "
              f"gain {p['input_gain']:g}, offset {p['input_offset']:g}")
    print(f"  zero-shot spatial baseline stored: {'yes' if s['spatial_baseline'] else 'no'}")
    u = s.get("upstream")
    if u:
        print(f"  imported from upstream BrainLM: {u.get('source')} ({u.get('family')}; "
              f"normalization {u.get('normalization', 'voxelwise-robust')}, "
              f"{len(u.get('ignored', {}))} tensor(s) left out)")
    f = s.get("forecasting")
    if f:
        print(f"  forecaster: {f.get('horizon_trs')} TRs from {f.get('context_trs')}")
    print(f"  prepare data for it: {s['prepare']}")


def run(args: argparse.Namespace) -> int:
    """Print the corpus or checkpoint summary (JSON with ``--json``); 0 on success."""
    path = Path(args.path)
    if not path.exists():
        names = [m.name for m in shipped_models()]
        if args.path not in names:
            unfinished = unfinished_build(path)
            if unfinished:
                raise BrainLMInputError(f"no corpus here yet: {unfinished}", args.path)
            raise BrainLMInputError("not found: expected a corpus folder, a checkpoint folder or the name "
                                    f"of a shipped model ({', '.join(names) or 'none shipped'})", args.path)
        path = resolve_checkpoint(args.path)
    if is_checkpoint(path):
        summary = checkpoint_summary(args.path)
        if args.json:
            print(to_json(summary))
        else:
            _print_checkpoint(summary)
        return 0
    summary = Corpus(args.path).summary()
    if args.json:
        print(to_json(summary))
    else:
        print_summary(summary)
    return 0
