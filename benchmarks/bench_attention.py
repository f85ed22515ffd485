"""Attention benchmark: extraction cost, network identification on real data, and recovery of a
known group effect on synthetic cohorts.

1. Cost: windows per second of plain inference (``embed_windows``, SDPA) against attention
   extraction (CLS rows only; with parcel-by-parcel attention and token embeddings), for the
   pretrained ``tiny`` model and a randomly initialised ``13m`` on AAL2 (94 parcels, 941 tokens),
   and the memory the weights take (one layer at a time versus all layers).
2. Network identification (``identify_networks``): the 7 embedded HCP recordings (AAL2, weak
   Yeo-7 labels on 80 regions), the 2 of them the model never saw in pretraining, and the real
   Schaefer-100 run (exact Yeo-7 labels) through parcel coordinates; plus a kNN k sweep for the
   paper's feature (CLS attention) and the FC-profile baseline.
3. Network identification on simulated cohorts (12 subjects x 1200 TRs, one site): AAL2, whose
   simulated signals follow the DTI wiring and carry little Yeo-7 structure (a control: what
   BrainLM's features know about networks from the coordinates alone), and Schaefer-100, whose
   coupling is built from the HCP group FC (run through coordinates).
4. Group attention (``group_attention``) on AAL2 cohorts from ``simulate_cohort`` (one site, TR
   0.72 s), prepared with the checkpoint's contract: does the patient - control t map single out
   the limbic parcels the group effect alters? Default effect, 40 subjects x 1200 TRs, seeds
   0-2; the doubled effect at 24 x 600 TRs used by the test; and no effect at all (a false
   positive control).

    python benchmarks/bench_attention.py --checkpoint RUN/model [--sections cost,networks,synthetic,groups]

``--sections`` re-runs a subset and replaces those sections in an existing results file.

The checkpoint used for results/attention.json is the tests' shared run: ``tiny``, 40 epochs on
the 5 HCP training subjects (``brainlm pretrain`` defaults, percent signal change, TR 0.72 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import write_json
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import load_hcp7_aal2, load_schaefer100_rest
from brainlm.model import BrainLM, preset
from brainlm.simulate import CohortSpec, LatentEffects, limbic_prefrontal, simulate_cohort
from brainlm.tasks.attention import extract_attention
from brainlm.tasks.inference import embed_windows
from brainlm.tasks.model_input import load_model, model_inputs
from brainlm.tasks.group_attention import group_attention, parcel_set_enrichment
from brainlm.tasks.networks import evaluate_features, identify_networks, network_labels, parcel_features


def windows_per_second(fn, n_windows: int, repeats: int = 3) -> float:
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_windows / best


def bench_cost(model: BrainLM, hcp) -> dict:
    item = next(model_inputs(model, hcp[:1]))
    w, xyz = item.windows, item.xyz
    out = {}
    for name, m in (("tiny (pretrained)", model),
                    ("13m (random init)", BrainLM(preset("13m"), contract=model.contract, atlas=model.atlas))):
        m.eval()
        c = m.config
        tokens = 1 + w.shape[2] * c.n_patches
        per_layer = c.heads * tokens ** 2 * 4
        out[name] = {
            "windows": len(w), "tokens": tokens,
            "inference_windows_per_s": round(windows_per_second(lambda: embed_windows(m, w, xyz, 8), len(w)), 2),
            "cls_attention_windows_per_s": round(windows_per_second(
                lambda: extract_attention(m, w, xyz, batch_size=8, parcel_matrix=False), len(w)), 2),
            "full_extraction_windows_per_s": round(windows_per_second(
                lambda: extract_attention(m, w, xyz, batch_size=8, parcel_matrix=True, token_embeddings=True),
                len(w)), 2),
            "weights_mb_per_window_one_layer": round(per_layer / 2 ** 20, 1),
            "weights_mb_per_window_all_layers": round(c.depth * per_layer / 2 ** 20, 1),
        }
    return out


def summarise_networks(r: dict) -> dict:
    keep = ("knn_accuracy", "knn_balanced_accuracy", "logreg_accuracy", "logreg_balanced_accuracy",
            "kmeans_ari", "kmeans_nmi")
    return {"recordings": r["recordings"], "windows": r["windows"], "labelled_parcels": r["labelled_parcels"],
            "networks": r["networks"], "seconds": r["seconds"],
            "methods": {f"{m['model']}: {m['features']}": {k: round(m[k], 3) for k in keep} for m in r["methods"]},
            "spectral": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in r["spectral"].items()},
            "chance": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r["chance"].items()}}


def k_sweep(model: BrainLM, inputs, ks=(1, 3, 5, 7, 9)) -> dict:
    f = parcel_features(model, inputs)
    y = network_labels(inputs[0].atlas)
    lab = np.array([v is not None for v in y])
    return {name: {str(k): round(evaluate_features(f.features[name][lab], y[lab].astype(str),
                                                   n_neighbors=k)["knn_accuracy"], 3) for k in ks}
            for name in ("cls_attention", "token_embedding", "fc_profile", "raw_timeseries")}


def bench_groups(model: BrainLM, n: int, trs: int, effect: float, seeds) -> list[dict]:
    limbic, _ = limbic_prefrontal(load_atlas("aal2"))
    rows = []
    for seed in seeds:
        recs = simulate_cohort(CohortSpec(n, atlas="aal2", n_trs=trs, sites=1, seed=seed,
                                          effects=LatentEffects(group_on_coupling=effect)))
        t = time.perf_counter()
        r = group_attention(model, recs, "group", n_permutations=2000,
                            parcel_sets={"limbic (altered)": limbic})
        row = {"seed": seed, "subjects": n, "trs": trs, "group_on_coupling": effect,
               "seconds": round(time.perf_counter() - t, 1)}
        for what in ("attention", "fc_strength"):
            tmap = np.array(r["parcels_table"][f"{what}_t"])
            two = parcel_set_enrichment(tmap, limbic, n_permutations=10000)
            row[what] = {"limbic_t_mean_percentile": round(two["mean_percentile"], 3),
                         "limbic_shift_p_two_sided": round(two["p"], 4),
                         "significant_parcels_fdr": r["significant"][what],
                         "limbic_mean_t": round(float(tmap[limbic].mean()), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_synthetic_networks(model: BrainLM) -> dict:
    out = {}
    for atlas in ("aal2", "schaefer100"):
        recs = simulate_cohort(CohortSpec(12, atlas=atlas, n_trs=1200, sites=1, seed=0))
        out[f"simulated_{atlas}_12x1200"] = summarise_networks(
            identify_networks(model, recs, transfer_atlas=atlas != "aal2"))
    return out


SECTIONS = ("cost", "networks", "synthetic", "groups")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder of a model pretrained on HCP AAL2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention.json"))
    ap.add_argument("--quick", action="store_true", help="one seed per group setting")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = ap.parse_args()
    sections = [x for x in args.sections.split(",") if x]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; expected some of {SECTIONS}")
    model = load_model(args.checkpoint)
    hcp = load_hcp7_aal2()
    seeds = (0,) if args.quick else (0, 1, 2)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.is_file() and set(sections) != set(SECTIONS) else {}
    res.update({"checkpoint": str(args.checkpoint), "model": model.config.to_dict()})
    res.setdefault("machine", {})
    res["machine"][",".join(sections)] = {
        "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    t0 = time.perf_counter()

    if "cost" in sections:
        res["cost"] = bench_cost(model, hcp)
        print(json.dumps(res["cost"], indent=1), flush=True)
    if "networks" in sections:
        inputs = list(model_inputs(model, hcp))
        trained_on = _training_subjects(args.checkpoint)
        res["networks"] = {
            "hcp7_aal2": summarise_networks(identify_networks(model, hcp)),
            "hcp_held_out_aal2": summarise_networks(identify_networks(
                model, [r for r in hcp if r.subject not in trained_on])),
            "schaefer100_rest_transfer": summarise_networks(identify_networks(
                model, [load_schaefer100_rest()], transfer_atlas=True, target_tr=0.72)),
            "knn_k_sweep_hcp7": k_sweep(model, inputs),
        }
        print(json.dumps(res["networks"], indent=1), flush=True)
    if "synthetic" in sections:
        res["networks_simulated"] = bench_synthetic_networks(model)
        print(json.dumps(res["networks_simulated"], indent=1), flush=True)
    if "groups" in sections:
        res["group_attention"] = {
            "default_effect_40x1200": bench_groups(model, 40, 1200, 0.15, seeds),
            "doubled_effect_24x600 (test setting)": bench_groups(model, 24, 600, 0.30, seeds),
            "no_effect_40x1200": bench_groups(model, 40, 1200, 0.0, seeds[:1] if args.quick else (0, 1)),
        }
    res.setdefault("seconds", {})
    if not isinstance(res["seconds"], dict):
        res["seconds"] = {",".join(SECTIONS): res["seconds"]}
    res["seconds"][",".join(sections)] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, res, indent=1)
    print(f"written {out} ({res['seconds']} s)")


def _training_subjects(checkpoint) -> set[str]:
    """Subjects of the pretraining corpus' training split. The tests' cached run points to a
    pytest folder that is gone by now, so the corpus is rebuilt the way the test fixture built it
    (splits depend only on the seed and the subjects) and checked against the checkpoint's
    scaling statistics, which come from exactly that training split."""
    cfg = json.loads((Path(checkpoint).parent / "run_config.json").read_text())
    if Path(cfg["corpus"], "corpus.json").is_file():
        corpus = Corpus(cfg["corpus"])
    else:
        corpus = prepare_corpus(load_hcp7_aal2(), Path(tempfile.mkdtemp()) / "corpus",
                                PrepareSettings.of(atlas=load_atlas("aal2"),
                                                   contract=PreprocessingContract(percent_signal_change=True),
                                                   progress=False))
    if not np.allclose(corpus.contract.median, load_model(checkpoint).contract.median):
        raise SystemExit("cannot tell which HCP subjects the checkpoint was pretrained on")
    m = corpus.manifest
    return set(m.loc[m["split"] == "train", "subject"])


if __name__ == "__main__":
    main()
