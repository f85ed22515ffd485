"""The one Lightning trainer factory behind every fit: pretraining, forecasting fine-tuning,
phenotype heads and the neural baselines.

:func:`make_trainer` takes a :class:`TrainerSettings` (epochs, accelerator, devices, nodes,
strategy, precision, gradient clipping and accumulation; ``fsdp`` shards BrainLM block by block),
settles its precision (``auto``: bf16-mixed where the device multiplies bfloat16 natively, a GPU
with bf16 or a CPU with AMX-BF16/AVX512-BF16, else 32-true:
:func:`brainlm.model.precision.resolve_precision`), adds loggers (:class:`TrainerLogs`), progress
output (:mod:`brainlm.train.progress`) and keeps the best epoch as a :class:`BestEpoch` says:

* ``keep="checkpoint"``: Lightning's ``ModelCheckpoint`` writes ``best.ckpt`` (and, with
  ``save_last``, ``last.ckpt`` after every epoch, for ``--resume``) to a folder, each file
  atomically, with the random-number state (:class:`RandomState`) so that a resumed fit continues
  exactly as the uninterrupted one would have; works under DDP and FSDP (pretraining);
* ``keep="memory"``: :class:`BestWeights` copies the weights of the best validation epoch to
  CPU memory, optionally stops early after ``patience`` epochs without improvement and can count
  a validation run before training as epoch 0; no file is written (fine-tuning, small heads).

``TrainerSetup.restore_best(module)`` loads the best weights back in either case.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from brainlm.errors import BrainLMInputError
from brainlm.validation import positive_int
from brainlm.model.layers import Block
from brainlm.model.precision import PRECISIONS, resolve_precision
from brainlm.train.progress import progress_callbacks

BEST = ("checkpoint", "memory", None)
LOGGERS = {"tensorboard": TensorBoardLogger, "csv": CSVLogger}


def resolve_strategy(strategy):
    """``fsdp`` -> an FSDP strategy that shards and checkpoints activations per transformer
    block (not the whole model as one unit): what lets the 650m preset fit on 80 GB cards.
    Anything else is passed to Lightning unchanged."""
    if strategy == "fsdp":
        return FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block})
    return strategy


class BestWeights(L.Callback):
    """Keeps the weights of the best validation score in CPU memory; optional early stopping.

    Parameters
    ----------
    monitor : str
        A metric the module logs in its validation loop (e.g. ``val/loss``).
    mode : {"min", "max"}
    patience : int, optional
        Stop training after this many validation runs in a row without a strictly better score.
    count_start : bool
        A ``trainer.validate`` before ``trainer.fit`` is a candidate (epoch 0): training then
        never ends worse on validation than it began.

    Attributes
    ----------
    start_score : float or None
        The score of the validation before training (when one was run).
    scores : list of float
        The score after each training epoch.
    best_score, best_epoch
        Best score so far and its epoch (0: the starting point; k: after k training epochs).
    """

    def __init__(self, monitor: str, mode: str = "min", patience: int | None = None,
                 count_start: bool = False):
        if mode not in ("min", "max"):
            raise BrainLMInputError(f"mode {mode!r}; expected 'min' or 'max'")
        if patience is not None and patience < 1:
            raise BrainLMInputError(f"patience {patience}; expected >= 1")
        self.monitor, self.mode, self.patience, self.count_start = monitor, mode, patience, count_start
        self.start_score: float | None = None
        self.scores: list[float] = []
        self.best_score: float | None = None
        self.best_epoch, self.state, self._stale = -1, None, 0

    def _better(self, score: float) -> bool:
        if self.best_score is None:
            return True
        return score < self.best_score if self.mode == "min" else score > self.best_score

    def _keep(self, module: L.LightningModule, score: float, epoch: int) -> None:
        self.best_score, self.best_epoch, self._stale = score, epoch, 0
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if trainer.state.fn != "fit":  # a validation before training
            self.start_score = score
            if self.count_start:
                self._keep(pl_module, score, 0)
            return
        self.scores.append(score)
        if self._better(score):
            self._keep(pl_module, score, len(self.scores))
            return
        self._stale += 1
        if self.patience is not None and self._stale >= self.patience:
            trainer.should_stop = True

    def restore(self, module: L.LightningModule) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)


class AtomicCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, but each file is written under a temporary name and
    renamed: a kill during the write leaves the previous ``last.ckpt``, never half of one."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        tmp = str(Path(filepath).with_name(f".{Path(filepath).name}.tmp"))
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero and os.path.exists(tmp):
            os.replace(tmp, filepath)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


class RandomState(L.Callback):
    """Saves the random-number state (Python, numpy, torch CPU and CUDA) in every checkpoint, and
    puts it back when a fit resumes from one.

    Everything random in a fit draws from these generators: the shuffling sampler and the random
    crops (torch's), the training masks (torch's), worker seeds (drawn from torch's). The state
    saved is the one at the end of the epoch the checkpoint closes, which is what the next epoch
    of the uninterrupted fit starts from. It is put back as the checkpoint is loaded, before
    Lightning creates the training loader's iterator (which draws the sampler's seed).
    """

    KEY = "brainlm_random_state"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Plain types and tensors only, so the file still loads with torch's weights_only=True.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint[self.KEY] = {
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                      float(gauss)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get(self.KEY)
        if state is None:
            return
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainerSetup:
    """A configured trainer and the record of its best epoch.

    Attributes
    ----------
    trainer : lightning.Trainer
    precision : str
        The resolved precision (``auto`` settled).
    best : ModelCheckpoint, BestWeights or None
    """

    trainer: L.Trainer
    precision: str
    best: ModelCheckpoint | BestWeights | None

    @property
    def best_score(self) -> float | None:
        if isinstance(self.best, ModelCheckpoint):
            s = self.best.best_model_score
            return float(s) if s is not None else None
        return self.best.best_score if self.best is not None else None

    def restore_best(self, module: L.LightningModule) -> bool:
        """Load the best epoch's weights into ``module``; False when there is none."""
        if isinstance(self.best, BestWeights):
            self.best.restore(module)
            return self.best.state is not None
        if isinstance(self.best, ModelCheckpoint) and self.best.best_model_path:
            state = torch.load(self.best.best_model_path, map_location="cpu", weights_only=True)
            module.load_state_dict(state["state_dict"])
            return True
        return False


@dataclass(frozen=True)
class TrainerSettings:
    """How a fit runs: how long, on what hardware, in what precision, with what gradient steps.

    Parameters
    ----------
    max_epochs : int
        Training epochs (early stopping, :class:`BestEpoch`, may end the fit sooner).
    accelerator : str
        Lightning's (``auto``, ``cpu``, ``gpu``...).
    devices : int, str or list of int
        Devices per node: a count, ``auto``, or device indices (``[1]``: the second GPU).
    num_nodes : int
    strategy : str or lightning Strategy
        Lightning's (``auto``, ``ddp``...); ``fsdp``: :func:`resolve_strategy`.
    precision : str
        One of :data:`brainlm.model.precision.PRECISIONS`; ``auto`` and the refusals that depend
        on the device are settled when the trainer is made
        (:func:`~brainlm.model.precision.resolve_precision`).
    gradient_clip : float, optional
        Gradient-norm clipping (Lightning's ``gradient_clip_val``); None or 0: none.
    accumulate : int
        Batches whose gradients are summed before each optimiser step.

    Raises
    ------
    BrainLMInputError
        A field out of range, named with what was expected.
    """

    max_epochs: int
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: object = "auto"
    precision: str = "auto"
    gradient_clip: float | None = None
    accumulate: int = 1

    def __post_init__(self):
        positive_int(self.max_epochs, "TrainerSettings max_epochs")
        positive_int(self.num_nodes, "TrainerSettings num_nodes")
        positive_int(self.accumulate, "TrainerSettings accumulate")
        if not isinstance(self.accelerator, str) or not self.accelerator:
            raise BrainLMInputError(f"TrainerSettings accelerator {self.accelerator!r}; expected a name "
                                    "such as 'auto', 'cpu' or 'gpu'")
        devices = self.devices
        if isinstance(devices, list):
            if not devices or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in devices):
                raise BrainLMInputError(f"TrainerSettings devices {devices!r}; expected a positive count, "
                                        "'auto' or a list of device indices")
        elif not isinstance(devices, str):
            positive_int(devices, "TrainerSettings devices")
        if self.precision not in PRECISIONS:
            raise BrainLMInputError(f"TrainerSettings precision {self.precision!r}; expected one of "
                                    f"{', '.join(PRECISIONS)}")
        clip = self.gradient_clip
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                 or not math.isfinite(clip) or clip < 0):
            raise BrainLMInputError(f"TrainerSettings gradient_clip {clip!r}; expected a number >= 0 "
                                    "(0 or None: no clipping)")

    @classmethod
    def on_device(cls, max_epochs: int, device: str | torch.device = "cpu", **fields) -> "TrainerSettings":
        """Settings for a fit on one torch device (``cpu``, ``cuda``, ``cuda:1``): Lightning's
        accelerator and devices from :func:`accelerator_for`."""
        accelerator, devices = accelerator_for(device)
        return cls(max_epochs, accelerator=accelerator, devices=devices, **fields)


@dataclass(frozen=True)
class BestEpoch:
    """Which epoch a fit keeps, and where.

    Parameters
    ----------
    monitor : str
        The validation metric that picks the best epoch (logged by the module, e.g. ``val/loss``).
    keep : {"checkpoint", "memory"}
        ``checkpoint``: Lightning's ``ModelCheckpoint`` writes ``checkpoint_dir/best.ckpt`` (with
        ``save_last``, also ``last.ckpt`` after every epoch, for resuming), with the random-number
        state (:class:`RandomState`). ``memory``: :class:`BestWeights` keeps the weights in CPU
        memory, with optional early stopping (``patience``) and the starting point as a
        candidate (``count_start``); no file is written.
    mode : {"min", "max"}
        Whether lower or higher is better.

    Raises
    ------
    BrainLMInputError
        A field out of range, or one the chosen ``keep`` does not use.
    """

    monitor: str | None
    keep: str = "memory"
    mode: str = "min"
    checkpoint_dir: str | Path | None = None
    save_last: bool = False
    patience: int | None = None
    count_start: bool = False

    def __post_init__(self):
        if self.keep not in BEST:
            raise BrainLMInputError(f"best {self.keep!r}; expected one of {BEST}")
        if self.monitor is None:
            raise BrainLMInputError("keeping the best epoch needs a monitored metric")
        if self.mode not in ("min", "max"):
            raise BrainLMInputError(f"mode {self.mode!r}; expected 'min' or 'max'")
        if self.keep == "checkpoint":
            if self.checkpoint_dir is None:
                raise BrainLMInputError("best='checkpoint' needs a checkpoint_dir")
            if self.patience is not None or self.count_start:
                raise BrainLMInputError("patience and count_start stop early in memory only; "
                                        "expected keep='memory' for them")
        else:
            if self.checkpoint_dir is not None or self.save_last:
                raise BrainLMInputError("checkpoint_dir and save_last write files; expected "
                                        "keep='checkpoint' for them")
            if self.patience is not None:
                positive_int(self.patience, "patience")


@dataclass(frozen=True)
class TrainerLogs:
    """Loggers among ``tensorboard`` and ``csv``, each writing ``folder/NAME/version_N`` (NAME:
    ``name`` or the logger's name; a new version per start, so a resumed fit never overwrites
    the logs of an earlier one)."""

    folder: str | Path
    loggers: tuple[str, ...] = ("tensorboard", "csv")
    name: str | None = None

    def __post_init__(self):
        unknown = [name for name in self.loggers if name not in LOGGERS]
        if unknown:
            raise BrainLMInputError(f"unknown logger(s) {unknown}; expected some of {list(LOGGERS)}")
        if self.loggers and self.folder is None:
            raise BrainLMInputError("loggers need a log_dir")

    def make(self) -> list:
        """The Lightning loggers (empty without any)."""
        return [LOGGERS[name](self.folder, name=self.name or name) for name in self.loggers]


def make_trainer(settings: TrainerSettings, *, best: BestEpoch | None = None, logs: TrainerLogs | None = None,
                 progress: bool = False, silent: bool = False, callbacks=(), width: int | None = None,
                 **options) -> TrainerSetup:
    """A Lightning ``Trainer`` set up the one way every fit of brainlm is.

    Parameters
    ----------
    settings : TrainerSettings
        Epochs, accelerator, devices, nodes, strategy, precision, clipping and accumulation.
    best : BestEpoch, optional
        Which epoch to keep and where; None: none is kept (no checkpoint file is written).
    logs : TrainerLogs, optional
        None: no logger (nothing is written).
    progress : bool
        A progress bar on a terminal, one line per epoch elsewhere, or nothing.
    silent : bool
        Drop Lightning's info lines and advice warnings while the trainer is built (wrap its
        ``fit`` in :func:`quiet` too): for the many small fits of a cross-validation.
    callbacks : sequence of lightning.Callback
        Added after the best-epoch callback.
    width : int, optional
        The model's encoder width, for ``precision="auto"`` on a CPU (bf16 only pays from
        :data:`~brainlm.model.precision.CPU_BF16_MIN_WIDTH`).
    **options
        Any other ``lightning.Trainer`` argument (``log_every_n_steps``, ``limit_train_batches``...).
    """
    precision = resolve_precision(settings.precision, settings.accelerator, width)
    keeper = _keeper(best)
    logger = (logs.make() if logs is not None else []) or False
    bar, lines = progress_callbacks(progress)
    options.setdefault("enable_model_summary", False)
    options.setdefault("num_sanity_val_steps", 0)
    to_checkpoint = best is not None and best.keep == "checkpoint"
    with quiet(silent), _settings_errors():
        trainer = L.Trainer(
            max_epochs=settings.max_epochs, accelerator=settings.accelerator, devices=settings.devices,
            num_nodes=settings.num_nodes, strategy=resolve_strategy(settings.strategy), precision=precision,
            logger=logger, callbacks=[c for c in (keeper,) if c is not None]
            + ([RandomState()] if to_checkpoint else []) + [*lines, *callbacks],
            enable_progress_bar=bar, enable_checkpointing=to_checkpoint,
            gradient_clip_val=settings.gradient_clip, accumulate_grad_batches=settings.accumulate, **options)
    return TrainerSetup(trainer, precision, keeper)


def _keeper(best: BestEpoch | None) -> ModelCheckpoint | BestWeights | None:
    """The callback that keeps ``best``'s epoch."""
    if best is None:
        return None
    if best.keep == "checkpoint":
        return AtomicCheckpoint(dirpath=best.checkpoint_dir, filename="best", monitor=best.monitor,
                                mode=best.mode, save_last=best.save_last, save_top_k=1)
    return BestWeights(best.monitor, best.mode, patience=best.patience, count_start=best.count_start)


def accelerator_for(device: str | torch.device) -> tuple[str, int | list[int]]:
    """Lightning's ``(accelerator, devices)`` for a torch device name: ``cpu`` -> ("cpu", 1),
    ``cuda`` -> ("gpu", 1), ``cuda:1`` -> ("gpu", [1])."""
    device = torch.device(device)
    if device.type == "cpu":
        return "cpu", 1
    if device.type == "cuda":
        return "gpu", [device.index] if device.index is not None else 1
    return device.type, 1


@contextlib.contextmanager
def _settings_errors():
    """Lightning's refusal of an accelerator, device count, strategy or precision, as the one-line
    input error the commands print (it names the value and the allowed ones)."""
    try:
        yield
    except (ValueError, TypeError, MisconfigurationException) as e:
        raise BrainLMInputError("trainer settings (--accelerator, --devices, --strategy, --precision): "
                                + " ".join(str(e).split())) from None


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Silence Lightning's info lines ("GPU available: ...", "`Trainer.fit` stopped ...") and
    its advice warnings (few workers, few batches) inside the block: a cross-validation fits
    hundreds of small heads, and those lines would bury its own output. Errors still raise."""
    if not enabled:
        yield
        return
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
             "lightning.pytorch.accelerators.cuda")
    drop = _DropAll()
    loggers = [logging.getLogger(n) for n in names]
    for log in loggers:
        log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning\.")
            warnings.filterwarnings("ignore", message=r".*(num_workers|does not have many workers|"
                                                      r"smaller than the logging interval).*")
            yield
    finally:
        for log in loggers:
            log.removeFilter(drop)
