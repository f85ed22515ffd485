"""``brainlm info PATH``: describe a corpus, or a checkpoint (brainlm's own, shipped or imported
from upstream): what it is, what data it expects and how to prepare data for it."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainlm.data.atomic import to_json
from brainlm.data.corpus import unfinished_build
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.hub import is_hub_id
from brainlm.checkpoints.shipped import shipped_models
from brainlm.report.console import print_summary
from brainlm.tasks.api import checkpoint_summary, info

__all__ = ["checkpoint_summary", "register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``info`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("info", help="describe a corpus or a checkpoint",
                              description="Describe a corpus (recordings, splits, atlas, contract), or a "
                              "checkpoint folder, shipped model's name or Hub id hf://ORG/REPO[/SUBFOLDER] (architecture, atlas, the "
                              "preprocessing and input scaling it expects, and how to prepare data for it).")
    p.add_argument("path", metavar="CORPUS_OR_CHECKPOINT")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


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
    h = s.get("hybrid")
    if h:
        print(f"  hybrid: the decoder corrects the spatial estimate of its {h['spatial_prior_parcels']} pretraining "
              f"parcels (prior dropout {h['prior_dropout']:g}: "
              + ("runs on other atlases without it)" if h["prior_dropout"] else "tied to its atlas)"))
    u = s.get("upstream")
    if u:
        print(f"  imported from upstream BrainLM: {u.get('source')} ({u.get('family')}; "
              f"normalization {u.get('normalization', 'voxelwise-robust')}, "
              f"{len(u.get('ignored', {}))} tensor(s) left out)")
        if u.get("hub"):
            print(f"  from the Hub: {u['hub']['id']} at commit {u['hub']['commit'][:12]}")
        if u.get("licence"):
            print(f"  licence of the weights: {u['licence']}")
    f = s.get("forecasting")
    if f:
        print(f"  forecaster: {f.get('horizon_trs')} TRs from {f.get('context_trs')}")
    print(f"  prepare data for it: {s['prepare']}")


def run(args: argparse.Namespace) -> int:
    """Print the corpus or checkpoint summary (JSON with ``--json``); 0 on success."""
    path = Path(args.path)
    if not path.exists() and not is_hub_id(args.path):
        names = [m.name for m in shipped_models()]
        if args.path not in names:
            unfinished = unfinished_build(path)
            if unfinished:
                raise BrainLMInputError(f"no corpus here yet: {unfinished}", args.path)
            raise BrainLMInputError("not found: expected a corpus folder, a checkpoint folder, the name "
                                    f"of a shipped model ({', '.join(names) or 'none shipped'}) or a Hub id "
                                    "(hf://ORG/REPO[/SUBFOLDER])", args.path)
    summary = info(args.path)
    if args.json:
        print(to_json(summary))
        return 0
    kind = summary.pop("kind")
    if kind == "checkpoint":
        _print_checkpoint(summary)
    else:
        print_summary(summary)
    return 0
