"""The latent space: 2-D maps of the embeddings and how well they separate a column, always next
to the same numbers for functional connectivity (FC).

Given a column (a phenotype, the site, the task), this computes numbers only
(``brainlm.report.latent_figures`` draws them):

* **maps**: PCA (2 components) of the recording embeddings, of the window embeddings and of the
  recordings' FC features, each feature z-scored over the rows first so that no one dimension
  dominates; coordinates per row and the explained variance ratio of each component;
* **separability** of the column at the recording level, for BrainLM and for FC, in the same
  z-scored feature space (Euclidean distance):

  - *categorical* column (text, booleans, or integers with at most
    :data:`MAX_CATEGORICAL_LEVELS` values): the **silhouette** score (-1 to 1; 0 when the
    groups overlap as much as random labels, 1 when they are tight and far apart);
  - *continuous* column: the **nearest-neighbour Spearman** score: Spearman correlation between
    each recording's value and the mean value of its :data:`N_NEIGHBOURS` nearest recordings
    *of other subjects* (-1 to 1; 0 at chance). Neighbours are never of the same subject, so a
    subject's repeated runs cannot vouch for each other (the grouped counterpart of a
    leave-subject-out kNN regression, with nothing fitted).

  Each score comes with its chance level from :data:`N_PERMUTATIONS` permutations of the
  column (seeded): the mean and 95th percentile of the permuted scores and the one-sided
  permutation p-value. When the column is constant within each subject (a phenotype, the site),
  whole subjects' values are permuted, so a subject's runs keep sharing a value, as in the data.

FC features are the upper triangle of each recording's Fisher-z Pearson correlation matrix,
computed from the same model-input signal as the embeddings (its windows end to end;
:func:`brainlm.tasks.embed.fisher_z_fc`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.metrics import pairwise_distances, silhouette_score

from brainlm.data.atomic import write_json
from brainlm.errors import BrainLMInputError
from brainlm.tasks.embed import EMBEDDING_PREFIXES, Embeddings, embed_all
from brainlm.tasks.results import TaskResult

__all__ = ["LatentResult", "MAX_CATEGORICAL_LEVELS", "N_NEIGHBOURS", "N_PERMUTATIONS", "available_columns", "check_column",
           "check_column_name",
           "latent_paths", "latent_space", "latent_space_of", "write_latent"]

#: An integer column with at most this many distinct values is categorical (a group, a sex code).
MAX_CATEGORICAL_LEVELS = 10
#: Neighbours averaged by the continuous score.
N_NEIGHBOURS = 5
#: Permutations of the column that give each score its chance level.
N_PERMUTATIONS = 200
#: Columns of an embeddings table that are bookkeeping, not something to colour a map by.
_NOT_COLUMNS = ("n_windows", "start_tr")
KINDS = ("auto", "categorical", "continuous")
POOLINGS = ("cls", "mean")


def available_columns(df: pd.DataFrame) -> list[str]:
    """Columns of an embeddings table (``brainlm embed``) that a map can be coloured by: ids
    and phenotypes, not the embeddings or the window bookkeeping."""
    return [c for c in df.columns if not str(c).startswith(EMBEDDING_PREFIXES) and c not in _NOT_COLUMNS]


def check_column_name(column: str, names: list[str] | None, source: str | None = None) -> None:
    """An error naming the available columns when ``column`` is not among ``names`` (nothing
    checked when ``names`` is None)."""
    if names is not None and column not in names:
        raise BrainLMInputError(f"no column {column!r} to plot; available: {', '.join(map(str, names))}", source)


def check_column(df: pd.DataFrame, column: str, source: str | None = None) -> pd.Series:
    """The values of ``column`` in ``df``; an error naming the available columns when it is not
    there, and a clear error when it has fewer than two distinct values."""
    check_column_name(column, available_columns(df), source)
    values = df[column]
    present = values.dropna()
    if present.empty:
        raise BrainLMInputError(f"column {column!r} has no values (all {len(values)} missing)", source)
    distinct = present.astype(str).unique()
    if len(distinct) < 2:
        raise BrainLMInputError(f"column {column!r} has one value ({distinct[0]!r}) in all {len(present)} "
                                "recordings with a value: nothing to separate; choose another column", source)
    return values


def latent_space(embeddings: Embeddings | pd.DataFrame, column: str, *, fc: np.ndarray | None = None,
                 kind: str = "auto", pooling: str = "cls", n_neighbours: int = N_NEIGHBOURS,
                 n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                 source: str | None = None) -> LatentResult:
    """PCA maps and separability of ``column`` for BrainLM embeddings and FC features.

    Parameters
    ----------
    embeddings : Embeddings, or DataFrame
        :func:`brainlm.tasks.embed.embed_all` with ``fc=True`` (recordings, windows and FC), or
        a table as ``brainlm embed`` writes it (per recording, or per window: windows are then
        averaged per ``recording_id`` into recordings, as ``embed`` does) with ``fc`` given.
    column : str
        An id or phenotype column (:func:`available_columns`).
    fc : ndarray (n_recordings, P (P - 1) / 2), optional
        Fisher-z FC features, rows in the order of the recordings; required with a DataFrame
        (and overrides ``embeddings.fc``).
    kind : {"auto", "categorical", "continuous"}
        How to score the column; ``auto``: categorical for text, booleans and integers with at
        most :data:`MAX_CATEGORICAL_LEVELS` distinct values, continuous otherwise.
    pooling : {"cls", "mean"}
        Which embedding: the CLS token or the mean over tokens.
    n_neighbours, n_permutations, seed : int
        Neighbours of the continuous score; permutations (seeded by ``seed``) for chance levels.

    Only the recordings with a value in ``column`` are mapped and scored (the others are counted
    in ``n_missing``). When too few have one, a one-line error says how many do and how many are
    needed: 3 for any column, and for a categorical one more than its number of groups (the
    silhouette needs a group with two members).

    Returns
    -------
    LatentResult (JSON-ready, numbers only)
        ``column``, ``kind`` ("categorical"/"continuous"), ``score`` (name and meaning),
        ``levels`` (categorical), ``pooling``, ``n_recordings``, ``n_subjects``,
        ``n_windows``, ``n_missing`` (recordings without a value, left out), ``settings``;
        ``recordings``: ``recording_id``, ``subject``, ``values`` and, for ``brainlm`` and
        ``fc``, ``pca`` (``x``, ``y`` per recording, ``explained_variance`` ratio per
        component) and ``separability`` (``score``, ``chance_mean``, ``chance_p95``,
        ``p_value``); ``windows``: ``recording_id``, ``start_tr``, ``values`` and
        ``brainlm.pca`` (empty lists when there are no window rows).
    """
    if kind not in KINDS:
        raise BrainLMInputError(f"kind {kind!r}; expected one of {KINDS}", source)
    if pooling not in POOLINGS:
        raise BrainLMInputError(f"pooling {pooling!r}; expected one of {POOLINGS}", source)
    if n_neighbours < 1 or n_permutations < 1:
        raise BrainLMInputError("n_neighbours and n_permutations must be >= 1", source)
    recordings, windows, fc = _tables(embeddings, fc, source)
    values = check_column(recordings, column, source)
    keep = values.notna().to_numpy()
    recordings, fc = recordings[keep].reset_index(drop=True), fc[keep]
    values = values[keep].reset_index(drop=True)
    have = f"column {column!r} has a value for {len(recordings)} of {len(keep)} recordings"
    if len(recordings) < 3:
        raise BrainLMInputError(f"{have}; a map and a score need at least 3", source)
    kind = _kind(values) if kind == "auto" else kind
    groups = _groups(recordings)
    y, levels, plain_values = _target(values, kind, column, groups, have, source)
    rng_seed = int(seed)
    model_x = _features(recordings, pooling)
    result = {
        "column": column, "kind": kind, "levels": levels, "pooling": pooling,
        "score": _score_description(kind, n_neighbours),
        "n_recordings": len(recordings), "n_subjects": len(np.unique(groups)),
        "n_missing": int((~keep).sum()),
        "settings": {"n_neighbours": n_neighbours, "n_permutations": n_permutations, "seed": rng_seed,
                     "standardised": True, "metric": "euclidean"},
        "recordings": {"recording_id": recordings["recording_id"].astype(str).tolist()
                       if "recording_id" in recordings else list(map(str, range(len(recordings)))),
                       "subject": groups.tolist(), "values": plain_values},
    }
    for name, x in (("brainlm", model_x), ("fc", fc)):
        z = _standardise(x)
        result["recordings"][name] = {
            "pca": _pca(z),
            "separability": _separability(z, y, groups, kind, n_neighbours, n_permutations, rng_seed)}
    result["windows"] = _window_map(windows, recordings, column, kind, pooling)
    result["n_windows"] = len(result["windows"]["start_tr"])
    return LatentResult.from_json(result, source)


def _target(values: pd.Series, kind: str, column: str, groups: np.ndarray, have: str, source):
    """The scored target: codes (categorical) or floats (continuous), the levels (or None), and
    the values as plain JSON; an error when the column cannot be scored as ``kind``."""
    if kind == "categorical":
        labels = values.astype(str).to_numpy()
        levels = sorted(set(labels))
        if len(levels) >= len(values):
            # The silhouette compares distances within and between groups: it needs a group
            # with two members, that is more recordings than groups.
            raise BrainLMInputError(
                f"{have}, in {len(levels)} groups; the silhouette score needs more recordings with a value "
                f"than groups: at least {len(levels) + 1}. Embed more recordings that have a value, or "
                "choose another column", source)
        return np.searchsorted(levels, labels), levels, labels.tolist()
    try:
        y = values.astype(np.float64).to_numpy()
    except (TypeError, ValueError):
        raise BrainLMInputError(f"column {column!r} is not numeric; score it as categorical", source) from None
    if len(np.unique(groups)) < 2:
        raise BrainLMInputError(f"column {column!r}: every recording is of one subject; the continuous "
                                "score needs neighbours of other subjects", source)
    return y, None, y.tolist()


@dataclass(frozen=True)
class LatentResult(TaskResult):
    """What :func:`latent_space` returns and :func:`write_latent` writes (numbers only): see
    :func:`latent_space` for the parts. ``recordings`` holds, for ``brainlm`` and ``fc``, the PCA
    map and the separability score."""

    KIND: ClassVar[str] = "latent"

    column: str
    kind: str
    levels: list | None
    pooling: str
    score: dict
    n_recordings: int
    n_subjects: int
    n_missing: int
    settings: dict
    recordings: dict
    windows: dict
    n_windows: int

    def separability(self, features: str) -> dict:
        """``score``, ``chance_mean``, ``chance_p95`` and ``p_value`` of ``brainlm`` or ``fc``."""
        return self.recordings[features]["separability"]


def latent_space_of(checkpoint, data, column: str, *, tr: float | None = None, orientation: str = "auto",
                    key: str | None = None, transfer_atlas: bool = False, batch_size: int = 32,
                    device: str = "cpu", **settings) -> tuple[Embeddings, LatentResult]:
    """:func:`latent_space` of ``data`` (a corpus, files or Recordings, read as ``brainlm embed``
    reads them) under ``checkpoint``: the embeddings (with FC) and the result. ``settings`` go
    to :func:`latent_space` (``kind``, ``pooling``, ``n_neighbours``, ``n_permutations``,
    ``seed``)."""
    emb = embed_all(checkpoint, data, tr=tr, orientation=orientation, key=key, transfer_atlas=transfer_atlas,
                    batch_size=batch_size, device=device, fc=True)
    return emb, latent_space(emb, column, **settings)


def latent_paths(out: str | Path, column: str) -> tuple[Path, Path]:
    """The JSON and PNG written beside an embeddings file: ``emb.parquet`` ->
    ``emb.latent-COLUMN.json`` and ``emb.latent-COLUMN.png`` (characters other than letters,
    digits, ``-`` and ``_`` in the column name become ``_``)."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(column))
    return out.with_name(f"{stem}.latent-{safe}.json"), out.with_name(f"{stem}.latent-{safe}.png")


def write_latent(result: LatentResult, path: str | Path) -> Path:
    """Write a :func:`latent_space` result as JSON, atomically (NaN becomes null)."""
    write_json(path, result)
    return Path(path)


# --- helpers -------------------------------------------------------------------------------------

def _tables(embeddings, fc, source) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(recordings, windows, fc) from an Embeddings or a ``brainlm embed`` table."""
    if isinstance(embeddings, Embeddings):
        recordings, windows = embeddings.recordings, embeddings.windows
        fc = embeddings.fc if fc is None else fc
    elif isinstance(embeddings, pd.DataFrame):
        if "start_tr" in embeddings:
            windows = embeddings
            recordings = _recordings_of_windows(embeddings)
        else:
            recordings, windows = embeddings, embeddings.iloc[:0]
    else:
        raise BrainLMInputError(f"embeddings of type {type(embeddings).__name__}; expected Embeddings or a "
                                "DataFrame from brainlm embed", source)
    if not any(str(c).startswith("cls_") for c in recordings.columns):
        raise BrainLMInputError("no embedding columns (cls_*, mean_*); expected a table from brainlm embed", source)
    if fc is None:
        raise BrainLMInputError("no FC features to compare with; embed with fc=True (embed_all) or pass fc",
                                source)
    fc = np.asarray(fc, dtype=np.float64)
    if fc.ndim != 2 or len(fc) != len(recordings):
        raise BrainLMInputError(f"FC features of shape {fc.shape}; expected ({len(recordings)}, n_edges), "
                                "one row per recording", source)
    return recordings.reset_index(drop=True), windows.reset_index(drop=True), fc


def _recordings_of_windows(windows: pd.DataFrame) -> pd.DataFrame:
    """Per-window rows averaged per recording (in order of first appearance), as ``embed`` does."""
    emb = [c for c in windows.columns if str(c).startswith(EMBEDDING_PREFIXES)]
    ids = [c for c in windows.columns if c not in emb and c != "start_tr"]
    key = windows["recording_id"]
    order = pd.unique(key)
    first = windows.drop_duplicates("recording_id").set_index("recording_id").loc[order]
    means = windows.groupby("recording_id", sort=False)[emb].mean().loc[order]
    out = first[[c for c in ids if c != "recording_id"]].copy()
    out.insert(0, "recording_id", order)
    out["n_windows"] = key.value_counts().loc[order].to_numpy()
    return pd.concat([out.reset_index(drop=True), means.reset_index(drop=True).astype(np.float32)], axis=1)


def _kind(values: pd.Series) -> str:
    if values.dtype == bool or not pd.api.types.is_numeric_dtype(values):
        return "categorical"
    v = values.astype(np.float64).to_numpy()
    if np.all(v == np.round(v)) and len(np.unique(v)) <= MAX_CATEGORICAL_LEVELS:
        return "categorical"
    return "continuous"


def _groups(df: pd.DataFrame) -> np.ndarray:
    """Subject of each row as ``site/subject`` (as the corpus keys subjects), else the recording."""
    if "subject" not in df:
        return df["recording_id"].astype(str).to_numpy(dtype=object)
    site = (df["site"].astype(object).where(df["site"].notna(), "") if "site" in df
            else pd.Series("", index=df.index, dtype=object))
    return (site.astype(str) + "/" + df["subject"].astype(str)).to_numpy(dtype=object)


def _features(df: pd.DataFrame, pooling: str) -> np.ndarray:
    cols = [c for c in df.columns if str(c).startswith(f"{pooling}_")]
    if not cols:
        raise BrainLMInputError(f"no {pooling}_* embedding columns")
    return df[cols].to_numpy(dtype=np.float64)


def _standardise(x: np.ndarray) -> np.ndarray:
    """Each feature z-scored over the rows; a constant feature becomes 0 (it separates nothing)."""
    x = x - x.mean(0)
    sd = x.std(0)
    return np.divide(x, sd, out=np.zeros_like(x), where=sd > 1e-12)


def _pca(z: np.ndarray) -> dict:
    """2-D PCA of standardised features: coordinates and explained variance ratios."""
    k = min(2, z.shape[0], z.shape[1])
    if k == 0 or not np.any(z):
        zeros = [0.0] * len(z)
        return {"x": zeros, "y": zeros, "explained_variance": [0.0, 0.0]}
    # svd_solver="full": exact and deterministic (the randomized solver depends on a seed).
    pca = PCA(n_components=k, svd_solver="full").fit(z)
    xy = pca.transform(z)
    ev = pca.explained_variance_ratio_.tolist()
    if k < 2:
        xy = np.column_stack([xy, np.zeros(len(z))])
        ev = ev + [0.0]
    return {"x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "explained_variance": ev}


def _score_description(kind: str, k: int) -> dict:
    if kind == "categorical":
        return {"name": "silhouette", "chance": 0.0,
                "meaning": "silhouette of the column's groups in the z-scored feature space (Euclidean); "
                           "-1 to 1, 0 at chance"}
    return {"name": "neighbour_spearman", "chance": 0.0,
            "meaning": f"Spearman correlation of each recording's value with the mean value of its {k} "
                       "nearest recordings of other subjects (z-scored features, Euclidean); -1 to 1, 0 at chance"}


def _separability(z: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, k: int,
                  n_permutations: int, seed: int) -> dict:
    """The score of ``y`` in the feature space ``z`` and its permutation chance level."""
    d = pairwise_distances(z, metric="euclidean")
    if kind == "categorical":
        def score(labels):
            if len(np.unique(labels)) < 2:
                return np.nan
            return float(silhouette_score(d, labels, metric="precomputed"))
    else:
        nbrs = _other_subject_neighbours(d, groups, k)

        def score(values):
            pred = np.array([values[n].mean() for n in nbrs])
            if np.std(values) == 0 or np.std(pred) == 0:
                return 0.0
            return float(spearmanr(values, pred).statistic)
    observed = score(y)
    rng = np.random.default_rng(seed)
    null = np.array([score(_permute(y, groups, rng)) for _ in range(n_permutations)])
    null = null[np.isfinite(null)]
    return {"score": observed,
            "chance_mean": float(null.mean()) if len(null) else None,
            "chance_p95": float(np.quantile(null, 0.95)) if len(null) else None,
            "p_value": float((1 + np.sum(null >= observed)) / (1 + len(null))) if len(null) else None}


def _other_subject_neighbours(d: np.ndarray, groups: np.ndarray, k: int) -> list[np.ndarray]:
    """For each row, the indices of its ``k`` nearest rows of other subjects (ties: lower index)."""
    out = []
    for i in range(len(d)):
        others = np.flatnonzero(groups != groups[i])
        order = np.argsort(d[i, others], kind="stable")[:k]
        out.append(others[order])
    return out


def _permute(y: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``y`` permuted across subjects when it is constant within each subject, else across rows."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    per_subject = y[first]  # the value of each subject's first row
    if np.array_equal(per_subject[inverse], y):
        return rng.permutation(per_subject)[inverse]
    return rng.permutation(y)


def _window_map(windows: pd.DataFrame, recordings: pd.DataFrame, column: str, kind: str, pooling: str) -> dict:
    """PCA map of the window embeddings of the recordings kept, coloured by their recording's value."""
    if windows.empty or "recording_id" not in windows:
        return {"recording_id": [], "start_tr": [], "values": [],
                "brainlm": {"pca": {"x": [], "y": [], "explained_variance": []}}}
    value_of = dict(zip(recordings["recording_id"], recordings[column]))
    w = windows[windows["recording_id"].isin(value_of)].reset_index(drop=True)
    vals = w["recording_id"].map(value_of)
    vals = vals.astype(str).tolist() if kind == "categorical" else vals.astype(np.float64).tolist()
    return {"recording_id": w["recording_id"].astype(str).tolist(),
            "start_tr": w["start_tr"].astype(int).tolist(), "values": vals,
            "brainlm": {"pca": _pca(_standardise(_features(w, pooling)))}}
