"""Supervised fits of small networks through the one trainer: ``inputs -> outputs`` on
``(inputs, targets)`` batches, with the best validation epoch kept and optional early stopping.

Used by the phenotype heads (a window or its embedding -> one output) and the neural forecasting
baselines (a context -> the next TRs). The batches come from plain iterables, not DataLoaders:
the task draws each epoch's examples and their order from its own seeded generator exactly as it
chooses, and no DataLoader draws from the global torch RNG behind its back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import nn

from brainlm.errors import BrainLMInputError
from brainlm.train.trainer import BestEpoch, TrainerSettings, accelerator_for, make_trainer, quiet

__all__ = ["Batch", "EpochBatches", "EpochTimes", "FitLog", "FixedBatches", "SupervisedModule",
           "accelerator_for", "fit_supervised"]

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochBatches:
    """The training batches of each epoch, drawn afresh at every pass.

    Parameters
    ----------
    draw : callable
        ``epoch -> iterable of (inputs [B, ...], targets [B, ...])``; ``epoch`` counts from 1.
    n_batches : int
        Batches per epoch (for Lightning's epoch bookkeeping).
    """

    def __init__(self, draw: Callable[[int], Iterable[Batch]], n_batches: int):
        self.draw, self.n_batches, self.epoch = draw, int(n_batches), 0

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[Batch]:
        # Counted when the first batch is asked for, not when the iterator is made: Lightning
        # makes iterators it never reads (to check the loader), and those must not use up a draw.
        self.epoch += 1
        yield from self.draw(self.epoch)


class FixedBatches:
    """Fixed examples in fixed batches (validation): inputs [M, ...], targets [M, ...]."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int):
        self.inputs, self.targets, self.batch_size = inputs, targets, int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for i in range(0, len(self.inputs), self.batch_size):
            yield self.inputs[i:i + self.batch_size], self.targets[i:i + self.batch_size]


class SupervisedModule(L.LightningModule):
    """``net`` trained on ``loss(net(inputs), targets)``; validated on the whole validation set.

    Parameters
    ----------
    net : nn.Module
        inputs [B, ...] -> outputs shaped like the targets.
    loss : callable
        ``(outputs, targets) -> scalar`` (mean over the batch), e.g. ``F.mse_loss``.
    optimizer : torch.optim.Optimizer
        Built on ``net``'s parameters by the caller (parameter groups, learning rates).
    val_loss : callable, optional
        ``(outputs [M, ...], targets [M, ...]) -> float`` over every validation example at once
        (default: ``loss``), logged as ``val/loss``.

    Attributes
    ----------
    batch_losses : list of list of (float, int)
        Each epoch's training batches: (loss, batch size).
    """

    def __init__(self, net: nn.Module, loss: Callable, optimizer: torch.optim.Optimizer,
                 val_loss: Callable | None = None):
        super().__init__()
        self.net, self.loss, self.optimizer = net, loss, optimizer
        self.val_loss = val_loss or (lambda out, target: float(loss(out, target)))
        self.batch_losses: list[list[tuple[float, int]]] = []
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        self.batch_losses.append([])

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self.net(x).float(), y)
        self.batch_losses[-1].append((loss.item(), len(x)))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        self._outputs.append(self.net(x).float().cpu())
        self._targets.append(y.cpu())

    def on_validation_epoch_end(self) -> None:
        value = self.val_loss(torch.cat(self._outputs), torch.cat(self._targets))
        self._outputs.clear()
        self._targets.clear()
        self.log("val/loss", float(value), batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer


class EpochTimes(L.Callback):
    """Wall seconds of each training epoch without its validation, of each validation run in the
    fit, and the monitored validation metric after each epoch."""

    def __init__(self, monitor: str | None = None):
        self.monitor = monitor
        self.reset()

    def reset(self) -> None:
        self.train_seconds: list[float] = []
        self.val_seconds: list[float] = []
        self.val_scores: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._val = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self._val_start
        self._val += seconds
        self.val_seconds.append(seconds)
        if self.monitor is not None:
            self.val_scores.append(float(trainer.callback_metrics[self.monitor]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.train_seconds.append(time.perf_counter() - self._start - self._val)


@dataclass
class FitLog:
    """What a supervised fit did.

    Attributes
    ----------
    batch_losses : list of list of (float, int)
        Training batches of each epoch run: (loss, batch size).
    val_loss : list of float
        Validation loss before training (when ``count_start``) then after each epoch.
    best_epoch : int
        0: the starting point; k: after k epochs; -1: no validation.
    train_seconds : list of float
        Each epoch's training time, validation excluded.
    """

    batch_losses: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    best_epoch: int = -1
    train_seconds: list = field(default_factory=list)


def fit_supervised(net: nn.Module, optimizer: torch.optim.Optimizer, *, loss: Callable, train: EpochBatches,
                   trainer: TrainerSettings, val: Iterable[Batch] | None = None, val_loss: Callable | None = None,
                   patience: int | None = None, count_start: bool = False) -> FitLog:
    """Train ``net`` in place through :func:`~brainlm.train.trainer.make_trainer` and load back
    the weights of its best validation epoch.

    Parameters
    ----------
    train : EpochBatches
    trainer : TrainerSettings
        Epochs, device, precision and gradient clipping. Most of these networks are small:
        ``precision="32-true"`` keeps their results the same on a CPU and a GPU;
        ``bf16-mixed`` (or ``auto``) for a BrainLM encoder being fine-tuned
        (:func:`brainlm.model.precision.resolve_precision`).
        :meth:`TrainerSettings.on_device` builds one for a torch device.
    val : iterable of (inputs, targets), optional
        Scored after every epoch (and before training with ``count_start``); without it the
        last epoch is kept.
    patience : int, optional
        Stop after ``patience`` epochs without a strictly lower validation loss.
    count_start : bool
        The untrained starting point is a candidate (epoch 0): training never ends worse on
        validation than it began (e.g. a head that starts from a fitted probe).

    ``net`` ends on the CPU, in eval mode. Nothing is written to disk (no logger, no
    checkpoint file; the best weights are kept in memory).
    """
    if patience is not None and patience < 1:
        raise BrainLMInputError(f"patience {patience}; expected >= 1")
    module = SupervisedModule(net, loss, optimizer, val_loss)
    timer = EpochTimes()
    best = (BestEpoch("val/loss", keep="memory", patience=patience, count_start=count_start)
            if val is not None else None)
    # Validation under no_grad (as the fits did before Lightning) rather than inference mode.
    setup = make_trainer(trainer, best=best, callbacks=[timer], silent=True, inference_mode=False)
    with quiet():
        if val is not None and count_start:
            setup.trainer.validate(module, dataloaders=val, verbose=False)
        setup.trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    net.cpu()
    setup.restore_best(module)
    best = setup.best
    log = FitLog(batch_losses=module.batch_losses, train_seconds=timer.train_seconds)
    if best is not None:
        log.val_loss = ([best.start_score] if best.start_score is not None else []) + best.scores
        log.best_epoch = best.best_epoch
    net.eval()
    return log
