"""Does the axial decoder learn as well as the full-attention decoder?

Pretrains the same model twice on the embedded real HCP data (7 subjects, AAL2, split by
subject 5/1/1), once with ``decoder_attention="full"`` and once with ``"axial"``, everything
else equal (tiny encoder, a 2-block decoder so that the axial decoder alternates parcel and
time attention once, same seed, same windows, same masks), and records the held-out subject's
masked MSE and R^2 after every epoch.

    python benchmarks/bench_decoder.py --epochs 40 --seeds 0 1

Results: benchmarks/results/decoder.json. Speed is measured separately by bench_model.py at
424 parcels, where the decoder's attention cost matters; at 94 parcels it is small either way.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "decoder.json"))
    args = ap.parse_args()

    from brainlm.data.atlas import load_atlas
    from brainlm.data.atomic import write_text_atomic
    from brainlm.data.contract import PreprocessingContract
    from brainlm.data.prepare import PrepareSettings, prepare_corpus
    from brainlm.data.samples import load_hcp7_aal2
    from brainlm.train.pretrain import PretrainSettings, pretrain

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = prepare_corpus(load_hcp7_aal2(), Path(tmp) / "corpus",
                                PrepareSettings.of(atlas=load_atlas("aal2"),
                                                   contract=PreprocessingContract(percent_signal_change=True),
                                                   progress=False))
        for seed in args.seeds:
            for attention in ("full", "axial"):
                run = Path(tmp) / f"run-{attention}-{seed}"
                t = time.perf_counter()
                metrics = pretrain(PretrainSettings(
                    corpus=corpus.path, preset="tiny", epochs=args.epochs, seed=seed,
                    model_overrides={"decoder_depth": 2, "decoder_attention": attention}), run, progress=False)
                seconds = time.perf_counter() - t
                log = pd.read_csv(run / "logs" / "csv" / "version_0" / "metrics.csv")
                curve = log["val/masked_mse"].dropna().round(5).tolist()
                best = json.loads((run / "metrics.json").read_text())["best_val_masked_mse"]
                rows.append({"decoder_attention": attention, "seed": seed, "seconds": round(seconds, 1),
                             "best_val_masked_mse": best, "last": metrics, "val_masked_mse_by_epoch": curve})
                print(f"{attention:>5} seed {seed}: best val masked MSE {best:.4f}, last R^2 "
                      f"{metrics['val/r2']:.4f}, baselines zero {metrics['val/baseline_zero_mse']:.4f} "
                      f"mean {metrics['val/baseline_mean_mse']:.4f} ({seconds:.0f} s)", flush=True)
    result = {"epochs": args.epochs, "load_average": os.getloadavg(), "runs": rows}
    write_text_atomic(Path(args.out), json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
