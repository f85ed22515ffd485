"""Writes that never leave a half-written file: write to a temporary name, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside ``path`` to write to; renamed to ``path`` when the block ends
    without an error, deleted otherwise. Readers see the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet_atomic(df: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame as Parquet, atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_npz_atomic(path: str | Path, **arrays) -> None:
    """Write arrays as a compressed ``.npz``, atomically (``np.load(path)`` reads them back)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, not a name: numpy would append ".npz" to the temporary name.
        np.savez_compressed(f, **arrays)


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
