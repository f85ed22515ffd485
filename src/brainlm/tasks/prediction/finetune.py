"""Regression and classification heads on the BrainLM encoder: linear probe, full fine-tuning
and LoRA, each with early stopping on a validation split of the training subjects.

The head is one linear layer on ``[CLS, mean of patch tokens]`` (2 D features) of a window,
nothing masked. A recording's prediction averages its windows.

* ``linear_probe``: the encoder is frozen; only the head learns (on window embeddings, which
  are computed once, see :class:`LinearProbe`);
* ``full``: every encoder weight learns too (a smaller learning rate than the head's);
* ``lora``: the encoder's weights are frozen and every ``nn.Linear`` of its blocks (attention
  ``qkv`` and ``proj``, both MLP layers) gets a trainable low-rank update
  ``W x + (alpha / r) B A x`` (Hu et al. 2021), B initialised to zero so training starts from
  the pretrained encoder.

For ``full`` and ``lora`` the head starts from a linear probe on the frozen features (LP-FT:
fine-tuning from a random head distorts pretrained features before the head is useful), and
the starting point is a candidate of early stopping.

The decoder is never used and never trained.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression, RidgeCV
from torch import nn

from brainlm.errors import BrainLMInputError
from brainlm.model.family import MaskedBrainModel
from brainlm.model.precision import autocast, resolve_precision
from brainlm.tasks.model_input import load_model
from brainlm.tasks.prediction.training import (WindowedHead, check_series, random_crops,
                                              recording_tiles)

MODES = ("linear_probe", "full", "lora")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * x A^T B^T`` with ``base`` frozen.

    Parameters
    ----------
    base : nn.Linear
        The pretrained layer (its weights stay as they are).
    rank : int
        Rank r of the update.
    alpha : float
        Scale numerator; the update is multiplied by ``alpha / rank``.
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        if rank < 1:
            raise BrainLMInputError(f"LoRA rank {rank}; expected >= 1")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_features] -> [..., out_features]."""
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


def add_lora(model: MaskedBrainModel, rank: int = 4, alpha: float = 8.0) -> list[str]:
    """Replace every ``nn.Linear`` inside the encoder blocks by a :class:`LoRALinear` (in place).

    Returns the names of the wrapped layers (``blocks.0.attn.qkv`` ...).
    """
    wrapped = []
    for name, module in list(model.blocks.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"blocks.{name + '.' if name else ''}{child_name}")
    return wrapped


class EncoderHead(nn.Module):
    """The BrainLM encoder and a linear head: window [B, T, P] -> output [B].

    Parameters
    ----------
    model : MaskedBrainModel
        Any family; its encoder is used as is (copy it first if it must stay untouched).
    xyz : Tensor [P, 3]
        Parcel MNI coordinates in mm.
    """

    def __init__(self, model: MaskedBrainModel, xyz: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("xyz", xyz.float())
        self.head = nn.Linear(2 * model.config.dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, P] -> [B, 2 D] (CLS, mean of patch tokens)."""
        cls, mean = self.model.pool_tokens(self.model.forward_encoder(x, self.xyz.expand(len(x), -1, -1)))
        return torch.cat([cls, mean], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)


def _check(value, ok: bool, field: str, expected: str) -> None:
    if not ok:
        raise BrainLMInputError(f"FineTuneSchedule {field} {value!r}; expected {expected}")


def _whole(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def _real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


@dataclass(frozen=True)
class FineTuneSchedule:
    """How :class:`BrainLMFineTuner` optimises: one value of a grid search (it is a parameter of
    the estimator, so ``clone`` and ``GridSearchCV`` copy it whole).

    Parameters
    ----------
    lr : float
        Learning rate of the head and of the LoRA adapters.
    encoder_lr : float
        Learning rate of the encoder weights in ``full`` mode.
    weight_decay : float
        AdamW's decoupled weight decay.
    max_epochs, patience : int
        Stop after ``max_epochs``, or ``patience`` epochs without a lower validation loss.
    batch_size : int
        Windows per batch (training, the probe start and prediction).

    Raises
    ------
    BrainLMInputError
        A field out of range, named with what was expected.
    """

    lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.01
    max_epochs: int = 10
    patience: int = 3
    batch_size: int = 16

    def __post_init__(self):
        for name in ("lr", "encoder_lr"):
            value = getattr(self, name)
            _check(value, _real(value) and value > 0, name, "a positive number")
        _check(self.weight_decay, _real(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "0 or more")
        for name in ("max_epochs", "patience", "batch_size"):
            _check(getattr(self, name), _whole(getattr(self, name)), name, "a positive whole number")


class BrainLMFineTuner(WindowedHead, BaseEstimator):
    """A head on the BrainLM encoder, trained with early stopping.

    Parameters
    ----------
    checkpoint : str, path or BrainLM
        The pretrained model (copied; the original is not modified).
    mode : {"linear_probe", "full", "lora"}
    task : {"regression", "classification"}
    schedule : FineTuneSchedule
        Learning rates, weight decay, epochs, patience and batch size; every epoch draws one
        random window per training recording.
    lora_rank, lora_alpha : int, float
        LoRA rank and scale (``alpha / rank``).
    val_fraction, random_state
        As in :class:`~brainlm.tasks.prediction.baselines.LSTMEstimator`.
    probe_init : bool
        Start the head from a linear probe fitted on the frozen encoder's features of the
        training windows (LP-FT): fine-tuning then starts where the probe ends.
    atlas : Atlas, optional
        Atlas of the inputs (default: the checkpoint's), for the parcel coordinates.
    device : str
    precision : str
        ``32-true`` (default) or ``bf16-mixed`` for the encoder's forward and backward passes
        (``auto``: :func:`brainlm.model.precision.resolve_precision`); the head's probe start is
        fitted on features computed in the same precision.

    ``fit(X, y, groups)`` takes X as a list of (T, P) model-input arrays (cleaned and scaled with
    the checkpoint's contract, as a corpus read gives).
    """

    def __init__(self, checkpoint=None, mode: str = "lora", task: str = "regression", *,
                 schedule: FineTuneSchedule = FineTuneSchedule(), lora_rank: int = 4, lora_alpha: float = 8.0,
                 val_fraction: float = 0.2, random_state: int = 0, probe_init: bool = True, atlas=None,
                 device: str = "cpu", precision: str = "32-true"):
        self.checkpoint = checkpoint
        self.mode = mode
        self.task = task
        self.schedule = schedule
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.probe_init = probe_init
        self.atlas = atlas
        self.device = device
        self.precision = precision

    # What WindowedHead reads, from the schedule (not parameters of their own: get_params and
    # clone see the schedule whole).
    @property
    def max_epochs(self) -> int:
        return self._schedule().max_epochs

    @property
    def patience(self) -> int:
        return self._schedule().patience

    @property
    def batch_size(self) -> int:
        return self._schedule().batch_size

    def _schedule(self) -> FineTuneSchedule:
        if not isinstance(self.schedule, FineTuneSchedule):
            raise BrainLMInputError(f"schedule {self.schedule!r}; expected a FineTuneSchedule")
        return self.schedule

    def _model(self) -> MaskedBrainModel:
        if self.mode not in MODES:
            raise BrainLMInputError(f"fine-tuning mode {self.mode!r}; expected one of {MODES}")
        if self.checkpoint is None:
            raise BrainLMInputError("BrainLMFineTuner needs a checkpoint (a folder or a BrainLM)")
        return copy.deepcopy(load_model(self.checkpoint, self.device))

    def _prepare(self, X):
        if not hasattr(self, "window_trs_"):
            model = load_model(self.checkpoint, self.device)
            atlas = self.atlas if self.atlas is not None else model.atlas
            self.window_trs_, self.xyz_ = model.config.window_trs, np.array(atlas.xyz, dtype=np.float32)
        return check_series(X, self.window_trs_, len(self.xyz_))

    def _build(self, items, targets):
        model = self._model()
        self.precision_ = resolve_precision(self.precision, self.device, getattr(model.config, "dim", None))
        for p in model.parameters():
            p.requires_grad_(False)
        net = EncoderHead(model, torch.from_numpy(self.xyz_)).to(self.device)
        schedule = self._schedule()
        groups = [{"params": list(net.head.parameters()), "lr": schedule.lr}]
        if self.mode == "full":
            encoder = [p for n, p in model.named_parameters()
                       if not n.startswith(("decoder", "mask_token"))]
            for p in encoder:
                p.requires_grad_(True)
            groups.append({"params": encoder, "lr": schedule.encoder_lr})
        elif self.mode == "lora":
            self.lora_layers_ = add_lora(model, self.lora_rank, self.lora_alpha)
            adapters = [p for n, p in model.named_parameters() if "lora_" in n]
            groups.append({"params": adapters, "lr": schedule.lr})
        model.to(self.device)
        if self.probe_init:
            self._fit_head(net, items, targets)
        self.n_trainable_ = int(sum(p.numel() for g in groups for p in g["params"]))
        return net, torch.optim.AdamW(groups, weight_decay=schedule.weight_decay)

    @torch.no_grad()
    def _fit_head(self, net: EncoderHead, items, targets: torch.Tensor) -> None:
        """Start the head from a linear probe on the frozen encoder (LP-FT, Kumar et al. 2022):
        ridge (regression) or logistic regression (classification) on the training windows'
        ``[CLS, mean]`` features, so fine-tuning starts from the probe's solution and early
        stopping can only improve on it (the start is epoch 0)."""
        wins, owner = recording_tiles(items, self.window_trs_)
        net.eval()
        with autocast(self.precision_, self.device):
            feats = torch.cat([net.features(wins[i:i + self.batch_size].to(self.device)).float().cpu()
                               for i in range(0, len(wins), self.batch_size)]).numpy()
        y = targets.numpy()[owner]
        if self.task == "classification":
            probe = LogisticRegression(C=1.0, max_iter=2000).fit(feats, y.astype(int))
        else:
            probe = RidgeCV(alphas=np.logspace(-2, 4, 7)).fit(feats, y)
        net.head.weight.copy_(torch.as_tensor(np.atleast_2d(probe.coef_), dtype=torch.float32))
        net.head.bias.copy_(torch.as_tensor(np.atleast_1d(probe.intercept_), dtype=torch.float32))

    def _train_examples(self, items, generator):
        return random_crops(items, self.window_trs_, generator).to(self.device), np.arange(len(items))

    def _eval_examples(self, items):
        wins, owner = recording_tiles(items, self.window_trs_)
        return wins.to(self.device), owner

    def fit(self, X, y, groups=None):
        for attr in ("window_trs_", "xyz_"):
            self.__dict__.pop(attr, None)
        return super().fit(X, y, groups)


class LinearProbe(WindowedHead, BaseEstimator):
    """A linear head on frozen window embeddings, with early stopping.

    The same head as ``BrainLMFineTuner(mode="linear_probe")``, trained on embeddings computed
    once (``BrainLMEmbedding(pooling="both").transform_windows``): with a frozen encoder the
    embeddings do not change, so cross-validation need not recompute them per fold.

    Parameters
    ----------
    task : {"regression", "classification"}
    lr, weight_decay, max_epochs, patience, batch_size
        As in :class:`FineTuneSchedule`; an epoch visits every training window.
    val_fraction, random_state
        As in :class:`BrainLMFineTuner`.

    ``fit(X, y, groups)`` takes X as a list of (W_i, F) window-embedding arrays, one per
    recording. Features are standardised with the statistics of the training windows (the
    validation split excluded).
    """

    def __init__(self, task: str = "regression", *, lr: float = 1e-2, weight_decay: float = 0.01,
                 max_epochs: int = 200, patience: int = 10, batch_size: int = 64,
                 val_fraction: float = 0.2, random_state: int = 0):
        self.task = task
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.random_state = random_state

    def _prepare(self, X):
        items = [np.atleast_2d(np.asarray(x, dtype=np.float32)) for x in X]
        if not items or len({x.shape[1] for x in items}) != 1:
            raise BrainLMInputError("LinearProbe expects a list of (windows x features) arrays with "
                                    "the same number of features")
        return items

    def _build(self, items, targets):
        stacked = np.concatenate(items)
        self.mean_, self.scale_ = stacked.mean(axis=0), stacked.std(axis=0) + 1e-6
        net = nn.Linear(stacked.shape[1], 1)
        return _Squeeze(net), torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _standardised(self, items):
        x = np.concatenate(items)
        owner = np.repeat(np.arange(len(items)), [len(i) for i in items])
        return torch.from_numpy(((x - self.mean_) / self.scale_).astype(np.float32)), owner

    def _train_examples(self, items, generator):
        return self._standardised(items)

    def _eval_examples(self, items):
        return self._standardised(items)


class _Squeeze(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
