"""What the demo runs: :class:`DemoSettings` and the constants its steps share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainlm.data.contract import PreprocessingContract
from brainlm.data.samples import HCP7_TR
from brainlm.train.pretrain import RECIPES, PretrainSettings

__all__ = ["DemoSettings", "NETWORK_FEATURE", "WINDOW_TRS"]

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
