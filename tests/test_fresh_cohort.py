"""Fresh cohorts (issue 16): a checkpoint run on someone else's data with no hand-copied settings.

* ``brainlm prepare SOURCES --like CHECKPOINT``: the checkpoint's cleaning, TR and scaling mode;
  its statistics on its own atlas, the cohort's own (recorded) on another; every recording in
  ``test``.
* Per-recording scaling (``--scaling recording``): raw, percent-change, demeaned and z-scored
  data reach the model as the same numbers, in corpus reads, training windows and raw files,
  and a checkpoint pretrained with it applies it to new data.
* ``--atlas`` on the commands that take DATA files (``embed``, ``networks``).
* Zero-shot made explicit: a pretrained checkpoint carries its training split's spatial
  statistics, and ``brainlm evaluate recon`` on a fresh cohort labels each spatial baseline
  zero-shot (fitted on the pretraining data) or in-cohort (on the cohort's training split), or
  leaves it out with the reason.

Real data: the embedded HCP recordings (AAL2, TR 0.72 s, raw scanner values) and the
Schaefer-100 run (TR 2 s). The checkpoints here are the ``tiny`` architecture with fresh
weights (the plumbing does not depend on training), except two pretrained for 1 epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.contract import PreprocessingContract, ReferenceContract
from brainlm.data.corpus import Corpus
from brainlm.data.prepare import LikeTRWarning, PrepareSettings, prepare_corpus
from brainlm.data.recording import Recording
from brainlm.data.samples import load_schaefer100_rest
from brainlm.data.windows import WindowDataset
from brainlm.model.brainlm import BrainLM
from brainlm.checkpoints.folder import load_pretrained, load_spatial_statistics, save_pretrained
from brainlm.model.config import preset
from brainlm.tasks.model_input import iter_model_input, model_inputs, model_scaler, preprocess
from brainlm.tasks.reconstruction import SpatialImputer, evaluate_reconstruction
from brainlm.train.spatial import sample_frames


def make_checkpoint(folder: Path, contract: PreprocessingContract, atlas, seed: int = 0) -> Path:
    """A ``tiny`` checkpoint with fresh (seeded) weights carrying ``contract`` and ``atlas``."""
    torch.manual_seed(seed)
    save_pretrained(BrainLM(preset("tiny"), contract=contract, atlas=atlas), folder)
    return folder


def write_files(root: Path, recordings, transform=lambda x: x) -> Path:
    """Each recording as ``sub-X/func/sub-X_task-rest_bold.npy`` with a JSON sidecar (its TR)."""
    for rec in recordings:
        d = root / f"sub-{rec.subject}" / "func"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"sub-{rec.subject}_task-rest_bold.npy", transform(np.asarray(rec.timeseries, dtype=np.float64)))
        (d / f"sub-{rec.subject}_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": rec.tr}))
    return root


def demean(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0)


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / x.std(axis=0)


@pytest.fixture(scope="module")
def short_hcp(hcp):
    """5 HCP subjects, 600 TRs each (raw scanner values around 9,500)."""
    return [Recording(r.timeseries[:600], r.tr, r.atlas, subject=r.subject, task="rest", source=r.source)
            for r in hcp[:5]]


@pytest.fixture(scope="module")
def pooled_ckpt(tmp_path_factory, short_hcp):
    """A checkpoint 'pretrained' on 3 HCP subjects: percent signal change, TR 0.72 s, pooled scaling."""
    root = tmp_path_factory.mktemp("pooled")
    corpus = prepare_corpus(short_hcp[:3], root / "corpus",
                            PrepareSettings.of(atlas=short_hcp[0].atlas,
                                               contract=PreprocessingContract(percent_signal_change=True, target_tr=0.72),
                                               fractions=(1, 0, 0)))
    return make_checkpoint(root / "model", corpus.contract, corpus.atlas)


@pytest.fixture(scope="module")
def schaefer_files(tmp_path_factory):
    """The Schaefer-100 run (TR 2 s, scanner units) as a .npy file with its sidecar."""
    return write_files(tmp_path_factory.mktemp("schaefer") / "files", [load_schaefer100_rest()])


# --- prepare --like ------------------------------------------------------------------------------

def test_prepare_like_on_the_checkpoint_atlas_takes_its_cleaning_and_statistics(pooled_ckpt, short_hcp, tmp_path):
    files = write_files(tmp_path / "files", short_hcp[3:])
    out = tmp_path / "cohort"
    assert main(["prepare", str(files), "--like", str(pooled_ckpt), "--out", str(out), "--quiet"]) == 0
    corpus, model = Corpus(out), load_pretrained(pooled_ckpt)
    assert corpus.contract.cleaning() == model.contract.cleaning()
    assert corpus.contract.median == model.contract.median and corpus.contract.iqr == model.contract.iqr
    assert set(corpus.manifest["split"]) == {"test"} and len(corpus) == 2
    assert corpus.contract.scaler_fit["source"] == "checkpoint"
    assert corpus.info["prepared_like"] == {"checkpoint": str(pooled_ckpt), "scaling": "pooled",
                                            "normalization": "robust", "statistics": "checkpoint"}
    assert corpus.contract.units == "raw"
    assert "warnings" not in corpus.info  # train and val were not asked for
    # The corpus reaches the model as the raw recording does through the checkpoint's contract.
    scaler = model_scaler(model, corpus)
    row = int(np.flatnonzero(corpus.manifest["subject"] == short_hcp[3].subject)[0])
    np.testing.assert_allclose(next(iter_model_input(corpus, [row], scaler)), preprocess(model, short_hcp[3]),
                               atol=1e-4)


def test_prepare_like_on_another_atlas_pools_the_cohort_and_says_so(pooled_ckpt, schaefer_files, tmp_path):
    out = tmp_path / "cohort"
    assert main(["prepare", str(schaefer_files), "--like", str(pooled_ckpt), "--atlas", "schaefer100",
                 "--out", str(out), "--quiet"]) == 0
    corpus, model = Corpus(out), load_pretrained(pooled_ckpt)
    assert corpus.tr == pytest.approx(0.72)  # the checkpoint's TR, not the cohort's 2 s
    assert corpus.contract.percent_signal_change and corpus.atlas.n_parcels == 100
    fit = corpus.contract.scaler_fit
    assert fit["source"] == "cohort" and fit["split"] == "all" and "not the checkpoint's" in fit["note"]
    assert corpus.info["prepared_like"]["statistics"] == "cohort"
    with pytest.raises(BrainLMInputError, match="--transfer-atlas"):
        model_scaler(model, corpus)
    np.testing.assert_array_equal(model_scaler(model, corpus, transfer_atlas=True).median, corpus.contract.median)


def test_evaluation_only_splits_without_a_checkpoint_pool_over_every_recording(short_hcp, tmp_path):
    corpus = prepare_corpus(short_hcp[:3], tmp_path / "c",
                            PrepareSettings.of(atlas=short_hcp[0].atlas, fractions=(0, 0, 1)))
    assert set(corpus.manifest["split"]) == {"test"}
    assert corpus.contract.scaler_fit["split"] == "all" and corpus.contract.scaler_fit["recordings"] == 3
    assert "evaluation-only" in corpus.contract.scaler_fit["note"]
    assert corpus.info["scaling"]["statistics"] == "cohort"


def test_like_refuses_a_cleaning_flag_that_differs_from_the_checkpoint(pooled_ckpt, short_hcp, tmp_path):
    like = ReferenceContract(load_pretrained(pooled_ckpt).contract, short_hcp[0].atlas, "ckpt")
    with pytest.raises(BrainLMInputError, match="percent_signal_change: False vs the checkpoint's True"):
        prepare_corpus(short_hcp[3:], tmp_path / "c",
                       PrepareSettings.of(like=like, contract=PreprocessingContract()))
    # The same setting as the checkpoint's is not a conflict.
    same = PreprocessingContract(percent_signal_change=True, target_tr=0.72)
    assert prepare_corpus(short_hcp[3:], tmp_path / "c",
                          PrepareSettings.of(like=like, contract=same)).contract.scaler_fit["source"] == "checkpoint"


# --- per-recording scaling -----------------------------------------------------------------------

@pytest.mark.parametrize("psc", [False, True])
def test_per_recording_scaling_gives_the_same_input_whatever_the_units(hcp, psc):
    rec = hcp[0]
    contract = PreprocessingContract(scaling="recording", percent_signal_change=psc)
    raw = np.asarray(rec.timeseries, dtype=np.float64)
    reference = contract.transform(rec)
    for units in (demean(raw), zscore(raw), 0.01 * raw + 5.0, raw * 1000.0):
        other = Recording(units, rec.tr, rec.atlas, subject=rec.subject)
        np.testing.assert_allclose(contract.transform(other), reference, atol=2e-4)
    assert np.median(reference, axis=0) == pytest.approx(np.zeros(94), abs=0.05)


def test_pooled_percent_change_refuses_demeaned_data_and_says_what_to_do(hcp):
    rec = hcp[0]
    demeaned = Recording(demean(np.asarray(rec.timeseries, dtype=np.float64)), rec.tr, rec.atlas,
                         subject=rec.subject, source="sub-x.npy")
    contract = PreprocessingContract(percent_signal_change=True, median=[0.0] * 94, iqr=[1.0] * 94)
    with pytest.raises(BrainLMInputError, match=r"sub-x.npy: .*--scaling recording"):
        contract.transform(demeaned)
    # Per-recording scaling bridges it: cleaned without the conversion, same model input.
    bridged = PreprocessingContract(percent_signal_change=True, scaling="recording")
    cleaned = bridged.clean(demeaned.timeseries, demeaned.tr)
    assert cleaned.units == "centred" and not cleaned.percent_signal_change


def test_a_per_recording_corpus_scales_windows_by_the_whole_recording(short_hcp, tmp_path):
    corpus = prepare_corpus(short_hcp[:3], tmp_path / "c",
                            PrepareSettings.of(atlas=short_hcp[0].atlas, min_trs=200,
                                               contract=PreprocessingContract(scaling="recording"),
                                               fractions=(1, 0, 0)))
    assert corpus.contract.per_recording and corpus.contract.scaler_fit["applied"].startswith("per recording")
    whole = corpus.read(0)
    np.testing.assert_allclose(whole, corpus.contract.transform(short_hcp[0]), atol=1e-4)
    ds = WindowDataset(corpus, "train", window_trs=200, mode="tiles")
    item = ds[1]
    np.testing.assert_allclose(item["window"].numpy(), whole[item["start"]:item["start"] + 200], atol=1e-6)
    # A corpus written before the statistics were stored with each recording: computed on read.
    import zarr

    stored = corpus.recording_statistics(0)
    arr = zarr.open_group(Path(corpus.path) / "timeseries.zarr", mode="a")[corpus.manifest["recording_id"][0]]
    del arr.attrs["median"], arr.attrs["iqr"]
    old = Corpus(corpus.path)
    assert "median" not in old._array(0).attrs
    for x, y in zip(old.recording_statistics(0), stored):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    np.testing.assert_allclose(old.read(0), whole, atol=1e-6)


def test_old_contracts_load_as_pooled(tmp_path):
    d = PreprocessingContract(median=[0.0], iqr=[1.0]).to_dict()
    del d["scaling"], d["units"]
    path = tmp_path / "contract.json"
    path.write_text(json.dumps(d))
    c = PreprocessingContract.load(path)
    assert c.scaling == "pooled" and c.units is None and not c.per_recording
    with pytest.raises(BrainLMInputError, match="field 'scaling'"):
        PreprocessingContract(scaling="window")


@pytest.fixture(scope="module")
def recording_run(tmp_path_factory, short_hcp):
    """`brainlm prepare --scaling recording --psc` then `brainlm pretrain` for 1 epoch."""
    root = tmp_path_factory.mktemp("recording")
    files = write_files(root / "files", short_hcp[:3])
    assert main(["prepare", str(files), "--atlas", "aal2", "--psc", "--scaling", "recording", "--splits",
                 "0.67,0.33,0", "--out", str(root / "corpus"), "--quiet"]) == 0
    assert main(["pretrain", str(root / "corpus"), "--out", str(root / "run"), "--preset", "tiny", "--epochs", "1",
                 "--crops-per-recording", "2", "--quiet"]) == 0
    return root / "run" / "model"


def test_a_checkpoint_pretrained_with_per_recording_scaling_takes_demeaned_files(recording_run, short_hcp, tmp_path):
    model = load_pretrained(recording_run)
    assert model.contract.scaling == "recording" and model.contract.percent_signal_change
    raw = write_files(tmp_path / "raw", short_hcp[3:])
    centred = write_files(tmp_path / "centred", short_hcp[3:], demean)
    out = {}
    for name, folder in (("raw", raw), ("centred", centred)):
        out[name] = tmp_path / f"{name}.parquet"
        assert main(["embed", str(recording_run), str(folder), "--out", str(out[name])]) == 0
    a, b = pd.read_parquet(out["raw"]), pd.read_parquet(out["centred"])
    cols = [c for c in a.columns if c.startswith(("cls_", "mean_"))]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-3)
    # prepare --like bridges the units too: z-scored files, prepared like the checkpoint.
    zs = write_files(tmp_path / "z", short_hcp[3:], zscore)
    assert main(["prepare", str(zs), "--like", str(recording_run), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    corpus = Corpus(tmp_path / "c")
    assert corpus.info["input_units"]["percent_signal_change_bridged"] == 2
    scaler = model_scaler(model, corpus)
    first = next(model_inputs(model, [short_hcp[3]]))
    row = int(np.flatnonzero(corpus.manifest["subject"] == short_hcp[3].subject)[0])
    x = next(iter_model_input(corpus, [row], scaler))
    np.testing.assert_allclose(x[:first.timeseries.shape[0]], first.timeseries, atol=2e-4)
    # Per-recording units are the checkpoint's units: the zero-shot spatial baseline applies.
    r = evaluate_reconstruction(model, corpus, ratios=(0.75,))
    assert "spatial_zero_shot" in r["methods"] and "spatial" not in r["methods"]
    assert r["spatial_baselines"]["spatial_zero_shot"]["available"]


# --- --atlas on the commands that take DATA files ----------------------------------------------

def test_files_on_another_atlas_run_with_atlas_and_transfer(pooled_ckpt, schaefer_files, tmp_path):
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(pooled_ckpt), str(schaefer_files), "--atlas", "schaefer100", "--transfer-atlas",
                 "--out", str(out), "--per-window"]) == 0
    df = pd.read_parquet(out)
    assert len(df) == 2 and df["recording_id"].iloc[0] == "sub-rest01_task-rest"  # 403 TRs at 0.72 s
    # The same input as the Recording API gives on that atlas.
    item = next(model_inputs(load_pretrained(pooled_ckpt), [load_schaefer100_rest()], transfer_atlas=True))
    assert item.windows.shape == (2, 200, 100)
    res = tmp_path / "networks"
    assert main(["networks", str(pooled_ckpt), str(schaefer_files), "--atlas", "schaefer100", "--transfer-atlas",
                 "--out", str(res), "--no-untrained-control", "--no-shifted-control", "--no-figures"]) == 0
    result = json.loads((res / "networks.json").read_text())
    assert result["atlas"] == "schaefer100" and result["parcels"] == 100


def test_atlas_of_a_corpus_must_be_its_own(pooled_ckpt, short_hcp, tmp_path, capsys):
    corpus = prepare_corpus(short_hcp[3:], tmp_path / "c",
                            PrepareSettings.of(atlas=short_hcp[0].atlas, fractions=(0, 0, 1)))
    code = main(["embed", str(pooled_ckpt), corpus.path, "--atlas", "schaefer100", "--out", str(tmp_path / "e.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and "the corpus is on 'aal2'" in err and corpus.path in err


def test_like_a_checkpoint_without_a_target_tr_warns_and_records_it(short_hcp, tmp_path):
    like = ReferenceContract(PreprocessingContract(median=[0.0] * 94, iqr=[1.0] * 94), short_hcp[0].atlas, "old")
    with pytest.warns(LikeTRWarning, match="no target TR"):
        corpus = prepare_corpus(short_hcp[3:], tmp_path / "c", PrepareSettings.of(like=like))
    assert any("no target TR" in w for w in corpus.info["warnings"])
    assert corpus.contract.median == [0.0] * 94  # the checkpoint's statistics (same atlas)


# --- zero-shot made explicit: evaluate recon on a fresh cohort ------------------------------------

@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory, short_hcp):
    """`brainlm pretrain` for 1 epoch on 2 HCP subjects (a third for validation): percent signal
    change, pooled scaling, AAL2. Returns (checkpoint folder, pretraining corpus)."""
    root = tmp_path_factory.mktemp("pooled_run")
    subjects = [r.subject for r in short_hcp[:3]]
    corpus = prepare_corpus(short_hcp[:3], root / "corpus",
                            PrepareSettings.of(atlas=short_hcp[0].atlas,
                                               contract=PreprocessingContract(percent_signal_change=True, target_tr=0.72),
                                               split_assignments=dict(zip(subjects, ("train", "train", "val")))))
    assert main(["pretrain", corpus.path, "--out", str(root / "run"), "--preset", "tiny", "--epochs", "1",
                 "--crops-per-recording", "2", "--quiet"]) == 0
    return root / "run" / "model", corpus


def test_pretraining_stores_the_spatial_statistics_of_its_training_frames(pooled_run):
    from sklearn.covariance import LedoitWolf

    ckpt, corpus = pooled_run
    stats = load_spatial_statistics(ckpt)
    # The frames pretraining reads: every TR of both training recordings (1,200 < 50,000).
    frames = np.concatenate([corpus.read(int(i)) for i in corpus.split_indices("train")])
    np.testing.assert_array_equal(sample_frames(corpus), frames)
    direct = LedoitWolf().fit(frames.astype(np.float64))
    np.testing.assert_array_equal(stats.mean, direct.location_)
    np.testing.assert_array_equal(stats.covariance, direct.covariance_)
    assert stats.shrinkage == direct.shrinkage_ and stats.n_frames == len(frames) == 1200
    assert stats.info == {"split": "train", "scaling": "pooled", "atlas": "aal2",
                          "corpus_identity": corpus.identity()}
    assert stats.mean.dtype == stats.covariance.dtype == np.float64 and stats.covariance.shape == (94, 94)
    assert "spatial_baseline.safetensors" in json.loads((ckpt / "digests.json").read_text())["sha256"]
    loaded = load_pretrained(ckpt).spatial_statistics
    np.testing.assert_array_equal(loaded.covariance, stats.covariance)


def test_an_evaluation_only_cohort_on_the_checkpoint_atlas_gets_the_zero_shot_baseline(pooled_run, short_hcp, tmp_path):
    ckpt, _ = pooled_run
    files = write_files(tmp_path / "files", short_hcp[3:])
    cohort, out = tmp_path / "cohort", tmp_path / "recon"
    assert main(["prepare", str(files), "--atlas", "aal2", "--like", str(ckpt), "--out", str(cohort), "--quiet"]) == 0
    assert main(["evaluate", "recon", str(ckpt), str(cohort), "--ratios", "0.5,0.75", "--out", str(out)]) == 0
    r = json.loads((out / "reconstruction.json").read_text())
    assert r["methods"] == ["brainlm", "zero", "parcel_mean", "interpolation", "spatial_zero_shot",
                            "spatial_distance", "spatial_in_recording"]
    assert r["method_labels"]["spatial_zero_shot"] == "spatial (zero-shot)"
    zs, ic = r["spatial_baselines"]["spatial_zero_shot"], r["spatial_baselines"]["spatial"]
    assert zs["available"] and zs["fit"] == "zero-shot" and zs["frames"] == 1200
    assert "pretraining data" in zs["fitted_on"] and zs["pretraining_atlas"] == "aal2"
    assert not ic["available"] and ic["fit"] == "in-cohort" and "no training split" in ic["reason"]
    assert r["spatial_baseline"] is None  # the in-cohort fit, as the key always meant
    for e in r["results"]:
        assert e["methods"]["spatial_zero_shot"]["r2"] > 0.1  # regions co-fluctuate in a new cohort too
    md = (out / "reconstruction.md").read_text()
    assert "| spatial (zero-shot) |" in md and "never this cohort" in md
    assert "`spatial` (in-cohort): left out, the corpus has no training split" in md
    assert md.count("beat spatial (zero-shot) (R²") == 2  # the verdict of each ratio names it


def test_the_zero_shot_baseline_is_the_spatial_imputer_fitted_on_the_pretraining_frames(pooled_run, short_hcp, tmp_path):
    """A cohort prepared like the checkpoint whose training split is the pretraining training
    split: its in-cohort fit is the imputer fitted on those frames, and the zero-shot baseline
    scores the same on the same masks."""
    ckpt, pre = pooled_run
    model = load_pretrained(ckpt)
    recordings = short_hcp[:2] + short_hcp[3:]
    assignments = {r.subject: "train" if i < 2 else "test" for i, r in enumerate(recordings)}
    cohort = prepare_corpus(recordings, tmp_path / "c",
                            PrepareSettings.of(like=ReferenceContract(model.contract, model.atlas, str(ckpt)),
                                               split_assignments=assignments))
    assert cohort.identity() != pre.identity()
    imputer = SpatialImputer().fit(sample_frames(pre))
    stored = SpatialImputer().use(model.spatial_statistics)
    for a in ("mean_", "covariance_", "shrinkage_", "n_frames_"):
        np.testing.assert_array_equal(getattr(stored, a), getattr(imputer, a))
    r = evaluate_reconstruction(model, cohort, ratios=(0.75,))
    assert r["methods"][4:6] == ["spatial", "spatial_zero_shot"]
    m = r["results"][0]["methods"]
    assert m["spatial_zero_shot"]["r2"] == pytest.approx(m["spatial"]["r2"], abs=1e-5)
    np.testing.assert_allclose(m["spatial_zero_shot"]["per_parcel"]["mse"], m["spatial"]["per_parcel"]["mse"],
                               rtol=1e-4)
    # On the pretraining corpus itself, the stored fit is the in-cohort one: not shown twice.
    own = evaluate_reconstruction(model, pre, split="val", ratios=(0.75,))
    assert "spatial_zero_shot" not in own["methods"]
    assert "pretraining corpus" in own["spatial_baselines"]["spatial_zero_shot"]["reason"]


def test_a_cohort_on_another_atlas_without_a_train_split_gets_atlas_free_spatial_baselines(
        pooled_run, schaefer_files, tmp_path, capsys):
    ckpt, _ = pooled_run
    cohort, out = tmp_path / "cohort", tmp_path / "recon"
    assert main(["prepare", str(schaefer_files), "--atlas", "schaefer100", "--like", str(ckpt), "--out",
                 str(cohort), "--quiet"]) == 0
    assert main(["evaluate", "recon", str(ckpt), str(cohort), "--transfer-atlas", "--ratios", "0.75",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "reconstruction.json").read_text())
    # Only the spatial baselines that need no covariance on this atlas (issue 26): the distance
    # model of the pretraining covariance and the run's other window.
    assert r["methods"] == ["brainlm", "zero", "parcel_mean", "interpolation", "spatial_distance",
                            "spatial_in_recording"] and r["windows"] == 2
    reasons = {m: v["reason"] for m, v in r["spatial_baselines"].items() if not v["available"]}
    assert "no training split" in reasons["spatial"]
    assert "'schaefer100' (100 parcels), not the checkpoint's pretraining atlas 'aal2'" in reasons["spatial_zero_shot"]
    assert "left out" in printed and "the best baseline" in printed
