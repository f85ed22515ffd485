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

from brainlm.data.atomic import atomic_directory, write_parquet_atomic, write_text_atomic
from brainlm.errors import BrainLMInputError

__all__ = ["check_results_folder", "publish_results", "read_results_json", "read_results_table"]


def check_results_folder(out: str | Path | None, overwrite: bool) -> Path | None:
    """``out`` as a Path; an error, before any work is done, if it exists and not ``overwrite``
    (the same refusal :func:`~brainlm.data.atomic.atomic_directory` gives when publishing)."""
    if out is None:
        return None
    out = Path(out)
    if out.exists() and not overwrite:
        raise BrainLMInputError("output folder exists; pass overwrite=True (--overwrite) to replace it",
                                str(out))
    if out.exists() and not out.is_dir():
        raise BrainLMInputError("output path is a file; expected a folder", str(out))
    return out


def publish_results(out: Path, files: dict[str, str | pd.DataFrame]) -> None:
    """Write ``files`` (name -> text, or a DataFrame written as Parquet) into a private folder
    beside ``out`` and publish it as ``out`` in one rename (an existing ``out`` is replaced: the
    caller checked it first with :func:`check_results_folder`)."""
    with atomic_directory(out, overwrite=True) as build:
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
