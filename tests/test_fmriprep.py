"""An fMRIPrep derivatives folder -> a corpus, with confounds chosen by nilearn's loaders.

The miniature dataset: 4 HCP subjects painted into a 6 mm AAL2-Voronoi MNI image (240 TRs,
TR 0.72 s) plus a motion/WM/CSF artefact that lies in the span of the confound columns, with
fMRIPrep's file names, JSON sidecars, brain masks, confounds TSV + JSON (realistic columns), a
second output space, and the raw dataset's participants.tsv two folders up.
"""

from __future__ import annotations

import contextlib
import json
import logging

import numpy as np
import pandas as pd
import pytest
from dask.distributed import Client, LocalCluster, get_task_stream

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.example_scans import SPACE, TR, write_fmriprep_example
from brainlm.data.extraction import ImageParcellation
from brainlm.data.fmriprep import (ConfoundStrategy, confounds_file_for, denoise, find_scans,
                                   parse_confound_strategy, participants_file)
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.volumes import load_volume_atlas

T = 240   # volumes per scan; the last subject has motion spikes at volumes 100, 101, 150


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    ex = write_fmriprep_example(tmp_path_factory.mktemp("fmriprep"), subjects=4, n_trs=T)
    return {"root": ex.dataset, "deriv": ex.derivatives, "atlas": ex.atlas_image, "labels": ex.atlas_labels}


@pytest.fixture(scope="module")
def vatlas(dataset):
    return load_volume_atlas(dataset["atlas"], dataset["labels"])


@pytest.fixture(scope="module")
def cli_corpus(dataset, tmp_path_factory):
    """The one command a new user runs on an fMRIPrep folder."""
    out = tmp_path_factory.mktemp("cli") / "corpus"
    rc = main(["prepare", str(dataset["deriv"]), "--atlas-image", str(dataset["atlas"]),
               "--atlas-labels", str(dataset["labels"]), "--space", SPACE, "--out", str(out),
               "--psc", "--min-trs", "100", "--splits", "0.5,0.25,0.25", "--jobs", "2", "--quiet"])
    assert rc == 0
    return Corpus(out)


def _scan(dataset, hcp, i):
    return dataset["deriv"] / f"sub-{hcp[i].subject}" / "ses-1" / "func" / \
        f"sub-{hcp[i].subject}_ses-1_task-rest_space-{SPACE}_desc-preproc_bold.nii.gz"


# -- finding scans -----------------------------------------------------------------------------
def test_example_dataset_checks_its_size(tmp_path):
    with pytest.raises(BrainLMInputError, match="expected 1-7 subjects"):
        write_fmriprep_example(tmp_path, subjects=9)
    with pytest.raises(BrainLMInputError, match=r"spikes_in_last=\(100, 101, 150\); expected volume indices in 0-19"):
        write_fmriprep_example(tmp_path, n_trs=20)


def test_example_dataset_never_clobbers_a_folder_and_leaves_no_partial_tree(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(BrainLMInputError, match="not empty.*overwrite") as err:
        write_fmriprep_example(mine, subjects=1, n_trs=20, spikes_in_last=(5,))
    assert str(mine) in str(err.value) and (mine / "notes.txt").read_text() == "keep me"
    # overwrite replaces only a folder that brainlm wrote (issue 18): the user's is kept.
    with pytest.raises(BrainLMInputError, match="only a folder that brainlm wrote"):
        write_fmriprep_example(mine, subjects=1, n_trs=20, spikes_in_last=(5,), overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    ours = tmp_path / "ours"
    write_fmriprep_example(ours, subjects=1, n_trs=20, spikes_in_last=(5,))
    (ours / "stale.txt").write_text("from the first write")
    ex = write_fmriprep_example(ours, subjects=1, n_trs=20, spikes_in_last=(5,), overwrite=True)
    assert not (ours / "stale.txt").exists() and ex.derivatives.is_dir() and ex.atlas_image.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ours"]  # no temporary folder left


def test_find_scans_by_space(dataset, hcp):
    with pytest.raises(BrainLMInputError, match=r"several spaces.*\['MNI152NLin2009cAsym', 'T1w'\].*--space"):
        find_scans([dataset["deriv"]], surface=False)
    scans = find_scans([dataset["deriv"]], surface=False, space=SPACE)
    assert len(scans) == 4 and {s.kind for s in scans} == {"volume"}
    assert scans[0].entities["sub"] == hcp[0].subject and scans[0].entities["ses"] == "1"
    assert scans[0].mask.name.endswith("_desc-brain_mask.nii.gz")
    assert confounds_file_for(scans[0].files[0]).name == \
        f"sub-{hcp[0].subject}_ses-1_task-rest_desc-confounds_timeseries.tsv"
    assert participants_file(dataset["deriv"]) == dataset["deriv"].parent.parent / "participants.tsv"


# -- confounds -----------------------------------------------------------------------------------
def test_simple_strategy_removes_the_artefact_exactly(dataset, hcp, vatlas):
    """Parcellate + 'simple' == the source series with nilearn's simple confounds regressed
    out over the kept volumes (volume 0 is non-steady-state: censored, then trimmed)."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    path = _scan(dataset, hcp, 0)
    none = ImageParcellation(vatlas)
    raw, info = none.extract("volume", [path], source=str(path))
    simple = ImageParcellation(vatlas, confounds=parse_confound_strategy("simple"))
    clean, info = simple.extract("volume", [path], source=str(path))
    assert clean.data.shape == (T - 1, 94)
    n_cos = int(2 * T * TR / 128)
    assert info["confound_regressors"] == 24 + 2 + n_cos
    assert (info["censored_volumes"], info["interpolated_volumes"], info["trimmed_volumes"]) == (1, 0, 1)

    source = hcp[0].timeseries[:T].astype(np.float64)
    r_raw = np.median([np.corrcoef(raw.data[1:, p], source[1:, p])[0, 1] for p in range(94)])
    conf, mask = load_confounds_strategy(str(path), denoise_strategy="simple")
    c = conf.to_numpy()[mask]
    c = (c - c.mean(0)) / c.std(0)
    y = source[mask]
    expected = y - c @ np.linalg.lstsq(c, y - y.mean(0), rcond=None)[0]
    r_clean = [np.corrcoef(clean.data[:, p], expected[:, p])[0, 1] for p in range(94)]
    assert r_raw < 0.6 and np.min(r_clean) > 0.97
    # The mean is kept, so percent signal change still applies downstream.
    np.testing.assert_allclose(clean.data.mean(0), raw.data[1:].mean(0), rtol=1e-4)


def test_scrubbing_interpolates_censored_volumes(dataset, hcp, vatlas):
    path = _scan(dataset, hcp, 3)
    scrub = ImageParcellation(vatlas, confounds=parse_confound_strategy("scrubbing"))
    clean, info = scrub.extract("volume", [path], source=str(path))
    # Non-steady-state volume 0, and FD/DVARS spikes at 100, 101, 150 (segments >= 5 kept).
    assert (info["censored_volumes"], info["interpolated_volumes"], info["trimmed_volumes"]) == (4, 3, 1)
    assert clean.data.shape == (T - 1, 94) and np.isfinite(clean.data).all()
    assert info["confound_regressors"] == 24 + 8 + int(2 * T * TR / 128)
    strict = ImageParcellation(vatlas, confounds=parse_confound_strategy("scrubbing", max_censored=0.01))
    with pytest.raises(BrainLMInputError, match=r"4 of 240 volumes censored .*'scrubbing'"):
        strict.extract("volume", [path], source=str(path))


def test_denoise_interpolation_is_a_spline_through_kept_volumes():
    t = np.arange(50, dtype=float)
    x = np.stack([np.sin(t / 5), np.cos(t / 7)], axis=1) * 10 + 100
    conf = pd.DataFrame({"c": np.random.default_rng(0).normal(size=50)})
    kept = np.setdiff1d(np.arange(50), [0, 1, 20, 49])
    out, info = denoise(x, conf, kept)
    assert out.shape == (47, 2) and info == {"confound_regressors": 1, "censored_volumes": 4,
                                             "interpolated_volumes": 1, "trimmed_volumes": 3}
    # Kept volumes: least-squares residuals of the z-scored confound (fitted on kept volumes only).
    c = conf["c"].to_numpy()[kept]
    c = (c - c.mean()) / c.std()
    y = x[kept]
    resid = y - np.outer(c, c @ (y - y.mean(0)) / (c @ c))
    np.testing.assert_allclose(out[kept - 2], resid, rtol=1e-5)
    # The censored volume inside the run: the cubic spline through the kept residuals.
    from scipy.interpolate import CubicSpline

    np.testing.assert_allclose(out[20 - 2], CubicSpline(kept, resid)(20), rtol=1e-5)
    assert abs(out[18, 0] - x[20, 0]) < 1.0   # and close to the smooth signal it replaces


def test_compcor_and_custom_strategies(dataset, hcp, vatlas):
    path = _scan(dataset, hcp, 1)
    _, info = ImageParcellation(vatlas, confounds=parse_confound_strategy("compcor")).extract(
        "volume", [path], source=str(path))
    assert info["confound_regressors"] == 24 + 5 + int(2 * T * TR / 128)
    custom = parse_confound_strategy("motion,global_signal", global_signal="basic")
    assert custom == ConfoundStrategy("custom", ("motion", "global_signal"), (("global_signal", "basic"),))
    _, info = ImageParcellation(vatlas, confounds=custom).extract("volume", [path], source=str(path))
    assert info["confound_regressors"] == 24 + 1
    with pytest.raises(BrainLMInputError, match="unknown confound strategy|not understood"):
        parse_confound_strategy("motion,banana")


# -- the one command -----------------------------------------------------------------------------
def test_one_command_gives_a_corpus_with_phenotypes(cli_corpus, dataset, hcp):
    m = cli_corpus.manifest
    assert len(m) == 4 and set(m["session"]) == {"1"} and set(m["task"]) == {"rest"}
    assert set(m["n_trs"]) == {T - 1} and set(m["tr"]) == {TR}
    assert cli_corpus.phenotype_columns == ["age", "sex", "group"]
    ages = {hcp[i].subject: 22 + 3 * i for i in range(4)}
    assert all(m["age"] == m["subject"].map(ages))
    ing = cli_corpus.info["ingestion"]
    assert ing["confounds"]["strategy"] == "simple"   # auto: fMRIPrep confounds found
    assert ing["confounds"]["loader"]["function"] == "nilearn.interfaces.fmriprep.load_confounds_strategy"
    # One non-steady-state volume per scan: censored and, being first, trimmed.
    assert ing["space"] == SPACE and ing["censored_volumes"] == ing["trimmed_volumes"] == 4
    table = pd.read_parquet(f"{cli_corpus.path}/ingestion.parquet")
    assert table["brain_mask"].str.endswith("_desc-brain_mask.nii.gz").all()
    assert table["confound_regressors"].tolist() == [24 + 2 + int(2 * T * TR / 128)] * 4
    assert cli_corpus.atlas.n_parcels == 94 and cli_corpus.contract.percent_signal_change


def test_cli_without_space_says_which_spaces(dataset, tmp_path, capsys):
    rc = main(["prepare", str(dataset["deriv"]), "--atlas-image", str(dataset["atlas"]),
               "--out", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "several spaces" in err and "--space" in err and "Traceback" not in err


# -- bad scans, resume ---------------------------------------------------------------------------
def _copy_tree(dataset, dst, n=3):
    import shutil

    shutil.copytree(dataset["root"], dst, ignore=shutil.ignore_patterns("*space-T1w*"))
    subjects = sorted(p.name for p in (dst / "derivatives" / "fmriprep").glob("sub-*"))
    for extra in subjects[n:]:
        shutil.rmtree(dst / "derivatives" / "fmriprep" / extra)
    return dst / "derivatives" / "fmriprep", subjects[:n]


def test_failed_scans_are_recorded_and_the_rest_prepared(dataset, tmp_path):
    deriv, subjects = _copy_tree(dataset, tmp_path / "bids", n=3)
    func = lambda s: deriv / s / "ses-1" / "func"   # noqa: E731
    conf = next(func(subjects[0]).glob("*_desc-confounds_timeseries.tsv"))
    pd.read_csv(conf, sep="\t").iloc[:-10].to_csv(conf, sep="\t", index=False, na_rep="n/a")
    next(func(subjects[1]).glob("*_bold.json")).unlink()
    corpus = prepare_corpus([deriv], tmp_path / "c",
                            PrepareSettings.of(atlas_image=dataset["atlas"], atlas_labels=dataset["labels"],
                                               on_error="skip", min_trs=100, allow_missing_phenotypes=True))
    assert corpus.manifest["subject"].tolist() == [subjects[2][4:]]
    reasons = dict(zip(corpus.skipped["recording_id"].str[4:].str.split("_").str[0], corpus.skipped["reason"]))
    assert "confounds have 230 rows; the scan has 240 volumes" in reasons[subjects[0][4:]]
    assert "repetition time unknown" in reasons[subjects[1][4:]]
    src = dict(zip(corpus.skipped["recording_id"].str[4:].str.split("_").str[0], corpus.skipped["source"]))
    assert src[subjects[0][4:]].endswith("_desc-preproc_bold.nii.gz")
    with pytest.raises(BrainLMInputError, match=r"_desc-confounds_timeseries.tsv: confounds have 230 rows"):
        prepare_corpus([deriv], tmp_path / "c2", PrepareSettings.of(atlas_image=dataset["atlas"], min_trs=100))


def test_a_rerun_skips_finished_scans(dataset, tmp_path, monkeypatch):
    deriv, subjects = _copy_tree(dataset, tmp_path / "bids", n=3)
    conf = next((deriv / subjects[2] / "ses-1" / "func").glob("*_desc-confounds_timeseries.tsv"))
    good = conf.read_text()
    conf.write_text("\n".join(good.splitlines()[:50]))
    kwargs = dict(atlas_image=dataset["atlas"], atlas_labels=dataset["labels"], min_trs=100, jobs=1)
    with pytest.raises(BrainLMInputError, match="confounds have 49 rows"):
        prepare_corpus([deriv], tmp_path / "c", PrepareSettings.of(**kwargs))
    assert len(list((tmp_path / "c.partial" / "done").glob("*.json"))) == 2
    conf.write_text(good)
    # Resuming with another confound strategy would mix two denoisings in one corpus.
    with pytest.raises(BrainLMInputError, match="different settings.*--restart"):
        prepare_corpus([deriv], tmp_path / "c", PrepareSettings.of(**kwargs, confounds="compcor"))
    calls = []
    original = ImageParcellation.extract
    monkeypatch.setattr(ImageParcellation, "extract",
                        lambda self, kind, files, **kw: calls.append(files[0].name) or original(self, kind, files, **kw))
    corpus = prepare_corpus([deriv], tmp_path / "c", PrepareSettings.of(**kwargs))
    assert len(calls) == 1 and subjects[2] in calls[0] and len(corpus.manifest) == 3
    assert not (tmp_path / "c.partial").exists()


# -- Dask ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dask_cluster(request):
    """A real Dask cluster on this machine, as ``dask scheduler`` + ``dask worker`` would give:
    2 worker processes of 1 thread, every port (the scheduler's, its HTTP server's, which starts
    even without a dashboard, and the workers') chosen by the system, so no clash with another
    run; only errors logged. Closed, workers included, by a finalizer. Its workers keep the
    working folder they started in (this test session's)."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           scheduler_port=0, dashboard_address=":0", silence_logs=logging.ERROR,
                           timeout="60s")
    request.addfinalizer(lambda: cluster.close(timeout=30))
    return cluster


def _assert_same_corpus(corpus: Corpus, reference: Corpus) -> None:
    """Bit-identical: manifest rows, every recording (stored and scaled), contract and atlas."""
    pd.testing.assert_frame_equal(corpus.manifest, reference.manifest, check_exact=True)
    assert len(corpus.manifest) == 4
    for i in range(len(reference.manifest)):
        for scaled in (False, True):
            mine, theirs = corpus.read(i, scaled=scaled), reference.read(i, scaled=scaled)
            assert mine.dtype == theirs.dtype == np.float32 and mine.tobytes() == theirs.tobytes()
    for part in ("contract", "atlas"):
        assert json.dumps(getattr(corpus, part).to_dict(), sort_keys=True) == \
            json.dumps(getattr(reference, part).to_dict(), sort_keys=True), part


@contextlib.contextmanager
def _tasks_on(cluster: LocalCluster):
    """Yields a list that, once the block is done, holds the (key, worker) of every task the
    cluster's workers ran meanwhile."""
    ran: list[tuple[str, str]] = []
    with Client(cluster) as client, get_task_stream(client) as stream:
        yield ran
    ran += [(str(t["key"]), t["worker"]) for t in stream.data]


@pytest.mark.parametrize("scheduler", ["address", "local"])
def test_dask_backend_gives_the_same_corpus(dataset, tmp_path, cli_corpus, dask_cluster, scheduler,
                                            monkeypatch):
    """On a cluster (its scheduler's address) or a local one that prepare starts itself
    ("local"), pass 1 runs on Dask workers and the corpus is bit-identical to joblib's. The
    paths are relative to a working folder the cluster's workers are not in."""
    work = dataset["root"].parent
    monkeypatch.chdir(work)
    rel = {k: dataset[k].relative_to(work) for k in ("deriv", "atlas", "labels")}
    address = dask_cluster.scheduler_address if scheduler == "address" else "local"
    with _tasks_on(dask_cluster) as ran:
        corpus = prepare_corpus([rel["deriv"]], tmp_path / "c",
                                PrepareSettings.of(atlas_image=rel["atlas"], atlas_labels=rel["labels"],
                                                   space=SPACE, min_trs=100, jobs=2, dask_scheduler=address,
                                                   fractions=(0.5, 0.25, 0.25),
                                                   contract=PreprocessingContract(percent_signal_change=True)))
    _assert_same_corpus(corpus, cli_corpus)
    # One task per scan, each on the cluster's workers, and nothing else (nilearn's own joblib
    # calls inside a task stay in that task).
    on_cluster = 4 if scheduler == "address" else 0
    assert len(ran) == on_cluster and all("_process_one" in key for key, _ in ran)
    assert {w for _, w in ran} <= set(dask_cluster.scheduler_info["workers"])


def test_prepare_command_on_a_dask_cluster(dataset, tmp_path, cli_corpus, dask_cluster):
    """``brainlm prepare --dask-scheduler ADDRESS``: the same corpus as with ``--jobs 2``."""
    out = tmp_path / "corpus"
    with _tasks_on(dask_cluster) as ran:
        rc = main(["prepare", str(dataset["deriv"]), "--atlas-image", str(dataset["atlas"]),
                   "--atlas-labels", str(dataset["labels"]), "--space", SPACE, "--out", str(out),
                   "--psc", "--min-trs", "100", "--splits", "0.5,0.25,0.25", "--quiet",
                   "--dask-scheduler", dask_cluster.scheduler_address])
    assert rc == 0 and len(ran) == 4
    _assert_same_corpus(Corpus(out), cli_corpus)
