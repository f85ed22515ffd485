"""Readers for parcellated fMRI time series files.

One function, :func:`read_timeseries`, turns any supported file into a ``(T, P)`` float32 array
(rows are TRs, columns are parcels) together with what the file itself says about it: the
repetition time and the parcel names, when present. Supported formats:

=====================  ===============================================================
suffix                 how it is read
=====================  ===============================================================
``.npy``               :func:`numpy.load` (no pickles)
``.npz``               one array of the archive, by ``key`` or inferred
``.csv``, ``.tsv``     pandas; a first row that is not all numbers is the header
``.csv.gz``, ``.tsv.gz``  the same, gzip-compressed
``.txt``               numbers separated by whitespace or commas, no header
``.mat``               :func:`scipy.io.loadmat`; MATLAB v7.3 files (HDF5) through h5py
``.h5``, ``.hdf5``     one dataset, by ``key`` (a path such as ``"group/ts"``) or inferred
``.parquet``           pandas; numeric columns are parcels
=====================  ===============================================================

NaN and Inf values are *not* rejected here: the caller applies its own NaN policy. Every
problem with a file raises :class:`~brainlm.errors.BrainLMInputError` naming the file.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainlm.errors import BrainLMInputError

SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".npy", ".npz", ".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt", ".mat", ".h5", ".hdf5",
    ".parquet",
)
ORIENTATIONS = ("auto", "time-by-parcel", "parcel-by-time")

# Names under which containers (npz, mat, h5) conventionally hold the time series.
CONVENTIONAL_KEYS = ("timeseries", "time_series", "ts", "data", "bold", "X", "signals")
# Names under which containers carry the repetition time (seconds); matched case-insensitively.
TR_KEYS = ("tr", "TR", "repetition_time", "RepetitionTime")
# Header names of a frame-index / time column in tables: not a parcel, dropped.
TIME_COLUMNS = ("time", "t", "tr", "frame", "timepoint", "time_point", "volume")

_SUFFIXES_LONGEST_FIRST = tuple(sorted(SUPPORTED_SUFFIXES, key=len, reverse=True))
_CONVENTIONAL_LOWER = frozenset(k.lower() for k in CONVENTIONAL_KEYS)
_TR_LOWER = frozenset(k.lower() for k in TR_KEYS)
_TIME_LOWER = frozenset(TIME_COLUMNS)
_NOT_SERIES_WORDS = ("participants", "confounds")
_NOT_SERIES_ENDINGS = ("_events", "_scans", "_sessions", "_regressors")
_MATLAB_NUMERIC = frozenset(("double", "single", "int8", "int16", "int32", "int64",
                             "uint8", "uint16", "uint32", "uint64"))
_MAX_TR_S = 30.0  # same bound as Recording: larger values are almost surely milliseconds


@dataclass(eq=False)
class RawSeries:
    """A time series as read from one file, before any cleaning.

    Parameters
    ----------
    data : numpy.ndarray, shape (T, P), float32
        One row per TR, one column per parcel, C-contiguous. NaN/Inf are allowed here;
        the caller decides what to do with them.
    tr : float or None
        Repetition time in seconds when the file itself carries it (npz/mat variable or HDF5
        attribute named ``tr``, ``TR``, ``repetition_time`` or ``RepetitionTime``), else None.
    parcel_names : list of str or None, length P
        Parcel labels from a table header (CSV/TSV/parquet columns, or row labels of a
        parcel-by-time table) when present, else None.
    source : str
        The path the data was read from.
    """

    data: np.ndarray
    tr: float | None
    parcel_names: list[str] | None
    source: str

    @property
    def n_timepoints(self) -> int:
        """Number of time points ``T``."""
        return int(self.data.shape[0])

    @property
    def n_parcels(self) -> int:
        """Number of parcels ``P``."""
        return int(self.data.shape[1])


# -- file names ------------------------------------------------------------------------------
def _suffix(path: str | Path) -> str:
    """The supported (possibly compound) suffix of ``path``, lower case; ``""`` if none."""
    name = Path(path).name.lower()
    for suffix in _SUFFIXES_LONGEST_FIRST:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def is_timeseries_file(path: str | Path) -> bool:
    """Whether ``path`` looks like a time series file, judged by its name only.

    True for the :data:`SUPPORTED_SUFFIXES` (case-insensitive). False for BIDS tables that are
    not time series (``participants.tsv``, ``*_confounds*``, ``*_events.tsv``,
    ``*_scans.tsv``, ``*_sessions.tsv``, ``*_regressors.tsv``), for JSON sidecars and for
    hidden files (``.foo.npy``, macOS ``._foo.npy``). The file is not opened.
    """
    name = Path(path).name.lower()
    suffix = _suffix(name)
    if not suffix or name.startswith("."):
        return False
    if any(word in name for word in _NOT_SERIES_WORDS):
        return False
    stem = name[: -len(suffix)]
    return not stem.endswith(_NOT_SERIES_ENDINGS)


def _sidecar_path(path: Path) -> Path:
    suffix = _suffix(path)
    if suffix:
        return path.with_name(path.name[: -len(suffix)] + ".json")
    low = path.name.lower()
    # Images: BIDS sidecars drop every extension part (``_bold.dtseries.nii`` -> ``_bold.json``).
    for image_suffix in (".nii.gz", ".dtseries.nii", ".func.gii", ".nii"):
        if low.endswith(image_suffix):
            return path.with_name(path.name[: -len(image_suffix)] + ".json")
    return path.with_suffix(".json")


# -- repetition time -------------------------------------------------------------------------
def _check_tr(value: Any, what: str, source: str) -> float:
    """``value`` as a repetition time in seconds, or an error naming ``what`` and ``source``."""
    raw = value
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise BrainLMInputError(
                f"{what} has shape {value.shape}; expected a single repetition time in seconds",
                source)
        value = value.reshape(()).item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise BrainLMInputError(
                f"{what} is {raw!r}; expected a repetition time in seconds (a number > 0)",
                source) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BrainLMInputError(
            f"{what} is {raw!r}; expected a repetition time in seconds (a number > 0)", source)
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise BrainLMInputError(
            f"{what} is {raw!r}; expected a repetition time in seconds (a number > 0)", source)
    if value > _MAX_TR_S:
        raise BrainLMInputError(
            f"{what} is {value:g}; expected seconds (<= {_MAX_TR_S:g}); milliseconds given?",
            source)
    return value


def read_sidecar_tr(path: str | Path) -> float | None:
    """Repetition time (seconds) from the BIDS JSON sidecar of a data file.

    The sidecar is the file next to ``path`` with the same name and the (possibly compound)
    suffix replaced by ``.json``: ``sub-01_task-rest_timeseries.tsv.gz`` ->
    ``sub-01_task-rest_timeseries.json``.

    Parameters
    ----------
    path : str or Path
        The data file (it need not exist).

    Returns
    -------
    float or None
        ``RepetitionTime`` in seconds; if absent, ``1 / SamplingFrequency`` (Hz) when that
        is given; None when there is no sidecar or it states neither.

    Raises
    ------
    BrainLMInputError
        The sidecar is not readable JSON object, or its ``RepetitionTime`` /
        ``SamplingFrequency`` is not a positive number (seconds / Hz).
    """
    sidecar = _sidecar_path(Path(path))
    if not sidecar.is_file():
        return None
    src = str(sidecar)
    try:
        with open(sidecar, encoding="utf-8-sig") as fh:
            meta = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BrainLMInputError(f"cannot parse JSON sidecar ({e}); expected a JSON object "
                                "with a RepetitionTime in seconds", src) from None
    except OSError as e:
        raise BrainLMInputError(f"cannot open JSON sidecar ({e.strerror or e})", src) from None
    if not isinstance(meta, dict):
        raise BrainLMInputError(f"JSON sidecar holds a {type(meta).__name__}; expected an "
                                "object with a RepetitionTime in seconds", src)
    if "RepetitionTime" in meta:
        value = meta["RepetitionTime"]
        if isinstance(value, str):  # BIDS requires a number; a string is a malformed sidecar
            raise BrainLMInputError(f"field 'RepetitionTime' is the string {value!r}; "
                                    "expected a number of seconds > 0", src)
        return _check_tr(value, "field 'RepetitionTime'", src)
    if "SamplingFrequency" in meta:
        freq = meta["SamplingFrequency"]
        if (isinstance(freq, bool) or not isinstance(freq, (int, float))
                or not math.isfinite(freq) or freq <= 0):
            raise BrainLMInputError(f"field 'SamplingFrequency' is {freq!r}; expected a "
                                    "number of Hz > 0", src)
        return _check_tr(1.0 / freq, "1 / field 'SamplingFrequency'", src)
    return None


# -- orientation -----------------------------------------------------------------------------
def _check_orientation_args(orientation: Any, n_parcels: Any, source: str) -> None:
    if orientation not in ORIENTATIONS:
        raise BrainLMInputError(
            f"unknown orientation {orientation!r}; expected one of {list(ORIENTATIONS)}", source)
    if n_parcels is not None and (isinstance(n_parcels, bool)
                                  or not isinstance(n_parcels, (int, np.integer))
                                  or n_parcels < 1):
        raise BrainLMInputError(f"n_parcels is {n_parcels!r}; expected a positive integer "
                                "(the atlas's parcel count) or None", source)
    if orientation == "auto" and n_parcels is None:
        raise BrainLMInputError(
            "orientation='auto' needs the parcel count to tell TRs from parcels; give an atlas "
            "(n_parcels) or an explicit orientation='time-by-parcel' or 'parcel-by-time'",
            source)


def _orient(array: Any, n_parcels: int | None, orientation: str,
            source: str) -> tuple[np.ndarray, bool]:
    """Oriented float32 (T, P) array and whether the input was transposed."""
    _check_orientation_args(orientation, n_parcels, source)
    x = np.asarray(array)
    if x.ndim != 2:
        if x.ndim == 3:
            why = "a 3-D array holds several recordings: save one file per recording"
        elif x.ndim == 1:
            why = "a 1-D array is a single signal: save a T x P table (one column per parcel)"
        else:
            why = "save one T x P table per recording"
        raise BrainLMInputError(
            f"array has shape {x.shape} ({x.ndim}-D); expected a 2-D T x P array; {why}", source)
    if x.dtype.kind not in "iuf":
        raise BrainLMInputError(f"array holds dtype {x.dtype}; expected real numbers", source)
    if 0 in x.shape:
        raise BrainLMInputError(f"array is empty (shape {x.shape}); expected a T x P time "
                                "series with at least one TR and one parcel", source)
    rows, cols = x.shape
    if orientation == "auto":
        if rows == n_parcels and cols == n_parcels:
            raise BrainLMInputError(
                f"ambiguous orientation: shape {x.shape} has {n_parcels} (the atlas's parcel "
                "count) on both axes; pass orientation='time-by-parcel' or 'parcel-by-time'",
                source)
        if cols == n_parcels:
            transpose = False
        elif rows == n_parcels:
            transpose = True
        else:
            raise BrainLMInputError(
                f"array has shape {x.shape}; neither axis matches the atlas's {n_parcels} "
                f"parcels (expected T x {n_parcels} or {n_parcels} x T). Wrong atlas?", source)
    else:
        transpose = orientation == "parcel-by-time"
        n_found = rows if transpose else cols
        if n_parcels is not None and n_found != n_parcels:
            other = cols if transpose else rows
            hint = ""
            if other == n_parcels:
                flip = "time-by-parcel" if transpose else "parcel-by-time"
                hint = f" (the other axis matches: pass orientation={flip!r} or 'auto')"
            raise BrainLMInputError(
                f"parcel count does not match the atlas: array of shape {x.shape} read as "
                f"{orientation} has {n_found} parcels; the atlas has {n_parcels}{hint}", source)
    if transpose:
        x = x.T
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(x, dtype=np.float32)
    return out, transpose


def orient(array: Any, *, n_parcels: int | None, orientation: str,
           source: str) -> np.ndarray:
    """Put a 2-D array into ``(T, P)`` order.

    Parameters
    ----------
    array : array-like, 2-D, real numbers
        The time series as stored.
    n_parcels : int or None
        The atlas's parcel count ``P``. Required for ``orientation="auto"``; with an explicit
        orientation it is checked against the parcel axis when given.
    orientation : {"auto", "time-by-parcel", "parcel-by-time"}
        ``"time-by-parcel"``: rows are TRs. ``"parcel-by-time"``: rows are parcels (the array
        is transposed). ``"auto"``: the axis whose length equals ``n_parcels`` is the parcel
        axis; an error when both or neither do.
    source : str
        File or object named in error messages.

    Returns
    -------
    numpy.ndarray, shape (T, P), float32, C-contiguous
        NaN/Inf are passed through unchanged.
    """
    return _orient(array, n_parcels, orientation, source)[0]


# -- helpers for the container formats (npz, mat, h5) --------------------------------------
def _leaf(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _describe(entries: dict[str, tuple[tuple[int, ...] | None, str]]) -> str:
    if not entries:
        return "nothing"
    parts = [f"{name!r} {shape if shape is not None else '?'} {dtype}"
             for name, (shape, dtype) in list(entries.items())[:20]]
    more = f", ... ({len(entries) - 20} more)" if len(entries) > 20 else ""
    return ", ".join(parts) + more


def _pick_key(entries: dict[str, tuple[tuple[int, ...] | None, str]], numeric: set[str],
              key: str | None, what: str, source: str) -> str:
    """Name of the array that holds the time series.

    ``entries`` maps every array name to ``(shape, dtype text)``; ``numeric`` names those of
    real numeric type. Inference: the only numeric non-metadata array; else, preferring
    arrays with two or more non-trivial axes, the only one left or the only conventional name.
    """
    if key is not None:
        if key not in entries:
            raise BrainLMInputError(
                f"no {what} named {key!r}; the file holds {_describe(entries)}", source)
        return key

    def size(name: str) -> int:
        shape = entries[name][0]
        return 0 if shape is None else int(np.prod(shape, dtype=np.int64))

    candidates = [n for n in entries
                  if n in numeric and size(n) > 1 and _leaf(n).lower() not in _TR_LOWER]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise BrainLMInputError(
            f"no numeric {what} with more than one value found; the file holds "
            f"{_describe(entries)}", source)
    matrices = [n for n in candidates if sum(d > 1 for d in entries[n][0]) >= 2]
    pool = matrices or candidates
    if len(pool) == 1:
        return pool[0]
    conventional = [n for n in pool if _leaf(n).lower() in _CONVENTIONAL_LOWER]
    if len(conventional) == 1:
        return conventional[0]
    listing = _describe({n: entries[n] for n in pool})
    raise BrainLMInputError(
        f"cannot tell which {what} holds the time series: candidates {listing}; pass key= "
        f"one of {pool} (a single {what}, or one named {list(CONVENTIONAL_KEYS)}, is found "
        "without a key)", source)


def _fail(message: str, err: BaseException, source: str) -> BrainLMInputError:
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    detail = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    return BrainLMInputError(f"{message} [{detail}]", source)


def _check_key_type(key: Any, source: str) -> None:
    if key is not None and not isinstance(key, str):
        raise BrainLMInputError(f"key is {key!r}; expected the name of an array (a string)",
                                source)


# -- per-format readers ------------------------------------------------------------------------
# Each returns (array as stored, tr or None, column names or None, row labels or None).
_Read = tuple[np.ndarray, "float | None", "list[str] | None", "list[str] | None"]


def _read_npy(path: Path, src: str, key: str | None) -> _Read:
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                dtype = None
    except Exception as e:  # noqa: BLE001 - any failure here means "not a NumPy file"
        raise _fail("cannot read .npy file (not a NumPy .npy file: bad header)", e, src) from None
    if dtype is not None and dtype.hasobject:
        raise BrainLMInputError(f".npy file holds Python objects (dtype {dtype}, shape {shape}); "
                                "expected a numeric T x P array", src)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise _fail("cannot read .npy file (truncated or not a NumPy file)", e, src) from None
    return arr, None, None, None


def _npy_member_header(fh) -> tuple[tuple[int, ...] | None, np.dtype | None]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        return None, None
    return tuple(shape), dtype


def _read_npz(path: Path, src: str, key: str | None) -> _Read:
    expected = "cannot read .npz file (truncated or not a NumPy .npz archive)"
    entries: dict[str, tuple[tuple[int, ...] | None, str]] = {}
    numeric: set[str] = set()
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                name = member[:-4] if member.endswith(".npy") else member
                with zf.open(member) as fh:
                    shape, dtype = _npy_member_header(fh)
                entries[name] = (shape, str(dtype) if dtype is not None else "?")
                if dtype is not None and dtype.kind in "iuf":
                    numeric.add(name)
    except Exception as e:  # noqa: BLE001
        raise _fail(expected, e, src) from None
    if not entries:
        raise BrainLMInputError(".npz archive holds no arrays; expected a T x P time series",
                                src)
    chosen = _pick_key(entries, numeric, key, "array", src)
    if chosen not in numeric:
        raise BrainLMInputError(f"array {chosen!r} holds dtype {entries[chosen][1]}; "
                                "expected real numbers", src)
    tr_names = [n for n in entries if n.lower() in _TR_LOWER and n != chosen]
    try:
        with np.load(path, allow_pickle=False) as npz:
            arr = npz[chosen]
            tr_values = {n: npz[n] for n in tr_names}
    except Exception as e:  # noqa: BLE001
        raise _fail(expected, e, src) from None
    tr = _tr_from_values(tr_values, "array", src)
    return arr, tr, None, None


def _tr_from_values(values: dict[str, Any], what: str, src: str) -> float | None:
    trs = {name: _check_tr(v, f"{what} {name!r}", src) for name, v in values.items()}
    if len(set(trs.values())) > 1:
        raise BrainLMInputError(f"conflicting repetition times {trs}; expected one TR in "
                                "seconds", src)
    return next(iter(trs.values()), None)


def _read_mat(path: Path, src: str, key: str | None) -> _Read:
    import h5py
    import scipy.io

    if h5py.is_hdf5(str(path)):  # MATLAB v7.3 files are HDF5
        return _read_hdf5(path, src, key, matlab=True)
    expected = "cannot read .mat file (corrupt, or not a MATLAB file)"
    try:
        listing = scipy.io.whosmat(str(path))
    except NotImplementedError as e:  # a v7.3 header, but no readable HDF5 after it
        raise _fail("cannot read MATLAB v7.3 .mat file (truncated or corrupt HDF5)", e,
                    src) from None
    except Exception as e:  # noqa: BLE001
        raise _fail(expected, e, src) from None
    entries = {name: (tuple(int(d) for d in shape), cls) for name, shape, cls in listing
               if not name.startswith("__")}
    numeric = {name for name, (_, cls) in entries.items() if cls in _MATLAB_NUMERIC}
    if not entries:
        raise BrainLMInputError(".mat file holds no variables; expected a T x P time series",
                                src)
    chosen = _pick_key(entries, numeric, key, "variable", src)
    if chosen not in numeric:
        raise BrainLMInputError(f"variable {chosen!r} is a MATLAB {entries[chosen][1]}; "
                                "expected a numeric matrix", src)
    tr_names = [n for n in numeric if n.lower() in _TR_LOWER and n != chosen]
    try:
        mat = scipy.io.loadmat(str(path), variable_names=[chosen, *tr_names])
    except Exception as e:  # noqa: BLE001
        raise _fail(expected, e, src) from None
    if chosen not in mat:
        raise BrainLMInputError(f"cannot read variable {chosen!r} from .mat file", src)
    tr = _tr_from_values({n: mat[n] for n in tr_names if n in mat}, "variable", src)
    return np.asarray(mat[chosen]), tr, None, None


def _h5_attr_tr(attrs, what: str, src: str) -> float | None:
    values = {name: attrs[name] for name in attrs if str(name).lower() in _TR_LOWER}
    return _tr_from_values(values, what, src) if values else None


def _read_hdf5(path: Path, src: str, key: str | None, *, matlab: bool = False) -> _Read:
    import h5py

    kind = "MATLAB v7.3 .mat" if matlab else "HDF5"
    expected = f"cannot read {kind} file (corrupt, truncated or not an HDF5 file)"
    what = "variable" if matlab else "dataset"

    def matlab_class(obj) -> str | None:
        cls = obj.attrs.get("MATLAB_class")
        return cls.decode() if isinstance(cls, bytes) else (None if cls is None else str(cls))

    try:
        with h5py.File(path, "r") as f:
            datasets: dict[str, Any] = {}

            def visit(name: str, obj) -> None:
                if not isinstance(obj, h5py.Dataset):
                    return
                if matlab and (name.startswith("#") or "MATLAB_sparse" in obj.parent.attrs):
                    return  # MATLAB internals (#refs#, #subsystem#) and sparse-matrix parts
                datasets[name] = obj

            f.visititems(visit)
            entries: dict[str, tuple[tuple[int, ...] | None, str]] = {}
            numeric: set[str] = set()
            for name, ds in datasets.items():
                shape = None if ds.shape is None else tuple(int(d) for d in ds.shape)
                if matlab and shape is not None:
                    shape = shape[::-1]  # MATLAB writes column-major: HDF5 axes are reversed
                cls = matlab_class(ds) if matlab else None
                entries[name] = (shape, cls or str(ds.dtype))
                ok = shape is not None and ds.dtype.kind in "iuf"
                if matlab and cls is not None and cls not in _MATLAB_NUMERIC:
                    ok = False
                if ok:
                    numeric.add(name)
            if key is not None:
                key = key.strip("/")
                obj = f.get(key)
                if isinstance(obj, h5py.Group):
                    inside = {n: e for n, e in entries.items() if n.startswith(key + "/")}
                    raise BrainLMInputError(f"{key!r} is a group; expected a {what}. It holds "
                                            f"{_describe(inside)}", src)
            if not entries:
                raise BrainLMInputError(f"{kind} file holds no datasets; expected a T x P "
                                        "time series", src)
            chosen = _pick_key(entries, numeric, key, what, src)
            if chosen not in numeric:
                raise BrainLMInputError(f"{what} {chosen!r} holds {entries[chosen][1]}; "
                                        "expected real numbers", src)
            ds = datasets[chosen]
            arr = np.asarray(ds[()])
            if matlab:
                arr = arr.T
            # TR: attributes of the dataset, then of each enclosing group up to the root,
            # then a scalar dataset named like a TR.
            tr = _h5_attr_tr(ds.attrs, f"attribute of {chosen!r}", src)
            group = ds.parent
            while tr is None:
                tr = _h5_attr_tr(group.attrs, f"attribute of group {group.name!r}", src)
                if group.name == "/":
                    break
                group = group.parent
            if tr is None:
                scalars = {n: np.asarray(datasets[n][()]) for n in numeric
                           if _leaf(n).lower() in _TR_LOWER and n != chosen}
                tr = _tr_from_values(scalars, what, src)
    except BrainLMInputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _fail(expected, e, src) from None
    return arr, tr, None, None


def _read_parquet(path: Path, src: str, key: str | None) -> _Read:
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise _fail("cannot read .parquet file (corrupt or not a Parquet file)", e, src) from None
    names = [str(c).strip() for c in df.columns]
    keep = [i for i, n in enumerate(names) if n.lower() not in _TIME_LOWER]
    bad = [names[i] for i in keep
           if not pd.api.types.is_numeric_dtype(df.iloc[:, i])
           or pd.api.types.is_bool_dtype(df.iloc[:, i])]
    if bad:
        raise BrainLMInputError(
            f"non-numeric column(s) {bad[:5]}{' ...' if len(bad) > 5 else ''}; expected one "
            "numeric column per parcel (plus at most a time column named like "
            f"{list(TIME_COLUMNS)})", src)
    df = df.iloc[:, keep]
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise BrainLMInputError(f"parquet table has shape {df.shape}; expected one row per TR "
                                "and one numeric column per parcel", src)
    arr = df.to_numpy(dtype=np.float64, na_value=np.nan)
    rows = None
    if not isinstance(df.index, pd.RangeIndex) and not pd.api.types.is_numeric_dtype(df.index):
        rows = [str(v) for v in df.index]
    return arr, None, [names[i] for i in keep], rows


def _is_number_or_na(cell: Any) -> bool:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return True
    try:
        float(str(cell))
    except ValueError:
        return False
    return True


_INT_TOKEN = re.compile(r"^\s*[+-]?\d+\s*$")


def _is_label_header(first: np.ndarray, rest: np.ndarray) -> bool:
    """Whether an all-numeric first row is a header of atlas label values (``1 2 3 ...``).

    It is when it holds only integers in strictly increasing order (over at least two columns)
    and either the data rows below hold non-integers or the labels count up from 0 or 1.
    """
    tokens = list(first)
    if tokens and (tokens[0] is None or (isinstance(tokens[0], float) and math.isnan(tokens[0]))):
        tokens = tokens[1:]  # blank corner of a table written with its index
    if len(tokens) < 2 or not all(isinstance(t, str) and _INT_TOKEN.match(t) for t in tokens):
        return False
    values = [int(t) for t in tokens]
    if any(b <= a for a, b in zip(values, values[1:])):
        return False
    data_not_integer = any(isinstance(t, str) and not _INT_TOKEN.match(t)
                           for t in rest.ravel())
    consecutive = values == list(range(values[0], values[0] + len(values))) and values[0] in (0, 1)
    return data_not_integer or consecutive


def _read_text(path: Path, src: str, *, sep: str, header_allowed: bool,
               comment: str | None, kind: str) -> _Read:
    """Numbers in a delimited text file; see the module docstring for the header rules."""
    expected = f"cannot read {kind} file (expected delimited numbers, one row per TR)"
    read_kw: dict[str, Any] = {"sep": sep, "comment": comment, "encoding": "utf-8-sig"}
    try:
        head = pd.read_csv(path, header=None, nrows=6, dtype=str, **read_kw)
    except pd.errors.EmptyDataError:
        raise BrainLMInputError(f"{kind} file holds no data; expected one row of numbers per "
                                "TR", src) from None
    except Exception as e:  # noqa: BLE001
        raise _fail(expected, e, src) from None
    cells = head.to_numpy(dtype=object)
    numeric = np.array([[_is_number_or_na(c) for c in row] for row in cells], dtype=bool)
    n_rows, n_cols = numeric.shape
    # A first column of text in every data row holds row labels (parcel names when the
    # table is parcel-by-time); a first row that is not all numbers is the header.
    label_col = (header_allowed and n_cols > 1 and n_rows > 1 and not numeric[1:, 0].any())
    start = 1 if label_col else 0
    has_header = header_allowed and n_rows > 0 and (
        not numeric[0, start:].all() or _is_label_header(cells[0, start:], cells[1:, start:]))
    # pandas' to_csv writes the index as an unnamed first column: treat it as row labels.
    index_col = label_col or (has_header and n_cols > 1 and pd.isna(cells[0, 0]))
    try:
        df = pd.read_csv(path, header=0 if has_header else None,
                         index_col=0 if index_col else None, **read_kw)
    except pd.errors.EmptyDataError:
        raise BrainLMInputError(f"{kind} file holds no data; expected one row of numbers per "
                                "TR", src) from None
    except Exception as e:  # noqa: BLE001
        raise _fail(expected + "; do all rows have the same number of fields?", e, src) from None
    names = [str(c).strip() for c in df.columns] if has_header else None
    keep = list(range(df.shape[1]))
    if names is not None:
        keep = [i for i in keep if names[i].lower() not in _TIME_LOWER]
    if df.shape[0] == 0 or not keep:
        raise BrainLMInputError(f"{kind} file holds no data rows (table shape {df.shape}); "
                                "expected one row of numbers per TR", src)
    arr = np.empty((df.shape[0], len(keep)), dtype=np.float64)
    for out_j, j in enumerate(keep):
        col = df.iloc[:, j]
        where = f"column {names[j]!r}" if names is not None else f"column {j + 1}"
        if pd.api.types.is_bool_dtype(col):
            raise BrainLMInputError(f"{where} holds True/False values; expected numbers", src)
        if not pd.api.types.is_numeric_dtype(col):
            converted = pd.to_numeric(col, errors="coerce")
            bad = np.flatnonzero(converted.isna().to_numpy() & col.notna().to_numpy())
            if bad.size:
                i = int(bad[0])
                raise BrainLMInputError(
                    f"non-numeric value {col.iloc[i]!r} in data row {i + 1}, {where}"
                    f"{f' ({bad.size} such cells)' if bad.size > 1 else ''}; expected numbers "
                    "(missing values as empty, 'n/a' or 'NaN')", src)
            col = converted
        arr[:, out_j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
    cols = [names[i] for i in keep] if names is not None else None
    rows = [str(v).strip() for v in df.index] if label_col else None
    return arr, None, cols, rows


def _text_reader(sep: str, kind: str):
    def read(path: Path, src: str, key: str | None) -> _Read:
        return _read_text(path, src, sep=sep, header_allowed=True, comment=None, kind=kind)
    return read


def _read_txt(path: Path, src: str, key: str | None) -> _Read:
    sep = r"\s+"
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for line in fh:
                line = line.split("#", 1)[0].strip()
                if line:
                    sep = "," if "," in line else r"\s+"
                    break
    except UnicodeDecodeError as e:
        raise _fail("cannot read .txt file (not a text file)", e, src) from None
    except OSError as e:
        raise _fail("cannot open .txt file", e, src) from None
    return _read_text(path, src, sep=sep, header_allowed=False, comment="#", kind=".txt")


_READERS = {
    ".npy": _read_npy,
    ".npz": _read_npz,
    ".csv": _text_reader(",", ".csv"),
    ".csv.gz": _text_reader(",", ".csv.gz"),
    ".tsv": _text_reader("\t", ".tsv"),
    ".tsv.gz": _text_reader("\t", ".tsv.gz"),
    ".txt": _read_txt,
    ".mat": _read_mat,
    ".h5": lambda path, src, key: _read_hdf5(path, src, key),
    ".hdf5": lambda path, src, key: _read_hdf5(path, src, key),
    ".parquet": _read_parquet,
}
_KEYED = (".npz", ".mat", ".h5", ".hdf5")


def read_timeseries(path: str | Path, *, key: str | None = None, orientation: str = "auto",
                    n_parcels: int | None = None) -> RawSeries:
    """Read one parcellated time series file into a ``(T, P)`` float32 array.

    Parameters
    ----------
    path : str or Path
        A file with one of the :data:`SUPPORTED_SUFFIXES` (case-insensitive).
    key : str, optional
        Which array of a container holds the series: an ``.npz`` array name, a ``.mat``
        variable name or an HDF5 dataset path (``"group/ts"``). Without it the key is
        inferred: the only numeric array with more than one value; else the only matrix
        (two or more axes longer than 1); else the only one named like
        :data:`CONVENTIONAL_KEYS`; otherwise an error lists the candidates and their shapes.
        Ignored for single-array formats (npy, text tables, parquet).
    orientation : {"auto", "time-by-parcel", "parcel-by-time"}
        How the stored array is laid out; see :func:`orient`. ``"auto"`` needs ``n_parcels``.
    n_parcels : int, optional
        The atlas's parcel count ``P``; checked against the parcel axis.

    Returns
    -------
    RawSeries
        ``data`` of shape (T, P), float32, NaN/Inf allowed; ``tr`` in seconds when the file
        carries it; ``parcel_names`` from a table header when present.

    Raises
    ------
    BrainLMInputError
        Missing, empty, unreadable or corrupt file; non-numeric cells; an ambiguous or missing
        key; an array that is not 2-D; an orientation that cannot be resolved or a parcel
        count that does not match ``n_parcels``. The message names the file.

    Notes
    -----
    Text tables (``.csv``/``.tsv``, optionally ``.gz``): separator by suffix; if the first
    row is not all numbers it is the header (parcel names); a first column that is text in
    every row holds row labels (parcel names of a parcel-by-time table); a header column
    named like :data:`TIME_COLUMNS` (``time``, ``t``, ``tr``, ``frame`` ...) and the unnamed
    index column written by pandas are dropped. Missing cells (empty, ``n/a``, ``NaN``) read
    as NaN. A header made only of numbers (atlas label values such as ``1 2 3 ... P``)
    is recognised only when it is strictly increasing integers and either the data below
    are not integers or the labels count up from 0 or 1; such labels are returned as the
    parcel names (``"1"``, ``"2"``, ...).
    ``.txt``: numbers separated by whitespace or commas, no header, ``#`` starts a comment.
    MATLAB v7.3 variables are transposed back to MATLAB's row/column order.
    """
    src = str(path)
    _check_orientation_args(orientation, n_parcels, src)
    _check_key_type(key, src)
    p = Path(path)
    if not p.exists():
        raise BrainLMInputError("file not found; expected a parcellated time series file", src)
    if p.is_dir():
        raise BrainLMInputError("is a directory; expected a time series file", src)
    suffix = _suffix(p)
    if not suffix:
        low = p.name.lower()
        hint = ""
        if low.endswith((".nii", ".nii.gz", ".gii")):
            hint = (" NIfTI, GIfTI and CIFTI scans must be parcellated first: `brainlm prepare "
                    "--atlas-image ATLAS` does it (an atlas image instead of --atlas).")
        raise BrainLMInputError(f"unsupported file type; expected one of "
                                f"{list(SUPPORTED_SUFFIXES)}.{hint}", src)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise _fail("cannot open file", e, src) from None
    if size == 0:
        raise BrainLMInputError(f"file is empty (0 bytes); expected a {suffix} time series",
                                src)
    if suffix.endswith(".gz"):
        try:
            with gzip.open(p, "rb") as fh:
                first = fh.read(1)
        except Exception as e:  # noqa: BLE001
            raise _fail(f"cannot read {suffix} file (corrupt or not gzip-compressed)", e,
                        src) from None
        if not first:
            raise BrainLMInputError(f"file is empty once decompressed; expected a {suffix} "
                                    "time series", src)
    arr, tr, col_names, row_labels = _READERS[suffix](p, src, key if suffix in _KEYED else None)
    data, transposed = _orient(arr, n_parcels, orientation, src)
    names = row_labels if transposed else col_names
    if names is not None and len(names) != data.shape[1]:
        names = None
    return RawSeries(data=data, tr=tr, parcel_names=names, source=src)


__all__ = [
    "CONVENTIONAL_KEYS",
    "ORIENTATIONS",
    "SUPPORTED_SUFFIXES",
    "TIME_COLUMNS",
    "TR_KEYS",
    "RawSeries",
    "is_timeseries_file",
    "orient",
    "read_sidecar_tr",
    "read_timeseries",
]
