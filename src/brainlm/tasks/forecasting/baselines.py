"""Forecasting baselines: persistence, context mean, parcel-wise AR(p), ridge VAR, LSTM and a
neural ODE.

Every forecaster has the same two methods:

* ``fit(recordings, val=None)``: ``recordings`` is a list of whole training recordings, each
  ``(T_i, P)`` float32 in model input units; ``val`` an optional ``(context, target)`` pair of
  validation windows ``(W, context_trs, P)``, ``(W, horizon_trs, P)`` used to pick the best epoch
  of the neural baselines;
* ``predict(context)``: ``(B, C, P)`` -> ``(B, horizon_trs, P)``. Only the context goes in: no
  forecaster can see the TRs it predicts.

AR and VAR are one-step models rolled out recursively (each prediction becomes the newest lag);
LSTM and the neural ODE predict the whole horizon at once and are trained on random crops of
``context_trs + horizon_trs`` TRs from the training recordings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.linear_model import LinearRegression, RidgeCV
from torch import nn

from brainlm.errors import BrainLMInputError
from brainlm.model.recurrent import LSTMNet
from brainlm.train.supervised import EpochBatches, FixedBatches, fit_supervised
from brainlm.train.trainer import TrainerSettings

#: Baseline names in the order they are reported.
BASELINES = ("persistence", "context_mean", "ar", "var", "lstm", "neural_ode")


def _mean_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error over every value, computed as the evaluation computes it (float32
    NumPy): the validation score that picks a neural baseline's best epoch."""
    return float(np.mean((prediction.numpy() - target.numpy()) ** 2))


def _check_context(context: np.ndarray, min_trs: int, name: str) -> np.ndarray:
    context = np.asarray(context, dtype=np.float32)
    if context.ndim != 3:
        raise BrainLMInputError(f"{name}: context has shape {context.shape}; expected (windows, TRs, parcels)")
    if context.shape[1] < min_trs:
        raise BrainLMInputError(f"{name}: context has {context.shape[1]} TRs; this forecaster needs "
                                f"at least {min_trs}")
    return context


class Persistence:
    """Every future TR equals the last observed TR."""

    name = "persistence"

    def __init__(self, horizon_trs: int):
        self.horizon_trs = int(horizon_trs)

    def fit(self, recordings, val=None) -> "Persistence":
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        """context: (B, C, P) -> (B, horizon_trs, P)."""
        context = _check_context(context, 1, self.name)
        return np.repeat(context[:, -1:], self.horizon_trs, axis=1)

    def describe(self) -> dict:
        return {}


class ContextMean:
    """Every future TR equals each parcel's mean over the context: the level a mean-reverting
    signal returns to, and the reference a forecast must beat to carry information beyond it."""

    name = "context_mean"

    def __init__(self, horizon_trs: int):
        self.horizon_trs = int(horizon_trs)

    def fit(self, recordings, val=None) -> "ContextMean":
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        """context: (B, C, P) -> (B, horizon_trs, P)."""
        context = _check_context(context, 1, self.name)
        return np.repeat(context.mean(axis=1, keepdims=True), self.horizon_trs, axis=1)

    def describe(self) -> dict:
        return {}


def _lagged(recordings, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(lags (N, P, order) oldest first, next values (N, P)) from every recording; no sample
    spans two recordings."""
    lags, nxt = [], []
    for x in recordings:
        if len(x) <= order:
            continue
        w = sliding_window_view(np.asarray(x, dtype=np.float32), order + 1, axis=0)  # (T-order, P, order+1)
        lags.append(w[..., :order])
        nxt.append(w[..., order])
    if not lags:
        raise BrainLMInputError(f"no training recording is longer than the lag order {order}")
    return np.concatenate(lags), np.concatenate(nxt)


class ParcelAR:
    """An autoregressive model of order ``order`` per parcel, fitted by least squares
    (``sklearn.linear_model.LinearRegression``) on the training recordings: each parcel is
    predicted from its own last ``order`` TRs only."""

    name = "ar"

    def __init__(self, horizon_trs: int, order: int = 6):
        if order < 1:
            raise BrainLMInputError(f"AR order is {order}; expected at least 1")
        self.horizon_trs, self.order = int(horizon_trs), int(order)

    def fit(self, recordings, val=None) -> "ParcelAR":
        lags, nxt = _lagged(recordings, self.order)
        fits = [LinearRegression().fit(lags[:, j], nxt[:, j]) for j in range(lags.shape[1])]
        self.coef_ = np.stack([f.coef_ for f in fits]).astype(np.float32)  # (P, order)
        self.intercept_ = np.array([f.intercept_ for f in fits], dtype=np.float32)  # (P,)
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        """context: (B, C >= order, P) -> (B, horizon_trs, P), rolled out one TR at a time."""
        context = _check_context(context, self.order, self.name)
        hist = context[:, -self.order:].transpose(0, 2, 1).copy()  # (B, P, order)
        out = np.empty((len(context), self.horizon_trs, context.shape[2]), dtype=np.float32)
        for s in range(self.horizon_trs):
            out[:, s] = np.einsum("bpo,po->bp", hist, self.coef_) + self.intercept_
            hist = np.concatenate([hist[..., 1:], out[:, s, :, None]], axis=2)
        return out

    def describe(self) -> dict:
        return {"order": self.order}


class RidgeVAR:
    """A vector autoregression over all parcels: the next TR of every parcel from the last
    ``order`` TRs of all parcels, ridge-regularised with the penalty chosen among ``alphas``
    by efficient leave-one-out cross-validation (``sklearn.linear_model.RidgeCV``)."""

    name = "var"

    def __init__(self, horizon_trs: int, order: int = 2, alphas=tuple(np.logspace(-1, 5, 13))):
        if order < 1:
            raise BrainLMInputError(f"VAR order is {order}; expected at least 1")
        self.horizon_trs, self.order, self.alphas = int(horizon_trs), int(order), tuple(alphas)

    def fit(self, recordings, val=None) -> "RidgeVAR":
        lags, nxt = _lagged(recordings, self.order)
        self.model_ = RidgeCV(alphas=self.alphas).fit(lags.reshape(len(lags), -1), nxt)
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        """context: (B, C >= order, P) -> (B, horizon_trs, P), rolled out one TR at a time."""
        context = _check_context(context, self.order, self.name)
        hist = context[:, -self.order:].transpose(0, 2, 1).copy()  # (B, P, order), as in fit
        out = np.empty((len(context), self.horizon_trs, context.shape[2]), dtype=np.float32)
        for s in range(self.horizon_trs):
            out[:, s] = self.model_.predict(hist.reshape(len(hist), -1))
            hist = np.concatenate([hist[..., 1:], out[:, s, :, None]], axis=2)
        return out

    def describe(self) -> dict:
        return {"order": self.order,
                "alpha": float(self.model_.alpha_) if hasattr(self, "model_") else None}


@dataclass
class NeuralTraining:
    """How the LSTM and neural-ODE baselines are trained (AdamW on the MSE over the horizon).

    ``epochs`` passes, each over ``crops_per_recording`` random crops of ``context + horizon``
    TRs per training recording, in batches of ``batch_size``; after every epoch the model is
    scored on the validation windows and the best epoch is kept (as for BrainLM fine-tuning).
    """

    epochs: int = 10
    crops_per_recording: int = 32
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    clip: float = 1.0
    seed: int = 0


class _ODEField(nn.Module):
    """The vector field ds/dt = f(s) of the neural ODE (autonomous)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, t, s):
        return self.net(s)


class NeuralODENet(nn.Module):
    """An augmented neural ODE (torchdiffeq): the state is the last observed TR plus a latent
    vector that a GRU reads from the whole context; the state is integrated over the horizon
    (time in TRs, fixed-step RK4) and its parcel part is the forecast.

    context: [B, C, P] -> [B, H, P]. The field starts at zero, so training starts from
    persistence.
    """

    def __init__(self, n_parcels: int, horizon_trs: int, latent: int = 32, hidden: int = 128,
                 encoder_hidden: int = 64, step_size: float = 0.5):
        super().__init__()
        self.n_parcels, self.step_size = n_parcels, step_size
        self.encoder = nn.GRU(n_parcels, encoder_hidden, batch_first=True)
        self.to_latent = nn.Linear(encoder_hidden, latent)
        self.field = _ODEField(n_parcels + latent, hidden)
        self.register_buffer("times", torch.arange(horizon_trs + 1, dtype=torch.float32), persistent=False)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        # Imported here: torchdiffeq is needed by this baseline only.
        from torchdiffeq import odeint

        _, h = self.encoder(context)
        s0 = torch.cat([context[:, -1], self.to_latent(h[-1])], dim=-1)
        path = odeint(self.field, s0, self.times, method="rk4", options={"step_size": self.step_size})
        return path[1:, :, :self.n_parcels].transpose(0, 1)  # [H + 1, B, S] -> [B, H, P]


class _NeuralForecaster:
    """Shared training and prediction of the direct multi-step neural baselines."""

    name = "neural"

    def __init__(self, horizon_trs: int, context_trs: int, training: NeuralTraining | None = None,
                 **net_options):
        self.horizon_trs, self.context_trs = int(horizon_trs), int(context_trs)
        self.training = training or NeuralTraining()
        self.net_options = net_options

    def _build(self, n_parcels: int) -> nn.Module:
        raise NotImplementedError

    def fit(self, recordings, val=None) -> "_NeuralForecaster":
        t = self.training
        window = self.context_trs + self.horizon_trs
        recs = [np.asarray(r, dtype=np.float32) for r in recordings if len(r) >= window]
        if not recs:
            raise BrainLMInputError(f"{self.name}: no training recording has context + horizon = "
                                    f"{window} TRs")
        rng = np.random.default_rng(t.seed)
        # Weights are drawn from a private seed so that fitting never disturbs (or depends on)
        # the global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            net = self._build(recs[0].shape[1])
        opt = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)

        def batches(epoch: int):
            # Fresh crops and a fresh order every epoch, all from ``rng``.
            crops = [(i, int(s)) for i, r in enumerate(recs)
                     for s in rng.integers(0, len(r) - window + 1, t.crops_per_recording)]
            order = rng.permutation(len(crops))
            for b in range(0, len(order), t.batch_size):
                x = torch.from_numpy(np.stack([recs[i][s:s + window] for i, s in
                                               (crops[k] for k in order[b:b + t.batch_size])]))
                yield x[:, :self.context_trs], x[:, self.context_trs:]

        n_batches = -(-len(recs) * t.crops_per_recording // t.batch_size)
        val_batches = None
        if val is not None:
            val_batches = FixedBatches(torch.from_numpy(np.ascontiguousarray(val[0], dtype=np.float32)),
                                       torch.from_numpy(np.ascontiguousarray(val[1], dtype=np.float32)), 64)
        # Full precision on the CPU: the baselines' numbers do not depend on the machine.
        trainer = TrainerSettings(t.epochs, accelerator="cpu", precision="32-true", gradient_clip=t.clip)
        log = fit_supervised(net, opt, loss=nn.functional.mse_loss, train=EpochBatches(batches, n_batches),
                             trainer=trainer, val=val_batches, val_loss=_mean_squared_error)
        history = []
        for epoch, losses in enumerate(log.batch_losses):
            entry = {"epoch": epoch, "train_mse": float(np.mean([loss for loss, _ in losses])),
                     "seconds": round(log.train_seconds[epoch], 3)}
            if epoch < len(log.val_loss):
                entry["val_mse"] = log.val_loss[epoch]
            history.append(entry)
        self.net_, self.history_ = net.eval(), history
        return self

    @torch.inference_mode()
    def _predict(self, net: nn.Module, context: np.ndarray, batch_size: int = 64) -> np.ndarray:
        net.eval()
        out = [net(torch.from_numpy(context[i:i + batch_size])).numpy()
               for i in range(0, len(context), batch_size)]
        return np.concatenate(out).astype(np.float32)

    def predict(self, context: np.ndarray) -> np.ndarray:
        """context: (B, C, P) -> (B, horizon_trs, P); the last ``context_trs`` TRs are used."""
        context = _check_context(context, self.context_trs, self.name)
        return self._predict(self.net_, np.ascontiguousarray(context[:, -self.context_trs:]))

    def describe(self) -> dict:
        info = {**self.net_options, "training": asdict(self.training),
                "parameters": sum(p.numel() for p in self.net_.parameters()) if hasattr(self, "net_") else None}
        if hasattr(self, "history_"):
            info["history"] = self.history_
        return info


class LSTMForecaster(_NeuralForecaster):
    """:class:`~brainlm.model.recurrent.LSTMNet` (the LSTM baseline network of both tasks) read
    out from its last hidden state as a correction of the last observed TR for each future step,
    starting at zero (training starts from persistence); ``hidden`` (128) and ``layers`` (1) set
    its size. Trained as described in :class:`NeuralTraining`.

    context: [B, C, P] -> [B, H, P].
    """

    name = "lstm"

    def _build(self, n_parcels: int) -> nn.Module:
        o = self.net_options
        return LSTMNet(n_parcels, o.get("hidden", 128), (self.horizon_trs, n_parcels),
                       layers=o.get("layers", 1), pooling="last", persistence=True)


class NeuralODEForecaster(_NeuralForecaster):
    """:class:`NeuralODENet` trained as described in :class:`NeuralTraining`."""

    name = "neural_ode"

    def _build(self, n_parcels: int) -> nn.Module:
        return NeuralODENet(n_parcels, self.horizon_trs, **self.net_options)


@dataclass
class BaselineSettings:
    """Settings of every baseline (the defaults are what the reported comparisons use).

    ``lstm_hidden``: LSTM width; ``ode_latent``/``ode_hidden``: augmented latent size and
    vector-field width of the neural ODE, ``ode_step_trs`` its RK4 step (TRs); ``neural``: their
    shared training.
    """

    ar_order: int = 6
    var_order: int = 2
    var_alphas: tuple = tuple(float(a) for a in np.logspace(-1, 5, 13))
    lstm_hidden: int = 128
    ode_latent: int = 32
    ode_hidden: int = 128
    ode_step_trs: float = 0.5
    neural: NeuralTraining = field(default_factory=NeuralTraining)


def make_baseline(name: str, context_trs: int, horizon_trs: int, settings: BaselineSettings | None = None):
    """A fresh, unfitted baseline by name (one of :data:`BASELINES`)."""
    s = settings or BaselineSettings()
    if name == "persistence":
        return Persistence(horizon_trs)
    if name == "context_mean":
        return ContextMean(horizon_trs)
    if name == "ar":
        return ParcelAR(horizon_trs, s.ar_order)
    if name == "var":
        return RidgeVAR(horizon_trs, s.var_order, s.var_alphas)
    if name == "lstm":
        return LSTMForecaster(horizon_trs, context_trs, s.neural, hidden=s.lstm_hidden)
    if name == "neural_ode":
        return NeuralODEForecaster(horizon_trs, context_trs, s.neural, latent=s.ode_latent,
                                   hidden=s.ode_hidden, step_size=s.ode_step_trs)
    raise BrainLMInputError(f"unknown baseline {name!r}; expected one of {BASELINES}")
