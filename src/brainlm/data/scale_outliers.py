"""Scale outliers: recordings on another scale than the cohort (other units, a broken export).

Beside :mod:`brainlm.data.scaling`: the pooled statistics fitted on a training split are only
right for recordings on the training recordings' scale. A training recording far off it would
dominate the fit; a validation or test recording far off it would be scaled wrongly by it. Each
recording's per-parcel quartiles (from pass 1 of the build) are compared with the cohort's
median IQR per parcel (:data:`SCALE_OUTLIER_FACTOR`, :data:`SCALE_OUTLIER_PARCEL`).
:func:`screen_scale_outliers` is the outlier phase of ``prepare_corpus``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from brainlm.data.scaling import QuartileRange
from brainlm.errors import BrainLMInputError


class ScaleOutlierWarning(UserWarning):
    """A training recording whose spread is far from the cohort's (other units, a broken export),
    or a validation/test recording so far from the training recordings' that was dropped."""


#: A training recording is a scale outlier when its parcels' IQRs are, at the median over
#: parcels, more than this factor from the cohort's (another unit), or any parcel's is more than
#: ``SCALE_OUTLIER_PARCEL`` times the cohort's (a few corrupted parcels).
SCALE_OUTLIER_FACTOR = 20.0
SCALE_OUTLIER_PARCEL = 1000.0


def _iqrs(quartiles: dict[str, np.ndarray]) -> np.ndarray:
    """Per-parcel IQRs of recordings, (R, P) float64, from their quartiles (recording id ->
    (3, P))."""
    q = np.stack(list(quartiles.values())).astype(np.float64)
    return q[:, 2] - q[:, 0]


def _scale_reasons(ids: list[str], iqr: np.ndarray, cohort: np.ndarray, whose: str) -> dict[str, str]:
    """Recordings (``iqr``, (R, P)) whose IQRs are off the ``cohort``'s (P,) by more than the
    scale-outlier factors: recording id -> why (``whose`` names the cohort in the reason)."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN parcels (missing everywhere)
        ratio = iqr / np.where(cohort > 0, cohort, np.nan)
        typical = np.nanmedian(ratio, axis=1)
        worst = np.nanmax(np.where(np.isfinite(ratio), ratio, np.nan), axis=1)
    found = {}
    for rid, t, w in zip(ids, typical, worst):
        if np.isfinite(t) and not 1 / SCALE_OUTLIER_FACTOR <= t <= SCALE_OUTLIER_FACTOR:
            found[rid] = f"its IQRs are {t:.3g} times {whose} (median over parcels)"
        elif np.isfinite(w) and w > SCALE_OUTLIER_PARCEL:
            found[rid] = f"a parcel's IQR is {w:.3g} times {whose}"
    return found


def _median_iqr(iqr: np.ndarray) -> np.ndarray:
    """The cohort's IQR per parcel: the median over recordings (NaN where missing everywhere)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(iqr, axis=0)


def scale_outliers(train_quartiles: dict[str, np.ndarray]) -> dict[str, str]:
    """Training recordings whose scale is an outlier against the cohort: recording id -> why.

    ``train_quartiles`` maps recording ids to per-parcel 25th/50th/75th percentiles, shape
    (3, P). Each recording's IQR per parcel is divided by the cohort's median IQR of that parcel
    (over recordings); see :data:`SCALE_OUTLIER_FACTOR`. Needs 3 or more recordings (with 2,
    neither is the odd one out)."""
    if len(train_quartiles) < 3:
        return {}
    iqr = _iqrs(train_quartiles)
    return _scale_reasons(list(train_quartiles), iqr, _median_iqr(iqr), "the cohort's")


def held_out_scale_outliers(train_quartiles: dict[str, np.ndarray], held_out_quartiles: dict[str, np.ndarray],
                            exclude=()) -> dict[str, str]:
    """Validation and test recordings whose scale is an outlier against the training recordings
    (those not in ``exclude``, the training outliers): recording id -> why.

    Both map recording ids to quartiles (3, P). The factors are those of :func:`scale_outliers`,
    against the median IQR of the training recordings; one training recording is reference
    enough, since a held-out recording is scaled by the statistics of the training split
    whatever their number."""
    reference = {rid: q for rid, q in train_quartiles.items() if rid not in exclude}
    if not reference or not held_out_quartiles:
        return {}
    return _scale_reasons(list(held_out_quartiles), _iqrs(held_out_quartiles), _median_iqr(_iqrs(reference)),
                          "the training recordings'")


def outliers_of_build(records: list[dict], train_quartiles: dict[str, np.ndarray],
                             held_out_quartiles: dict[str, np.ndarray], drop: bool, *, skip_held_out: bool,
                             fitted_here: bool, pooled: bool, split_of_id: dict[str, str]
                             ) -> tuple[dict[str, str], list[dict], list[dict], list[dict]]:
    """The scale outliers of a build, and what becomes of them.

    A training recording on another scale (other units, a broken export) would dominate the
    pooled statistics and squeeze every other recording: it is reported (a warning) and left out
    of the fit. A validation or test recording is never in the fit but is scaled by it: on another
    scale its scaled values would be off by that factor, so it is an error (with pooled statistics
    fitted here; per-recording scaling does not depend on units), or skipped with
    ``skip_held_out`` (``on_error="skip"``). With ``drop`` both are left out of the corpus.

    Returns
    -------
    training outliers (id -> why), their records for ``corpus.json``, the records kept, and the
    records dropped (for ``skipped.parquet``).
    """
    outliers = scale_outliers(train_quartiles)
    outlier_records = _report_scale_outliers(outliers, drop, fitted_here=fitted_here)
    held_out = (held_out_scale_outliers(train_quartiles, held_out_quartiles, exclude=outliers)
                if fitted_here and pooled else {})
    if held_out and not (drop or skip_held_out):
        _refuse_held_out_outliers(held_out, records, split_of_id)
    outlier_records += _report_scale_outliers(held_out, True, held_out=True)
    option = "--drop-scale-outliers" if drop else "--on-error skip"
    gone = {**(outliers if drop else {}), **held_out}
    dropped = [{"recording_id": r["recording_id"], "source": r["source"],
                "reason": f"scale outlier: {gone[r['recording_id']]} ({option})"}
               for r in records if r["recording_id"] in gone]
    return outliers, outlier_records, [r for r in records if r["recording_id"] not in gone], dropped


_SPLIT_NAMES = {"val": "validation", "test": "test", "train": "training"}


def _refuse_held_out_outliers(found: dict[str, str], records: list[dict], split_of_id: dict[str, str]) -> None:
    """The error for validation/test recordings on another scale (:func:`held_out_scale_outliers`),
    naming the first one's file, why, and what to do."""
    source = {r["recording_id"]: r["source"] for r in records}
    rid, why = next(iter(found.items()))
    others = list(found)[1:]
    more = (f" ({len(others)} more: {', '.join(others[:3])}{' ...' if len(others) > 3 else ''})"
            if others else "")
    raise BrainLMInputError(
        f"a {_SPLIT_NAMES[split_of_id[rid]]} recording on another scale than the training recordings: "
        f"{why}{more}. It is scaled by the training split's statistics, so its values would be off by that "
        f"factor; expected the units and cleaning of the training recordings (IQRs within "
        f"{SCALE_OUTLIER_FACTOR:g} times theirs, and no parcel's beyond {SCALE_OUTLIER_PARCEL:g} times). "
        "Rescale it, or re-run with --drop-scale-outliers (or --on-error skip) to leave it out", source[rid])


def _report_scale_outliers(outliers: dict[str, str], drop: bool, fitted_here: bool = True,
                           held_out: bool = False) -> list[dict]:
    """Warn once for the scale outliers; their records for ``corpus.json``. ``fitted_here``:
    whether the statistics are fitted on this cohort (not taken from a checkpoint);
    ``held_out``: validation/test recordings (only ever dropped)."""
    if not outliers:
        return []
    kept = ("kept, but left out of the scaling statistics" if fitted_here
            else "kept (the scaling statistics are the checkpoint's)")
    action = "dropped (--drop-scale-outliers)" if drop else f"{kept}; --drop-scale-outliers drops them"
    shown = ", ".join(f"{rid} ({why})" for rid, why in list(outliers.items())[:3])
    who = ("validation/test recording(s) on another scale than the training recordings" if held_out
           else "training recording(s) on another scale than the cohort")
    warnings.warn(f"{len(outliers)} {who}: {shown}"
                  f"{' ...' if len(outliers) > 3 else ''}; {action}", ScaleOutlierWarning, stacklevel=5)
    return [{"recording_id": rid, "reason": why,
             "action": "dropped" if drop else ("excluded from the scaling fit" if fitted_here else "kept")}
            for rid, why in outliers.items()]



@dataclass
class ScreenedRecordings:
    """What the outlier phase leaves: see :func:`screen_scale_outliers`.

    Attributes
    ----------
    outliers : dict
        Training scale outliers, recording id -> why (left out of the fit).
    outlier_records : list of dict
        Their records, and those of held-out outliers, for ``corpus.json`` -> ``scale_outliers``.
    records : list of dict
        The pass-1 records of the recordings kept in the corpus.
    dropped : list of dict
        The records of recordings left out (``skipped.parquet``: id, source, reason).
    train_range : QuartileRange
        Range of the kept training recordings' quartiles, for the pooled histogram.
    """

    outliers: dict[str, str]
    outlier_records: list[dict]
    records: list[dict]
    dropped: list[dict]
    train_range: QuartileRange


def screen_scale_outliers(records: list[dict], train_quartiles: dict[str, np.ndarray],
                          held_out_quartiles: dict[str, np.ndarray], drop: bool, *, skip_held_out: bool,
                          fitted_here: bool, pooled: bool, split_of_id: dict[str, str]) -> ScreenedRecordings:
    """The outlier phase of a build: :func:`outliers_of_build`, then the quartile range of the
    training recordings that stay in the fit.

    Parameters
    ----------
    records : list of dict
        Pass-1 records (``recording_id``, ``source``, ...) of the recordings prepared.
    train_quartiles, held_out_quartiles : dict
        Recording id -> per-parcel quartiles (3, P) of the recordings the statistics are fitted
        on, and of the validation and test recordings.
    drop, skip_held_out, fitted_here, pooled, split_of_id
        See :func:`outliers_of_build`.
    """
    outliers, outlier_records, kept, dropped = outliers_of_build(
        records, train_quartiles, held_out_quartiles, drop, skip_held_out=skip_held_out,
        fitted_here=fitted_here, pooled=pooled, split_of_id=split_of_id)
    train_range = QuartileRange()  # O(P) memory: only the range of training quartiles is kept
    for rid, q in train_quartiles.items():
        if rid not in outliers:
            train_range.add(q)
    return ScreenedRecordings(outliers, outlier_records, kept, dropped, train_range)
