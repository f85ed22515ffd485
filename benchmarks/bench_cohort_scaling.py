"""Which part of the recipe for fresh cohorts costs the demo's cohort prediction?

With the recipe for fresh cohorts the demo predicts age and group on its synthetic cohort worse
than the FC reference, where the pooled recipe before it did not. The recipe changes two things
at once: per-recording scaling, and the hybrid with prior dropout and augmentations. This
separates them: three checkpoints pretrained on the demo's HCP split (the quality benchmark's
fold 0: the same training subjects, test subject 102311, seed 0, 50 epochs; ``bench_quality.py``
runs, trained here when missing), each scored with the demo's prediction step
(``PredictionSettings.quick()``: grouped nested CV, 3 folds) on the demo's synthetic cohort
(150 subjects, seed 0) prepared with that checkpoint's scaling.

* ``small-50``: pooled scaling, no hybrid (the demo before issue 26);
* ``small-50, per-recording scaling``: per-recording scaling only;
* the recipe for fresh cohorts: per-recording scaling, the hybrid, prior dropout, augmentations.

    python benchmarks/bench_cohort_scaling.py

Results: ``benchmarks/results/cohort_scaling.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import trained_run  # noqa: E402

from brainlm.demo import WINDOW_TRS, DemoSettings  # noqa: E402
from brainlm.data.atlas import load_atlas  # noqa: E402
from brainlm.data.atomic import write_json  # noqa: E402
from brainlm.data.contract import PreprocessingContract  # noqa: E402
from brainlm.data.prepare import PrepareSettings, prepare_corpus  # noqa: E402
from brainlm.data.samples import HCP7_TR  # noqa: E402
from brainlm.simulate import CohortSpec, simulate_cohort  # noqa: E402
from brainlm.tasks.prediction.evaluate import (PredictionSettings, best_brainlm_method,  # noqa: E402
                                               evaluate_prediction)

RECIPES = ("small-50", "small-50, per-recording scaling",
           "small-50 hybrid, per-recording, prior dropout 0.5, augmented")
TARGETS = ("age", "group")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=os.environ.get("BRAINLM_BENCH_WORK", "/tmp/brainlm-bench-quality"),
                    help="bench_quality.py's work folder (its fold-0 runs are reused)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cohort_scaling.json"))
    args = ap.parse_args()
    work, t0 = Path(args.work), time.perf_counter()
    demo = DemoSettings()
    recordings = simulate_cohort(CohortSpec(demo.cohort_subjects, atlas="aal2", n_trs=demo.cohort_trs, seed=demo.seed),
                                 jobs=2)
    cohorts = {}
    results = {}
    for recipe in RECIPES:
        run, corpus, _ = trained_run(recipe, 0, work)
        scaling = corpus.contract.scaling
        if scaling not in cohorts:  # the demo's cohort, cleaned as the demo does, with this scaling
            cohorts[scaling] = prepare_corpus(
                recordings, work / f"cohort-demo-{scaling}",
                PrepareSettings.of(atlas=load_atlas("aal2"), min_trs=WINDOW_TRS,
                                   contract=PreprocessingContract(target_tr=HCP7_TR, percent_signal_change=True, scaling=scaling),
                                   jobs=2, split_seed=demo.seed, overwrite=True))
        results[recipe] = {"scaling": scaling}
        for target in TARGETS:
            res = evaluate_prediction(run / "model", cohorts[scaling].path, target, settings=PredictionSettings.quick())
            metric, ref, best = res["primary_metric"], res["reference"], best_brainlm_method(res)
            results[recipe][target] = {
                "metric": metric, "best_brainlm_method": best,
                "best_brainlm": round(res["summary"][best][metric]["mean"], 4),
                "fc_reference": round(res["summary"][ref][metric]["mean"], 4),
                "verdict": res["comparison"][best]["verdict"]}
            print(f"{recipe} / {target}: {results[recipe][target]}", flush=True)
    write_json(Path(args.out), {
        "setting": "demo's HCP split (bench_quality fold 0), demo's synthetic cohort (150 subjects, seed 0), "
                   "PredictionSettings.quick(); each cohort prepared with its checkpoint's scaling",
        "machine": {"cpus": os.cpu_count(), "seconds": round(time.perf_counter() - t0, 1)},
        "results": results})


if __name__ == "__main__":
    main()
