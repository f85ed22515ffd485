"""The sections of the HTML report, one builder per task, each reading that task's saved results.

A builder is ``(run_dir, summary, figures_dir) -> Section``; it draws its figures into
``figures_dir`` from the saved numbers (never by re-running a model) and says plainly when its
step is absent from the run.
"""

from __future__ import annotations

import importlib.metadata
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from brainlm.data.atlas import Atlas
from brainlm.data.atomic import to_json
from brainlm.data.corpus import Corpus
from brainlm.data.scaling import NORMALIZATION_FORMULAS
from brainlm.errors import BrainLMInputError
from brainlm.version import __version__
from brainlm.report.attention_figures import draw_group_figures, draw_network_figures
from brainlm.report.benchmark_figures import RATIOS, best_own_knn, draw_quality, draw_scaling, load_benchmark
from brainlm.report.blocks import Section, Table, embed_png, escape, fmt, row
from brainlm.report.brain import ParcelMapStyle, plot_parcel_values
from brainlm.report.figures import prediction_scores, reconstruction_example, training_curves
from brainlm.report.forecasting_figures import plot_step_curves
from brainlm.report.latent_figures import draw_latent_figure, latent_caption, score_text
from brainlm.report.layout import PretrainingSummary, RunLayout, RunSummary
from brainlm.tasks.group_attention import read_parcels as read_group_parcels
from brainlm.tasks.networks import NetworksResult
from brainlm.tasks.networks import read_parcels as read_network_parcels
from brainlm.tasks.prediction.evaluate import PredictionResult, headline
from brainlm.tasks.reconstruction import ReconstructionResult

METHOD_NAMES = {
    "brainlm": "BrainLM (pretrained)", "zero": "predict 0 (the scaled median)",
    "parcel_mean": "parcel mean of visible values", "interpolation": "linear interpolation in time",
    "spatial": "spatial (Ledoit-Wolf Gaussian imputation from visible parcels, fitted on train)",
    "spatial_zero_shot": "spatial, zero-shot (Ledoit-Wolf Gaussian imputation fitted on the checkpoint's "
                         "pretraining data)",
    "spatial_distance": "spatial, distance model, zero-shot (Gaussian imputation with a covariance of "
                        "inter-parcel distance and hemisphere fitted on the checkpoint's pretraining data, "
                        "evaluated at this atlas' coordinates)",
    "spatial_in_recording": "spatial, in-recording (Ledoit-Wolf Gaussian imputation fitted on the other "
                            "windows of the same recording, never the scored one)",
}


def _masking(pre: PretrainingSummary) -> str:
    """How much pretraining masked: one ratio, or a range drawn per batch."""
    m = pre.masking
    if m.get("ratio_max") is not None:
        return f"a fraction drawn per batch from {m['ratio']:.0%} to {m['ratio_max']:.0%}"
    return f"{m['ratio']:.0%}"


def software_versions() -> dict:
    """Python and the versions of the packages a run's numbers depend on."""
    out = {"python": platform.python_version()}
    for name in ("brainlm", "torch", "lightning", "numpy", "scipy", "pandas", "scikit-learn", "nilearn",
                 "zarr", "matplotlib", "torchdiffeq"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def study_summary(run_dir: Path) -> RunSummary:
    """What a study folder (task results under ``results/``, no ``summary.json``) tells the report:
    the checkpoints and corpora its results name, and this software. A user's own analysis of any
    checkpoint (an imported upstream one included) gets a report this way."""
    found: dict[str, set] = {"checkpoints": set(), "corpora": set()}
    for res in RunLayout(run_dir).read_all():
        for key, into in (("checkpoint", "checkpoints"), ("corpus", "corpora")):
            value = getattr(res, key, None)
            if isinstance(value, str):
                found[into].add(value)
    # The corpora as they are now (paths as the tasks were given them: relative ones resolve
    # from where the report is made); one that cannot be opened is named, not described.
    corpora, notes = {}, {}
    for path in sorted(found["corpora"]):
        try:
            corpora[path] = Corpus(path).summary()
        except BrainLMInputError as e:
            notes[path] = f"named by the results but not readable from here ({e.reason})"
    return RunSummary(kind="study", brainlm_version=__version__, command=f"brainlm report {run_dir}",
                      finished=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      versions=software_versions(), corpora=corpora, data_notes=notes,
                      settings={k: sorted(v) for k, v in found.items()})


def subtitle(summary: RunSummary) -> str:
    if summary.kind == "study":
        names = ", ".join(summary.settings.get("checkpoints", [])) or "unknown"
        return (f"brainlm {summary.brainlm_version} · the saved task results of checkpoint(s) "
                f"{names} · {summary.finished}")
    return (f"brainlm {summary.brainlm_version} · produced by `{summary.command}` "
            f"in {summary.seconds / 60:.1f} min on {summary.device} · {summary.finished}")


def key_numbers(run_dir: Path, summary: RunSummary) -> list[dict]:
    """The headline numbers shown above the table of contents."""
    return list(summary.key_numbers)


def _missing(anchor: str, title: str, what: str) -> Section:
    return Section(anchor, title, paragraphs=[f"Not in this run: {escape(what)} was not produced."])


# -- data ----------------------------------------------------------------------------------------
def data_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section:
    s = Section("data", "Data")
    corpora = summary.corpora
    if not corpora:
        return _missing("data", "Data", "a corpus summary")
    rows = []
    for name, c in corpora.items():
        n = c["n_trs"]
        rows.append(row([name, c["atlas"]["name"], c["atlas"]["parcels"], c["recordings"], c["subjects"],
                         c["hours"], c["tr_s"], ", ".join(f"{t:g}" for t in c["source_trs_s"]),
                         f"{n['min']}–{n['max']}",
                         " / ".join(str(v["subjects"]) for v in c["splits"].values()),
                         ", ".join(c["phenotypes"]) or "none"]))
    s.tables.append(Table("Corpora (splits by subject: no subject is in two splits)",
                          ["corpus", "atlas", "parcels", "recordings", "subjects", "hours", "TR (s)",
                           "source TRs (s)", "TRs per recording", "subjects train / val / test",
                           "phenotypes"], rows))
    for name, text in summary.data_notes.items():
        s.paragraphs.append(f"<b>{escape(name)}</b>: {escape(text)}")
    name, first = next(iter(corpora.items()))
    contract = first["contract"]
    formula = NORMALIZATION_FORMULAS[contract.get("normalization", "robust")]
    fitted = ("each recording by its own statistics" if contract.get("scaling") == "recording"
              else f"fitted on the {contract['scaler_fit'].get('recordings')} training recordings only")
    s.paragraphs.append(
        f"Preprocessing contract of <code>{escape(name)}</code> (the checkpoint's, as "
        "<code>brainlm.tasks.model_input</code> applies it): "
        f"percent signal change {contract['percent_signal_change']}, linear detrend {contract['detrend']}, "
        f"band-pass {contract['high_pass_hz']}–{contract['low_pass_hz']} Hz, resampled to TR "
        f"{contract['target_tr']} s, scaled {formula}, {fitted}.")
    return s


# -- pretraining ---------------------------------------------------------------------------------
def pretraining_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section:
    pre = summary.pretraining
    if pre is None:
        return _missing("pretraining", "Pretraining", "a pretraining run")
    s = Section("pretraining", "Pretraining")
    logs = sorted((run_dir / pre.run / "logs" / "csv").glob("version_*/metrics.csv"))
    if logs:
        png = training_curves(logs[-1], figures / "training_curves.png")
        s.figures.append(embed_png(png, "training_curves", "Training loss per step; validation masked "
                                   "MSE per epoch on held-out subjects against predicting 0 and each "
                                   "parcel's visible mean (left); validation R² of masked values (right)."))
    v = pre.validation
    best_baseline = min(v["val/baseline_zero_mse"], v["val/baseline_mean_mse"])
    s.paragraphs.append(
        f"The <code>{escape(pre.preset)}</code> model ({fmt(pre.parameters['total'])} parameters) "
        f"was pretrained for {pre.epochs} epochs ({pre.seconds / 60:.1f} min on {escape(pre.device)}) "
        f"on random {pre.window_trs}-TR windows of the training subjects, with "
        f"{_masking(pre)} of tokens masked at random; the loss is the MSE on masked tokens only.")
    s.tables.append(Table("Validation (held-out subjects, deterministic tiles and masks)",
                          ["method", "masked MSE", "R²"],
                          [row(["BrainLM", v["val/masked_mse"], v["val/r2"]], highlight=True),
                           row(["predict 0", v["val/baseline_zero_mse"], None]),
                           row(["visible parcel mean", v["val/baseline_mean_mse"], None])]))
    ratio = v["val/masked_mse"] / best_baseline
    s.verdict = (f"Masked MSE is {ratio:.2f}× that of the better trivial baseline "
                 + ("(<span class='win'>better</span>)." if ratio < 1 else "(<span class='lose'>not better</span>)."))
    return s


# -- reconstruction ------------------------------------------------------------------------------
def reconstruction_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section:
    layout = RunLayout(run_dir)
    res = layout.read_reconstruction()
    if res is None:
        return _missing("reconstruction", "Masked reconstruction", "the reconstruction evaluation")
    s = Section("reconstruction", "Masked reconstruction")
    s.paragraphs.append(
        f"{res.recordings} recording(s) of the <code>{escape(res.split)}</code> split "
        f"({res.windows} windows of {res.window_trs} TRs) with {escape(res.strategy)} masks drawn "
        f"with seed {res.seed}; every method fills in the very same masked values. R² is pooled over "
        "all masked values (1 − SSE/SST, as in the paper); units are the model's scaled signal.")
    s.tables.append(_reconstruction_table(res, "Pooled metrics over masked values, by mask ratio"))
    s.verdict = _reconstruction_verdict(res)
    zero = layout.read_reconstruction(zero_shot=True)
    if zero is not None:
        scored = [METHOD_NAMES.get(k, k) for k, b in zero.spatial_baselines.items() if b.get("available")]
        missing = [f"{k}: {b['reason']}" for k, b in zero.spatial_baselines.items() if not b.get("available")]
        s.paragraphs.append(
            "Zero-shot on data the model never saw in any form: the Schaefer-100 run (another atlas, scanner "
            "and TR), prepared like the checkpoint's pretraining data (<code>brainlm prepare --like</code>) "
            "and read through parcel coordinates. "
            + (f"Spatial baselines scored: {escape('; '.join(scored))}. " if scored else "No spatial baseline. ")
            + (f"Left out: {escape('; '.join(missing))}. " if missing else "") + _reconstruction_verdict(zero))
        s.tables.append(_reconstruction_table(zero, "Zero-shot, Schaefer-100 run: pooled metrics over masked values"))
    if layout.reconstruction_example.exists():
        z = np.load(layout.reconstruction_example, allow_pickle=False)
        png = reconstruction_example(z["target"], z["prediction"], z["mask"].astype(bool),
                                     [str(n) for n in z["parcel_names"]], float(z["tr_s"]),
                                     figures / "reconstruction_example.png",
                                     title=str(z["title"]))
        s.figures.append(embed_png(png, "reconstruction_example",
                                   "One test window: true signal, the model's prediction where tokens "
                                   "were masked, the absolute error, and the traces of three parcels "
                                   "(shaded: masked)."))
    parcels = res.parcels
    atlas = Atlas(name=parcels.atlas, parcel_names=parcels.names, xyz=np.array(parcels.xyz_mm),
                  networks=parcels.networks)
    ratio = res.middle_ratio()
    r2 = np.array([np.nan if v is None else v for v in res.at(ratio).methods["brainlm"].per_parcel["r2"]])
    png = plot_parcel_values(r2, atlas, figures / "reconstruction_r2_brain.png",
                             title=f"BrainLM reconstruction R² per parcel (mask {ratio:g})",
                             style=ParcelMapStyle(cmap="viridis", colorbar_label="R² (masked values)"))
    s.figures.append(embed_png(png, "reconstruction_r2_brain",
                               f"R² of the masked values of each parcel at mask ratio {ratio:g}, drawn at the "
                               "parcel's MNI centre (not clipped: below 0 means worse than the parcel's own mean)."))
    return s


def _reconstruction_table(res: ReconstructionResult, caption: str) -> Table:
    cols = ["method"] + [f"{h} @ {r:g}" for r in res.mask_ratios for h in ("R²", "MSE", "r")]
    rows = []
    for m in res.methods:
        hybrid = m == "brainlm" and res.brainlm_label != "BrainLM"
        cells = [res.brainlm_label if hybrid else METHOD_NAMES.get(m, m)]
        for e in res.results:
            sc = e.methods[m]
            cells += [sc.r2, sc.mse, sc.pearson_r]
        rows.append(row(cells, highlight=m == "brainlm"))
    return Table(caption, cols, rows)


def _reconstruction_verdict(res: ReconstructionResult) -> str:
    verdicts = []
    for e in res.results:
        best = e.best_baseline()
        ours, theirs = e.methods["brainlm"].r2, e.methods[best].r2
        word = "<span class='win'>beats</span>" if ours > theirs else "<span class='lose'>trails</span>"
        verdicts.append(f"at {e.mask_ratio:g} BrainLM {word} the best baseline ({METHOD_NAMES.get(best, best)}: "
                        f"R² {theirs:.3f} vs {ours:.3f})")
    return "; ".join(verdicts) + "."


# -- prediction ----------------------------------------------------------------------------------
def prediction_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section:
    results = RunLayout(run_dir).read_predictions()
    if not results:
        return _missing("prediction", "Phenotype prediction", "the phenotype prediction evaluation")
    s = Section("prediction", "Phenotype prediction")
    first = results[0]
    st = first.settings
    s.paragraphs.append(
        f"{first.recordings} recordings of {first.subjects} subjects of "
        f"<code>{escape(Path(first.corpus).name)}</code>. Outer folds: {st['n_folds']}, grouped by subject "
        f"(no subject on both sides, inner folds included), × {len(st['seeds'])} seed(s); hyper-parameters "
        f"by a {st['inner_folds']}-fold grouped search inside each training fold. "
        + (f"{escape(first.standardisation)}. " if first.standardisation else "")
        + "Every method is compared with the functional-connectivity "
        f"reference on the same folds by a {escape(first.test)}.")
    verdicts = []
    for res in results:
        t = res.target
        s.tables.append(Table(
            f"{t['column']} ({t['task']}): mean ± SD over seeds (over folds for methods run on one seed)",
            ["method", "family", *[k.replace("_", " ") for k in res.metrics], f"Δ {res.primary_metric}",
             "p", "verdict"], _prediction_rows(res)))
        verdicts.append(f"<b>{escape(t['column'])}</b>: {_headline_html(res)}")
    png = prediction_scores(results, figures / "prediction_scores.png")
    s.figures.append(embed_png(png, "prediction_scores",
                               "Primary metric of every method (bars: mean; whiskers: spread); dashed "
                               "line: the FC + ridge/logistic reference."))
    s.verdict = "<br>".join(verdicts)
    return s


def _prediction_rows(res: PredictionResult) -> list[dict]:
    rows = []
    for m in res.methods:
        name = m["name"]
        cells = [name, m["family"]]
        for k in res.metrics:
            st_ = res.summary[name][k]
            spread = st_["sd_seeds"] if st_["sd_seeds"] is not None else st_["sd_folds"]
            cells.append("n/a" if st_["mean"] is None else
                         f"{st_['mean']:.3f}" + (f" ± {spread:.3f}" if spread is not None else ""))
        c = res.comparison.get(name)
        if c is None:
            cells += ["—", "—", "reference"]
        else:
            cells += [None if c["mean_difference"] is None else f"{c['mean_difference']:+.3f}",
                      None if c["p"] is None else f"{c['p']:.3g}", c["verdict"]]
        rows.append({"cells": [fmt(v) for v in cells], "highlight": name == res.reference})
    return rows


def _headline_html(res: PredictionResult) -> str:
    text = escape(headline(res)).replace("`", "")
    for word, cls in (("better than the reference", "win"), ("worse than the reference", "lose")):
        text = text.replace(word, f"<span class='{cls}'>{word}</span>")
    return text


# -- forecasting ---------------------------------------------------------------------------------
def forecasting_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section:
    res = RunLayout(run_dir).read_forecasting()
    if res is None:
        return _missing("forecasting", "Forecasting future brain states", "the forecasting comparison")
    s = Section("forecasting", "Forecasting future brain states")
    s.paragraphs.append(
        f"From {res.context_trs} TRs of context, every method predicts the next {res.horizon_trs} TRs "
        f"of all {res.n_parcels} parcels on {res.n_windows} windows of {res.n_test_recordings} "
        f"test recording(s) (TR {res.tr_s} s). All methods are fitted on the same training split; "
        "BrainLM is the pretrained checkpoint fine-tuned with the future mask, next to the same "
        "architecture trained from scratch with the same budget.")
    s.verdict = escape(res.summary)
    best = min(res.methods, key=lambda n: res.methods[n].mean["mse"])
    rows = [row([m.label, m.mean["mse"], m.mean["r2"], m.mean["pearson_r"], m.mse[0],
                 m.mse[-1], round(m.fit_seconds, 1), round(m.predict_ms_per_window, 2)],
                highlight=n == best) for n, m in res.methods.items()]
    s.tables.append(Table("Mean over predicted steps (best mean MSE highlighted)",
                          ["method", "MSE", "R²", "r", "MSE step 1", f"MSE step {res.horizon_trs}",
                           "fit (s)", "predict (ms/window)"], rows,
                          note="; ".join(f"{k}: {v}" for k, v in res.pooling.items())
                          + "; fit (s): training time on the training split (the fine-tuned and scratch "
                          "BrainLM models: their fine-tuning run; the zero-shot checkpoint is not trained "
                          "here, its pretraining is above)"))
    png = plot_step_curves(res, figures / "forecast_error_by_step.png")
    s.figures.append(embed_png(png, "forecast_error_by_step",
                               "MSE, R² and Pearson r against the predicted step for every method."))
    return s


# -- networks ------------------------------------------------------------------------------------
def networks_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section:
    layout = RunLayout(run_dir)
    found = layout.read_networks()
    if not found:
        return _missing("networks", "Functional networks from attention", "network identification")
    s = Section("networks", "Functional networks from attention")
    s.paragraphs.append(
        "Each parcel is described by the model's attention (CLS-to-parcel attention profiles and "
        "parcel-by-parcel attention) or by its token embeddings, and assigned to a Yeo-7 network by "
        "leave-one-parcel-out kNN (the paper's protocol: 58.8% vs 25.9% for a GCN-based kNN on A424) and "
        "logistic regression; k-means with k = number of networks is scored by ARI and NMI. Baselines "
        "use the same parcels: FC profiles, raw time series, spectral clustering of FC, and chance.")
    verdicts = []
    for k, (name, r) in enumerate(found.items()):
        s.tables.append(_networks_table(name, r))
        ours, fc, c = r.method("BrainLM", "cls_attention"), r.baseline("fc_profile"), r.chance
        if ours and fc:
            word = "<span class='win'>above</span>" if ours.knn_accuracy > fc.knn_accuracy else "<span class='lose'>below</span>"
            verdicts.append(f"{escape(name)}: kNN accuracy from CLS attention {ours.knn_accuracy:.1%}, {word} "
                            f"the FC-profile baseline ({fc.knn_accuracy:.1%}); chance (majority) "
                            f"{c.majority_accuracy:.1%}.")
        if k == 0:
            folder = layout.networks(name)
            drawn = figures / folder.name
            drawn.mkdir(exist_ok=True)
            figs = draw_network_figures(r, read_network_parcels(folder / "parcels.tsv"), drawn)
            s.figures.append(embed_png(drawn / figs["BrainLM: cls_attention (kNN)"], "networks_confusion",
                                       f"{name}: confusion matrix of the paper's protocol (kNN on CLS attention)."))
            s.figures.append(embed_png(drawn / figs["networks_true"], "networks_true",
                                       f"{name}: the atlas' network labels at the parcel centres."))
            s.figures.append(embed_png(drawn / figs["networks_predicted"], "networks_brain",
                                       f"{name}: networks predicted from attention (leave one parcel out)."))
    s.verdict = "<br>".join(verdicts)
    return s


def _networks_table(name: str, r: NetworksResult) -> Table:
    rows = [row([m.model, m.features, m.dims, m.knn_accuracy, m.knn_balanced_accuracy,
                 m.logreg_accuracy, m.logreg_balanced_accuracy, m.kmeans_ari, m.kmeans_nmi],
                highlight=m.model.startswith("BrainLM") and m.features == "cls_attention")
            for m in r.methods]
    c = r.chance
    rows.append(row([f"chance (majority: {c.majority_network})", "", "", c.majority_accuracy,
                     c.balanced_accuracy, c.stratified_accuracy, c.balanced_accuracy, 0.0, c.nmi_mean]))
    return Table(f"{name}: {r.atlas}, {r.labelled_parcels} labelled parcels, {r.recordings} recording(s)",
                 ["model", "features", "dims", "kNN acc", "kNN bal. acc", "logreg acc", "logreg bal. acc",
                  "k-means ARI", "k-means NMI"], rows,
                 note="Spectral clustering: " + "; ".join(f"{a}: ARI {v.ari:.3f}, NMI {v.nmi:.3f}"
                                                          for a, v in r.spectral.items()))


# -- group attention -----------------------------------------------------------------------------
def attention_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section:
    layout = RunLayout(run_dir)
    r = layout.read_attention()
    if r is None:
        return _missing("attention", "Group attention maps", "the group attention analysis")
    s = Section("attention", "Group attention maps")
    a, b = r.groups["a"], r.groups["b"]
    perm = r.permutations["attention"]
    alpha = r.settings["alpha"]
    s.paragraphs.append(
        f"Mean CLS attention per parcel for {escape(r.group_by)} = {escape(b)} against {escape(a)}: "
        + ", ".join(f"{escape(g)}: {v[r.unit + 's']} {r.unit}s" for g, v in r.n.items())
        + f". Welch-t permutation test over {r.unit}s ({perm.n} labellings, "
        f"{'exact' if perm.exact else 'random'}), Benjamini-Hochberg FDR at {alpha}. "
        "FC strength per parcel is the baseline map.")
    for what, title in (("attention", "relative CLS attention"), ("fc_strength", "FC strength (baseline)")):
        if what not in r.networks:
            continue
        rows = [row([n.network, n.parcels, n.mean_difference, n.mean_t, n.significant_parcels,
                     n.t_mean_percentile, n.shift_p]) for n in r.networks[what]]
        rows += [row([f"set: {n.set}", n.parcels, None, n.mean_t, None, n.t_mean_percentile,
                      n.shift_p], highlight=True) for n in r.parcel_sets.get(what, [])]
        s.tables.append(Table(f"{title}: {r.significant[what]} parcel(s) with q < {alpha}",
                              ["network", "parcels", "mean difference", "mean t", "significant",
                               "mean t percentile", "network shift p"], rows))
    drawn = figures / "attention"
    drawn.mkdir(exist_ok=True)
    figs = draw_group_figures(r, read_group_parcels(layout.attention / "parcels.tsv"), drawn)
    s.figures.append(embed_png(drawn / figs["t"], "attention_group_difference",
                               f"Welch t of CLS attention, {b} − {a}, at the parcel centres (ringed: q < "
                               f"{alpha})."))
    s.figures.append(embed_png(drawn / figs["networks"], "attention_network_difference",
                               "The group difference summarised per network."))
    return s


# -- provenance ----------------------------------------------------------------------------------
def provenance_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section:
    s = Section("provenance", "How this report was produced")
    versions = summary.versions
    s.tables.append(Table("Software", ["package", "version"],
                          [row([k, v]) for k, v in versions.items()]))
    steps = summary.step_seconds
    if steps:
        s.tables.append(Table("Time per step", ["step", "seconds"],
                              [row([k, f"{v:.1f}"]) for k, v in steps.items()]))
    if summary.kind == "study":
        s.paragraphs.append(f"Command: <code>{escape(summary.command)}</code>, drawn from the saved "
                            "results under <code>results/</code>; the settings of each task are in its "
                            "JSON file there. The checkpoints and corpora those results name follow.")
    else:
        s.paragraphs.append(f"Command: <code>{escape(summary.command)}</code>; seed "
                            f"{summary.seed} everywhere (splits, crops, masks, folds, models). The "
                            "settings of every step follow.")
    s.pre = to_json(summary.settings)
    return s


def latent_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section:
    layout = RunLayout(run_dir)
    r = layout.read_latent()
    if r is None:
        return _missing("latent", "The latent space", "the latent-space map")
    s = Section("latent", "The latent space")
    s.paragraphs.append(
        f"Embeddings (CLS, per recording and per window) of the {r.n_recordings} recordings of the "
        "synthetic cohort, mapped to two dimensions by PCA and coloured by site, next to the same map of "
        "each recording's functional connectivity. Sites differ in noise and scanner: the effect that "
        "users of multi-site cohorts must harmonize. The separability score is read against its chance "
        "level from permuted labels (whole subjects permuted).")
    s.tables.append(Table(f"Separability of '{escape(r.column)}' ({escape(r.score['name'])})",
                          ["features", "score (chance; p)"],
                          [row(["BrainLM", score_text(r, "brainlm")], highlight=True),
                           row(["FC (Fisher-z, upper triangle)", score_text(r, "fc")])]))
    png = draw_latent_figure(r, figures / "latent_site.png")
    s.figures.append(embed_png(png, "latent_site", latent_caption(r)))
    return s


def benchmarks_section(run_dir: Path, summary: RunSummary, figures: Path) -> Section | None:
    """The evidence behind the default recipe: the committed quality benchmark and scaling study
    (not re-run by the demo; ``benchmarks/bench_quality.py`` and ``bench_scaling.py``)."""
    if summary.kind == "study":
        return None   # the evidence for brainlm's own recipe; a study may be of any checkpoint
    quality, scaling = load_benchmark("quality"), load_benchmark("scaling")
    if quality is None and scaling is None:
        return None
    s = Section("benchmarks", "The recipe: held-out quality benchmark and scaling study")
    if quality is not None:
        meta, recipes = quality["meta"], quality["recipes"]
        s.paragraphs.append(
            f"Committed results of <code>benchmarks/bench_quality.py</code> ({escape(meta['date'])}, "
            f"{escape(meta['machine'])}), not of this run. Each recipe is pretrained on 5 HCP subjects and "
            f"scored on a held-out sixth, in {len(meta['folds'])} folds with different test subjects and "
            "seeds; every baseline is fitted on the same training subjects and scored on the same masks. "
            "Mean ± sd over folds.")
        cols = ["recipe", "epochs", "pretrain s"] + [f"R² @{r}" for r in RATIOS] + ["spatial @0.75"]
        rows = []
        for name, r in recipes.items():
            rr = r["reconstruction_r2"]
            rows.append(row([_recipe(name, r), r["settings"].get("epochs"), round(r["pretrain_seconds"]["mean"])]
                            + [_mean_sd(rr[x]["brainlm"]) for x in RATIOS] + [_mean_sd(rr["0.75"]["spatial"])]))
        s.tables.append(Table("Masked reconstruction R² on the held-out subject", cols, rows))
        for net, title in (("hcp_aal2", "HCP test subject on AAL2"), ("schaefer100", "Schaefer-100 run")):
            net_rows = []
            for name, r in recipes.items():
                n = r["networks"][net]
                k, f = n["knn"], n["best_own_feature"]
                fc = next(v for key, v in k.items() if key.endswith(": fc_profile"))
                net_rows.append(row([_recipe(name, r), f, _mean_sd(k["BrainLM: " + f]),
                                     _mean_sd(k["BrainLM, time-shifted input: " + f]),
                                     _mean_sd(k["BrainLM: cls_attention"]), _mean_sd(fc), n["chance"]]))
            s.tables.append(Table(f"Network identification, {title}: kNN accuracy (leave one parcel out)",
                                  ["recipe", "best own feature", "accuracy", "same, time-shifted input",
                                   "CLS attention (paper)", "FC profile", "chance"], net_rows))
        fc_rows = []
        for name, r in recipes.items():
            for m in (r.get("forecasting") or {}).values():
                steps = m["per_step_mse"]
                fc_rows.append(row([_recipe(name, r), m["label"], _mean_sd(m["mean_mse"]), steps[0], steps[4],
                                    steps[-1]]))
        if fc_rows:
            s.tables.append(Table("Forecasting 20 TRs from 180 on the held-out subject: MSE",
                                  ["recipe", "method", "mean over steps", "step 1", "step 5", "step 20"], fc_rows))
        png = draw_quality(recipes, figures / "benchmark_quality.png")
        s.figures.append(embed_png(png, "benchmark_quality", "Masked R² against the mask ratio per recipe "
                                   "(held-out subjects, mean ± sd over folds) and the spatial baseline."))
    if scaling is not None:
        runs = scaling["runs"]
        s.paragraphs.append(
            f"Scaling study (<code>benchmarks/bench_scaling.py</code>, {escape(scaling['meta']['date'])}): the "
            f"same held-out subject, every run {scaling['meta']['epochs']} epochs of "
            f"{scaling['meta']['windows_per_epoch']} windows, so a bigger model or more data gets no more "
            "optimizer steps.")
        s.tables.append(Table(
            "Held-out quality against model size and pretraining data",
            ["run", "parameters", "real subjects (+ simulated)", "R² @0.2", "R² @0.75", "spatial @0.75",
             "networks AAL2 (best own)", "time-shifted"],
            [row([r["run"], r["parameters"], f"{r['subjects']} (+{r['simulated']})",
                  r["reconstruction_r2"]["0.2"]["brainlm"], r["reconstruction_r2"]["0.75"]["brainlm"],
                  r["reconstruction_r2"]["0.75"]["spatial"], best_own_knn(r["networks"]["hcp_aal2"]["rows"]),
                  best_own_knn(r["networks"]["hcp_aal2"]["rows"], "BrainLM, time-shifted input")]) for r in runs]))
        png = draw_scaling(runs, figures / "benchmark_scaling.png")
        s.figures.append(embed_png(png, "benchmark_scaling", "Held-out masked R² and network accuracy against "
                                   "parameters and training subjects (log axes)."))
    return s


def _recipe(name: str, r: dict) -> str:
    n = len(r["folds"])
    return f"{name} ({n} fold{'s' if n > 1 else ''})"


def _mean_sd(d: dict) -> str:
    return fmt(d["mean"]) + (f" ± {fmt(d['sd'])}" if d.get("sd") is not None else "")


BUILDERS = [data_section, pretraining_section, reconstruction_section, prediction_section,
            forecasting_section, networks_section, attention_section, latent_section, benchmarks_section,
            provenance_section]
