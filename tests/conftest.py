"""Shared fixtures: the embedded real HCP data, as recordings, as a BIDS-like folder of files, as a
prepared corpus, and a ``tiny`` model pretrained on it (one per test session).

Set ``BRAINLM_TEST_RUN_CACHE`` to a folder to keep the pretrained run between pytest sessions
while developing (CI leaves it unset and trains afresh).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainlm.data.samples import load_hcp7_aal2


#: Fixtures that train a model or run the demo: a test that uses one (directly or through another
#: fixture) is in the slow tier. `pytest -m "not slow"` is the fast tier (see README).
SLOW_FIXTURES = {"trained", "demo_run"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_thread():
    """One BLAS and torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    multi-threaded kernels spinning on a busy shared machine are many times slower than one
    thread, and results are the same. Restored afterwards."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def hcp():
    """The 7 embedded HCP recordings (1200 TRs x 94 AAL2 regions, TR 0.72 s)."""
    return load_hcp7_aal2()


def write_hcp_folder(root: Path, recordings, *, runs: int = 2, sidecar: bool = True,
                     participants: bool = True, formats=(".npy", ".tsv")) -> Path:
    """Each HCP run cut into ``runs`` consecutive runs, saved as BIDS-named files.

    ``sub-<id>/func/sub-<id>_task-rest_run-<k>_bold<ext>`` with a JSON sidecar (RepetitionTime
    0.72) and a participants.tsv with made-up but plausible phenotypes.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rows = []
    for i, rec in enumerate(recordings):
        d = root / f"sub-{rec.subject}" / "func"
        d.mkdir(parents=True, exist_ok=True)
        for k, part in enumerate(np.array_split(rec.timeseries, runs)):
            ext = formats[(i + k) % len(formats)]
            stem = d / f"sub-{rec.subject}_task-rest_run-{k + 1}_bold"
            path = stem.with_suffix(ext)
            if ext == ".npy":
                np.save(path, part)
            else:
                pd.DataFrame(part, columns=rec.atlas.parcel_names).to_csv(
                    path, sep="\t" if ext == ".tsv" else ",", index=False, float_format="%.6g")
            if sidecar:
                stem.with_suffix(".json").write_text(json.dumps({"RepetitionTime": 0.72}))
        rows.append({"participant_id": f"sub-{rec.subject}", "age": 22 + int(rng.integers(0, 14)),
                     "sex": "F" if i % 2 else "M", "score": "n/a" if i == 3 else round(float(rng.normal()), 3)})
    if participants:
        pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


@pytest.fixture
def hcp_folder(tmp_path, hcp):
    return write_hcp_folder(tmp_path / "bids", hcp)


@pytest.fixture(scope="session")
def hcp_corpus(tmp_path_factory, hcp):
    """The 7 HCP recordings prepared on AAL2 (percent signal change, default splits 5/1/1)."""
    from brainlm.data.atlas import load_atlas
    from brainlm.data.contract import PreprocessingContract
    from brainlm.data.prepare import PrepareSettings, prepare_corpus

    return prepare_corpus(hcp, tmp_path_factory.mktemp("pre") / "corpus",
                          PrepareSettings.of(atlas=load_atlas("aal2"),
                                             contract=PreprocessingContract(percent_signal_change=True)))


@pytest.fixture(scope="session")
def trained(hcp_corpus, tmp_path_factory):
    """A run folder of `brainlm pretrain` with the tiny preset, 40 epochs (a few CPU minutes);
    the checkpoint is ``trained / "model"``."""
    from brainlm.commands import main

    cache = os.environ.get("BRAINLM_TEST_RUN_CACHE")
    if cache and (Path(cache) / "model" / "model.safetensors").exists():
        return Path(cache)
    run = tmp_path_factory.mktemp("run") / "run"
    assert main(["pretrain", hcp_corpus.path, "--out", str(run), "--preset", "tiny", "--epochs", "40",
                 "--quiet"]) == 0
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(run, cache)
    return run


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``brainlm demo --quick``: every step of the main job with little training; the folder
    holds summary.json, results/, figures/ and report.html."""
    from brainlm.commands import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--jobs", "1"]) == 0
    return out
