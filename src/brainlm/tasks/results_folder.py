"""Evaluation results are a folder published in one rename: all files or none.

A run that fails half-way (bad input, an interrupted fit) leaves no result files behind, and an
existing results folder is replaced only once the new one is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from brainlm.data.atomic import publish_directory, write_parquet_atomic, write_text_atomic
from brainlm.errors import BrainLMInputError


def check_results_folder(out: str | Path | None, overwrite: bool) -> Path | None:
    """``out`` as a Path; an error, before any work is done, if it exists and not ``overwrite``."""
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
    """Write ``files`` (name -> text, or a DataFrame written as Parquet) into a temporary folder
    beside ``out`` and rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, content in files.items():
            if isinstance(content, pd.DataFrame):
                write_parquet_atomic(content, tmp / name)
            else:
                write_text_atomic(tmp / name, content)
        # Temporary files and folders are private (0600/0700); results are for everyone the
        # umask allows, like any other file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        publish_directory(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
