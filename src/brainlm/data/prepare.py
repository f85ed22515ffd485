"""``brainlm prepare``: sources -> a corpus on disk, in named phases.

:func:`prepare_corpus` runs these, each a function that can be read (and tested) on its own:

1. **resolve** (:func:`resolve_settings`): a checkpoint's contract and atlas (``like``) and the
   default fractions applied to the :class:`~brainlm.data.prepare_settings.PrepareSettings`;
2. **discover** (:func:`discover`): the recordings of the sources, the atlas (or the atlas
   image's parcellation and confound strategy) and the phenotypes;
3. **split** (:func:`split_recordings`): subjects (or sites) to train, val and test;
4. **pass 1** (:func:`pass_one`, parallel over recordings): read, validate, clean and resample
   each recording (steps 1-5 of the preprocessing contract) and write it to the chunked store,
   with a small completion marker per recording, so an interrupted run resumes where it stopped;
5. **outliers** (:func:`brainlm.data.scale_outliers.screen_scale_outliers`): recordings on
   another scale than the cohort, left out of the fit (or of the corpus);
6. **scaler fit** (:func:`fit_cohort_statistics`, parallel): pool the scaling statistics of the
   contract's normalization over the training split only (over every recording for an
   evaluation-only cohort, or none at all when they come from a checkpoint: ``like``): robust
   quartiles from a streaming histogram, min-max from each recording's extrema (no second pass
   over the data), none for per-recording demeaning. Each recording's own statistics are stored
   with it (per-recording scaling);
7. **publish** (:func:`publish`): the manifest, atlas, contract and, last, ``corpus.json`` are
   written and the build folder ``CORPUS.partial`` is renamed to ``CORPUS``: a corpus that looks
   complete is complete.

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
from brainlm.data.prepare_settings import (COMPRESSIONS, ON_ERROR_POLICIES, SPLIT_BY,
                                           TOO_SHORT_POLICIES, CleaningSettings, ExecutionSettings, PrepareSettings,
                                           ReadingSettings, SplitSettings, StoreLayout)
from brainlm.data.progress import ProgressBar
from brainlm.data.recording import Recording
from brainlm.data.scale_outliers import (SCALE_OUTLIER_FACTOR, SCALE_OUTLIER_PARCEL,
                                         ScaleOutlierWarning, ScreenedRecordings, held_out_scale_outliers,
                                         scale_outliers, screen_scale_outliers)
from brainlm.data.scaler_fit import fit_pooled_statistics
from brainlm.data.scaling import (NORMALIZATION_FORMULAS, recording_extrema, recording_means, recording_quartiles,
                                  recording_scaling)
from brainlm.data.sources import (SourceSpec, attach_phenotypes, check_unique_ids, discover_files,
                                  specs_from_files, specs_from_recordings, specs_from_scans)
from brainlm.data.splits import assign_splits, explicit_splits
from brainlm.data.surfaces import SurfaceAtlas
from brainlm.data.volumes import AtlasResampledWarning, VolumeAtlas
from brainlm.data.worker_processes import die_with_parent
from brainlm.errors import BrainLMInputError
from brainlm.version import __version__


__all__ = [
    "prepare_corpus", "PrepareSettings", "ReadingSettings", "CleaningSettings", "SplitSettings",
    "ExecutionSettings", "StoreLayout", "TOO_SHORT_POLICIES", "ON_ERROR_POLICIES", "SPLIT_BY", "COMPRESSIONS",
    "resolve_settings", "check_folders", "discover", "split_recordings", "pass_one", "read_markers",
    "fit_cohort_statistics", "publish", "ResolvedSettings", "Discovery", "SplitPlan", "PassOne", "Prepared",
    "ScaleOutlierWarning", "SCALE_OUTLIER_FACTOR", "SCALE_OUTLIER_PARCEL", "scale_outliers",
    "held_out_scale_outliers", "LikeTRWarning", "EmptySplitWarning", "die_with_parent", "restart_hint_needed",
]


def prepare_corpus(sources: Sequence[str | Path | Recording], out: str | Path,
                   settings: PrepareSettings | None = None) -> Corpus:
    """Build a corpus from files/folders and/or in-memory Recordings.

    Parameters
    ----------
    sources : sequence of path or Recording
        Time-series files, folders (searched recursively; a ``participants.tsv`` at the top of a
        folder is used when no participants table is given) or Recordings. With an atlas image:
        scans or folders of scans (an fMRIPrep derivatives folder: ``*_desc-preproc_bold.nii.gz``,
        ``*_hemi-L/R_*_bold.func.gii``, ``*_bold.dtseries.nii``; the raw dataset's
        ``participants.tsv`` is used for ``<dataset>/derivatives/<pipeline>``).
    out : path
        Corpus folder to create (local disk).
    settings : PrepareSettings, optional
        Reading, cleaning, splits and execution, and an optional checkpoint to prepare like
        (default: ``PrepareSettings()``, which needs an atlas: ``PrepareSettings.of(atlas=...)``).
        See :mod:`brainlm.data.prepare_settings` for every option.

    Returns
    -------
    Corpus
    """
    settings = PrepareSettings() if settings is None else settings
    if not isinstance(settings, PrepareSettings):
        raise BrainLMInputError(f"settings is a {type(settings).__name__}; expected a PrepareSettings "
                                "(PrepareSettings.of(atlas=..., ...))")
    resolved = resolve_settings(settings)
    out = Path(out)
    inputs = check_folders(sources, out, settings)
    found = discover(sources, settings.reading, settings.cleaning, resolved)
    plan = split_recordings(found.specs, settings.splits, resolved.fractions)
    build = out.with_name(out.name + ".partial")
    passed = pass_one(build, found, plan, resolved.contract, settings)

    like = settings.like
    like_contract, from_checkpoint = like.contract_for(found.atlas) if like is not None else (None, False)
    screened = screen_scale_outliers(
        passed.records, passed.train_quartiles, passed.held_out_quartiles, settings.cleaning.drop_scale_outliers,
        skip_held_out=settings.cleaning.on_error == "skip", fitted_here=not from_checkpoint,
        pooled=not resolved.contract.per_recording, split_of_id=plan.split_of_id(found.specs))
    # Only the range of the training quartiles is needed from here on: the per-recording
    # quartiles (R x 3 x P) are let go, as they grow with the cohort.
    passed.train_quartiles.clear()
    passed.held_out_quartiles.clear()
    skipped = passed.skipped + screened.dropped
    out_tr = _check_prepared(screened.records, skipped, out)
    manifest = _manifest(screened.records, {s.recording_id: s for s in found.specs},
                         groups_of=dict(zip((s.recording_id for s in found.specs), plan.groups)),
                         split_of=plan.split_of, phenotype_columns=found.phenotype_columns)
    corpus_warnings = _corpus_warnings(manifest, plan.fractions, like, out_tr)
    if from_checkpoint:
        fitted = _checkpoint_statistics(like, like_contract)
    else:
        fitted = fit_cohort_statistics(build, out, manifest, screened, passed, found.atlas, resolved.contract,
                                       settings)
    units = _settle_contract(fitted, screened.records, found.atlas, out)
    prepared = Prepared(manifest=manifest, skipped=skipped, records=screened.records, atlas=found.atlas,
                        fitted=fitted, units=units, tr=out_tr, split=plan, warnings=corpus_warnings,
                        outlier_records=screened.outlier_records, parcellation=found.parcellation,
                        statistics_from_checkpoint=from_checkpoint)
    return publish(build, out, inputs, prepared, settings)


# -- phase 1: resolve ----------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedSettings:
    """The settings with ``like`` applied.

    Attributes
    ----------
    contract : PreprocessingContract
        The cleaning settings and scaling mode (the checkpoint's with ``like``).
    atlas : Atlas or None
        The atlas of parcellated time series (the checkpoint's when none is given with
        ``like``); None for scans, whose atlas comes from the atlas image.
    fractions : sequence of 3 floats
        Train/val/test fractions (default ``(0.8, 0.1, 0.1)``; ``(0, 0, 1)`` with ``like``).
    """

    contract: PreprocessingContract
    atlas: Atlas | None
    fractions: Sequence[float]


def resolve_settings(settings: PrepareSettings) -> ResolvedSettings:
    """Apply ``settings.like`` (a checkpoint's contract, and its atlas when neither an atlas nor
    an atlas image is given) and the default contract and fractions."""
    like, contract, atlas = settings.like, settings.cleaning.contract, settings.reading.atlas
    if like is not None:
        contract = _contract_like(like, contract)
        if atlas is None and settings.reading.atlas_image is None:
            if like.atlas is None:
                raise BrainLMInputError("the checkpoint has no atlas (atlas.json); pass --atlas",
                                        like.name)
            atlas = like.atlas
    contract = contract or PreprocessingContract()
    fractions = settings.splits.fractions
    if fractions is None:
        fractions = (0.0, 0.0, 1.0) if like is not None else (0.8, 0.1, 0.1)
    return ResolvedSettings(contract=contract, atlas=atlas, fractions=fractions)


def check_folders(sources: Sequence, out: Path, settings: PrepareSettings) -> list:
    """Refuse an ``out`` that exists (unless ``overwrite``) or that is, or holds, one of the
    inputs; the same for its build folder ``out.partial``. Returns the inputs, checked again
    just before the corpus is published."""
    # The inputs this build reads: the corpus, and its unfinished build, may be none of them.
    reading = settings.reading
    inputs = [*sources, *(x for x in (reading.participants, reading.atlas_image)
                          if isinstance(x, (str, os.PathLike)))]
    if settings.like is not None and settings.like.path is not None:
        inputs.append(settings.like.path)
    check_output_folder(out, overwrite=settings.execution.overwrite, sources=inputs, kind="corpus")
    check_not_an_input(out.with_name(out.name + ".partial"), inputs)
    return inputs


# -- phase 2: discover ---------------------------------------------------------------------
@dataclass
class Discovery:
    """The recordings to prepare and what they are read with.

    Attributes
    ----------
    specs : list of SourceSpec
        One per recording (file, scan or in-memory Recording), phenotypes attached.
    atlas : Atlas
        The parcellation of the corpus (an atlas image's, for scans).
    parcellation : ImageParcellation or None
        How scans are parcellated and denoised (None for parcellated time series).
    phenotype_columns : list of str
        The phenotype columns of the manifest.
    """

    specs: list[SourceSpec]
    atlas: Atlas
    parcellation: ImageParcellation | None
    phenotype_columns: list[str]


def discover(sources: Sequence, reading: ReadingSettings, cleaning: CleaningSettings,
             resolved: ResolvedSettings) -> Discovery:
    """Find the recordings of ``sources``, settle the atlas (or the atlas image's parcellation
    and its confound strategy), join the phenotypes and check ids and TRs."""
    atlas, contract = resolved.atlas, resolved.contract
    parcellation = None
    if reading.atlas_image is not None:
        parcellation = _image_parcellation(atlas, reading.atlas_image, reading.atlas_labels, reading.surface_mesh,
                                           reading.read_volumes, contract)
        atlas = parcellation.atlas
    elif atlas is None:
        raise BrainLMInputError("no atlas: pass atlas (--atlas) for parcellated time series, or "
                                "atlas_image (--atlas-image) for NIfTI/GIfTI/CIFTI scans")
    elif reading.surface_mesh is not None or reading.atlas_labels is not None:
        raise BrainLMInputError("atlas_labels and surface_mesh apply only with an atlas image "
                                "(--atlas-image)")

    specs, participants_path = _collect_specs(sources, reading.tr, parcellation, reading.space, reading.res)
    if parcellation is not None:
        parcellation = _with_confounds(parcellation, cleaning.confounds, cleaning.confound_options,
                                       cleaning.max_censored, specs)
    elif cleaning.confounds not in ("auto", "none", None):
        raise BrainLMInputError("a confound strategy applies to scans parcellated with an atlas "
                                "image (--atlas-image); parcellated tables are denoised by the "
                                "contract's confounds")
    participants = reading.participants or participants_path
    phenotype_columns: list[str] = []
    if participants is not None:
        phenotype_columns = attach_phenotypes(specs, Path(participants), id_column=reading.id_column,
                                              allow_missing=reading.allow_missing_phenotypes)
    else:
        phenotype_columns = sorted({k for s in specs for k in s.phenotypes})
    check_unique_ids(specs)
    known_trs = {round(s.tr, 6) for s in specs if s.tr is not None}
    if contract.target_tr is None and len(known_trs) > 1:
        raise BrainLMInputError(
            f"recordings have different TRs {sorted(known_trs)} s; pass --target-tr to resample "
            "them onto one grid")
    return Discovery(specs=specs, atlas=atlas, parcellation=parcellation, phenotype_columns=phenotype_columns)


# -- phase 3: split ------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitPlan:
    """The split of every recording.

    Attributes
    ----------
    groups : list of str
        The split unit of each recording, in the order of the specs: ``SITE/SUBJECT`` (or
        ``SUBJECT`` without a site), or the site with ``split_by="site"``.
    split_of : dict
        Split unit -> ``"train"``, ``"val"`` or ``"test"``.
    fractions : sequence of 3 floats
        The fractions recorded in ``corpus.json`` (those of explicit assignments, when given).
    assigned : bool
        Whether the splits were given explicitly (``split_assignments``).
    """

    groups: list[str]
    split_of: dict[str, str]
    fractions: Sequence[float]
    assigned: bool = False

    def split_of_id(self, specs: Sequence[SourceSpec]) -> dict[str, str]:
        """Recording id -> split, for the specs the groups were made from."""
        return {s.recording_id: self.split_of[g] for s, g in zip(specs, self.groups)}


def split_recordings(specs: Sequence[SourceSpec], splits: SplitSettings, fractions: Sequence[float]) -> SplitPlan:
    """Assign the split units of ``specs`` (subjects keyed by site, or sites) to train, val and
    test: by ``splits.split_assignments`` when given, else at random by ``fractions`` (seeded
    with ``splits.split_seed``)."""
    groups = _split_groups(specs, splits.split_by)
    if splits.split_assignments is not None:
        split_of = explicit_splits(groups, splits.split_assignments)
        counts = pd.Series(list(split_of.values())).value_counts()
        fractions = [float(counts.get(name, 0)) / len(split_of) for name in ("train", "val", "test")]
    else:
        split_of = assign_splits(groups, fractions, seed=splits.split_seed)
    return SplitPlan(groups=groups, split_of=split_of, fractions=fractions,
                     assigned=splits.split_assignments is not None)


# -- phase 4: pass 1 -----------------------------------------------------------------------
@dataclass
class PassOne:
    """What pass 1 left in the build's completion markers.

    Attributes
    ----------
    records : list of dict
        The markers of the recordings prepared (status ``ok``), in the order of the specs,
        without their quartiles and extrema.
    skipped : list of dict
        Recordings skipped (too short) or failed (``on_error="skip"``): id, source, reason.
    train_quartiles, held_out_quartiles : dict
        Recording id -> per-parcel quartiles (3, P) float32 of the recordings the statistics
        are fitted on, and of the others (validation and test).
    train_extrema : dict
        Recording id -> per-parcel min and max (2, P) float64 of the recordings of the fit.
    fit_on_all : bool
        No subject is in train (an evaluation-only cohort): the fit pools every recording.
    """

    records: list[dict]
    skipped: list[dict]
    train_quartiles: dict[str, np.ndarray]
    train_extrema: dict[str, np.ndarray]
    held_out_quartiles: dict[str, np.ndarray]
    fit_on_all: bool


def pass_one(build: Path, found: Discovery, plan: SplitPlan, contract: PreprocessingContract,
             settings: PrepareSettings) -> PassOne:
    """Open (or resume) the build folder and clean every recording without a completion marker
    into its chunked store; then read every marker back (:func:`read_markers`)."""
    reading, cleaning, execution = settings.reading, settings.cleaning, settings.execution
    _open_build(build, _build_settings(found, contract, settings), execution.restart)
    done_dir = build / "done"
    pending = [s for s in found.specs if not (done_dir / f"{s.recording_id}.json").exists()]
    opts = dict(orientation=reading.orientation, key=reading.key, min_trs=int(cleaning.min_trs),
                too_short=cleaning.too_short, on_error=cleaning.on_error, parcellation=found.parcellation)
    try:
        results = _run_pass1(pending, build, found.atlas, contract, opts, execution.layout, execution.jobs,
                             execution.progress, execution.dask_scheduler)
    except BrainLMInputError as e:
        # The unfinished build stays for a resume with the same settings; a fix that changes a
        # setting (such as the one the message suggests) must say that it needs --restart.
        if restart_hint_needed(e.reason):
            raise BrainLMInputError(f"{e.reason}; a re-run with changed settings needs --restart "
                                    f"(it discards the unfinished build {build.name})", e.source) from None
        raise
    passed = read_markers(done_dir, found.specs, plan)
    passed.skipped += [r for r in results if r["status"] == "failed"]
    return passed


def _build_settings(found: Discovery, contract: PreprocessingContract, settings: PrepareSettings) -> dict:
    """The settings a resumed build must share (``BUILD/settings.json``)."""
    reading, cleaning = settings.reading, settings.cleaning
    out = {
        "contract": {k: v for k, v in contract.to_dict().items() if k not in ("median", "iqr", "scaler_fit")},
        "atlas": found.atlas.to_dict(), "orientation": reading.orientation, "key": reading.key, "tr": reading.tr,
        "min_trs": int(cleaning.min_trs), "too_short": cleaning.too_short, "layout": asdict(settings.execution.layout),
    }
    if found.parcellation is not None:
        # How many volumes are read at a time does not change the result: free to change on resume.
        out["extraction"] = {k: v for k, v in found.parcellation.to_dict().items() if k != "read_volumes"}
    return out


def read_markers(done_dir: Path, specs: Sequence[SourceSpec], plan: SplitPlan) -> PassOne:
    """The completion markers of ``specs`` in ``done_dir``, sorted into prepared and skipped
    recordings, with the statistics the outlier and scaler-fit phases need (:class:`PassOne`)."""
    records, skipped = [], []
    # The pooled statistics come from the training split; an evaluation-only cohort (no subject
    # in train) pools over all its recordings, and says so in the contract.
    fit_on_all = "train" not in set(plan.split_of.values())
    train_quartiles: dict[str, np.ndarray] = {}  # (3, P) float32 per recording of the fit
    train_extrema: dict[str, np.ndarray] = {}  # (2, P) float64 per recording of the fit
    held_out_quartiles: dict[str, np.ndarray] = {}  # (3, P) of validation and test recordings
    for s, group in zip(specs, plan.groups):
        marker = done_dir / f"{s.recording_id}.json"
        if marker.exists():
            r = json.loads(marker.read_text())
            quartiles = r.pop("quartiles", None)
            extrema = r.pop("extrema", None)
            if r["status"] == "ok" and (fit_on_all or plan.split_of[group] == "train"):
                train_quartiles[r["recording_id"]] = np.asarray(quartiles, dtype=np.float32)
                if extrema is not None:
                    train_extrema[r["recording_id"]] = np.asarray(extrema, dtype=np.float64)
            elif r["status"] == "ok":
                held_out_quartiles[r["recording_id"]] = np.asarray(quartiles, dtype=np.float32)
            (records if r["status"] == "ok" else skipped).append(r)
    return PassOne(records=records, skipped=skipped, train_quartiles=train_quartiles, train_extrema=train_extrema,
                   held_out_quartiles=held_out_quartiles, fit_on_all=fit_on_all)


# -- after the outliers: what was prepared -------------------------------------------------
def _check_prepared(records: list[dict], skipped: list[dict], out: Path) -> float:
    """The one TR of the prepared recordings; an error when none was prepared, or when their TRs
    differ."""
    if not records:
        raise BrainLMInputError(
            f"no recording could be prepared ({len(skipped)} skipped; first reason: "
            f"{skipped[0]['reason'] if skipped else 'none'})", str(out))
    out_trs = {round(r["tr"], 6) for r in records}
    if len(out_trs) > 1:
        raise BrainLMInputError(
            f"recordings have different TRs {sorted(out_trs)} s; pass --target-tr to resample "
            "them onto one grid", str(out))
    return next(iter(out_trs))


def _corpus_warnings(manifest: pd.DataFrame, fractions: Sequence[float], like: ReferenceContract | None,
                     tr: float) -> list[str]:
    """Warn for empty splits and for a checkpoint without a target TR; the messages, for
    ``corpus.json``."""
    corpus_warnings = _empty_split_warnings(manifest, fractions)
    if like is not None and like.contract.target_tr is None:
        # The checkpoint does not say at which TR it was pretrained: nothing to resample to.
        msg = (f"the checkpoint's contract has no target TR, so the cohort keeps its own TR "
               f"({tr:g} s); it must be the TR of the checkpoint's pretraining data")
        warnings.warn(msg, LikeTRWarning, stacklevel=3)
        corpus_warnings.append(msg)
    return corpus_warnings


# -- phase 6: scaler fit -------------------------------------------------------------------
def _checkpoint_statistics(like: ReferenceContract, like_contract: PreprocessingContract) -> PreprocessingContract:
    """The contract with the checkpoint's pooled statistics (the cohort is on its atlas)."""
    fitted = like_contract
    fitted.scaler_fit = {
        "source": "checkpoint", "checkpoint": like.name,
        "method": "the checkpoint's pooled statistics (the cohort is on its pretraining atlas)",
        "checkpoint_fit": dict(like.contract.scaler_fit)}
    if "recordings" in like.contract.scaler_fit:
        fitted.scaler_fit["recordings"] = like.contract.scaler_fit["recordings"]
    return fitted


def fit_cohort_statistics(build: Path, out: Path, manifest: pd.DataFrame, screened: ScreenedRecordings,
                          passed: PassOne, atlas: Atlas, contract: PreprocessingContract,
                          settings: PrepareSettings) -> PreprocessingContract:
    """The contract with the cohort's own pooled statistics (:func:`fit_pooled_statistics`) over
    the training recordings of ``manifest`` (every recording when ``passed.fit_on_all``) that are
    not scale outliers, and a ``scaler_fit`` record that says so."""
    like, outliers = settings.like, screened.outliers
    train = manifest if passed.fit_on_all else manifest[manifest["split"] == "train"]
    if train.empty:
        raise BrainLMInputError("no recording of the training split survived preprocessing; "
                                "cannot fit the scaling statistics", str(out))
    fitted = fit_pooled_statistics(build, train[~train["recording_id"].isin(list(outliers))], screened.train_range,
                                   atlas, contract, settings.execution.jobs, passed.train_extrema)
    fitted.scaler_fit["source"] = "cohort"
    if passed.fit_on_all:
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
            + (" over all its recordings" if passed.fit_on_all else " over its training split"))
    if outliers:
        fitted.scaler_fit["excluded_scale_outliers"] = sorted(outliers)
    return fitted


def _settle_contract(fitted: PreprocessingContract, records: list[dict], atlas: Atlas, out: Path) -> dict:
    """Record how the statistics are applied and the input units in ``fitted``; refuse
    statistics that are not finite. Returns the units record (``corpus.json`` ->
    ``input_units``)."""
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
    return units


# -- phase 7: publish ----------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything the publish phase writes besides the arrays already in the build.

    Attributes
    ----------
    manifest : DataFrame
        One row per recording of the corpus (``manifest.parquet``).
    skipped : list of dict
        Recordings left out: id, source, reason (``skipped.parquet``).
    records : list of dict
        Pass-1 records of the recordings kept (their extraction details, for scans).
    atlas : Atlas
    fitted : PreprocessingContract
        The contract with its statistics (``contract.json``).
    units : dict
        Input units record (``corpus.json`` -> ``input_units``).
    tr : float
        The corpus's TR in seconds.
    split : SplitPlan
    warnings : list of str
        Messages of the warnings raised while preparing (``corpus.json`` -> ``warnings``).
    outlier_records : list of dict
        Scale outliers and what became of them (``corpus.json`` -> ``scale_outliers``).
    parcellation : ImageParcellation or None
    statistics_from_checkpoint : bool
        Whether the pooled statistics are a checkpoint's (``like``).
    """

    manifest: pd.DataFrame
    skipped: list[dict]
    records: list[dict]
    atlas: Atlas
    fitted: PreprocessingContract
    units: dict
    tr: float
    split: SplitPlan
    warnings: list[str]
    outlier_records: list[dict]
    parcellation: ImageParcellation | None
    statistics_from_checkpoint: bool


def publish(build: Path, out: Path, inputs: list, prepared: Prepared, settings: PrepareSettings) -> Corpus:
    """Write the manifest, skipped recordings, atlas, contract, ingestion record and, last,
    ``corpus.json`` into the build; then rename the build to ``out`` (replacing an old corpus
    only now, with ``overwrite``)."""
    _remove_orphan_arrays(build, set(prepared.manifest["recording_id"]))
    write_parquet_atomic(prepared.manifest, build / "manifest.parquet")
    skipped_df = pd.DataFrame([{"recording_id": r["recording_id"], "source": r["source"],
                                "reason": r["reason"]} for r in prepared.skipped],
                              columns=["recording_id", "source", "reason"])
    write_parquet_atomic(skipped_df, build / "skipped.parquet")
    write_text_atomic(build / "atlas.json", json.dumps(prepared.atlas.to_dict()))
    prepared.fitted.save(build / "contract.json")
    ingestion = None
    if prepared.parcellation is not None:
        ingestion = _ingestion_record(prepared.parcellation, prepared.records, settings.reading.space,
                                      settings.reading.res)
        write_parquet_atomic(_ingestion_table(prepared.records), build / "ingestion.parquet")
    info = _corpus_info(prepared, settings, len(skipped_df), ingestion)
    write_text_atomic(build / "corpus.json", json.dumps(info, indent=2))
    shutil.rmtree(build / "done")
    (build / "settings.json").unlink()
    write_output_marker(build, "corpus")
    # Checked again just before the old corpus goes: it may have appeared during the build.
    check_output_folder(out, overwrite=settings.execution.overwrite, sources=inputs, kind="corpus")
    publish_directory(build, out)
    return Corpus(out)


def _corpus_info(prepared: Prepared, settings: PrepareSettings, n_skipped: int, ingestion: dict | None) -> dict:
    """The content of ``corpus.json``."""
    manifest, fitted, splits, like = prepared.manifest, prepared.fitted, settings.splits, settings.like
    info = {
        "format": CORPUS_FORMAT, "version": CORPUS_VERSION, "brainlm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tr": float(prepared.tr), "recordings": int(len(manifest)),
        "subjects": int(manifest["subject"].nunique()), "skipped": int(n_skipped),
        "phenotype_columns": [c for c in manifest.columns if c not in MANIFEST_COLUMNS],
        "split_by": splits.split_by, "split_seed": int(splits.split_seed),
        "fractions": list(map(float, prepared.split.fractions)),
        "split_assignments": dict(sorted(prepared.split.split_of.items())) if prepared.split.assigned else None,
        "layout": asdict(settings.execution.layout),
    }
    if ingestion is not None:
        info["ingestion"] = ingestion
    if prepared.warnings:
        info["warnings"] = prepared.warnings
    if prepared.outlier_records:
        info["scale_outliers"] = prepared.outlier_records
    info["input_units"] = prepared.units
    info["scaling"] = {"mode": fitted.scaling, "normalization": fitted.normalization,
                       "statistics": fitted.scaler_fit.get("source"),
                       **({"note": fitted.scaler_fit["note"]} if "note" in fitted.scaler_fit else {})}
    if like is not None:
        info["prepared_like"] = {"checkpoint": like.name, "scaling": fitted.scaling,
                                 "normalization": fitted.normalization,
                                 "statistics": "checkpoint" if prepared.statistics_from_checkpoint else "cohort"}
    return info


# -- helpers -------------------------------------------------------------------------------
def _image_parcellation(atlas, atlas_image, atlas_labels, surface_mesh, read_volumes, contract):
    if atlas is not None:
        raise BrainLMInputError("pass either atlas (--atlas: parcellated time series) or atlas_image "
                                "(--atlas-image: scans), not both; an atlas image defines its own "
                                "parcels and centres")
    if isinstance(atlas_image, (VolumeAtlas, SurfaceAtlas)):
        image = atlas_image
    else:
        image = load_atlas_image(atlas_image, atlas_labels, mesh=surface_mesh)
    # read_volumes was checked with the settings (ReadingSettings).
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
            warnings.warn(msg, EmptySplitWarning, stacklevel=4)
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
        warnings.warn(f"{note} ({n} scan{'s' if n > 1 else ''})", AtlasResampledWarning, stacklevel=4)
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




def _remove_orphan_arrays(build: Path, keep: set[str]) -> None:
    store = build / "timeseries.zarr"
    for child in store.iterdir():
        if child.is_dir() and child.name not in keep:
            shutil.rmtree(child)
