"""``brainlm evaluate predict``: a phenotype predicted from a corpus by BrainLM (zero-shot and
fine-tuned) and by strong baselines, on the same subject-grouped folds.

Every method sees the same recordings (cleaned and scaled with the checkpoint's contract), the
same outer folds per seed, and tunes only on the outer training fold. Regression targets are
standardised with the training fold's mean and SD, so MSE is in units of the target's
variance. Each method is compared with the functional-connectivity + ridge (or logistic)
reference on the primary metric (MSE for regression, ROC-AUC for classification) with the
corrected resampled t-test over all (seed, fold) pairs.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.model.precision import PRECISIONS
from brainlm.tasks.model_input import (
    is_model, load_model, model_scaler, open_corpus, read_model_input, subject_keys)
from brainlm.tasks.prediction.baselines import (
    LSTMEstimator, TangentSpace, correlation_features, raw_pca_pipeline)
from brainlm.tasks.prediction.cv import (
    CLASSIFICATION_METRICS, PRIMARY, REGRESSION_METRICS, corrected_resampled_ttest, fold_metrics,
    grouped_folds, nested_search, scores_of, take)
from brainlm.tasks.prediction.estimator import BrainLMEmbedding
from brainlm.tasks.prediction.finetune import BrainLMFineTuner, FineTuneSchedule, LinearProbe
from brainlm.tasks.prediction.heads import head_name, make_head
from brainlm.tasks.prediction.targets import Target, check_cross_validation, load_target
from brainlm.tasks.results import TaskResult
from brainlm.tasks.results_folder import check_results_folder, publish_results

FAMILIES = ("BrainLM zero-shot", "BrainLM random weights", "baseline", "BrainLM fine-tuned")
#: Method groups accepted by ``methods=``.
GROUPS = ("zero_shot", "random", "baselines", "finetuned", "all")
ALPHA = 0.05


@dataclass(frozen=True)
class PredictionSettings:
    """How much cross-validation and training to do.

    Parameters
    ----------
    n_folds, inner_folds : int
        Outer folds (grouped by subject) and folds of the nested hyper-parameter search.
    seeds : tuple of int
        One outer split (and initialisation) per seed; results give mean and spread over seeds.
    deep_seeds : int
        The LSTM and the full / LoRA fine-tuning run on the first ``deep_seeds`` seeds only
        (they cost minutes per fold on a CPU); their spread is then over folds.
    lstm_epochs, finetune_epochs, probe_epochs : int
        Most epochs of the LSTM, of full / LoRA fine-tuning and of the linear probe.
    patience : int
        Early stopping: epochs without a lower validation loss (the probe uses 4x this).
    val_fraction : float
        Fraction of training subjects held out for early stopping.
    batch_size : int
        Windows per step (fine-tuning) and per forward pass (embeddings).
    lora_rank : int
    max_missing : float
        Largest fraction of recordings allowed without a target value.
    precision : str
        The BrainLM methods' forward passes and fine-tuning: ``32-true`` (default), ``bf16-mixed``
        or ``auto`` (:func:`brainlm.model.precision.resolve_precision`). Baselines run in float32/64.
    """

    n_folds: int = 5
    inner_folds: int = 3
    seeds: tuple[int, ...] = (0, 1, 2)
    deep_seeds: int = 1
    lstm_epochs: int = 30
    finetune_epochs: int = 10
    probe_epochs: int = 200
    patience: int = 3
    val_fraction: float = 0.2
    batch_size: int = 16
    lora_rank: int = 4
    max_missing: float = 0.5
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BrainLMInputError(f"precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise BrainLMInputError(f"seeds {self.seeds}; expected distinct integers")
        for name in ("deep_seeds", "lstm_epochs", "finetune_epochs", "probe_epochs", "patience",
                     "batch_size", "lora_rank"):
            if getattr(self, name) < 1:
                raise BrainLMInputError(f"{name} is {getattr(self, name)}; expected >= 1")
        if not 0 < self.val_fraction < 0.5:
            raise BrainLMInputError(f"val_fraction {self.val_fraction}; expected a fraction in (0, 0.5)")

    @classmethod
    def quick(cls) -> "PredictionSettings":
        """Small settings for a demo or a smoke test (3 folds, 1 seed, a few epochs)."""
        return cls(n_folds=3, inner_folds=2, seeds=(0,), deep_seeds=1, lstm_epochs=3,
                   finetune_epochs=1, probe_epochs=50, patience=2)


@dataclass(frozen=True)
class Method:
    """One row of the results table."""

    name: str
    family: str
    description: str
    group: str
    deep: bool = False


def method_catalogue(task: str) -> list[Method]:
    """Every method for ``task``, in table order."""
    lin, svm, knn = (head_name(k, task) for k in ("linear", "svm", "knn"))
    out = []
    for pool, what in (("cls", "CLS token"), ("mean", "mean of patch tokens")):
        for kind in (lin, svm, knn):
            out.append(Method(f"brainlm_{pool}_{kind}", FAMILIES[0],
                              f"pretrained encoder, {what}, window mean -> {kind}", "zero_shot"))
    for pool, what in (("cls", "CLS token"), ("mean", "mean of patch tokens")):
        out.append(Method(f"random_brainlm_{pool}_{lin}", FAMILIES[1],
                          f"same architecture, random weights, {what} -> {lin}", "random"))
    out += [
        Method(f"fc_correlation_{lin}", FAMILIES[2], f"FC (Pearson correlation) -> {lin}", "baselines"),
        Method(f"fc_tangent_{lin}", FAMILIES[2], f"FC (tangent space, fitted per training fold) -> {lin}",
               "baselines"),
        Method(f"raw_pca_{svm}", FAMILIES[2], f"first window, flattened -> PCA -> {svm}", "baselines"),
        Method("lstm", FAMILIES[2], "LSTM on windows, early stopping", "baselines", deep=True),
        Method("finetune_linear_probe", FAMILIES[3], "frozen encoder, linear head on [CLS, mean], "
               "early stopping", "finetuned"),
        Method("finetune_full", FAMILIES[3], "encoder and head trained, early stopping", "finetuned",
               deep=True),
        Method("finetune_lora", FAMILIES[3], "LoRA adapters on the encoder's linear layers + head, "
               "early stopping", "finetuned", deep=True),
    ]
    return out


def select_methods(task: str, methods=None) -> list[Method]:
    """Methods by name or group (``zero_shot``, ``random``, ``baselines``, ``finetuned``,
    ``all``); the FC reference is always included."""
    catalogue = method_catalogue(task)
    wanted = ["all"] if methods is None else ([methods] if isinstance(methods, str) else list(methods))
    names = {m.name for m in catalogue}
    chosen = set()
    for w in wanted:
        if w == "all":
            chosen |= names
        elif w in GROUPS:
            chosen |= {m.name for m in catalogue if m.group == w}
        elif w in names:
            chosen.add(w)
        else:
            raise BrainLMInputError(f"unknown method {w!r} for {task}; expected a group {GROUPS} "
                                    f"or one of {sorted(names)}")
    chosen.add(reference_name(task))
    return [m for m in catalogue if m.name in chosen]


def reference_name(task: str) -> str:
    """The FC + ridge (or logistic) reference every method is compared with."""
    return f"fc_correlation_{head_name('linear', task)}"


@dataclass
class _Inputs:
    """Everything the methods read, computed once (nothing here is fitted on targets)."""

    series: list[np.ndarray]
    model: BrainLM
    atlas: object
    settings: PredictionSettings
    transfer_atlas: bool
    device: str
    pretrained: dict = field(default_factory=dict)
    random: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    _correlation: np.ndarray | None = None

    def _timed(self, name: str, fn):
        t = time.perf_counter()
        value = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
        return value

    def correlation(self) -> np.ndarray:
        """(n, P (P - 1) / 2) correlation FC, computed once (it is per recording)."""
        if self._correlation is None:
            self._correlation = self._timed("fc_correlation", lambda: correlation_features(self.series))
        return self._correlation

    def embeddings(self, weights: str, seed: int) -> dict:
        """``cls``, ``mean`` (n, D) recording embeddings and ``windows`` (list of (W, 2 D))."""
        cache = self.pretrained if weights == "pretrained" else self.random.setdefault(seed, {})
        if not cache:
            emb = BrainLMEmbedding(self.model, pooling="both", weights=weights, random_state=seed,
                                   atlas=self.atlas, transfer_atlas=self.transfer_atlas,
                                   batch_size=self.settings.batch_size, device=self.device,
                                   precision=self.settings.precision)
            windows = self._timed(f"brainlm_{weights}_embeddings",
                                  lambda: emb.fit(self.series).transform_windows(self.series))
            d = self.model.config.dim
            rec = np.stack([w.mean(axis=0) for w in windows])
            cache.update(cls=rec[:, :d], mean=rec[:, d:], windows=windows)
        return cache


def _plan(method: Method, task: str, inputs: _Inputs, seed: int, n_train_min: int):
    """(X for all recordings, a feature step fitted per outer training fold or None, estimator,
    grid or None) of a method."""
    s = inputs.settings
    n = method.name
    if n.startswith(("brainlm_", "random_brainlm_")):
        weights = "random" if n.startswith("random_") else "pretrained"
        pool = "cls" if "_cls_" in n else "mean"
        kind = {"ridge": "linear", "logistic": "linear", "svr": "svm", "svc": "svm", "knn": "knn"}[n.rsplit("_", 1)[1]]
        pipe, grid = make_head(kind, task, n_train_min)
        return inputs.embeddings(weights, seed)[pool], None, pipe, grid
    if n.startswith("fc_correlation_"):
        pipe, grid = make_head("linear", task, n_train_min)
        return inputs.correlation(), None, pipe, grid
    if n.startswith("fc_tangent_"):
        pipe, grid = make_head("linear", task, n_train_min)
        return inputs.series, TangentSpace(), pipe, grid
    if n.startswith("raw_pca_"):
        pipe, grid = raw_pca_pipeline(task, n_train_min, inputs.model.config.window_trs)
        return inputs.series, None, pipe, grid
    common = dict(task=task, val_fraction=s.val_fraction, random_state=seed)
    if n == "lstm":
        return inputs.series, None, LSTMEstimator(window_trs=inputs.model.config.window_trs,
                                                  max_epochs=s.lstm_epochs, patience=s.patience + 2,
                                                  **common), None
    if n == "finetune_linear_probe":
        return (inputs.embeddings("pretrained", seed)["windows"], None,
                LinearProbe(max_epochs=s.probe_epochs, patience=4 * s.patience, **common), None)
    mode = {"finetune_full": "full", "finetune_lora": "lora"}[n]
    return inputs.series, None, BrainLMFineTuner(
        inputs.model, mode=mode,
        schedule=FineTuneSchedule(max_epochs=s.finetune_epochs, patience=s.patience, batch_size=s.batch_size),
        lora_rank=s.lora_rank, atlas=inputs.atlas, device=inputs.device,
        precision=s.precision, **common), None


def evaluate_prediction(checkpoint: str | Path | BrainLM, corpus: str | Path | Corpus, target: str, *,
                        task: str = "auto", methods=None, settings: PredictionSettings = PredictionSettings(),
                        split: str | None = None, transfer_atlas: bool = False, device: str = "cpu",
                        out: str | Path | None = None, overwrite: bool = False,
                        progress: bool | str = False) -> PredictionResult:
    """Predict ``target`` with every selected method under grouped, nested cross-validation.

    Parameters
    ----------
    checkpoint : path or BrainLM
        The pretrained checkpoint (``RUN/model``) or model.
    corpus : path or Corpus
        Prepared with the checkpoint's cleaning settings; ``target`` is a manifest column.
    target : str
        Column to predict (a phenotype such as ``age``).
    task : {"auto", "regression", "classification"}
        ``auto``: two distinct values -> binary classification, else regression.
    methods : str or list of str, optional
        Method names or groups (``zero_shot``, ``random``, ``baselines``, ``finetuned``,
        ``all``; default all). The FC + ridge/logistic reference is always run.
    settings : PredictionSettings
        Folds, seeds, epochs (``PredictionSettings.quick()`` for a fast run).
    split : {"train", "val", "test"}, optional
        Restrict to one split of the corpus (default: every recording).
    out : path, optional
        Folder for ``prediction.json``, ``prediction.md`` and ``predictions.parquet``
        (out-of-fold predictions), published only when everything succeeded.
    progress : {False, True, "folds"}
        Print to stderr one line per method and fold (``True``) or one line per fold with the
        reference and the best method (``"folds"``).

    Returns
    -------
    PredictionResult (the JSON): target, settings, methods, summary (mean and spread over seeds per
    metric), comparison with the reference, folds (test subjects per seed and fold), fits
    (per seed, fold and method: metrics, chosen hyper-parameters, subjects on every side of
    every split used), timings.
    """
    t0 = time.perf_counter()
    if progress not in (False, True, "folds"):
        raise BrainLMInputError(f"progress is {progress!r}; expected False, True or 'folds'")
    out = check_results_folder(out, overwrite)
    corpus = open_corpus(corpus)
    rows = None if split is None else corpus.split_indices(split)
    tgt = load_target(corpus.manifest, target, task=task, rows=rows, max_missing=settings.max_missing,
                      source=corpus.path)
    chosen = select_methods(tgt.task, methods)
    model = load_model(checkpoint, device)
    scaler = model_scaler(model, corpus, transfer_atlas=transfer_atlas)
    tgt, too_short = _with_a_full_window(tgt, corpus, model.config.window_trs)
    groups = subject_keys(corpus, tgt.rows)
    check_cross_validation(tgt, groups, settings.n_folds, settings.inner_folds, source=corpus.path)
    series = read_model_input(corpus, tgt.rows, scaler)
    inputs = _Inputs(series, model, corpus.atlas, settings, transfer_atlas, device)
    result = _cross_validate(chosen, tgt, groups, inputs, progress)
    m = corpus.manifest
    result = {
        "task": "prediction",
        "checkpoint": None if is_model(checkpoint) else str(checkpoint),
        "corpus": corpus.path, "split": split or "all",
        "target": {**tgt.describe(), "recordings_too_short": too_short},
        "subjects": int(len(set(groups))), "recordings": int(len(tgt.rows)),
        "settings": {**asdict(settings), "seeds": list(settings.seeds)},
        "standardisation": ("regression targets standardised with each outer training fold's mean "
                            "and SD; MSE is in units of that SD squared" if tgt.task == "regression"
                            else None),
        "test": "corrected resampled t-test (Nadeau & Bengio 2003) over (seed, fold) pairs, two-sided",
        **result,
    }
    oof = result.pop("_predictions")
    oof.insert(3, "recording_id", m["recording_id"].to_numpy()[tgt.rows][oof.pop("index").to_numpy()])
    result = PredictionResult.from_json({**result, "seconds": round(time.perf_counter() - t0, 1)})
    if out is not None:
        # Subjects per side of every split stay in the returned result (for audits and tests); the
        # JSON keeps each outer fold's test subjects, from which the rest follows by seed.
        slim = dataclasses.replace(result, fits=[{k: v for k, v in f.items() if k != "subjects"}
                                                 for f in result.fits])
        publish_results(out, {"prediction.json": slim.dumps(indent=1),
                              "prediction.md": prediction_markdown(result),
                              "predictions.parquet": oof})
    return result


def _with_a_full_window(tgt: Target, corpus: Corpus, window_trs: int) -> tuple[Target, int]:
    """The target restricted to recordings with at least one full model window, and how many
    recordings that left out."""
    long_enough = corpus.manifest["n_trs"].to_numpy()[tgt.rows] >= window_trs
    kept = Target(tgt.column, tgt.task, tgt.values[long_enough], tgt.rows[long_enough], tgt.classes,
                  tgt.n_missing)
    return kept, int((~long_enough).sum())


@dataclass(frozen=True)
class PredictionResult(TaskResult):
    """What :func:`evaluate_prediction` returns and writes as ``prediction.json``: the target,
    settings, ``methods`` (name, family, seeds...), ``summary`` (per method and metric: the mean
    and spread over seeds and folds), ``comparison`` with the ``reference`` (per method: mean
    difference, p and verdict), ``folds`` (test subjects per seed and fold), ``fits`` (per seed,
    fold and method: metrics, chosen hyper-parameters and, in the returned result only, the
    subjects on every side of every split used) and timings."""

    KIND: ClassVar[str] = "prediction"

    task: str
    checkpoint: str | None
    corpus: str
    split: str
    target: dict
    subjects: int
    recordings: int
    settings: dict
    standardisation: str | None
    test: str
    methods: list[dict]
    reference: str
    primary_metric: str
    higher_is_better: bool
    metrics: list[str]
    summary: dict[str, dict]
    comparison: dict[str, dict]
    timing_seconds: dict[str, float]
    shared_feature_seconds: dict[str, float]
    folds: list[dict]
    fits: list[dict]
    seconds: float

    def mean(self, method: str, metric: str | None = None) -> float | None:
        """The mean over seeds and folds of ``metric`` (default: the primary one) for ``method``."""
        return self.summary[method][metric or self.primary_metric]["mean"]


def _fit_fold(method: Method, tgt: Target, groups: np.ndarray, y: np.ndarray, tr: np.ndarray,
              te: np.ndarray, inner, inputs: _Inputs, seed: int) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Fit one method on an outer training fold and predict its test fold.

    Returns (record, predictions, scores); the record holds the fold metrics, the chosen
    hyper-parameters and the subjects on every side of every split that was used.
    """
    classification = tgt.task == "classification"
    t, shared = time.perf_counter(), sum(inputs.seconds.values())
    n_train_min = min(len(a) for a, _ in inner)
    X, step, est, grid = _plan(method, tgt.task, inputs, seed, n_train_min)
    X_tr, X_te = take(X, tr), take(X, te)
    if step is not None:  # fitted on the outer training fold only
        X_tr = step.fit_transform(X_tr)
        X_te = step.transform(X_te)
    if grid is not None:
        search = nested_search(est, grid, X_tr, y[tr], inner)
        fitted, chosen = search.best_estimator_, _plain_params(search.best_params_)
        sides = [(groups[tr][a], groups[tr][b]) for a, b in inner]
    else:
        fitted = est.fit(X_tr, y[tr], groups=groups[tr])
        chosen = {"early_stopping": fitted.log_.to_dict()}
        sides = [(fitted.train_groups_, fitted.validation_groups_)]
    pred, score = scores_of(fitted, X_te, classification)
    record = {"method": method.name, "metrics": fold_metrics(y[te], pred, score, classification),
              "hyperparameters": chosen,
              # Shared features (embeddings, correlation FC) are timed once, separately.
              "seconds": round(time.perf_counter() - t - (sum(inputs.seconds.values()) - shared), 2),
              "n_train": int(len(tr)), "n_test": int(len(te)),
              "subjects": {"train": sorted(set(groups[tr])), "test": sorted(set(groups[te])),
                           "inner": [[sorted(set(a)), sorted(set(b))] for a, b in sides]}}
    return record, pred, score


def _print_fold(fold_fits: list[dict], tgt: Target, seed: int, k: int, n_folds: int) -> None:
    """One line for a finished outer fold: the reference's score and the best method's."""
    primary, higher = PRIMARY[tgt.task]
    scores = {f["method"]: f["metrics"][primary] for f in fold_fits if primary in f["metrics"]}
    ref = reference_name(tgt.task)
    best = (max if higher else min)(scores, key=scores.get)
    seconds = sum(f["seconds"] for f in fold_fits)
    print(f"{tgt.column}: seed {seed} fold {k + 1}/{n_folds}: {len(fold_fits)} methods in {seconds:.0f} s; "
          f"{primary} {ref} {scores.get(ref, float('nan')):.3f}, best {best} {scores[best]:.3f}",
          file=sys.stderr, flush=True)


def _cross_validate(methods: list[Method], tgt: Target, groups: np.ndarray, inputs: _Inputs,
                    progress: bool | str) -> dict:
    s = inputs.settings
    classification = tgt.task == "classification"
    metric_names = CLASSIFICATION_METRICS if classification else REGRESSION_METRICS
    deep_seeds = set(s.seeds[:s.deep_seeds])
    fits, folds, oof, timing = [], [], [], {m.name: 0.0 for m in methods}
    for seed in s.seeds:
        for k, (tr, te) in enumerate(grouped_folds(groups, tgt.values, s.n_folds, seed, classification)):
            folds.append({"seed": seed, "fold": k, "test_subjects": sorted(set(groups[te]))})
            fold_start = len(fits)
            if classification:
                y = tgt.values.astype(np.int64)
            else:
                y = (tgt.values - tgt.values[tr].mean()) / tgt.values[tr].std(ddof=1)
            inner = grouped_folds(groups[tr], y[tr], s.inner_folds, seed, classification)
            for method in methods:
                if method.deep and seed not in deep_seeds:
                    continue
                record, pred, score = _fit_fold(method, tgt, groups, y, tr, te, inner, inputs, seed)
                fits.append({"seed": seed, "fold": k, **record})
                timing[method.name] += record["seconds"]
                oof.append(pd.DataFrame({
                    "seed": seed, "fold": k, "method": method.name, "index": te, "subject": groups[te],
                    "y_true": tgt.values[te],
                    "y_true_standardised": np.nan if classification else y[te],
                    "prediction": pred.astype(np.float64),
                    "score": np.nan if score is None else score}))
                if progress is True:
                    shown = ", ".join(f"{name} {v:.3f}" for name, v in record["metrics"].items())
                    print(f"seed {seed} fold {k + 1}/{s.n_folds} {method.name}: {shown} "
                          f"({record['seconds']:.1f} s)", file=sys.stderr, flush=True)
            if progress == "folds":
                _print_fold(fits[fold_start:], tgt, seed, k, s.n_folds)
    ref = reference_name(tgt.task)
    primary, higher = PRIMARY[tgt.task]
    summary = {m.name: _summarise([f for f in fits if f["method"] == m.name], metric_names)
               for m in methods}
    comparison = {m.name: _compare([f for f in fits if f["method"] == m.name],
                                   [f for f in fits if f["method"] == ref], primary, higher)
                  for m in methods if m.name != ref}
    return {
        "methods": [{**asdict(m), "seeds": [x for x in s.seeds if not m.deep or x in deep_seeds]}
                    for m in methods],
        "reference": ref, "primary_metric": primary, "higher_is_better": higher,
        "metrics": list(metric_names), "summary": summary, "comparison": comparison,
        "timing_seconds": {k: round(v, 1) for k, v in timing.items()},
        "shared_feature_seconds": {k: round(v, 1) for k, v in inputs.seconds.items()},
        "folds": folds, "fits": fits, "_predictions": pd.concat(oof, ignore_index=True),
    }


def _plain_params(params: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}


def _nan_to_none(v: float):
    return None if v is None or not np.isfinite(v) else float(v)


def _summarise(fits: list[dict], metric_names) -> dict:
    """Per metric: mean over seeds of the per-seed fold means, SD over seeds, SD over folds."""
    out = {}
    seeds = sorted({f["seed"] for f in fits})
    for name in metric_names:
        per_seed = [np.nanmean([f["metrics"][name] for f in fits if f["seed"] == s]) for s in seeds]
        values = np.array([f["metrics"][name] for f in fits], dtype=np.float64)
        out[name] = {"mean": _nan_to_none(np.mean(per_seed)),
                     "sd_seeds": _nan_to_none(np.std(per_seed, ddof=1)) if len(seeds) > 1 else None,
                     "sd_folds": _nan_to_none(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else None,
                     "per_seed": [_nan_to_none(v) for v in per_seed]}
    return out


def _compare(fits: list[dict], ref_fits: list[dict], metric: str, higher: bool) -> dict:
    """Paired (seed, fold) differences method - reference, corrected resampled t-test."""
    ref = {(f["seed"], f["fold"]): f for f in ref_fits}
    pairs = [(f, ref[(f["seed"], f["fold"])]) for f in fits if (f["seed"], f["fold"]) in ref]
    diffs = [a["metrics"][metric] - b["metrics"][metric] for a, b in pairs]
    n_train = np.mean([a["n_train"] for a, _ in pairs])
    n_test = np.mean([a["n_test"] for a, _ in pairs])
    test = corrected_resampled_ttest(diffs, n_train, n_test)
    verdict = "no significant difference"
    if test["p"] is not None and test["p"] < ALPHA and test["mean_difference"] != 0:
        better = (test["mean_difference"] > 0) == higher
        verdict = "better than the reference" if better else "worse than the reference"
    test = {k: _nan_to_none(v) if isinstance(v, float) else v for k, v in test.items()}
    return {"metric": metric, **test, "verdict": verdict}


def _cell(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    spread = stat["sd_seeds"] if stat["sd_seeds"] is not None else stat["sd_folds"]
    return f"{stat['mean']:.3f}" + (f" ± {spread:.3f}" if spread is not None else "")


def prediction_markdown(result: dict) -> str:
    """The summary table and the comparison with the reference, as Markdown."""
    t, metrics = result["target"], result["metrics"]
    s = result["settings"]
    lines = [
        f"Prediction of `{t['column']}` ({t['task']}) from `{result['corpus']}`: "
        f"{result['recordings']} recordings of {result['subjects']} subjects; {s['n_folds']} outer "
        f"folds grouped by subject x {len(s['seeds'])} seed(s), hyper-parameters by "
        f"{s['inner_folds']}-fold grouped search inside each training fold. Mean ± SD over seeds "
        "(over folds where a method ran on one seed). "
        f"Δ = method − `{result['reference']}` on {result['primary_metric']} "
        f"({'higher' if result['higher_is_better'] else 'lower'} is better), {result['test']}.",
        "",
        "| method | family | " + " | ".join(metrics) + " | Δ | p | verdict |",
        "|---|---|" + "---:|" * len(metrics) + "---:|---:|---|",
    ]
    for m in result["methods"]:
        name = m["name"]
        cells = [_cell(result["summary"][name][k]) for k in metrics]
        c = result["comparison"].get(name)
        if c is None:
            extra = ["—", "—", "reference"]
        else:
            extra = ["n/a" if c["mean_difference"] is None else f"{c['mean_difference']:+.3f}",
                     "n/a" if c["p"] is None else f"{c['p']:.3g}", c["verdict"]]
        lines.append(f"| {name} | {m['family']} | " + " | ".join(cells + extra) + " |")
    lines += ["", headline(result)]
    return "\n".join(lines) + "\n"


def best_brainlm_method(result: dict) -> str | None:
    """The BrainLM method (zero-shot or fine-tuned) with the best mean primary metric in an
    :func:`evaluate_prediction` result, or None when none was scored."""
    primary, sign = result["primary_metric"], 1 if result["higher_is_better"] else -1
    brainlm = [m["name"] for m in result["methods"]
               if m["family"] in (FAMILIES[0], FAMILIES[3]) and result["summary"][m["name"]][primary]["mean"] is not None]
    return max(brainlm, key=lambda n: sign * result["summary"][n][primary]["mean"]) if brainlm else None


def headline(result: dict) -> str:
    """One sentence: the best BrainLM method against the FC reference."""
    primary, ref = result["primary_metric"], result["reference"]
    best = best_brainlm_method(result)
    if best is None:
        return f"No BrainLM method was run; reference `{ref}` only."
    b, r = result["summary"][best][primary]["mean"], result["summary"][ref][primary]["mean"]
    c = result["comparison"][best]
    return (f"Best BrainLM method: `{best}` with {primary} {b:.3f} against {r:.3f} for `{ref}` "
            f"({c['verdict']}, p = {c['p']:.3g})." if c["p"] is not None else
            f"Best BrainLM method: `{best}` with {primary} {b:.3f} against {r:.3f} for `{ref}`.")
