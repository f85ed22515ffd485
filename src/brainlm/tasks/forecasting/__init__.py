"""Future brain-state forecasting: fine-tune BrainLM with the future mask and compare it, step by
step, with persistence, the context mean, parcel-wise AR(p), ridge VAR, LSTM, a neural ODE and the same
architecture trained from scratch.

Main entry points: :func:`finetune`, :func:`evaluate` / :func:`evaluate_run`, :func:`compare`
(both in one call), :func:`forecast` (``forecast(model, recording, horizon)``).
"""

from brainlm.tasks.forecasting.api import BrainLMForecaster, forecast, load_forecaster, predict_future
from brainlm.tasks.forecasting.baselines import (BASELINES, BaselineSettings, ContextMean, LSTMForecaster,
                                                 NeuralODEForecaster, NeuralTraining, ParcelAR,
                                                 Persistence, RidgeVAR, make_baseline)
from brainlm.tasks.forecasting.comparison import compare
from brainlm.tasks.forecasting.evaluate import ForecastResult, evaluate, evaluate_run, step_metrics
from brainlm.tasks.forecasting.finetune import FinetuneSettings, finetune
from brainlm.tasks.forecasting.windows import ForecastWindows, check_lengths, forecast_windows

__all__ = ["BASELINES", "BaselineSettings", "BrainLMForecaster", "ContextMean", "FinetuneSettings", "ForecastResult",
           "ForecastWindows", "LSTMForecaster", "NeuralODEForecaster", "NeuralTraining", "ParcelAR", "Persistence",
           "RidgeVAR", "check_lengths", "compare", "evaluate", "evaluate_run", "finetune", "forecast",
           "forecast_windows", "load_forecaster", "make_baseline", "predict_future", "step_metrics"]
