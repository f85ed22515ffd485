"""``brainlm embed CHECKPOINT DATA --out embeddings.parquet``.

DATA is a prepared corpus (its cleaned recordings are scaled with the checkpoint's contract,
which must have the same cleaning settings) or time-series files/folders (read and preprocessed
with the checkpoint's contract). Output: one row per recording (or per window), with ids, the
phenotypes (a corpus' manifest columns, or a Recording's own), and the CLS (``cls_0000`` ...)
and mean-pooled (``mean_0000`` ...) embeddings as float32 columns.

The same rows over a whole data bank, written as a sharded, resumable Parquet dataset folder,
are :mod:`brainlm.tasks.embed_bank`'s; :func:`read_embeddings` reads either form back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from brainlm.data.atomic import write_parquet_atomic
from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError
from brainlm.model.precision import resolve_precision
from brainlm.tasks.inference import embed_windows
from brainlm.tasks.model_input import is_corpus, load_model, open_corpus, recording_windows

#: Prefixes of the embedding columns; every other column is an id or a phenotype.
EMBEDDING_PREFIXES = ("cls_", "mean_")
#: Id columns of every row (a corpus adds ``split``).
ID_COLUMNS = ("recording_id", "subject", "session", "task", "run", "site")
#: The manifest of a sharded embeddings dataset folder (:mod:`brainlm.tasks.embed_bank`). Its
#: name starts with "_" so that Parquet readers of the folder (``pd.read_parquet(folder)``)
#: skip it, as they skip the hidden temporary files of shards being written.
DATASET_MANIFEST = "_embeddings.json"
#: ``format`` of :data:`DATASET_MANIFEST`.
DATASET_FORMAT = "brainlm-embeddings"


@dataclass
class Embeddings:
    """Embeddings of every recording and of every window, from one pass over the data.

    Attributes
    ----------
    recordings : DataFrame
        One row per recording: ids, phenotypes, ``n_windows``, ``cls_*`` and ``mean_*`` (D
        each, float32; a recording's embedding is the mean over its windows).
    windows : DataFrame
        One row per window: ids, phenotypes, ``start_tr`` (first TR of the window),
        ``cls_*`` and ``mean_*``.
    fc : ndarray (n_recordings, P (P - 1) / 2) float32, or None
        Fisher-z functional connectivity of each recording's model input (its windows end to
        end), rows in the order of ``recordings``; only when asked for (``fc=True``).
    """

    recordings: pd.DataFrame
    windows: pd.DataFrame
    fc: np.ndarray | None = None


def embed(checkpoint: str | Path, data: list[str | Path], out: str | Path | None = None, *,
          per_window: bool = False, tr: float | None = None, orientation: str = "auto",
          key: str | None = None, transfer_atlas: bool = False, batch_size: int = 32,
          device: str = "cpu", precision: str = "32-true") -> pd.DataFrame:
    """Embeddings of every recording in ``data``; written to ``out`` (Parquet) when given.
    ``precision``: the encoder's forward passes (:func:`~brainlm.tasks.inference.embed_windows`)."""
    emb = embed_all(checkpoint, data, tr=tr, orientation=orientation, key=key,
                    transfer_atlas=transfer_atlas, batch_size=batch_size, device=device, windows=per_window,
                    precision=precision)
    df = emb.windows if per_window else emb.recordings
    if out is not None:
        write_parquet_atomic(df, out)
    return df


def embed_all(checkpoint, data, *, tr: float | None = None, orientation: str = "auto",
              key: str | None = None, transfer_atlas: bool = False, batch_size: int = 32,
              device: str = "cpu", fc: bool = False, windows: bool = True,
              precision: str = "32-true") -> Embeddings:
    """Recording and (with ``windows``; else an empty table) window embeddings of ``data`` (as
    :func:`embed` reads it) and, with ``fc``, the Fisher-z FC of the same model-input signal
    (:func:`fisher_z_fc`)."""
    resolve_precision(precision, device)  # refused before the model is loaded
    model = load_model(checkpoint, device)
    precision = resolve_precision(precision, device, getattr(model.config, "dim", None))
    phenotypes = _corpus_phenotypes(data)
    recordings, window_rows, connectivity = [], [], []
    for ids, wins, starts, xyz in recording_windows(model, data, tr=tr, orientation=orientation,
                                                    key=key, transfer_atlas=transfer_atlas):
        ids = {**ids, **phenotypes.get(ids["recording_id"], {})}
        cls, mean = embed_windows(model, wins, xyz, batch_size, precision)
        recording, per_window = embedding_rows(ids, starts, cls, mean, windows=windows)
        recordings.append(recording)
        window_rows.extend(per_window)
        if fc:
            x = wins.numpy()
            connectivity.append(fisher_z_fc(x.reshape(-1, x.shape[2])))
    fc_array = None
    if fc:
        fc_array = np.stack(connectivity) if connectivity else np.zeros((0, 0), np.float32)
    return Embeddings(pd.DataFrame(recordings), pd.DataFrame(window_rows), fc_array)


def embedding_rows(ids: dict, starts: np.ndarray, cls: torch.Tensor, mean: torch.Tensor, *,
                   windows: bool = True) -> tuple[dict, list[dict]]:
    """The output rows of one recording: (its recording row, its window rows).

    ids: the recording's id and phenotype columns; starts: (W,) first TR of each window;
    cls, mean: (W, D) float32 window embeddings. The recording row holds ``n_windows`` and the
    mean over windows; each window row ``start_tr`` and that window's embeddings. Without
    ``windows`` the window rows are not made ([]).

    Raises
    ------
    BrainLMInputError
        An embedding holds NaN or infinite values (no row of them is ever written).
    """
    if not (bool(torch.isfinite(cls).all()) and bool(torch.isfinite(mean).all())):
        raise BrainLMInputError("the model's embeddings of this recording hold NaN or infinite values; "
                                "nothing is written (check the recording's values and the checkpoint)",
                                str(ids.get("recording_id")))
    per_window = [{**ids, "start_tr": int(s), **_columns(cls[k], mean[k])}
                  for k, s in enumerate(starts if windows else ())]
    return {**ids, "n_windows": len(starts), **_columns(cls.mean(0), mean.mean(0))}, per_window


def read_embeddings(path: str | Path) -> pd.DataFrame:
    """The embeddings that ``brainlm embed`` wrote to ``path``, as one DataFrame.

    ``path`` is a Parquet file (``--out NAME.parquet``) or a complete sharded dataset folder
    (:mod:`brainlm.tasks.embed_bank`; its shards in order, so the rows are the corpus' manifest
    order, as in the one-file form). An unfinished folder is refused, with the way to finish it.
    """
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise BrainLMInputError("no embeddings here (neither a Parquet file nor a dataset folder)",
                                    str(path))
        return pd.read_parquet(path)
    manifest = read_dataset_manifest(path)
    if not manifest.get("complete"):
        layout = manifest["layout"]
        done = sum((path / shard_file_name(i)).is_file() for i in range(layout["shards"]))
        raise BrainLMInputError(
            f"unfinished embeddings dataset ({done} of {layout['shards']} shards written); run the "
            "same `brainlm embed` command again without --shard to compute the missing shards and "
            "finish it", str(path))
    files = [path / shard["file"] for shard in manifest["shards_done"]]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BrainLMInputError(f"embeddings dataset lacks shard {missing[0]} that its manifest "
                                "lists as written; compute it again with --overwrite", str(path))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()


def shard_file_name(index: int) -> str:
    """The file name of shard ``index`` (0-based) of a dataset folder: ``part-00000.parquet``."""
    return f"part-{index:05d}.parquet"


def read_dataset_manifest(folder: str | Path) -> dict:
    """The manifest (:data:`DATASET_MANIFEST`) of an embeddings dataset folder; an error naming
    it when missing, unreadable or not an embeddings manifest."""
    path = Path(folder) / DATASET_MANIFEST
    if not path.is_file():
        raise BrainLMInputError(f"not a brainlm embeddings dataset folder (no {DATASET_MANIFEST})",
                                str(folder))
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BrainLMInputError(f"cannot read the dataset manifest ({e}); compute the dataset again "
                                "with --overwrite", str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != DATASET_FORMAT \
            or not isinstance(manifest.get("layout"), dict):
        raise BrainLMInputError(f"not an embeddings dataset manifest (expected format "
                                f"{DATASET_FORMAT!r} with a layout)", str(path))
    return manifest


def fisher_z_fc(x: np.ndarray) -> np.ndarray:
    """Upper triangle (diagonal excluded) of the Fisher-z Pearson correlation matrix.

    x: (T, P) time series -> (P (P - 1) / 2,) float32, row-major order of ``np.triu_indices``.
    A parcel with no variance (a missing parcel reads as 0) has correlation 0 with every other.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0)
    sd = np.sqrt((x ** 2).sum(0))
    z = np.divide(x, sd, out=np.zeros_like(x), where=sd > 0)
    r = z.T @ z
    # Clipped below 1 so that arctanh stays finite for (near) identical parcels.
    r = np.clip(r[np.triu_indices(x.shape[1], k=1)], -0.999999, 0.999999)
    return np.arctanh(r).astype(np.float32)


def corpus_columns(data) -> list[str] | None:
    """The id and phenotype columns that :func:`embed_all` gives the rows of ``data`` when it is
    one prepared corpus (read from its manifest, nothing embedded), else None (files and
    Recordings: known only once read)."""
    corpus = _one_corpus(data)
    if corpus is None:
        return None
    return [*ID_COLUMNS, "split", *(c for c in corpus.phenotype_columns if c in corpus.manifest)]


def _one_corpus(data) -> Corpus | None:
    """The corpus when ``data`` (a path or a list of paths and Recordings) is one prepared
    corpus, else None."""
    data = [data] if isinstance(data, (str, Path)) else list(data)
    if not data or not all(isinstance(d, (str, Path)) for d in data) or not is_corpus([Path(d) for d in data]):
        return None
    return open_corpus(data[0])


def _corpus_phenotypes(data) -> dict[str, dict]:
    """Phenotypes of a corpus' recordings by ``recording_id`` ({} for files and Recordings,
    whose ids already carry their own)."""
    corpus = _one_corpus(data)
    return {} if corpus is None else corpus_phenotypes(corpus)


def corpus_phenotypes(corpus: Corpus, rows=None) -> dict[str, dict]:
    """Phenotype columns of the corpus' recordings ``rows`` (manifest row indices; default all)
    by ``recording_id``: the values every embeddings row of that recording carries."""
    cols = [c for c in corpus.phenotype_columns if c in corpus.manifest]
    if not cols:
        return {}
    m = corpus.manifest if rows is None else corpus.manifest.iloc[np.asarray(rows, dtype=int)]
    m = m.set_index("recording_id")[cols]
    return {rid: {c: _plain(v) for c, v in row.items()} for rid, row in m.iterrows()}


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _columns(cls: torch.Tensor, mean: torch.Tensor) -> dict:
    c, m = cls.numpy().astype(np.float32), mean.numpy().astype(np.float32)
    return {**{f"cls_{i:04d}": v for i, v in enumerate(c)}, **{f"mean_{i:04d}": v for i, v in enumerate(m)}}
