"""The demo's steps, declared in :data:`STEPS`: each runs one task on the run's data and returns
its part of ``summary.json`` (:class:`SummaryPart`). Steps share what earlier steps made (the
corpora, the checkpoint) through :class:`DemoRun`; they write their results where
:class:`~brainlm.report.layout.RunLayout` says, which is where the report reads them."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import write_npz_atomic
from brainlm.data.contract import PreprocessingContract, ReferenceContract
from brainlm.data.corpus import Corpus
from brainlm.data.example_scans import write_fmriprep_example
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.recording import Recording
from brainlm.data.samples import HCP7_TR, load_hcp7_aal2, load_schaefer100_rest
from brainlm.demo.settings import NETWORK_FEATURE, WINDOW_TRS, DemoSettings
from brainlm.model.masking import MaskSpec
from brainlm.report.attention_figures import draw_group_folder, draw_network_folder
from brainlm.report.console import print_summary
from brainlm.report.forecasting_figures import draw_forecast_figure
from brainlm.report.latent_figures import draw_latent_figure, score_text
from brainlm.report.layout import RunLayout
from brainlm.simulate import CohortSpec, limbic_prefrontal, simulate_cohort
from brainlm.tasks.embed import embed
from brainlm.tasks.forecasting.baselines import BaselineSettings, NeuralTraining
from brainlm.tasks.forecasting.comparison import compare
from brainlm.tasks.forecasting.finetune import FinetuneSettings
from brainlm.tasks.group_attention import GroupAttentionSettings, group_attention
from brainlm.tasks.inference import predict_masked
from brainlm.tasks.latent import latent_space_of, write_latent
from brainlm.tasks.model_input import iter_model_input, load_model, model_scaler, model_windows, parcel_xyz
from brainlm.tasks.networks import NetworksResult, NetworksSettings, identify_networks
from brainlm.tasks.prediction.evaluate import (PredictionSettings, best_brainlm_method, evaluate_prediction,
                                               headline, prediction_markdown)
from brainlm.tasks.reconstruction import ReconstructionSettings, evaluate_reconstruction, reconstruction_markdown
from brainlm.train.pretrain import pretrain

__all__ = ["DemoRun", "STEPS", "Step", "SummaryPart", "training_device"]


@dataclass
class DemoRun:
    """What the steps share: the run folder and settings, and what earlier steps made."""

    out: Path
    settings: DemoSettings
    jobs: int
    console: object
    corpora: dict[str, Corpus] = field(default_factory=dict)
    rest: Recording | None = None
    checkpoint: Path | None = None
    #: The checkpoint loaded once, for the steps that run it directly rather than through a task.
    model: object = None

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.out)


@dataclass
class SummaryPart:
    """One step's part of ``summary.json``: top-level ``sections`` it owns, entries of
    ``settings``, and headline numbers (``{"value", "label"}``) in the order shown."""

    sections: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    key_numbers: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """A named step: ``title(settings)`` is printed above it, ``run(demo_run)`` does it."""

    name: str
    title: Callable[[DemoSettings], str]
    run: Callable[[DemoRun], SummaryPart]


def training_device() -> str:
    """Where pretraining and fine-tuning run: Lightning takes the GPU when there is one."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{torch.get_num_threads()} CPU threads"


# -- 1. data --------------------------------------------------------------------------------------
DATA_NOTES = {
    "hcp7_aal2": "7 HCP young adults, resting state, AAL2 (94 regions), TR 0.72 s (embedded, real).",
    "schaefer100": "one real resting-state run on Schaefer-100 (Yeo-7 labels), TR 2 s, nuisance "
                   "confounds regressed and resampled to 0.72 s (embedded, real).",
    "fmriprep_scans": "from scans, as a new user would: a miniature fMRIPrep folder (4-D NIfTI at "
                      "6 mm painted from 4 HCP subjects, sidecars, confounds tables with motion "
                      "spikes, participants.tsv) parcellated with a labels atlas image by one "
                      "prepare call, with the 'simple' fMRIPrep confound strategy.",
}


def data(run: DemoRun) -> SummaryPart:
    """The four corpora: HCP on AAL2, the Schaefer-100 run, the synthetic cohort, the scans."""
    s, out, jobs = run.settings, run.out, run.jobs
    contract = s.contract()
    hcp = prepare_corpus(load_hcp7_aal2(), out / "corpus-hcp7-aal2",
                         PrepareSettings.of(atlas=load_atlas("aal2"), contract=contract, min_trs=WINDOW_TRS,
                                            jobs=jobs, overwrite=True, progress=True))
    print_summary(hcp.summary())
    run.rest = load_schaefer100_rest()
    contract_rest = PreprocessingContract(
        target_tr=HCP7_TR, percent_signal_change=True, high_pass_hz=0.01, scaling=s.scaling,
        confounds=[c for c in run.rest.confounds.columns if c != "framewise_displacement"])
    s100 = prepare_corpus([run.rest], out / "corpus-schaefer100",
                          PrepareSettings.of(atlas=load_atlas("schaefer100"), contract=contract_rest,
                                             min_trs=WINDOW_TRS, jobs=1, overwrite=True))
    print_summary(s100.summary())
    recordings = simulate_cohort(CohortSpec(s.cohort_subjects, atlas="aal2", n_trs=s.cohort_trs, seed=s.seed),
                                 jobs=jobs)
    cohort = prepare_corpus(recordings, out / "corpus-synthetic-aal2",
                            PrepareSettings.of(atlas=load_atlas("aal2"), contract=contract, min_trs=WINDOW_TRS,
                                               jobs=jobs, split_seed=s.seed, overwrite=True, progress=True))
    print_summary(cohort.summary())
    ex = write_fmriprep_example(out / "fmriprep-example", subjects=4, n_trs=240, overwrite=True)
    scans = prepare_corpus([ex.derivatives], out / "corpus-fmriprep-example",
                           PrepareSettings.of(atlas_image=ex.atlas_image, atlas_labels=ex.atlas_labels,
                                              space=ex.space, min_trs=WINDOW_TRS, jobs=jobs,
                                              contract=PreprocessingContract(percent_signal_change=True),
                                              overwrite=True))
    print_summary(scans.summary())
    run.corpora = {"hcp7_aal2": hcp, "schaefer100": s100, "synthetic_cohort": cohort, "fmriprep_scans": scans}
    notes = {**DATA_NOTES, "synthetic_cohort": (
        f"{s.cohort_subjects} simulated subjects on AAL2 (coupled oscillators on "
        "the HCP connectome -> hemodynamics -> BOLD) at three sites with different TRs; "
        "age, group (patients: altered limbic/frontal coupling) and a null score "
        "with known effects (docs/simulation.md).")}
    return SummaryPart(sections={"corpora": {k: c.summary() for k, c in run.corpora.items()},
                                 "data_notes": {k: notes[k] for k in run.corpora}})


# -- 2. pretraining -------------------------------------------------------------------------------
def pretraining(run: DemoRun) -> SummaryPart:
    """Pretrain with the demo's recipe on the HCP training subjects; check that embeddings of the
    exported checkpoint are deterministic."""
    s, hcp = run.settings, run.corpora["hcp7_aal2"]
    folder = run.out / f"run-{s.preset}"
    if folder.exists():
        shutil.rmtree(folder)
    t = time.perf_counter()
    settings = s.pretrain_settings(hcp.path)
    metrics = pretrain(settings, folder, progress=True)
    seconds = time.perf_counter() - t
    run.checkpoint = folder / "model"
    run.model = model = load_model(run.checkpoint)
    first = embed(run.checkpoint, [hcp.path], run.out / "embeddings.parquet")
    second = embed(run.checkpoint, [hcp.path])
    best = min(metrics["val/baseline_zero_mse"], metrics["val/baseline_mean_mse"])
    return SummaryPart(
        sections={"pretraining": {
            "run": folder.name, "preset": s.preset, "epochs": s.epochs, "seconds": round(seconds, 1),
            "device": training_device(),
            # What --precision auto resolved to on this machine (bf16-mixed only where it pays).
            "precision": json.loads((folder / "metrics.json").read_text())["precision"],
            "window_trs": model.config.window_trs, "masking": settings.mask_spec().to_dict(),
            "parameters": model.count_parameters(), "validation": metrics,
            "embeddings_deterministic": bool(first.equals(second)), "embedded_recordings": len(first)}},
        settings={"pretraining": asdict(settings)},
        key_numbers=[{"value": f"{metrics['val/masked_mse']:.3f} vs {best:.3f}",
                      "label": "pretraining: validation masked MSE (held-out subject) vs the best trivial baseline"}])


# -- 3. reconstruction ----------------------------------------------------------------------------
def reconstruction(run: DemoRun) -> SummaryPart:
    """Masked reconstruction on the HCP test subject, one example window for the report, and
    zero-shot reconstruction of the Schaefer-100 run."""
    s, hcp, layout = run.settings, run.corpora["hcp7_aal2"], run.layout
    res = evaluate_reconstruction(run.checkpoint, hcp.path, ReconstructionSettings(split="test", seed=s.seed),
                                  out=layout.reconstruction)
    run.console.print(reconstruction_markdown(res))
    at = res.at(0.75)
    best = at.best_baseline()
    ours, theirs = at.methods["brainlm"].r2, at.methods[best].r2
    _write_example(run)
    return SummaryPart(
        sections={"reconstruction": {"r2_at_0.75": ours, "best_baseline": best, "best_baseline_r2_at_0.75": theirs,
                                     "zero_shot_schaefer100": _zero_shot(run)}},
        key_numbers=[{"value": f"R² {ours:.3f} vs {theirs:.3f}",
                      "label": f"reconstruction of 75% masked tokens (HCP test subject) vs the best baseline "
                               f"({best})"}])


def _write_example(run: DemoRun) -> None:
    """One test window for the report's carpet plots: the first tile of the first test
    recording, 75% of its tokens masked by a generator seeded with the demo's seed."""
    hcp, model = run.corpora["hcp7_aal2"], run.model
    row = int(hcp.split_indices("test")[0])
    x = next(iter_model_input(hcp, [row], model_scaler(model, hcp)))
    wins, _ = model_windows(model, x, source=hcp.path)
    mask = model.sample_mask(MaskSpec("random", 0.75), len(wins), hcp.atlas.n_parcels,
                             torch.Generator().manual_seed(run.settings.seed))
    pred = predict_masked(model, wins, parcel_xyz(hcp.atlas), mask)
    subject = hcp.manifest.iloc[row]["subject"]
    write_npz_atomic(
        run.layout.reconstruction_example, target=wins[0].numpy(), prediction=pred[0].numpy(),
        mask=model.token_mask_to_values(mask).cpu().numpy()[0],
        parcel_names=np.array(hcp.atlas.parcel_names), tr_s=np.float64(hcp.contract.target_tr),
        title=np.array(f"HCP test subject {subject}, first window, 75% of tokens masked"))


def _zero_shot(run: DemoRun) -> dict:
    """Zero-shot on data the model never saw in any form: the Schaefer-100 run (another atlas,
    scanner and TR), prepared like the checkpoint's pretraining data, every recording in test.
    The stored covariance is on AAL2 and the cohort has no training subject, so the spatial
    comparators are the distance model of the pretraining covariance (evaluated at the
    Schaefer-100 coordinates) and the in-recording fit (the run's other windows); the model is
    compared with the best of every baseline scored, these included."""
    model = run.model
    like = prepare_corpus([load_schaefer100_rest()], run.out / "corpus-schaefer100-like",
                          PrepareSettings.of(atlas=load_atlas("schaefer100"),
                                             like=ReferenceContract(model.contract, model.atlas, str(run.checkpoint)),
                                             min_trs=WINDOW_TRS, jobs=1, overwrite=True))
    zero = evaluate_reconstruction(run.checkpoint, like,
                                   ReconstructionSettings(split="test", seed=run.settings.seed, transfer_atlas=True),
                                   out=run.layout.reconstruction_zero_shot)
    at = zero.at(0.75)
    best = at.best_baseline()
    ours, theirs = at.methods["brainlm"].r2, at.methods[best].r2
    spatial = {m: at.methods[m].r2 for m in ("spatial_distance", "spatial_in_recording") if m in at.methods}
    verdict = "beats" if ours > theirs else "does not beat"
    run.console.print(f"zero-shot on the Schaefer-100 run (unseen atlas): R² at 0.75 {ours:.3f} {verdict} "
                      f"the best baseline, {zero.method_labels[best]} {theirs:.3f}"
                      + "".join(f"; {zero.method_labels[m]} {v:.3f}" for m, v in spatial.items() if m != best))
    return {"r2_at_0.75": ours, "best_baseline": best, "best_baseline_r2_at_0.75": theirs,
            "spatial_r2_at_0.75": spatial,
            "spatial_left_out": {m: v["reason"] for m, v in zero.spatial_baselines.items() if not v["available"]}}


# -- 4. prediction --------------------------------------------------------------------------------
def prediction(run: DemoRun) -> SummaryPart:
    """Each phenotype of the synthetic cohort, grouped nested cross-validation, every method."""
    s = run.settings
    settings = PredictionSettings.quick() if s.prediction_quick else PredictionSettings()
    part = SummaryPart(sections={"prediction": {}}, settings={"prediction": asdict(settings)})
    for target in s.prediction_targets:
        res = evaluate_prediction(run.checkpoint, run.corpora["synthetic_cohort"].path, target, settings=settings,
                                  out=run.layout.prediction(target), progress="folds")
        run.console.print(prediction_markdown(res))
        best = best_brainlm_method(res)
        part.key_numbers.append({
            "value": f"{res.primary_metric} {res.mean(best):.3f} vs {res.mean(res.reference):.3f}",
            "label": f"{target} on the synthetic cohort: best BrainLM method ({best}) vs FC reference "
                     f"({res.comparison[best]['verdict']})"})
        part.sections["prediction"][target] = headline(res)
    return part


# -- 5. forecasting -------------------------------------------------------------------------------
def forecasting(run: DemoRun) -> SummaryPart:
    """Fine-tune to forecast 20 TRs from 180 on HCP; score against every baseline."""
    s = run.settings
    fine = FinetuneSettings(epochs=s.forecast_epochs, crops_per_recording=16, seed=s.seed)
    base = BaselineSettings(neural=NeuralTraining(epochs=s.forecast_epochs, crops_per_recording=16))
    res = compare(run.checkpoint, run.corpora["hcp7_aal2"].path, run.layout.forecasting, finetune_settings=fine,
                  baseline_settings=base, overwrite=True)
    draw_forecast_figure(run.layout.forecasting)
    run.console.print(res.summary)
    ours, theirs = res.methods[res.best("brainlm")], res.methods[res.best("baseline")]
    return SummaryPart(
        sections={"forecasting": res.summary},
        settings={"forecasting": {"finetune": asdict(fine), "baselines": asdict(base)}},
        key_numbers=[{"value": f"MSE {ours.mean['mse']:.3f} vs {theirs.mean['mse']:.3f}",
                      "label": f"forecasting 20 TRs (HCP test subject): {ours.label} vs the best baseline "
                               f"({theirs.label}), mean over steps"}])


# -- 6. networks ----------------------------------------------------------------------------------
def networks(run: DemoRun) -> SummaryPart:
    """Networks from attention, on data the model was not pretrained on only: the HCP test
    subject's recording (not the training subjects'), and the Schaefer-100 run, read raw and
    cleaned with the checkpoint's own contract (the demo's Schaefer corpus was cleaned with
    confounds, which the model would refuse)."""
    s, hcp = run.settings, run.corpora["hcp7_aal2"]
    held_out = set(hcp.manifest.iloc[hcp.split_indices("test")]["subject"].astype(str))
    test_recordings = [r for r in load_hcp7_aal2() if r.subject in held_out]
    part = SummaryPart(sections={"networks": {}})
    for name, recordings, settings in (
            ("hcp7_aal2", test_recordings, NetworksSettings(seed=s.seed)),
            ("schaefer100", [run.rest], NetworksSettings(seed=s.seed, transfer_atlas=True, target_tr=HCP7_TR,
                                                         untrained_control=False))):
        r = identify_networks(run.checkpoint, recordings, run.layout.networks(name), settings)
        draw_network_folder(run.layout.networks(name))
        numbers = _network_numbers(r)
        part.sections["networks"][name] = numbers
        run.console.print(
            f"{name}: kNN accuracy from {NETWORK_FEATURE} {numbers['feature_knn_accuracy']:.1%} (time-shifted "
            f"input {numbers['feature_time_shifted_knn_accuracy']:.1%}), CLS attention "
            f"{numbers['cls_attention_knn_accuracy']:.1%}, vs FC profile {numbers['fc_profile_knn_accuracy']:.1%} "
            f"(majority {numbers['majority_accuracy']:.1%})")
    n = part.sections["networks"]["hcp7_aal2"]
    part.key_numbers.append({
        "value": f"{n['feature_knn_accuracy']:.1%} vs {n['fc_profile_knn_accuracy']:.1%}",
        "label": f"Yeo-7 network of each AAL2 parcel of the held-out subject (kNN, leave one parcel "
                 f"out) from {NETWORK_FEATURE} vs FC profiles (CLS attention, the paper's feature: "
                 f"{n['cls_attention_knn_accuracy']:.1%}; time-shifted control "
                 f"{n['feature_time_shifted_knn_accuracy']:.1%}; chance {n['majority_accuracy']:.1%})"})
    return part


def _network_numbers(r: NetworksResult) -> dict:
    """The summary of one dataset; the feature is fixed in advance (:data:`NETWORK_FEATURE`),
    not picked on this subject (the best of four on one subject is optimistic)."""
    return {"cls_attention_knn_accuracy": r.method("BrainLM", "cls_attention").knn_accuracy,
            "feature": NETWORK_FEATURE,
            "feature_knn_accuracy": r.method("BrainLM", NETWORK_FEATURE).knn_accuracy,
            "feature_time_shifted_knn_accuracy": r.method("BrainLM, time-shifted input", NETWORK_FEATURE).knn_accuracy,
            "fc_profile_knn_accuracy": r.baseline("fc_profile").knn_accuracy,
            "majority_accuracy": r.chance.majority_accuracy}


# -- 7. group attention ---------------------------------------------------------------------------
def attention(run: DemoRun) -> SummaryPart:
    """Patients against controls; the simulation alters limbic coupling in patients, the ground
    truth the map should find."""
    s, cohort = run.settings, run.corpora["synthetic_cohort"]
    limbic, prefrontal = limbic_prefrontal(cohort.atlas)
    settings = GroupAttentionSettings(n_permutations=s.permutations, seed=s.seed,
                                      parcel_sets={"limbic (altered in the simulation)": limbic,
                                                   "prefrontal (altered in the simulation)": prefrontal})
    r = group_attention(run.checkpoint, cohort.path, "group", run.layout.attention, settings)
    draw_group_folder(run.layout.attention)
    sets = r.parcel_sets.get("attention", [])
    run.console.print(f"{r.significant['attention']} parcel(s) with q < {r.settings['alpha']}; altered "
                      "network: " + "; ".join(f"{n.set}: mean |t| percentile {n.t_mean_percentile:.2f}, "
                                              f"p {n.shift_p:.3g}" for n in sets))
    return SummaryPart(sections={"attention": {
        "significant_parcels": r.significant["attention"],
        "altered_sets": [{"set": n.set, "t_mean_percentile": n.t_mean_percentile, "shift_p": n.shift_p}
                         for n in sets]}})


# -- 8. latent space ------------------------------------------------------------------------------
def latent(run: DemoRun) -> SummaryPart:
    """The cohort's embeddings coloured by site: sites differ in TR (resampled away), noise and
    scanner drift, the effect users harmonize."""
    _, r = latent_space_of(run.checkpoint, [run.corpora["synthetic_cohort"].path], "site", seed=run.settings.seed)
    write_latent(r, run.layout.latent)
    draw_latent_figure(r, run.layout.latent.with_suffix(".png"))
    run.console.print(f"site separability: BrainLM {score_text(r, 'brainlm')}; FC {score_text(r, 'fc')}")
    return SummaryPart(sections={"latent": {f: r.separability(f) for f in ("brainlm", "fc")}
                                 | {"column": "site", "score": r.score["name"]}})


#: The demo, in order.
STEPS = (
    Step("data", lambda s: "Corpora: HCP (7 subjects, AAL2), Schaefer-100 rest run, synthetic cohort", data),
    Step("pretraining", lambda s: f"Pretrain the {s.preset} model ({s.recipe} recipe) on the HCP training "
         f"subjects ({s.epochs} epochs)", pretraining),
    Step("reconstruction", lambda s: "Masked reconstruction on the HCP test subject vs baselines", reconstruction),
    Step("prediction", lambda s: f"Predict {', '.join(s.prediction_targets)} on the synthetic cohort "
         "(grouped nested CV) vs FC + ridge", prediction),
    Step("forecasting", lambda s: "Forecast 20 TRs from 180 on HCP: fine-tuned BrainLM vs persistence, AR, "
         "VAR, LSTM, Neural ODE, scratch", forecasting),
    Step("networks", lambda s: "Functional networks from attention (HCP on AAL2; Schaefer-100 run) vs baselines",
         networks),
    Step("attention", lambda s: "Group attention maps on the synthetic cohort (patients vs controls)", attention),
    Step("latent", lambda s: "The latent space of the synthetic cohort, coloured by site, vs FC", latent),
)
