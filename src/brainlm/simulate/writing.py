"""Writing a cohort: a BIDS-style folder that ``brainlm prepare`` reads as it is, built beside
its final place and renamed into it when complete."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.data.atomic import atomic_directory, write_json
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.simulate.design import PHENOTYPES
from brainlm.version import __version__

__all__ = ["FORMATS", "write_cohort"]

FORMATS = ("npy", "tsv")

_COLUMN_DESCRIPTIONS = {
    "participant_id": {"Description": "subject identifier"},
    "age": {"Description": "age; lowers global coupling, slows hemodynamics, raises noise",
            "Units": "years"},
    "trait": {"Description": "continuous trait (standard normal); scales coupling inside one "
                             "network"},
    "group": {"Description": "diagnostic group; patients have weaker limbic and "
                             "limbic-prefrontal coupling",
              "Levels": {"0": "control", "1": "patient"}},
    "site": {"Description": "acquisition site; sets TR, noise level and scanner baseline"},
    "null_score": {"Description": "standard normal score with no effect (negative control)"},
}


def write_cohort(recordings: Iterable[Recording], out_dir: str | Path, *, fmt: str = "npy",
                 overwrite: bool = False, settings: dict | None = None) -> Path:
    """Write a cohort as a BIDS-style folder that ``brainlm prepare`` reads as it is.

    Layout::

        OUT/participants.tsv              participant_id, age, trait, group, site, null_score
        OUT/participants.json             column descriptions (BIDS)
        OUT/dataset_description.json      BIDS dataset description; ``settings`` if given
        OUT/sub-0001/func/sub-0001_task-rest_bold.npy   (T, P) float32, or .tsv with a header
        OUT/sub-0001/func/sub-0001_task-rest_bold.json  RepetitionTime (s), atlas, ground truth

    Parameters
    ----------
    recordings : iterable of Recording
        Consumed one at a time (a generator from :func:`iter_cohort` is never held whole).
    out_dir : path
        Folder to create. Everything is written to a temporary folder beside it and renamed
        into place at the end, so ``out_dir`` is either absent or complete.
    fmt : {"npy", "tsv"}
    overwrite : bool
        Replace an existing ``out_dir`` (only once the new cohort is complete).
    settings : dict, optional
        How the cohort was simulated, stored in ``dataset_description.json``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    if fmt not in FORMATS:
        raise BrainLMInputError(f"field 'fmt' is {fmt!r}; expected one of {list(FORMATS)}",
                                str(out))
    with atomic_directory(out, overwrite=overwrite, suffix=".partial") as build:
        rows, atlases = [], set()
        for rec in recordings:
            rows.append(_write_recording(rec, build, fmt))
            atlases.add(rec.atlas.name)
        if not rows:
            raise BrainLMInputError("no recordings to write; expected at least one", str(out))
        table = pd.DataFrame(rows)
        if table["participant_id"].duplicated().any():
            dupes = table.loc[table["participant_id"].duplicated(), "participant_id"].tolist()
            raise BrainLMInputError(f"duplicate subjects {dupes[:5]}; expected one recording per "
                                    "subject", str(out))
        known = [c for c in PHENOTYPES if c in table.columns]
        columns = ["participant_id"] + known + [c for c in table.columns
                                                if c not in known and c != "participant_id"]
        table[columns].to_csv(build / "participants.tsv", sep="\t", index=False, na_rep="n/a")
        described = {c: _COLUMN_DESCRIPTIONS[c] for c in columns if c in _COLUMN_DESCRIPTIONS}
        write_json(build / "participants.json", described)

        description = {"Name": "brainlm synthetic resting-state cohort", "BIDSVersion": "1.9.0",
                       "DatasetType": "derivative",
                       "GeneratedBy": [{"Name": "brainlm simulate", "Version": __version__}],
                       "Atlas": sorted(atlases)}
        if settings is not None:
            description["SimulationSettings"] = settings
        write_json(build / "dataset_description.json", description)
    return out


def _write_recording(rec: Recording, root: Path, fmt: str) -> dict:
    sub = f"sub-{rec.subject}"
    func = root / sub / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = func / f"{sub}_task-{rec.task or 'rest'}_bold"
    if fmt == "npy":
        np.save(stem.with_suffix(".npy"), rec.timeseries)
    else:
        pd.DataFrame(rec.timeseries, columns=rec.atlas.parcel_names).to_csv(
            stem.with_suffix(".tsv"), sep="\t", index=False, float_format="%.7g")
    sidecar = {"RepetitionTime": rec.tr, "TaskName": rec.task or "rest", "Atlas": rec.atlas.name}
    truth = getattr(rec, "ground_truth", None)
    if truth:
        sidecar["GroundTruth"] = truth
    stem.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    row = {"participant_id": sub}
    row.update({k: v for k, v in rec.phenotypes.items() if k != "site"})
    if rec.site is not None:
        row["site"] = rec.site
    return row
