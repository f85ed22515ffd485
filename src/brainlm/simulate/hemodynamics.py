"""Balloon-Windkessel hemodynamics: neural activity -> blood flow, volume, deoxyhemoglobin -> BOLD.

For each parcel (Friston et al. 2000; Friston, Harrison & Penny 2003), with neural input ``u``:

.. math::

    \\dot s = u - \\kappa s - \\gamma (f - 1), \\qquad \\dot f = s,

    \\tau \\dot v = f - v^{1/\\alpha}, \\qquad
    \\tau \\dot q = f \\frac{1 - (1 - E_0)^{1/f}}{E_0} - v^{1/\\alpha} \\frac{q}{v},

    y = V_0 \\left[k_1 (1 - q) + k_2 (1 - q / v) + k_3 (1 - v)\\right],
    \\quad k_1 = 7 E_0,\\; k_2 = 2,\\; k_3 = 2 E_0 - 0.2,

with ``s`` the vasodilatory signal, ``f`` inflow, ``v`` venous volume and ``q``
deoxyhemoglobin content (``f, v, q`` relative to rest). Flow, volume and deoxyhemoglobin are
integrated as logarithms (Stephan et al. 2008), which keeps them positive for any step size and
input. The fractional BOLD change ``y`` is returned in percent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BalloonParameters", "BalloonWindkessel"]


@dataclass(frozen=True)
class BalloonParameters:
    """Standard hemodynamic constants (Friston et al. 2000, 2003).

    Parameters
    ----------
    kappa : float
        Rate of decay of the vasodilatory signal, 1/s (0.65).
    gamma : float
        Rate of flow-dependent elimination, 1/s (0.41).
    tau : float
        Mean transit time of the venous compartment, s (0.98).
    alpha : float
        Grubb's exponent, stiffness of the balloon (0.32).
    e0 : float
        Resting oxygen extraction fraction (0.34).
    v0 : float
        Resting venous blood volume fraction (0.02).
    """

    kappa: float = 0.65
    gamma: float = 0.41
    tau: float = 0.98
    alpha: float = 0.32
    e0: float = 0.34
    v0: float = 0.02


class BalloonWindkessel:
    """The hemodynamic state of a batch of brains, advanced by explicit Euler steps.

    Parameters
    ----------
    shape : tuple of int
        ``(B, P)``: subjects x parcels.
    params : BalloonParameters
        Constants shared by all parcels.
    kappa, tau : ndarray, broadcastable to ``shape``, optional
        Per-subject (or per-parcel) signal decay rate (1/s) and transit time (s), overriding
        ``params.kappa`` / ``params.tau`` (how age slows the hemodynamic response).
    dtype : numpy dtype
        Floating type of the state.

    Notes
    -----
    Starts at rest (``s = 0``, ``f = v = q = 1``). Explicit Euler is stable for steps well
    below the fastest time constant (``1 / kappa`` about 1.5 s); 0.1 s is ample.
    """

    def __init__(self, shape: tuple[int, int], params: BalloonParameters = BalloonParameters(),
                 *, kappa: np.ndarray | None = None, tau: np.ndarray | None = None,
                 dtype=np.float32):
        self.params = params
        self.dtype = np.dtype(dtype)
        self.kappa = np.asarray(params.kappa if kappa is None else kappa, dtype=self.dtype)
        self.tau = np.asarray(params.tau if tau is None else tau, dtype=self.dtype)
        self.s = np.zeros(shape, dtype=self.dtype)
        self.log_f = np.zeros(shape, dtype=self.dtype)
        self.log_v = np.zeros(shape, dtype=self.dtype)
        self.log_q = np.zeros(shape, dtype=self.dtype)
        e0 = params.e0
        self._log_1me0 = np.log1p(-e0)
        self._k = (params.v0 * 7.0 * e0, params.v0 * 2.0, params.v0 * (2.0 * e0 - 0.2))

    def step(self, u: np.ndarray, dt: float) -> None:
        """Advance the state by ``dt`` seconds under neural input ``u`` (shape ``(B, P)``)."""
        p = self.params
        f = np.exp(self.log_f)
        v = np.exp(self.log_v)
        q = np.exp(self.log_q)
        outflow = np.exp(self.log_v / p.alpha)  # v ** (1 / alpha)
        extraction = -np.expm1(self._log_1me0 / f)  # 1 - (1 - E0) ** (1 / f)
        ds = u - self.kappa * self.s - p.gamma * (f - 1.0)
        dlog_f = self.s / f
        dlog_v = (f - outflow) / (self.tau * v)
        dlog_q = (f * extraction / p.e0 - outflow * q / v) / (self.tau * q)
        self.s += dt * ds
        self.log_f += dt * dlog_f
        self.log_v += dt * dlog_v
        self.log_q += dt * dlog_q

    def bold(self) -> np.ndarray:
        """BOLD signal change in percent of the resting signal, shape ``(B, P)``."""
        v = np.exp(self.log_v)
        q = np.exp(self.log_q)
        k1, k2, k3 = self._k
        return 100.0 * (k1 * (1.0 - q) + k2 * (1.0 - q / v) + k3 * (1.0 - v))
