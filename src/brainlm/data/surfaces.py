"""Surface scans (GIfTI pairs, CIFTI dense time series) -> parcel time series.

The atlas is a surface labels atlas (a FreeSurfer ``.annot`` or GIfTI ``.label.gii`` per
hemisphere, or a CIFTI ``.dlabel.nii``) on a mesh with the data's vertex count. Signals are
averaged over each parcel's vertices by nilearn's :class:`~nilearn.maskers.SurfaceLabelsMasker`
on a :class:`~nilearn.surface.SurfaceImage`. Parcels are kept per hemisphere, and the parcel
centres the model's spatial embedding needs are the mean coordinates (mm) of each parcel's
vertices on the mesh. nilearn ships the fsaverage5 meshes, so fsaverage5 atlases need nothing
else; other meshes (fsLR 32k, fsaverage6 ...) are given as a pair of GIfTI surface files.

CIFTI files are read for their cortical surface models (``CIFTI_STRUCTURE_CORTEX_LEFT`` and
``..._RIGHT``); vertices a file leaves out (the medial wall) are left out of every parcel.
Subcortical voxels of a CIFTI file are not used.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from brainlm.data.atlas import Atlas
from brainlm.data.volumes import read_labels_table
from brainlm.errors import BrainLMInputError

HEMISPHERES = ("left", "right")
#: Vertices per hemisphere of FreeSurfer's fsaverage meshes. Only fsaverage5 ships with nilearn;
#: the others need their surface files (``mesh=``).
FSAVERAGE_VERTICES = {642: "fsaverage3", 2562: "fsaverage4", 10242: "fsaverage5",
                      40962: "fsaverage6", 163842: "fsaverage7"}
BUNDLED_MESHES = ("fsaverage5",)
_CORTEX = {"left": "CIFTI_STRUCTURE_CORTEX_LEFT", "right": "CIFTI_STRUCTURE_CORTEX_RIGHT"}
_BACKGROUND_NAME = re.compile(r"^(\?+|unknown|none|medial[ _-]?wall|background.*|corpus[ _-]?callosum)$",
                              re.IGNORECASE)
_LEFT = re.compile(r"(hemi-L(?![a-z])|(^|[._-])lh[._-]|\.L\.|_L\.|(^|[._-])left[._-])", re.IGNORECASE)
_RIGHT = re.compile(r"(hemi-R(?![a-z])|(^|[._-])rh[._-]|\.R\.|_R\.|(^|[._-])right[._-])", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class SurfaceAtlas:
    """A surface parcellation of both hemispheres.

    Parameters
    ----------
    labels : dict of str -> ndarray of int32, shape (n_vertices,)
        ``"left"`` and ``"right"``: the parcel number (1..P, columns in that order) of every
        vertex; 0 where no parcel (medial wall, background).
    mesh : str or tuple of str
        ``"fsaverage5"`` (the pial mesh nilearn ships) or the (left, right) GIfTI surface files.
    atlas : Atlas
        Parcel names and centres (mean vertex coordinates on the mesh, mm).
    files : tuple of str
        The atlas file(s) read.
    """

    labels: dict
    mesh: str | tuple[str, str]
    atlas: Atlas
    files: tuple[str, ...]

    @property
    def n_vertices(self) -> dict[str, int]:
        """Vertices per hemisphere."""
        return {h: int(self.labels[h].size) for h in HEMISPHERES}

    def to_dict(self) -> dict:
        """JSON-ready description (for corpus metadata and resume checks)."""
        return {"files": list(self.files), "mesh": self.mesh if isinstance(self.mesh, str)
                else list(self.mesh), "vertices": self.n_vertices,
                "masker": "nilearn.maskers.SurfaceLabelsMasker"}


@dataclass(eq=False)
class SurfaceSignals:
    """Parcel time series extracted from one surface scan.

    Parameters
    ----------
    data : ndarray, shape (T, P), float32
        Mean over each parcel's vertices; NaN for parcels with no vertex in the data.
    empty_parcels : list of int
    file_tr : float or None
        Repetition time in seconds stated inside the file (CIFTI series step), else None.
    notes : list of str
    """

    data: np.ndarray
    empty_parcels: list[int]
    file_tr: float | None
    notes: list[str]


# -- file names ------------------------------------------------------------------------------
def hemisphere_of(path: str | Path) -> str | None:
    """``"left"``/``"right"`` from a file name (``hemi-L``, ``lh.``, ``.L.`` ...), else None."""
    name = Path(path).name
    left, right = bool(_LEFT.search(name)), bool(_RIGHT.search(name))
    if left == right:
        return None
    return "left" if left else "right"


def _order_pair(files: Sequence[str | Path], what: str) -> tuple[Path, Path]:
    """(left, right) from two files, by their names; in the order given when names do not say."""
    a, b = (Path(f) for f in files)
    ha, hb = hemisphere_of(a), hemisphere_of(b)
    if ha == "right" and hb != "right" or hb == "left" and ha != "left":
        return b, a
    if ha == hb and ha is not None:
        raise BrainLMInputError(f"both {what} files are named as the {ha} hemisphere; expected one "
                                f"left and one right", f"{a}, {b}")
    return a, b


# -- atlases ---------------------------------------------------------------------------------
def _read_hemi_labels(path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """Label value per vertex and the names of the values, from an .annot or a GIfTI file."""
    import nibabel as nib

    src = str(path)
    if not path.is_file():
        raise BrainLMInputError("surface atlas file not found", src)
    low = path.name.lower()
    try:
        if low.endswith(".annot"):
            values, _, names = nib.freesurfer.read_annot(str(path))
            names = {i: (n.decode() if isinstance(n, bytes) else str(n)) for i, n in enumerate(names)}
            return np.asarray(values, dtype=np.int64), names
        if low.endswith(".gii"):
            img = nib.load(str(path))
            if len(img.darrays) != 1:
                raise BrainLMInputError(f"GIfTI atlas has {len(img.darrays)} data arrays; expected "
                                        "one array of integer labels per vertex", src)
            data = np.asarray(img.darrays[0].data)
            if data.ndim != 1 or not (np.issubdtype(data.dtype, np.integer)
                                      or np.array_equal(data, np.round(data))):
                raise BrainLMInputError(f"GIfTI atlas holds {data.dtype} data of shape {data.shape}; "
                                        "expected one integer label per vertex", src)
            table = img.labeltable.get_labels_as_dict() if img.labeltable is not None else {}
            return data.astype(np.int64), {int(k): str(v) for k, v in table.items()}
    except BrainLMInputError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
        raise BrainLMInputError(f"cannot read surface atlas ({type(e).__name__}: {e})", src) from None
    raise BrainLMInputError("unsupported surface atlas file; expected a FreeSurfer .annot, a GIfTI "
                            ".label.gii per hemisphere, or a CIFTI .dlabel.nii", src)


def _read_dlabel(path: Path) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Cortical label values on the full vertex range of each hemisphere, from a CIFTI dlabel."""
    import nibabel as nib
    from nibabel import cifti2

    src = str(path)
    try:
        img = nib.load(str(path))
        label_axis, models = img.header.get_axis(0), img.header.get_axis(1)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # noqa: BLE001
        raise BrainLMInputError(f"cannot read CIFTI dlabel ({type(e).__name__}: {e})", src) from None
    if not isinstance(label_axis, cifti2.LabelAxis) or not isinstance(models, cifti2.BrainModelAxis):
        raise BrainLMInputError("CIFTI atlas is not a dense label file (.dlabel.nii: label x "
                                "brain-model axes)", src)
    names = {int(k): str(v[0]) for k, v in label_axis.label[0].items()}
    labels = {}
    for hemi in HEMISPHERES:
        labels[hemi] = _scatter_cortex(models, data[0], hemi, src, fill=0).astype(np.int64)
    return labels, names


def _scatter_cortex(models, row: np.ndarray, hemi: str, src: str, fill) -> np.ndarray:
    """Values of one CIFTI row placed on all vertices of one cortical hemisphere."""
    structure = _CORTEX[hemi]
    for name, slc, bm in models.iter_structures():
        if name == structure:
            out = np.full(bm.nvertices[structure], fill, dtype=row.dtype if fill == 0 else np.float32)
            out[bm.vertex] = row[slc]
            return out
    raise BrainLMInputError(f"CIFTI file has no {structure} surface model; expected both cortical "
                            "hemispheres", src)


@lru_cache(maxsize=4)
def load_mesh(mesh: str | tuple[str, str]):
    """A nilearn :class:`~nilearn.surface.PolyMesh`: ``"fsaverage5"`` (pial, bundled with
    nilearn, no download) or a (left, right) pair of GIfTI surface files."""
    from nilearn.surface import PolyMesh

    if isinstance(mesh, str):
        if mesh not in BUNDLED_MESHES:
            raise BrainLMInputError(
                f"mesh {mesh!r} is not bundled with nilearn (only {list(BUNDLED_MESHES)}); pass "
                "its surface files (left and right GIfTI, e.g. *.pial.surf.gii)")
        from nilearn.datasets import load_fsaverage

        return load_fsaverage(mesh).pial
    left, right = _order_pair(mesh, "surface mesh")
    for p in (left, right):
        if not p.is_file():
            raise BrainLMInputError("surface mesh file not found", str(p))
    try:
        return PolyMesh(left=str(left), right=str(right))
    except Exception as e:  # noqa: BLE001
        raise BrainLMInputError(f"cannot read surface mesh ({type(e).__name__}: {e}); expected "
                                "GIfTI surface files (*.surf.gii) with coordinates and faces",
                                f"{left}, {right}") from None


def load_surface_atlas(files: str | Path | Sequence[str | Path], labels: str | Path | None = None,
                       *, mesh: str | Sequence[str | Path] | None = None, name: str | None = None,
                       space: str | None = None) -> SurfaceAtlas:
    """Read a surface labels atlas.

    Parameters
    ----------
    files : path or pair of paths
        One CIFTI ``.dlabel.nii``, or a left and a right hemisphere file (FreeSurfer ``.annot``
        or GIfTI ``.label.gii``; the hemisphere is read from the names ``hemi-L``, ``lh.``,
        ``.L.`` ..., else the order is left, right).
    labels : path, optional
        A table (see :func:`brainlm.data.volumes.read_labels_table`) renaming the labels or
        adding a ``network`` column, matched on label value; only for atlases whose label
        values differ between hemispheres.
    mesh : str or pair of paths, optional
        ``"fsaverage5"`` or (left, right) GIfTI surface files with the atlas's vertex count.
        Default: fsaverage5 when the atlas has 10242 vertices per hemisphere.
    name : str, optional
        Atlas name (default: the file name's BIDS ``atlas-`` entity or stem).
    space : str, optional
        Recorded coordinate space (default ``"<mesh> (approx. MNI)"`` for fsaverage).

    Returns
    -------
    SurfaceAtlas
        Parcels numbered left hemisphere first, each hemisphere by increasing label value.
        Names shared by both hemispheres get ``L_``/``R_`` prefixes. Value 0, negative values
        and labels named like ``???``, ``Unknown`` or ``Medial_Wall`` are background.
    """
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    srcs = ", ".join(map(str, paths))
    raw, per_hemi_names, paths = _read_surface_labels(paths, srcs)
    parcels = _surface_parcels(raw, per_hemi_names, srcs)
    networks = None
    if labels is not None:
        parcels, networks = _named_by_table(parcels, labels)
    names = [n for _, _, n in parcels]
    if len(set(names)) != len(names):
        names = [f"{'L' if h == 'left' else 'R'}_{n}" for h, _, n in parcels]

    numbered = {h: np.zeros(raw[h].shape, np.int32) for h in HEMISPHERES}
    for k, (hemi, v, _) in enumerate(parcels, start=1):
        numbered[hemi][raw[hemi] == v] = k
    n_vertices = {h: raw[h].size for h in HEMISPHERES}
    mesh_key = _mesh_of_atlas(mesh, n_vertices, srcs)
    xyz = _parcel_centres(load_mesh(mesh_key), parcels, numbered, n_vertices, srcs)
    if space is None:
        space = f"{mesh_key}-pial (approx. MNI)" if isinstance(mesh_key, str) else "surface mesh (mm)"
    try:
        atlas = Atlas(name=name or _default_atlas_name(paths[0]), parcel_names=names, xyz=xyz, networks=networks,
                      space=space, description=f"mean vertex coordinates on {mesh_key}")
    except BrainLMInputError as e:
        raise BrainLMInputError(e.reason, srcs) from None
    return SurfaceAtlas(labels=numbered, mesh=mesh_key, atlas=atlas,
                        files=tuple(str(p) for p in paths))


def _read_surface_labels(paths: list[Path], srcs: str) -> tuple[dict, dict, list[Path]]:
    """The label value of every vertex per hemisphere (``{"left": (V_L,), "right": (V_R,)}``),
    the label names per hemisphere (value -> name), and the files in left, right order."""
    if len(paths) == 1 and paths[0].name.lower().endswith(".dlabel.nii"):
        raw, names = _read_dlabel(paths[0])
        per_hemi_names = {h: names for h in HEMISPHERES}
    elif len(paths) == 2:
        left, right = _order_pair(paths, "surface atlas")
        raw, per_hemi_names = {}, {}
        for hemi, p in (("left", left), ("right", right)):
            raw[hemi], per_hemi_names[hemi] = _read_hemi_labels(p)
        paths = [left, right]
    else:
        raise BrainLMInputError(
            f"a surface atlas is one CIFTI .dlabel.nii or two files (left and right .annot or "
            f".label.gii); got {len(paths)} file(s)", srcs)
    return raw, per_hemi_names, paths


def _surface_parcels(raw: dict, per_hemi_names: dict, srcs: str) -> list[tuple[str, int, str]]:
    """The parcels, (hemisphere, label value, name), left hemisphere first, each by increasing
    value; background (value <= 0, names like ``???`` or ``Medial_Wall``) left out."""
    parcels: list[tuple[str, int, str]] = []  # (hemi, value, name)
    for hemi in HEMISPHERES:
        for v in np.unique(raw[hemi]):
            v = int(v)
            nm = per_hemi_names[hemi].get(v, f"label-{v}")
            if v <= 0 or _BACKGROUND_NAME.match(nm.strip()):
                continue
            parcels.append((hemi, v, nm))
    if not parcels:
        raise BrainLMInputError("surface atlas has no label other than background", srcs)
    return parcels


def _named_by_table(parcels: list[tuple[str, int, str]], labels: str | Path
                    ) -> tuple[list[tuple[str, int, str]], list | None]:
    """The parcels renamed by a labels table (matched on label value), and their networks when
    the table has a ``network`` column."""
    table = read_labels_table(labels)
    values = [v for _, v, _ in parcels]
    if len(set(values)) != len(values):
        raise BrainLMInputError(
            "label values repeat across hemispheres, so a labels table cannot tell them "
            "apart; the names inside the atlas files are used without it", str(labels))
    rows = dict(zip(table["index"].astype(int), range(len(table))))
    missing = [v for v in values if v not in rows]
    if missing:
        raise BrainLMInputError(f"labels table does not list atlas label value(s) {missing[:5]}; "
                                "expected a row for every label", str(labels))
    parcels = [(h, v, table["name"].iat[rows[v]]) for h, v, _ in parcels]
    networks = None
    if "network" in table:
        networks = [table["network"].iat[rows[v]] for _, v, _ in parcels]
    return parcels, networks


def _mesh_of_atlas(mesh, n_vertices: dict[str, int], srcs: str) -> str | tuple[str, str]:
    """The mesh to compute parcel centres on: the one given (a bundled name, or left and right
    surface files), else fsaverage5 when the atlas has its vertex count."""
    if mesh is None:
        mesh_key: str | tuple[str, str] = FSAVERAGE_VERTICES.get(n_vertices["left"], "")
        if mesh_key not in BUNDLED_MESHES or n_vertices["left"] != n_vertices["right"]:
            raise BrainLMInputError(
                f"surface atlas has {n_vertices['left']} + {n_vertices['right']} vertices; only "
                f"fsaverage5 (10242 per hemisphere) ships with nilearn, so pass the mesh's "
                "surface files (left and right GIfTI, e.g. fsLR 32k midthickness) as mesh=", srcs)
    else:
        mesh_key = mesh if isinstance(mesh, str) else tuple(str(p) for p in _order_pair(mesh, "surface mesh"))
    return mesh_key


def _parcel_centres(poly, parcels: list[tuple[str, int, str]], numbered: dict, n_vertices: dict[str, int],
                    srcs: str) -> np.ndarray:
    """Mean vertex coordinates of every parcel on ``poly`` (mm), shape (P, 3); the mesh must
    have the atlas's vertex count in both hemispheres."""
    for hemi in HEMISPHERES:
        if poly.parts[hemi].n_vertices != n_vertices[hemi]:
            raise BrainLMInputError(
                f"the {hemi} mesh has {poly.parts[hemi].n_vertices} vertices; the atlas has "
                f"{n_vertices[hemi]}; expected the mesh the atlas was made on", srcs)
    xyz = np.zeros((len(parcels), 3))
    for k, (hemi, _, _) in enumerate(parcels):
        xyz[k] = np.asarray(poly.parts[hemi].coordinates)[numbered[hemi] == k + 1].mean(0)
    return xyz


def _default_atlas_name(path: Path) -> str:
    """The BIDS ``atlas-`` entity of a file name, else its stem without hemisphere markers."""
    stem = re.sub(r"\.(dlabel\.nii|label\.gii|annot|gii)$", "", path.name, flags=re.IGNORECASE)
    m = re.search(r"(?:^|_)atlas-([A-Za-z0-9]+)", stem)
    return m.group(1) if m else re.sub(r"^(lh|rh)\.|[._-]?(hemi-[LR]|[LR])$", "", stem) or stem


# -- data ------------------------------------------------------------------------------------
def read_gifti_series(left: str | Path, right: str | Path) -> dict[str, np.ndarray]:
    """A pair of GIfTI time series (``*_hemi-L_*_bold.func.gii`` and its right twin).

    Returns
    -------
    dict ``"left"``/``"right"`` -> ndarray, shape (n_vertices, T), float32
    """
    import nibabel as nib

    out = {}
    for hemi, p in (("left", Path(left)), ("right", Path(right))):
        if not p.is_file():
            raise BrainLMInputError(f"{hemi} hemisphere GIfTI file not found", str(p))
        try:
            data = nib.load(str(p)).agg_data()
        except Exception as e:  # noqa: BLE001
            raise BrainLMInputError(f"cannot read GIfTI ({type(e).__name__}: {e})", str(p)) from None
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] < 2:
            raise BrainLMInputError(
                f"GIfTI holds data of shape {data.shape}; expected a time series (one data array "
                "per volume, at least 2)", str(p))
        out[hemi] = np.ascontiguousarray(data, dtype=np.float32)
    if out["left"].shape[1] != out["right"].shape[1]:
        raise BrainLMInputError(f"hemispheres differ in length: {out['left'].shape[1]} vs "
                                f"{out['right'].shape[1]} volumes", f"{left}, {right}")
    return out


def read_cifti_series(path: str | Path) -> tuple[dict[str, np.ndarray], float | None]:
    """The cortical surfaces of a CIFTI dense time series (``*.dtseries.nii``).

    Returns
    -------
    data : dict ``"left"``/``"right"`` -> ndarray, shape (n_vertices, T), float32
        On the full vertex range of each hemisphere's mesh; NaN at vertices the file leaves out.
    tr : float or None
        The series step in seconds, when the time axis is in seconds.
    """
    import nibabel as nib
    from nibabel import cifti2

    src = str(path)
    if not Path(path).is_file():
        raise BrainLMInputError("CIFTI file not found", src)
    try:
        img = nib.load(src)
        series, models = img.header.get_axis(0), img.header.get_axis(1)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # noqa: BLE001
        raise BrainLMInputError(f"cannot read CIFTI ({type(e).__name__}: {e})", src) from None
    if not isinstance(series, cifti2.SeriesAxis) or not isinstance(models, cifti2.BrainModelAxis):
        raise BrainLMInputError("CIFTI file is not a dense time series (.dtseries.nii: series x "
                                "brain-model axes)", src)
    if data.shape[0] < 2:
        raise BrainLMInputError(f"CIFTI series has {data.shape[0]} time point(s); expected >= 2", src)
    tr = float(series.step) if series.unit == "SECOND" and series.step > 0 else None
    out = {}
    for hemi in HEMISPHERES:
        structure = _CORTEX[hemi]
        for name, slc, bm in models.iter_structures():
            if name == structure:
                full = np.full((bm.nvertices[structure], data.shape[0]), np.nan, np.float32)
                full[bm.vertex] = data[:, slc].T
                out[hemi] = full
                break
        else:
            raise BrainLMInputError(f"CIFTI file has no {structure} surface model; expected both "
                                    "cortical hemispheres", src)
    return out, tr


def extract_surface_signals(data: dict[str, np.ndarray], atlas: SurfaceAtlas, *,
                            source: str = "surface data") -> SurfaceSignals:
    """Mean over each parcel's vertices, through nilearn's SurfaceLabelsMasker.

    Parameters
    ----------
    data : dict ``"left"``/``"right"`` -> ndarray, shape (n_vertices, T)
        Vertices with NaN in any volume are left out of their parcel.
    atlas : SurfaceAtlas
        Must have the data's vertex count per hemisphere.

    Returns
    -------
    SurfaceSignals
        ``data`` (T, P) float32; parcels without a vertex in the data are NaN.
    """
    from nilearn.maskers import SurfaceLabelsMasker
    from nilearn.surface import SurfaceImage

    for hemi in HEMISPHERES:
        if data[hemi].shape[0] != atlas.labels[hemi].size:
            raise BrainLMInputError(
                f"the {hemi} hemisphere has {data[hemi].shape[0]} vertices; the atlas has "
                f"{atlas.labels[hemi].size} (mesh {atlas.mesh}); expected data on the atlas's mesh",
                source)
    n_t = data["left"].shape[1]
    labels, notes = {}, []
    for hemi in HEMISPHERES:
        valid = np.isfinite(data[hemi]).all(axis=1)
        labels[hemi] = np.where(valid, atlas.labels[hemi], 0).astype(np.int32)
    present = np.union1d(np.unique(labels["left"]), np.unique(labels["right"]))
    present = present[present > 0]
    n_p = atlas.atlas.n_parcels
    empty = sorted(set(range(n_p)) - {int(v) - 1 for v in present})
    if present.size == 0:
        raise BrainLMInputError(f"no atlas parcel has a vertex with data (atlas {atlas.files})", source)
    mesh = load_mesh(atlas.mesh)
    clean = {h: np.nan_to_num(data[h], nan=0.0) for h in HEMISPHERES}
    masker = SurfaceLabelsMasker(SurfaceImage(mesh, labels), reports=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        signals = masker.fit_transform(SurfaceImage(mesh, clean))
    ids = [masker.region_ids_[k] for k in sorted(k for k in masker.region_ids_ if k != "background")]
    out = np.full((n_t, n_p), np.nan, np.float32)
    out[:, np.asarray(ids, dtype=int) - 1] = signals
    return SurfaceSignals(data=out, empty_parcels=empty, file_tr=None, notes=notes)


def is_surface_atlas_file(path: str | Path) -> bool:
    """Whether a file is named like a surface atlas (.annot, .label.gii, .dlabel.nii)."""
    low = Path(path).name.lower()
    return low.endswith((".annot", ".label.gii", ".dlabel.nii"))


__all__ = ["BUNDLED_MESHES", "FSAVERAGE_VERTICES", "HEMISPHERES", "SurfaceAtlas", "SurfaceSignals",
           "extract_surface_signals", "hemisphere_of", "is_surface_atlas_file", "load_mesh",
           "load_surface_atlas", "read_cifti_series", "read_gifti_series"]
