"""The LightningModule that pretrains BrainLM by masked prediction."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanSquaredError, R2Score

from brainlm.data.atlas import Atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.model.brainlm import BrainLM
from brainlm.model.config import BrainLMConfig
from brainlm.model.masking import MaskSpec
from brainlm.train.augment import augment_windows


class PretrainModule(L.LightningModule):
    """Masked-autoencoder pretraining.

    Parameters
    ----------
    config, mask : dict
        ``BrainLMConfig`` and ``MaskSpec`` fields.
    lr : float
        Peak learning rate (already scaled by the effective batch size).
    weight_decay : float
        AdamW decoupled weight decay (not applied to biases, norms, CLS and mask tokens).
    warmup_fraction : float
        Fraction of optimizer steps with a linear warm-up before the cosine decay.
    contract, atlas : dict, optional
        Stored with the model so the exported checkpoint carries them.
    val_seed : int
        Validation masks are drawn from this seed and the batch index: the same every epoch.
    augment : list of str
        Augmentations of training windows (:data:`brainlm.train.augment.AUGMENTATIONS`);
        validation windows are never augmented.
    model : nn.Module, optional
        A model already built, used instead of a ``BrainLM`` from ``config`` (then None), e.g. an
        imported original BrainLM paper model. The steps need ``sample_mask``, ``patchify`` and
        ``model(x, xyz, mask) -> (loss, predicted patches [B, P, N, k])``: tokens that are one
        parcel's patch of TRs.
    """

    def __init__(self, config: dict | None, mask: dict, lr: float = 1e-3, weight_decay: float = 0.05,
                 warmup_fraction: float = 0.05, contract: dict | None = None, atlas: dict | None = None,
                 val_seed: int = 1234, augment: list | None = None, model: nn.Module | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if model is None:
            model = BrainLM(BrainLMConfig.from_dict(config),
                            contract=PreprocessingContract.from_dict(contract) if contract else None,
                            atlas=Atlas.from_dict(atlas) if atlas else None)
        self.model = model
        self.mask_spec = MaskSpec(**mask)
        self.val_mse = MeanSquaredError()
        self.val_r2 = R2Score()
        self.val_zero_mse = MeanSquaredError()
        self.val_mean_mse = MeanSquaredError()

    def training_step(self, batch, batch_idx):
        x, xyz = batch["window"], batch["xyz"]
        x = augment_windows(x, tuple(self.hparams.augment or ()))
        mask = self.model.sample_mask(self.mask_spec, x.shape[0], x.shape[2], device=x.device)
        loss, _ = self.model(x, xyz, mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        x, xyz = batch["window"], batch["xyz"]
        gen = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        mask = self.model.sample_mask(self.mask_spec, x.shape[0], x.shape[2], generator=gen, device=x.device)
        loss, pred = self.model(x, xyz, mask)
        target = self.model.patchify(x)
        # Trivial baselines on the same masked values: zero (the scaled median) and each
        # parcel's mean over its visible patches in the window.
        visible = (~mask)[..., None].to(target.dtype)
        n_vis = visible.sum(dim=(2, 3), keepdim=True) * target.shape[-1]
        parcel_mean = (target * visible).sum(dim=(2, 3), keepdim=True) / n_vis.clamp(min=1)
        p, t = pred[mask].float().flatten(), target[mask].float().flatten()
        self.val_mse.update(p, t)
        self.val_r2.update(p, t)
        self.val_zero_mse.update(torch.zeros_like(t), t)
        self.val_mean_mse.update(parcel_mean.expand_as(target)[mask].flatten(), t)
        self.log("val/loss", loss, batch_size=x.shape[0], sync_dist=True)

    def on_validation_epoch_end(self):
        self.log_dict({"val/masked_mse": self.val_mse.compute(), "val/r2": self.val_r2.compute(),
                       "val/baseline_zero_mse": self.val_zero_mse.compute(),
                       "val/baseline_mean_mse": self.val_mean_mse.compute()}, prog_bar=True)
        for m in (self.val_mse, self.val_r2, self.val_zero_mse, self.val_mean_mse):
            m.reset()

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or name.endswith("_token") else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=self.hparams.lr, betas=(0.9, 0.95))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(int(self.hparams.warmup_fraction * total), 1)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
