"""The variable to predict: read from a corpus manifest and checked before any work is done."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brainlm.errors import BrainLMInputError

TASKS = ("auto", "regression", "classification")
#: Columns that identify recordings rather than describe subjects.
_ID_COLUMNS = ("recording_id", "subject", "session", "run", "split", "source", "bad_parcels")


@dataclass
class Target:
    """A checked prediction target.

    Attributes
    ----------
    column : str
        Manifest column.
    task : {"regression", "classification"}
    values : ndarray, shape (n,)
        float64 for regression; 0/1 int64 for binary classification (``classes[1]`` is 1).
    rows : ndarray, shape (n,)
        Manifest rows with a value (recordings without one are left out).
    classes : list or None
        The two class labels, in order, for classification.
    n_missing : int
        Recordings left out because the value is missing.
    """

    column: str
    task: str
    values: np.ndarray
    rows: np.ndarray
    classes: list | None
    n_missing: int

    def describe(self) -> dict:
        """JSON-ready summary."""
        d = {"column": self.column, "task": self.task, "recordings": int(len(self.rows)),
             "recordings_missing": int(self.n_missing)}
        if self.task == "classification":
            d["classes"] = [_plain(c) for c in self.classes]
            d["class_counts"] = [int((self.values == k).sum()) for k in (0, 1)]
        else:
            d.update(mean=float(self.values.mean()), sd=float(self.values.std(ddof=1)),
                     min=float(self.values.min()), max=float(self.values.max()))
        return d


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def load_target(manifest: pd.DataFrame, column: str, *, task: str = "auto", rows=None,
                max_missing: float = 0.5, source: str | None = None) -> Target:
    """Read and check a target column.

    Parameters
    ----------
    manifest : DataFrame
        A corpus manifest (one row per recording).
    column : str
        The column to predict.
    task : {"auto", "regression", "classification"}
        ``auto``: classification when the column has exactly two distinct values, regression
        for numbers otherwise.
    rows : array of int, optional
        Manifest rows to consider (default: all).
    max_missing : float
        Largest fraction of recordings allowed to lack a value (default 0.5: a target missing
        for more than half of the recordings is refused rather than silently shrinking the
        sample); recordings without a value are left out.
    source : str, optional
        Named in error messages (the corpus path).
    """
    if task not in TASKS:
        raise BrainLMInputError(f"task {task!r}; expected one of {TASKS}", source)
    if not 0.0 <= max_missing < 1.0:
        raise BrainLMInputError(f"max_missing {max_missing}; expected a fraction in [0, 1)", source)
    if column not in manifest.columns or column in _ID_COLUMNS:
        candidates = [c for c in manifest.columns if c not in _ID_COLUMNS
                      and c not in ("tr_source", "n_trs_source", "tr", "n_trs")]
        raise BrainLMInputError(f"target column {column!r} is not a phenotype column of the manifest; "
                                f"available: {candidates}", source)
    rows = np.arange(len(manifest)) if rows is None else np.asarray(rows, dtype=int)
    raw = manifest[column].iloc[rows]
    present = raw.notna().to_numpy().copy()
    if raw.dtype == object or pd.api.types.is_string_dtype(raw):
        # participants.tsv writes missing values as text ("n/a", "", "NaN").
        present &= ~raw.astype(str).str.strip().str.lower().isin(["", "n/a", "na", "nan", "none"]).to_numpy()
    n_missing = int((~present).sum())
    frac = n_missing / max(len(raw), 1)
    if present.sum() == 0:
        raise BrainLMInputError(f"target column {column!r} has no values (all {len(raw)} recordings "
                                "missing)", source)
    if frac > max_missing:
        raise BrainLMInputError(
            f"target column {column!r} is missing for {frac:.0%} of recordings ({n_missing} of "
            f"{len(raw)}); at most {max_missing:.0%} may be missing (max_missing)", source)
    kept, vals = rows[present], raw[present]
    distinct = pd.unique(vals)
    numeric = pd.to_numeric(vals, errors="coerce")
    if task == "auto":
        # Two values are two classes; text labels are classes however many there are.
        task = "classification" if len(distinct) == 2 or numeric.isna().any() else "regression"
    if task == "classification":
        if len(distinct) == 1:
            raise BrainLMInputError(f"classification target {column!r} has one class ({_plain(distinct[0])!r}) "
                                    "in every recording with a value; expected two classes", source)
        if len(distinct) > 2:
            raise BrainLMInputError(
                f"classification target {column!r} has {len(distinct)} classes; only binary "
                "classification (two classes) and regression are supported", source)
        classes = sorted(distinct.tolist(), key=lambda v: (str(type(v)), v))
        y = (vals.to_numpy() == classes[1]).astype(np.int64)
        return Target(column, task, y, kept, classes, n_missing)
    bad = numeric.isna().to_numpy()
    if bad.any():
        raise BrainLMInputError(
            f"regression target {column!r} has non-numeric values (e.g. {vals[bad].iloc[0]!r}); "
            "expected numbers (use task 'classification' for a two-class label)", source)
    y = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(y).all():
        raise BrainLMInputError(f"regression target {column!r} has infinite values", source)
    if len(distinct) == 1 or np.ptp(y) == 0:
        raise BrainLMInputError(f"target column {column!r} is constant ({y[0]:g} in every recording "
                                "with a value); nothing to predict", source)
    return Target(column, task, y, kept, None, n_missing)


def check_cross_validation(target: Target, groups: np.ndarray, n_folds: int, inner_folds: int,
                           source: str | None = None) -> None:
    """Error unless every outer and inner fold can get subjects (and both classes).

    groups : (n,) subject key of each recording of ``target``.
    """
    if n_folds < 2 or inner_folds < 2:
        raise BrainLMInputError(f"folds {n_folds} and inner folds {inner_folds}; expected at least 2 each",
                                source)
    subjects = pd.unique(groups)
    n = len(subjects)
    if n < n_folds:
        raise BrainLMInputError(
            f"{n} subject(s) have target {target.column!r}, fewer than the {n_folds} folds; use "
            f"fewer folds or more subjects (folds are grouped by subject)", source)
    n_outer_train = n - math.ceil(n / n_folds)
    if n_outer_train < inner_folds:
        raise BrainLMInputError(
            f"{n} subjects give outer training folds of {n_outer_train} subjects, fewer than the "
            f"{inner_folds} inner folds of the hyper-parameter search", source)
    if target.task == "classification":
        per_class = pd.Series(target.values).groupby(groups).first().value_counts()
        need = n_folds
        while need - math.ceil(need / n_folds) < inner_folds:
            need += 1
        for k in (0, 1):
            m = int(per_class.get(k, 0))
            if m < need:
                raise BrainLMInputError(
                    f"class {_plain(target.classes[k])!r} of target {target.column!r} has {m} "
                    f"subject(s); {n_folds} outer x {inner_folds} inner folds need at least {need} "
                    "per class so that every fold sees both classes", source)
