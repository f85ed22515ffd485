"""Embeddings over a data bank: a corpus' embeddings as a sharded, resumable Parquet dataset.

``brainlm embed CHECKPOINT CORPUS --out embeddings/`` (an ``--out`` that does not end in
``.parquet``) writes a folder::

    embeddings/
      .brainlm-output.json   brainlm's output marker (``"what": "embeddings"``)
      _embeddings.json       the manifest: checkpoint and corpus identity, settings, shard layout;
                             once every shard is written, ``"complete": true`` and the shards
                             with their rows and first and last recording
      part-00000.parquet     shard 0: the rows of recordings 0 .. S - 1
      part-00001.parquet     shard 1: recordings S .. 2 S - 1, and so on

The rows are those of the one-file form (:func:`brainlm.tasks.embed.embed`), split by recording:
the corpus' recordings that hold at least one window (shorter ones are left out in both forms),
in manifest order, cut into shards of ``shard_size`` recordings. Readers see the folder as one
table (:func:`brainlm.tasks.embed.read_embeddings`, or ``pd.read_parquet(folder)``: the
manifest and the temporary files start with "_" or ".", which Parquet readers skip).

* **Resumable.** Each shard is written under a temporary name and renamed: a shard file that
  exists is complete. The same command run again keeps the shards that exist and computes the
  others; a different checkpoint, corpus or setting is refused, naming what differs.
* **Split across processes.** ``shard=(K, N)`` (``--shard K/N``) computes the shards i with
  i % N == K; N processes (a SLURM array) write into one folder, each only its own shard
  files. Whoever finds every shard written completes the manifest; a last run without
  ``--shard`` computes whatever is missing and completes it. ``jobs`` (``--jobs``) computes a
  process' shards on that many joblib worker processes, each loading the model once.
* **Flat memory.** Recordings are read one at a time from the corpus store; a shard's rows are
  the only embeddings held in memory.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from joblib import Parallel, delayed

from brainlm.data.atomic import (OUTPUT_MARKER, check_not_an_input, check_output_folder, output_kind,
                                 process_umask, write_json, write_output_marker, write_parquet_atomic)
from brainlm.data.corpus import Corpus
from brainlm.data.progress import ProgressBar
from brainlm.errors import BrainLMInputError
from brainlm.validation import positive_int
from brainlm.model.precision import PRECISIONS, resolve_precision
from brainlm.checkpoints.shipped import resolve_checkpoint
from brainlm.tasks.embed import (DATASET_FORMAT, DATASET_MANIFEST, corpus_phenotypes, embedding_rows,
                                 read_dataset_manifest, shard_file_name)
from brainlm.tasks.inference import embed_windows
from brainlm.tasks.model_input import (is_model, iter_model_input, load_model, model_scaler, model_windows,
                                       open_corpus, parcel_xyz)
from brainlm.version import __version__

__all__ = ["DEFAULT_SHARD_SIZE", "DatasetRun", "DatasetSettings", "ShardProgress", "checkpoint_identity",
           "compute_shard", "embed_dataset", "parse_shard"]

#: Recordings per shard when not given: small enough that a kill loses little work, large
#: enough that a UK Biobank corpus (40,000 recordings) is a few hundred files.
DEFAULT_SHARD_SIZE = 100
#: ``what`` in the output marker of a dataset folder: ``overwrite`` replaces only such folders.
DATASET_WHAT = "embeddings"
MANIFEST_VERSION = 1
#: Checkpoint files whose bytes identify what the model computes (config.json records the
#: weights' sha256, which loading verifies).
_IDENTITY_FILES = ("config.json", "contract.json", "atlas.json", "digests.json")


@dataclass(frozen=True)
class DatasetSettings:
    """What decides the rows of an embeddings dataset besides the checkpoint and the corpus; a
    resumed run must have the same.

    Attributes
    ----------
    per_window : bool
        One row per window instead of per recording.
    transfer_atlas : bool
        Data on another atlas than the checkpoint's, through parcel coordinates.
    batch_size : int
        Windows per forward pass.
    shard_size : int
        Recordings per shard.
    precision : str
        The encoder's forward passes (``32-true``, ``bf16-mixed``; ``auto`` is resolved on the
        machine that starts the dataset, and the resolved value is recorded, so that processes on
        other machines compute their shards alike or are refused).
    """

    per_window: bool = False
    transfer_atlas: bool = False
    batch_size: int = 32
    shard_size: int = DEFAULT_SHARD_SIZE
    precision: str = "32-true"

    def check(self) -> None:
        """An error naming the first setting that is not a positive whole number, or an unknown
        precision."""
        if self.precision not in PRECISIONS:
            raise BrainLMInputError(f"precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        for name in ("batch_size", "shard_size"):
            positive_int(getattr(self, name), name, numpy_integers=True)


@dataclass
class DatasetRun:
    """What one :func:`embed_dataset` call did.

    Attributes
    ----------
    out : Path
        The dataset folder.
    shards : int
        Shards of the whole dataset.
    found : int
        Shards of this process (``shard``) already written when it started (kept as they were).
    computed : int
        Shards this call computed and wrote.
    recordings, windows : int
        Recordings and windows embedded by this call.
    seconds : float
        Wall-clock time of the computing, s.
    complete : bool
        Whether every shard is written and the manifest says so (the dataset can be read).
    rows : int or None
        Rows of the whole dataset, once complete.
    missing : list of int
        Shards not written yet (other processes' share, while they run).
    """

    out: Path
    shards: int
    found: int = 0
    computed: int = 0
    recordings: int = 0
    windows: int = 0
    seconds: float = 0.0
    complete: bool = False
    rows: int | None = None
    missing: list[int] = field(default_factory=list)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N: this process computes the shards i with i % N == K."""
    parts = str(text).split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        k = n = -1
    if len(parts) != 2 or n < 1 or not 0 <= k < n:
        raise BrainLMInputError(f"--shard {text!r}; expected K/N with 0 <= K < N (e.g. 0/4 ... 3/4 for "
                                "four processes)")
    return k, n


def checkpoint_identity(checkpoint) -> str:
    """sha256 (hex) of the checkpoint's config, contract, atlas and digests files: which
    weights (config.json holds their sha256), scaled how, on which atlas."""
    folder = resolve_checkpoint(checkpoint)
    h = sha256()
    for name in _IDENTITY_FILES:
        path = folder / name
        if path.is_file():
            data = path.read_bytes()
            h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def embed_dataset(checkpoint: str | Path, corpus: str | Path | Corpus, out: str | Path, *,
                  settings: DatasetSettings = DatasetSettings(), shard: tuple[int, int] = (0, 1),
                  jobs: int = 1, device: str = "cpu", overwrite: bool = False,
                  progress: bool = False) -> DatasetRun:
    """Write (or resume, or add one process' share to) the embeddings dataset of ``corpus``.

    Parameters
    ----------
    checkpoint : path
        A checkpoint folder or a shipped model's name (a loaded model cannot be identified for
        resuming, nor sent to worker processes).
    corpus : path or Corpus
        A prepared corpus (its cleaning must match the checkpoint's, as for every task).
    out : path
        The dataset folder (see the module docstring): new, empty, or an unfinished dataset of
        the same checkpoint, corpus and settings (resumed). A complete one, or anything else,
        only with ``overwrite``, which replaces only a folder brainlm wrote as embeddings.
    shard : (K, N)
        Compute the shards i with i % N == K only.
    jobs : int
        Worker processes (joblib); each loads the model once and uses ``cores / jobs`` threads.
    progress : bool
        A progress bar on a terminal; elsewhere one line every few shards with the rate and the
        time left.

    Returns
    -------
    DatasetRun
    """
    settings.check()
    k, n = parse_shard(f"{shard[0]}/{shard[1]}")
    positive_int(jobs, "jobs", numpy_integers=True)
    if overwrite and n > 1:
        raise BrainLMInputError("--overwrite with --shard would let each process delete the others' "
                                "shards; remove the old folder first, then start the processes", str(out))
    if is_model(checkpoint):
        raise BrainLMInputError("a dataset folder needs a checkpoint folder (or a shipped model's name), "
                                "not a loaded model: its identity is recorded so that a resumed run "
                                "uses the same one")
    out = Path(out)
    ckpt_folder = resolve_checkpoint(checkpoint)
    _precheck_folder(out, overwrite, sources=[ckpt_folder, corpus.path if isinstance(corpus, Corpus) else corpus])
    # Loaded here once: a checkpoint that does not load, or a corpus cleaned otherwise, is an
    # error before the folder is made.
    model = load_model(ckpt_folder, device)
    settings = replace(settings, precision=resolve_precision(settings.precision, device,
                                                             getattr(model.config, "dim", None)))
    data = open_corpus(corpus)
    scaler = model_scaler(model, data, transfer_atlas=settings.transfer_atlas)
    plan = _plan(ckpt_folder, data, settings, model.config.window_trs)
    manifest = _open_folder(out, plan.manifest, overwrite)
    mine = [i for i in range(len(plan.shards)) if i % n == k]
    todo = [i for i in mine if not (out / shard_file_name(i)).is_file()]
    run = DatasetRun(out=out, shards=len(plan.shards), found=len(mine) - len(todo))
    job = _ShardJob(checkpoint=str(ckpt_folder), corpus=str(data.path), out=str(out), device=device,
                    settings=settings, dtypes=plan.dtypes)
    if todo:
        if jobs == 1:
            # In this process: the model and scaler already loaded serve every shard.
            _WORKER_STATE.clear()
            _WORKER_STATE[job.key()] = (model, scaler)
        else:
            del model, scaler
        _compute(job, {i: plan.shards[i] for i in todo}, jobs, run, progress)
    _WORKER_STATE.clear()
    done = _complete(out, manifest, plan)
    run.complete = done is not None
    run.rows = None if done is None else done["rows"]
    run.missing = [i for i in range(len(plan.shards)) if not (out / shard_file_name(i)).is_file()]
    return run


# --- the plan: layout and manifest -------------------------------------------------------------

@dataclass
class _Plan:
    shards: list[np.ndarray]        # manifest rows of each shard
    manifest: dict                  # the manifest of a new dataset
    recording_ids: np.ndarray       # recording_id of every manifest row
    dtypes: dict                    # column -> pandas dtype of the id and phenotype columns


def _plan(ckpt_folder: Path, corpus: Corpus, settings: DatasetSettings, window_trs: int) -> _Plan:
    """Shard layout, manifest and column types of the dataset; an error when no recording of
    the corpus holds one window."""
    m = corpus.manifest
    rows = np.flatnonzero(m["n_trs"].to_numpy() >= window_trs)
    if rows.size == 0:
        raise BrainLMInputError(f"no recording of the corpus holds one window of {window_trs} TRs "
                                f"(longest {int(m['n_trs'].max())} TRs); nothing to embed", corpus.path)
    size = int(settings.shard_size)
    shards = [rows[i:i + size] for i in range(0, rows.size, size)]
    manifest = {
        "format": DATASET_FORMAT, "version": MANIFEST_VERSION, "brainlm_version": __version__,
        "checkpoint": {"path": str(ckpt_folder), "sha256": checkpoint_identity(ckpt_folder)},
        "corpus": {"path": corpus.path, "identity": corpus.identity(), "recordings": int(len(m))},
        "settings": {k: v for k, v in asdict(settings).items() if k != "shard_size"},
        "layout": {"shard_size": size, "shards": len(shards), "recordings": int(rows.size),
                   "window_trs": int(window_trs), "too_short": int(len(m) - rows.size),
                   "order": "corpus manifest order", "files": shard_file_name(0).replace("00000", "NNNNN")},
        "complete": False,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return _Plan(shards, manifest, m["recording_id"].to_numpy(), _column_dtypes(corpus, rows))


def _recording_ids(m: pd.DataFrame, i: int) -> dict:
    """The id columns of manifest row ``i``, as the one-file form gives every corpus row."""
    r = m.iloc[int(i)]
    return {"recording_id": r["recording_id"], "subject": r["subject"], "session": r["session"],
            "task": r["task"], "run": r["run"], "site": r["site"], "split": r["split"]}


def _column_dtypes(corpus: Corpus, rows: np.ndarray) -> dict:
    """The dtypes that the id and phenotype columns take in a table of all ``rows`` (what the
    one-file form writes); every shard is cast to them, so that shards with, say, only missing
    values in a column still share one schema."""
    m = corpus.manifest
    phenotypes = corpus_phenotypes(corpus, rows)
    frame = pd.DataFrame([{**(ids := _recording_ids(m, i)), **phenotypes.get(ids["recording_id"], {})}
                          for i in rows])
    return dict(frame.dtypes)


_IDENTITY_KEYS = {"checkpoint": "sha256", "corpus": "identity"}


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between a dataset's manifest and this run's, in words (empty: the same)."""
    out = []
    for what, key in _IDENTITY_KEYS.items():
        a, b = old.get(what, {}).get(key), new[what][key]
        if a != b:
            out.append(f"the {what} ({key} {str(a)[:12]} of {old.get(what, {}).get('path')} vs "
                       f"{b[:12]} of {new[what]['path']})")
    old_settings = {**old.get("settings", {}), "shard_size": old.get("layout", {}).get("shard_size")}
    new_settings = {**new["settings"], "shard_size": new["layout"]["shard_size"]}
    for name in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(name) != new_settings.get(name):
            out.append(f"{name}: {old_settings.get(name)!r} -> {new_settings.get(name)!r}")
    return out


# --- the folder: new, resumed or replaced -------------------------------------------------------

def _precheck_folder(out: Path, overwrite: bool, sources) -> None:
    """The checks that need no model: ``out`` is no input; an existing file, a folder brainlm
    did not write as embeddings, or a complete dataset need ``overwrite``, and ``overwrite``
    replaces only embeddings."""
    check_not_an_input(out, sources)
    if not out.exists() and not out.is_symlink():
        check_output_folder(out, sources=sources)  # the nearest existing folder must be writable
        return
    if out.is_symlink() or not out.is_dir():
        raise BrainLMInputError("--out exists and is not a folder; an --out without .parquet is a "
                                "dataset folder (use NAME.parquet for one file)", str(out))
    has_manifest = (out / DATASET_MANIFEST).is_file()
    if overwrite:
        if any(out.iterdir()) and output_kind(out) != DATASET_WHAT:
            raise BrainLMInputError(f"--overwrite replaces only embeddings that brainlm wrote (a folder "
                                    f"whose {OUTPUT_MARKER} says {DATASET_WHAT!r}); this folder is kept: "
                                    "choose another --out, or remove it yourself", str(out))
        return
    if has_manifest:
        if read_dataset_manifest(out).get("complete"):
            raise BrainLMInputError("the embeddings dataset here is complete; pass --overwrite to "
                                    "compute it again, or choose another --out", str(out))
        return  # an unfinished dataset: resumed if this run is the same (checked later)
    if any(out.iterdir()):
        raise BrainLMInputError("--out is a folder that holds no embeddings dataset; pass a new or "
                                "empty folder (or NAME.parquet for one file)", str(out))


def _open_folder(out: Path, manifest: dict, overwrite: bool) -> dict:
    """The manifest in force in ``out``: ``manifest`` in a new (or replaced) folder, or that of
    the unfinished dataset found there, which must not differ from it."""
    if overwrite and out.exists():
        _remove_folder(out)
    for _ in range(3):
        if (out / DATASET_MANIFEST).is_file():
            found = read_dataset_manifest(out)
            differs = _differences(found, manifest)
            if differs:
                raise BrainLMInputError(
                    "cannot resume the embeddings dataset here: " + "; ".join(differs) + ". Pass "
                    "--overwrite to compute it again with this run's settings, or choose another --out",
                    str(out))
            if found.get("complete"):
                raise BrainLMInputError("the embeddings dataset here is complete; pass --overwrite to "
                                        "compute it again, or choose another --out", str(out))
            return found
        if _publish_new_folder(out, manifest):
            return manifest
    raise BrainLMInputError("another process keeps replacing this folder; run one command per "
                            "dataset folder", str(out))


def _publish_new_folder(out: Path, manifest: dict) -> bool:
    """Make ``out`` with the marker and ``manifest``, built privately and renamed into place
    whole (so that processes starting together see no folder, or one with its manifest). False
    when another process made it first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))
    try:
        write_json(build / DATASET_MANIFEST, manifest)
        write_output_marker(build, DATASET_WHAT)
        build.chmod(0o777 & ~process_umask())
        try:
            # Replaces an empty folder; fails on one that holds anything, such as the new
            # dataset of another process started at the same time.
            os.rename(build, out)
        except OSError as e:
            if (out / DATASET_MANIFEST).is_file():
                return False
            raise BrainLMInputError(f"cannot create the dataset folder ({e.strerror})", str(out)) from None
        return True
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _remove_folder(out: Path) -> None:
    """Delete a dataset folder (``overwrite``): renamed aside first, so that a half-deleted
    folder is never mistaken for a dataset."""
    aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    os.replace(out, aside)
    shutil.rmtree(aside, ignore_errors=True)


# --- computing shards -------------------------------------------------------------------------

@dataclass(frozen=True)
class _ShardJob:
    """What a worker process needs to compute any shard (paths and settings only: workers load
    the model themselves)."""

    checkpoint: str
    corpus: str
    out: str
    device: str
    settings: DatasetSettings
    dtypes: dict

    def key(self) -> tuple:
        return (self.checkpoint, self.corpus, self.device, self.settings.transfer_atlas)


#: The model and scaler of the current job in this process (a worker keeps them between shards,
#: so each worker loads the model once).
_WORKER_STATE: dict = {}


def _state(job: _ShardJob, corpus: Corpus):
    state = _WORKER_STATE.get(job.key())
    if state is None:
        _WORKER_STATE.clear()
        model = load_model(job.checkpoint, job.device)
        state = (model, model_scaler(model, corpus, transfer_atlas=job.settings.transfer_atlas))
        _WORKER_STATE[job.key()] = state
    return state


def compute_shard(job: _ShardJob, index: int, rows: np.ndarray, threads: int | None = None) -> tuple[int, int, int]:
    """Embed the recordings ``rows`` (manifest rows) and write them as shard ``index``.

    Returns (index, recordings, windows). Runs in a worker process or in the caller's.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    # The corpus is opened for each shard: an open corpus keeps a handle (about 90 kB) for
    # every recording it read, which over a data bank would grow by hundreds of MB.
    corpus = open_corpus(job.corpus)
    model, scaler = _state(job, corpus)
    xyz = parcel_xyz(corpus.atlas)
    phenotypes = corpus_phenotypes(corpus, rows)
    per_window = job.settings.per_window
    out_rows, n_windows = [], 0
    for i, scaled in zip(rows, iter_model_input(corpus, rows, scaler)):
        ids = _recording_ids(corpus.manifest, i)
        windows, starts = model_windows(model, scaled, source=f"{corpus.path} ({ids['recording_id']})")
        ids.update(phenotypes.get(ids["recording_id"], {}))
        cls, mean = embed_windows(model, windows, xyz, job.settings.batch_size, job.settings.precision)
        recording, window_rows = embedding_rows(ids, starts, cls, mean, windows=per_window)
        out_rows.extend(window_rows if per_window else [recording])
        n_windows += len(starts)
    frame = pd.DataFrame(out_rows)
    for column, dtype in job.dtypes.items():
        if frame[column].dtype != dtype:
            frame[column] = frame[column].astype(dtype)
    _write_shard(Path(job.out) / shard_file_name(index), frame)
    return index, len(rows), n_windows


def _write_shard(path: Path, frame: pd.DataFrame) -> None:
    """Write one shard under a temporary name and rename it. If the temporary file vanished
    because another process finished the dataset (and cleared temporary files) while this one
    wrote the same shard, that shard is already there, which is as good."""
    try:
        write_parquet_atomic(frame, path)
    except FileNotFoundError:
        if not path.is_file():
            raise


def _compute(job: _ShardJob, todo: dict[int, np.ndarray], jobs: int, run: DatasetRun, progress: bool) -> None:
    """Compute the shards ``todo`` ({index: manifest rows}) here or on ``jobs`` joblib workers,
    reporting progress; adds to ``run``'s counts."""
    t0 = time.perf_counter()
    with ShardProgress(progress, len(todo), run.shards) as report:
        if jobs == 1:
            results = (compute_shard(job, i, rows) for i, rows in todo.items())
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
                delayed(compute_shard)(job, i, rows, threads) for i, rows in todo.items())
        for _, recordings, windows in results:
            run.computed += 1
            run.recordings += recordings
            run.windows += windows
            report(recordings, windows)
    run.seconds = time.perf_counter() - t0


class ShardProgress:
    """Progress over the shards a run computes.

    On a terminal, the progress bar of :mod:`brainlm.data.progress`; elsewhere (a log file, a
    cluster job) one line every few shards (about 20 lines a run, and at least one every
    minute) with shards done, the rate in recordings and windows per second and the time left.
    ``with ShardProgress(True, todo, total) as report:`` gives ``report(recordings, windows)``
    to call once per finished shard.
    """

    def __init__(self, enabled: bool, todo: int, total: int, stream=None):
        self.enabled, self.todo, self.total = enabled, todo, total
        self.stream = stream or sys.stdout
        self._bar: ProgressBar | None = None

    def __enter__(self):
        self._t0 = self._last = time.perf_counter()
        self._done = self._recordings = self._windows = 0
        self._every = max(1, math.ceil(self.todo / 20))
        if self.enabled and self.stream.isatty():
            self._bar = ProgressBar(True, "embedding shards", self.todo)
            advance = self._bar.__enter__()
            return lambda recordings, windows: advance()
        if self.enabled:
            print(f"embedding {self.todo} of {self.total} shards", file=self.stream, flush=True)
        return self._line

    def _line(self, recordings: int, windows: int) -> None:
        self._done += 1
        self._recordings += recordings
        self._windows += windows
        now = time.perf_counter()
        if not self.enabled or (self._done % self._every and self._done < self.todo and now - self._last < 60):
            return
        self._last = now
        elapsed = now - self._t0
        left = elapsed / self._done * (self.todo - self._done)
        print(f"shards {self._done}/{self.todo} · {self._recordings} recordings, {self._windows} windows · "
              f"{self._windows / elapsed:.1f} windows/s · {elapsed / 60:.1f} min elapsed, "
              f"~{left / 60:.1f} min left", file=self.stream, flush=True)

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


# --- completing -------------------------------------------------------------------------------

def _complete(out: Path, manifest: dict, plan: _Plan) -> dict | None:
    """The completed manifest, written when every shard is there (by whichever process finds
    them all; they all write the same record); None while shards are missing."""
    files = [out / shard_file_name(i) for i in range(len(plan.shards))]
    if not all(f.is_file() for f in files):
        return None
    shards = []
    for f, rows in zip(files, plan.shards):
        shards.append({"file": f.name, "rows": int(pq.ParquetFile(f).metadata.num_rows),
                       "recordings": int(rows.size), "first_recording": str(plan.recording_ids[rows[0]]),
                       "last_recording": str(plan.recording_ids[rows[-1]])})
    done = {**manifest, "complete": True, "rows": sum(s["rows"] for s in shards), "shards_done": shards}
    current = read_dataset_manifest(out)
    if current.get("complete"):
        return current
    write_json(out / DATASET_MANIFEST, done)
    # Temporary shard files that a killed run left behind (hidden, so never read as shards).
    for stale in out.glob(".part-*.tmp"):
        stale.unlink(missing_ok=True)
    return done

