"""Fine-tune a pretrained BrainLM to forecast: ``context_trs`` TRs in, ``horizon_trs`` TRs out.

Training is masked prediction with the future mask (``MaskSpec(strategy="future",
future_trs=horizon_trs)``) on windows of ``context_trs + horizon_trs`` TRs, so the encoder never
sees the TRs it predicts and the MAE decoder serves as the forecasting head (no new weights: the
fine-tuned model is an ordinary checkpoint). The same architecture from random initialisation is
trained with exactly the same budget (epochs, crops, batches, learning-rate schedule, seed) as
the "untrained model" control of the BrainLM paper. Data are read as every task reads them for
the checkpoint (:func:`brainlm.tasks.model_input.model_scaler`: same cleaning required, the
checkpoint's scaling), and both fits run through the one trainer
(:func:`brainlm.train.trainer.make_trainer`).

Output folder::

    finetune.json        settings, per-epoch training and validation times, validation forecast
                         MSE before and after, for each model
    model/               the fine-tuned checkpoint (+ forecasting.json: context and horizon)
    scratch/             random initialisation, same budget (+ forecasting.json)
    logs/{finetuned,scratch}/version_0/metrics.csv   Lightning CSV logs
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
from torch import nn

from brainlm.data.atlas import Atlas
from brainlm.data.atomic import atomic_directory, write_json
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.windows import CorpusDataModule, require_window
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import SPATIAL_BASELINE, pretraining_spatial_statistics, save_pretrained
from brainlm.checkpoints.shipped import resolve_checkpoint
from brainlm.model.brainlm import BrainLM
from brainlm.model.family import require_parcel_patch_tokens
from brainlm.model.masking import MaskSpec
from brainlm.model.precision import resolve_precision
from brainlm.tasks.forecasting.api import FORECASTING_FILE, with_window
from brainlm.tasks.forecasting.carry import (CARRY_LABELS, carry_lags, resolve_carry, start_carry,
                                            with_carry)
from brainlm.tasks.forecasting.windows import check_lengths, split_recordings
from brainlm.tasks.model_input import load_model, model_scaler, random_like
from brainlm.train.module import PretrainModule
from brainlm.train.supervised import EpochTimes
from brainlm.train.trainer import BestEpoch, TrainerLogs, TrainerSettings, make_trainer

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
    carry : {"auto", "none", "linear", "var"}
        The path that carries the present forward, inside the model
        (:mod:`brainlm.tasks.forecasting.carry`; ``BrainLMConfig.forecast_carry``): ``var``, a
        ridge VAR fitted in closed form on the training split, whose forecast the decoder
        corrects; ``linear``, a learned map from the last TRs starting at persistence; ``none``,
        the decoder alone (the model before carry paths). ``auto`` (default): ``var`` for a
        BrainLM checkpoint, which won on held-out data (docs/forecasting.md), ``none`` for one
        that cannot have a carry path (an imported upstream model). Both saved
        models get it; results are labelled with it.
    carry_lags : int, optional
        TRs the carry path reads (default: 2 for ``var``, the VAR baseline's order; 20 for
        ``linear``).
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
    carry: str = "auto"
    carry_lags: int | None = None

    def trainer_settings(self) -> TrainerSettings:
        """The trainer part of these settings (one device; the same for both models)."""
        return TrainerSettings(self.epochs, accelerator=self.accelerator, devices=1, precision=self.precision,
                               gradient_clip=self.clip)


@dataclass(frozen=True)
class _Inputs:
    """What both fits of a run share, settled before anything is written.

    Attributes
    ----------
    pretrained : the loaded checkpoint
    model : nn.Module
        The architecture to train: the checkpoint on windows of ``context + horizon`` TRs, with
        its carry path.
    data, scaler, atlas
        The corpus, the numbers the model reads (its contract), the atlas of the saved models.
    on_model_atlas : bool
        The corpus is on the checkpoint's own atlas (not a transferred one).
    carry, lags : str, int
        The carry path and the TRs it reads.
    carry_data : optional
        The training recordings the ``var`` carry is fitted on (None for other paths).
    precision : str
        The resolved precision of both fits.
    """

    pretrained: nn.Module
    model: nn.Module
    data: Corpus
    scaler: PreprocessingContract
    atlas: Atlas
    on_model_atlas: bool
    carry: str
    lags: int
    carry_data: object
    precision: str


def finetune(checkpoint: str | Path, corpus: str | Path, out: str | Path,
             settings: FinetuneSettings | None = None, *, overwrite: bool = False,
             progress: bool = False) -> dict:
    """Fine-tune ``checkpoint`` on the training split of ``corpus`` and write ``out``.

    The corpus is read as every task reads it for this checkpoint
    (:func:`brainlm.tasks.model_input.model_scaler`): its cleaning must match the pretraining
    data's, and windows are scaled with the checkpoint's statistics. Both saved models carry the
    pretrained checkpoint's contract and atlas (on a transferred atlas: the corpus' atlas and
    scaling, which the checkpoint has none of). The best epoch by validation forecast MSE (the
    ``val`` split's deterministic tiles) is kept for each model. ``out`` appears only when
    everything is written (built in a temporary folder beside it, then renamed).

    Returns
    -------
    dict
        The content of ``finetune.json``.

    Raises
    ------
    BrainLMInputError
        Horizon or window not a multiple of the patch length, a window longer than the training
        or validation recordings, an atlas other than the checkpoint's, a corpus cleaned
        differently from the checkpoint's pretraining data, an existing ``out`` without
        ``overwrite``.
    """
    s = settings or FinetuneSettings()
    out = Path(out)
    inputs = _prepare(checkpoint, corpus, out, s, overwrite)
    summary = _summary(checkpoint, corpus, s, inputs)
    with atomic_directory(out, overwrite=overwrite) as build:
        kinds = [("finetuned", "model")] + ([("scratch", "scratch")] if s.scratch else [])
        for kind, folder in kinds:
            info = _fit_and_save(inputs, s, build, kind, folder, summary, progress)
            summary["models"][kind] = {"folder": folder, **info}
        write_json(build / "finetune.json", summary)
    return summary


def _prepare(checkpoint, corpus, out: Path, s: FinetuneSettings, overwrite: bool) -> _Inputs:
    """Phase 1: every check on the checkpoint, the settings, the corpus and ``out`` (before any
    file is written), and the model to train."""
    pretrained = load_model(checkpoint)
    require_parcel_patch_tokens(pretrained, "forecasting fine-tuning (the future mask hides whole time patches)")
    check_lengths(s.context_trs, s.horizon_trs, pretrained.config.patch_trs, source=str(checkpoint))
    if s.epochs < 1 or s.batch_size < 1 or s.crops_per_recording < 1 or not s.lr > 0:
        raise BrainLMInputError("epochs, batch_size, crops_per_recording and lr must be positive")
    carry = resolve_carry(s.carry, pretrained)
    lags = carry_lags(carry, s.carry_lags)
    if carry != "none" and not isinstance(pretrained, BrainLM):
        raise BrainLMInputError(f"carry {carry!r} needs a BrainLM checkpoint; {type(pretrained).__name__} "
                                "has no carry path (use carry 'none')", str(checkpoint))
    width = getattr(pretrained.config, "dim", None)
    precision = resolve_precision(s.precision, s.accelerator, width)
    s.trainer_settings()  # a clip out of range is refused here, before any file is written
    data = Corpus(corpus)
    scaler = model_scaler(pretrained, data, transfer_atlas=s.transfer_atlas)
    # The checkpoint's atlas; on a transferred atlas the corpus' (its parcels are the ones modelled).
    on_model_atlas = pretrained.atlas is not None and data.atlas.matches(pretrained.atlas)
    atlas = pretrained.atlas if on_model_atlas else data.atlas
    window = s.context_trs + s.horizon_trs
    for split in ("train", "val"):
        require_window(data, split, window, what="context + horizon")
    if out.exists() and not overwrite:
        raise BrainLMInputError("output folder exists; pass overwrite=True (--overwrite) to replace it",
                                str(out))
    model = with_window(pretrained, window)
    # The var carry is fitted on the training split, in the numbers the model reads.
    fit_on = split_recordings(data, "train", min_trs=lags + 1, scaler=scaler) if carry == "var" else None
    if carry != "none":
        model = with_carry(model, carry, lags, s.horizon_trs, fit_on)
    return _Inputs(pretrained, model, data, scaler, atlas, on_model_atlas, carry, lags, fit_on, precision)


def _summary(checkpoint, corpus, s: FinetuneSettings, inputs: _Inputs) -> dict:
    """Phase 2: ``finetune.json`` before the fits (each adds its entry to ``models``)."""
    data = inputs.data
    return {"format": FORMAT, "checkpoint": str(resolve_checkpoint(checkpoint).resolve()),
            "corpus": str(Path(corpus).resolve()) if "://" not in str(corpus) else str(corpus),
            "settings": asdict(s), "precision": inputs.precision, "window_trs": s.context_trs + s.horizon_trs,
            "tr_s": data.tr, "train_recordings": int(len(data.split_indices("train"))),
            "val_recordings": int(len(data.split_indices("val"))),
            "carry": {"path": inputs.carry, "lags": inputs.lags, "label": CARRY_LABELS.get(inputs.carry)},
            "models": {}}


def _fit_and_save(inputs: _Inputs, s: FinetuneSettings, build: Path, kind: str, folder: str, summary: dict,
                  progress: bool) -> dict:
    """Phase 3, once per model: train it (``finetuned`` from the checkpoint's weights,
    ``scratch`` from random ones) and save it to ``build/folder``; returns its timing and
    validation summary."""
    init = inputs.model.state_dict() if kind == "finetuned" else None
    trained, info = _train(init, inputs, s, build, kind, progress)
    # The fine-tuned forecaster keeps the pretraining data's spatial statistics (its
    # zero-shot baseline in evaluate recon); the scratch model never saw that data.
    stats = (pretraining_spatial_statistics(inputs.pretrained) if kind == "finetuned" and inputs.on_model_atlas
             else None)
    save_pretrained(trained, build / folder,
                    tensors=None if stats is None else {SPATIAL_BASELINE: stats.to_tensors()})
    write_json(build / folder / FORECASTING_FILE,
               {"context_trs": s.context_trs, "horizon_trs": s.horizon_trs,
                "initialisation": "pretrained" if kind == "finetuned" else "random",
                "carry": summary["carry"], "pretrained_checkpoint": summary["checkpoint"]})
    return info


def _module(init_state, inputs: _Inputs, s: FinetuneSettings) -> PretrainModule:
    """The Lightning module of one fit, seeded by ``s.seed``: ``init_state``'s weights, or a
    random initialisation (a carry path then starts as the pretrained model's does:
    :func:`~brainlm.tasks.forecasting.carry.start_carry` on the training recordings)."""
    model, config = inputs.model, inputs.model.config
    mask = MaskSpec("future", future_trs=s.horizon_trs)
    L.seed_everything(s.seed, workers=True, verbose=False)
    if isinstance(model, BrainLM):
        # Our own models: exactly the module (and random initialisation) pretraining uses.
        module = PretrainModule(config.to_dict(), mask.to_dict(), lr=s.lr, weight_decay=s.weight_decay,
                                warmup_fraction=s.warmup_fraction, contract=inputs.scaler.to_dict(),
                                atlas=inputs.atlas.to_dict())
    else:
        start = random_like(model, s.seed) if init_state is None else copy.deepcopy(model)
        start.contract = PreprocessingContract.from_dict(inputs.scaler.to_dict())
        start.atlas = inputs.atlas
        if not start.has_parcel_patch_tokens:
            raise BrainLMInputError(f"{type(start).__name__} has no parcel x time-patch tokens; "
                                    "forecasting fine-tuning needs them (the image ViT-MAE cannot "
                                    "hide the future as whole tokens)")
        module = PretrainModule(None, mask.to_dict(), lr=s.lr, weight_decay=s.weight_decay,
                                warmup_fraction=s.warmup_fraction, model=start)
    if init_state is not None:
        module.model.load_state_dict(init_state, strict=True)
    elif getattr(config, "forecast_carry", "none") != "none":
        start_carry(module.model, inputs.carry_data)
    return module


def _train(init_state, inputs: _Inputs, s: FinetuneSettings, build: Path, kind: str, progress: bool):
    """One fit through the shared trainer; returns (best model, timing and validation summary).

    ``inputs.model`` gives the architecture (and ``config``); ``init_state`` its starting
    weights, or None for a random initialisation (:func:`_module`).
    """
    module = _module(init_state, inputs, s)
    data = inputs.data
    dm = CorpusDataModule(data.path, window_trs=inputs.model.config.window_trs, batch_size=s.batch_size,
                          crops_per_recording=s.crops_per_recording,
                          storage_options=data.storage_options, scaler=inputs.scaler)
    timer = EpochTimes(monitor="val/masked_mse")
    setup = make_trainer(
        s.trainer_settings(), best=BestEpoch("val/masked_mse", keep="memory"),
        logs=TrainerLogs(build / "logs", ("csv",), name=kind), width=inputs.model.config.dim,
        progress=progress, callbacks=[timer], log_every_n_steps=1, default_root_dir=build,
        # no_grad rather than inference mode in validate(): the metric states it resets must stay
        # ordinary tensors for the validation inside fit().
        inference_mode=False)
    trainer = setup.trainer
    # The validation forecast error before any fine-tuning: the zero-shot reference (not a
    # candidate for the best epoch: the run reports what training made).
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/masked_mse"]
    timer.reset()
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - start
    setup.restore_best(module)
    n_windows = len(dm.train_dataloader().dataset)
    info = {"initialisation": "pretrained" if init_state is not None else "random",
            "val_mse_before": float(before), "best_val_mse": setup.best_score,
            # The first epoch with the lowest score (a later tie does not replace it), from 0.
            "best_epoch": setup.best.best_epoch - 1,
            "epochs": s.epochs, "train_windows_per_epoch": n_windows,
            "train_seconds_per_epoch": [round(t, 3) for t in timer.train_seconds],
            "val_seconds_per_epoch": [round(t, 3) for t in timer.val_seconds],
            "fit_seconds": round(fit_s, 2), "val_mse_per_epoch": timer.val_scores}
    return module.model.cpu().eval(), info
