"""Masked reconstruction evaluation: the pretrained tiny model on the held-out HCP subject next
to baselines scored on the same masks; metric arithmetic; baselines on signals with known
answers; determinism; bad input leaves no results behind; the spatial statistics a checkpoint
carries for the zero-shot baseline (stored, digest-checked, absent from older checkpoints)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from sklearn.metrics import r2_score

from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.checkpoints.folder import (SPATIAL_BASELINE, load_pretrained, load_spatial_statistics, load_tensors,
                                      save_pretrained)
from brainlm.model.config import preset
from brainlm.tasks.reconstruction import (
    BASELINES, SPATIAL_BASELINES, ReconstructionScores, SpatialImputer, evaluate_reconstruction, impute_interpolation,
    impute_parcel_mean, reconstruction_markdown)
from brainlm.train.spatial import ledoit_wolf_statistics, sample_frames

#: The methods on the pretraining corpus itself: the stored statistics are its in-cohort fit
#: (no ``spatial_zero_shot``); their distance model and the other windows of each recording give
#: the other two spatial baselines.
OWN_CORPUS_METHODS = ["brainlm", "zero", "parcel_mean", "interpolation", "spatial", "spatial_distance",
                      "spatial_in_recording"]
#: The same without stored statistics: no distance model either.
NO_STATISTICS_METHODS = ["brainlm", "zero", "parcel_mean", "interpolation", "spatial", "spatial_in_recording"]


@pytest.fixture(scope="module")
def recon(trained, hcp_corpus, tmp_path_factory):
    """`brainlm evaluate recon` on the HCP test subject (6 windows of 200 TRs), as a user runs it."""
    out = tmp_path_factory.mktemp("recon") / "recon"
    assert main(["evaluate", "recon", str(trained / "model"), hcp_corpus.path, "--split", "test",
                 "--ratios", "0.2,0.75", "--out", str(out)]) == 0
    return out, json.loads((out / "reconstruction.json").read_text())


def test_pretrained_model_beats_trivial_baselines_on_held_out_hcp(recon, hcp_corpus):
    out, r = recon
    assert r["split"] == "test" and r["recordings"] == 1 and r["windows"] == 6
    assert r["methods"] == OWN_CORPUS_METHODS
    md = (out / "reconstruction.md").read_text()
    assert "| BrainLM |" in md and "| spatial (in-cohort) |" in md
    assert "the corpus is the checkpoint's pretraining corpus" in r["spatial_baselines"]["spatial_zero_shot"]["reason"]
    for entry in r["results"]:
        m = entry["methods"]
        # The very same masked values for every method.
        assert len({m[k]["n_values"] for k in m}) == 1
        n_tokens = round(entry["mask_ratio"] * 94 * 10)
        assert m["brainlm"]["n_values"] == 6 * n_tokens * 20
        # A model that learned something beats predicting the scaled median and the visible mean.
        assert m["brainlm"]["r2"] > m["zero"]["r2"] + 0.05
        assert m["brainlm"]["mse"] < m["parcel_mean"]["mse"]
        # The spatial baseline (fitted on the 5 training subjects) is a real competitor.
        assert m["spatial"]["r2"] > 0.1
        for method in m.values():
            pp = method["per_parcel"]
            assert len(pp["r2"]) == len(pp["mse"]) == len(pp["pearson_r"]) == 94
    # Per-parcel R^2 is not clipped: some parcels of the zero baseline are below 0.
    zero_pp = np.array(r["results"][0]["methods"]["zero"]["per_parcel"]["r2"], dtype=float)
    assert np.nanmin(zero_pp) < 0
    assert r["parcels"]["names"] == list(hcp_corpus.atlas.parcel_names)
    assert r["spatial_baseline"]["fit_split"] == "train"


def test_baselines_behave_as_bold_physics_says(recon):
    low, high = (e["methods"] for e in recon[1]["results"])
    # Interpolation carries signal across short gaps and loses it as gaps grow (at 75% most
    # gaps span several 14.4 s patches, longer than BOLD stays correlated).
    assert low["interpolation"]["pearson_r"] > 0.1
    assert low["interpolation"]["pearson_r"] > high["interpolation"]["pearson_r"] + 0.05
    # Regions co-fluctuate: the visible parcels at the same TR are the best baseline. Measured
    # (tiny checkpoint, seed 0): in-recording 0.72 / 0.63 at 0.2 / 0.75, in-cohort 0.64 / 0.55,
    # the distance model 0.54 / 0.39, interpolation below 0.
    for m in (low, high):
        best = max((b for b in BASELINES if b in m), key=lambda b: m[b]["r2"])
        assert best in SPATIAL_BASELINES
        # The full covariance of the training subjects beats its summary by distance and hemisphere.
        assert m["spatial"]["r2"] > m["spatial_distance"]["r2"] + 0.05
        assert m["spatial_distance"]["r2"] > m["interpolation"]["r2"] + 0.3


def test_same_seed_same_numbers_other_seed_other_masks(trained, hcp_corpus):
    a = evaluate_reconstruction(trained / "model", hcp_corpus, ratios=(0.5,), seed=3)
    b = evaluate_reconstruction(trained / "model", hcp_corpus, ratios=(0.5,), seed=3)
    c = evaluate_reconstruction(trained / "model", hcp_corpus, ratios=(0.5,), seed=4)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(a) == strip(b)
    assert a["results"][0]["methods"]["brainlm"]["mse"] != c["results"][0]["methods"]["brainlm"]["mse"]


def test_scores_match_sklearn_and_numpy():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(3, 50, 7))
    p = t + rng.normal(scale=0.7, size=t.shape)
    mask = rng.random(t.shape) < 0.4
    s = ReconstructionScores(7)
    s.update(t[:2], p[:2], mask[:2])  # streamed in two parts
    s.update(t[2:], p[2:], mask[2:])
    pooled = s.pooled()
    assert pooled["n_values"] == mask.sum()
    assert pooled["r2"] == pytest.approx(r2_score(t[mask], p[mask]), abs=1e-10)
    assert pooled["mse"] == pytest.approx(np.mean((t[mask] - p[mask]) ** 2), abs=1e-10)
    assert pooled["pearson_r"] == pytest.approx(np.corrcoef(t[mask], p[mask])[0, 1], abs=1e-10)
    per = s.per_parcel()
    for j in range(7):
        mj = mask[..., j]
        assert per["r2"][j] == pytest.approx(r2_score(t[..., j][mj], p[..., j][mj]), abs=1e-10)
    # A constant prediction has no correlation: None, not NaN, in the pooled JSON.
    z = ReconstructionScores(7)
    z.update(t, np.zeros_like(t), mask)
    assert z.pooled()["pearson_r"] is None


def test_baselines_on_signals_with_known_answers():
    t = np.arange(100, dtype=np.float32)
    # Two parcels linear in time: interpolation is exact between visible samples.
    x = np.stack([2 * t + 1, -0.5 * t], axis=1)
    mask = np.zeros_like(x, dtype=bool)
    mask[20:40, 0] = True
    mask[50:90, 1] = True
    np.testing.assert_allclose(impute_interpolation(x, mask)[mask], x[mask], rtol=1e-5)
    # The parcel mean of the visible values.
    pm = impute_parcel_mean(x, mask)
    assert pm[0, 0] == pytest.approx(x[~mask[:, 0], 0].mean())
    # Parcels that are linear mixtures of three sources: the spatial baseline recovers a hidden
    # parcel from the visible ones almost exactly.
    rng = np.random.default_rng(1)
    src = rng.normal(size=(5000, 3))
    mix = rng.normal(size=(3, 8))
    frames = src @ mix + 0.01 * rng.normal(size=(5000, 8))
    imp = SpatialImputer().fit(frames)
    test = (rng.normal(size=(40, 3)) @ mix).astype(np.float32)
    hidden = np.zeros_like(test, dtype=bool)
    hidden[:20, [0, 5]] = True
    hidden[20:, [2, 3, 7]] = True
    pred = imp.impute(test, hidden)
    assert r2_score(test[hidden], pred[hidden]) > 0.99
    np.testing.assert_array_equal(pred[~hidden], np.broadcast_to(imp.mean_, test.shape)[~hidden].astype(np.float32))


def test_bad_input_names_the_problem_and_writes_nothing(trained, hcp_corpus, tmp_path, capsys):
    out = tmp_path / "res"
    with pytest.raises(BrainLMInputError, match="mask ratio 1.2"):
        evaluate_reconstruction(trained / "model", hcp_corpus, ratios=(0.2, 1.2), out=out)
    assert not out.exists()
    assert main(["evaluate", "recon", str(trained / "model"), hcp_corpus.path, "--ratios", "0.5,0.5",
                 "--out", str(out)]) == 2
    assert "distinct" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    with pytest.raises(BrainLMInputError, match="output folder exists"):
        evaluate_reconstruction(trained / "model", hcp_corpus, out=out)


def test_corpus_cleaned_differently_is_refused(trained, hcp, tmp_path):
    corpus = prepare_corpus(hcp[:3], tmp_path / "c",
                            PrepareSettings.of(atlas=load_atlas("aal2"),
                                               contract=PreprocessingContract(percent_signal_change=True, high_pass_hz=0.01),
                                               fractions=(0.34, 0.33, 0.33)))
    with pytest.raises(BrainLMInputError, match="high_pass_hz"):
        evaluate_reconstruction(trained / "model", corpus, out=tmp_path / "res")
    assert not (tmp_path / "res").exists()


# -- the spatial statistics a checkpoint carries -----------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(hcp_corpus, tmp_path_factory):
    """Two ``tiny`` checkpoints (same fresh weights) on the HCP corpus' contract and atlas: one
    written as before (no spatial statistics), one carrying the statistics of its training
    frames. Returns (without, with, statistics)."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    model = BrainLM(preset("tiny"), contract=hcp_corpus.contract, atlas=hcp_corpus.atlas)
    stats = ledoit_wolf_statistics(sample_frames(hcp_corpus, max_frames=3000), split="train", scaling="pooled",
                                   atlas="aal2", corpus_identity="another corpus")
    save_pretrained(model, root / "old")
    save_pretrained(model, root / "new", tensors={SPATIAL_BASELINE: stats.to_tensors()})
    return root / "old", root / "new", stats


def test_spatial_statistics_round_trip_through_the_checkpoint(checkpoints):
    _, new, stats = checkpoints
    back = load_spatial_statistics(new)
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.covariance, stats.covariance)
    assert (back.n_frames, back.shrinkage, back.info) == (3000, stats.shrinkage, stats.info)
    arrays, meta = load_tensors(new, SPATIAL_BASELINE)
    assert set(arrays) == {"mean", "covariance"} and meta["format"] == "brainlm-spatial-baseline"
    assert load_pretrained(new).spatial_statistics.n_parcels == 94


def test_a_checkpoint_without_spatial_statistics_loads_and_evaluates(checkpoints, hcp_corpus, tmp_path):
    old, new, _ = checkpoints
    assert load_spatial_statistics(old) is None and load_pretrained(old).spatial_statistics is None
    r = evaluate_reconstruction(old, hcp_corpus, ratios=(0.75,), max_recordings=1, out=tmp_path / "old")
    assert r["methods"] == NO_STATISTICS_METHODS
    assert "carries no spatial statistics" in r["spatial_baselines"]["spatial_zero_shot"]["reason"]
    assert "carries no spatial statistics" in r["spatial_baselines"]["spatial_distance"]["reason"]
    assert r["spatial_baseline"]["fit_split"] == "train" and r["spatial_baselines"]["spatial"]["fit"] == "in-cohort"
    # With them (fitted on 'another corpus'), both are scored on the same masks, each labelled.
    r = evaluate_reconstruction(new, hcp_corpus, ratios=(0.75,), max_recordings=1, out=tmp_path / "new")
    assert r["methods"] == ["brainlm", "zero", "parcel_mean", "interpolation", "spatial", "spatial_zero_shot",
                            "spatial_distance", "spatial_in_recording"]
    assert r["method_labels"] == {"brainlm": "BrainLM", "zero": "zero", "parcel_mean": "parcel_mean",
                                  "interpolation": "interpolation", "spatial": "spatial (in-cohort)",
                                  "spatial_zero_shot": "spatial (zero-shot)",
                                  "spatial_distance": "spatial (distance model, zero-shot)",
                                  "spatial_in_recording": "spatial (in-recording)"}
    m = r["results"][0]["methods"]
    assert m["spatial_zero_shot"]["n_values"] == m["brainlm"]["n_values"]
    # 3,000 frames of the same subjects: close to, not the same as, the in-cohort fit.
    assert m["spatial_zero_shot"]["r2"] == pytest.approx(m["spatial"]["r2"], abs=0.05)
    md = (tmp_path / "new" / "reconstruction.md").read_text()
    assert md == reconstruction_markdown(r)
    for text in ("| spatial (in-cohort) |", "| spatial (zero-shot) |", "`spatial` (in-cohort): fitted on the training split",
                 "`spatial_zero_shot` (zero-shot): fitted on the checkpoint's pretraining data"):
        assert text in md
    verdict = md.splitlines()[-1]
    assert "spatial (in-cohort)" in verdict and "spatial (zero-shot)" in verdict


def test_altered_or_added_spatial_statistics_are_refused(checkpoints, tmp_path):
    old, new, stats = checkpoints
    altered = tmp_path / "altered"
    shutil.copytree(new, altered)
    arrays, meta = stats.to_tensors()
    save_file({**arrays, "covariance": arrays["covariance"] * 1.01}, altered / SPATIAL_BASELINE, metadata=meta)
    for load in (load_pretrained, load_spatial_statistics):
        with pytest.raises(BrainLMInputError, match="spatial_baseline.safetensors was altered or damaged"):
            load(altered)
    # Statistics slipped into a checkpoint written without them are not taken on trust.
    added = tmp_path / "added"
    shutil.copytree(old, added)
    shutil.copy(new / SPATIAL_BASELINE, added / SPATIAL_BASELINE)
    with pytest.raises(BrainLMInputError, match="not recorded in digests.json"):
        load_pretrained(added)
    # A deleted file the checkpoint was written with is named.
    (altered / SPATIAL_BASELINE).unlink()
    with pytest.raises(BrainLMInputError, match="lacks spatial_baseline.safetensors"):
        load_pretrained(altered)
