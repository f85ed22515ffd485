"""A prepared corpus on disk (or object storage): read-only access, one window at a time.

Layout of a corpus folder::

    corpus.json        format, version, counts; written last, so its presence means complete
    manifest.parquet   one row per recording: ids, TRs, lengths, split, phenotypes, zarr array
    skipped.parquet    recordings left out and why
    atlas.json         the parcellation (names, MNI xyz in mm, networks)
    contract.json      the fitted preprocessing contract (incl. the pooled scaling statistics)
    timeseries.zarr/   one float32 array (T x P) per recording, chunked along time; cleaned and
                       resampled but not yet scaled (scaling is applied on read, so a refit never
                       rewrites data); missing parcels are NaN. Each array's attributes hold the
                       recording's own per-parcel ``median`` and ``iqr``, and ``minimum``,
                       ``maximum`` and ``mean`` (null for missing parcels): the statistics of
                       per-recording scaling, whatever the normalization

Nothing here loads the corpus into memory: a window read touches one or two chunks.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import zarr

from brainlm.data.atlas import Atlas
from brainlm.data.atomic import OUTPUT_MARKER
from brainlm.data.contract import PreprocessingContract
from brainlm.data.scaling import check_normalization, normalization_statistics, recording_statistics
from brainlm.errors import BrainLMInputError

CORPUS_FORMAT = "brainlm-corpus"
CORPUS_VERSION = 1
#: Manifest columns that are not phenotypes.
MANIFEST_COLUMNS = ("recording_id", "subject", "session", "task", "run", "site", "split", "source",
                    "tr_source", "n_trs_source", "tr", "n_trs", "bad_parcels")


class Corpus:
    """Open a prepared corpus.

    Parameters
    ----------
    path : str or path-like
        Local folder or any fsspec URL (``s3://bucket/corpus``, ``gs://...``, ``memory://...``).
    storage_options : dict, optional
        Passed to fsspec (credentials, endpoint ...).
    """

    def __init__(self, path, storage_options: dict | None = None):
        self.path = str(path).rstrip("/")
        self.storage_options = storage_options or {}
        self._fs, self._root = fsspec.core.url_to_fs(self.path, **self.storage_options)
        info_path = f"{self._root}/corpus.json"
        if not self._fs.exists(info_path):
            unfinished = unfinished_build(self.path, self.storage_options)
            raise BrainLMInputError("not a complete brainlm corpus: corpus.json missing"
                                    + (f" ({unfinished})" if unfinished else ""), self.path)
        self.info: dict[str, Any] = json.loads(self._fs.cat_file(info_path))
        if self.info.get("format") != CORPUS_FORMAT:
            raise BrainLMInputError(f"corpus.json has format {self.info.get('format')!r}; "
                                    f"expected {CORPUS_FORMAT!r}", self.path)
        if self.info.get("version", 0) > CORPUS_VERSION:
            raise BrainLMInputError(f"corpus version {self.info['version']} is newer than this "
                                    "brainlm reads; upgrade brainlm", self.path)
        self.atlas = Atlas.from_dict(json.loads(self._fs.cat_file(f"{self._root}/atlas.json")))
        self.contract = PreprocessingContract.from_dict(
            json.loads(self._fs.cat_file(f"{self._root}/contract.json")))
        self.manifest = self._read_manifest()
        if not self.contract.is_fitted:
            raise BrainLMInputError("contract.json has no scaling statistics (median, iqr) and "
                                    "does not scale per recording", self.path)
        if self.contract.median is not None:
            self._median = np.asarray(self.contract.median, dtype=np.float32)
            self._iqr = np.asarray(self.contract.iqr, dtype=np.float32)
        self._arrays: dict[int, zarr.Array] = {}
        self._statistics: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    def _read_manifest(self) -> pd.DataFrame:
        """``manifest.parquet``; an error naming it when it is not a Parquet table or lacks any
        of :data:`MANIFEST_COLUMNS` (a file written over it)."""
        path = f"{self._root}/manifest.parquet"
        try:
            with self._fs.open(path, "rb") as f:
                manifest = pd.read_parquet(f)
        except FileNotFoundError:
            raise BrainLMInputError("the corpus has no manifest.parquet", self.path) from None
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise BrainLMInputError(f"not a Parquet table ({str(e).split('. ')[0][:160]}); expected the "
                                    "corpus manifest that brainlm prepare writes", path) from None
        missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise BrainLMInputError(f"not a corpus manifest: missing column(s) {missing} (found "
                                    f"{list(map(str, manifest.columns))[:8]}); was it written over? "
                                    "brainlm prepare writes it", path)
        return manifest

    # Handles to zarr arrays cannot cross process boundaries (DataLoader workers): reopen lazily.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = {}
        state["_statistics"] = {}
        state.pop("_group", None)
        state.pop("_fs", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fs, self._root = fsspec.core.url_to_fs(self.path, **self.storage_options)

    @cached_property
    def _group(self) -> zarr.Group:
        if "://" in self.path and not self.path.startswith("file://"):
            return zarr.open_group(f"{self.path}/timeseries.zarr", mode="r",
                                   storage_options=self.storage_options)
        return zarr.open_group(f"{self._root}/timeseries.zarr", mode="r")

    def __len__(self) -> int:
        return len(self.manifest)

    def identity(self) -> str:
        """sha256 (hex) of ``manifest.parquet`` and ``contract.json``: which recordings, split how,
        scaled how. A run records it, so ``--resume`` cannot continue on another corpus."""
        h = hashlib.sha256()
        for name in ("manifest.parquet", "contract.json"):
            data = self._fs.cat_file(f"{self._root}/{name}")
            h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
        return h.hexdigest()

    def __repr__(self) -> str:
        return (f"Corpus({self.path!r}, recordings={len(self)}, atlas={self.atlas.name!r}, "
                f"tr={self.info.get('tr')} s)")

    @property
    def tr(self) -> float:
        """Sampling interval of every stored recording, seconds."""
        return float(self.info["tr"])

    @property
    def phenotype_columns(self) -> list[str]:
        return list(self.info.get("phenotype_columns", []))

    def split_indices(self, split: str | None) -> np.ndarray:
        """Row indices of the manifest in ``split`` (``None``: all)."""
        if split is None:
            return np.arange(len(self.manifest))
        splits = set(self.manifest["split"])
        if split not in {"train", "val", "test"}:
            raise BrainLMInputError(f"unknown split {split!r}; expected train, val or test", self.path)
        idx = np.flatnonzero(self.manifest["split"].to_numpy() == split)
        if idx.size == 0:
            raise BrainLMInputError(f"split {split!r} is empty (splits present: {sorted(splits)})", self.path)
        return idx

    def _array(self, index: int) -> zarr.Array:
        arr = self._arrays.get(index)
        if arr is None:
            if len(self._arrays) >= 4096:  # bound memory at UK Biobank scale (76k arrays)
                self._arrays.pop(next(iter(self._arrays)))
            arr = self._group[self.manifest["recording_id"].iat[index]]
            self._arrays[index] = arr
        return arr

    def recording_statistics(self, index: int, normalization: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The per-parcel centre and spread of the whole recording ``index`` (a manifest row),
        each (P,) float32: what per-recording scaling subtracts and divides by, whatever window
        is read.

        Parameters
        ----------
        normalization : str, optional
            Whose statistics (:data:`brainlm.data.scaling.NORMALIZATIONS`): median and IQR for
            ``"robust"``, min and max - min for the min-max ones, mean and 1 for ``"demean"``.
            Default: the corpus' contract's.

        Stored with the recording by ``prepare``; computed from the whole recording (once per
        open corpus and normalization) for corpora written before.
        """
        index = int(index)
        normalization = self.contract.normalization if normalization is None else normalization
        check_normalization(normalization, "recording", self.path)
        stats = self._statistics.get((index, normalization))
        if stats is None:
            arr = self._array(index)
            attrs = arr.attrs.asdict() if hasattr(arr.attrs, "asdict") else dict(arr.attrs)
            stats = _stored_statistics(attrs, normalization)
            if stats is None:
                stats = recording_statistics(arr[:], normalization)
            if len(self._statistics) >= 4096:  # bounded, like the array handles
                self._statistics.pop(next(iter(self._statistics)))
            self._statistics[(index, normalization)] = stats
        return stats

    def read(self, index: int, start: int = 0, stop: int | None = None, *, scaled: bool = True,
             fill_missing: float = 0.0, scaler: PreprocessingContract | None = None) -> np.ndarray:
        """Time points ``[start, stop)`` of recording ``index`` (a manifest row).

        Parameters
        ----------
        scaled : bool
            Apply the scaling (``gain * (x - centre) / spread + offset``; missing parcels then
            read as ``fill_missing``); without it the cleaned signal is returned with missing
            parcels as NaN.
        scaler : PreprocessingContract, optional
            Whose scaling to apply (a checkpoint's, see
            :func:`brainlm.tasks.model_input.model_scaler`); default: this corpus' contract.
            Per-recording scaling uses the whole recording's statistics of the scaler's
            normalization, so a window reads as the same numbers as in the whole recording.

        Returns
        -------
        ndarray, shape (stop - start, P), float32.
        """
        x = self._array(int(index))[start:stop]
        if not scaled:
            return x
        scaler = self.contract if scaler is None else scaler
        if scaler.per_recording:
            return scaler.scale(x, fill_missing, statistics=self.recording_statistics(index, scaler.normalization))
        if scaler is not self.contract or scaler.gain != 1.0 or scaler.offset != 0.0:
            return scaler.scale(x, fill_missing)
        # The corpus' own pooled scaling, in place (the common training read).
        x -= self._median
        x /= self._iqr
        return np.nan_to_num(x, nan=fill_missing, copy=False)

    def summary(self) -> dict[str, Any]:
        """Counts, TRs, atlas, splits and phenotypes, as plain Python values."""
        m = self.manifest
        by_split = {}
        for split in ("train", "val", "test"):
            part = m[m["split"] == split]
            by_split[split] = {"recordings": int(len(part)), "subjects": int(part["subject"].nunique()),
                               "hours": round(float((part["n_trs"] * part["tr"]).sum() / 3600), 3)}
        pheno = {c: {"non_missing": int(m[c].notna().sum()), "dtype": str(m[c].dtype)}
                 for c in self.phenotype_columns if c in m}
        skipped = self.skipped
        return {
            "path": self.path, "recordings": int(len(m)), "subjects": int(m["subject"].nunique()),
            "sites": sorted(m["site"].dropna().unique().tolist()),
            "tr_s": self.tr, "source_trs_s": sorted(float(t) for t in m["tr_source"].unique()),
            "n_trs": {"min": int(m["n_trs"].min()), "median": float(m["n_trs"].median()),
                      "max": int(m["n_trs"].max()), "total": int(m["n_trs"].sum())},
            "hours": round(float((m["n_trs"] * m["tr"]).sum() / 3600), 3),
            "atlas": {"name": self.atlas.name, "parcels": self.atlas.n_parcels,
                      "space": self.atlas.space, "networks": self.atlas.network_names},
            "splits": by_split, "split_seed": self.info.get("split_seed"),
            "split_by": self.info.get("split_by"),
            "phenotypes": pheno,
            "recordings_with_missing_parcels": int((m["bad_parcels"].map(len) > 0).sum()),
            "skipped": int(len(skipped)),
            "skipped_reasons": skipped["reason"].value_counts().head(5).to_dict() if len(skipped) else {},
            "contract": {k: v for k, v in self.contract.to_dict().items() if k not in ("median", "iqr")},
        }

    @cached_property
    def skipped(self) -> pd.DataFrame:
        """Recordings left out of the corpus, with the reason."""
        p = f"{self._root}/skipped.parquet"
        if not self._fs.exists(p):
            return pd.DataFrame(columns=["recording_id", "source", "reason"])
        with self._fs.open(p, "rb") as f:
            return pd.read_parquet(f)


def unfinished_build(path, storage_options: dict | None = None) -> str | None:
    """What to say when ``path`` is not a corpus but ``PATH.partial`` is an unfinished build of
    ``brainlm prepare`` (how many recordings are done, and how to resume it); None otherwise."""
    fs, root = fsspec.core.url_to_fs(str(path).rstrip("/"), **(storage_options or {}))
    build = root + ".partial"
    # Only a build that prepare started (its settings, or brainlm's output marker) is one.
    if not (fs.isdir(build) and (fs.exists(f"{build}/settings.json") or fs.exists(f"{build}/{OUTPUT_MARKER}"))):
        return None
    done = len(fs.ls(build + "/done")) if fs.isdir(build + "/done") else 0
    name = build.rsplit("/", 1)[-1]
    return (f"{name} is an unfinished `brainlm prepare`: re-run it to resume (the same command and "
            f"settings; {done} recording(s) are done, --restart starts over)")


def _stored_statistics(attrs: dict, normalization: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(centre, spread) float32 of ``normalization`` from a recording's zarr attributes, or None
    when ``prepare`` did not store what it needs (corpora written before)."""
    if normalization == "robust":
        if "median" in attrs and "iqr" in attrs:
            return np.asarray(attrs["median"], dtype=np.float32), np.asarray(attrs["iqr"], dtype=np.float32)
        return None
    # Missing parcels are stored as null, which reads as NaN: "never observed".
    if normalization == "demean":
        if "mean" not in attrs:
            return None
        c, sp, _ = normalization_statistics(normalization, means=np.asarray(attrs["mean"], dtype=np.float64))
    else:
        if "minimum" not in attrs or "maximum" not in attrs:
            return None
        extrema = np.asarray([attrs["minimum"], attrs["maximum"]], dtype=np.float64)
        c, sp, _ = normalization_statistics(normalization, extrema=extrema)
    return c.astype(np.float32), sp.astype(np.float32)
