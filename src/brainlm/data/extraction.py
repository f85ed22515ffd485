"""One scan (NIfTI, GIfTI pair or CIFTI) -> a parcel time series ready for the contract.

:class:`ImageParcellation` is what ``brainlm prepare --atlas-image`` sends to each worker: the
atlas image, the confound strategy and the reading settings. Its :meth:`~ImageParcellation.extract`
runs in the worker, one scan at a time, and returns the raw parcel series (parcellated, then
denoised when a strategy is set) with a small record of what was done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainlm.data.atlas import Atlas
from brainlm.data.fmriprep import ConfoundStrategy, denoise
from brainlm.data.readers import RawSeries
from brainlm.data.surfaces import (SurfaceAtlas, extract_surface_signals, is_surface_atlas_file,
                                   load_surface_atlas, read_cifti_series, read_gifti_series)
from brainlm.data.volumes import (EMBEDDED_ATLAS_IMAGES, VolumeAtlas, embedded_volume_atlas,
                                  extract_volume_signals, load_volume_atlas)
from brainlm.errors import BrainLMInputError


@dataclass(frozen=True)
class ImageParcellation:
    """How scans become parcel time series.

    Parameters
    ----------
    atlas_image : VolumeAtlas or SurfaceAtlas
    confounds : ConfoundStrategy
        ``ConfoundStrategy("none")`` for no denoising.
    read_volumes : int
        Volumes of a 4-D NIfTI read at a time (bounds a worker's memory).
    bad_parcels : {"error", "zero"}
        Parcels with no voxel/vertex in a scan: an error naming them, or NaN (marked missing by
        the contract's ``bad_parcels="zero"``).
    """

    atlas_image: VolumeAtlas | SurfaceAtlas
    confounds: ConfoundStrategy = field(default_factory=lambda: ConfoundStrategy("none"))
    read_volumes: int = 32
    bad_parcels: str = "error"

    @property
    def atlas(self) -> Atlas:
        return self.atlas_image.atlas

    @property
    def surface(self) -> bool:
        return isinstance(self.atlas_image, SurfaceAtlas)

    def to_dict(self) -> dict:
        """JSON-ready description (corpus metadata; a resumed build must match it)."""
        return {"atlas_image": self.atlas_image.to_dict(), "confounds": self.confounds.to_dict(),
                "read_volumes": int(self.read_volumes)}

    def extract(self, kind: str, files: Sequence[Path], *, mask: Path | None = None,
                source: str) -> tuple[RawSeries, dict]:
        """Parcellate (and denoise) one scan.

        Parameters
        ----------
        kind : {"volume", "gifti", "cifti"}
        files : sequence of Path
            The image (or the left and right GIfTI).
        mask : Path, optional
            Brain mask of a volumetric scan.

        Returns
        -------
        raw : RawSeries
            ``data`` (T', P) float32 with NaN for parcels without voxels/vertices; ``tr`` is the
            TR stated inside the file (CIFTI) or None.
        info : dict
            ``volumes`` (T before denoising), ``empty_parcels`` (names), ``brain_mask``,
            ``header_tr`` (NIfTI header, seconds, informational), ``notes`` and, with confounds,
            the counts from :func:`~brainlm.data.fmriprep.denoise`.
        """
        names = self.atlas.parcel_names
        info: dict = {"brain_mask": None if mask is None else str(mask), "header_tr": None,
                      "notes": []}
        file_tr = None
        if kind == "volume":
            if self.surface:
                raise BrainLMInputError("a volumetric scan needs a volumetric atlas image "
                                        "(the atlas given is a surface atlas)", source)

            sig = extract_volume_signals(files[0], self.atlas_image, mask=mask,
                                         read_volumes=self.read_volumes)
            info["header_tr"] = sig.header_tr
            where = "voxel in this scan's grid" + (" and brain mask" if mask else "")
        elif kind in ("gifti", "cifti"):
            if not self.surface:
                raise BrainLMInputError("a surface scan (GIfTI/CIFTI) needs a surface atlas "
                                        "(.annot or .label.gii pair, or .dlabel.nii)", source)

            if kind == "gifti":
                data = read_gifti_series(files[0], files[1])
            else:
                data, file_tr = read_cifti_series(files[0])
            sig = extract_surface_signals(data, self.atlas_image, source=source)
            del data
            where = "vertex with data in this scan"
        else:
            raise BrainLMInputError(f"unknown scan kind {kind!r}", source)
        info["notes"] = list(sig.notes)
        info["volumes"] = int(sig.data.shape[0])
        info["empty_parcels"] = [names[i] for i in sig.empty_parcels]
        if sig.empty_parcels and self.bad_parcels == "error":
            listed = info["empty_parcels"]
            raise BrainLMInputError(
                f"{len(listed)} parcel(s) have no {where}: {listed[:5]}"
                f"{' ...' if len(listed) > 5 else ''}; expected every parcel covered (use "
                "--bad-parcels zero to mark such parcels missing)", source)
        x = sig.data
        if self.confounds.enabled:
            conf, sample_mask = self.confounds.load(files, x.shape[0], source=source)
            kept = x.shape[0] if sample_mask is None else len(sample_mask)
            censored = 1 - kept / x.shape[0]
            if censored > self.confounds.max_censored:
                raise BrainLMInputError(
                    f"{x.shape[0] - kept} of {x.shape[0]} volumes censored ({censored:.0%}) by "
                    f"confound strategy {self.confounds.name!r}; at most "
                    f"{self.confounds.max_censored:.0%} allowed (max_censored)", source)
            x, counts = denoise(x, conf, sample_mask, source=source)
            info.update(counts)
        return RawSeries(data=np.ascontiguousarray(x, dtype=np.float32), tr=file_tr,
                         parcel_names=None, source=source), info


def load_atlas_image(files: str | Path | Sequence[str | Path], labels: str | Path | None = None, *,
                     mesh: str | Sequence[str | Path] | None = None,
                     name: str | None = None) -> VolumeAtlas | SurfaceAtlas:
    """A volumetric (one NIfTI) or surface (an .annot/.label.gii pair, or a .dlabel.nii) atlas,
    told apart by the file names; see :func:`~brainlm.data.volumes.load_volume_atlas` and
    :func:`~brainlm.data.surfaces.load_surface_atlas`. A packaged atlas image's name
    (``"a424"``, see :func:`~brainlm.data.volumes.embedded_volume_atlas`) names itself; a file
    of that name in the working directory wins, as for checkpoints."""
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if len(paths) == 1 and str(paths[0]).lower() in EMBEDDED_ATLAS_IMAGES and not paths[0].exists():
        if labels is not None or mesh is not None:
            raise BrainLMInputError(f"the packaged atlas image {str(paths[0])!r} has its own labels "
                                    "(parcel names of its atlas table) and is volumetric: leave out "
                                    "--atlas-labels and --surface-mesh")
        return embedded_volume_atlas(str(paths[0]))
    if len(paths) == 2 or (len(paths) == 1 and is_surface_atlas_file(paths[0])):
        return load_surface_atlas(paths, labels, mesh=mesh, name=name)
    if len(paths) != 1:
        raise BrainLMInputError(f"atlas image: expected one NIfTI, one .dlabel.nii, or a left and "
                                f"right surface file; got {len(paths)} files")
    if mesh is not None:
        raise BrainLMInputError("a surface mesh applies only to surface atlases", str(paths[0]))
    return load_volume_atlas(paths[0], labels, name=name)


__all__ = ["ImageParcellation", "load_atlas_image"]
