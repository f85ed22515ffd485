"""Parcellations: parcel names, MNI coordinates (mm) and optional network labels.

The model's spatial embedding is computed from each parcel's coordinates, so an `Atlas` is
all that is needed to run one model on any parcellation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.errors import BrainLMInputError

EMBEDDED_ATLASES = ("aal2", "schaefer100", "schaefer200", "schaefer400", "a424")

#: The Yeo-7 networks in their usual order (Yeo et al. 2011).
YEO7_ORDER = ("Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default")


def network_order(names) -> list[str]:
    """The distinct network names among ``names`` in display order: the Yeo-7 networks in their
    usual order, then any others alphabetically. ``None`` and empty names (unlabelled parcels)
    are left out."""
    present = {str(n) for n in names if n is not None and str(n) != ""}
    return [n for n in YEO7_ORDER if n in present] + sorted(present - set(YEO7_ORDER))


@dataclass(frozen=True, eq=False)
class Atlas:
    """A parcellation of the brain into ``P`` parcels.

    Parameters
    ----------
    name : str
        Short identifier, e.g. ``"schaefer100"``.
    parcel_names : sequence of str, length P
        Unique parcel labels in the column order of the time series.
    xyz : array-like, shape (P, 3)
        Parcel centres in MNI space, millimetres.
    networks : sequence of str or None, length P, optional
        Functional network of each parcel (e.g. Yeo-7); ``None`` entries for unlabelled parcels.
    space : str
        Coordinate space of ``xyz`` (``"MNI152"`` unless stated otherwise).
    """

    name: str
    parcel_names: tuple[str, ...]
    xyz: np.ndarray
    networks: tuple[str | None, ...] | None = None
    space: str = "MNI152"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        src = f"atlas {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise BrainLMInputError("field 'name' must be a non-empty string", src)
        names = tuple(str(n) for n in self.parcel_names)
        if len(names) == 0:
            raise BrainLMInputError("field 'parcel_names' is empty; expected one name per parcel", src)
        dupes = pd.Index(names)[pd.Index(names).duplicated()].unique().tolist()
        if dupes:
            raise BrainLMInputError(f"field 'parcel_names' has duplicates: {dupes[:5]}", src)
        xyz = np.asarray(self.xyz, dtype=np.float32)
        if xyz.shape != (len(names), 3):
            raise BrainLMInputError(
                f"field 'xyz' has shape {xyz.shape}; expected ({len(names)}, 3) "
                "(one MNI x, y, z in mm per parcel)", src)
        if not np.all(np.isfinite(xyz)):
            bad = [names[i] for i in np.flatnonzero(~np.isfinite(xyz).all(axis=1))[:5]]
            raise BrainLMInputError(f"field 'xyz' has non-finite coordinates for parcels {bad}", src)
        if np.abs(xyz).max() > 200:
            raise BrainLMInputError(
                f"field 'xyz' has coordinates up to {np.abs(xyz).max():.0f}; expected MNI "
                "millimetres (|value| <= 200). Voxel indices instead of mm?", src)
        nets = self.networks
        if nets is not None:
            nets = tuple(None if (n is None or (isinstance(n, float) and np.isnan(n)) or n == "")
                         else str(n) for n in nets)
            if len(nets) != len(names):
                raise BrainLMInputError(
                    f"field 'networks' has {len(nets)} labels; expected {len(names)} (one per parcel)", src)
            if all(n is None for n in nets):
                nets = None
        xyz.setflags(write=False)
        object.__setattr__(self, "parcel_names", names)
        object.__setattr__(self, "xyz", xyz)
        object.__setattr__(self, "networks", nets)

    @property
    def n_parcels(self) -> int:
        """Number of parcels ``P``."""
        return len(self.parcel_names)

    @property
    def network_names(self) -> list[str]:
        """Distinct network labels in order of first appearance (empty if unlabelled)."""
        if self.networks is None:
            return []
        return list(dict.fromkeys(n for n in self.networks if n is not None))

    def matches(self, other: "Atlas", tol_mm: float = 1e-3) -> bool:
        """True when both atlases have the same parcels in the same order at the same place."""
        return (self.parcel_names == other.parcel_names
                and np.allclose(self.xyz, other.xyz, atol=tol_mm))

    # -- serialisation ---------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per parcel: ``name, x, y, z`` (mm) and ``network`` when known."""
        df = pd.DataFrame({"name": self.parcel_names, "x": self.xyz[:, 0],
                           "y": self.xyz[:, 1], "z": self.xyz[:, 2]})
        if self.networks is not None:
            df["network"] = list(self.networks)
        return df

    def to_dict(self) -> dict:
        """JSON-ready description (used inside corpora and checkpoints)."""
        return {"name": self.name, "space": self.space, "description": self.description,
                "parcel_names": list(self.parcel_names),
                "xyz_mm": np.round(self.xyz.astype(np.float64), 4).tolist(),
                "networks": None if self.networks is None else list(self.networks)}

    @classmethod
    def from_dict(cls, d: dict) -> "Atlas":
        try:
            return cls(name=d["name"], parcel_names=d["parcel_names"], xyz=d["xyz_mm"],
                       networks=d.get("networks"), space=d.get("space", "MNI152"),
                       description=d.get("description", ""))
        except KeyError as e:
            raise BrainLMInputError(f"atlas description lacks field {e.args[0]!r}") from None

    @classmethod
    def from_table(cls, path: str | Path, name: str | None = None) -> "Atlas":
        """Read an atlas table (TSV or CSV) with columns ``name, x, y, z`` and optional ``network``.

        Rows are parcels in the column order of the time series; x, y, z are MNI mm.
        """
        path = Path(path)
        if not path.is_file():
            raise BrainLMInputError("atlas table not found", str(path))
        sep = "," if path.suffix.lower() == ".csv" else "\t"
        try:
            df = pd.read_csv(path, sep=sep)
        except Exception as e:  # noqa: BLE001 - any parser failure is a bad file
            raise BrainLMInputError(f"cannot read atlas table ({e})", str(path)) from None
        df.columns = [str(c).strip().lower() for c in df.columns]
        return cls.from_frame(df, name or path.stem, source=str(path))

    @classmethod
    def from_frame(cls, df: pd.DataFrame, name: str, *, names_column: str = "name",
                   source: str | None = None) -> "Atlas":
        """An atlas from one row per parcel: ``names_column``, ``x, y, z`` (MNI mm) and optional
        ``network`` (empty or missing for unlabelled parcels). ``source`` names the file in errors."""
        missing = [c for c in (names_column, "x", "y", "z") if c not in df.columns]
        if missing:
            raise BrainLMInputError(
                f"atlas table lacks column(s) {missing}; expected columns {names_column}, x, y, z "
                f"[, network], found {list(df.columns)}", source)
        try:
            xyz = df[["x", "y", "z"]].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise BrainLMInputError("columns x, y, z must be numbers (MNI mm)", source) from None
        nets = df["network"].tolist() if "network" in df.columns else None
        try:
            return cls(name=name, parcel_names=df[names_column].astype(str).tolist(), xyz=xyz,
                       networks=nets, space="MNI152")
        except BrainLMInputError as e:
            raise BrainLMInputError(e.reason, source) from None

    def to_table(self, path: str | Path) -> None:
        """Write the atlas as a TSV table readable by :meth:`from_table`."""
        self.to_frame().to_csv(path, sep="\t", index=False, float_format="%.3f")


def load_atlas(name_or_path: str | Path) -> Atlas:
    """An embedded atlas by name (``aal2``, ``schaefer100``, ``schaefer200``, ``schaefer400``,
    ``a424``) or an atlas table file (see :meth:`Atlas.from_table`).

    ``a424`` is the parcellation of the original BrainLM checkpoints, in their parcel order
    (labels 1..424, named ``A424_001`` ...; integer MNI mm centres of upstream's
    ``A424_Coordinates.dat``; no network labels)."""
    key = str(name_or_path)
    if key.lower() in EMBEDDED_ATLASES:
        key = key.lower()
        # A424 sits beside the other resources, with its provenance in resources/README.md.
        folder = resources.files("brainlm.data") / "resources"
        ref = folder / "a424.tsv" if key == "a424" else folder / "atlases" / f"{key}.tsv"
        with resources.as_file(ref) as p:
            atlas = Atlas.from_table(p, name=key)
        space = "fsaverage5-pial (approx. MNI)" if key in ("schaefer200", "schaefer400") else "MNI152"
        return Atlas(atlas.name, atlas.parcel_names, atlas.xyz, atlas.networks, space=space)
    path = Path(key)
    if not path.exists():
        raise BrainLMInputError(
            f"unknown atlas {key!r}: expected one of {list(EMBEDDED_ATLASES)} or a TSV/CSV file "
            "with columns name, x, y, z [, network]")
    return Atlas.from_table(path)
