"""Coupled Stuart-Landau oscillators (the Hopf normal form) on a connectome, many brains at once.

Each parcel ``j`` of subject ``b`` is a complex amplitude ``z = x + i y`` near a Hopf
bifurcation, coupled diffusively to the others (Deco et al. 2017, *Sci. Rep.* 7:3095):

.. math::

    \\dot z_j = (a_j + i \\omega_j - |z_j|^2) z_j + \\sum_k K_{jk} (z_k - z_j)
              + \\sigma_j \\eta_j(t),

with bifurcation parameter ``a`` (``a < 0``: noise-driven damped oscillations, ``a > 0``:
self-sustained ones), intrinsic angular frequency ``omega = 2 pi f`` with ``f`` in the
infra-slow range (hundredths of a hertz: the oscillators model the slow fluctuations of
neural activity that resting BOLD follows, not fast rhythms), coupling ``K = G W`` (global
coupling times connectome) and complex white noise ``eta``. ``x`` is the parcel's neural
activity that drives the hemodynamic model.

The linear part (``a - sum_k K_jk + i omega``) is integrated exactly and the rest by
Euler-Maruyama ("exponential Euler"), so the oscillation neither gains nor loses amplitude from
the discretisation itself; steps of 0.1 s are accurate for these slow rhythms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from brainlm.errors import BrainLMInputError
from brainlm.simulate.hemodynamics import BalloonParameters, BalloonWindkessel

__all__ = ["Hemodynamics", "HopfNetwork", "Oscillators", "simulate_bold"]


class HopfNetwork:
    """State and parameters of ``B`` coupled-oscillator brains with ``P`` parcels each.

    Parameters
    ----------
    coupling : ndarray, shape (B, P, P)
        Effective coupling ``K`` of each subject (global coupling already applied; 1/s).
        Row ``j`` holds the inputs of parcel ``j``; the diagonal is ignored.
    bifurcation : ndarray, broadcastable to (B, P)
        ``a``, 1/s.
    frequency_hz : ndarray, broadcastable to (B, P)
        Intrinsic frequency ``f`` in Hz (``omega = 2 pi f``).
    noise : ndarray, broadcastable to (B, P)
        Noise amplitude ``sigma`` (state units per sqrt(s)).
    dt : float
        Integration step, seconds.
    dtype : numpy dtype
        Floating type of the state.
    """

    def __init__(self, coupling: np.ndarray, bifurcation, frequency_hz, noise, dt: float,
                 dtype=np.float32):
        k = np.array(coupling, dtype=np.float64)
        if k.ndim != 3 or k.shape[1] != k.shape[2]:
            raise BrainLMInputError(f"field 'coupling' has shape {k.shape}; expected (B, P, P): "
                                    "one square matrix per subject", "Hopf network")
        if not np.all(np.isfinite(k)) or not dt > 0:
            raise BrainLMInputError("field 'coupling' must be finite and field 'dt' > 0 seconds",
                                    "Hopf network")
        b, p, _ = k.shape
        idx = np.arange(p)
        k[:, idx, idx] = 0.0
        self.shape = (b, p)
        self.dt = float(dt)
        self.dtype = np.dtype(dtype)
        # Diffusive coupling: sum_k K_jk (z_k - z_j) = (K z)_j - (sum_k K_jk) z_j; the second
        # term is linear in z_j and joins the exactly integrated part.
        self._k = k.astype(self.dtype)
        a = np.broadcast_to(np.asarray(bifurcation, dtype=np.float64), (b, p))
        omega = 2.0 * np.pi * np.broadcast_to(np.asarray(frequency_hz, dtype=np.float64), (b, p))
        decay = np.exp((a - k.sum(axis=2)) * dt)
        self._rot_re = (decay * np.cos(omega * dt)).astype(self.dtype)
        self._rot_im = (decay * np.sin(omega * dt)).astype(self.dtype)
        self._noise = (np.broadcast_to(np.asarray(noise, dtype=np.float64), (b, p))
                       * np.sqrt(dt)).astype(self.dtype)
        # x and y side by side so that one batched matrix product couples both.
        self.z = np.zeros((b, p, 2), dtype=self.dtype)

    @property
    def x(self) -> np.ndarray:
        """Real part of ``z``: neural activity, shape (B, P)."""
        return self.z[:, :, 0]

    def step(self, eta: np.ndarray) -> None:
        """Advance by one step ``dt``.

        Parameters
        ----------
        eta : ndarray, shape (B, P, 2)
            Independent standard normal draws for the real and imaginary noise.
        """
        z = self.z
        x, y = z[:, :, 0], z[:, :, 1]
        r2 = x * x + y * y
        inputs = np.matmul(self._k, z)
        new = np.empty_like(z)
        new[:, :, 0] = self._rot_re * x - self._rot_im * y
        new[:, :, 1] = self._rot_im * x + self._rot_re * y
        new += self.dt * (inputs - r2[:, :, None] * z)
        new += self._noise[:, :, None] * eta
        self.z = new


@dataclass(frozen=True, eq=False)
class Oscillators:
    """Parameters of the Stuart-Landau oscillators, each array-like broadcastable to (B, P).

    Parameters
    ----------
    frequency_hz : array-like
        Intrinsic frequency ``f``, Hz (``omega = 2 pi f``).
    bifurcation : array-like
        Bifurcation parameter ``a``, 1/s.
    noise : array-like
        Noise amplitude ``sigma`` (state units per sqrt(s)).
    """

    frequency_hz: Any
    bifurcation: Any
    noise: Any


@dataclass(frozen=True, eq=False)
class Hemodynamics:
    """Balloon-Windkessel parameters of each subject.

    Parameters
    ----------
    kappa, tau : array-like, broadcastable to (B, P), optional
        Signal decay rate (1/s) and transit time (s); default: those of ``balloon``.
    balloon : BalloonParameters, optional
        The other hemodynamic constants; default: :class:`BalloonParameters`.
    """

    kappa: Any = None
    tau: Any = None
    balloon: BalloonParameters | None = None


def simulate_bold(coupling: np.ndarray, oscillators: Oscillators, *, tr: float, n_trs: int, rngs,
                  hemodynamics: Hemodynamics = Hemodynamics(), dt_max: float = 0.1,
                  burn_in_s: float = 120.0, chunk_trs: int = 64) -> np.ndarray:
    """Neural oscillations driving Balloon-Windkessel hemodynamics, sampled every TR.

    Parameters
    ----------
    coupling : ndarray, shape (B, P, P)
        Effective coupling of each subject, 1/s (see :class:`HopfNetwork`).
    oscillators : Oscillators
        Frequency (Hz), bifurcation parameter ``a`` (1/s) and noise amplitude, each
        broadcastable to (B, P).
    tr : float
        Sampling interval of the BOLD signal, seconds.
    n_trs : int
        Number of samples returned per subject.
    rngs : sequence of numpy.random.Generator, length B
        One noise stream per subject: a subject's signal depends on its own stream only, never
        on which other subjects share its batch.
    hemodynamics : Hemodynamics
        Signal decay rate, transit time and Balloon constants; default: standard values.
    dt_max : float
        Largest integration step, seconds; the step is ``tr / ceil(tr / dt_max)`` so that
        samples fall exactly on steps.
    burn_in_s : float
        Simulated time discarded before the first sample (seconds), so that oscillators and
        hemodynamics forget their initial state.
    chunk_trs : int
        TRs of noise drawn at a time (memory versus call overhead).

    Returns
    -------
    ndarray, shape (B, n_trs, P), float32
        BOLD signal change in percent, one row per TR starting after the burn-in.
    """
    frequency_hz, bifurcation, noise = (oscillators.frequency_hz, oscillators.bifurcation,
                                        oscillators.noise)
    kappa, tau, balloon = hemodynamics.kappa, hemodynamics.tau, hemodynamics.balloon
    b, p, _ = np.shape(coupling)
    if len(rngs) != b:
        raise BrainLMInputError(f"field 'rngs' has {len(rngs)} noise streams; expected one per "
                                f"subject ({b})", "simulate_bold")
    steps_per_tr = max(1, int(np.ceil(tr / dt_max - 1e-9)))
    dt = tr / steps_per_tr
    network = HopfNetwork(coupling, bifurcation, frequency_hz, noise, dt)
    hemo = BalloonWindkessel((b, p), balloon or BalloonParameters(), kappa=kappa, tau=tau)
    # Start the oscillators at their typical amplitude rather than at rest: the slowest
    # (global) mode relaxes over 1/|a| = tens of seconds, longer than any affordable burn-in.
    sigma = np.broadcast_to(np.asarray(noise, dtype=np.float64), (b, p))
    a = np.broadcast_to(np.asarray(bifurcation, dtype=np.float64), (b, p))
    sd = sigma / np.sqrt(2.0 * np.maximum(np.abs(a), 1e-3))
    start = np.stack([g.standard_normal((p, 2)) for g in rngs]) * sd[:, :, None]
    network.z = start.astype(network.dtype)
    n_burn = int(np.ceil(burn_in_s / tr))
    total = n_burn + n_trs
    out = np.empty((b, n_trs, p), dtype=np.float32)
    for first in range(0, total, chunk_trs):
        n = min(chunk_trs, total - first)
        eta = np.stack([g.standard_normal((n * steps_per_tr, p, 2), dtype=np.float32)
                        for g in rngs], axis=1)
        for k in range(n):
            for s in range(steps_per_tr):
                network.step(eta[k * steps_per_tr + s])
                hemo.step(network.x, dt)
            t = first + k - n_burn
            if t >= 0:
                out[:, t] = hemo.bold()
    return out
