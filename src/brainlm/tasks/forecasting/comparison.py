"""One call for the whole forecasting comparison: fine-tune, then score every method."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from brainlm.tasks.forecasting.baselines import BASELINES, BaselineSettings
from brainlm.tasks.forecasting.evaluate import ForecastResult, evaluate_run, write_outputs
from brainlm.tasks.forecasting.finetune import FinetuneSettings, finetune


def compare(checkpoint: str | Path, corpus: str | Path, out: str | Path, *,
            finetune_settings: FinetuneSettings | None = None,
            baseline_settings: BaselineSettings | None = None, baselines=BASELINES,
            stride: int | None = None, overwrite: bool = False, progress: bool = False) -> ForecastResult:
    """Fine-tune ``checkpoint`` to forecast on ``corpus`` (and train the same architecture from
    scratch with the same budget), then score it against the baselines on the test split.

    Writes ``out/finetune/`` (see :func:`~brainlm.tasks.forecasting.finetune.finetune`) and
    ``out/forecast.{json,md}`` (see :func:`~brainlm.tasks.forecasting.evaluate.evaluate`);
    ``brainlm.report.forecasting_figures`` draws the figure from ``forecast.json``.

    A fast version (55 s on 2 shared CPU cores with the tiny preset on the HCP sample)::

        compare(ckpt, corpus, out,
                finetune_settings=FinetuneSettings(epochs=2, crops_per_recording=8),
                baseline_settings=BaselineSettings(neural=NeuralTraining(epochs=2, crops_per_recording=8)))

    Returns
    -------
    ForecastResult
        The evaluation results (``forecast.json``) with the wall time of each stage in
        ``seconds``.
    """
    out = Path(out)
    t0 = time.perf_counter()
    finetune(checkpoint, corpus, out / "finetune", finetune_settings, overwrite=overwrite, progress=progress)
    t1 = time.perf_counter()
    results = evaluate_run(out / "finetune", corpus, out=None, baselines=baselines,
                           settings=baseline_settings, stride=stride, progress=progress)
    t2 = time.perf_counter()
    results = dataclasses.replace(results, seconds={"finetune": round(t1 - t0, 1), "evaluate": round(t2 - t1, 1),
                                                    "total": round(t2 - t0, 1)})
    write_outputs(results, out)
    return results
