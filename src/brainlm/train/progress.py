"""Training progress that reads well in a log file as well as in a terminal.

Lightning's progress bar redraws itself in place, which a log file cannot show: in a CI log or
``brainlm demo > log`` nothing appears until training ends. Off a terminal, training prints one
flushed line per epoch instead. Lightning's advertising and internal deprecation notices are
dropped; its device lines ("GPU available: ...") are kept.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

import lightning as L


class EpochLines(L.Callback):
    """One line per epoch: epoch k/N, mean training loss, validation masked MSE and R², the
    epoch's wall-clock seconds and an estimate of the time left."""

    def __init__(self, stream=None):
        self.stream = stream
        self._t0 = self._t_epoch = 0.0
        self._first_epoch = 0
        self._loss_sum, self._batches = 0.0, 0

    def on_train_start(self, trainer, pl_module):
        # A resumed run starts at a later epoch: only epochs run in this process time the rest.
        self._t0, self._first_epoch = time.perf_counter(), trainer.current_epoch

    def on_train_epoch_start(self, trainer, pl_module):
        self._t_epoch = time.perf_counter()
        self._loss_sum, self._batches = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss.detach())
            self._batches += 1

    def on_train_epoch_end(self, trainer, pl_module):
        # Runs after the epoch's validation loop, so the val/ metrics are this epoch's.
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        done, total = trainer.current_epoch + 1, trainer.max_epochs
        now = time.perf_counter()
        parts = [f"epoch {done}/{total}"]
        if self._batches:
            parts.append(f"train loss {self._loss_sum / self._batches:.4f}")
        metrics = trainer.callback_metrics
        if "val/masked_mse" in metrics:
            parts.append(f"val masked MSE {float(metrics['val/masked_mse']):.4f}")
        if "val/r2" in metrics:
            parts.append(f"val R² {float(metrics['val/r2']):.3f}")
        parts.append(f"{now - self._t_epoch:.0f} s")
        if total and total > 0 and done < total:
            left = (now - self._t0) / (done - self._first_epoch) * (total - done)
            parts.append(f"~{left / 60:.1f} min left")
        print(" · ".join(parts), file=self.stream or sys.stdout, flush=True)


class _DropNotices(logging.Filter):
    """Drops Lightning's info lines that say nothing about this run."""

    NOTICES = ("Tip:", "to estimate number of stepping batches")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOTICES)


def _quiet_lightning() -> None:
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropNotices) for f in log.filters):
        log.addFilter(_DropNotices())
    # Raised inside Lightning's own pytree helper by newer torch; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def progress_callbacks(progress: bool) -> tuple[bool, list[L.Callback]]:
    """``(enable_progress_bar, extra callbacks)`` for a Trainer: Lightning's bar on a terminal,
    :class:`EpochLines` elsewhere, nothing when ``progress`` is off."""
    _quiet_lightning()
    if not progress:
        return False, []
    if sys.stdout.isatty():
        return True, []
    return False, [EpochLines()]
