"""Subject-level phenotypes from a participants table (BIDS ``participants.tsv``).

The table has one row per subject and a subject id column (``participant_id`` in BIDS, with
``sub-`` labels). :func:`read_participants` indexes it by subject label without the ``sub-``
prefix; :func:`phenotypes_for` hands each recording's subject its row as plain Python values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainlm.errors import BrainLMInputError

# Id columns tried in this order (case-insensitive) when none is given.
ID_COLUMNS = ("participant_id", "subject", "subject_id", "sub", "eid")
# Missing-value markers: BIDS uses "n/a"; empty cells and the usual spellings of NaN too.
NA_VALUES = ("n/a", "N/A", "NA", "NaN", "nan", "")


def _strip_sub(label: Any) -> str:
    s = str(label).strip()
    return s[4:] if s.startswith("sub-") else s


def _find_id_column(columns: list[str], id_column: str | None, source: str) -> str:
    if id_column is not None:
        if id_column in columns:
            return id_column
        lower = {c.lower(): c for c in columns}
        if id_column.lower() in lower:
            return lower[id_column.lower()]
        raise BrainLMInputError(
            f"participants table has no column {id_column!r} (the id_column asked for); "
            f"columns found: {columns}", source)
    lower = {c.lower(): c for c in columns}
    for name in ID_COLUMNS:
        if name in lower:
            return lower[name]
    raise BrainLMInputError(
        f"participants table has no subject id column; expected one of {list(ID_COLUMNS)} "
        f"(BIDS: 'participant_id'), or pass id_column=; columns found: {columns}", source)


def read_participants(path: str | Path, *, id_column: str | None = None) -> pd.DataFrame:
    """Read a participants table, indexed by subject label.

    Parameters
    ----------
    path : str or Path
        A tab-separated table (BIDS ``participants.tsv``), or comma-separated when the name
        ends in ``.csv`` / ``.csv.gz``.
    id_column : str, optional
        The subject id column. Default: the first of :data:`ID_COLUMNS` present
        (``participant_id``, ``subject``, ``subject_id``, ``sub``, ``eid``; case-insensitive).

    Returns
    -------
    pandas.DataFrame
        One row per subject, indexed by the subject label as a string with the BIDS ``sub-``
        prefix stripped (index name ``"subject"``); the other columns are phenotypes with the
        dtypes pandas infers. ``n/a`` and empty cells are NaN (the BIDS convention).

    Raises
    ------
    BrainLMInputError
        Missing or unreadable file, no id column, empty ids, duplicate subject ids, no rows.
    """
    src = str(path)
    p = Path(path)
    if not p.is_file():
        raise BrainLMInputError("participants table not found", src)
    name = p.name.lower()
    sep = "," if name.endswith((".csv", ".csv.gz")) else "\t"
    read_kw: dict[str, Any] = {"sep": sep, "encoding": "utf-8-sig",
                               "keep_default_na": False, "na_values": list(NA_VALUES)}
    try:
        header = pd.read_csv(p, nrows=0, **read_kw)
    except pd.errors.EmptyDataError:
        raise BrainLMInputError("participants table is empty; expected a header row and one "
                                "row per subject", src) from None
    except Exception as e:  # noqa: BLE001 - any parser failure is a bad file
        raise BrainLMInputError(f"cannot read participants table ({type(e).__name__}: {e})",
                                src) from None
    columns = [str(c) for c in header.columns]
    id_col = _find_id_column([c.strip() for c in columns], id_column, src)
    raw_id_col = columns[[c.strip() for c in columns].index(id_col)]
    try:
        df = pd.read_csv(p, dtype={raw_id_col: str}, **read_kw)  # ids keep leading zeros
    except Exception as e:  # noqa: BLE001
        raise BrainLMInputError(f"cannot read participants table ({type(e).__name__}: {e}); "
                                f"expected a {'comma' if sep == ',' else 'tab'}-separated "
                                "table with one row per subject", src) from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise BrainLMInputError("participants table has no rows; expected one row per subject",
                                src)
    ids = df[id_col]
    empty = np.flatnonzero(ids.isna().to_numpy() | (ids.astype(str).str.strip() == "").to_numpy())
    if empty.size:
        raise BrainLMInputError(
            f"column {id_col!r} is empty in {empty.size} row(s), first in data row "
            f"{int(empty[0]) + 1}; expected a subject id in every row", src)
    labels = [_strip_sub(v) for v in ids]
    index = pd.Index(labels, name="subject", dtype=object)
    dupes = index[index.duplicated()].unique().tolist()
    if dupes:
        raise BrainLMInputError(
            f"duplicate subject ids in column {id_col!r}: {dupes[:5]}"
            f"{' ...' if len(dupes) > 5 else ''} ({len(dupes)} in all); expected one row per "
            "subject", src)
    out = df.drop(columns=[id_col])
    out.index = index
    return out


def _to_python(value: Any) -> Any:
    """A plain Python float/int/str/bool for one table cell; missing values as float NaN."""
    if value is None or value is pd.NA or value is pd.NaT:
        return float("nan")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    try:
        if pd.isna(value):
            return float("nan")
    except (TypeError, ValueError):
        pass
    return str(value)


def phenotypes_for(table: pd.DataFrame, subjects: Sequence[str], *, source: str,
                   allow_missing: bool = False) -> dict[str, dict]:
    """Each subject's row of a participants table as a dict of plain Python values.

    Parameters
    ----------
    table : pandas.DataFrame
        As returned by :func:`read_participants` (indexed by subject label).
    subjects : sequence of str
        Subject labels, with or without the ``sub-`` prefix.
    source : str
        The participants file, named in error messages.
    allow_missing : bool
        If True, subjects without a row get ``{}``; if False (default) they are an error.

    Returns
    -------
    dict
        ``{subject label without 'sub-': {column: value}}``; values are ``float``, ``int``,
        ``str`` or ``bool``, missing values ``float('nan')``.

    Raises
    ------
    BrainLMInputError
        Some subjects have no row (and ``allow_missing`` is False), or the table's index has
        duplicate subjects.
    """
    if isinstance(subjects, str):
        subjects = [subjects]
    labels = list(dict.fromkeys(_strip_sub(s) for s in subjects))
    table_ids = [_strip_sub(i) for i in table.index]
    position: dict[str, int] = {}
    for pos, label in enumerate(table_ids):
        if label in position:
            raise BrainLMInputError(f"participants table has subject {label!r} more than once; "
                                    "expected one row per subject", source)
        position[label] = pos
    missing = [s for s in labels if s not in position]
    if missing and not allow_missing:
        raise BrainLMInputError(
            f"{len(missing)} subject(s) have no row in the participants table, e.g. "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; expected a row per subject "
            "(pass allow_missing=True to keep them without phenotypes)", source)
    present = [s for s in labels if s in position]
    columns = [str(c) for c in table.columns]
    rows = table.iloc[[position[s] for s in present]]
    out: dict[str, dict] = {s: {} for s in labels}
    for label, values in zip(present, rows.itertuples(index=False, name=None)):
        out[label] = {c: _to_python(v) for c, v in zip(columns, values)}
    return out


__all__ = ["ID_COLUMNS", "NA_VALUES", "phenotypes_for", "read_participants"]
