"""Writes that never leave a half-written file: write to a temporary name, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd


def _tmp_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path``; readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = _tmp_beside(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(df: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame as Parquet, atomically."""
    path = Path(path)
    tmp = _tmp_beside(path)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish_directory(finished: str | Path, target: str | Path) -> None:
    """Rename a fully written folder to ``target``; an existing ``target`` is replaced only now,
    so readers see the old folder or the whole new one."""
    finished, target = Path(finished), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.replace(target, old)
        os.replace(finished, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(finished, target)
