"""A small fMRIPrep-style derivatives folder made from the embedded real HCP data.

For trying ``brainlm prepare --atlas-image`` without a dataset at hand (the demo does), and for
tests. Nothing is downloaded: the brain mask is nilearn's bundled MNI152 template and the signals
are the 7 embedded HCP recordings (AAL2, TR 0.72 s).

The atlas gives each in-brain voxel of a coarse MNI grid the label of the nearest AAL2 parcel
centre (within ``max_mm``); each scan paints an HCP subject's parcel series into those voxels,
adds voxel noise and a motion/WM/CSF artefact that lies in the span of the confound columns
written beside it (so confound regression has something real to remove).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.data.atlas import Atlas, load_atlas
from brainlm.data.atomic import atomic_directory
from brainlm.data.samples import load_hcp7_aal2
from brainlm.errors import BrainLMInputError

SPACE = "MNI152NLin2009cAsym"
TR = 0.72


@dataclass(frozen=True)
class ExampleScans:
    """Paths of an example written by :func:`write_fmriprep_example`."""

    dataset: Path        # raw BIDS root, with participants.tsv
    derivatives: Path    # dataset/derivatives/fmriprep
    atlas_image: Path    # labels NIfTI
    atlas_labels: Path   # index/name TSV
    space: str = SPACE


def voronoi_labels(xyz: np.ndarray, voxel_mm: int, max_mm: float = 20.0):
    """A labels image: in-brain voxels of nilearn's MNI152 mask at ``voxel_mm`` take the label
    (1..P) of the nearest of the ``xyz`` centres (P x 3, mm) within ``max_mm``.

    Returns
    -------
    nibabel.Nifti1Image, int16
    """
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        brain = load_mni152_brain_mask(resolution=voxel_mm)
    ijk = np.argwhere(np.asarray(brain.dataobj) > 0)
    world = nib.affines.apply_affine(brain.affine, ijk)
    labels = np.zeros(brain.shape, np.int16)
    for s in range(0, len(ijk), 20000):   # bounded memory at fine grids
        d = np.sqrt(((world[s:s + 20000, None, :] - xyz[None]) ** 2).sum(-1))
        near = d.min(1) < max_mm
        labels[tuple(ijk[s:s + 20000][near].T)] = d[near].argmin(1) + 1
    return nib.Nifti1Image(labels, brain.affine)


def paint(labels_img, series: np.ndarray, *, noise_sd: float = 0.0, seed: int = 0,
          dtype=np.float32, extra: np.ndarray | None = None, tr: float = TR):
    """A 4-D image whose labelled voxels carry their parcel's column of ``series`` (T x P).

    Parameters
    ----------
    noise_sd : float
        Gaussian noise per voxel and volume.
    extra : ndarray, shape (n_labelled_voxels, T), optional
        Added to the labelled voxels (in ``numpy.nonzero`` order).

    Returns
    -------
    nibabel.Nifti1Image, shape (x, y, z, T); zero outside the labels; header TR ``tr`` s.
    """
    import nibabel as nib

    labels = np.asarray(labels_img.dataobj)
    where = np.nonzero(labels)
    values = series[:, labels[where] - 1].T.astype(np.float64)
    if noise_sd:
        values += np.random.default_rng(seed).normal(0, noise_sd, values.shape)
    if extra is not None:
        values += extra
    data = np.zeros(labels.shape + (series.shape[0],), dtype=dtype)
    data[where] = np.round(values) if np.issubdtype(dtype, np.integer) else values
    img = nib.Nifti1Image(data, labels_img.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = tr
    return img


def confounds_table(n: int, seed: int, spikes=(), tr: float = TR) -> tuple[pd.DataFrame, dict]:
    """fMRIPrep-style confounds for ``n`` volumes and their JSON metadata.

    Columns: ``trans_x/y/z``, ``rot_x/y/z`` (random-walk motion, mm and rad) with
    ``_derivative1``, ``_power2`` and ``_derivative1_power2``; ``csf``, ``white_matter``,
    ``global_signal`` with the same expansions; ``framewise_displacement`` (Power), ``std_dvars``,
    ``dvars``; ``cosineXX`` (DCT basis of a 128 s high-pass); ``a_comp_cor_00..04`` (combined
    mask, described in the JSON); ``non_steady_state_outlier00`` (volume 0); and a
    ``motion_outlierXX`` column per volume in ``spikes``, where motion jumps.
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    walk = np.cumsum(rng.normal(0, 1, (n, 6)), axis=0)
    motion = (walk - walk.mean(0)) * np.array([0.02, 0.03, 0.04, 4e-4, 3e-4, 2e-4])
    for t in spikes:
        motion[t:] += np.array([0.4, 0.3, 0.2, 0, 0, 0])
    names = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    signals = {"csf": 700 + np.cumsum(rng.normal(0, 2, n)),
               "white_matter": 500 + np.cumsum(rng.normal(0, 1, n)),
               "global_signal": 600 + np.cumsum(rng.normal(0, 1, n))}
    for name, x in list(zip(names, motion.T)) + list(signals.items()):
        d = np.r_[np.nan, np.diff(x)]
        cols.update({name: x, f"{name}_derivative1": d, f"{name}_power2": x ** 2,
                     f"{name}_derivative1_power2": d ** 2})
    fd = np.abs(np.diff(motion[:, :3], axis=0)).sum(1) + 50 * np.abs(np.diff(motion[:, 3:], axis=0)).sum(1)
    cols["framewise_displacement"] = np.r_[np.nan, fd]
    std_dvars = 1 + 0.1 * rng.standard_normal(n)
    std_dvars[list(spikes)] = 2.5
    cols["std_dvars"] = np.r_[np.nan, std_dvars[1:]]
    cols["dvars"] = cols["std_dvars"] * 20
    k = np.arange(n)
    for j in range(1, int(2 * n * tr / 128) + 1):
        cols[f"cosine{j - 1:02d}"] = np.sqrt(2 / n) * np.cos(np.pi * (2 * k + 1) * j / (2 * n))
    comps = np.linalg.qr(rng.standard_normal((n, 5)))[0]
    meta = {}
    for j in range(5):
        cols[f"a_comp_cor_{j:02d}"] = comps[:, j]
        meta[f"a_comp_cor_{j:02d}"] = {"Method": "aCompCor", "Mask": "combined", "Retained": True,
                                       "SingularValue": float(10 - j), "VarianceExplained": 0.1,
                                       "CumulativeVarianceExplained": 0.1 * (j + 1)}
    cols["non_steady_state_outlier00"] = (k == 0).astype(float)
    for j, t in enumerate(spikes):
        cols[f"motion_outlier{j:02d}"] = (k == t).astype(float)
    return pd.DataFrame(cols), meta


def write_fmriprep_example(root: str | Path, *, subjects: int = 4, n_trs: int = 240,
                           voxel_mm: int = 6, spikes_in_last: tuple[int, ...] = (100, 101, 150),
                           other_space: bool = True, seed: int = 3, overwrite: bool = False) -> ExampleScans:
    """Write a miniature fMRIPrep dataset from the embedded HCP recordings.

    The tree is written into a temporary folder beside ``root`` and renamed to ``root`` only when
    complete. A ``root`` that exists and is not empty is an error unless ``overwrite``. Layout: ``root/dataset/participants.tsv`` (age, sex, group),
    ``root/dataset/derivatives/fmriprep/sub-*/ses-1/func/`` with ``*_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz`` (float32, ``voxel_mm``
    voxels, ``n_trs`` volumes), its JSON sidecar (RepetitionTime 0.72), ``*_desc-brain_mask``,
    ``*_desc-confounds_timeseries.tsv`` + ``.json`` (see :func:`confounds_table`; the last
    subject has motion spikes at ``spikes_in_last``) and, with ``other_space``, a placeholder
    ``space-T1w`` scan as fMRIPrep writes one per output space. Beside them: ``atlas-AAL2cells_dseg.nii.gz``
    (AAL2 cells, see :func:`voronoi_labels`) and ``atlas-AAL2cells_dseg.tsv``.

    Parameters
    ----------
    subjects : int
        1 to 7 (one per embedded HCP recording).
    n_trs : int
        Volumes per scan (at most 1200).

    Returns
    -------
    ExampleScans
    """
    if not 1 <= subjects <= 7 or not 2 <= n_trs <= 1200:
        raise BrainLMInputError(f"subjects={subjects}, n_trs={n_trs}; expected 1-7 subjects "
                                "and 2-1200 volumes (the embedded HCP data)")
    if any(not 0 <= t < n_trs for t in spikes_in_last):
        raise BrainLMInputError(f"spikes_in_last={tuple(spikes_in_last)}; expected volume indices "
                                f"in 0-{n_trs - 1} (n_trs={n_trs})")
    final = Path(root)
    if final.exists() and (not final.is_dir() or any(final.iterdir())) and not overwrite:
        raise BrainLMInputError("folder exists and is not empty; pass overwrite=True to replace it",
                                str(final))
    # An empty folder may be filled; anything else was refused above unless overwrite.
    with atomic_directory(final, overwrite=True) as root:
        _write_tree(root, load_hcp7_aal2(), subjects, n_trs, voxel_mm, spikes_in_last, other_space, seed)
    dataset = final / "dataset"
    return ExampleScans(dataset=dataset, derivatives=dataset / "derivatives" / "fmriprep",
                        atlas_image=final / "atlas-AAL2cells_dseg.nii.gz",
                        atlas_labels=final / "atlas-AAL2cells_dseg.tsv")


def _write_tree(root: Path, hcp, subjects: int, n_trs: int, voxel_mm: int, spikes_in_last, other_space: bool,
                seed: int) -> None:
    import nibabel as nib

    aal2: Atlas = load_atlas("aal2")
    labels_img = voronoi_labels(aal2.xyz, voxel_mm)
    nib.save(labels_img, root / "atlas-AAL2cells_dseg.nii.gz")
    pd.DataFrame({"index": np.arange(1, aal2.n_parcels + 1), "name": aal2.parcel_names}).to_csv(
        root / "atlas-AAL2cells_dseg.tsv", sep="\t", index=False)
    dataset = root / "dataset"
    deriv = dataset / "derivatives" / "fmriprep"
    deriv.mkdir(parents=True, exist_ok=True)
    (dataset / "dataset_description.json").write_text(json.dumps({"Name": "brainlm example",
                                                                   "BIDSVersion": "1.8.0"}))
    (deriv / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep (simulated layout)", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "brainlm.data.example_scans"}]}))
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels_img.dataobj)
    parcel_of_voxel = labels[np.nonzero(labels)] - 1
    rows = []
    for i in range(subjects):
        rec = hcp[i]
        func = deriv / f"sub-{rec.subject}" / "ses-1" / "func"
        func.mkdir(parents=True, exist_ok=True)
        stem = f"sub-{rec.subject}_ses-1_task-rest"
        conf, meta = confounds_table(n_trs, seed=10 + i,
                                     spikes=spikes_in_last if i == subjects - 1 else ())
        z = conf[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf",
                  "white_matter"]].to_numpy()
        z = (z - z.mean(0)) / z.std(0)
        # Coherent within a parcel (as head motion is, locally), plus a little voxel scatter.
        weights = rng.normal(0, 40, (aal2.n_parcels, z.shape[1]))[parcel_of_voxel]
        weights += rng.normal(0, 5, weights.shape)
        img = paint(labels_img, rec.timeseries[:n_trs], noise_sd=20.0, seed=i, extra=weights @ z.T)
        nib.save(img, func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz")
        nib.save(nib.Nifti1Image((labels > 0).astype(np.uint8), labels_img.affine),
                 func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
        sidecar = {"RepetitionTime": TR, "TaskName": "rest", "SkullStripped": False}
        (func / f"{stem}_space-{SPACE}_desc-preproc_bold.json").write_text(json.dumps(sidecar))
        conf.to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
        (func / f"{stem}_desc-confounds_timeseries.json").write_text(json.dumps(meta))
        if other_space:
            nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.float32), np.eye(4)),
                     func / f"{stem}_space-T1w_desc-preproc_bold.nii.gz")
            (func / f"{stem}_space-T1w_desc-preproc_bold.json").write_text(json.dumps(sidecar))
        rows.append({"participant_id": f"sub-{rec.subject}", "age": 22 + 3 * i, "sex": "FM"[i % 2],
                     "group": "patient" if i % 2 else "control"})
    pd.DataFrame(rows).to_csv(dataset / "participants.tsv", sep="\t", index=False)


__all__ = ["ExampleScans", "confounds_table", "paint", "voronoi_labels", "write_fmriprep_example"]
