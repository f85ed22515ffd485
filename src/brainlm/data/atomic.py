"""Writes that never leave a half-written file or folder: write to a temporary name, then rename.

* :func:`atomic_path` and the ``write_*_atomic`` functions: one file;
* :func:`atomic_directory`: a folder published whole (results, checkpoints, corpora);
* :func:`to_json` / :func:`write_json`: the one JSON encoding (numpy scalars and arrays, paths;
  NaN and infinities become ``null``, never the invalid ``NaN`` token).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.errors import BrainLMInputError


def _umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


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
        # mkstemp files are private (0600); the result gets the permissions the umask gives any
        # other file the user writes.
        tmp.chmod(0o666 & ~_umask())
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


@contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False, suffix: str = "") -> Iterator[Path]:
    """A private temporary folder beside ``target`` to build in; published as ``target`` in one
    rename when the block ends without an error, deleted otherwise.

    An existing ``target`` is an error naming it (before any work) unless ``overwrite``, and
    then it is replaced only once the new folder is complete, so readers see the old folder or
    the whole new one. The published folder gets the permissions the umask allows (temporary
    folders are private), like any other folder the user creates; so do files written in it
    with :func:`atomic_path`.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise BrainLMInputError("output folder exists; pass overwrite=True (--overwrite) to replace it",
                                str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    try:
        yield build
        build.chmod(0o777 & ~_umask())
        publish_directory(build, target)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _plain(value):
    """``value`` with numpy types, paths and non-finite floats made JSON-safe (recursively)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(value, indent: int | None = 2) -> str:
    """The JSON text of ``value``: numpy scalars and arrays become numbers and lists, paths
    strings, NaN and infinities ``null``; anything else not serialisable is a TypeError."""
    return json.dumps(_plain(value), indent=indent, allow_nan=False)


def write_json(path: str | Path, value, indent: int | None = 2) -> None:
    """Write :func:`to_json` of ``value`` to ``path`` atomically."""
    write_text_atomic(path, to_json(value, indent))
