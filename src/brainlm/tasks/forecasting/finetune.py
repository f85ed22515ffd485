"""Fine-tune a pretrained BrainLM to forecast: ``context_trs`` TRs in, ``horizon_trs`` TRs out.

Training is masked prediction with the future mask (``MaskSpec(strategy="future",
future_trs=horizon_trs)``) on windows of ``context_trs + horizon_trs`` TRs, so the encoder never
sees the TRs it predicts and the MAE decoder serves as the forecasting head (no new weights: the
fine-tuned model is an ordinary checkpoint). The same architecture from random initialisation is
trained with exactly the same budget (epochs, crops, batches, learning-rate schedule, seed) as
the "untrained model" control of the BrainLM paper.

Output folder::

    finetune.json        settings, per-epoch training and validation times, validation forecast
                         MSE before and after, for each model
    model/               the fine-tuned checkpoint (+ forecasting.json: context and horizon)
    scratch/             random initialisation, same budget (+ forecasting.json)
    logs/{finetuned,scratch}/version_0/metrics.csv   Lightning CSV logs
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from brainlm.data.atomic import publish_directory, write_text_atomic
from brainlm.errors import BrainLMInputError
from brainlm.tasks.forecasting.windows import check_lengths

FORMAT = "brainlm-forecast-finetune"


@dataclass
class FinetuneSettings:
    """What defines a fine-tuning run (saved in ``finetune.json``).

    Parameters
    ----------
    context_trs, horizon_trs : int
        TRs seen and predicted; both windows lengths must be multiples of the patch length.
    epochs, batch_size, crops_per_recording
        Each epoch draws ``crops_per_recording`` random windows per training recording.
    lr : float
        Peak learning rate (AdamW, betas 0.9/0.95, cosine schedule after ``warmup_fraction``
        of the steps with linear warm-up), the same for both models.
    weight_decay, clip
        Decoupled weight decay (off biases, norms, CLS/mask tokens) and gradient-norm clipping.
    seed : int
        Seeds weights of the scratch model, crops and their order (identical for both models).
    scratch : bool
        Also train the same architecture from random initialisation.
    transfer_atlas : bool
        Allow a corpus on another atlas than the checkpoint's (through parcel coordinates).
    """

    context_trs: int = 180
    horizon_trs: int = 20
    epochs: int = 10
    batch_size: int = 16
    crops_per_recording: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    clip: float = 1.0
    seed: int = 0
    scratch: bool = True
    transfer_atlas: bool = False
    accelerator: str = "auto"
    precision: str = "auto"


def finetune(checkpoint: str | Path, corpus: str | Path, out: str | Path,
             settings: FinetuneSettings | None = None, *, overwrite: bool = False,
             progress: bool = False) -> dict:
    """Fine-tune ``checkpoint`` on the training split of ``corpus`` and write ``out``.

    The best epoch by validation forecast MSE (the ``val`` split's deterministic tiles) is kept
    for each model. ``out`` appears only when everything is written (built in a temporary folder
    beside it, then renamed).

    Returns
    -------
    dict
        The content of ``finetune.json``.

    Raises
    ------
    BrainLMInputError
        Horizon or window not a multiple of the patch length, a window longer than the training
        or validation recordings, an atlas other than the checkpoint's, an existing ``out``
        without ``overwrite``.
    """
    from brainlm.data.corpus import Corpus
    from brainlm.model.brainlm import BrainLM
    from brainlm.model.masking import MaskSpec
    from brainlm.tasks.forecasting.api import FORECASTING_FILE, with_window

    s = settings or FinetuneSettings()
    out = Path(out)
    pretrained = BrainLM.from_pretrained(checkpoint)
    check_lengths(s.context_trs, s.horizon_trs, pretrained.config.patch_trs, source=str(checkpoint))
    if s.epochs < 1 or s.batch_size < 1 or s.crops_per_recording < 1 or not s.lr > 0:
        raise BrainLMInputError("epochs, batch_size, crops_per_recording and lr must be positive")
    data = Corpus(corpus)
    pretrained.check_atlas(data.atlas, transfer=s.transfer_atlas, source=data.path)
    window = s.context_trs + s.horizon_trs
    for split in ("train", "val"):
        rows = data.split_indices(split)
        longest = int(data.manifest["n_trs"].to_numpy()[rows].max())
        if longest < window:
            raise BrainLMInputError(
                f"context + horizon = {window} TRs is longer than every recording of split "
                f"{split!r} (longest {longest} TRs)", data.path)
    if out.exists() and not overwrite:
        raise BrainLMInputError("output folder exists; pass overwrite=True (--overwrite) to replace it",
                                str(out))
    model = with_window(pretrained, window)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = {"format": FORMAT, "checkpoint": str(Path(checkpoint).resolve()),
                   "corpus": str(Path(corpus).resolve()) if "://" not in str(corpus) else str(corpus),
                   "settings": asdict(s), "window_trs": window, "tr_s": data.tr,
                   "train_recordings": int(len(data.split_indices("train"))),
                   "val_recordings": int(len(data.split_indices("val"))), "models": {}}
        kinds = [("finetuned", "model")] + ([("scratch", "scratch")] if s.scratch else [])
        for kind, folder in kinds:
            init = model.state_dict() if kind == "finetuned" else None
            trained, info = _train(init, model.config, data, MaskSpec("future", future_trs=s.horizon_trs),
                                   s, tmp, kind, progress)
            trained.save_pretrained(tmp / folder)
            write_text_atomic(tmp / folder / FORECASTING_FILE, json.dumps(
                {"context_trs": s.context_trs, "horizon_trs": s.horizon_trs,
                 "initialisation": "pretrained" if kind == "finetuned" else "random",
                 "pretrained_checkpoint": summary["checkpoint"]}, indent=2))
            summary["models"][kind] = {"folder": folder, **info}
        write_text_atomic(tmp / "finetune.json", json.dumps(summary, indent=2))
        publish_directory(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _train(init_state, config, data, mask, s: FinetuneSettings, tmp: Path, kind: str, progress: bool):
    """One Lightning fit; returns (best model, timing and validation summary)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from brainlm.data.windows import CorpusDataModule
    from brainlm.train.module import PretrainModule
    from brainlm.train.progress import progress_callbacks

    L.seed_everything(s.seed, workers=True, verbose=False)
    module = PretrainModule(config.to_dict(), mask.to_dict(), lr=s.lr, weight_decay=s.weight_decay,
                            warmup_fraction=s.warmup_fraction, contract=data.contract.to_dict(),
                            atlas=data.atlas.to_dict())
    if init_state is not None:
        module.model.load_state_dict(init_state, strict=True)
    dm = CorpusDataModule(data.path, window_trs=config.window_trs, batch_size=s.batch_size,
                          crops_per_recording=s.crops_per_recording,
                          storage_options=data.storage_options)
    precision = s.precision
    if precision == "auto":
        gpu = s.accelerator in ("gpu", "cuda") or (s.accelerator == "auto" and torch.cuda.is_available())
        precision = "bf16-mixed" if gpu else "32-true"
    timer = _EpochTimes()
    best = ModelCheckpoint(dirpath=tmp / f".checkpoints-{kind}", filename="best", monitor="val/masked_mse",
                           mode="min", save_top_k=1)
    bar, progress_lines = progress_callbacks(progress)
    trainer = L.Trainer(
        max_epochs=s.epochs, accelerator=s.accelerator, devices=1, precision=precision,
        gradient_clip_val=s.clip, logger=CSVLogger(tmp / "logs", name=kind),
        callbacks=[best, timer, *progress_lines], enable_progress_bar=bar, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1, default_root_dir=tmp,
        # no_grad rather than inference mode in validate(): the metric states it resets must stay
        # ordinary tensors for the validation inside fit().
        inference_mode=False)
    # The validation forecast error before any fine-tuning: the zero-shot reference.
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/masked_mse"]
    timer.reset()
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - start
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    shutil.rmtree(tmp / f".checkpoints-{kind}", ignore_errors=True)
    n_windows = len(dm.train_dataloader().dataset)
    info = {"initialisation": "pretrained" if init_state is not None else "random",
            "val_mse_before": float(before), "best_val_mse": float(best.best_model_score),
            # ModelCheckpoint replaces its best only on a strictly lower score: the first minimum.
            "best_epoch": int(np.argmin(timer.val_mse)),
            "epochs": s.epochs, "train_windows_per_epoch": n_windows,
            "train_seconds_per_epoch": [round(t, 3) for t in timer.train_seconds],
            "val_seconds_per_epoch": [round(t, 3) for t in timer.val_seconds],
            "fit_seconds": round(fit_s, 2), "val_mse_per_epoch": timer.val_mse}
    return module.model.cpu().eval(), info


class _EpochTimes(L.Callback):
    """Wall time of each training epoch (validation excluded) and the validation forecast MSE."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.train_seconds, self.val_seconds, self.val_mse = [], [], []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._val = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit":
            return
        seconds = time.perf_counter() - self._val_start
        self._val += seconds
        self.val_seconds.append(seconds)
        self.val_mse.append(float(trainer.callback_metrics["val/masked_mse"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.train_seconds.append(time.perf_counter() - self._start - self._val)
