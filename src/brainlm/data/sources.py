"""Which recordings to ingest: files found under the given paths (or in-memory Recordings),
their ids parsed from BIDS-style names, their TR, and their phenotypes."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainlm.data.atlas import Atlas
from brainlm.data.participants import phenotypes_for, read_participants
from brainlm.data.readers import _sidecar_path, is_timeseries_file, read_sidecar_tr, read_timeseries
from brainlm.data.recording import Recording, recording_id
from brainlm.errors import BrainLMInputError

_ENTITY = re.compile(r"(?:^|[_/])(sub|ses|task|run|site)-([A-Za-z0-9]+)")
_SAFE = re.compile(r"[^A-Za-z0-9]+")


@dataclass
class SourceSpec:
    """One recording to ingest.

    Exactly one of ``path`` (read lazily, in a worker) and ``recording`` (already in memory).
    ``tr`` is the repetition time in seconds known before reading (``--tr`` or a JSON sidecar),
    or ``None`` when only the file itself can tell.
    ``kind`` is ``"table"`` for parcellated time series, or ``"volume"``, ``"gifti"``,
    ``"cifti"`` for scans parcellated with an atlas image; ``files`` then lists the image(s)
    (``path`` is the first) and ``mask`` is a brain mask for volumes.
    """

    subject: str
    session: str | None = None
    task: str | None = None
    run: str | None = None
    site: str | None = None
    path: Path | None = None
    recording: Recording | None = None
    tr: float | None = None
    phenotypes: dict[str, Any] = field(default_factory=dict)
    kind: str = "table"
    files: tuple[Path, ...] = ()
    mask: Path | None = None

    @property
    def recording_id(self) -> str:
        return recording_id(self.subject, site=self.site, session=self.session, task=self.task,
                            run=self.run)

    @property
    def label(self) -> str:
        """Where the data comes from, for messages and the manifest."""
        if len(self.files) > 1:
            return " + ".join(map(str, self.files))
        if self.path is not None:
            return str(self.path)
        return self.recording.source or self.recording.id

    def load(self, atlas: Atlas, *, orientation: str = "auto", key: str | None = None) -> Recording:
        """Read (if needed) and validate: returns a Recording on ``atlas``.

        The TR comes from, in order of agreement: ``self.tr`` (flag or sidecar) and the file
        itself; both present and different is an error, neither is an error (never guessed).
        """
        if self.recording is not None:
            rec = self.recording
            if not rec.atlas.matches(atlas):
                raise BrainLMInputError(
                    f"recording is on atlas {rec.atlas.name!r}; the corpus uses {atlas.name!r}", self.label)
            return rec
        if self.kind != "table":
            raise BrainLMInputError(
                f"a {self.kind} scan must be parcellated with an atlas image (--atlas-image); "
                "--atlas reads only parcellated time series", self.label)

        raw = read_timeseries(self.path, key=key, orientation=orientation, n_parcels=atlas.n_parcels)
        return self.to_recording(raw, atlas)

    def to_recording(self, raw, atlas: Atlas, *, header_tr: float | None = None) -> Recording:
        """A Recording from data read for this spec (a ``RawSeries``): the TR settled, columns in
        atlas order. ``header_tr`` (a NIfTI header's TR) only enriches the message when the TR
        is unknown: headers are too often wrong to be trusted."""
        tr = self.tr
        if raw.tr is not None and tr is not None and not np.isclose(raw.tr, tr, rtol=1e-3):
            raise BrainLMInputError(
                f"TR conflict: the file says {raw.tr} s, the sidecar/--tr says {tr} s", self.label)
        tr = tr if tr is not None else raw.tr
        if tr is None:
            hint = (f"; the NIfTI header says {header_tr:g} s: pass --tr {header_tr:g} if that is "
                    "right" if header_tr else "")
            raise BrainLMInputError(
                "repetition time unknown: no --tr option, no JSON sidecar with RepetitionTime "
                f"(expected {_sidecar_path(Path(self.path)).name if self.path else 'one'}), "
                f"and no 'tr' entry in the file; brainlm never guesses the TR{hint}", self.label)
        data = raw.data
        if raw.parcel_names is not None and set(raw.parcel_names) == set(atlas.parcel_names) \
                and list(raw.parcel_names) != list(atlas.parcel_names):
            # A header naming the atlas parcels in another order: put columns in atlas order.
            order = [raw.parcel_names.index(n) for n in atlas.parcel_names]
            data = data[:, order]
        # NaN/Inf are allowed through here: the contract's bad-parcel policy decides.
        return _unvalidated_recording(data, tr, atlas, self)


def _unvalidated_recording(data: np.ndarray, tr: float, atlas: Atlas, spec: SourceSpec) -> Recording:
    """A Recording whose values may hold NaN (validated for everything else)."""
    finite = np.isfinite(data)
    probe = data if finite.all() else np.where(finite, data, 0.0)
    rec = Recording(timeseries=probe, tr=tr, atlas=atlas, subject=spec.subject, session=spec.session,
                    run=spec.run, task=spec.task, site=spec.site, phenotypes=spec.phenotypes,
                    source=spec.label)
    if not finite.all():
        rec.timeseries = np.ascontiguousarray(data, dtype=np.float32)
    return rec


def parse_entities(path: Path) -> dict[str, str]:
    """BIDS entities (``sub``, ``ses``, ``task``, ``run``, ``site``) from a file name, then its folders."""
    found: dict[str, str] = {}
    for part in [path.name] + [p.name for p in path.parents]:
        for key, val in _ENTITY.findall(part):
            found.setdefault(key, val)
    return found


class SkippedFilesWarning(UserWarning):
    """Files in a source folder that were not read, and why (broken links, text that is not data)."""


def _looks_numeric(path: Path, limit: int = 4096) -> bool:
    """Whether the first data line of a text file (after ``#`` comments) is numbers only: a
    ``.txt`` time series has no header, a note or README has words."""
    try:
        with open(path, "rb") as f:
            head = f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return True  # unreadable: let the reader report it
    for line in head.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            [float(t) for t in line.replace(",", " ").split()]
        except ValueError:
            return False
        return True
    return True  # empty: the reader names it


def discover_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Time-series files under ``paths`` (files taken as given, folders searched recursively),
    and any ``participants.tsv`` found at the top of a given folder."""
    files: list[Path] = []
    participants: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            candidates = sorted(f for f in p.rglob("*") if is_timeseries_file(f))
            broken = [f for f in candidates if f.is_symlink() and not f.exists()]
            notes = [f for f in candidates if f.is_file() and f.name.lower().endswith(".txt")
                     and not _looks_numeric(f)]
            found = [f for f in candidates if f.is_file() and f not in notes]
            for kind, skipped in (("broken symbolic link(s)", broken),
                                  (".txt file(s) that do not start with numbers (notes, not data)", notes)):
                if skipped:
                    warnings.warn(f"{p}: skipped {len(skipped)} {kind}: "
                                  + ", ".join(str(f.relative_to(p)) for f in skipped[:5])
                                  + (" ..." if len(skipped) > 5 else ""), SkippedFilesWarning, stacklevel=2)
            if not found:
                images = any(f.name.lower().endswith((".nii", ".nii.gz", ".gii")) for f in p.rglob("*"))
                hint = ("; it holds NIfTI/GIfTI/CIFTI scans: parcellate them with --atlas-image "
                        "instead of --atlas" if images else "")
                raise BrainLMInputError("folder holds no time-series files (.npy, .npz, .csv, .tsv, "
                                        f".txt, .mat, .h5, .parquet){hint}", str(p))
            files.extend(found)
            if (p / "participants.tsv").is_file():
                participants.append(p / "participants.tsv")
        elif p.is_file():
            if not is_timeseries_file(p):
                raise BrainLMInputError("not a supported time-series file (.npy, .npz, .csv, .tsv, "
                                        ".txt, .mat, .h5, .parquet)", str(p))
            files.append(p)
        else:
            raise BrainLMInputError("file not found", str(p))
    return files, participants


def specs_from_files(files: Iterable[Path], *, tr: float | None = None) -> list[SourceSpec]:
    """One SourceSpec per file: ids from BIDS entities (the file stem when there is no ``sub-``),
    TR from ``tr`` and/or the JSON sidecar (a disagreement is an error)."""
    specs = []
    for f in files:
        ent = parse_entities(f)
        subject = ent.get("sub") or _SAFE.sub("", f.name.split(".")[0]) or "unknown"
        side = read_sidecar_tr(f)
        if side is not None and tr is not None and not np.isclose(side, tr, rtol=1e-3):
            raise BrainLMInputError(
                f"TR conflict: the JSON sidecar says {side} s, --tr says {tr} s", str(f))
        specs.append(SourceSpec(subject=subject, session=ent.get("ses"), task=ent.get("task"),
                                run=ent.get("run"), site=ent.get("site"), path=f,
                                tr=side if side is not None else tr))
    return specs


def specs_from_scans(scans, *, tr: float | None = None) -> list[SourceSpec]:
    """One SourceSpec per scan found by :func:`brainlm.data.fmriprep.find_scans`; TR from the
    JSON sidecar (of either hemisphere for GIfTI) and/or ``tr`` (a disagreement is an error)."""
    specs = []
    for scan in scans:
        first = scan.files[0]
        ent = parse_entities(first)
        sides = {read_sidecar_tr(f) for f in scan.files} - {None}
        if len(sides) > 1:
            raise BrainLMInputError(f"the JSON sidecars of this scan disagree on the TR: "
                                    f"{sorted(sides)} s", " + ".join(map(str, scan.files)))
        side = next(iter(sides), None)
        if side is not None and tr is not None and not np.isclose(side, tr, rtol=1e-3):
            raise BrainLMInputError(
                f"TR conflict: the JSON sidecar says {side} s, --tr says {tr} s", str(first))
        subject = ent.get("sub") or _SAFE.sub("", first.name.split(".")[0]) or "unknown"
        specs.append(SourceSpec(subject=subject, session=ent.get("ses"), task=ent.get("task"),
                                run=ent.get("run"), site=ent.get("site"), path=first,
                                tr=side if side is not None else tr, kind=scan.kind,
                                files=tuple(scan.files), mask=scan.mask))
    return specs


def specs_from_recordings(recordings: Iterable[Recording]) -> list[SourceSpec]:
    """SourceSpecs for Recordings already in memory."""
    return [SourceSpec(subject=r.subject, session=r.session, task=r.task, run=r.run, site=r.site,
                       recording=r, tr=r.tr, phenotypes=dict(r.phenotypes)) for r in recordings]


def read_recordings(paths: Sequence[str | Path], atlas: Atlas, *, tr: float | None = None,
                    orientation: str = "auto", key: str | None = None) -> list[Recording]:
    """Every time-series file under ``paths`` (files or folders) read on ``atlas``, in memory.

    The TR of each comes from its sidecar, the file or ``tr`` (seconds), never guessed; a file
    whose parcels do not match ``atlas`` is an error naming it. Returns Recordings (T x P,
    columns in atlas order; NaN/Inf kept for the contract's bad-parcel policy).
    """
    files, _ = discover_files(paths)
    specs = specs_from_files(files, tr=tr)
    check_unique_ids(specs)
    return [s.load(atlas, orientation=orientation, key=key) for s in specs]


def check_unique_ids(specs: Sequence[SourceSpec]) -> None:
    """Error listing recordings that would get the same id (same subject/session/task/run)."""
    counts = Counter(s.recording_id for s in specs)
    dupes = [k for k, n in counts.items() if n > 1]
    if dupes:
        first = dupes[0]
        where = [s.label for s in specs if s.recording_id == first][:3]
        raise BrainLMInputError(
            f"{len(dupes)} duplicate recording id(s), e.g. {first!r} from {where}; recordings "
            "need distinct sub-/ses-/task-/run- entities in their file names")


def attach_phenotypes(specs: Sequence[SourceSpec], participants_path: Path, *,
                      id_column: str | None = None, allow_missing: bool = False) -> list[str]:
    """Join the participants table on subject id; a ``site`` column sets the site.

    Returns the phenotype column names.
    """
    table = read_participants(participants_path, id_column=id_column)
    pheno = phenotypes_for(table, [s.subject for s in specs], source=str(participants_path),
                           allow_missing=allow_missing)
    for s in specs:
        values = dict(pheno.get(s.subject, {}))
        site = values.pop("site", None)
        if s.site is None and site is not None and not (isinstance(site, float) and np.isnan(site)):
            s.site = _SAFE.sub("", str(site)) or None
        s.phenotypes.update(values)
    return [c for c in table.columns if c != "site"]
