"""Score forecasters on the same deterministic test windows, step by step.

Every method (the baselines, and BrainLM fine-tuned, from scratch and zero-shot) is fitted on
the training split and predicts the ``horizon_trs`` TRs after the first ``context_trs`` TRs of
every test tile. Metrics per predicted step ``s = 1..horizon_trs``, pooled as follows:

* ``mse``: mean squared error over all test windows x parcels at step ``s``;
* ``r2``: ``1 - SSE / SST`` over all test windows x parcels at step ``s``, SST around the mean
  of those target values (``sklearn.metrics.r2_score`` on the flattened values);
* ``pearson_r``: for each window, Pearson's r between the predicted and the true values across
  parcels at step ``s`` (the spatial pattern of the brain state), averaged over windows.

Every method sees the same windows, read through :mod:`brainlm.tasks.model_input`: with BrainLM
models, the corpus must be cleaned like their pretraining data and is scaled with their
checkpoint's statistics (:func:`~brainlm.tasks.model_input.model_scaler`); baselines alone see
the corpus' own scaling.

Outputs: ``forecast.json`` (machine-readable) and ``forecast.md`` (tables), each written
atomically after every method has been scored. Figures are drawn from ``forecast.json`` by
:mod:`brainlm.report.forecasting_figures`.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import r2_score

from brainlm.data.atomic import write_json, write_text_atomic
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError
from brainlm.tasks.forecasting.api import BrainLMForecaster
from brainlm.tasks.forecasting.baselines import BASELINES, BaselineSettings, make_baseline
from brainlm.tasks.forecasting.carry import carry_label
from brainlm.tasks.forecasting.finetune import FORMAT as RUN_FORMAT
from brainlm.tasks.forecasting.windows import check_lengths, forecast_windows, split_recordings
from brainlm.tasks.model_input import model_scaler
from brainlm.tasks.results import Record, TaskResult

FORMAT = "brainlm-forecast-evaluation"
METRICS = ("mse", "r2", "pearson_r")
#: Human-readable names of the methods in tables and figures.
LABELS = {
    "brainlm_finetuned": "BrainLM fine-tuned",
    "brainlm_scratch": "BrainLM from scratch",
    "brainlm_pretrained": "BrainLM pretrained, zero-shot",
    "persistence": "persistence",
    "context_mean": "context mean",
    "ar": "AR(p) per parcel",
    "var": "ridge VAR",
    "lstm": "LSTM",
    "neural_ode": "neural ODE",
}
POOLING = {
    "mse": "mean squared error over all test windows x parcels at each step (model input units)",
    "r2": "1 - SSE/SST over all test windows x parcels at each step, SST around the mean of those "
          "target values (sklearn r2_score on the flattened values)",
    "pearson_r": "Pearson r between predicted and true values across parcels, per window and step, "
                 "averaged over windows",
}


def step_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step forecast metrics (pooled as in the module docstring).

    Parameters
    ----------
    prediction, target : ndarray, shape (W, H, P)

    Returns
    -------
    dict of ``mse``, ``r2``, ``pearson_r``: ndarray (H,) each.
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if prediction.shape != target.shape or prediction.ndim != 3:
        raise BrainLMInputError(f"prediction {prediction.shape} and target {target.shape} must have the "
                                "same shape (windows, steps, parcels)")
    if not np.isfinite(prediction).all():
        raise BrainLMInputError("prediction has non-finite values")
    mse = ((prediction - target) ** 2).mean(axis=(0, 2))
    r2 = np.array([r2_score(target[:, s].ravel(), prediction[:, s].ravel())
                   for s in range(target.shape[1])])
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # A constant predicted pattern has no correlation (NaN); it is left out of the mean.
        warnings.simplefilter("ignore")
        r = pearsonr(prediction, target, axis=2).statistic  # (W, H)
        pearson = np.nanmean(r, axis=0)
    return {"mse": mse, "r2": r2, "pearson_r": pearson}


def evaluate(corpus, *, context_trs: int, horizon_trs: int, models: dict | None = None,
             baselines=BASELINES, settings: BaselineSettings | None = None, split: str = "test",
             stride: int | None = None, max_train_recordings: int | None = None,
             out: str | Path | None = None, progress: bool = False) -> ForecastResult:
    """Fit the baselines on the training split and score every method on the ``split`` windows.

    Parameters
    ----------
    corpus : Corpus or path
    context_trs, horizon_trs : int
        The first ``context_trs`` TRs of each tile are the input, the next ``horizon_trs`` the
        target. Tiles of ``context_trs + horizon_trs`` TRs start every ``stride`` TRs (default
        ``horizon_trs``: a rolling origin, so every TR after a recording's first context is a
        target exactly once).
    models : dict name -> BrainLM forecaster, optional
        Already fine-tuned BrainLM models (``BrainLMForecaster`` or checkpoint folders); run at
        window ``context_trs + step`` and rolled out when ``horizon_trs`` exceeds their step.
        The corpus must be on their atlas and cleaned like their pretraining data; every
        method then sees it scaled with their checkpoint's statistics (all models must share
        them).
    baselines : sequence of str
        Any of ``persistence``, ``context_mean``, ``ar``, ``var``, ``lstm``, ``neural_ode``.
    settings : BaselineSettings
        Orders, sizes and training of the baselines (small values give a fast run).
    max_train_recordings : int, optional
        Fit the baselines on the first N training recordings only (they are held in memory).
    out : folder, optional
        Where to write ``forecast.json`` and ``forecast.md``.

    Returns
    -------
    ForecastResult
        The content of ``forecast.json``.
    """
    results = _evaluate(corpus, context_trs, horizon_trs, models, baselines, settings, split, stride,
                        max_train_recordings, progress)
    result = ForecastResult.from_json(results)
    if out is not None:
        write_outputs(result, out)
    return result


def _evaluate(corpus, context_trs: int, horizon_trs: int, models: dict | None, baselines,
              settings: BaselineSettings | None, split: str, stride: int | None,
              max_train_recordings: int | None, progress: bool) -> dict:
    """:func:`evaluate`'s numbers as the JSON mapping (a run's fine-tuning facts are added to it
    by :func:`evaluate_run` before it is typed)."""
    data = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    settings = settings or BaselineSettings()
    check_lengths(context_trs, horizon_trs, source=data.path)
    stride = horizon_trs if stride is None else stride
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise BrainLMInputError(f"unknown baseline(s) {unknown}; expected some of {list(BASELINES)}")
    forecasters, scaler = {}, None
    for name, m in (models or {}).items():
        f = m if isinstance(m, BrainLMForecaster) else BrainLMForecaster(
            m, horizon_trs, context_trs=context_trs, name=name)
        scaler = _shared_scaler(scaler, model_scaler(f.model, data), name, data.path)
        forecasters[name] = f
    test = forecast_windows(data, context_trs, horizon_trs, split=split, stride=stride, scaler=scaler)
    try:
        v = forecast_windows(data, context_trs, horizon_trs, split="val", stride=stride, scaler=scaler)
        val = (v.context, v.target)
    except BrainLMInputError:
        val = None  # no validation split, or too short: the neural baselines keep their last epoch
    train = None
    if baselines:
        train = split_recordings(data, "train", min_trs=2, max_recordings=max_train_recordings,
                                 scaler=scaler)
    for name in baselines:
        forecasters[name] = make_baseline(name, context_trs, horizon_trs, settings)
    methods = {name: _score_method(name, f, train, val, test, brainlm=name in (models or {}), progress=progress)
               for name, f in forecasters.items()}
    results = {
        "format": FORMAT, "corpus": data.path, "split": split, "context_trs": context_trs,
        "horizon_trs": horizon_trs, "tr_s": data.tr, "stride_trs": stride,
        "n_windows": test.n_windows, "n_parcels": int(test.context.shape[2]),
        "n_test_recordings": len(set(test.recording_ids)),
        "n_train_recordings": len(train) if train is not None else None,
        "units": "model input units: robust-scaled (x - median) / IQR per parcel, "
                 + ("the checkpoint's pretraining statistics" if scaler is not None
                    else "training-split statistics"),
        "pooling": POOLING, "baseline_settings": asdict(settings),
        "methods": methods, "best_by_step": _best_by_step(methods, horizon_trs),
    }
    results["summary"] = summarize(results)
    return results


def _score_method(name: str, f, train, val, test, *, brainlm: bool, progress: bool) -> dict:
    """Fit one forecaster on the training split (``val`` for early stopping) and score it on
    the test windows, per step, with its fit and prediction times."""
    if progress:
        print(f"forecast: {LABELS.get(name, name)} ...", flush=True)
    t0 = time.perf_counter()
    f.fit(train, val)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = f.predict(test.context)
    predict_s = time.perf_counter() - t0
    m = step_metrics(pred, test.target)
    return {
        "label": method_label(name, f),
        "kind": "brainlm" if brainlm else "baseline",
        **{k: [round(float(x), 6) for x in m[k]] for k in METRICS},
        "mean": {k: round(float(np.mean(m[k])), 6) for k in METRICS},
        "fit_seconds": round(fit_s, 3),
        "predict_ms_per_window": round(1000 * predict_s / test.n_windows, 3),
        "details": f.describe(),
    }


@dataclass(frozen=True)
class ForecastMethod(Record):
    """One method's scores per predicted step (lists of ``horizon_trs``) and their means."""

    label: str
    kind: str
    mse: list[float]
    r2: list[float]
    pearson_r: list[float]
    mean: dict[str, float]
    fit_seconds: float
    predict_ms_per_window: float
    details: dict
    #: Set when the fit time is that of another run (``finetune.json``), not measured here.
    fit_seconds_from: str | None = None


@dataclass(frozen=True)
class ForecastResult(TaskResult):
    """What :func:`evaluate` (and :func:`evaluate_run`, ``compare``) return and write as
    ``forecast.json``. ``finetune`` is the fine-tuning run's facts (from :func:`evaluate_run`),
    ``seconds`` the wall time of each stage (from ``compare``); both None otherwise."""

    KIND: ClassVar[str] = "forecast"

    format: str
    corpus: str
    split: str
    context_trs: int
    horizon_trs: int
    tr_s: float
    stride_trs: int
    n_windows: int
    n_parcels: int
    n_test_recordings: int
    n_train_recordings: int | None
    units: str
    pooling: dict[str, str]
    baseline_settings: dict
    methods: dict[str, ForecastMethod]
    best_by_step: dict[str, list[str]]
    summary: str
    finetune: dict | None = None
    seconds: dict | None = None

    def best(self, kind: str) -> str:
        """The method of ``kind`` (``brainlm`` or ``baseline``) with the lowest mean MSE."""
        names = [n for n, m in self.methods.items() if m.kind == kind]
        return min(names, key=lambda n: self.methods[n].mean["mse"])


def evaluate_run(run: str | Path, corpus, out: str | Path | None = None, *, horizon_trs: int | None = None,
                 zero_shot: bool = True, **kwargs) -> ForecastResult:
    """:func:`evaluate` with the models of a ``finetune`` run folder.

    The fine-tuned model, the scratch model (when trained) and, with ``zero_shot``, the
    pretrained checkpoint it started from (run with the future mask, without fine-tuning). The
    context comes from the run; ``horizon_trs`` defaults to the run's (a longer one is rolled
    out).
    """
    run = Path(run)
    info_path = run / "finetune.json"
    if not info_path.is_file():
        raise BrainLMInputError("not a forecast fine-tuning folder (no finetune.json)", str(run))
    info = json.loads(info_path.read_text())
    if info.get("format") != RUN_FORMAT:
        raise BrainLMInputError(f"finetune.json has format {info.get('format')!r}; expected {RUN_FORMAT!r}",
                                str(run))
    s = info["settings"]
    models = {"brainlm_finetuned": run / "model"}
    if (run / "scratch").is_dir():
        models["brainlm_scratch"] = run / "scratch"
    if zero_shot and (Path(info["checkpoint"]) / "config.json").is_file():
        h = horizon_trs or s["horizon_trs"]
        models["brainlm_pretrained"] = BrainLMForecaster(
            info["checkpoint"], h, context_trs=s["context_trs"], step_trs=s["horizon_trs"],
            name="brainlm_pretrained")
    options = {"baselines": BASELINES, "settings": None, "split": "test", "stride": None,
               "max_train_recordings": None, "progress": False}
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise BrainLMInputError(f"unknown option(s) {unknown} of evaluate_run; expected some of {sorted(options)}")
    options.update(kwargs)
    results = _evaluate(corpus, s["context_trs"], horizon_trs or s["horizon_trs"], models, **options)
    results["finetune"] = {k: info[k] for k in ("checkpoint", "settings", "window_trs")}
    results["finetune"]["models"] = {
        k: {f: v[f] for f in ("best_val_mse", "val_mse_before", "best_epoch", "fit_seconds",
                              "train_seconds_per_epoch")}
        for k, v in info["models"].items()}
    # These two were trained by `forecast finetune`, not here: their fit time is that run's.
    for run_key, name in (("finetuned", "brainlm_finetuned"), ("scratch", "brainlm_scratch")):
        if name in results["methods"] and run_key in info["models"]:
            results["methods"][name]["fit_seconds"] = info["models"][run_key]["fit_seconds"]
            results["methods"][name]["fit_seconds_from"] = "finetune.json"
    result = ForecastResult.from_json(results)
    if out is not None:
        write_outputs(result, out)
    return result


def method_label(name: str, forecaster) -> str:
    """The name shown for a method: ``LABELS`` (of the part of ``name`` before a ``:``, so
    ``brainlm_finetuned:var`` reads as the fine-tuned model), with a BrainLM model's carry path
    (:data:`~brainlm.tasks.forecasting.carry.CARRY_LABELS`) when it has one, so no result of a
    carry model reads as the plain model's."""
    label = LABELS.get(name.split(":")[0], name)
    carry = carry_label(getattr(forecaster, "model", None))
    return label if carry is None else f"{label} + {carry}"


def _best_by_step(methods: dict, horizon: int) -> dict:
    best = {}
    for k in METRICS:
        sign = 1 if k == "mse" else -1  # lower MSE, higher R^2 and r are better
        best[k] = [min(methods, key=lambda n: sign * methods[n][k][s]) for s in range(horizon)]
    return best


def summarize(results: dict) -> str:
    """One honest paragraph: who wins where, and how BrainLM compares with the best baseline."""
    methods, h = results["methods"], results["horizon_trs"]
    by_step = results["best_by_step"]["mse"]
    runs, start = [], 0
    for s in range(1, h + 1):
        if s == h or by_step[s] != by_step[start]:
            span = f"step {start + 1}" if s - 1 == start else f"steps {start + 1}-{s}"
            runs.append(f"{methods[by_step[start]]['label']} ({span})")
            start = s
    text = [f"Lowest MSE per step: {', '.join(runs)}."]
    baselines = [n for n, m in methods.items() if m["kind"] == "baseline"]
    ours = [n for n, m in methods.items() if m["kind"] == "brainlm"]
    if baselines and ours:
        for name in ours:
            wins = sum(methods[name]["mse"][s] < min(methods[b]["mse"][s] for b in baselines) for s in range(h))
            best_b = min(baselines, key=lambda b: methods[b]["mean"]["mse"])
            text.append(f"{methods[name]['label']} beats every baseline at {wins} of {h} steps (mean MSE "
                        f"{methods[name]['mean']['mse']:.4f} vs {methods[best_b]['mean']['mse']:.4f} for "
                        f"the best baseline, {methods[best_b]['label']}).")
    return " ".join(text)


def markdown(results: dict) -> str:
    """Tables: the mean over steps per method, then MSE, R^2 and r at every step."""
    methods = results["methods"]
    names = list(methods)
    lines = [f"# Forecasting: {results['context_trs']} TRs -> {results['horizon_trs']} TRs",
             "",
             f"Corpus `{results['corpus']}`, split `{results['split']}`: {results['n_windows']} windows "
             f"from {results['n_test_recordings']} recording(s), {results['n_parcels']} parcels, TR "
             f"{results['tr_s']} s; units: {results['units']}.",
             "",
             results["summary"], "",
             "| method | mean MSE | mean R^2 | mean r | MSE step 1 | MSE step "
             f"{results['horizon_trs']} | fit s | predict ms/window |",
             "|---|---|---|---|---|---|---|---|"]
    best_mean = min(names, key=lambda n: methods[n]["mean"]["mse"])
    for n in names:
        m = methods[n]
        label = f"**{m['label']}**" if n == best_mean else m["label"]
        lines.append(f"| {label} | {m['mean']['mse']:.4f} | {m['mean']['r2']:.4f} | "
                     f"{m['mean']['pearson_r']:.4f} | {m['mse'][0]:.4f} | {m['mse'][-1]:.4f} | "
                     f"{m['fit_seconds']:.1f} | {m['predict_ms_per_window']:.2f} |")
    for k, title in (("mse", "MSE (lower is better)"), ("r2", "R^2 (higher is better)"),
                     ("pearson_r", "Pearson r across parcels (higher is better)")):
        lines += ["", f"## {title} per predicted step", "", f"Pooling: {results['pooling'][k]}.", "",
                  "| step | " + " | ".join(methods[n]["label"] for n in names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for s in range(results["horizon_trs"]):
            best = results["best_by_step"][k][s]
            cells = [f"**{methods[n][k][s]:.4f}**" if n == best else f"{methods[n][k][s]:.4f}" for n in names]
            lines.append(f"| {s + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out: str | Path) -> None:
    """``forecast.md`` and ``forecast.json`` in ``out`` (each atomic; the JSON last, so its
    presence means the set is complete). Numbers only: the figure is drawn from the JSON by
    ``brainlm.report.forecasting_figures``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "forecast.md", markdown(results))
    write_json(out / "forecast.json", results)


def _shared_scaler(scaler: PreprocessingContract | None, mine: PreprocessingContract, name: str,
                   source: str) -> PreprocessingContract:
    """The one scaling every method sees: all BrainLM models compared must share it."""
    if scaler is None or mine.to_dict() == scaler.to_dict():
        return mine
    raise BrainLMInputError(f"model {name!r} scales the corpus with other statistics than the models "
                            "before it (different pretraining data); evaluate them separately", source)
