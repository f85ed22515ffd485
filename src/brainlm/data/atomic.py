"""Writes that never leave a half-written file or folder: write to a temporary name, then rename.

* :func:`atomic_path` and the ``write_*_atomic`` functions: one file;
* :func:`atomic_directory`: a folder published whole (results, checkpoints, corpora), with the
  marker file :data:`OUTPUT_MARKER` that says brainlm wrote it;
* :func:`check_output_folder`: the one rule for when an output folder may be written or replaced
  (every command that publishes a folder checks it before any work, and again when publishing);
* :func:`to_json` / :func:`write_json`: the one JSON encoding (numpy scalars and arrays, paths;
  NaN and infinities become ``null``, never the invalid ``NaN`` token).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.errors import BrainLMInputError
from brainlm.version import __version__

#: The file every folder brainlm publishes carries. A replace option (``--overwrite``) replaces
#: only a folder that has it, so a user's own folder (a paper, a thesis, the source data) is
#: never deleted by pointing ``--out`` at it.
OUTPUT_MARKER = ".brainlm-output.json"


def process_umask() -> int:
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
        tmp.chmod(0o666 & ~process_umask())
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


def _overlap(out: Path, source: Path) -> str | None:
    """How the resolved ``out`` and ``source`` overlap ("is", "contains", "is inside"), or None."""
    if out == source:
        return "is"
    if out in source.parents:
        return "contains"
    if source in out.parents:
        return "is inside"
    return None


def write_output_marker(folder: str | Path, what: str = "output") -> None:
    """Write :data:`OUTPUT_MARKER` into ``folder``: what wrote it, with which version and when."""
    write_json(Path(folder) / OUTPUT_MARKER, {
        "written_by": "brainlm", "brainlm_version": __version__, "what": what,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def output_kind(folder: str | Path) -> str | None:
    """What brainlm wrote in ``folder`` (its output marker's ``what``: "corpus", "pretraining
    run", "checkpoint", "results" ...), or None when it has no readable marker."""
    try:
        marker = json.loads((Path(folder) / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker.get("what") if isinstance(marker, dict) and isinstance(marker.get("what"), str) else None


def check_not_an_input(target: str | Path, sources: Iterable, what: str = "output folder") -> Path:
    """``target`` as a Path; an error if it is, contains or lies inside one of ``sources``
    (paths a command reads; other items, such as in-memory recordings, are ignored). ``what``
    names the output in the message ("output folder", "--out file" ...)."""
    target = Path(target)
    resolved = target.resolve()
    for source in sources:
        if not isinstance(source, (str, os.PathLike)):
            continue
        how = _overlap(resolved, Path(source).resolve())
        if how:
            raise BrainLMInputError(f"the {what} {how} the input {source}; choose an output "
                                    "outside the inputs", str(target))
    return target


def check_output_folder(target: str | Path, *, overwrite: bool = False, sources: Iterable = (),
                        flag: str = "--overwrite", kind: str | None = None) -> Path:
    """``target`` as a Path if brainlm may publish a folder there; else an error naming it.

    * ``target`` must not be, contain or lie inside any of ``sources`` (paths the command reads;
      other items, such as in-memory recordings, are ignored), with or without ``overwrite``;
    * an existing ``target`` is refused unless ``overwrite`` (the message names ``flag``), and
      even then it is replaced only if it is an empty folder or one brainlm wrote (it carries
      :data:`OUTPUT_MARKER`) and, when ``kind`` is given, one of that kind (a corpus is not
      replaced by a run, nor a run by a corpus);
    * the nearest existing ancestor must be a folder the user may write to.
    """
    target = check_not_an_input(target, sources)
    resolved = target.resolve()
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise BrainLMInputError(f"output folder exists; pass {flag} to replace it", str(target))
        if target.is_symlink() or not target.is_dir():
            raise BrainLMInputError("output path exists and is not a folder; remove it or choose "
                                    "another", str(target))
        if any(target.iterdir()) and not (target / OUTPUT_MARKER).is_file():
            raise BrainLMInputError(f"{flag} replaces only a folder that brainlm wrote (it has "
                                    f"{OUTPUT_MARKER}); this one does not, so it is kept: choose "
                                    "another folder, or remove it yourself", str(target))
        found = output_kind(target)
        if kind is not None and found is not None and found != kind:
            raise BrainLMInputError(f"{flag} replaces only a {kind}; this folder holds a {found}, so it "
                                    "is kept: choose another folder", str(target))
        return target
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BrainLMInputError(f"cannot create the output folder: {ancestor} is a file, not a "
                                "folder", str(target))
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise BrainLMInputError(f"cannot create the output folder: no permission to write in "
                                f"{ancestor}", str(target))
    return target


@contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False, suffix: str = "",
                     sources: Iterable = (), flag: str = "--overwrite",
                     what: str = "output") -> Iterator[Path]:
    """A private temporary folder beside ``target`` to build in; published as ``target`` in one
    rename when the block ends without an error, deleted otherwise.

    ``target`` is checked by :func:`check_output_folder` (before any work): an existing folder is
    an error unless ``overwrite``, and is replaced only if brainlm wrote it; ``sources`` are never
    replaced. The new folder gets :data:`OUTPUT_MARKER` (``what`` says what it is), and replaces
    the old one only once complete, so readers see the old folder or the whole new one. The
    published folder gets the permissions the umask allows (temporary folders are private), like
    any other folder the user creates; so do files written in it with :func:`atomic_path`.
    """
    kind = None if what == "output" else what
    target = check_output_folder(target, overwrite=overwrite, sources=sources, flag=flag, kind=kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    try:
        yield build
        write_output_marker(build, what)
        # Checked again: the folder may have appeared (or been changed) while this one was built.
        check_output_folder(target, overwrite=overwrite, sources=sources, flag=flag, kind=kind)
        build.chmod(0o777 & ~process_umask())
        publish_directory(build, target)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _plain(value):
    """``value`` with numpy types, paths and non-finite floats made JSON-safe (recursively)."""
    if isinstance(value, Mapping):   # a dict, or a typed task result read as its JSON mapping
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
