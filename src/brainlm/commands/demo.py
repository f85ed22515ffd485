"""``brainlm demo``: the main job end to end on the data shipped with the package.

1. Corpora from real fMRI: 7 HCP subjects on AAL2 at TR 0.72 s, and one Schaefer-100 run at
   TR 2 s resampled to 0.72 s. A miniature fMRIPrep folder of 4-D NIfTI scans, parcellated with
   an atlas image and denoised with fMRIPrep confounds in one ``prepare`` call. A synthetic cohort on AAL2 with known phenotype effects (age,
   group, a null score), simulated at three sites' TRs and resampled to 0.72 s. Every corpus is
   split by subject; each recording is robust-scaled by its own statistics.
2. The recipe for fresh cohorts (``hcp-fresh``'s, docs/quality.md): the ``small`` model (an
   axial decoder, mask ratios drawn per batch from 0.2-0.9, 50 epochs) as a hybrid whose
   decoder corrects the linear estimate of the pretraining covariance (dropped for half the
   windows, so the encoder still learns), with per-recording scaling and site augmentations,
   is pretrained on the HCP training subjects and validated on a held-out subject
   against trivial baselines. Embeddings from the exported checkpoint are checked to be
   deterministic.
3. Masked reconstruction on the HCP test subject, against interpolation and spatial baselines
   on the same masks.
4. Phenotype prediction on the synthetic cohort, with grouped nested cross-validation:
   zero-shot and fine-tuned BrainLM against FC + ridge and the other baselines.
5. Forecasting of the next 20 TRs from 180 on HCP: fine-tuned BrainLM against persistence,
   AR, VAR, LSTM, Neural ODE and the same architecture trained from scratch.
6. Functional-network identification from attention (HCP on AAL2 and the Schaefer-100 run),
   against FC and raw-signal baselines.
7. Group attention maps on the synthetic cohort (patients vs controls), with a permutation test.
8. The latent space of the synthetic cohort: a PCA map of the recordings' embeddings coloured by
   site, with the site's separability next to that of FC features.
9. ``DIR/report.html``, the self-contained report (``brainlm report DIR`` draws it again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from brainlm import __version__
from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import write_json, write_npz_atomic
from brainlm.data.contract import PreprocessingContract, ReferenceContract
from brainlm.data.example_scans import write_fmriprep_example
from brainlm.data.prepare import prepare_corpus
from brainlm.data.samples import HCP7_TR, load_hcp7_aal2, load_schaefer100_rest
from brainlm.model.masking import MaskSpec
from brainlm.report.attention_figures import draw_group_folder, draw_network_folder
from brainlm.report.console import make_console, print_summary
from brainlm.report.forecasting_figures import draw_forecast_figure
from brainlm.report.latent_figures import draw_latent_figure, score_text
from brainlm.report.html import render_report
from brainlm.report.sections import software_versions
from brainlm.simulate.cohort import limbic_prefrontal, simulate_cohort
from brainlm.tasks.embed import embed
from brainlm.tasks.forecasting.baselines import BaselineSettings, NeuralTraining
from brainlm.tasks.forecasting.comparison import compare
from brainlm.tasks.forecasting.finetune import FinetuneSettings
from brainlm.tasks.group_attention import group_attention
from brainlm.tasks.latent import latent_space_of, write_latent
from brainlm.tasks.model_input import (iter_model_input, load_model, model_scaler, model_windows, parcel_xyz,
                                       predict_masked, token_mask_to_values)
from brainlm.tasks.networks import identify_networks
from brainlm.tasks.prediction.evaluate import (PredictionSettings, best_brainlm_method, evaluate_prediction,
                                               headline, prediction_markdown)
from brainlm.tasks.reconstruction import evaluate_reconstruction, reconstruction_markdown
from brainlm.train.pretrain import RECIPES, PretrainSettings, pretrain

__all__ = ["DemoSettings", "register", "run", "run_demo"]

WINDOW_TRS = 200
#: The model feature the demo's network step leads with (CLS attention, the paper's, is always
#: shown beside it): the one that reads co-fluctuation. Over the held-out folds of
#: benchmarks/results/quality its time-shifted control falls to near chance, while the token
#: embeddings and parcel attention score higher on AAL2 but as well on time-shifted input
#: (they read location).
NETWORK_FEATURE = "latent_connectivity"


@dataclass(frozen=True)
class DemoSettings:
    """How much of each step the demo runs.

    The default took 11.8 min on an idle 2-core CPU machine (pretraining the hybrid 6.8 min,
    prediction 2.7 min; ``benchmarks/bench_demo.py``); the budget is 15 minutes on 2 CPU cores. The cohort
    is large enough for the prediction step to say something: with 40 simulated subjects no
    BrainLM method differed significantly from FC + ridge on age; with 150, full fine-tuning
    reaches MSE 0.22-0.28 against 0.64, the direction the 500-subject benchmark found (p 0.047
    with the tiny model; not significant with the small one over the quick protocol's 3 folds).

    Parameters
    ----------
    preset : str
        The model pretrained on the HCP training subjects, with its default masking.
    epochs : int
        Its pretraining epochs.
    recipe : str
        The pretraining recipe (:data:`brainlm.train.pretrain.RECIPES`): ``fresh-cohort`` (the
        labelled hybrid with prior dropout and site augmentations; every corpus scaled per
        recording, so raw, percent-change, demeaned and z-scored files meet the model as the
        same numbers), or ``custom`` (the preset alone, pooled scaling: the demo before issue 26).
    cohort_subjects, cohort_trs : int
        Synthetic cohort size and length (TRs at each site's own TR, before resampling).
    prediction_targets : tuple of str
        Phenotypes predicted on the cohort (``age`` regression, ``group`` classification...).
    prediction_quick : bool
        ``PredictionSettings.quick()`` (3 folds, 1 seed) instead of the full protocol.
    forecast_epochs : int
        Fine-tuning epochs for forecasting (BrainLM, its scratch control and the neural baselines).
    permutations : int
        Permutations of the group-attention test.
    seed : int
        Seed of the cohort, the splits, the crops, the masks and the folds.
    """

    preset: str = "small"
    epochs: int = 50
    recipe: str = "fresh-cohort"
    cohort_subjects: int = 150
    cohort_trs: int = 500
    prediction_targets: tuple[str, ...] = ("age", "group")
    prediction_quick: bool = True
    forecast_epochs: int = 5
    permutations: int = 2000
    seed: int = 0

    @property
    def scaling(self) -> str:
        """The robust scaling of every corpus: the recipe's, else pooled."""
        return RECIPES[self.recipe].corpus_scaling or "pooled"

    def contract(self) -> PreprocessingContract:
        """The HCP corpus' cleaning: percent signal change at TR 0.72 s, :attr:`scaling`."""
        return PreprocessingContract(target_tr=HCP7_TR, percent_signal_change=True, scaling=self.scaling)

    def pretrain_settings(self, corpus: str | Path, **overrides) -> PretrainSettings:
        """The demo's pretraining of ``preset`` with ``recipe`` on ``corpus`` (``overrides``: other
        fields, such as the accelerator)."""
        return PretrainSettings.recipe(self.recipe, corpus, preset=self.preset, epochs=self.epochs,
                                       seed=self.seed, **overrides)

    @classmethod
    def quick(cls) -> "DemoSettings":
        """A smoke-test run (a few minutes): every step, much less training."""
        return cls(epochs=2, cohort_subjects=24, cohort_trs=420, prediction_targets=("group",),
                   forecast_epochs=1, permutations=200)


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``brainlm`` sub-parsers."""
    p = subparsers.add_parser("demo", help="the main job end to end on the embedded real data")
    p.add_argument("--out", default="demo-out", help="output folder (default: ./demo-out)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--epochs", type=int, help="pretraining epochs of the small model (default 50; --quick: 2)")
    p.add_argument("--quick", action="store_true",
                   help="every step with much less training (a smoke test of a few minutes)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the demo with the parsed ``demo`` arguments; 0 on success."""
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    run_demo(Path(args.out), jobs=args.jobs, settings=settings)
    return 0


class _Steps:
    """Times each step and prints a rule before it."""

    def __init__(self, console):
        self.con, self.seconds, self._t = console, {}, None
        self._name = None

    def start(self, name: str, title: str) -> None:
        self.stop()
        self.con.rule(f"[bold]{len(self.seconds) + 1}. {title}")
        self._name, self._t = name, time.perf_counter()

    def stop(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(time.perf_counter() - self._t, 1)
            self._name = None


def run_demo(out: Path, jobs: int = 2, settings: DemoSettings = DemoSettings()) -> dict:
    """Run the demo into ``out``; returns (and writes ``out/summary.json``) the key numbers and
    ``out/report.html``."""
    con = make_console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results"
    if results.exists():
        shutil.rmtree(results)  # every result of this run comes from this run
    results.mkdir()
    t0 = time.perf_counter()
    steps = _Steps(con)
    s = settings
    summary: dict = {"brainlm_version": __version__, "command": _command(settings),
                     "settings": {"demo": asdict(s)}, "seed": s.seed, "device": _device(),
                     "key_numbers": [], "data_notes": {}}

    # -- 1. data ----------------------------------------------------------------------------------
    steps.start("data", "Corpora: HCP (7 subjects, AAL2), Schaefer-100 rest run, synthetic cohort")
    contract = s.contract()
    hcp = prepare_corpus(load_hcp7_aal2(), out / "corpus-hcp7-aal2", atlas=load_atlas("aal2"),
                         contract=contract, min_trs=WINDOW_TRS, jobs=jobs, overwrite=True, progress=True)
    print_summary(hcp.summary())
    rest = load_schaefer100_rest()
    contract_rest = PreprocessingContract(
        target_tr=HCP7_TR, percent_signal_change=True, high_pass_hz=0.01, scaling=s.scaling,
        confounds=[c for c in rest.confounds.columns if c != "framewise_displacement"])
    s100 = prepare_corpus([rest], out / "corpus-schaefer100", atlas=load_atlas("schaefer100"),
                          contract=contract_rest, min_trs=WINDOW_TRS, jobs=1, overwrite=True)
    print_summary(s100.summary())
    cohort = _cohort(out, s, contract, jobs)
    print_summary(cohort.summary())
    scans = _scans(out, jobs)
    print_summary(scans.summary())
    summary["corpora"] = {"hcp7_aal2": hcp.summary(), "schaefer100": s100.summary(),
                          "synthetic_cohort": cohort.summary(), "fmriprep_scans": scans.summary()}
    summary["data_notes"] = {
        "hcp7_aal2": "7 HCP young adults, resting state, AAL2 (94 regions), TR 0.72 s (embedded, real).",
        "schaefer100": "one real resting-state run on Schaefer-100 (Yeo-7 labels), TR 2 s, nuisance "
                       "confounds regressed and resampled to 0.72 s (embedded, real).",
        "synthetic_cohort": f"{s.cohort_subjects} simulated subjects on AAL2 (coupled oscillators on "
                            "the HCP connectome -> hemodynamics -> BOLD) at three sites with different TRs; "
                            "age, group (patients: altered limbic/frontal coupling) and a null score "
                            "with known effects (docs/simulation.md).",
        "fmriprep_scans": "from scans, as a new user would: a miniature fMRIPrep folder (4-D NIfTI at "
                          "6 mm painted from 4 HCP subjects, sidecars, confounds tables with motion "
                          "spikes, participants.tsv) parcellated with a labels atlas image by one "
                          "prepare call, with the 'simple' fMRIPrep confound strategy.",
    }

    # -- 2. pretraining -----------------------------------------------------------------------------
    steps.start("pretraining", f"Pretrain the {s.preset} model ({s.recipe} recipe) on the HCP training subjects "
                f"({s.epochs} epochs)")
    checkpoint = _pretrain(out, hcp, s, summary)

    # -- 3. reconstruction --------------------------------------------------------------------------
    steps.start("reconstruction", "Masked reconstruction on the HCP test subject vs baselines")
    _reconstruction(checkpoint, hcp, results, s, summary, con)

    # -- 4. prediction ------------------------------------------------------------------------------
    steps.start("prediction", f"Predict {', '.join(s.prediction_targets)} on the synthetic cohort "
                "(grouped nested CV) vs FC + ridge")
    _prediction(checkpoint, cohort, results, s, summary, con)

    # -- 5. forecasting -----------------------------------------------------------------------------
    steps.start("forecasting", "Forecast 20 TRs from 180 on HCP: fine-tuned BrainLM vs persistence, AR, "
                "VAR, LSTM, Neural ODE, scratch")
    _forecasting(checkpoint, hcp, results, s, summary, con)

    # -- 6. networks --------------------------------------------------------------------------------
    steps.start("networks", "Functional networks from attention (HCP on AAL2; Schaefer-100 run) vs baselines")
    _networks(checkpoint, hcp, rest, results, s, summary, con)

    # -- 7. group attention -------------------------------------------------------------------------
    steps.start("attention", "Group attention maps on the synthetic cohort (patients vs controls)")
    _attention(checkpoint, cohort, results, s, summary, con)

    # -- 8. latent space ----------------------------------------------------------------------------
    steps.start("latent", "The latent space of the synthetic cohort, coloured by site, vs FC")
    _latent(checkpoint, cohort, results, s, summary, con)

    steps.stop()
    summary["step_seconds"] = steps.seconds
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary["versions"] = software_versions()
    write_json(out / "summary.json", summary)

    con.rule("[bold]Report")
    report = render_report(out)
    con.print(f"report: [bold]{report.resolve()}[/bold]")
    for k in summary["key_numbers"]:
        con.print(f"  {k['label']}: [bold]{k['value']}[/bold]")
    con.print(f"({summary['seconds'] / 60:.1f} min; summary: {(out / 'summary.json').resolve()})")
    return summary


def _command(s: DemoSettings) -> str:
    """The command line that reproduces a run with settings ``s``."""
    for flag, base in (("", DemoSettings()), (" --quick", DemoSettings.quick())):
        if replace(s, epochs=base.epochs) == base:
            return "brainlm demo" + flag + ("" if s.epochs == base.epochs else f" --epochs {s.epochs}")
    return f"brainlm.commands.demo.run_demo(settings={s!r})"  # settings the command line cannot express


def _training_device() -> str:
    """Where pretraining and fine-tuning run: Lightning takes the GPU when there is one."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{torch.get_num_threads()} CPU threads"


def _device() -> str:
    """Where the demo ran; the evaluation steps use the CPU even when training had a GPU."""
    if torch.cuda.is_available():
        return f"{_training_device()} for training, {torch.get_num_threads()} CPU threads otherwise"
    return _training_device()


def _cohort(out: Path, s: DemoSettings, contract: PreprocessingContract, jobs: int):
    recordings = simulate_cohort(s.cohort_subjects, atlas="aal2", n_trs=s.cohort_trs, seed=s.seed, jobs=jobs)
    return prepare_corpus(recordings, out / "corpus-synthetic-aal2", atlas=load_atlas("aal2"),
                          contract=contract, min_trs=WINDOW_TRS, jobs=jobs, split_seed=s.seed,
                          overwrite=True, progress=True)


def _scans(out: Path, jobs: int):
    ex = write_fmriprep_example(out / "fmriprep-example", subjects=4, n_trs=240, overwrite=True)
    return prepare_corpus([ex.derivatives], out / "corpus-fmriprep-example", atlas_image=ex.atlas_image,
                          atlas_labels=ex.atlas_labels, space=ex.space, min_trs=WINDOW_TRS, jobs=jobs,
                          contract=PreprocessingContract(percent_signal_change=True), overwrite=True)


def _pretrain(out: Path, hcp, s: DemoSettings, summary: dict) -> Path:
    run = out / f"run-{s.preset}"
    if run.exists():
        shutil.rmtree(run)
    t = time.perf_counter()
    settings = s.pretrain_settings(hcp.path)
    metrics = pretrain(settings, run, progress=True)
    seconds = time.perf_counter() - t
    model = load_model(run / "model")
    first = embed(run / "model", [hcp.path], out / "embeddings.parquet")
    second = embed(run / "model", [hcp.path])
    summary["pretraining"] = {
        "run": run.name, "preset": s.preset, "epochs": s.epochs, "seconds": round(seconds, 1),
        "device": _training_device(),
        # What --precision auto resolved to on this machine (bf16-mixed only where it pays).
        "precision": json.loads((run / "metrics.json").read_text())["precision"],
        "window_trs": model.config.window_trs, "masking": settings.mask_spec().to_dict(),
        "parameters": model.count_parameters(), "validation": metrics,
        "embeddings_deterministic": bool(first.equals(second)), "embedded_recordings": len(first)}
    summary["settings"]["pretraining"] = asdict(settings)
    best = min(metrics["val/baseline_zero_mse"], metrics["val/baseline_mean_mse"])
    summary["key_numbers"].append({
        "value": f"{metrics['val/masked_mse']:.3f} vs {best:.3f}",
        "label": "pretraining: validation masked MSE (held-out subject) vs the best trivial baseline"})
    return run / "model"


def _reconstruction(checkpoint: Path, hcp, results: Path, s: DemoSettings, summary: dict, con) -> None:
    res = evaluate_reconstruction(checkpoint, hcp.path, split="test", seed=s.seed,
                                  out=results / "reconstruction")
    con.print(reconstruction_markdown(res))
    at = next(e for e in res["results"] if e["mask_ratio"] == 0.75)["methods"]
    best = max((m for m in at if m != "brainlm"), key=lambda m: at[m]["r2"])
    summary["reconstruction"] = {"r2_at_0.75": at["brainlm"]["r2"], "best_baseline": best,
                                 "best_baseline_r2_at_0.75": at[best]["r2"]}
    summary["key_numbers"].append({
        "value": f"R² {at['brainlm']['r2']:.3f} vs {at[best]['r2']:.3f}",
        "label": f"reconstruction of 75% masked tokens (HCP test subject) vs the best baseline ({best})"})
    # One test window for the report's carpet plots: the first tile of the first test recording,
    # 75% of its tokens masked by a generator seeded with the demo's seed.
    model = load_model(checkpoint)
    row = int(hcp.split_indices("test")[0])
    data = next(iter_model_input(hcp, [row], model_scaler(model, hcp)))
    wins, _ = model_windows(model, data, source=hcp.path)
    mask = model.sample_mask(MaskSpec("random", 0.75), len(wins), hcp.atlas.n_parcels, _generator(s.seed))
    pred = predict_masked(model, wins, parcel_xyz(hcp.atlas), mask)
    subject = hcp.manifest.iloc[row]["subject"]
    write_npz_atomic(
        results / "reconstruction_example.npz", target=wins[0].numpy(), prediction=pred[0].numpy(),
        mask=token_mask_to_values(model, mask)[0],
        parcel_names=np.array(hcp.atlas.parcel_names), tr_s=np.float64(hcp.contract.target_tr),
        title=np.array(f"HCP test subject {subject}, first window, 75% of tokens masked"))
    # Zero-shot on data the model never saw in any form: the Schaefer-100 run (another atlas,
    # scanner and TR), prepared like the checkpoint's pretraining data, every recording in test.
    # The stored covariance is on AAL2 and the cohort has no training subject, so the spatial
    # comparators are the distance model of the pretraining covariance (evaluated at the
    # Schaefer-100 coordinates) and the in-recording fit (the run's other windows); the model is
    # compared with the best of every baseline scored, these included.
    like = prepare_corpus([load_schaefer100_rest()], results.parent / "corpus-schaefer100-like",
                          atlas=load_atlas("schaefer100"),
                          like=ReferenceContract(model.contract, model.atlas, str(checkpoint)),
                          min_trs=WINDOW_TRS, jobs=1, overwrite=True)
    zero = evaluate_reconstruction(checkpoint, like, split="test", seed=s.seed, transfer_atlas=True,
                                   out=results / "reconstruction-schaefer100")
    at = next(e for e in zero["results"] if e["mask_ratio"] == 0.75)["methods"]
    best = max((m for m in at if m != "brainlm"), key=lambda m: at[m]["r2"])
    spatial = {m: at[m]["r2"] for m in ("spatial_distance", "spatial_in_recording") if m in at}
    summary["reconstruction"]["zero_shot_schaefer100"] = {
        "r2_at_0.75": at["brainlm"]["r2"], "best_baseline": best, "best_baseline_r2_at_0.75": at[best]["r2"],
        "spatial_r2_at_0.75": spatial,
        "spatial_left_out": {m: v["reason"] for m, v in zero["spatial_baselines"].items() if not v["available"]}}
    verdict = "beats" if at["brainlm"]["r2"] > at[best]["r2"] else "does not beat"
    con.print(f"zero-shot on the Schaefer-100 run (unseen atlas): R² at 0.75 {at['brainlm']['r2']:.3f} {verdict} "
              f"the best baseline, {zero['method_labels'][best]} {at[best]['r2']:.3f}"
              + "".join(f"; {zero['method_labels'][m]} {v:.3f}" for m, v in spatial.items() if m != best))


def _prediction(checkpoint: Path, cohort, results: Path, s: DemoSettings, summary: dict, con) -> None:
    settings = PredictionSettings.quick() if s.prediction_quick else PredictionSettings()
    summary["settings"]["prediction"] = asdict(settings)
    for target in s.prediction_targets:
        res = evaluate_prediction(checkpoint, cohort.path, target, settings=settings,
                                  out=results / f"prediction-{target}", progress="folds")
        con.print(prediction_markdown(res))
        ref = res["reference"]
        metric = res["primary_metric"]
        best = best_brainlm_method(res)
        summary["key_numbers"].append({
            "value": f"{metric} {res['summary'][best][metric]['mean']:.3f} vs {res['summary'][ref][metric]['mean']:.3f}",
            "label": f"{target} on the synthetic cohort: best BrainLM method ({best}) vs FC reference "
                     f"({res['comparison'][best]['verdict']})"})
        summary.setdefault("prediction", {})[target] = headline(res)


def _forecasting(checkpoint: Path, hcp, results: Path, s: DemoSettings, summary: dict, con) -> None:
    fine = FinetuneSettings(epochs=s.forecast_epochs, crops_per_recording=16, seed=s.seed)
    base = BaselineSettings(neural=NeuralTraining(epochs=s.forecast_epochs, crops_per_recording=16))
    summary["settings"]["forecasting"] = {"finetune": asdict(fine), "baselines": asdict(base)}
    res = compare(checkpoint, hcp.path, results / "forecasting", finetune_settings=fine,
                  baseline_settings=base, overwrite=True)
    draw_forecast_figure(results / "forecasting")
    con.print(res["summary"])
    methods = res["methods"]
    ours = [n for n, m in methods.items() if m["kind"] == "brainlm"]
    baselines = [n for n, m in methods.items() if m["kind"] == "baseline"]
    best_b = min(baselines, key=lambda n: methods[n]["mean"]["mse"])
    best_o = min(ours, key=lambda n: methods[n]["mean"]["mse"])
    summary["forecasting"] = res["summary"]
    summary["key_numbers"].append({
        "value": f"MSE {methods[best_o]['mean']['mse']:.3f} vs {methods[best_b]['mean']['mse']:.3f}",
        "label": f"forecasting 20 TRs (HCP test subject): {methods[best_o]['label']} vs the best baseline "
                 f"({methods[best_b]['label']}), mean over steps"})


def _networks(checkpoint: Path, hcp, rest, results: Path, s: DemoSettings, summary: dict, con) -> None:
    # Only data the model was not pretrained on: the HCP test subject's recording (not the
    # training subjects'), and the Schaefer-100 run, read raw and cleaned with the checkpoint's
    # own contract (the demo's Schaefer corpus was cleaned with confounds, which the model
    # would refuse).
    held_out = set(hcp.manifest.iloc[hcp.split_indices("test")]["subject"].astype(str))
    test_recordings = [r for r in load_hcp7_aal2() if r.subject in held_out]
    for name, data, kwargs in (("hcp7_aal2", test_recordings, {}),
                               ("schaefer100", [rest], {"transfer_atlas": True, "target_tr": HCP7_TR,
                                                        "untrained_control": False})):
        r = identify_networks(checkpoint, data, results / f"networks-{name}", seed=s.seed, **kwargs)
        draw_network_folder(results / f"networks-{name}")
        rows = {m["features"]: m["knn_accuracy"] for m in r["methods"] if m["model"] == "BrainLM"}
        # Fixed in advance, not picked on this subject (the best of four on one subject is optimistic).
        feature = NETWORK_FEATURE
        shifted = next(m["knn_accuracy"] for m in r["methods"]
                       if m["model"] == "BrainLM, time-shifted input" and m["features"] == feature)
        fc = next(m for m in r["methods"] if m["features"] == "fc_profile")["knn_accuracy"]
        con.print(f"{name}: kNN accuracy from {feature} {rows[feature]:.1%} (time-shifted input {shifted:.1%}), "
                  f"CLS attention {rows['cls_attention']:.1%}, vs FC profile {fc:.1%} "
                  f"(majority {r['chance']['majority_accuracy']:.1%})")
        summary.setdefault("networks", {})[name] = {
            "cls_attention_knn_accuracy": rows["cls_attention"], "feature": feature,
            "feature_knn_accuracy": rows[feature], "feature_time_shifted_knn_accuracy": shifted,
            "fc_profile_knn_accuracy": fc, "majority_accuracy": r["chance"]["majority_accuracy"]}
        if name == "hcp7_aal2":
            summary["key_numbers"].append({
                "value": f"{rows[feature]:.1%} vs {fc:.1%}",
                "label": f"Yeo-7 network of each AAL2 parcel of the held-out subject (kNN, leave one parcel "
                         f"out) from {feature} vs FC profiles (CLS attention, the paper's feature: "
                         f"{rows['cls_attention']:.1%}; time-shifted control {shifted:.1%}; chance "
                         f"{r['chance']['majority_accuracy']:.1%})"})


def _attention(checkpoint: Path, cohort, results: Path, s: DemoSettings, summary: dict, con) -> None:
    # The simulation alters limbic coupling in patients: the ground truth the map should find.
    limbic, prefrontal = limbic_prefrontal(cohort.atlas)
    r = group_attention(checkpoint, cohort.path, "group", results / "attention",
                        n_permutations=s.permutations, seed=s.seed,
                        parcel_sets={"limbic (altered in the simulation)": limbic,
                                     "prefrontal (altered in the simulation)": prefrontal})
    draw_group_folder(results / "attention")
    sets = r["parcel_sets"].get("attention", [])
    con.print(f"{r['significant']['attention']} parcel(s) with q < {r['settings']['alpha']}; altered "
              "network: " + "; ".join(f"{n['set']}: mean |t| percentile {n['t_mean_percentile']:.2f}, "
                                      f"p {n['shift_p']:.3g}" for n in sets))
    summary["attention"] = {"significant_parcels": r["significant"]["attention"],
                            "altered_sets": [{k: n[k] for k in ("set", "t_mean_percentile", "shift_p")} for n in sets]}


def _latent(checkpoint: Path, cohort, results: Path, s: DemoSettings, summary: dict, con) -> None:
    # Sites differ in TR (resampled away), noise and scanner drift: the effect users harmonize.
    _, r = latent_space_of(checkpoint, [cohort.path], "site", seed=s.seed)
    write_latent(r, results / "latent-site.json")
    draw_latent_figure(r, results / "latent-site.png")
    con.print(f"site separability: BrainLM {score_text(r, 'brainlm')}; FC {score_text(r, 'fc')}")
    summary["latent"] = {f: r["recordings"][f]["separability"] for f in ("brainlm", "fc")} | {
        "column": "site", "score": r["score"]["name"]}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
