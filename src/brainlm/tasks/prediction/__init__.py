"""Phenotype prediction from fMRI: BrainLM embeddings and fine-tuned heads against strong
baselines, under subject-grouped nested cross-validation.

* :class:`BrainLMEmbedding` — scikit-learn transformer: recordings -> embeddings;
* :class:`BrainLMFineTuner`, :class:`LinearProbe` — heads on the encoder (full, LoRA, probe);
* :class:`LSTMEstimator`, :class:`TangentSpace`, :func:`correlation_features`,
  :func:`raw_pca_pipeline` — baselines;
* :func:`evaluate_prediction` with :class:`PredictionSettings` — the whole comparison.
"""

from brainlm.tasks.prediction.baselines import (
    LSTMEstimator, TangentSpace, connectivity_measure, correlation_features, raw_pca_pipeline)
from brainlm.tasks.prediction.cv import corrected_resampled_ttest, grouped_folds, subject_leaks
from brainlm.tasks.prediction.estimator import BrainLMEmbedding
from brainlm.tasks.prediction.evaluate import (
    PredictionResult, PredictionSettings, evaluate_prediction, method_catalogue, prediction_markdown)
from brainlm.tasks.prediction.finetune import (BrainLMFineTuner, FineTuneSchedule, LinearProbe, LoRALinear,
                                              add_lora)
from brainlm.tasks.prediction.targets import Target, load_target

__all__ = [
    "BrainLMEmbedding", "BrainLMFineTuner", "FineTuneSchedule", "LSTMEstimator", "LinearProbe", "LoRALinear",
    "PredictionSettings", "TangentSpace", "Target", "add_lora", "connectivity_measure",
    "corrected_resampled_ttest", "correlation_features",
    "PredictionResult", "evaluate_prediction", "grouped_folds", "load_target", "method_catalogue", "prediction_markdown",
    "raw_pca_pipeline", "subject_leaks",
]
