"""``brainlm prepare``: sources -> a corpus on disk.

Pass 1 (parallel over recordings): read, validate, clean and resample each recording (steps 1-5
of the preprocessing contract) and write it to the chunked store, with a small completion
marker per recording, so an interrupted run resumes where it stopped.
Pass 2 (parallel): pool the scaling statistics of the contract's normalization over the
training split only (over every recording for an evaluation-only cohort, or none at all when
they come from a checkpoint: ``like``): robust quartiles from a streaming histogram, min-max
from each recording's extrema (no second pass over the data), none for per-recording
demeaning. Each recording's own statistics are stored with it (per-recording scaling).
Then the manifest, atlas, contract and, last, ``corpus.json`` are written and the build folder
``CORPUS.partial`` is renamed to ``CORPUS``: a corpus that looks complete is complete.

Sources are parcellated time series (with ``atlas``), or scans -- 4-D NIfTI, GIfTI pairs, CIFTI,
e.g. an fMRIPrep derivatives folder -- parcellated in pass 1 with an atlas image
(``atlas_image``; see :mod:`brainlm.data.extraction`) and denoised with a confound strategy.
Pass 1 runs on joblib worker processes, or on a Dask cluster (``dask_scheduler``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainlm.data.atlas import Atlas
from brainlm.data.atomic import (OUTPUT_MARKER, check_not_an_input, check_output_folder, publish_directory, write_output_marker,
                                 write_parquet_atomic, write_text_atomic)
from brainlm.data.contract import TR_RANGE_S, PreprocessingContract, ReferenceContract
from brainlm.data.corpus import CORPUS_FORMAT, CORPUS_VERSION, MANIFEST_COLUMNS, Corpus
from brainlm.data.extraction import ImageParcellation, load_atlas_image
from brainlm.data.fmriprep import confounds_file_for, find_scans, parse_confound_strategy, participants_file
from brainlm.data.progress import ProgressBar
from brainlm.data.recording import Recording
from brainlm.data.scaling import (NORMALIZATION_FORMULAS, ExtremaRange, QuartileHistogram, QuartileRange,
                                  normalization_statistics,
                                  recording_extrema, recording_means, recording_quartiles, recording_scaling,
                                  scaling_from_quartiles)
from brainlm.data.sources import (SourceSpec, attach_phenotypes, check_unique_ids, discover_files,
                                  specs_from_files, specs_from_recordings, specs_from_scans)
from brainlm.data.splits import assign_splits, explicit_splits
from brainlm.data.surfaces import SurfaceAtlas
from brainlm.data.volumes import AtlasResampledWarning, VolumeAtlas
from brainlm.errors import BrainLMInputError
from brainlm.version import __version__

TOO_SHORT_POLICIES = ("skip", "error")
ON_ERROR_POLICIES = ("fail", "skip")
SPLIT_BY = ("subject", "site")
COMPRESSIONS = ("none", "lz4", "zstd")


@dataclass(frozen=True)
class StoreLayout:
    """How recordings are written: chunk length along time (TRs) and compression codec."""

    chunk_trs: int = 512
    compression: str = "none"

    def compressors(self):
        from zarr.codecs import BloscCodec, ZstdCodec

        if self.compression == "lz4":
            return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
        if self.compression == "zstd":
            return ZstdCodec(level=3)
        return None


def prepare_corpus(
    sources: Sequence[str | Path | Recording],
    out: str | Path,
    *,
    atlas: Atlas | None = None,
    atlas_image=None,
    atlas_labels: str | Path | None = None,
    surface_mesh=None,
    confounds="auto",
    confound_options: dict | None = None,
    max_censored: float = 0.5,
    space: str | None = None,
    res: str | None = None,
    read_volumes: int = 32,
    contract: PreprocessingContract | None = None,
    tr: float | None = None,
    orientation: str = "auto",
    key: str | None = None,
    participants: str | Path | None = None,
    id_column: str | None = None,
    allow_missing_phenotypes: bool = False,
    min_trs: int = 200,
    too_short: str = "skip",
    on_error: str = "fail",
    fractions: Sequence[float] | None = None,
    split_seed: int = 0,
    split_by: str = "subject",
    split_assignments: dict[str, str] | None = None,
    jobs: int = 1,
    dask_scheduler: str | None = None,
    layout: StoreLayout = StoreLayout(),
    overwrite: bool = False,
    restart: bool = False,
    drop_scale_outliers: bool = False,
    progress: bool = False,
    like: ReferenceContract | None = None,
) -> Corpus:
    """Build a corpus from files/folders and/or in-memory Recordings.

    Parameters
    ----------
    sources : sequence of path or Recording
        Time-series files, folders (searched recursively; a ``participants.tsv`` at the top of a
        folder is used when ``participants`` is not given) or Recordings. With ``atlas_image``:
        scans or folders of scans (an fMRIPrep derivatives folder: ``*_desc-preproc_bold.nii.gz``,
        ``*_hemi-L/R_*_bold.func.gii``, ``*_bold.dtseries.nii``; the raw dataset's
        ``participants.tsv`` is used for ``<dataset>/derivatives/<pipeline>``).
    out : path
        Corpus folder to create (local disk).
    atlas : Atlas
        Parcellation of every recording (its parcel count is checked against each file). Give
        either ``atlas`` (parcellated time series) or ``atlas_image`` (scans).
    atlas_image : path, pair of paths, VolumeAtlas or SurfaceAtlas, optional
        Atlas to parcellate scans with: a NIfTI (3-D labels, or 4-D probabilistic maps), a left
        and right ``.annot``/``.label.gii``, or a ``.dlabel.nii``. Parcel centres (MNI mm) are
        computed from it; see :func:`brainlm.data.extraction.load_atlas_image`.
    atlas_labels : path, optional
        Names (and networks) of the atlas labels (TSV with ``index, name[, network]``).
    surface_mesh : str or pair of paths, optional
        Mesh of a surface atlas (default fsaverage5, bundled with nilearn).
    confounds : str or ConfoundStrategy
        ``"auto"`` (``"simple"`` when the scans have fMRIPrep confounds files, else ``"none"``),
        ``"none"``, a nilearn preset (``"simple"``, ``"scrubbing"``, ``"compcor"``,
        ``"ica_aroma"``) or a comma-separated list of ``load_confounds`` components. Recorded
        in ``corpus.json`` (``ingestion``).
    confound_options : dict, optional
        Keyword arguments for nilearn's loader, e.g. ``{"global_signal": "basic"}`` or
        ``{"fd_threshold": 0.3}``.
    max_censored : float
        Largest fraction of volumes a confound strategy may censor in a scan.
    space, res : str, optional
        BIDS ``space-``/``res-`` of the scans to use (fMRIPrep writes several).
    read_volumes : int
        Volumes of a 4-D NIfTI read at a time (bounds each worker's memory).
    contract : PreprocessingContract, optional
        Cleaning settings and scaling mode; its pooled scaling statistics are fitted here on the
        training split (on every recording when no subject is in ``train``: recorded in
        ``scaler_fit``).
    tr : float, optional
        Repetition time in seconds for files with neither a JSON sidecar nor a TR inside.
    orientation : {"auto", "time-by-parcel", "parcel-by-time"}
    key : str, optional
        Array name inside .npz/.mat/.h5 files (inferred when there is one candidate).
    participants : path, optional
        BIDS-style participants table; phenotypes are joined on subject id.
    min_trs : int
        Recordings shorter than this after preprocessing (TRs at the target TR) are handled
        by ``too_short`` (``"skip"``: left out and listed in ``skipped.parquet``; ``"error"``).
    on_error : {"fail", "skip"}
        A recording that cannot be read or fails validation stops the run (``"fail"``) or is
        listed in ``skipped.parquet`` (``"skip"``; retried on the next run).
    fractions, split_seed, split_by
        Train/val/test fractions of subjects (``split_by="subject"``; subjects are keyed by
        site and subject id) or of whole sites (``"site"``). Default ``(0.8, 0.1, 0.1)``, or
        ``(0, 0, 1)`` with ``like`` (every recording in ``test``).
    split_assignments : dict, optional
        The split of every subject (``SITE/SUBJECT`` when recordings have a site; or of every
        site with ``split_by="site"``) given explicitly, instead of ``fractions``: a fixed
        external test set, or one fold of a leave-one-subject-out evaluation.
    jobs : int
        Worker processes for cleaning and statistics (-1: all cores).
    dask_scheduler : str, optional
        Run pass 1 on a Dask cluster, one task per recording: a scheduler address
        (``tcp://host:8786``; the sources and ``out`` must be on a file system the workers
        share, and are sent to them as absolute paths) or ``"local"`` (a local cluster of
        ``jobs`` processes). Needs the ``dask`` extra.
    layout : StoreLayout
        Chunking and compression of the array store.
    overwrite : bool
        Replace an existing complete corpus at ``out`` (only once the new one is complete).
    restart : bool
        Discard an unfinished build (``out.partial``) instead of resuming it.
    like : ReferenceContract, optional
        Prepare the cohort exactly as a checkpoint's pretraining data: its cleaning settings,
        target TR and scaling mode (``contract``, if also given, must agree), its atlas when
        neither ``atlas`` nor ``atlas_image`` is given, and its pooled scaling statistics when
        the cohort is on its atlas (else the cohort's own; ``scaler_fit["source"]`` and
        ``corpus.json`` -> ``prepared_like`` say which).

    Returns
    -------
    Corpus
    """
    if like is not None:
        contract = _contract_like(like, contract)
        if atlas is None and atlas_image is None:
            if like.atlas is None:
                raise BrainLMInputError("the checkpoint has no atlas (atlas.json); pass --atlas",
                                        like.name)
            atlas = like.atlas
    contract = contract or PreprocessingContract()
    if fractions is None:
        fractions = (0.0, 0.0, 1.0) if like is not None else (0.8, 0.1, 0.1)
    out = Path(out)
    _check_choice(orientation, ("auto", "time-by-parcel", "parcel-by-time"), "orientation")
    _check_choice(too_short, TOO_SHORT_POLICIES, "too_short")
    _check_choice(on_error, ON_ERROR_POLICIES, "on_error")
    _check_choice(split_by, SPLIT_BY, "split_by")
    _check_choice(layout.compression, COMPRESSIONS, "compression")
    if int(min_trs) < 1 or layout.chunk_trs < 1:
        raise BrainLMInputError("min_trs and chunk_trs must be positive integers")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs == 0:
        raise BrainLMInputError(f"jobs={jobs!r} (--jobs); expected a positive number of worker "
                                "processes, or -1 for all cores")
    # The inputs this build reads: the corpus, and its unfinished build, may be none of them.
    inputs = [*sources, *(x for x in (participants, atlas_image) if isinstance(x, (str, os.PathLike)))]
    if like is not None and like.path is not None:
        inputs.append(like.path)
    check_output_folder(out, overwrite=overwrite, sources=inputs, kind="corpus")
    check_not_an_input(out.with_name(out.name + ".partial"), inputs)

    parcellation = None
    if atlas_image is not None:
        parcellation = _image_parcellation(atlas, atlas_image, atlas_labels, surface_mesh,
                                           read_volumes, contract)
        atlas = parcellation.atlas
    elif atlas is None:
        raise BrainLMInputError("no atlas: pass atlas (--atlas) for parcellated time series, or "
                                "atlas_image (--atlas-image) for NIfTI/GIfTI/CIFTI scans")
    elif surface_mesh is not None or atlas_labels is not None:
        raise BrainLMInputError("atlas_labels and surface_mesh apply only with an atlas image "
                                "(--atlas-image)")

    specs, participants_path = _collect_specs(sources, tr, parcellation, space, res)
    if parcellation is not None:
        parcellation = _with_confounds(parcellation, confounds, confound_options, max_censored, specs)
    elif confounds not in ("auto", "none", None):
        raise BrainLMInputError("a confound strategy applies to scans parcellated with an atlas "
                                "image (--atlas-image); parcellated tables are denoised by the "
                                "contract's confounds")
    participants = participants or participants_path
    phenotype_columns: list[str] = []
    if participants is not None:
        phenotype_columns = attach_phenotypes(specs, Path(participants), id_column=id_column,
                                              allow_missing=allow_missing_phenotypes)
    else:
        phenotype_columns = sorted({k for s in specs for k in s.phenotypes})
    check_unique_ids(specs)
    known_trs = {round(s.tr, 6) for s in specs if s.tr is not None}
    if contract.target_tr is None and len(known_trs) > 1:
        raise BrainLMInputError(
            f"recordings have different TRs {sorted(known_trs)} s; pass --target-tr to resample "
            "them onto one grid")

    groups = _split_groups(specs, split_by)
    if split_assignments is not None:
        split_of = explicit_splits(groups, split_assignments)
        counts = pd.Series(list(split_of.values())).value_counts()
        fractions = [float(counts.get(name, 0)) / len(split_of) for name in ("train", "val", "test")]
    else:
        split_of = assign_splits(groups, fractions, seed=split_seed)

    build = out.with_name(out.name + ".partial")
    settings = {
        "contract": {k: v for k, v in contract.to_dict().items() if k not in ("median", "iqr", "scaler_fit")},
        "atlas": atlas.to_dict(), "orientation": orientation, "key": key, "tr": tr,
        "min_trs": int(min_trs), "too_short": too_short, "layout": asdict(layout),
    }
    if parcellation is not None:
        # How many volumes are read at a time does not change the result: free to change on resume.
        settings["extraction"] = {k: v for k, v in parcellation.to_dict().items() if k != "read_volumes"}
    _open_build(build, settings, restart)

    done_dir = build / "done"
    pending = [s for s in specs if not (done_dir / f"{s.recording_id}.json").exists()]
    try:
        results = _run_pass1(pending, build, atlas, contract, dict(orientation=orientation, key=key,
                             min_trs=int(min_trs), too_short=too_short, on_error=on_error,
                             parcellation=parcellation),
                             layout, jobs, progress, dask_scheduler)
    except BrainLMInputError as e:
        # The unfinished build stays for a resume with the same settings; a fix that changes a
        # setting (such as the one the message suggests) must say that it needs --restart.
        if restart_hint_needed(e.reason):
            raise BrainLMInputError(f"{e.reason}; a re-run with changed settings needs --restart "
                                    f"(it discards the unfinished build {build.name})", e.source) from None
        raise
    failures = [r for r in results if r["status"] == "failed"]

    records, skipped = [], []
    # The pooled statistics come from the training split; an evaluation-only cohort (no subject
    # in train) pools over all its recordings, and says so in the contract.
    fit_on_all = "train" not in set(split_of.values())
    train_quartiles: dict[str, np.ndarray] = {}  # (3, P) float32 per recording of the fit
    train_extrema: dict[str, np.ndarray] = {}  # (2, P) float64 per recording of the fit
    held_out_quartiles: dict[str, np.ndarray] = {}  # (3, P) of validation and test recordings
    for s, group in zip(specs, groups):
        marker = done_dir / f"{s.recording_id}.json"
        if marker.exists():
            r = json.loads(marker.read_text())
            quartiles = r.pop("quartiles", None)
            extrema = r.pop("extrema", None)
            if r["status"] == "ok" and (fit_on_all or split_of[group] == "train"):
                train_quartiles[r["recording_id"]] = np.asarray(quartiles, dtype=np.float32)
                if extrema is not None:
                    train_extrema[r["recording_id"]] = np.asarray(extrema, dtype=np.float64)
            elif r["status"] == "ok":
                held_out_quartiles[r["recording_id"]] = np.asarray(quartiles, dtype=np.float32)
            (records if r["status"] == "ok" else skipped).append(r)
    skipped += failures
    like_contract, stats_from_checkpoint = (like.contract_for(atlas) if like is not None else (None, False))
    outliers, outlier_records, records, dropped = _scale_outliers_of_build(
        records, train_quartiles, held_out_quartiles, drop_scale_outliers, skip_held_out=on_error == "skip",
        fitted_here=not stats_from_checkpoint, pooled=not contract.per_recording,
        split_of_id={s.recording_id: split_of[g] for s, g in zip(specs, groups)})
    skipped += dropped
    del held_out_quartiles
    train_range = QuartileRange()  # O(P) memory: only the range of training quartiles is kept
    for rid, q in train_quartiles.items():
        if rid not in outliers:
            train_range.add(q)
    del train_quartiles
    if not records:
        raise BrainLMInputError(
            f"no recording could be prepared ({len(skipped)} skipped; first reason: "
            f"{skipped[0]['reason'] if skipped else 'none'})", str(out))

    out_trs = {round(r["tr"], 6) for r in records}
    if len(out_trs) > 1:
        raise BrainLMInputError(
            f"recordings have different TRs {sorted(out_trs)} s; pass --target-tr to resample "
            "them onto one grid", str(out))

    spec_by_id = {s.recording_id: s for s in specs}
    manifest = _manifest(records, spec_by_id, groups_of=dict(zip((s.recording_id for s in specs), groups)),
                         split_of=split_of, phenotype_columns=phenotype_columns)
    train = manifest if fit_on_all else manifest[manifest["split"] == "train"]
    corpus_warnings = _empty_split_warnings(manifest, fractions)
    if like is not None and like.contract.target_tr is None:
        # The checkpoint does not say at which TR it was pretrained: nothing to resample to.
        msg = (f"the checkpoint's contract has no target TR, so the cohort keeps its own TR "
               f"({next(iter(out_trs)):g} s); it must be the TR of the checkpoint's pretraining data")
        warnings.warn(msg, LikeTRWarning, stacklevel=2)
        corpus_warnings.append(msg)
    if stats_from_checkpoint:
        fitted = like_contract
        fitted.scaler_fit = {
            "source": "checkpoint", "checkpoint": like.name,
            "method": "the checkpoint's pooled statistics (the cohort is on its pretraining atlas)",
            "checkpoint_fit": dict(like.contract.scaler_fit)}
        if "recordings" in like.contract.scaler_fit:
            fitted.scaler_fit["recordings"] = like.contract.scaler_fit["recordings"]
    else:
        if train.empty:
            raise BrainLMInputError("no recording of the training split survived preprocessing; "
                                    "cannot fit the scaling statistics", str(out))
        fitted = _fit_scaler(build, train[~train["recording_id"].isin(list(outliers))], train_range, atlas,
                             contract, jobs, train_extrema)
        fitted.scaler_fit["source"] = "cohort"
        if fit_on_all:
            fitted.scaler_fit["split"] = "all"
            fitted.scaler_fit["note"] = ("no subject is in the training split (an evaluation-only "
                                         "cohort): statistics pooled over all its recordings")
        if like is not None:
            fitted.scaler_fit["checkpoint"] = like.name
            why = (f"atlas {atlas.name!r} is not the checkpoint's "
                   f"({like.atlas.name if like.atlas is not None else 'unknown'!r})"
                   if like.atlas is None or not atlas.matches(like.atlas)
                   else "the checkpoint carries no pooled scaling statistics")
            fitted.scaler_fit["note"] = (
                f"{why}: the cohort's own pooled statistics"
                + (" over all its recordings" if fit_on_all else " over its training split"))
        if outliers:
            fitted.scaler_fit["excluded_scale_outliers"] = sorted(outliers)
    if fitted.per_recording:
        fitted.scaler_fit["applied"] = (f"per recording: {NORMALIZATION_FORMULAS[fitted.normalization]}, "
                                        "with each recording's own statistics (stored with it)"
                                        + ("" if fitted.median is None else
                                           "; the pooled statistics are kept for reference"))
    units = _units_record(records)
    fitted.units = units["units"]
    bad = [] if fitted.median is None else [
        atlas.parcel_names[i] for i in np.flatnonzero(~(np.isfinite(fitted.median) & np.isfinite(fitted.iqr)
                                                        & (np.asarray(fitted.iqr) > 0)))]
    if bad:
        raise BrainLMInputError(f"the scaling statistics are not finite for parcel(s) {bad[:5]}; the "
                                "training recordings hold values too large to scale", str(out))

    _remove_orphan_arrays(build, set(manifest["recording_id"]))
    write_parquet_atomic(manifest, build / "manifest.parquet")
    skipped_df = pd.DataFrame([{"recording_id": r["recording_id"], "source": r["source"],
                                "reason": r["reason"]} for r in skipped],
                              columns=["recording_id", "source", "reason"])
    write_parquet_atomic(skipped_df, build / "skipped.parquet")
    write_text_atomic(build / "atlas.json", json.dumps(atlas.to_dict()))
    fitted.save(build / "contract.json")
    ingestion = None
    if parcellation is not None:
        ingestion = _ingestion_record(parcellation, records, space, res)
        write_parquet_atomic(_ingestion_table(records), build / "ingestion.parquet")
    info = {
        "format": CORPUS_FORMAT, "version": CORPUS_VERSION, "brainlm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tr": float(next(iter(out_trs))), "recordings": int(len(manifest)),
        "subjects": int(manifest["subject"].nunique()), "skipped": int(len(skipped_df)),
        "phenotype_columns": [c for c in manifest.columns if c not in MANIFEST_COLUMNS],
        "split_by": split_by, "split_seed": int(split_seed), "fractions": list(map(float, fractions)),
        "split_assignments": dict(sorted(split_of.items())) if split_assignments is not None else None,
        "layout": asdict(layout),
    }
    if ingestion is not None:
        info["ingestion"] = ingestion
    if corpus_warnings:
        info["warnings"] = corpus_warnings
    if outlier_records:
        info["scale_outliers"] = outlier_records
    info["input_units"] = units
    info["scaling"] = {"mode": fitted.scaling, "normalization": fitted.normalization,
                       "statistics": fitted.scaler_fit.get("source"),
                       **({"note": fitted.scaler_fit["note"]} if "note" in fitted.scaler_fit else {})}
    if like is not None:
        info["prepared_like"] = {"checkpoint": like.name, "scaling": fitted.scaling,
                                 "normalization": fitted.normalization,
                                 "statistics": "checkpoint" if stats_from_checkpoint else "cohort"}
    write_text_atomic(build / "corpus.json", json.dumps(info, indent=2))
    shutil.rmtree(done_dir)
    (build / "settings.json").unlink()
    write_output_marker(build, "corpus")
    # Checked again just before the old corpus goes: it may have appeared during the build.
    check_output_folder(out, overwrite=overwrite, sources=inputs, kind="corpus")
    publish_directory(build, out)
    return Corpus(out)


# -- helpers -------------------------------------------------------------------------------
def _check_choice(value, allowed, name):
    if value not in allowed:
        raise BrainLMInputError(f"option {name!r} is {value!r}; expected one of {list(allowed)}")


def _image_parcellation(atlas, atlas_image, atlas_labels, surface_mesh, read_volumes, contract):
    if atlas is not None:
        raise BrainLMInputError("pass either atlas (--atlas: parcellated time series) or atlas_image "
                                "(--atlas-image: scans), not both; an atlas image defines its own "
                                "parcels and centres")
    if isinstance(atlas_image, (VolumeAtlas, SurfaceAtlas)):
        image = atlas_image
    else:
        image = load_atlas_image(atlas_image, atlas_labels, mesh=surface_mesh)
    if int(read_volumes) < 1:
        raise BrainLMInputError(f"read_volumes is {read_volumes!r}; expected a positive integer")
    return ImageParcellation(atlas_image=image, read_volumes=int(read_volumes),
                             bad_parcels=contract.bad_parcels)


def _with_confounds(parcellation, confounds, options, max_censored, specs):
    """The parcellation with its confound strategy settled (``"auto"``: ``simple`` for fMRIPrep
    scans, which have a confounds table beside them; ``none`` otherwise)."""
    from dataclasses import replace


    if confounds == "auto" or confounds is None:
        has_tables = any(s.path is not None and s.kind != "table" and confounds_file_for(s.path)
                         for s in specs)
        confounds = "simple" if has_tables and confounds == "auto" else "none"
    strategy = parse_confound_strategy(confounds, max_censored=max_censored, **(options or {}))
    if options and not strategy.enabled:
        raise BrainLMInputError(f"confound options {sorted(options)} given but no confound strategy "
                                "applies (--confounds none, or no fMRIPrep confounds files found)")
    return replace(parcellation, confounds=strategy)


def _collect_specs(sources, tr, parcellation=None, space=None, res=None) -> tuple[list[SourceSpec], Path | None]:
    if len(sources) == 0:
        raise BrainLMInputError("no sources given; expected files, folders or Recordings")
    recordings = [s for s in sources if isinstance(s, Recording)]
    paths = [s for s in sources if not isinstance(s, Recording)]
    specs: list[SourceSpec] = specs_from_recordings(recordings)
    found_participants = None
    if paths and parcellation is not None:
        specs += specs_from_scans(find_scans(paths, surface=parcellation.surface, space=space, res=res),
                                  tr=tr)
        found = sorted({str(f) for f in map(participants_file, paths) if f is not None})
        if len(found) > 1:
            raise BrainLMInputError(f"several participants.tsv found ({found}); pass --participants "
                                    "to choose one")
        found_participants = Path(found[0]) if found else None
    elif paths:
        files, participants = discover_files(paths)
        specs += specs_from_files(files, tr=tr)
        found_participants = participants[0] if len(participants) == 1 else None
        if len(participants) > 1:
            raise BrainLMInputError(f"several participants.tsv found ({[str(p) for p in participants]}); "
                                    "pass --participants to choose one")
    return specs, found_participants


def _split_groups(specs: Sequence[SourceSpec], split_by: str) -> list[str]:
    if split_by == "site":
        missing = [s.label for s in specs if s.site is None]
        if missing:
            raise BrainLMInputError(
                f"split_by='site' needs a site for every recording; {len(missing)} have none, "
                f"e.g. {missing[:3]} (add site- to file names or a 'site' column to participants.tsv)")
        return [s.site for s in specs]
    # The same subject label at two sites is two people.
    return [f"{s.site}/{s.subject}" if s.site else s.subject for s in specs]


def restart_hint_needed(message: str) -> bool:
    """Whether a build error should add that changed settings need ``--restart``: any fix that
    changes a setting (``--bad-parcels zero``, another ``--atlas``) is refused by the resumed
    build without it; messages that already say so are left alone."""
    return "--restart" not in message


def _open_build(build: Path, settings: dict, restart: bool) -> None:
    settings_file = build / "settings.json"
    if build.exists() and not (settings_file.is_file() or (build / OUTPUT_MARKER).is_file()):
        # Only a build that brainlm started is resumed or discarded; anything else is kept.
        raise BrainLMInputError("a folder that is not an unfinished brainlm build is in the way "
                                "of the build folder; move it or choose another --out", str(build))
    if build.exists() and restart:
        shutil.rmtree(build)
    if build.exists():
        old = json.loads(settings_file.read_text()) if settings_file.exists() else None
        if old != json.loads(json.dumps(settings)):
            raise BrainLMInputError(
                "an unfinished build with different settings is here; pass --restart to discard "
                "it, or re-run with the same settings to resume", str(build))
        return
    (build / "done").mkdir(parents=True)
    write_output_marker(build, "corpus")
    import zarr

    zarr.open_group(build / "timeseries.zarr", mode="w")
    write_text_atomic(settings_file, json.dumps(settings, indent=2))


def _run_pass1(pending, build, atlas, contract, opts, layout, jobs, progress,
               dask_scheduler=None) -> list[dict]:
    if not pending:
        return []
    from joblib import Parallel, delayed

    if dask_scheduler is not None:
        pending, build, opts = _absolute_paths(pending, build, opts)
    tasks = (delayed(_process_one)(s, build, atlas, contract, opts, layout, os.getpid()) for s in pending)
    results = []
    with _parallel_backend(dask_scheduler, jobs) as n_jobs:
        # Results arrive as workers finish; each worker holds one recording at a time.
        runner = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        with ProgressBar(progress, "cleaning recordings", len(pending)) as advance:
            for r in runner(tasks):
                results.append(r)
                advance()
    return results


def _absolute_paths(pending: list[SourceSpec], build: Path, opts: dict) -> tuple[list[SourceSpec], Path, dict]:
    """The tasks' paths (scans, tables, masks, atlas image or surface meshes, the build folder)
    made absolute: Dask workers run in their own working folders, usually on other machines, and
    would read a relative path from there."""
    def absolute(p):
        return None if p is None else Path(p).absolute()

    pending = [replace(s, path=absolute(s.path), files=tuple(absolute(f) for f in s.files),
                       mask=absolute(s.mask)) for s in pending]
    parcellation = opts.get("parcellation")
    if parcellation is not None:
        image = parcellation.atlas_image
        if isinstance(image, VolumeAtlas):
            image = replace(image, image=absolute(image.image))
        elif not isinstance(image.mesh, str):  # a pair of mesh files, not a bundled mesh's name
            image = replace(image, mesh=tuple(str(absolute(m)) for m in image.mesh))
        opts = {**opts, "parcellation": replace(parcellation, atlas_image=image)}
    return pending, build.absolute(), opts


@contextlib.contextmanager
def _parallel_backend(dask_scheduler: str | None, jobs: int):
    """joblib's process pool, or joblib's Dask backend on a cluster (``"local"``: a local one)."""
    if dask_scheduler is None:
        yield jobs
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise BrainLMInputError("the Dask backend needs dask.distributed: pip install "
                                "'brainlm[dask]'") from None
    from joblib import parallel_config

    n_local = os.cpu_count() if jobs == -1 else max(1, jobs)
    with contextlib.ExitStack() as stack:
        if dask_scheduler == "local":
            # The scheduler's HTTP server starts whatever the dashboard setting; ":0" puts it on a
            # free port (None would take 8787 and warn when another cluster holds it).
            cluster = stack.enter_context(LocalCluster(n_workers=n_local, threads_per_worker=1,
                                                       processes=True, dashboard_address=":0"))
            # The client, once entered, is what joblib's Dask backend submits to.
            stack.enter_context(Client(cluster))
        else:
            try:
                stack.enter_context(Client(dask_scheduler, timeout="30s"))
            except (OSError, TimeoutError) as e:
                raise BrainLMInputError(f"cannot reach the Dask scheduler ({e})", dask_scheduler) from None
        stack.enter_context(parallel_config(backend="dask"))
        yield -1


_WATCHING: set[int] = set()


def die_with_parent(parent_pid: int, interval_s: float = 0.2) -> None:
    """In a worker process started by ``parent_pid``: exit as soon as that parent is gone.

    A worker pool's processes outlive a parent killed with SIGKILL (or SIGTERM, which ends
    Python without cleanup): they would finish their recording, then sit idle holding their
    memory. A daemon thread checks every ``interval_s`` seconds whether the worker was handed
    to another parent (its own died) and ends the process then. Nothing happens in the parent
    itself (``jobs=1`` runs there) or in a worker that another process started (Dask).
    """
    if os.getpid() == parent_pid or parent_pid in _WATCHING or os.getppid() != parent_pid:
        return
    _WATCHING.add(parent_pid)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="brainlm-die-with-parent", daemon=True).start()


def _process_one(spec: SourceSpec, build: Path, atlas: Atlas, contract: PreprocessingContract,
                 opts: dict, layout: StoreLayout, parent_pid: int | None = None) -> dict:
    """Pass 1 for one recording, as one task of a worker (joblib or Dask): see :func:`_clean_and_store`.
    ``parent_pid``: the process that runs the build (a worker exits when it dies).

    Everything the task calls runs in the worker, one step after another. joblib would
    otherwise hand the joblib calls nested inside it (nilearn's maskers reduce each volume
    through ``Parallel``, whatever their ``n_jobs``) to the backend of the outer call: on a Dask
    cluster, each block of volumes would be shipped to the scheduler and back as hundreds of
    tiny tasks while the worker's own thread waits.
    """
    from joblib import parallel_config

    if parent_pid is not None:
        die_with_parent(parent_pid)
    with parallel_config(backend="sequential"):
        return _clean_and_store(spec, build, atlas, contract, opts, layout)


def _clean_and_store(spec: SourceSpec, build: Path, atlas: Atlas, contract: PreprocessingContract,
                     opts: dict, layout: StoreLayout) -> dict:
    """Read, validate and clean one recording; write its array, then its completion marker
    (atomically). Returns the marker's content (``status`` ok, skipped or failed)."""
    base = {"recording_id": spec.recording_id, "source": spec.label}
    extraction = None
    try:
        parcellation = opts.get("parcellation")
        if spec.kind != "table" and parcellation is not None:
            raw, extraction = parcellation.extract(spec.kind, spec.files, mask=spec.mask,
                                                   source=spec.label)
            rec = spec.to_recording(raw, atlas, header_tr=extraction.get("header_tr"))
        else:
            rec = spec.load(atlas, orientation=opts["orientation"], key=opts["key"])
        if not TR_RANGE_S[0] <= rec.tr <= TR_RANGE_S[1]:
            raise BrainLMInputError(f"TR {rec.tr:g} s is outside {TR_RANGE_S[0]:g}-{TR_RANGE_S[1]:g} s, "
                                    "not an fMRI repetition time (milliseconds given as seconds? "
                                    "--tr and RepetitionTime are in seconds)", spec.label)
        cleaned = contract.clean(rec.timeseries, rec.tr, confounds=rec.confounds,
                                 parcel_names=atlas.parcel_names, source=spec.label)
        _check_cleaned(cleaned, spec.label)
    except BrainLMInputError as e:
        if opts["on_error"] == "fail":
            raise
        return {**base, "status": "failed", "reason": str(e.reason)}
    n = cleaned.data.shape[0]
    marker = build / "done" / f"{spec.recording_id}.json"
    if n < opts["min_trs"]:
        reason = (f"too short: {n} TRs after preprocessing at TR {cleaned.tr} s; at least "
                  f"{opts['min_trs']} required (--min-trs)")
        if opts["too_short"] == "error":
            raise BrainLMInputError(reason, spec.label)
        result = {**base, "status": "skipped", "reason": reason}
        write_text_atomic(marker, json.dumps(result))
        return result
    import zarr


    group = zarr.open_group(build / "timeseries.zarr", mode="a")
    arr = group.create_array(spec.recording_id, shape=cleaned.data.shape, dtype="float32",
                             chunks=(min(layout.chunk_trs, n), cleaned.data.shape[1]),
                             compressors=layout.compressors(), overwrite=True)
    arr[:] = cleaned.data
    quartiles = recording_quartiles(cleaned.data)
    extrema = recording_extrema(cleaned.data)
    # The recording's own statistics travel with it: per-recording scaling of any window (a
    # training crop) uses the whole recording's median and IQR, min and max, or mean (whichever
    # normalization reads it; missing parcels stored as null).
    med, iqr = recording_scaling(cleaned.data, quartiles)
    arr.attrs.update({"median": med.tolist(), "iqr": iqr.tolist(),
                      "minimum": _nulls(extrema[0]), "maximum": _nulls(extrema[1]),
                      "mean": _nulls(recording_means(cleaned.data))})
    result = {**base, "status": "ok", "tr_source": rec.tr, "n_trs_source": rec.n_timepoints,
              "tr": cleaned.tr, "n_trs": n, "bad_parcels": cleaned.bad_parcels,
              "units": cleaned.units, "percent_signal_change": cleaned.percent_signal_change,
              "quartiles": quartiles.tolist(), "extrema": extrema.tolist()}
    if extraction is not None:
        result["extraction"] = extraction
    write_text_atomic(marker, json.dumps(result))
    return result


class ScaleOutlierWarning(UserWarning):
    """A training recording whose spread is far from the cohort's (other units, a broken export),
    or a validation/test recording so far from the training recordings' that was dropped."""


#: A training recording is a scale outlier when its parcels' IQRs are, at the median over
#: parcels, more than this factor from the cohort's (another unit), or any parcel's is more than
#: ``SCALE_OUTLIER_PARCEL`` times the cohort's (a few corrupted parcels).
SCALE_OUTLIER_FACTOR = 20.0
SCALE_OUTLIER_PARCEL = 1000.0


def _iqrs(quartiles: dict[str, np.ndarray]) -> np.ndarray:
    """Per-parcel IQRs of recordings, (R, P) float64, from their quartiles (recording id ->
    (3, P))."""
    q = np.stack(list(quartiles.values())).astype(np.float64)
    return q[:, 2] - q[:, 0]


def _scale_reasons(ids: list[str], iqr: np.ndarray, cohort: np.ndarray, whose: str) -> dict[str, str]:
    """Recordings (``iqr``, (R, P)) whose IQRs are off the ``cohort``'s (P,) by more than the
    scale-outlier factors: recording id -> why (``whose`` names the cohort in the reason)."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN parcels (missing everywhere)
        ratio = iqr / np.where(cohort > 0, cohort, np.nan)
        typical = np.nanmedian(ratio, axis=1)
        worst = np.nanmax(np.where(np.isfinite(ratio), ratio, np.nan), axis=1)
    found = {}
    for rid, t, w in zip(ids, typical, worst):
        if np.isfinite(t) and not 1 / SCALE_OUTLIER_FACTOR <= t <= SCALE_OUTLIER_FACTOR:
            found[rid] = f"its IQRs are {t:.3g} times {whose} (median over parcels)"
        elif np.isfinite(w) and w > SCALE_OUTLIER_PARCEL:
            found[rid] = f"a parcel's IQR is {w:.3g} times {whose}"
    return found


def _median_iqr(iqr: np.ndarray) -> np.ndarray:
    """The cohort's IQR per parcel: the median over recordings (NaN where missing everywhere)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(iqr, axis=0)


def scale_outliers(train_quartiles: dict[str, np.ndarray]) -> dict[str, str]:
    """Training recordings whose scale is an outlier against the cohort: recording id -> why.

    ``train_quartiles`` maps recording ids to per-parcel 25th/50th/75th percentiles, shape
    (3, P). Each recording's IQR per parcel is divided by the cohort's median IQR of that parcel
    (over recordings); see :data:`SCALE_OUTLIER_FACTOR`. Needs 3 or more recordings (with 2,
    neither is the odd one out)."""
    if len(train_quartiles) < 3:
        return {}
    iqr = _iqrs(train_quartiles)
    return _scale_reasons(list(train_quartiles), iqr, _median_iqr(iqr), "the cohort's")


def held_out_scale_outliers(train_quartiles: dict[str, np.ndarray], held_out_quartiles: dict[str, np.ndarray],
                            exclude=()) -> dict[str, str]:
    """Validation and test recordings whose scale is an outlier against the training recordings
    (those not in ``exclude``, the training outliers): recording id -> why.

    Both map recording ids to quartiles (3, P). The factors are those of :func:`scale_outliers`,
    against the median IQR of the training recordings; one training recording is reference
    enough, since a held-out recording is scaled by the statistics of the training split
    whatever their number."""
    reference = {rid: q for rid, q in train_quartiles.items() if rid not in exclude}
    if not reference or not held_out_quartiles:
        return {}
    return _scale_reasons(list(held_out_quartiles), _iqrs(held_out_quartiles), _median_iqr(_iqrs(reference)),
                          "the training recordings'")


def _scale_outliers_of_build(records: list[dict], train_quartiles: dict[str, np.ndarray],
                             held_out_quartiles: dict[str, np.ndarray], drop: bool, *, skip_held_out: bool,
                             fitted_here: bool, pooled: bool, split_of_id: dict[str, str]
                             ) -> tuple[dict[str, str], list[dict], list[dict], list[dict]]:
    """The scale outliers of a build, and what becomes of them.

    A training recording on another scale (other units, a broken export) would dominate the
    pooled statistics and squeeze every other recording: it is reported (a warning) and left out
    of the fit. A validation or test recording is never in the fit but is scaled by it: on another
    scale its scaled values would be off by that factor, so it is an error (with pooled statistics
    fitted here; per-recording scaling does not depend on units), or skipped with
    ``skip_held_out`` (``on_error="skip"``). With ``drop`` both are left out of the corpus.

    Returns
    -------
    training outliers (id -> why), their records for ``corpus.json``, the records kept, and the
    records dropped (for ``skipped.parquet``).
    """
    outliers = scale_outliers(train_quartiles)
    outlier_records = _report_scale_outliers(outliers, drop, fitted_here=fitted_here)
    held_out = (held_out_scale_outliers(train_quartiles, held_out_quartiles, exclude=outliers)
                if fitted_here and pooled else {})
    if held_out and not (drop or skip_held_out):
        _refuse_held_out_outliers(held_out, records, split_of_id)
    outlier_records += _report_scale_outliers(held_out, True, held_out=True)
    option = "--drop-scale-outliers" if drop else "--on-error skip"
    gone = {**(outliers if drop else {}), **held_out}
    dropped = [{"recording_id": r["recording_id"], "source": r["source"],
                "reason": f"scale outlier: {gone[r['recording_id']]} ({option})"}
               for r in records if r["recording_id"] in gone]
    return outliers, outlier_records, [r for r in records if r["recording_id"] not in gone], dropped


_SPLIT_NAMES = {"val": "validation", "test": "test", "train": "training"}


def _refuse_held_out_outliers(found: dict[str, str], records: list[dict], split_of_id: dict[str, str]) -> None:
    """The error for validation/test recordings on another scale (:func:`held_out_scale_outliers`),
    naming the first one's file, why, and what to do."""
    source = {r["recording_id"]: r["source"] for r in records}
    rid, why = next(iter(found.items()))
    others = list(found)[1:]
    more = (f" ({len(others)} more: {', '.join(others[:3])}{' ...' if len(others) > 3 else ''})"
            if others else "")
    raise BrainLMInputError(
        f"a {_SPLIT_NAMES[split_of_id[rid]]} recording on another scale than the training recordings: "
        f"{why}{more}. It is scaled by the training split's statistics, so its values would be off by that "
        f"factor; expected the units and cleaning of the training recordings (IQRs within "
        f"{SCALE_OUTLIER_FACTOR:g} times theirs, and no parcel's beyond {SCALE_OUTLIER_PARCEL:g} times). "
        "Rescale it, or re-run with --drop-scale-outliers (or --on-error skip) to leave it out", source[rid])


def _report_scale_outliers(outliers: dict[str, str], drop: bool, fitted_here: bool = True,
                           held_out: bool = False) -> list[dict]:
    """Warn once for the scale outliers; their records for ``corpus.json``. ``fitted_here``:
    whether the statistics are fitted on this cohort (not taken from a checkpoint);
    ``held_out``: validation/test recordings (only ever dropped)."""
    if not outliers:
        return []
    kept = ("kept, but left out of the scaling statistics" if fitted_here
            else "kept (the scaling statistics are the checkpoint's)")
    action = "dropped (--drop-scale-outliers)" if drop else f"{kept}; --drop-scale-outliers drops them"
    shown = ", ".join(f"{rid} ({why})" for rid, why in list(outliers.items())[:3])
    who = ("validation/test recording(s) on another scale than the training recordings" if held_out
           else "training recording(s) on another scale than the cohort")
    warnings.warn(f"{len(outliers)} {who}: {shown}"
                  f"{' ...' if len(outliers) > 3 else ''}; {action}", ScaleOutlierWarning, stacklevel=4)
    return [{"recording_id": rid, "reason": why,
             "action": "dropped" if drop else ("excluded from the scaling fit" if fitted_here else "kept")}
            for rid, why in outliers.items()]


def _units_record(records: list[dict]) -> dict:
    """The input units of the prepared recordings (``corpus.json`` -> ``input_units``): counts of
    ``raw`` and ``centred`` recordings, the contract's ``units`` and how many recordings had
    percent signal change bridged by per-recording scaling."""
    counts = {"raw": 0, "centred": 0}
    bridged = 0
    for r in records:
        u = r.get("units")
        if u in counts:
            counts[u] += 1
        if u == "centred" and r.get("percent_signal_change") is False:
            bridged += 1
    present = [u for u, n in counts.items() if n]
    units = present[0] if len(present) == 1 else ("mixed" if present else None)
    return {"units": units, "recordings": counts, "percent_signal_change_bridged": bridged}


def _contract_like(like: ReferenceContract, contract: PreprocessingContract | None) -> PreprocessingContract:
    """The cleaning, scaling mode and normalization of ``like``; a ``contract`` also given must
    agree."""
    if not isinstance(like, ReferenceContract):
        raise BrainLMInputError(f"like is a {type(like).__name__}; expected a ReferenceContract "
                                "(a checkpoint's contract and atlas)")
    mine = PreprocessingContract.from_dict({**like.contract.cleaning(), **like.contract.scaling_settings()})
    if contract is not None:
        theirs = {**contract.cleaning(), **contract.scaling_settings()}
        ref = {**mine.cleaning(), **mine.scaling_settings()}
        differ = [k for k in ref if ref[k] != theirs[k]]
        if differ:
            raise BrainLMInputError(
                "the cleaning settings come from the checkpoint with --like; drop the option(s) "
                "that change them (" + ", ".join(f"{k}: {theirs[k]!r} vs the checkpoint's {ref[k]!r}"
                                                for k in differ) + ")", like.name)
    return mine


class LikeTRWarning(UserWarning):
    """A cohort prepared like a checkpoint whose contract does not fix the TR (no target TR)."""


class EmptySplitWarning(UserWarning):
    """A split that was asked for (a fraction above 0) holds no recording: too few subjects."""


def _empty_split_warnings(manifest: pd.DataFrame, fractions: Sequence[float]) -> list[str]:
    """Warn (and return the messages, recorded in ``corpus.json``) for every split with a
    fraction above 0 that received no recording."""
    messages = []
    counts = manifest["split"].value_counts()
    for name, fraction in zip(("train", "val", "test"), fractions):
        if float(fraction) > 0 and int(counts.get(name, 0)) == 0:
            msg = (f"split {name!r} is empty: {manifest['subject'].nunique()} subject(s) cannot fill "
                   f"splits {list(map(float, fractions))}; validation and testing need more subjects "
                   "(or --splits with 0 for that split)")
            warnings.warn(msg, EmptySplitWarning, stacklevel=3)
            messages.append(msg)
    return messages


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_cleaned(cleaned, source: str) -> None:
    """A recording with no usable parcel, or values that float32 storage would turn into
    infinities, is an error (the ``--on-error`` policy decides: stop, or skip and report)."""
    data = cleaned.data
    n_parcels = data.shape[1]
    if len(cleaned.bad_parcels) >= n_parcels:
        raise BrainLMInputError(f"all {n_parcels} parcels are NaN/Inf or constant: the recording "
                                "holds no signal", source)
    good = np.setdiff1d(np.arange(n_parcels), np.asarray(cleaned.bad_parcels, dtype=int))
    values = np.asarray(data[:, good], dtype=np.float64)
    if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) > _FLOAT32_MAX:
        raise BrainLMInputError("values after cleaning exceed the float32 range (|x| > 3.4e38) and "
                                "would be stored as infinities; rescale the input", source)


def _ingestion_record(parcellation, records: list[dict], space, res) -> dict:
    """What turned scans into parcel series (``corpus.json`` -> ``ingestion``); warns once per
    distinct note (e.g. the atlas was resampled to the data grid)."""
    notes: dict[str, int] = {}
    for r in records:
        for note in r.get("extraction", {}).get("notes", []):
            notes[note] = notes.get(note, 0) + 1
    for note, n in notes.items():
        warnings.warn(f"{note} ({n} scan{'s' if n > 1 else ''})", AtlasResampledWarning, stacklevel=3)
    ext = [r.get("extraction", {}) for r in records]
    return {**parcellation.to_dict(), "space": space, "res": res,
            "scans": len(records),
            "censored_volumes": int(sum(e.get("censored_volumes", 0) for e in ext)),
            "interpolated_volumes": int(sum(e.get("interpolated_volumes", 0) for e in ext)),
            "trimmed_volumes": int(sum(e.get("trimmed_volumes", 0) for e in ext)),
            "notes": [f"{k} ({v} scans)" for k, v in notes.items()]}


def _ingestion_table(records: list[dict]) -> pd.DataFrame:
    """One row per prepared scan: volumes, confound regressors, censoring, empty parcels."""
    rows = []
    for r in sorted(records, key=lambda r: r["recording_id"]):
        e = r.get("extraction", {})
        rows.append({"recording_id": r["recording_id"], "source": r["source"],
                     "volumes": e.get("volumes"), "brain_mask": e.get("brain_mask"),
                     "confound_regressors": e.get("confound_regressors", 0),
                     "censored_volumes": e.get("censored_volumes", 0),
                     "interpolated_volumes": e.get("interpolated_volumes", 0),
                     "trimmed_volumes": e.get("trimmed_volumes", 0),
                     "empty_parcels": list(e.get("empty_parcels", []))})
    return pd.DataFrame(rows)


def _manifest(records, spec_by_id, groups_of, split_of, phenotype_columns) -> pd.DataFrame:
    rows = []
    for r in records:
        s = spec_by_id[r["recording_id"]]
        row: dict[str, Any] = {
            "recording_id": r["recording_id"], "subject": s.subject, "session": s.session,
            "task": s.task, "run": s.run, "site": s.site, "split": split_of[groups_of[r["recording_id"]]],
            "source": r["source"], "tr_source": float(r["tr_source"]), "n_trs_source": int(r["n_trs_source"]),
            "tr": float(r["tr"]), "n_trs": int(r["n_trs"]), "bad_parcels": list(r["bad_parcels"]),
        }
        for c in phenotype_columns:
            name = c if c not in MANIFEST_COLUMNS else f"phenotype_{c}"
            row[name] = s.phenotypes.get(c)
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.sort_values("recording_id", kind="stable").reset_index(drop=True)


def _nulls(v: np.ndarray) -> list:
    """A float vector as a JSON-ready list, NaN (a missing parcel) as None."""
    return [None if not np.isfinite(x) else float(x) for x in v]


def _fit_scaler(build: Path, train: pd.DataFrame, train_range: QuartileRange, atlas: Atlas,
                contract: PreprocessingContract, jobs: int,
                train_extrema: dict[str, np.ndarray] | None = None) -> PreprocessingContract:
    """Pooled per-parcel statistics of the contract's normalization over the training
    recordings (module docstring): median and IQR from histograms, min and max from each
    recording's extrema (``train_extrema``, recording id -> (2, P); a recording without them is
    read again), none for ``"demean"`` (per recording only)."""
    fitted = PreprocessingContract.from_dict(contract.to_dict())
    ids = train["recording_id"].tolist()
    fit = {"split": "train", "recordings": len(ids), "timepoints": int(train["n_trs"].sum()),
           "normalization": contract.normalization}
    if contract.normalization == "demean":
        fitted.median = fitted.iqr = None
        fitted.scaler_fit = {**fit, "method": "none: demeaning is per recording (each recording's own "
                                               "per-parcel mean, spread 1)"}
        return fitted
    if contract.normalization == "robust":
        from joblib import Parallel, delayed

        hist = train_range.histogram()
        n_parts = max(1, min(len(ids), os.cpu_count() if jobs == -1 else jobs))
        parts = [ids[k::n_parts] for k in range(n_parts)]
        for counts in Parallel(n_jobs=n_parts)(delayed(_histogram_part)(build, part, hist, os.getpid())
                                               for part in parts):
            hist.counts += counts
        med, iqr, degenerate = scaling_from_quartiles(*hist.quantiles())
        method = f"pooled quartiles from a {hist.n_bins}-bin histogram per parcel"
        policy = "no variance in the training split: median 0 if unobserved, IQR 1"
    else:
        import zarr

        pooled = ExtremaRange()
        known = train_extrema or {}
        # A build resumed from before extrema were recorded reads those recordings again.
        group = None if set(ids) <= set(known) else zarr.open_group(build / "timeseries.zarr", mode="r")
        for rid in ids:
            pooled.add(known[rid] if rid in known else recording_extrema(group[rid][:]))
        med, iqr, degenerate = normalization_statistics(contract.normalization, extrema=pooled.extrema)
        method = ("pooled min and max " + ("per parcel" if contract.normalization == "minmax" else
                                           "over all parcels") + ", from each recording's extrema")
        policy = ("max equal to min in the training split: spread 1 (left unscaled, as upstream does), "
                  "min 0 if unobserved")
    fitted.median = [float(v) for v in med]
    fitted.iqr = [float(v) for v in iqr]
    fitted.scaler_fit = {
        **fit, "method": method,
        "degenerate_parcels": [atlas.parcel_names[i] for i in np.flatnonzero(degenerate)],
        "degenerate_policy": policy,
    }
    return fitted


def _histogram_part(build: Path, ids: list[str], template: QuartileHistogram,
                    parent_pid: int | None = None) -> np.ndarray:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    import zarr

    group = zarr.open_group(build / "timeseries.zarr", mode="r")
    hist = QuartileHistogram(template.lo, template.hi, template.n_bins)
    for rid in ids:
        hist.add(group[rid][:])
    return hist.counts


def _remove_orphan_arrays(build: Path, keep: set[str]) -> None:
    store = build / "timeseries.zarr"
    for child in store.iterdir():
        if child.is_dir() and child.name not in keep:
            shutil.rmtree(child)
