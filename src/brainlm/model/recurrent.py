"""The LSTM baseline network, shared by phenotype prediction and forecasting."""

from __future__ import annotations

import math

import torch
from torch import nn


class LSTMNet(nn.Module):
    """An LSTM over the TRs of a window, then a linear readout of its hidden states.

    x: [B, T, P] (model input units) -> y: [B, *out_shape].

    Parameters
    ----------
    n_parcels : int
        P, the input size at each TR.
    hidden : int
        LSTM hidden size.
    out_shape : tuple of int
        Shape of one output: ``()`` for one value per window (a phenotype), ``(H, P)`` for the
        next H TRs of every parcel (a forecast).
    layers : int
        Stacked LSTM layers.
    pooling : {"mean", "last"}
        Read out the hidden states averaged over time (a phenotype is a property of the whole
        window, not of its last TR) or the last hidden state (what comes next depends most on
        the latest state).
    persistence : bool
        The output is a correction to the last input TR, repeated (``out_shape`` must be
        ``(H, P)``), and the readout starts at zero: training starts from the persistence
        forecast.
    """

    def __init__(self, n_parcels: int, hidden: int, out_shape: tuple[int, ...] = (), *, layers: int = 1,
                 pooling: str = "mean", persistence: bool = False):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling {pooling!r}; expected 'mean' or 'last'")
        if persistence and (len(out_shape) != 2 or out_shape[1] != n_parcels):
            raise ValueError(f"persistence needs out_shape (H, {n_parcels}); got {out_shape}")
        self.out_shape, self.pooling, self.persistence = tuple(out_shape), pooling, persistence
        self.lstm = nn.LSTM(n_parcels, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, math.prod(self.out_shape))
        if persistence:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, P] -> [B, *out_shape]."""
        h, _ = self.lstm(x)
        pooled = h.mean(dim=1) if self.pooling == "mean" else h[:, -1]
        y = self.head(pooled).view(len(x), *self.out_shape)
        return x[:, -1:] + y if self.persistence else y
