"""Supervised training of small torch heads on recordings, with early stopping.

Shared by the LSTM baseline and the BrainLM fine-tuning heads. Each recording contributes
windows of a fixed length: one random crop per recording per epoch for training (fresh crops
every epoch, from a seeded generator), all deterministic non-overlapping tiles
(:func:`brainlm.data.windows.tile`) for validation and prediction. A recording's prediction is
the mean of its windows' outputs (logits for classification). Training runs through the one
Lightning trainer (:func:`brainlm.train.supervised.fit_supervised`): it stops when the
validation loss has not improved for ``patience`` epochs, and the weights of the best epoch
(the starting point included) are restored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold
from torch import nn

from brainlm.data.windows import tile
from brainlm.errors import BrainLMInputError
from brainlm.model.precision import autocast
from brainlm.train.supervised import EpochBatches, FixedBatches, fit_supervised
from brainlm.train.trainer import TrainerSettings


def random_crops(series: list[np.ndarray], window_trs: int, generator: torch.Generator) -> torch.Tensor:
    """One random window per recording: [n, window_trs, P] float32."""
    out = []
    for x in series:
        start = int(torch.randint(x.shape[0] - window_trs + 1, (), generator=generator))
        out.append(torch.from_numpy(np.ascontiguousarray(x[start:start + window_trs], dtype=np.float32)))
    return torch.stack(out)


def recording_tiles(series: list[np.ndarray], window_trs: int) -> tuple[torch.Tensor, np.ndarray]:
    """The deterministic tiles of every recording, stacked: ([M, window_trs, P] float32, owner
    [M], the index of each tile's recording)."""
    parts = [tile(x, window_trs)[0] for x in series]
    owner = np.repeat(np.arange(len(series)), [len(p) for p in parts])
    return torch.from_numpy(np.concatenate(parts)), owner


def check_series(series, window_trs: int, n_parcels: int | None = None) -> list[np.ndarray]:
    """A list of (T, P) float32 arrays, each at least ``window_trs`` long."""
    out = []
    for i, x in enumerate(series):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] < window_trs:
            raise BrainLMInputError(f"recording has shape {x.shape}; expected T x P with T >= "
                                    f"{window_trs} TRs", f"X[{i}]")
        if n_parcels is not None and x.shape[1] != n_parcels:
            raise BrainLMInputError(f"recording has {x.shape[1]} parcels; expected {n_parcels}", f"X[{i}]")
        out.append(x)
    return out


def validation_split(y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int,
                     classification: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices with no subject on both sides (stratified for classification)."""
    n = len(y)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if classification:
        k = max(2, int(round(1 / fraction)))
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return next(splitter.split(np.zeros(n), y, groups))
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    return next(splitter.split(np.zeros(n), y, groups))


@dataclass
class TrainingLog:
    """What happened during :func:`train_early_stopping` (``val_loss[0]`` is before training)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1

    def to_dict(self) -> dict:
        """Epochs trained, the best epoch (0: the starting point) and its validation loss."""
        return {"epochs": len(self.train_loss), "best_epoch": self.best_epoch,
                "best_val_loss": min(self.val_loss) if self.val_loss else None}


def loss_function(classification: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Binary cross-entropy on logits, or mean squared error."""
    return F.binary_cross_entropy_with_logits if classification else F.mse_loss


@torch.no_grad()
def predict_batched(net: nn.Module, inputs: torch.Tensor, batch_size: int,
                    precision: str = "32-true") -> torch.Tensor:
    """net outputs [M] float32 for inputs [M, ...], in eval mode, under ``precision``'s autocast."""
    net.eval()
    with autocast(precision, inputs.device):
        return torch.cat([net(inputs[i:i + batch_size]).float() for i in range(0, len(inputs), batch_size)])


def per_recording(outputs: torch.Tensor, owner: np.ndarray, n: int) -> np.ndarray:
    """Mean of window outputs [M] per recording (owner [M] in 0..n-1) -> (n,) float64."""
    sums = np.bincount(owner, weights=outputs.double().numpy(), minlength=n)
    return sums / np.bincount(owner, minlength=n)


def train_early_stopping(net: nn.Module, optimizer: torch.optim.Optimizer, *,
                         epoch_data: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                         val_inputs: torch.Tensor, val_targets: torch.Tensor, classification: bool,
                         max_epochs: int, patience: int, batch_size: int,
                         generator: torch.Generator, device: str = "cpu",
                         precision: str = "32-true") -> TrainingLog:
    """Train ``net`` (inputs [B, ...] -> outputs [B]) until the validation loss stops improving.

    Parameters
    ----------
    epoch_data : callable
        ``epoch -> (inputs [M, ...], targets [M])``, the training examples of one epoch.
    val_inputs, val_targets : Tensor
        Fixed validation examples and targets (window level).
    max_epochs, patience : int
        Stop after ``max_epochs``, or ``patience`` epochs without a lower validation loss.
    generator : torch.Generator
        Shuffles the examples within each epoch.
    device : str
        Where to train (torch device name); ``net`` is returned there.
    precision : str
        As Lightning's (``32-true``, ``bf16-mixed``; :mod:`brainlm.model.precision`).

    The parameters with the lowest validation loss are loaded back into ``net``; the starting
    point counts as epoch 0, so training never ends worse on validation than it began (which
    matters when the head starts from a fitted probe).
    """
    # Every epoch has as many examples as the first; draw it now so Lightning knows the epoch's
    # length (nothing else draws from ``generator`` before that epoch's shuffle: same order).
    first = epoch_data(1)

    def batches(epoch: int):
        inputs, targets = first if epoch == 1 else epoch_data(epoch)
        order = torch.randperm(len(inputs), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield inputs[idx], targets[idx]

    train = EpochBatches(batches, -(-len(first[0]) // batch_size))
    fit = fit_supervised(net, optimizer, loss=loss_function(classification), train=train,
                         trainer=TrainerSettings.on_device(max_epochs, device, precision=precision),
                         val=FixedBatches(val_inputs, val_targets, batch_size), patience=patience,
                         count_start=True)
    net.to(device)
    # The mean training loss of an epoch weights each batch by its size.
    train_loss = [sum(loss * n for loss, n in epoch) / sum(n for _, n in epoch) for epoch in fit.batch_losses]
    return TrainingLog(train_loss=train_loss, val_loss=fit.val_loss, best_epoch=fit.best_epoch)


class WindowedHead:
    """Fit/predict logic shared by the torch estimators: a network maps one window (or one
    window's embedding) to one output, trained with early stopping on a validation split of the
    training recordings that keeps subjects apart (``groups``), and a recording's prediction
    averages its windows.

    Subclasses are scikit-learn estimators with parameters ``task``, ``val_fraction``,
    ``random_state`` and attributes ``max_epochs``, ``patience``, ``batch_size`` (parameters of
    their own, or read from a schedule parameter) and implement
    ``_prepare(X) -> list``, ``_build(train_items, train_targets) -> (net, optimizer)``,
    ``_train_examples(items, generator) -> (inputs, owner)`` and
    ``_eval_examples(items) -> (inputs, owner)``; ``_build`` may set ``precision_`` (the
    resolved precision of training and prediction; 32-true without). Regression targets are standardised with the
    training statistics inside ``fit`` and mapped back in ``predict``.

    Attributes
    ----------
    net_ : torch.nn.Module
    log_ : TrainingLog
    validation_groups_ : ndarray
        The subjects (groups) held out for early stopping.
    """

    def _is_classifier(self) -> bool:
        if self.task not in ("regression", "classification"):
            raise BrainLMInputError(f"task {self.task!r}; expected regression or classification")
        return self.task == "classification"

    def fit(self, X, y, groups=None):
        """X: recordings (see the subclass); y: (n,) targets (0/1 for classification);
        groups: (n,) subject of each recording, so validation subjects are not training ones."""
        classification = self._is_classifier()
        items = self._prepare(X)
        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(items):
            raise BrainLMInputError(f"{len(items)} recordings but {len(y)} targets")
        if classification:
            if not set(np.unique(y)) <= {0.0, 1.0} or len(np.unique(y)) < 2:
                raise BrainLMInputError("classification targets must be 0/1 with both classes present")
            z = y
        else:
            self.y_mean_, self.y_sd_ = float(y.mean()), float(y.std()) or 1.0
            z = (y - self.y_mean_) / self.y_sd_
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        tr, va = validation_split(z, groups, self.val_fraction, self.random_state, classification)
        self.validation_groups_ = np.unique(groups[va])
        self.train_groups_ = np.unique(groups[tr])
        train_items, train_z = [items[i] for i in tr], torch.tensor(z[tr], dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state))
            gen = torch.Generator().manual_seed(int(self.random_state))
            net, optimizer = self._build(train_items, train_z)
            val_inputs, owner = self._eval_examples([items[i] for i in va])
            val_targets = torch.tensor(z[va][owner], dtype=torch.float32)

            def epoch_data(epoch: int):
                inputs, own = self._train_examples(train_items, gen)
                return inputs, train_z[own]

            self.log_ = train_early_stopping(
                net, optimizer, epoch_data=epoch_data, val_inputs=val_inputs, val_targets=val_targets,
                classification=classification, max_epochs=self.max_epochs, patience=self.patience,
                batch_size=self.batch_size, generator=gen, device=getattr(self, "device", "cpu"),
                precision=getattr(self, "precision_", "32-true"))
        self.net_ = net
        return self

    def _outputs(self, X) -> np.ndarray:
        items = self._prepare(X)
        inputs, owner = self._eval_examples(items)
        outputs = predict_batched(self.net_, inputs, self.batch_size, getattr(self, "precision_", "32-true"))
        return per_recording(outputs, owner, len(items))

    def predict(self, X) -> np.ndarray:
        """(n,) predictions: targets for regression, 0/1 labels for classification."""
        out = self._outputs(X)
        if self._is_classifier():
            return (out > 0).astype(np.int64)
        return out * self.y_sd_ + self.y_mean_

    def decision_function(self, X) -> np.ndarray:
        """(n,) mean window logit (classification)."""
        return self._outputs(X)

    def predict_proba(self, X) -> np.ndarray:
        """(n, 2) class probabilities (classification)."""
        p = 1.0 / (1.0 + np.exp(-self._outputs(X)))
        return np.column_stack([1 - p, p])
