"""``brainlm pretrain CORPUS --preset NAME --out RUN``.

A run folder holds ``run_config.json`` (everything that defines the run, and the identity of
its corpus; written once training has started, which is what makes the folder resumable),
Lightning's ``checkpoints/`` (``last.ckpt``, the training state after every epoch including the
random-number state, for ``--resume``; ``best.ckpt``), ``logs/{tensorboard,csv}/version_N`` (one
version per start or resume),
``model/`` (the exported checkpoint: safetensors + config + contract + atlas, and the spatial
statistics of the training split, ``spatial_baseline.safetensors``, for the zero-shot spatial
baseline of ``brainlm evaluate recon``) and ``metrics.json`` (final validation metrics next to
the trivial baselines).
"""

from __future__ import annotations

import copy
import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor

from brainlm.data.atomic import OUTPUT_MARKER, check_not_an_input, output_kind, write_json, write_output_marker
from brainlm.data.corpus import Corpus
from brainlm.data.windows import CorpusDataModule, require_window
from brainlm.errors import BrainLMInputError
from brainlm.validation import positive_int
from brainlm.checkpoints.folder import SPATIAL_BASELINE, save_pretrained
from brainlm.model.config import BASE_LR, MASK_RATIOS, preset
from brainlm.model.masking import MaskSpec
from brainlm.model.precision import resolve_precision
from brainlm.train.module import PretrainModule
from brainlm.train.spatial import fit_spatial_prior, fit_spatial_statistics
from brainlm.train.augment import check_augmentations
from brainlm.train.trainer import BestEpoch, TrainerLogs, TrainerSettings, make_trainer


@dataclass(frozen=True)
class PretrainRecipe:
    """A named pretraining recipe: ``PretrainSettings`` fields, and the scaling its corpus must
    have been prepared with (``prepare --scaling``; None: any)."""

    settings: dict
    corpus_scaling: str | None = None


#: The recipe for fresh cohorts (docs/quality.md, "Fresh cohorts"; the demo's and ``hcp-fresh``'s):
#: the labelled hybrid with the spatial estimate dropped for half the training windows, and
#: augmentations that mimic another site, on a corpus scaled per recording (pooled statistics
#: would tie the model to the amplitude of one cohort).
FRESH_COHORT = PretrainRecipe(
    settings={"preset": "small", "spatial_prior": True, "model_overrides": {"prior_dropout": 0.5},
              "augment": ["reverse", "gain", "noise"]},
    corpus_scaling="recording")
#: ``brainlm pretrain --recipe``: named recipes (``custom``: the options as given).
RECIPES = {"custom": PretrainRecipe({}), "fresh-cohort": FRESH_COHORT}


@dataclass
class PretrainSettings:
    """Everything that defines a pretraining run (saved as ``run_config.json``).

    ``base_lr`` is per 256 windows: the peak learning rate is ``base_lr * effective_batch / 256``
    with ``effective_batch = batch_size * accumulate * devices * num_nodes`` (paper: 1e-3; the
    default depends on the preset, see ``brainlm.model.config.BASE_LR``).

    The fields stay flat (``run_config.json`` and ``--resume`` compare them by name);
    :meth:`trainer_settings` gives their trainer part (epochs, hardware, precision, clipping,
    accumulation) as the :class:`~brainlm.train.trainer.TrainerSettings` the trainer takes.
    """

    corpus: str
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    # The hybrid (BrainLMConfig.spatial_prior_parcels): always labelled (FRESH_COHORT has it).
    spatial_prior: bool = False
    # Augmentations of training windows (brainlm.train.augment.AUGMENTATIONS); none by default.
    augment: list = field(default_factory=list)
    mask_strategy: str = "random"
    # None: the preset's (model.config.MASK_RATIOS); with mask_ratio_max, each batch draws its
    # ratio from [mask_ratio, mask_ratio_max].
    mask_ratio: float | None = None
    mask_ratio_max: float | None = None
    future_trs: int = 20
    epochs: int = 20
    batch_size: int = 16
    accumulate: int = 1
    base_lr: float | None = None  # None: the preset's default (model.config.BASE_LR)
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    clip: float = 1.0
    crops_per_recording: int = 64
    seed: int = 0
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"

    @classmethod
    def recipe(cls, name: str, corpus: str | Path, **fields) -> "PretrainSettings":
        """Settings of the named recipe (:data:`RECIPES`) on ``corpus``; ``fields`` override it
        (``model_overrides`` are merged).

        Raises
        ------
        BrainLMInputError
            An unknown recipe, or a corpus scaled otherwise than the recipe needs.
        """
        if name not in RECIPES:
            raise BrainLMInputError(f"recipe {name!r}; expected one of {sorted(RECIPES)}")
        recipe = RECIPES[name]
        spec = copy.deepcopy(recipe.settings)
        spec["model_overrides"] = {**spec.get("model_overrides", {}), **fields.pop("model_overrides", {})}
        if recipe.corpus_scaling is not None:
            scaling = Corpus(corpus).contract.scaling
            if scaling != recipe.corpus_scaling:
                raise BrainLMInputError(
                    f"the {name} recipe pretrains on a corpus scaled with {recipe.corpus_scaling!r}; this "
                    f"one's contract field 'scaling' is {scaling!r}: prepare it again with "
                    f"--scaling {recipe.corpus_scaling}", str(corpus))
        return cls(corpus=str(corpus), **{**spec, **fields})

    def mask_ratios(self) -> tuple[float, float | None]:
        """(smallest, largest or None) fraction masked: the given ratios, else the preset's."""
        ratio, ratio_max = MASK_RATIOS.get(self.preset, (0.75, None))
        if self.mask_ratio is not None:
            return self.mask_ratio, self.mask_ratio_max
        return ratio, self.mask_ratio_max if self.mask_ratio_max is not None else ratio_max

    def mask_spec(self) -> MaskSpec:
        """The masking this run trains with."""
        ratio, ratio_max = self.mask_ratios()
        return MaskSpec(self.mask_strategy, ratio, self.future_trs, ratio_max)

    def trainer_settings(self) -> TrainerSettings:
        """The trainer part of these settings: epochs, hardware, precision, clipping, accumulation."""
        return TrainerSettings(self.epochs, accelerator=self.accelerator, devices=self.devices,
                               num_nodes=self.num_nodes, strategy=self.strategy, precision=self.precision,
                               gradient_clip=self.clip, accumulate=self.accumulate)

    def effective_batch(self) -> int:
        devices = self.devices if isinstance(self.devices, int) else 1
        return self.batch_size * self.accumulate * devices * self.num_nodes


# Keys that may change between a run and its --resume without changing what is trained (the
# corpus may move: its identity, not its path, is checked).
_RESUMABLE = {"epochs", "num_workers", "corpus"}
CORPUS_KEY = "corpus_sha256"
#: What a run folder's output marker says it is.
RUN_KIND = "pretraining run"


def check_settings(settings: PretrainSettings) -> None:
    """An error naming the option for a setting no run can use (before any file is written)."""
    check_augmentations(settings.augment)
    positive_int(settings.epochs, "--epochs")
    positive_int(settings.batch_size, "--batch-size")
    positive_int(settings.accumulate, "--accumulate")
    positive_int(settings.crops_per_recording, "--crops-per-recording")
    positive_int(settings.num_nodes, "--num-nodes")
    if isinstance(settings.devices, int):
        positive_int(settings.devices, "--devices")
    if isinstance(settings.num_workers, bool) or not isinstance(settings.num_workers, int) or settings.num_workers < 0:
        raise BrainLMInputError(f"--workers {settings.num_workers!r}; expected 0 or more")
    for value, option, ok, expected in (
            (settings.base_lr, "--lr", lambda v: v is None or (math.isfinite(v) and v > 0), "a positive number"),
            (settings.weight_decay, "--weight-decay", lambda v: math.isfinite(v) and v >= 0, "0 or more"),
            (settings.warmup_fraction, "--warmup", lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
            (settings.clip, "--clip", lambda v: math.isfinite(v) and v > 0, "a positive number"),
            (settings.mask_ratio, "--mask-ratio", lambda v: v is None or 0 < v < 1, "a fraction in (0, 1)"),
            (settings.mask_ratio_max, "--mask-ratio-max", lambda v: v is None or 0 < v < 1,
             "a fraction in (0, 1)")):
        if not ok(value):
            raise BrainLMInputError(f"{option} {value!r}; expected {expected}")
    resolve_precision(settings.precision, settings.accelerator)  # refused before anything is written
    ratio, ratio_max = settings.mask_ratios()
    if ratio_max is not None and ratio_max < ratio:
        raise BrainLMInputError(f"--mask-ratio-max {ratio_max} is below the smallest mask ratio "
                                f"{ratio}; expected a range from --mask-ratio up")


class _StartRun(L.Callback):
    """Writes ``run_config.json`` when training starts: a run that failed before (a bad option,
    an unreadable corpus) leaves no resumable run behind, and the same command can be re-run."""

    def __init__(self, path: Path, config: dict):
        self.path, self.config = path, config

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not self.path.exists():
            write_json(self.path, self.config)


def pretrain(settings: PretrainSettings, out: str | Path, *, resume: bool = False,
             progress: bool = True, limit_train_batches: int | float | None = None) -> dict:
    """Pretrain and export; returns the final validation metrics.

    Raises
    ------
    BrainLMInputError
        A setting out of range, unknown preset, a window longer than every training recording,
        ``--resume`` from a run with a different configuration or corpus, or with a damaged or
        foreign ``last.ckpt``, an existing run folder without ``--resume``.
    """
    out = Path(out)
    check_settings(settings)
    corpus = Corpus(settings.corpus)
    prior = {"spatial_prior_parcels": corpus.atlas.n_parcels} if settings.spatial_prior else {}
    config = preset(settings.preset, **settings.model_overrides, **prior)
    mask = settings.mask_spec()
    require_window(corpus, "train", config.window_trs)
    run_config = _check_run_folder(out, settings, resume, corpus)

    L.seed_everything(settings.seed, workers=True, verbose=False)
    base_lr = settings.base_lr if settings.base_lr is not None else BASE_LR[settings.preset]
    lr = base_lr * settings.effective_batch() / 256
    module = PretrainModule(config.to_dict(), mask.to_dict(), lr=lr, weight_decay=settings.weight_decay,
                            warmup_fraction=settings.warmup_fraction, contract=corpus.contract.to_dict(),
                            atlas=corpus.atlas.to_dict(), augment=list(check_augmentations(settings.augment)))
    spatial = None
    if settings.spatial_prior:
        spatial = fit_spatial_prior(module.model, corpus)
    # Pretraining reads the corpus with its own contract: the checkpoint inherits it.
    data = CorpusDataModule(settings.corpus, window_trs=config.window_trs, batch_size=settings.batch_size,
                            num_workers=settings.num_workers, crops_per_recording=settings.crops_per_recording)
    setup = make_trainer(
        settings.trainer_settings(),
        best=BestEpoch("val/masked_mse", keep="checkpoint", checkpoint_dir=out / "checkpoints", save_last=True),
        # A new version_N folder per (re)start, so --resume never overwrites earlier logs.
        logs=TrainerLogs(out / "logs", ("tensorboard", "csv")), progress=progress,
        callbacks=[LearningRateMonitor(logging_interval="step"), _StartRun(out / "run_config.json", run_config)],
        log_every_n_steps=5, default_root_dir=out, limit_train_batches=limit_train_batches,
        enable_model_summary=progress, width=config.dim)
    trainer = setup.trainer
    last = out / "checkpoints" / "last.ckpt"
    resume_from = last if resume and last.exists() else None
    if resume_from is not None:
        _check_last_checkpoint(resume_from, module)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if trainer.is_global_zero:
        setup.restore_best(module)
        # The training split's spatial statistics travel with the checkpoint: the zero-shot
        # spatial baseline of a fresh cohort on this atlas (the hybrid's prior is the same fit).
        spatial = spatial if spatial is not None else fit_spatial_statistics(corpus)
        save_pretrained(module.model, out / "model", tensors={SPATIAL_BASELINE: spatial.to_tensors()})
        best = setup.best.best_model_path
        summary = {"metrics_last_epoch": metrics, "best_checkpoint": Path(best).name if best else None,
                   "best_val_masked_mse": setup.best_score,
                   "epochs": trainer.current_epoch, "peak_lr": lr, "effective_batch": settings.effective_batch(),
                   "parameters": module.model.count_parameters(), "precision": setup.precision}
        write_json(out / "metrics.json", summary)
    return metrics


def _check_run_folder(out: Path, settings: PretrainSettings, resume: bool, corpus: Corpus) -> dict:
    """The content of ``run_config.json`` for this run (written when training starts); an error
    if ``out`` cannot hold it: ``--resume`` without a started run, or one with another
    configuration or corpus; a started run, or a folder brainlm did not write, without it."""
    # Never in, around or inside the corpus it reads (whatever the folder's marker says).
    check_not_an_input(out, [settings.corpus])
    cfg_path = out / "run_config.json"
    current = {**json.loads(json.dumps(settings.__dict__)), CORPUS_KEY: corpus.identity()}
    if resume:
        if not cfg_path.is_file():
            raise BrainLMInputError("--resume given but no run has started here (no run_config.json); "
                                    "run the same command without --resume", str(out))
        try:
            old = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BrainLMInputError(f"cannot read the run's configuration ({e})", str(cfg_path)) from None
        if not isinstance(old, dict):
            raise BrainLMInputError("run_config.json is not a run configuration", str(cfg_path))
        # A run started before the identity was recorded cannot be checked; it resumes as before.
        if CORPUS_KEY in old and old[CORPUS_KEY] != current[CORPUS_KEY]:
            raise BrainLMInputError(
                f"cannot resume on corpus {settings.corpus}: it is not the corpus this run was "
                f"trained on ({old.get('corpus')}; its manifest or contract differ, identity "
                f"{str(old.get(CORPUS_KEY))[:12]} vs {current[CORPUS_KEY][:12]})", str(out))
        differing = sorted(k for k in set(old) | set(current)
                           if k not in _RESUMABLE | {CORPUS_KEY} and old.get(k) != current.get(k))
        if differing:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {current.get(k)!r}" for k in differing)
            raise BrainLMInputError(f"cannot resume: the configuration differs in {detail}", str(out))
        return old | {k: current[k] for k in _RESUMABLE}
    if cfg_path.exists():
        raise BrainLMInputError("run folder already holds a run; pass --resume to continue it or "
                                "choose another --out", str(out))
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / OUTPUT_MARKER).is_file())):
        # Only a folder that brainlm made (a run that failed before training) is reused.
        raise BrainLMInputError("--out exists and is not a brainlm run folder; choose a new folder",
                                str(out))
    kind = output_kind(out)
    if kind not in (None, RUN_KIND):
        raise BrainLMInputError(f"--out holds a {kind}, not a pretraining run; choose a new folder", str(out))
    out.mkdir(parents=True, exist_ok=True)
    if not (out / OUTPUT_MARKER).is_file():
        write_output_marker(out, RUN_KIND)
    return current


def _check_last_checkpoint(path: Path, module: L.LightningModule) -> None:
    """An error naming ``path`` if it is not a complete training state of this model."""
    # weights_only: torch's restricted unpickler, which builds tensors and plain containers and
    # refuses every other global, so a planted pickle never runs (everything brainlm saves in a
    # training state is made of those: RandomState keeps it so).
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BrainLMInputError("the training state holds Python objects other than tensors and plain "
                                "values, which brainlm never writes and will not load (a pickle can "
                                "run code); delete it to restart this run from its beginning",
                                str(path)) from None
    except Exception as e:  # noqa: BLE001 - any other failure to read is a damaged file
        raise BrainLMInputError(f"cannot read the training state ({type(e).__name__}); the file is "
                                "damaged or truncated: delete it to restart this run from its "
                                "beginning", str(path)) from None
    expected = module.state_dict()
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if (not isinstance(weights, dict) or "loops" not in state
            or set(weights) != set(expected)
            or any(tuple(weights[k].shape) != tuple(v.shape) for k, v in expected.items())):
        raise BrainLMInputError("not a training state of this run's model (other weights or "
                                "shapes); delete it to restart this run from its beginning",
                                str(path))
