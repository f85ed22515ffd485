"""4-D NIfTI scans -> parcel time series, with any volumetric atlas image.

A *labels* atlas is a 3-D image of integer labels (0 is background), parcellated through
nilearn's :class:`~nilearn.maskers.NiftiLabelsMasker` (mean over each parcel's voxels); a
*probabilistic* atlas is a 4-D image with one weight map per parcel, parcellated through
:class:`~nilearn.maskers.NiftiMapsMasker` (least-squares fit of the maps). Either way the atlas
is resampled to each scan's grid (nearest neighbour for labels, continuous for maps), so one
atlas works for scans of any voxel size, and the parcel centres that the model's spatial
embedding needs are computed from the atlas image itself (centres of mass, world mm).

A scan is read ``read_volumes`` volumes at a time, so a worker never holds more than one
block of one scan (a 91 x 109 x 91 x 490 float32 scan is 1.8 GB; a block of 32 volumes is
115 MB).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.data.atlas import Atlas, load_atlas
from brainlm.errors import BrainLMInputError
from brainlm.validation import positive_int_coerced

ATLAS_KINDS = ("auto", "labels", "maps")

#: Atlas images packaged with brainlm, by the name ``--atlas-image`` takes: the file in
#: ``brainlm/data/resources`` and the packaged atlas table whose parcels (order, names and
#: centres) the image's labels 1..P are (provenance in resources/README.md).
EMBEDDED_ATLAS_IMAGES = {"a424": "a424_2mm.nii.gz"}
NIFTI_SUFFIXES = (".nii.gz", ".nii")

# Header names accepted in a labels table (case-insensitive), first match wins.
_INDEX_COLUMNS = ("index", "value", "label_value", "key", "id", "roi_id", "label_id")
_NAME_COLUMNS = ("name", "label", "label_name", "region", "roi_name", "roi")
_NETWORK_COLUMNS = ("network", "yeo7", "yeo_network", "networks")
_ATLAS_ENTITY = re.compile(r"(?:^|_)atlas-([A-Za-z0-9]+)")


class AtlasResampledWarning(UserWarning):
    """The atlas image was on another voxel grid than the data and was resampled to it."""


@dataclass(frozen=True)
class VolumeAtlas:
    """A volumetric atlas image and the parcellation it defines.

    Parameters
    ----------
    image : Path
        The atlas NIfTI: 3-D integer labels (``kind="labels"``) or 4-D weight maps, one per
        parcel along the 4th axis (``kind="maps"``).
    kind : {"labels", "maps"}
    values : tuple of int, length P
        Labels: the label value of each parcel, in the column order of the time series.
        Maps: the index of each parcel's map along the 4th axis.
    atlas : Atlas
        Parcel names, centres of mass in world coordinates (mm) and optional networks.
    """

    image: Path
    kind: str
    values: tuple[int, ...]
    atlas: Atlas

    def to_dict(self) -> dict:
        """JSON-ready description (for corpus metadata and resume checks)."""
        return {"image": str(self.image), "kind": self.kind, "values": list(self.values),
                "masker": "nilearn.maskers.NiftiLabelsMasker" if self.kind == "labels"
                else "nilearn.maskers.NiftiMapsMasker",
                "resampling": "to each scan's grid, "
                + ("nearest neighbour" if self.kind == "labels" else "continuous")}


@dataclass(eq=False)
class VolumeSignals:
    """Parcel time series extracted from one 4-D image.

    Parameters
    ----------
    data : ndarray, shape (T, P), float32
        Mean (labels) or fitted map weight (maps) per volume and parcel; parcels with no voxel
        in the scan's grid (and brain mask) are NaN.
    empty_parcels : list of int
        Column indices of those parcels.
    header_tr : float or None
        The repetition time stated in the NIfTI header in seconds (``pixdim[4]``), when its
        unit is seconds or milliseconds; reported only, never trusted over a JSON sidecar.
    notes : list of str
        Things the user should know (e.g. the atlas was resampled).
    """

    data: np.ndarray
    empty_parcels: list[int]
    header_tr: float | None
    notes: list[str]


# -- atlas images ----------------------------------------------------------------------------
def is_nifti(path: str | Path) -> bool:
    """Whether ``path`` is named like a NIfTI file (``.nii`` or ``.nii.gz``, not CIFTI)."""
    name = Path(path).name.lower()
    if re.search(r"\.(dtseries|dlabel|dscalar|ptseries|pconn|dconn)\.nii$", name):
        return False
    return name.endswith(NIFTI_SUFFIXES) and not name.startswith(".")


def _strip_nifti(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _load_nifti(path: Path, what: str):
    import nibabel as nib

    if not path.is_file():
        raise BrainLMInputError(f"{what} not found", str(path))
    try:
        return nib.load(str(path), keep_file_open=True)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
        raise BrainLMInputError(f"cannot read {what} as NIfTI ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''})", str(path)) from None


def read_labels_table(path: str | Path) -> pd.DataFrame:
    """Read the names (and optional networks) of an atlas's labels.

    Parameters
    ----------
    path : str or Path
        * a TSV or CSV table with a header: an index column (``index``, as in BIDS
          ``*_dseg.tsv``, or ``value``/``key``/``id``), a name column (``name`` or ``label``)
          and optionally ``network``. Without an index column the rows are labels 1, 2, ...
          in order;
        * a ``.txt`` file without header: ``INDEX NAME ...`` per line (FreeSurfer colour
          tables, the AAL ``.txt``) or one name per line (labels 1, 2, ...).

    Returns
    -------
    pandas.DataFrame
        Columns ``index`` (int), ``name`` (str) and, when given, ``network``; index 0
        (background) removed.
    """
    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise BrainLMInputError("atlas labels table not found", src)
    low = p.name.lower()
    try:
        if low.endswith(".txt"):
            df = _read_labels_txt(p)
        else:
            sep = "," if low.endswith((".csv", ".csv.gz")) else "\t"
            df = _read_labels_header_table(pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False), src)
    except BrainLMInputError as e:
        raise BrainLMInputError(e.reason, src) from None
    except Exception as e:  # noqa: BLE001 - any parser failure is a bad file
        raise BrainLMInputError(f"cannot read atlas labels table ({type(e).__name__}: {e}); "
                                "expected columns index, name[, network]", src) from None
    df = df[df["index"] != 0].reset_index(drop=True)
    if df.empty:
        raise BrainLMInputError("atlas labels table lists no label other than 0 (background)", src)
    dupes = df["index"][df["index"].duplicated()].unique().tolist()
    if dupes:
        raise BrainLMInputError(f"atlas labels table lists label value(s) {dupes[:5]} more than "
                                "once; expected one row per label", src)
    dupes = df["name"][df["name"].duplicated()].unique().tolist()
    if dupes:
        raise BrainLMInputError(f"atlas labels table has duplicate name(s) {dupes[:5]}; "
                                "expected one distinct name per label", src)
    return df


def _read_labels_header_table(df: pd.DataFrame, src: str) -> pd.DataFrame:
    cols = {c.strip().lower(): c for c in df.columns}
    index_col = next((cols[c] for c in _INDEX_COLUMNS if c in cols), None)
    name_col = next((cols[c] for c in _NAME_COLUMNS if c in cols and cols[c] != index_col), None)
    net_col = next((cols[c] for c in _NETWORK_COLUMNS if c in cols), None)
    if index_col is None and "label" in cols and name_col != cols["label"] \
            and pd.to_numeric(df[cols["label"]], errors="coerce").notna().all():
        index_col = cols["label"]  # a numeric 'label' beside a 'name' column holds the values
    if name_col is None:
        raise BrainLMInputError(
            f"atlas labels table has no name column; expected one of {list(_NAME_COLUMNS)} "
            f"(and an index column {list(_INDEX_COLUMNS[:3])}); found {list(df.columns)}", src)
    out = pd.DataFrame({"name": df[name_col].astype(str).str.strip()})
    if index_col is None:
        out.insert(0, "index", np.arange(1, len(df) + 1))
    else:
        idx = pd.to_numeric(df[index_col], errors="coerce")
        bad = np.flatnonzero(idx.isna().to_numpy() | (idx % 1 != 0).to_numpy())
        if bad.size:
            raise BrainLMInputError(
                f"column {index_col!r} has a non-integer value {df[index_col].iloc[bad[0]]!r} in "
                f"data row {bad[0] + 1}; expected the integer label value of each row", src)
        out.insert(0, "index", idx.astype(np.int64).to_numpy())
    if net_col is not None:
        out["network"] = df[net_col].astype(str).str.strip().replace({"": None, "n/a": None})
    empty = np.flatnonzero(out["name"].to_numpy() == "")
    if empty.size:
        raise BrainLMInputError(f"column {name_col!r} is empty in data row {empty[0] + 1}; "
                                "expected a name for every label", src)
    return out


def _read_labels_txt(p: Path) -> pd.DataFrame:
    rows = []
    with open(p, encoding="utf-8-sig") as fh:
        lines = [ln.split("#", 1)[0].strip() for ln in fh]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise BrainLMInputError("atlas labels file is empty; expected INDEX NAME per line")
    indexed = lines[0].split()[0].lstrip("-").isdigit() and len(lines[0].split()) >= 2
    for k, line in enumerate(lines, start=1):
        parts = line.split()
        if indexed:
            if not parts[0].lstrip("-").isdigit() or len(parts) < 2:
                raise BrainLMInputError(f"line {k} is {line!r}; expected INDEX NAME (an integer "
                                        "label value, then its name)")
            rows.append((int(parts[0]), parts[1]))
        else:
            rows.append((k, line))
    return pd.DataFrame(rows, columns=["index", "name"])


def _atlas_name(image: Path) -> str:
    stem = _strip_nifti(image.name)
    m = _ATLAS_ENTITY.search(stem)
    return m.group(1) if m else stem


def parcel_centroids(img, values: Sequence[int]) -> np.ndarray:
    """Centres of mass of labelled parcels in world coordinates.

    Parameters
    ----------
    img : nibabel image, 3-D integer labels
    values : sequence of int, length P
        The label values, in parcel order.

    Returns
    -------
    ndarray, shape (P, 3), float64
        Mean world (x, y, z) in mm of each parcel's voxels (through the image affine).
    """
    from nibabel.affines import apply_affine
    from scipy import ndimage

    labels = np.asanyarray(img.dataobj)
    ijk = np.array(ndimage.center_of_mass(np.ones(labels.shape, np.float32), labels,
                                          np.asarray(values)), dtype=np.float64)
    return apply_affine(img.affine, ijk.reshape(-1, 3))


def map_centroids(img) -> np.ndarray:
    """Weighted centres of the maps of a probabilistic atlas (4-D), world mm.

    Each map's positive weights are the masses (negative weights, present in some ICA-derived
    atlases, are ignored).

    Returns
    -------
    ndarray, shape (K, 3), float64
    """
    from nibabel.affines import apply_affine
    from scipy import ndimage

    out = np.full((img.shape[3], 3), np.nan)
    for k in range(img.shape[3]):
        w = np.clip(np.asarray(img.dataobj[..., k], dtype=np.float64), 0, None)
        if w.sum() > 0:
            out[k] = ndimage.center_of_mass(w)
    return apply_affine(img.affine, out)


def load_volume_atlas(image: str | Path, labels: str | Path | None = None, *,
                      name: str | None = None, kind: str = "auto",
                      space: str | None = None) -> VolumeAtlas:
    """Read a volumetric atlas image (and its labels table) into a :class:`VolumeAtlas`.

    Parameters
    ----------
    image : str or Path
        NIfTI atlas. 3-D integer image: labels (0 is background). 4-D image: one probabilistic
        map per parcel along the 4th axis.
    labels : str or Path, optional
        Names (and networks) of the labels; see :func:`read_labels_table`. For a labels
        image it must list exactly the non-zero values present in the image; for maps, one
        row per map in order. Without it parcels are named ``label-<value>`` / ``map-<k>``.
    name : str, optional
        Atlas name (default: the BIDS ``atlas-`` entity of the file name, else its stem).
    kind : {"auto", "labels", "maps"}
        ``"auto"``: 3-D is labels, 4-D is maps.
    space : str, optional
        Coordinate space recorded with the atlas (default ``"MNI152"``).

    Returns
    -------
    VolumeAtlas
        Its ``atlas`` holds the parcel centres of mass from the image (world mm), which
        the model's spatial embedding uses.
    """
    path = Path(image)
    src = str(path)
    if kind not in ATLAS_KINDS:
        raise BrainLMInputError(f"atlas kind is {kind!r}; expected one of {list(ATLAS_KINDS)}", src)
    img, kind = _read_atlas_image(path, kind, src)
    table = read_labels_table(labels) if labels is not None else None
    if kind == "labels":
        values, names, networks = _labels_parcels(img, table, labels, src)
        xyz = parcel_centroids(img, values)
    else:
        values, names, networks = _maps_parcels(img.shape[3], table, labels, src)
        xyz = map_centroids(img)
        empty = np.flatnonzero(~np.isfinite(xyz).all(axis=1))
        if empty.size:
            raise BrainLMInputError(f"atlas maps {[names[i] for i in empty[:5]]} have no positive "
                                    "weight; expected one non-empty map per parcel", src)
    try:
        atlas = Atlas(name=name or _atlas_name(path), parcel_names=names, xyz=xyz,
                      networks=networks, space=space or "MNI152",
                      description=f"centres of mass of {path.name}")
    except BrainLMInputError as e:
        raise BrainLMInputError(e.reason, src) from None
    return VolumeAtlas(image=path, kind=kind, values=tuple(int(v) for v in values), atlas=atlas)


def _read_atlas_image(path: Path, kind: str, src: str):
    """The atlas NIfTI (a 4-D image with one volume read as 3-D) and its kind (``"auto"``
    settled: 3-D is labels, 4-D is maps); an error for any other shape."""
    if not is_nifti(path):
        raise BrainLMInputError("atlas image must be a NIfTI file (.nii or .nii.gz); surface "
                                "atlases (.annot, .label.gii, .dlabel.nii) go through "
                                "brainlm.data.surfaces", src)
    img = _load_nifti(path, "atlas image")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        import nibabel as nib

        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
        shape = img.shape
    if kind == "auto":
        kind = "labels" if len(shape) == 3 else "maps" if len(shape) == 4 else "?"
    if kind == "labels" and len(shape) != 3 or kind == "maps" and len(shape) != 4 or kind == "?":
        raise BrainLMInputError(
            f"atlas image has shape {shape}; expected 3-D integer labels or 4-D probabilistic "
            "maps (one per parcel along the 4th axis)", src)
    return img, kind


def _labels_parcels(img, table, labels, src: str) -> tuple[list[int], list[str], list | None]:
    """Label values, names and networks (or None) of a 3-D labels image: every non-zero value
    present, named ``label-<value>`` or by the labels ``table``, which must list exactly them."""
    data = np.asanyarray(img.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise BrainLMInputError(
                "3-D atlas image has non-integer values; expected integer labels (0 = "
                "background). A probabilistic atlas is 4-D, one map per parcel", src)
    present = np.unique(data.astype(np.int64))
    present = present[present != 0]
    if present.size == 0:
        raise BrainLMInputError("atlas image has no label other than 0 (background)", src)
    if table is None:
        return present.tolist(), [f"label-{v}" for v in present.tolist()], None
    listed = table["index"].to_numpy()
    missing = np.setdiff1d(listed, present)
    unlisted = np.setdiff1d(present, listed)
    if missing.size:
        raise BrainLMInputError(
            f"atlas image has no voxel with label value(s) {missing[:5].tolist()} listed "
            f"in the labels table {labels}; expected every listed label in the image", src)
    if unlisted.size:
        raise BrainLMInputError(
            f"atlas image has label value(s) {unlisted[:5].tolist()} that the labels "
            f"table {labels} does not list; expected a row for every non-zero label", src)
    values = table["index"].astype(int).tolist()
    networks = table["network"].tolist() if "network" in table else None
    return values, table["name"].tolist(), networks


def _maps_parcels(n_maps: int, table, labels, src: str) -> tuple[list[int], list[str], list | None]:
    """Map indices (0-based), names and networks (or None) of a 4-D image of ``n_maps``
    probabilistic maps: ``map-<k>``, or the labels ``table`` sorted by its index column."""
    if table is None:
        values = list(range(n_maps))
        return values, [f"map-{k + 1}" for k in values], None
    if len(table) != n_maps:
        raise BrainLMInputError(
            f"atlas image has {n_maps} maps; the labels table {labels} lists {len(table)} "
            "labels; expected one row per map, in map order", src)
    order = np.argsort(table["index"].to_numpy(), kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    networks = table["network"].tolist() if "network" in table else None
    return list(range(n_maps)), table["name"].tolist(), networks


def embedded_volume_atlas(name: str) -> VolumeAtlas:
    """A packaged atlas image by name (``"a424"``: upstream BrainLM's labels image, 2 mm MNI152).

    Label ``k`` is column ``k - 1`` of the packaged atlas table of the same name, so scans
    parcellated with it come out in exactly the parcel order, names and centres of
    ``load_atlas(name)``: what a checkpoint trained on that table expects. The table's centres
    are kept rather than the image's centres of mass (for A424 they differ by a median 3 mm),
    because they are the coordinates the checkpoints were trained with.
    """
    key = str(name).lower()
    if key not in EMBEDDED_ATLAS_IMAGES:
        raise BrainLMInputError(f"unknown packaged atlas image {name!r}; expected one of "
                                f"{list(EMBEDDED_ATLAS_IMAGES)} or a NIfTI/GIfTI/CIFTI atlas file")
    # A regular installation unpacks package data to files, which the workers reopen by path.
    image = Path(str(resources.files("brainlm.data") / "resources" / EMBEDDED_ATLAS_IMAGES[key]))
    loaded = load_volume_atlas(image, name=key, kind="labels")
    table = load_atlas(key)
    if loaded.values != tuple(range(1, table.n_parcels + 1)):
        raise BrainLMInputError(f"packaged atlas image does not hold labels 1..{table.n_parcels} "
                                f"of the {key} table; reinstall brainlm", str(image))
    return VolumeAtlas(image=image, kind="labels", values=loaded.values, atlas=table)


# -- the atlas on a scan's grid ---------------------------------------------------------------
@dataclass(eq=False)
class _GridAtlas:
    masker: object | None   # a fitted nilearn masker over the parcels present on this grid
    columns: np.ndarray     # output column of each masker region, in masker order
    empty: list[int]        # parcels with no voxel on this grid (and in the mask)
    note: str | None


def _same_grid(a_shape, a_affine, b_shape, b_affine) -> bool:
    return tuple(a_shape[:3]) == tuple(b_shape[:3]) and np.allclose(a_affine, b_affine, atol=1e-3)


def _extent(shape, affine) -> str:
    from nibabel.affines import apply_affine

    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], dtype=float)
    xyz = apply_affine(affine, corners)
    lo, hi = xyz.min(0), xyz.max(0)
    return ", ".join(f"{a} {lo[i]:.0f}..{hi[i]:.0f}" for i, a in enumerate("xyz"))


def _voxel_mm(affine) -> str:
    return "x".join(f"{v:g}" for v in np.round(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)), 2))


@lru_cache(maxsize=4)
def _grid_atlas(image: str, kind: str, values: tuple[int, ...], shape: tuple[int, ...],
                affine_key: tuple[float, ...], mask: str | None) -> _GridAtlas:
    """The atlas resampled to one data grid, with a fitted masker (cached per process:
    scans of one study share a grid, so resampling happens once per worker)."""
    import nibabel as nib
    from nilearn.image import resample_img

    affine = np.array(affine_key).reshape(4, 4)
    atlas_img = nib.load(image)
    note = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        if not _same_grid(atlas_img.shape, atlas_img.affine, shape, affine):
            note = (f"atlas image {Path(image).name} ({_voxel_mm(atlas_img.affine)} mm voxels, "
                    f"{'x'.join(map(str, atlas_img.shape[:3]))}) was resampled to the data grid "
                    f"({_voxel_mm(affine)} mm, {'x'.join(map(str, shape[:3]))}) by "
                    f"{'nearest-neighbour' if kind == 'labels' else 'continuous'} interpolation")
            from nilearn.image.resampling import BoundingBoxError

            try:
                atlas_img = resample_img(atlas_img, target_affine=affine, target_shape=shape[:3],
                                         interpolation="nearest" if kind == "labels" else "continuous",
                                         force_resample=True, copy_header=True)
            except BoundingBoxError:  # the data's field of view misses the atlas entirely
                return _GridAtlas(None, np.array([], int), list(range(len(values))), note)
        inside = None
        if mask is not None:
            mask_img = nib.load(mask)
            if not _same_grid(mask_img.shape, mask_img.affine, shape, affine):
                mask_img = resample_img(mask_img, target_affine=affine, target_shape=shape[:3],
                                        interpolation="nearest", force_resample=True, copy_header=True)
            inside = np.asanyarray(mask_img.dataobj) > 0
    if kind == "labels":
        data = np.asarray(atlas_img.dataobj).astype(np.int64)
        if inside is not None:
            data = np.where(inside, data, 0)
        data = np.where(np.isin(data, values), data, 0)
        present = np.unique(data)
        present = present[present != 0]
        col_of = {v: i for i, v in enumerate(values)}
        empty = [i for i, v in enumerate(values) if v not in set(present.tolist())]
        if present.size == 0:
            return _GridAtlas(None, np.array([], int), empty, note)
        from nilearn.maskers import NiftiLabelsMasker

        masker = NiftiLabelsMasker(nib.Nifti1Image(data.astype(np.int32), affine),
                                   resampling_target=None, reports=False, strategy="mean")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            masker.fit()
        region_values = [masker.region_ids_[k] for k in sorted(k for k in masker.region_ids_
                                                                  if k != "background")]
        columns = np.array([col_of[int(v)] for v in region_values])
        return _GridAtlas(masker, columns, empty, note)
    from nilearn.image import index_img
    from nilearn.maskers import NiftiMapsMasker

    maps = np.asarray(atlas_img.dataobj, dtype=np.float32)
    if inside is not None:
        maps = maps * inside[..., None]
    weight = np.abs(maps).reshape(-1, maps.shape[3]).sum(0)
    keep = np.flatnonzero(weight > 0)
    empty = np.flatnonzero(weight == 0).tolist()
    if keep.size == 0:
        return _GridAtlas(None, np.array([], int), empty, note)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        maps_img = index_img(nib.Nifti1Image(maps, affine), keep)
        masker = NiftiMapsMasker(maps_img, resampling_target=None, reports=False, allow_overlap=True)
        masker.fit()
    return _GridAtlas(masker, keep, empty, note)


def _header_tr(img) -> float | None:
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        return None
    unit = img.header.get_xyzt_units()[1]
    if unit == "sec":
        return float(zooms[3])
    if unit == "msec":
        return float(zooms[3]) / 1000.0
    return None


def open_4d(path: str | Path):
    """Open a 4-D NIfTI lazily (no voxel data read), checking that it is a time series.

    Raises
    ------
    BrainLMInputError
        Missing/unreadable file, a 3-D image, a single volume, or an image with more axes.
    """
    p = Path(path)
    img = _load_nifti(p, "image")
    shape = img.shape
    if len(shape) == 5 and shape[3] == 1:
        raise BrainLMInputError(f"image has shape {shape} (time on the 5th axis); expected a 4-D "
                                "time series (x, y, z, time)", str(p))
    if len(shape) != 4:
        raise BrainLMInputError(
            f"image is {len(shape)}-D with shape {shape}; expected a 4-D time series (x, y, z, "
            "time) such as fMRIPrep's *_desc-preproc_bold.nii.gz", str(p))
    if shape[3] < 2:
        raise BrainLMInputError(f"image has shape {shape}: a single volume; expected a 4-D time "
                                "series with at least 2 volumes", str(p))
    return img


def extract_volume_signals(path: str | Path, atlas: VolumeAtlas, *, mask: str | Path | None = None,
                           read_volumes: int = 32) -> VolumeSignals:
    """Parcel time series of a 4-D NIfTI scan.

    Parameters
    ----------
    path : str or Path
        4-D image (x, y, z, time), ``.nii`` or ``.nii.gz``, in the atlas's space.
    atlas : VolumeAtlas
        Resampled to the image's grid when the grids differ (noted in ``notes``).
    mask : str or Path, optional
        Brain mask (3-D); voxels outside it are left out of every parcel (fMRIPrep's
        ``*_desc-brain_mask.nii.gz``).
    read_volumes : int
        Volumes read and parcellated at a time; bounds memory to about
        ``read_volumes * voxels * 4`` bytes (plus nilearn's working copy).

    Returns
    -------
    VolumeSignals
        ``data`` of shape (T, P), float32, in the atlas's parcel order; parcels without any
        voxel on the grid are NaN (listed in ``empty_parcels``).

    Raises
    ------
    BrainLMInputError
        Not a 4-D image, or the atlas does not overlap the image (or its mask) at all.
    """
    import nibabel as nib

    src = str(path)
    positive_int_coerced(read_volumes, "read_volumes is")
    img = open_4d(path)
    shape, affine = img.shape, img.affine
    if mask is not None:
        _load_nifti(Path(mask), "brain mask")
    grid = _grid_atlas(str(atlas.image), atlas.kind, atlas.values, tuple(shape[:3]),
                       tuple(np.asarray(affine, dtype=float).ravel().round(6)),
                       None if mask is None else str(mask))
    if grid.masker is None:
        a = nib.load(str(atlas.image))
        raise BrainLMInputError(
            f"atlas image {atlas.image.name} does not overlap the data"
            f"{' inside its brain mask' if mask is not None else ''}: atlas covers "
            f"({_extent(a.shape, a.affine)}) mm, the image ({_extent(shape, affine)}) mm; "
            "expected both in the same space (e.g. MNI152)", src)
    n_t = shape[3]
    out = np.full((n_t, atlas.atlas.n_parcels), np.nan, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        for t0 in range(0, n_t, int(read_volumes)):
            t1 = min(n_t, t0 + int(read_volumes))
            try:
                block = np.asarray(img.dataobj[..., t0:t1], dtype=np.float32)
            except Exception as e:  # noqa: BLE001 - truncated or corrupt data
                raise BrainLMInputError(
                    f"cannot read volumes {t0}-{t1 - 1} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}); truncated file?", src) from None
            signals = grid.masker.transform(nib.Nifti1Image(block, affine))
            out[t0:t1, grid.columns] = signals
            del block
    notes = [grid.note] if grid.note else []
    return VolumeSignals(data=out, empty_parcels=list(grid.empty), header_tr=_header_tr(img),
                         notes=notes)


__all__ = ["ATLAS_KINDS", "EMBEDDED_ATLAS_IMAGES", "AtlasResampledWarning", "VolumeAtlas",
           "VolumeSignals", "embedded_volume_atlas", "extract_volume_signals", "is_nifti",
           "load_volume_atlas", "map_centroids", "open_4d", "parcel_centroids", "read_labels_table"]
