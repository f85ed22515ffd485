"""``brainlm pretrain CORPUS --preset NAME --out RUN``.

A run folder holds ``run_config.json`` (everything that defines the run), Lightning's
``checkpoints/`` (training state for ``--resume``), ``logs/{tensorboard,csv}/version_N`` (one
version per start or resume),
``model/`` (the exported checkpoint: safetensors + config + contract + atlas) and
``metrics.json`` (final validation metrics next to the trivial baselines).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor

from brainlm.data.atomic import write_json
from brainlm.data.corpus import Corpus
from brainlm.data.windows import CorpusDataModule, require_window
from brainlm.errors import BrainLMInputError
from brainlm.model.checkpoint import save_pretrained
from brainlm.model.config import BASE_LR, preset
from brainlm.model.masking import MaskSpec
from brainlm.train.module import PretrainModule
from brainlm.train.trainer import make_trainer


@dataclass
class PretrainSettings:
    """Everything that defines a pretraining run (saved as ``run_config.json``).

    ``base_lr`` is per 256 windows: the peak learning rate is ``base_lr * effective_batch / 256``
    with ``effective_batch = batch_size * accumulate * devices * num_nodes`` (paper: 1e-3; the
    default depends on the preset, see ``brainlm.model.config.BASE_LR``).
    """

    corpus: str
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    mask_strategy: str = "random"
    mask_ratio: float = 0.75
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

    def effective_batch(self) -> int:
        devices = self.devices if isinstance(self.devices, int) else 1
        return self.batch_size * self.accumulate * devices * self.num_nodes


# Keys that may change between a run and its --resume without changing what is trained.
_RESUMABLE = {"epochs", "num_workers", "corpus"}


def pretrain(settings: PretrainSettings, out: str | Path, *, resume: bool = False,
             progress: bool = True, limit_train_batches: int | float | None = None) -> dict:
    """Pretrain and export; returns the final validation metrics.

    Raises
    ------
    BrainLMInputError
        Unknown preset, a window longer than every training recording, ``--resume`` from a run
        with a different configuration, an existing run folder without ``--resume``.
    """
    out = Path(out)
    config = preset(settings.preset, **settings.model_overrides)
    mask = MaskSpec(settings.mask_strategy, settings.mask_ratio, settings.future_trs)
    corpus = Corpus(settings.corpus)
    require_window(corpus, "train", config.window_trs)
    _check_run_folder(out, settings, resume)

    L.seed_everything(settings.seed, workers=True, verbose=False)
    base_lr = settings.base_lr if settings.base_lr is not None else BASE_LR[settings.preset]
    lr = base_lr * settings.effective_batch() / 256
    module = PretrainModule(config.to_dict(), mask.to_dict(), lr=lr, weight_decay=settings.weight_decay,
                            warmup_fraction=settings.warmup_fraction, contract=corpus.contract.to_dict(),
                            atlas=corpus.atlas.to_dict())
    # Pretraining reads the corpus with its own contract: the checkpoint inherits it.
    data = CorpusDataModule(settings.corpus, window_trs=config.window_trs, batch_size=settings.batch_size,
                            num_workers=settings.num_workers, crops_per_recording=settings.crops_per_recording)
    setup = make_trainer(
        max_epochs=settings.epochs, accelerator=settings.accelerator, devices=settings.devices,
        num_nodes=settings.num_nodes, strategy=settings.strategy, precision=settings.precision,
        monitor="val/masked_mse", best="checkpoint", checkpoint_dir=out / "checkpoints", save_last=True,
        # A new version_N folder per (re)start, so --resume never overwrites earlier logs.
        log_dir=out / "logs", loggers=("tensorboard", "csv"), progress=progress,
        callbacks=[LearningRateMonitor(logging_interval="step")],
        accumulate_grad_batches=settings.accumulate, gradient_clip_val=settings.clip,
        log_every_n_steps=5, default_root_dir=out, limit_train_batches=limit_train_batches,
        enable_model_summary=progress)
    trainer = setup.trainer
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume and last.exists() else None)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if trainer.is_global_zero:
        setup.restore_best(module)
        save_pretrained(module.model, out / "model")
        best = setup.best.best_model_path
        summary = {"metrics_last_epoch": metrics, "best_checkpoint": Path(best).name if best else None,
                   "best_val_masked_mse": setup.best_score,
                   "epochs": trainer.current_epoch, "peak_lr": lr, "effective_batch": settings.effective_batch(),
                   "parameters": module.model.count_parameters(), "precision": setup.precision}
        write_json(out / "metrics.json", summary)
    return metrics


def _check_run_folder(out: Path, settings: PretrainSettings, resume: bool) -> None:
    cfg_path = out / "run_config.json"
    current = json.loads(json.dumps(settings.__dict__))
    if resume:
        if not cfg_path.is_file():
            raise BrainLMInputError("--resume given but this is not a run folder (no run_config.json)", str(out))
        old = json.loads(cfg_path.read_text())
        differing = sorted(k for k in set(old) | set(current)
                           if k not in _RESUMABLE and old.get(k) != current.get(k))
        if differing:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {current.get(k)!r}" for k in differing)
            raise BrainLMInputError(f"cannot resume: the configuration differs in {detail}", str(out))
    elif cfg_path.exists():
        raise BrainLMInputError("run folder already holds a run; pass --resume to continue it or "
                                "choose another --out", str(out))
    out.mkdir(parents=True, exist_ok=True)
    write_json(cfg_path, current)
