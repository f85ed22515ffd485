"""The folder names of a run: where the demo writes each task's results and the report reads them.

A run folder (``brainlm demo --out DIR``, or a study folder a user fills with task outputs)::

    summary.json                         the demo's summary (absent in a study folder)
    results/reconstruction/              brainlm evaluate recon     (reconstruction.json)
    results/reconstruction-schaefer100/  the same, zero-shot on the Schaefer-100 run
    results/reconstruction_example.npz   one test window: target, prediction, mask [T, P]
    results/prediction-TARGET/           brainlm evaluate predict   (prediction.json), one per target
    results/forecasting/                 brainlm forecast evaluate  (forecast.json)
    results/networks-DATASET/            brainlm networks           (networks.json, parcels.tsv)
    results/attention/                   brainlm attention          (group_attention.json, parcels.tsv)
    results/latent-site.json             the latent-space map of the synthetic cohort's sites

Each result file is read back as its task's typed result (:mod:`brainlm.tasks.results`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from brainlm.tasks.forecasting.evaluate import ForecastResult
from brainlm.tasks.group_attention import GroupAttentionResult
from brainlm.tasks.latent import LatentResult
from brainlm.tasks.networks import NetworksResult
from brainlm.tasks.prediction.evaluate import PredictionResult
from brainlm.tasks.reconstruction import ReconstructionResult
from brainlm.tasks.results import Record, TaskResult, read_result

__all__ = ["RESULT_FILES", "PretrainingSummary", "RunLayout", "RunSummary"]

#: The file each task writes into its results folder, and the type it is read back as.
RESULT_FILES = {"reconstruction.json": ReconstructionResult, "prediction.json": PredictionResult,
                "forecast.json": ForecastResult, "networks.json": NetworksResult,
                "group_attention.json": GroupAttentionResult}


@dataclass(frozen=True)
class PretrainingSummary(Record):
    """The demo's pretraining: the run folder (``run``, its logs under it), the model, how long
    it took where, and the validation metrics on the held-out subject."""

    run: str
    preset: str
    epochs: int
    seconds: float
    device: str
    precision: str
    window_trs: int
    masking: dict
    parameters: dict
    validation: dict
    embeddings_deterministic: bool
    embedded_recordings: int


@dataclass(frozen=True)
class RunSummary(TaskResult):
    """``summary.json``: what the demo ran (settings, timings, versions, key numbers and each
    step's part), or, for a study folder, what its results name (``kind == "study"``: the
    checkpoints and corpora in ``settings``)."""

    KIND: ClassVar[str] = "run_summary"

    brainlm_version: str
    command: str
    settings: dict
    kind: str = "demo"
    finished: str = ""
    versions: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)
    key_numbers: list[dict] = field(default_factory=list)
    corpora: dict = field(default_factory=dict)
    data_notes: dict[str, str] = field(default_factory=dict)
    pretraining: PretrainingSummary | None = None
    reconstruction: dict | None = None
    prediction: dict[str, str] | None = None
    forecasting: str | None = None
    networks: dict | None = None
    attention: dict | None = None
    latent: dict | None = None


@dataclass(frozen=True)
class RunLayout:
    """The paths of a run folder ``root``; the ``read_*`` methods return a typed result, or None
    when the step is absent from the run (a damaged or stale file is an error naming it)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- folders the demo writes ----------------------------------------------------------------
    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def reconstruction(self) -> Path:
        return self.results / "reconstruction"

    @property
    def reconstruction_zero_shot(self) -> Path:
        return self.results / "reconstruction-schaefer100"

    @property
    def reconstruction_example(self) -> Path:
        return self.results / "reconstruction_example.npz"

    def prediction(self, target: str) -> Path:
        return self.results / f"prediction-{target}"

    @property
    def forecasting(self) -> Path:
        return self.results / "forecasting"

    def networks(self, dataset: str) -> Path:
        return self.results / f"networks-{dataset}"

    @property
    def attention(self) -> Path:
        return self.results / "attention"

    @property
    def latent(self) -> Path:
        return self.results / "latent-site.json"

    # -- typed results the report reads ---------------------------------------------------------
    def read_summary(self) -> RunSummary | None:
        return read_result(RunSummary, self.summary)

    def read_reconstruction(self, zero_shot: bool = False) -> ReconstructionResult | None:
        folder = self.reconstruction_zero_shot if zero_shot else self.reconstruction
        return read_result(ReconstructionResult, folder / "reconstruction.json")

    def read_predictions(self) -> list[PredictionResult]:
        """Every ``prediction-TARGET`` result, in the order of the targets' names."""
        return [PredictionResult.read(p) for p in sorted(self.results.glob("prediction-*/prediction.json"))]

    def read_forecasting(self) -> ForecastResult | None:
        return read_result(ForecastResult, self.forecasting / "forecast.json")

    def read_networks(self) -> dict[str, NetworksResult]:
        """Dataset name -> result of every ``networks-DATASET`` folder, in name order."""
        return {p.parent.name.removeprefix("networks-"): NetworksResult.read(p)
                for p in sorted(self.results.glob("networks-*/networks.json"))}

    def read_attention(self) -> GroupAttentionResult | None:
        return read_result(GroupAttentionResult, self.attention / "group_attention.json")

    def read_latent(self) -> LatentResult | None:
        return read_result(LatentResult, self.latent)

    def read_all(self) -> list:
        """Every task result under ``results/NAME/`` (whatever NAME a study gave its folders)."""
        return [RESULT_FILES[p.name].read(p) for p in sorted(self.results.glob("*/*.json"))
                if p.name in RESULT_FILES]
