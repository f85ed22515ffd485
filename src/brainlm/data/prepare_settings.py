"""What :func:`brainlm.data.prepare.prepare_corpus` is asked to do, as one frozen object.

``PrepareSettings`` is made of four parts, each validated when it is built, so that a bad option
fails before any file is read:

* :class:`ReadingSettings`: which atlas, how files and scans are read (orientation, TR, array
  key, BIDS ``space``/``res``), and the participants table;
* :class:`CleaningSettings`: the preprocessing contract, the confound strategy of scans, and
  what becomes of recordings that are too short, unreadable or on another scale;
* :class:`SplitSettings`: train/val/test fractions, seed, split unit, or explicit assignments;
* :class:`ExecutionSettings`: worker processes or a Dask cluster, the store layout, overwrite,
  restart and the progress bar.

``like`` (a checkpoint's :class:`~brainlm.data.contract.ReferenceContract`) sits beside the
parts: it decides the contract, the atlas when none is given, and the default fractions.
:meth:`PrepareSettings.of` takes the flat keywords that ``prepare_corpus`` used to take.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from brainlm.data.atlas import Atlas
from brainlm.data.contract import PreprocessingContract, ReferenceContract
from brainlm.errors import BrainLMInputError
from brainlm.validation import choice, positive_int_coerced, worker_count

ORIENTATIONS = ("auto", "time-by-parcel", "parcel-by-time")
TOO_SHORT_POLICIES = ("skip", "error")
ON_ERROR_POLICIES = ("fail", "skip")
SPLIT_BY = ("subject", "site")
COMPRESSIONS = ("none", "lz4", "zstd")


def check_choice(value, allowed, name: str) -> None:
    """Error naming option ``name`` unless ``value`` is one of ``allowed``."""
    choice(value, allowed, f"option {name!r} is")


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


@dataclass(frozen=True)
class ReadingSettings:
    """How the sources are found and read.

    Attributes
    ----------
    atlas : Atlas, optional
        Parcellation of parcellated time series (its parcel count is checked against each file).
        Give either ``atlas`` or ``atlas_image`` (or neither with ``like``: the checkpoint's).
    atlas_image : path, pair of paths, VolumeAtlas or SurfaceAtlas, optional
        Atlas to parcellate scans with (NIfTI labels or maps, left/right ``.annot`` or
        ``.label.gii``, ``.dlabel.nii``); see :func:`brainlm.data.extraction.load_atlas_image`.
    atlas_labels : path, optional
        Names (and networks) of the atlas image's labels (TSV ``index, name[, network]``).
    surface_mesh : str or pair of paths, optional
        Mesh of a surface atlas (default fsaverage5, bundled with nilearn).
    space, res : str, optional
        BIDS ``space-``/``res-`` of the scans to use (fMRIPrep writes several).
    read_volumes : int
        Volumes of a 4-D NIfTI read at a time (bounds each worker's memory).
    tr : float, optional
        Repetition time in seconds for files with neither a JSON sidecar nor a TR inside.
    orientation : {"auto", "time-by-parcel", "parcel-by-time"}
    key : str, optional
        Array name inside .npz/.mat/.h5 files (inferred when there is one candidate).
    participants : path, optional
        BIDS-style participants table; phenotypes are joined on subject id (default: a
        ``participants.tsv`` found at the top of a source folder).
    id_column : str, optional
        Subject id column of the participants table.
    allow_missing_phenotypes : bool
        Keep recordings whose subject is not in the participants table.
    """

    atlas: Atlas | None = None
    atlas_image: Any = None
    atlas_labels: str | Path | None = None
    surface_mesh: Any = None
    space: str | None = None
    res: str | None = None
    read_volumes: int = 32
    tr: float | None = None
    orientation: str = "auto"
    key: str | None = None
    participants: str | Path | None = None
    id_column: str | None = None
    allow_missing_phenotypes: bool = False

    def __post_init__(self) -> None:
        check_choice(self.orientation, ORIENTATIONS, "orientation")
        positive_int_coerced(self.read_volumes, "read_volumes is")


@dataclass(frozen=True)
class CleaningSettings:
    """How recordings are cleaned and which ones are kept.

    Attributes
    ----------
    contract : PreprocessingContract, optional
        Cleaning settings and scaling mode (default: ``PreprocessingContract()``, or the
        checkpoint's with ``like``); its pooled statistics are fitted by the build.
    confounds : str or ConfoundStrategy
        Confound strategy of scans: ``"auto"`` (``"simple"`` when fMRIPrep confounds files are
        present, else ``"none"``), ``"none"``, a nilearn preset or a comma-separated list of
        ``load_confounds`` components.
    confound_options : dict, optional
        Keyword arguments for nilearn's loader, e.g. ``{"fd_threshold": 0.3}``.
    max_censored : float
        Largest fraction of volumes a confound strategy may censor in a scan.
    min_trs : int
        Recordings shorter than this after preprocessing (TRs at the target TR) are handled by
        ``too_short``.
    too_short : {"skip", "error"}
        ``"skip"``: left out and listed in ``skipped.parquet``; ``"error"``: stop.
    on_error : {"fail", "skip"}
        A recording that cannot be read or fails validation stops the run (``"fail"``) or is
        listed in ``skipped.parquet`` (``"skip"``; retried on the next run).
    drop_scale_outliers : bool
        Leave recordings on another scale than the cohort out of the corpus.
    """

    contract: PreprocessingContract | None = None
    confounds: Any = "auto"
    confound_options: dict | None = None
    max_censored: float = 0.5
    min_trs: int = 200
    too_short: str = "skip"
    on_error: str = "fail"
    drop_scale_outliers: bool = False

    def __post_init__(self) -> None:
        check_choice(self.too_short, TOO_SHORT_POLICIES, "too_short")
        check_choice(self.on_error, ON_ERROR_POLICIES, "on_error")
        if int(self.min_trs) < 1:
            raise BrainLMInputError("min_trs and chunk_trs must be positive integers")


@dataclass(frozen=True)
class SplitSettings:
    """How subjects (or sites) are assigned to train, val and test.

    Attributes
    ----------
    fractions : sequence of 3 floats, optional
        Train/val/test fractions of subjects (or of sites). Default ``(0.8, 0.1, 0.1)``, or
        ``(0, 0, 1)`` with ``like`` (every recording in ``test``).
    split_seed : int
        Seed of the assignment.
    split_by : {"subject", "site"}
        Subjects are keyed by site and subject id; ``"site"`` assigns whole sites.
    split_assignments : dict, optional
        The split of every subject (``SITE/SUBJECT`` when recordings have a site; or of every
        site with ``split_by="site"``), instead of ``fractions``.
    """

    fractions: Sequence[float] | None = None
    split_seed: int = 0
    split_by: str = "subject"
    split_assignments: dict[str, str] | None = None

    def __post_init__(self) -> None:
        check_choice(self.split_by, SPLIT_BY, "split_by")


@dataclass(frozen=True)
class ExecutionSettings:
    """Where and how the build runs.

    Attributes
    ----------
    jobs : int
        Worker processes for cleaning and statistics (-1: all cores).
    dask_scheduler : str, optional
        Run pass 1 on a Dask cluster: a scheduler address (``tcp://host:8786``) or ``"local"``.
    layout : StoreLayout
        Chunking and compression of the array store.
    overwrite : bool
        Replace an existing complete corpus (only once the new one is complete).
    restart : bool
        Discard an unfinished build (``out.partial``) instead of resuming it.
    progress : bool
        Show a progress bar while recordings are cleaned.
    """

    jobs: int = 1
    dask_scheduler: str | None = None
    layout: StoreLayout = StoreLayout()
    overwrite: bool = False
    restart: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.layout, StoreLayout):
            raise BrainLMInputError(f"layout is a {type(self.layout).__name__}; expected a StoreLayout")
        check_choice(self.layout.compression, COMPRESSIONS, "compression")
        if self.layout.chunk_trs < 1:
            raise BrainLMInputError("min_trs and chunk_trs must be positive integers")
        # Counts below -1 have always passed here (joblib reads -2 as all cores but one).
        worker_count(self.jobs, any_negative=True)


_PARTS = {"reading": ReadingSettings, "cleaning": CleaningSettings, "splits": SplitSettings,
          "execution": ExecutionSettings}
#: Each flat keyword of :meth:`PrepareSettings.of` -> the part that holds it.
PART_OF = {f.name: part for part, kind in _PARTS.items() for f in fields(kind)}


@dataclass(frozen=True)
class PrepareSettings:
    """Everything :func:`~brainlm.data.prepare.prepare_corpus` needs besides its sources and
    output folder: four validated parts and an optional checkpoint to prepare like.

    Build it from parts, or from flat keywords with :meth:`of`::

        PrepareSettings.of(atlas=load_atlas("aal2"), min_trs=100, jobs=2)

    Attributes
    ----------
    reading : ReadingSettings
    cleaning : CleaningSettings
    splits : SplitSettings
    execution : ExecutionSettings
    like : ReferenceContract, optional
        Prepare the cohort exactly as a checkpoint's pretraining data: its cleaning settings,
        target TR and scaling mode (``cleaning.contract``, if also given, must agree), its atlas
        when neither ``atlas`` nor ``atlas_image`` is given, and its pooled scaling statistics
        when the cohort is on its atlas (else the cohort's own).
    """

    reading: ReadingSettings = field(default_factory=ReadingSettings)
    cleaning: CleaningSettings = field(default_factory=CleaningSettings)
    splits: SplitSettings = field(default_factory=SplitSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    like: ReferenceContract | None = None

    def __post_init__(self) -> None:
        for name, kind in _PARTS.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise BrainLMInputError(f"field {name!r} of PrepareSettings is a {type(value).__name__}; "
                                        f"expected a {kind.__name__} (or use PrepareSettings.of(**keywords))")

    @classmethod
    def of(cls, **keywords) -> PrepareSettings:
        """Settings from the flat keywords of the parts (``atlas=``, ``contract=``,
        ``fractions=``, ``jobs=``, ...) and ``like=``; each goes to its part, the rest keep their
        defaults. An unknown keyword is an error naming it (and the closest known ones)."""
        unknown = [k for k in keywords if k not in PART_OF and k != "like"]
        if unknown:
            known = sorted([*PART_OF, "like"])
            close = sorted({m for k in unknown for m in difflib.get_close_matches(k, known, n=2)})
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise BrainLMInputError(f"unknown prepare setting(s) {unknown}{hint}; expected keywords among {known}",
                                    "PrepareSettings.of")
        grouped: dict[str, dict] = {part: {} for part in _PARTS}
        for k, v in keywords.items():
            if k != "like":
                grouped[PART_OF[k]][k] = v
        return cls(**{part: _PARTS[part](**grouped[part]) for part in _PARTS}, like=keywords.get("like"))

    def flat(self) -> dict[str, Any]:
        """The flat keywords of :meth:`of` (``of(**s.flat()) == s``)."""
        out = {f.name: getattr(getattr(self, part), f.name) for part, kind in _PARTS.items() for f in fields(kind)}
        return {**out, "like": self.like}
