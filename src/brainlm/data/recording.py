"""One fMRI run as a parcellated time series with its acquisition facts and phenotypes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from brainlm.data.atlas import Atlas
from brainlm.errors import BrainLMInputError

_ID_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def recording_id(subject: str, *, site=None, session=None, task=None, run=None) -> str:
    """Unique, file-name-safe recording identifier in BIDS entity order
    (``sub-X[_site-S][_ses-Y][_task-Z][_run-N]``)."""
    parts = [f"sub-{subject}"]
    for key, val in (("site", site), ("ses", session), ("task", task), ("run", run)):
        if val is not None:
            parts.append(f"{key}-{val}")
    return _ID_SAFE.sub("-", "_".join(parts))


def _clean_id(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    s = str(value).strip()
    return s or None


@dataclass(eq=False)
class Recording:
    """A parcellated BOLD time series.

    Parameters
    ----------
    timeseries : array-like, shape (T, P)
        Signal per time point (rows, one per TR) and parcel (columns, in atlas order).
        Stored as float32; must be finite.
    tr : float
        Repetition time in seconds (> 0).
    atlas : Atlas
        The parcellation; ``atlas.n_parcels`` must equal ``P``.
    subject : str
        Subject label without the BIDS ``sub-`` prefix.
    session, run, task, site : str, optional
        Acquisition identifiers.
    phenotypes : dict, optional
        Subject-level variables (age, scores, group labels ...).
    source : str, optional
        Where the data came from (file path or dataset name); used in error messages.
    confounds : pandas.DataFrame, optional
        Nuisance regressors, one row per TR (``T`` rows), e.g. motion and WM/CSF signals.
    """

    timeseries: np.ndarray
    tr: float
    atlas: Atlas
    subject: str
    session: str | None = None
    run: str | None = None
    task: str | None = None
    site: str | None = None
    phenotypes: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    confounds: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        src = self.source or f"recording of subject {self.subject!r}"
        x = np.asarray(self.timeseries)
        if x.ndim != 2:
            raise BrainLMInputError(
                f"time series has {x.ndim} dimension(s) with shape {x.shape}; expected 2 (T x P)", src)
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise BrainLMInputError(f"time series has dtype {x.dtype}; expected real numbers", src)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] < 2:
            raise BrainLMInputError(f"time series has {x.shape[0]} time point(s); expected at least 2", src)
        finite = np.isfinite(x)
        if not finite.all():
            bad_t, bad_p = np.nonzero(~finite)
            parcels = sorted(set(bad_p.tolist()))
            names = [self.atlas.parcel_names[p] if p < self.atlas.n_parcels else str(p)
                     for p in parcels[:5]]
            raise BrainLMInputError(
                f"time series has {bad_t.size} non-finite value(s) (NaN/Inf), first at TR "
                f"{int(bad_t[0])}, in parcel(s) {names}{' ...' if len(parcels) > 5 else ''}; "
                "expected finite values (use bad_parcels='zero' to blank whole-NaN parcels)", src)
        if not isinstance(self.atlas, Atlas):
            raise BrainLMInputError(f"field 'atlas' is {type(self.atlas).__name__}; expected an Atlas", src)
        if x.shape[1] != self.atlas.n_parcels:
            hint = " (is it parcel-by-time? transpose it)" if x.shape[0] == self.atlas.n_parcels else ""
            raise BrainLMInputError(
                f"time series has {x.shape[1]} parcel columns; atlas {self.atlas.name!r} has "
                f"{self.atlas.n_parcels} parcels{hint}", src)
        try:
            tr = float(self.tr)
        except (TypeError, ValueError):
            raise BrainLMInputError(f"field 'tr' is {self.tr!r}; expected seconds as a number", src) from None
        if not math.isfinite(tr) or tr <= 0:
            raise BrainLMInputError(f"field 'tr' is {self.tr!r}; expected a repetition time > 0 seconds", src)
        if tr > 30:
            raise BrainLMInputError(
                f"field 'tr' is {tr}; expected seconds (milliseconds given?)", src)
        subject = _clean_id(self.subject)
        if subject is None:
            raise BrainLMInputError("field 'subject' is empty; expected a subject id", src)
        if subject.startswith("sub-"):
            subject = subject[4:]
        if self.confounds is not None:
            conf = pd.DataFrame(self.confounds)
            if len(conf) != x.shape[0]:
                raise BrainLMInputError(
                    f"confounds have {len(conf)} rows; expected {x.shape[0]} (one per TR)", src)
            self.confounds = conf.reset_index(drop=True)
        self.timeseries = x
        self.tr = tr
        self.subject = subject
        self.session = _clean_id(self.session)
        self.run = _clean_id(self.run)
        self.task = _clean_id(self.task)
        self.site = _clean_id(self.site)
        self.phenotypes = dict(self.phenotypes or {})

    @property
    def n_timepoints(self) -> int:
        """Number of time points ``T`` (TRs)."""
        return self.timeseries.shape[0]

    @property
    def n_parcels(self) -> int:
        """Number of parcels ``P``."""
        return self.timeseries.shape[1]

    @property
    def duration_s(self) -> float:
        """Length of the run in seconds."""
        return self.n_timepoints * self.tr

    @property
    def id(self) -> str:
        """Unique, file-name-safe identifier (see :func:`recording_id`)."""
        return recording_id(self.subject, site=self.site, session=self.session, task=self.task,
                            run=self.run)

    def __repr__(self) -> str:
        return (f"Recording({self.id}, T={self.n_timepoints}, P={self.n_parcels}, tr={self.tr} s, "
                f"atlas={self.atlas.name!r}, phenotypes={sorted(self.phenotypes)})")
