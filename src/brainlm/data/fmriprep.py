"""fMRIPrep / BIDS derivatives: find the scans, choose confounds, denoise.

Scans are found by their BIDS names under a derivatives folder:

==============================  =========================================================
kind                            file
==============================  =========================================================
volume                          ``*_desc-preproc_bold.nii.gz`` (plain BIDS: ``*_bold.nii.gz``),
                                with ``*_desc-brain_mask.nii.gz`` beside it used as mask
gifti (surface)                 ``*_hemi-L_*_bold.func.gii`` and its ``hemi-R`` twin
cifti (surface)                 ``*_bold.dtseries.nii``
==============================  =========================================================

The repetition time comes from each scan's JSON sidecar (``RepetitionTime``). Confounds are
chosen by nilearn's fMRIPrep loaders (:func:`nilearn.interfaces.fmriprep.load_confounds_strategy`
for the presets ``simple``, ``scrubbing``, ``compcor``, ``ica_aroma``, or
:func:`~nilearn.interfaces.fmriprep.load_confounds` for a list of components) and regressed
from the parcel time series with :func:`nilearn.signal.clean`. Volumes the strategy censors
(fMRIPrep's non-steady-state volumes; high-motion volumes with ``scrubbing``) are left out of
the regression; since BrainLM needs one sample per TR, censored volumes inside the run are then
filled by cubic-spline interpolation of their neighbours (the approach of Power et al. 2014) and
censored volumes at the start or end of the run are dropped.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainlm.data.volumes import is_nifti
from brainlm.errors import BrainLMInputError

#: Preset strategies of nilearn's ``load_confounds_strategy``, plus ``none``.
CONFOUND_PRESETS = ("none", "simple", "scrubbing", "compcor", "ica_aroma")
#: Components accepted by nilearn's ``load_confounds`` (a comma-separated list picks them).
CONFOUND_COMPONENTS = ("motion", "high_pass", "wm_csf", "global_signal", "compcor", "ica_aroma",
                       "scrub", "non_steady_state")
_ENTITY = re.compile(r"(?:^|_)([a-zA-Z]+)-([A-Za-z0-9.+]+)")


@dataclass(frozen=True)
class ConfoundStrategy:
    """Which fMRIPrep confounds are regressed from each scan.

    Parameters
    ----------
    name : str
        ``"none"``, a nilearn preset (``"simple"``, ``"scrubbing"``, ``"compcor"``,
        ``"ica_aroma"``) or ``"custom"`` (then ``components`` is required).
    components : tuple of str, optional
        For ``"custom"``: components of :func:`nilearn.interfaces.fmriprep.load_confounds`
        (``motion``, ``high_pass``, ``wm_csf``, ``global_signal``, ``compcor``, ``scrub`` ...).
    options : tuple of (str, value) pairs
        Further keyword arguments for the nilearn loader, e.g. ``(("global_signal", "basic"),)``
        or ``(("fd_threshold", 0.3),)``.
    max_censored : float
        A scan with more than this fraction of its volumes censored is rejected (a
        :class:`BrainLMInputError`, handled by ``on_error``).
    """

    name: str = "simple"
    components: tuple[str, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()
    max_censored: float = 0.5

    def __post_init__(self) -> None:
        src = "confound strategy"
        if self.name not in CONFOUND_PRESETS + ("custom",):
            raise BrainLMInputError(
                f"unknown confound strategy {self.name!r}; expected one of "
                f"{list(CONFOUND_PRESETS)} or a comma-separated list of {list(CONFOUND_COMPONENTS)}", src)
        if self.name == "custom":
            bad = [c for c in (self.components or ()) if c not in CONFOUND_COMPONENTS]
            if not self.components or bad:
                raise BrainLMInputError(
                    f"custom confound components {list(self.components or ())} not understood"
                    f"{f' ({bad})' if bad else ''}; expected some of {list(CONFOUND_COMPONENTS)}", src)
        if not 0 <= float(self.max_censored) <= 1:
            raise BrainLMInputError(f"max_censored is {self.max_censored!r}; expected a fraction "
                                    "between 0 and 1", src)

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def loader_call(self) -> dict:
        """The nilearn function and keyword arguments used (recorded in corpus metadata)."""
        opts = dict(self.options)
        if self.name == "custom":
            return {"function": "nilearn.interfaces.fmriprep.load_confounds",
                    "kwargs": {"strategy": list(self.components), **opts}}
        return {"function": "nilearn.interfaces.fmriprep.load_confounds_strategy",
                "kwargs": {"denoise_strategy": self.name, **opts}}

    def to_dict(self) -> dict:
        import nilearn

        d = {"strategy": self.name, "max_censored": float(self.max_censored),
             "regression": "nilearn.signal.clean (confounds z-scored, no detrending or filtering "
                           "here; those are contract steps)",
             "censored_volumes": "left out of the regression; inside the run filled by cubic-"
                                 "spline interpolation, at its start/end dropped",
             "nilearn_version": nilearn.__version__}
        if self.enabled:
            d["loader"] = self.loader_call()
        return d

    def load(self, image_files: Sequence[Path], n_volumes: int, *, source: str):
        """Confounds of one scan through nilearn's loader.

        Parameters
        ----------
        image_files : sequence of Path
            The scan (one file, or the left and right GIfTI); the confounds TSV/JSON are found
            beside it by fMRIPrep's naming.
        n_volumes : int
            Volumes of the scan, checked against the confounds' rows.

        Returns
        -------
        confounds : pandas.DataFrame, shape (n_volumes, K)
        sample_mask : ndarray of int or None
            Indices of the volumes kept (None: all).
        """
        from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy

        files = [str(f) for f in image_files]
        arg = files[0] if len(files) == 1 else files
        conf_file = confounds_file_for(Path(files[0]))
        where = str(conf_file) if conf_file is not None else source
        if conf_file is None:
            raise BrainLMInputError(
                f"no fMRIPrep confounds file (*_desc-confounds_timeseries.tsv) beside the scan; "
                f"expected one for confound strategy {self.name!r} (or pass --confounds none)", source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            try:
                if self.name == "custom":
                    conf, mask = load_confounds(arg, strategy=tuple(self.components), **dict(self.options))
                else:
                    conf, mask = load_confounds_strategy(arg, denoise_strategy=self.name,
                                                         **dict(self.options))
            except BrainLMInputError:
                raise
            except Exception as e:  # noqa: BLE001 - nilearn raises ValueError and its own types
                msg = " ".join(str(e).split())[:300]
                raise BrainLMInputError(f"cannot load confounds with strategy {self.name!r} "
                                        f"({type(e).__name__}: {msg})", where) from None
        if conf is None or conf.shape[1] == 0:
            raise BrainLMInputError(f"confound strategy {self.name!r} selected no regressor; "
                                    "expected fMRIPrep confound columns", where)
        if len(conf) != n_volumes:
            raise BrainLMInputError(f"confounds have {len(conf)} rows; the scan has {n_volumes} "
                                    "volumes (expected one row per volume)", where)
        values = conf.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            bad = conf.columns[~np.isfinite(values).all(axis=0)].tolist()
            raise BrainLMInputError(f"confound column(s) {bad[:5]} hold NaN/Inf after nilearn's "
                                    "loader; expected finite regressors", where)
        return conf, (None if mask is None else np.asarray(mask, dtype=np.int64))


def parse_confound_strategy(text: str | ConfoundStrategy | None, *, max_censored: float = 0.5,
                            **options) -> ConfoundStrategy:
    """A strategy from a preset name (``simple`` ...), ``none``, or a comma-separated list of
    nilearn ``load_confounds`` components (``motion,wm_csf,high_pass``)."""
    if isinstance(text, ConfoundStrategy):
        return text
    opts = tuple(sorted((k, v) for k, v in options.items() if v is not None))
    value = (text or "none").strip().lower()
    if value in CONFOUND_PRESETS:
        return ConfoundStrategy(name=value, options=opts, max_censored=max_censored)
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    return ConfoundStrategy(name="custom", components=parts, options=opts, max_censored=max_censored)


def denoise(signals: np.ndarray, confounds, sample_mask: np.ndarray | None, *,
            source: str = "scan") -> tuple[np.ndarray, dict]:
    """Regress confounds from parcel time series; fill censored volumes.

    Parameters
    ----------
    signals : ndarray, shape (T, P)
        Parcel time series; all-NaN columns (empty parcels) stay NaN.
    confounds : pandas.DataFrame, shape (T, K)
    sample_mask : ndarray of int or None
        Volumes to keep in the regression (sorted indices); None keeps all.

    Returns
    -------
    cleaned : ndarray, shape (T', P), float32
        Residuals; the mean of each parcel is kept (confounds are z-scored, no intercept is
        removed) so percent signal change still applies. Censored volumes between kept ones are
        cubic-spline interpolated (one sample per TR is preserved); censored volumes before the
        first or after the last kept one are dropped, so ``T' <= T``.
    info : dict
        ``confound_regressors``, ``censored_volumes``, ``interpolated_volumes``,
        ``trimmed_volumes``.
    """
    from nilearn import signal
    from scipy.interpolate import CubicSpline

    x = np.asarray(signals, dtype=np.float64)
    n_t = x.shape[0]
    kept = np.arange(n_t) if sample_mask is None else np.unique(np.asarray(sample_mask, int))
    if kept.size < 3:
        raise BrainLMInputError(f"only {kept.size} of {n_t} volumes survive censoring; expected "
                                "at least 3", source)
    ok = np.isfinite(x).all(axis=0)
    conf = np.asarray(confounds, dtype=np.float64)
    out = np.full((n_t, x.shape[1]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        residual = signal.clean(x[:, ok], confounds=conf,
                                sample_mask=None if kept.size == n_t else kept,
                                detrend=False, standardize=False, standardize_confounds=True,
                                filter=False, ensure_finite=False)
    first, last = int(kept[0]), int(kept[-1])
    if kept.size == n_t:
        out[:, ok] = residual
    else:
        grid = np.arange(first, last + 1)
        filled = CubicSpline(kept, residual, axis=0)(grid)
        filled[kept - first] = residual
        out[first:last + 1, ok] = filled
    info = {"confound_regressors": int(conf.shape[1]), "censored_volumes": int(n_t - kept.size),
            "interpolated_volumes": int((last - first + 1) - kept.size),
            "trimmed_volumes": int(n_t - (last - first + 1))}
    return out[first:last + 1].astype(np.float32), info


# -- finding scans -----------------------------------------------------------------------------
def bids_entities(name: str) -> dict[str, str]:
    """All ``key-value`` entities of a BIDS file name (``sub``, ``ses``, ``task``, ``space``,
    ``res``, ``hemi``, ``desc`` ...)."""
    stem = Path(name).name.split(".")[0]
    return {k: v for k, v in _ENTITY.findall(stem)}


def confounds_file_for(image: Path) -> Path | None:
    """fMRIPrep's confounds table of a scan (same entities minus space/res/den/hemi/desc)."""
    drop = ("space", "res", "den", "hemi", "desc", "cohort")
    parts = [p for p in Path(image).name.split(".")[0].split("_")[:-1]
             if p.split("-", 1)[0] not in drop]
    for suffix in ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv"):
        cand = image.parent / ("_".join(parts) + suffix)
        if cand.is_file():
            return cand
    return None


def brain_mask_for(image: Path) -> Path | None:
    """fMRIPrep's brain mask of a volumetric scan (``*_desc-brain_mask.nii.gz``), if present."""
    name = image.name
    for suffix in ("_desc-preproc_bold.nii.gz", "_desc-preproc_bold.nii"):
        if name.endswith(suffix):
            cand = image.with_name(name[: -len(suffix)] + "_desc-brain_mask" +
                                   (".nii.gz" if suffix.endswith(".gz") else ".nii"))
            return cand if cand.is_file() else None
    return None


@dataclass
class Scan:
    """One run found on disk: its kind, file(s) and BIDS entities."""

    kind: str                      # "volume" | "gifti" | "cifti"
    files: tuple[Path, ...]        # one file, or (left, right) GIfTI
    entities: dict[str, str] = field(default_factory=dict)
    mask: Path | None = None

    @property
    def space(self) -> str:
        e = self.entities
        return e.get("space", "native") + (f" res-{e['res']}" if "res" in e else "") + \
            (f" den-{e['den']}" if "den" in e else "")


def _is_bold_nifti(name: str) -> bool:
    return name.endswith(("_bold.nii.gz", "_bold.nii")) and not name.startswith(".")


def find_scans(paths: Sequence[str | Path], *, surface: bool, space: str | None = None,
               res: str | None = None) -> list[Scan]:
    """BOLD scans under ``paths`` (folders searched recursively; files taken as given).

    Parameters
    ----------
    surface : bool
        False: volumetric NIfTI (``*_desc-preproc_bold.nii.gz`` when a folder has any, else
        ``*_bold.nii[.gz]``). True: GIfTI pairs (``*_hemi-L_*_bold.func.gii``) and CIFTI
        (``*_bold.dtseries.nii``).
    space, res : str, optional
        Keep only scans with these ``space-``/``res-`` entities. Needed when a folder holds
        scans in several spaces (fMRIPrep writes one per ``--output-spaces``).

    Returns
    -------
    list of Scan, sorted by file name.
    """
    scans: list[Scan] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = _scan_folder(p, surface)
            if not found:
                what = ("*_hemi-L_*_bold.func.gii / *_bold.dtseries.nii" if surface
                        else "*_desc-preproc_bold.nii.gz or *_bold.nii[.gz]")
                raise BrainLMInputError(f"folder holds no BOLD scans named {what}", str(p))
            scans += found
        elif p.is_file():
            low = p.name.lower()
            if low.endswith(".dtseries.nii"):
                scans.append(Scan("cifti", (p,), bids_entities(p.name)))
            elif low.endswith(".func.gii"):
                scans.append(_gifti_pair(p, required=True))
            elif is_nifti(p):
                scans.append(Scan("volume", (p,), bids_entities(p.name), brain_mask_for(p)))
            else:
                raise BrainLMInputError("not a BOLD image (.nii, .nii.gz, .func.gii, .dtseries.nii)",
                                        str(p))
            if surface != (scans[-1].kind != "volume"):
                raise BrainLMInputError(
                    f"a {'surface' if scans[-1].kind != 'volume' else 'volumetric'} scan needs a "
                    f"{'surface' if scans[-1].kind != 'volume' else 'volumetric'} atlas image", str(p))
        else:
            raise BrainLMInputError("file not found", str(p))
    if space is not None:
        scans = [s for s in scans if s.entities.get("space") == space]
    if res is not None:
        scans = [s for s in scans if s.entities.get("res") == str(res)]
    if not scans:
        raise BrainLMInputError(f"no BOLD scan{f' in space {space!r}' if space else ''}"
                                f"{f' with res {res!r}' if res else ''} under {[str(p) for p in paths]}")
    spaces = sorted({s.space for s in scans})
    if len(spaces) > 1:
        raise BrainLMInputError(
            f"scans in several spaces/resolutions {spaces}; pass --space (and --res) to choose "
            "the one your atlas image is in")
    return sorted(scans, key=lambda s: str(s.files[0]))


def _scan_folder(root: Path, surface: bool) -> list[Scan]:
    files = sorted(f for f in root.rglob("*") if f.is_file() and not f.name.startswith("."))
    if not surface:
        bold = [f for f in files if _is_bold_nifti(f.name)]
        preproc = [f for f in bold if "_desc-preproc_" in f.name]
        chosen = preproc or bold
        return [Scan("volume", (f,), bids_entities(f.name), brain_mask_for(f)) for f in chosen]
    out = [Scan("cifti", (f,), bids_entities(f.name)) for f in files
           if f.name.endswith("_bold.dtseries.nii")]
    for f in files:
        if f.name.endswith("_bold.func.gii") and "hemi-L" in f.name:
            out.append(_gifti_pair(f, required=False))
    return [s for s in out if s is not None]


def _gifti_pair(path: Path, *, required: bool) -> Scan | None:
    name = path.name
    if "hemi-L" in name:
        left, right = path, path.with_name(name.replace("hemi-L", "hemi-R"))
    elif "hemi-R" in name:
        left, right = path.with_name(name.replace("hemi-R", "hemi-L")), path
    else:
        raise BrainLMInputError("GIfTI time series must be named with hemi-L / hemi-R (BIDS) so "
                                "that both hemispheres are found", str(path))
    if not (left.is_file() and right.is_file()):
        missing = right if left.is_file() else left
        raise BrainLMInputError("the other hemisphere of this GIfTI scan is missing "
                                f"(expected {missing.name})", str(path))
    ent = bids_entities(name)
    ent.pop("hemi", None)
    return Scan("gifti", (left, right), ent)


def participants_file(root: str | Path) -> Path | None:
    """``participants.tsv`` of a derivatives folder: its own, or that of the raw BIDS dataset
    when the folder is ``<dataset>/derivatives/<pipeline>``."""
    root = Path(root)
    if not root.is_dir():
        return None
    if (root / "participants.tsv").is_file():
        return root / "participants.tsv"
    if root.parent.name == "derivatives" and (root.parent.parent / "participants.tsv").is_file():
        return root.parent.parent / "participants.tsv"
    return None


__all__ = ["CONFOUND_COMPONENTS", "CONFOUND_PRESETS", "ConfoundStrategy", "Scan", "bids_entities",
           "brain_mask_for", "confounds_file_for", "denoise", "find_scans",
           "parse_confound_strategy", "participants_file"]
