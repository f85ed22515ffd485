"""Evaluation results are a folder published in one rename: all files or none.

A run that fails half-way (bad input, an interrupted fit) leaves no result files behind, and an
existing results folder is replaced only once the new one is complete. The mechanism is
:func:`brainlm.data.atomic.atomic_directory`; this module adds the early check, the writing of a
name -> content mapping, and the readers of saved results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from brainlm.data.atomic import atomic_directory, check_output_folder, write_parquet_atomic, write_text_atomic
from brainlm.errors import BrainLMInputError

__all__ = ["check_results_folder", "parcel_table_text", "publish_results", "read_parcel_table", "read_results_json",
           "read_results_table"]


def check_results_folder(out: str | Path | None, overwrite: bool, sources=()) -> Path | None:
    """``out`` as a Path; an error, before any work is done, if it may not be published there
    (:func:`~brainlm.data.atomic.check_output_folder`, the same rule
    :func:`~brainlm.data.atomic.atomic_directory` applies when publishing: an existing folder
    only with ``overwrite`` and only if brainlm wrote it, never over one of ``sources``)."""
    if out is None:
        return None
    return check_output_folder(out, overwrite=overwrite, sources=sources)


def publish_results(out: Path, files: dict[str, str | pd.DataFrame]) -> None:
    """Write ``files`` (name -> text, or a DataFrame written as Parquet) into a private folder
    beside ``out`` and publish it as ``out`` in one rename (an existing ``out`` is replaced: the
    caller checked it first with :func:`check_results_folder`)."""
    with atomic_directory(out, overwrite=True, what="results") as build:
        for name, content in files.items():
            if isinstance(content, pd.DataFrame):
                write_parquet_atomic(content, build / name)
            else:
                write_text_atomic(build / name, content)


def read_results_json(path: str | Path) -> dict:
    """A JSON file of a results folder; an error naming the file when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise BrainLMInputError("results file not found; run the task again to write it", str(path))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BrainLMInputError(f"results file is not valid JSON ({e})", str(path)) from None


def read_results_table(path: str | Path, required: tuple[str, ...] = (), **read_csv) -> pd.DataFrame:
    """A TSV table of a results folder (``read_csv`` options passed on to pandas); an error
    naming the file when it is missing, unreadable or lacks a ``required`` column."""
    path = Path(path)
    if not path.is_file():
        raise BrainLMInputError("results table not found; run the task again to write it", str(path))
    try:
        table = pd.read_csv(path, sep="\t", **read_csv)
    except Exception as e:  # noqa: BLE001 - any parser failure is a damaged file
        raise BrainLMInputError(f"cannot read results table ({e})", str(path)) from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise BrainLMInputError(f"results table lacks column(s) {missing}; found {list(table.columns)}",
                                str(path))
    return table


def parcel_table_text(table: pd.DataFrame) -> str:
    """``parcels.tsv`` of a results folder: one row per parcel, tab-separated, floats to 6
    significant digits."""
    return table.to_csv(sep="\t", index=False, float_format="%.6g")


def read_parcel_table(path: str | Path, required: tuple[str, ...], numeric: tuple[str, ...] = ()) -> pd.DataFrame:
    """A saved ``parcels.tsv`` (see :func:`parcel_table_text`): parcel names and networks as
    text, empty cells (unlabelled parcels, no prediction) kept as empty strings, except in the
    ``numeric`` columns, where they are missing values."""
    return read_results_table(path, required, dtype={"parcel": str, "network": str}, keep_default_na=False,
                              na_values={c: ["", "nan", "NaN"] for c in numeric})
