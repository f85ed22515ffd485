"""The synthetic cohort: model pieces, reproducibility, bad input, files that `prepare` reads,
recoverable phenotype effects, and agreement with real HCP data."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from scipy.signal import detrend, welch
from scipy.stats import pearsonr
from sklearn.linear_model import RidgeClassifierCV, RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.simulate import (DEFAULT_SITES, CohortSpec, LatentEffects, ModelSettings,
                              SimulatedRecording, effect_masks, limbic_prefrontal, load_connectome,
                              reference_fc, simulate_cohort, write_cohort)
from brainlm.simulate.cohort import auto_batch_size
from brainlm.commands import dispatch as run
from brainlm.commands.simulate import register
from brainlm.simulate.hemodynamics import BalloonWindkessel
from brainlm.simulate.neural import HopfNetwork

YOUNG = LatentEffects(age_min=22, age_max=36)  # the age range of the HCP young adults


def bold_stats(x: np.ndarray, tr: float) -> tuple[float, float, float]:
    """Median lag-1 autocorrelation over parcels, mean FC (upper triangle), and median share
    of power in (0, 0.1) Hz, of one (T, P) recording after linear detrending."""
    x = detrend(np.asarray(x, dtype=np.float64), axis=0)
    x = x / x.std(axis=0)
    ac1 = float(np.median(np.mean(x[1:] * x[:-1], axis=0)))
    fc = np.corrcoef(x, rowvar=False)
    f, power = welch(x, fs=1.0 / tr, nperseg=256, axis=0)
    low = np.median(power[(f > 0) & (f < 0.1)].sum(axis=0) / power[f > 0].sum(axis=0))
    return ac1, float(fc[np.triu_indices_from(fc, 1)].mean()), float(low)


def group_fc(recordings) -> np.ndarray:
    return np.mean([np.corrcoef(detrend(r.timeseries.astype(np.float64), axis=0), rowvar=False)
                    for r in recordings], axis=0)


def upper(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices_from(m, 1)]


@pytest.fixture(scope="module")
def small():
    return simulate_cohort(CohortSpec(6, atlas="schaefer100", n_trs=120, sites=3, seed=3), batch_size=4)


@pytest.fixture(scope="module")
def young_aal2():
    """HCP-like: young adults at the HCP-like site (TR 0.72 s), 1200 TRs, AAL2."""
    return simulate_cohort(CohortSpec(24, atlas="aal2", n_trs=1200, sites=1, seed=11, effects=YOUNG,
                                      units="percent"))


@pytest.fixture(scope="module")
def real_stats(hcp):
    return np.array([bold_stats(r.timeseries, r.tr) for r in hcp])


# -- model pieces ----------------------------------------------------------------------------
def test_hopf_oscillator_settles_on_its_limit_cycle_at_its_frequency():
    # Uncoupled, noise-free, a > 0: |z| -> sqrt(a), phase advancing at omega.
    a, f, dt = 0.1, 0.05, 0.1
    net = HopfNetwork(np.zeros((1, 2, 2)), bifurcation=a, frequency_hz=f, noise=0.0, dt=dt,
                      dtype=np.float64)
    net.z[:] = 0.01
    for _ in range(3000):
        net.step(np.zeros((1, 2, 2)))
    r = np.hypot(net.z[..., 0], net.z[..., 1])
    np.testing.assert_allclose(r, np.sqrt(a), rtol=0.02)
    phase0 = np.arctan2(net.z[0, 0, 1], net.z[0, 0, 0])
    net.step(np.zeros((1, 2, 2)))
    phase1 = np.arctan2(net.z[0, 0, 1], net.z[0, 0, 0])
    assert np.angle(np.exp(1j * (phase1 - phase0))) == pytest.approx(2 * np.pi * f * dt, rel=0.05)


def test_diffusive_coupling_synchronises_oscillators():
    # Two oscillators with different frequencies: strongly coupled they lock (correlated x).
    def corr(g):
        k = np.array([[[0.0, g], [g, 0.0]]])
        net = HopfNetwork(k, bifurcation=-0.02, frequency_hz=[0.045, 0.06], noise=0.02, dt=0.1,
                          dtype=np.float64)
        rng = np.random.default_rng(0)
        xs = []
        for _ in range(20000):
            net.step(rng.standard_normal((1, 2, 2)))
            xs.append(net.x[0].copy())
        return np.corrcoef(np.array(xs).T)[0, 1]

    assert corr(0.0) < 0.15 < 0.6 < corr(1.0)


def test_balloon_impulse_response_has_the_canonical_shape():
    hemo = BalloonWindkessel((1, 1), dtype=np.float64)
    dt, bold = 0.01, []
    for i in range(3000):
        hemo.step(np.full((1, 1), 1.0 if i * dt < 1.0 else 0.0), dt)
        bold.append(hemo.bold()[0, 0])
    bold = np.array(bold)
    t = np.arange(bold.size) * dt
    assert 2.5 < t[bold.argmax()] < 6.0          # peak a few seconds after the 1 s burst
    assert 0.5 < bold.max() < 5.0                # a few percent signal change
    assert bold.min() < 0 and t[bold.argmin()] > t[bold.argmax()] + 3  # post-stimulus undershoot
    # A slower (older) vasculature peaks later.
    slow = BalloonWindkessel((1, 1), kappa=0.65 / 1.3, tau=0.98 * 1.3, dtype=np.float64)
    slow_bold = []
    for i in range(3000):
        slow.step(np.full((1, 1), 1.0 if i * dt < 1.0 else 0.0), dt)
        slow_bold.append(slow.bold()[0, 0])
    assert t[int(np.argmax(slow_bold))] > t[bold.argmax()] + 0.2


@pytest.mark.parametrize("name", ["aal2", "schaefer100", "schaefer200", "schaefer400"])
def test_connectomes_are_valid_coupling_matrices_in_atlas_order(name):
    con = load_connectome(name)
    atlas = load_atlas(name)
    w = con.coupling
    assert con.atlas.matches(atlas) and w.shape == (atlas.n_parcels, atlas.n_parcels)
    np.testing.assert_allclose(w, w.T)
    assert (w >= 0).all() and np.all(np.diag(w) == 0)
    assert w.sum(axis=1).mean() == pytest.approx(1.0)
    assert (w.sum(axis=1) > 0).all()  # no parcel is left uncoupled
    assert reference_fc(name).shape == w.shape
    if name == "aal2":
        assert con.kind == "structural" and con.individual.shape == (7, 94, 94)
    else:
        assert con.kind == "functional" and con.individual is None
        # The coupling keeps the real FC's strongest pairs.
        fc = reference_fc(name)
        assert upper(fc)[upper(w) > 0].mean() > upper(fc).mean() + 0.15


def test_effect_masks_pick_the_documented_parcels():
    atlas = load_atlas("schaefer200")
    trait, group = effect_masks(atlas)
    nets = np.array(atlas.networks)
    rows, cols = np.nonzero(trait)
    assert (nets[rows] == "Default").all() and (nets[cols] == "Default").all()
    limbic, prefrontal = limbic_prefrontal(atlas)
    assert limbic.sum() == (nets == "Limbic").sum() and prefrontal.any()
    assert (atlas.xyz[prefrontal, 1] > 0).all()
    rows, cols = np.nonzero(group)
    assert (limbic[rows] | limbic[cols]).all()
    aal_limbic, _ = limbic_prefrontal(load_atlas("aal2"))
    names = np.array(load_atlas("aal2").parcel_names)[aal_limbic]
    assert {"Hippocampus_L", "Amygdala_R", "OFCmed_L"} <= set(names)


# -- the cohort ------------------------------------------------------------------------------
def test_cohort_shapes_ids_sites_and_phenotypes(small):
    assert len(small) == 6
    site_trs = {s.name: s.tr for s in DEFAULT_SITES[:3]}
    for i, rec in enumerate(small):
        assert isinstance(rec, SimulatedRecording) and isinstance(rec, Recording)
        assert rec.subject == f"{i + 1:04d}" and rec.task == "rest"
        assert rec.timeseries.shape == (120, 100) and rec.timeseries.dtype == np.float32
        assert rec.tr == site_trs[rec.site]
        assert set(rec.phenotypes) == {"age", "trait", "group", "null_score"}
        assert 20 <= rec.phenotypes["age"] <= 80 and rec.phenotypes["group"] in (0, 1)
        gt = rec.ground_truth
        assert gt["site"] == rec.site and gt["age"] == rec.phenotypes["age"]
        # Raw units: a scanner baseline with BOLD changes of a fraction of a percent.
        baseline = {s.name: s.baseline for s in DEFAULT_SITES}[rec.site]
        mean = rec.timeseries.mean(axis=0)
        assert np.all(np.abs(mean / baseline - 1) < 0.6)
        assert np.median(rec.timeseries.std(axis=0) / mean) < 0.02
    assert len({r.site for r in simulate_cohort(CohortSpec(12, atlas="schaefer100", n_trs=20, seed=3))}) == 3


def test_ground_truth_follows_the_documented_effects(small):
    e = LatentEffects()
    for rec in small:
        gt = rec.ground_truth
        a = (gt["age"] - 50) / 30
        hemo = 1 + e.age_on_hemodynamics * a
        noise = {s.name: s.noise_scale for s in DEFAULT_SITES}[rec.site] * (1 + e.age_on_noise * a)
        trait = np.exp(e.trait_on_coupling * gt["trait"])
        assert gt["trait_coupling_factor"] == pytest.approx(trait)
        assert gt["group_coupling_added"] == (e.group_on_coupling if gt["group"] else 0.0)
        assert gt["transit_time_s"] == pytest.approx(0.98 * hemo, rel=1e-5)
        assert gt["signal_decay_per_s"] == pytest.approx(0.65 / hemo, rel=1e-5)
        assert gt["measurement_noise_pct"] == pytest.approx(0.3 * noise, rel=1e-5)


def test_same_seed_same_cohort_whatever_the_batching_and_jobs(small):
    again = simulate_cohort(CohortSpec(6, atlas="schaefer100", n_trs=120, sites=3, seed=3), batch_size=1,
                            jobs=2)
    for a, b in zip(small, again):
        np.testing.assert_array_equal(a.timeseries, b.timeseries)
        assert a.phenotypes == b.phenotypes and a.ground_truth == b.ground_truth
    # Batches fit the CPU cache, and every worker gets one.
    assert (auto_batch_size(94), auto_batch_size(200), auto_batch_size(400)) == (64, 32, 8)
    # Randomness is keyed by subject: a larger cohort extends a smaller one.
    bigger = simulate_cohort(CohortSpec(8, atlas="schaefer100", n_trs=120, sites=3, seed=3))
    for a, b in zip(small, bigger):
        np.testing.assert_array_equal(a.timeseries, b.timeseries)


def test_different_seeds_give_different_subjects(small):
    other = simulate_cohort(CohortSpec(6, atlas="schaefer100", n_trs=120, sites=3, seed=4))
    assert [r.phenotypes for r in other] != [r.phenotypes for r in small]
    assert not any(np.allclose(a.timeseries, b.timeseries) for a in small for b in other
                   if a.tr == b.tr)


def test_drift_spikes_units_and_single_tr_options():
    base = dict(atlas="schaefer100", n_trs=400, sites=2, seed=5, units="percent")
    clean = simulate_cohort(CohortSpec(2, **base))
    dirty = simulate_cohort(CohortSpec(2, drift=1.0, spike_rate=3.0, spike_size=5.0, **base))
    for c, d in zip(clean, dirty):
        frames = d.ground_truth["spike_frames"]
        assert len(frames) >= 3
        extra = d.timeseries.astype(np.float64) - c.timeseries
        # Spikes hit every parcel in their frame with the same sign.
        for f in frames:
            jump = extra[f] - np.median(extra[max(0, f - 5):f + 6], axis=0)
            assert np.all(np.sign(jump) == np.sign(jump[0])) and np.abs(jump).mean() > 2
        # Drift is slow: almost all of its power below 1/128 Hz.
        drift = np.delete(extra, [g for f in frames for g in (f, f + 1) if g < len(extra)], axis=0)
        spectrum = np.abs(np.fft.rfft(drift - drift.mean(0), axis=0)) ** 2
        freqs = np.fft.rfftfreq(len(drift), d.tr)
        assert spectrum[freqs < 1 / 100].sum() / spectrum.sum() > 0.8
        assert abs(c.timeseries.mean()) < 1.0  # percent units are centred on zero
    one_tr = simulate_cohort(CohortSpec(6, atlas="schaefer100", n_trs=30, sites=3, tr=1.5, seed=5))
    assert {r.tr for r in one_tr} == {1.5} and len({r.site for r in one_tr}) > 1


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_subjects=0), "n_subjects"),
    (dict(n_subjects=2.5), "n_subjects"),
    (dict(tr=0.0), "tr"),
    (dict(tr=-0.72), "tr"),
    (dict(tr=720), "tr"),
    (dict(atlas="yeo17"), "atlas"),
    (dict(measurement_noise=-0.1), "measurement_noise"),
    (dict(drift=-1.0), "drift"),
    (dict(spike_rate=-2.0), "spike_rate"),
    (dict(n_trs=1), "n_trs"),
    (dict(sites=0), "sites"),
    (dict(sites=9), "sites"),
    (dict(seed=-1), "seed"),
    (dict(units="bold"), "units"),
    (dict(jobs=0), "jobs"),
    (dict(batch_size=0), "batch_size"),
    (dict(sites=[]), "sites"),
    (dict(effects=LatentEffects(patient_fraction=1.5)), "patient_fraction"),
    (dict(effects=LatentEffects(age_min=80, age_max=20)), "age_min"),
    (dict(effects=LatentEffects(trait_network="Cerebellum")), "trait_network"),
    (dict(model=ModelSettings(neural_noise=-0.01)), "neural_noise"),
    (dict(model=ModelSettings(dt=0)), "dt"),
])
def test_impossible_parameters_are_clear_errors(kwargs, field):
    args = dict(n_subjects=2, atlas="schaefer100", n_trs=10)
    args.update(kwargs)
    run_options = {k: args.pop(k) for k in ("jobs", "batch_size") if k in args}
    with pytest.raises(BrainLMInputError, match=field):
        simulate_cohort(CohortSpec(args.pop("n_subjects"), **args), **run_options)


def test_cohort_spec_checks_its_fields_when_built():
    with pytest.raises(BrainLMInputError, match=r"field 'drift' is -1\.0; expected a number >= 0"):
        CohortSpec(2, atlas="schaefer100", drift=-1.0)
    with pytest.raises(BrainLMInputError, match="field 'n_trs' is 1; expected an integer >= 2"):
        CohortSpec(2, n_trs=1)
    with pytest.raises(BrainLMInputError, match="field 'effects' .* expected a LatentEffects"):
        CohortSpec(2, effects={"age_min": 20.0})
    with pytest.raises(BrainLMInputError, match="field 'spec' is 4; expected a CohortSpec"):
        simulate_cohort(4)
    # Stored as checked: plain ints, the atlas lower-cased, explicit sites as a tuple.
    spec = CohortSpec(np.int64(4), atlas="AAL2", sites=[DEFAULT_SITES[1]], tr=1)
    assert (spec.n_subjects, spec.atlas, spec.sites, spec.tr) == (4, "aal2", (DEFAULT_SITES[1],), 1.0)
    assert [(s.name, s.tr) for s in spec.site_list] == [("B", 1.0)]
    assert spec.to_dict()["sites"][0]["baseline"] == DEFAULT_SITES[1].baseline
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1


def test_cohort_numbers_are_those_of_the_simulator_before_its_split():
    # Recorded from the pre-refactor code (commit 70db4cb, when cohort.py held the whole
    # simulator and took keyword arguments): the same settings must keep giving the same
    # subjects and signals, so the order of random draws must never change.
    spec = CohortSpec(3, atlas="schaefer100", n_trs=20, sites=3, seed=3, drift=0.5,
                      spike_rate=6.0, units="percent")
    recs = simulate_cohort(spec, batch_size=2)
    expected = [
        ("A", 0.72, {"age": 36.35, "trait": 1.4452, "group": 1, "null_score": -0.1728}, [],
         [-0.5298035144805908, -1.0284032821655273, 0.3995569050312042],
         -135.0500873561541, 769.9975181284073),
        ("C", 0.8, {"age": 77.77, "trait": 0.1074, "group": 0, "null_score": 0.8788}, [5, 7, 12],
         [0.4002285599708557, -0.14461423456668854, -1.0598491430282593],
         -162.73320991929359, 3630.4833461686544),
        ("A", 0.72, {"age": 62.73, "trait": -0.7556, "group": 0, "null_score": 0.1247}, [],
         [-1.505042314529419, -1.5188606977462769, -1.148032546043396],
         53.117503651519655, 1550.6158433071002),
    ]
    for rec, (site, tr, phenotypes, spikes, first, total, squares) in zip(recs, expected):
        x = rec.timeseries.astype(np.float64)
        assert (rec.site, rec.tr, rec.phenotypes) == (site, tr, phenotypes)
        assert rec.ground_truth["spike_frames"] == spikes
        np.testing.assert_allclose(rec.timeseries[0, :3], first, rtol=1e-6)
        np.testing.assert_allclose([x.sum(), (x ** 2).sum()], [total, squares], rtol=1e-6)
    raw = simulate_cohort(CohortSpec(1, atlas="schaefer100", n_trs=20, sites=3, seed=3,
                                     drift=0.5, spike_rate=6.0))[0]
    np.testing.assert_allclose(raw.timeseries[0, :3],
                               [10014.2275390625, 10252.080078125, 10446.0947265625], rtol=1e-7)
    np.testing.assert_allclose(raw.timeseries.astype(np.float64).sum(), 20119125.376464844,
                               rtol=1e-9)


# -- files, CLI and prepare ------------------------------------------------------------------
def _cli(argv):
    parser = argparse.ArgumentParser(prog="brainlm")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["simulate", *argv]))


def test_cli_writes_a_cohort_that_prepare_reads_as_is(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert _cli(["--subjects", "9", "--atlas", "schaefer100", "--out", str(out), "--n-trs", "260",
                 "--seed", "2", "--jobs", "2", "--batch-size", "4", "--quiet"]) == 0
    assert "brainlm prepare" in capsys.readouterr().out
    table = pd.read_csv(out / "participants.tsv", sep="\t")
    assert list(table.columns) == ["participant_id", "age", "trait", "group", "site", "null_score"]
    assert table["participant_id"].tolist() == [f"sub-{i:04d}" for i in range(1, 10)]
    sidecar = json.loads((out / "sub-0001/func/sub-0001_task-rest_bold.json").read_text())
    assert sidecar["RepetitionTime"] in {s.tr for s in DEFAULT_SITES}
    assert sidecar["GroundTruth"]["age"] == table.loc[0, "age"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["SimulationSettings"]["seed"] == 2
    # The files are the recordings simulate_cohort returns for the same settings.
    same = simulate_cohort(CohortSpec(9, atlas="schaefer100", n_trs=260, seed=2))
    np.testing.assert_array_equal(np.load(out / "sub-0004/func/sub-0004_task-rest_bold.npy"),
                                  same[3].timeseries)

    contract = PreprocessingContract(target_tr=0.72, percent_signal_change=True)
    corpus = prepare_corpus([out], tmp_path / "corpus",
                            PrepareSettings.of(atlas=load_atlas("schaefer100"), contract=contract))
    manifest = pd.read_parquet(tmp_path / "corpus" / "manifest.parquet")
    assert len(corpus) == 9 and set(manifest["tr"]) == {0.72}
    by_subject = manifest.set_index("subject")
    for row in table.itertuples():
        got = by_subject.loc[row.participant_id[4:]]
        assert got["site"] == row.site and got["age"] == row.age and got["group"] == row.group
        assert got["tr_source"] == {s.name: s.tr for s in DEFAULT_SITES}[row.site]


def test_cli_single_site_tsv_cohort_needs_no_target_tr(tmp_path):
    out = tmp_path / "cohort"
    assert _cli(["--subjects", "3", "--atlas", "aal2", "--out", str(out), "--n-trs", "220",
                 "--sites", "1", "--format", "tsv", "--units", "percent", "--quiet"]) == 0
    files = sorted(out.glob("sub-*/func/*_bold.tsv"))
    assert len(files) == 3
    prepare_corpus([out], tmp_path / "corpus", PrepareSettings.of(atlas=load_atlas("aal2")))
    manifest = pd.read_parquet(tmp_path / "corpus" / "manifest.parquet")
    assert set(manifest["tr_source"]) == {0.72} and manifest["age"].notna().all()


@pytest.mark.parametrize("argv, message", [
    (["--subjects", "0"], "n_subjects"),
    (["--subjects", "2", "--tr", "0"], "tr"),
    (["--subjects", "2", "--atlas", "destrieux"], "atlas"),
    (["--subjects", "2", "--noise", "-1"], "measurement_noise"),
    (["--subjects", "2", "--effect-scale", "-1"], "effect_scale"),
])
def test_cli_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, argv, message):
    out = tmp_path / "cohort"
    assert _cli([*argv, "--out", str(out), "--n-trs", "10", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("brainlm simulate: error:") and message in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_write_cohort_is_atomic_and_refuses_to_overwrite(tmp_path, small):
    out = tmp_path / "cohort"

    def breaks_midway():
        yield small[0]
        yield small[1]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_cohort(breaks_midway(), out)
    assert list(tmp_path.iterdir()) == []  # neither the cohort nor a partial folder
    write_cohort(small, out)
    with pytest.raises(BrainLMInputError, match="output folder exists"):
        write_cohort(small[:2], out)
    write_cohort(small[:2], out, overwrite=True)
    assert len(pd.read_csv(out / "participants.tsv", sep="\t")) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]


# -- validation against real data ------------------------------------------------------------
@pytest.mark.parametrize("name, minimum", [("schaefer100", 0.65), ("schaefer200", 0.6),
                                           ("aal2", 0.45)])
def test_simulated_group_fc_correlates_with_real_group_fc(name, minimum, young_aal2):
    # AAL2 is out of sample: its coupling is anatomy (DTI), never the FC it is compared with.
    recs = young_aal2 if name == "aal2" else simulate_cohort(CohortSpec(
        10, atlas=name, n_trs=1200, sites=1, seed=11, effects=YOUNG, units="percent"))
    r = np.corrcoef(upper(group_fc(recs)), upper(reference_fc(name)))[0, 1]
    assert r > minimum


def test_spectra_autocorrelation_and_fc_strength_in_the_real_hcp_range(young_aal2, real_stats):
    sim = np.array([bold_stats(r.timeseries, r.tr) for r in young_aal2])
    lo, hi = real_stats.min(axis=0), real_stats.max(axis=0)
    share_in_range = np.mean((sim >= lo) & (sim <= hi), axis=0)
    assert np.all((np.median(sim, axis=0) >= lo) & (np.median(sim, axis=0) <= hi))
    assert share_in_range[0] >= 0.75 and share_in_range[1] >= 0.75  # lag-1 AC, mean FC
    # BOLD power concentrated below 0.1 Hz, as in the real scans.
    assert np.all(sim[:, 2] > 0.5) and np.all(real_stats[:, 2] > 0.5)
    assert share_in_range[2] >= 0.6


def test_spectrum_is_pink_like_real_bold_not_a_single_resonance(young_aal2, hcp):
    def mean_spectrum(recordings):
        spectra = []
        for r in recordings:
            x = detrend(r.timeseries.astype(np.float64), axis=0)
            f, p = welch(x / x.std(axis=0), fs=1.0 / r.tr, nperseg=256, axis=0)
            spectra.append(p.mean(axis=1))
        spectrum = np.mean(spectra, axis=0)[f > 0]
        return f[f > 0], spectrum / spectrum.sum()

    f, sim = mean_spectrum(young_aal2)
    _, real = mean_spectrum(hcp)
    assert f[sim.argmax()] < 0.04 and f[real.argmax()] < 0.04
    slow = (f > 0.01) & (f <= 0.04)
    assert 0.6 < sim[slow].sum() / real[slow].sum() < 1.6
    assert 0.6 < sim[f > 0.1].sum() / real[f > 0.1].sum() < 1.4


# -- phenotypes are recoverable: an FC + ridge baseline finds them ---------------------------
@pytest.fixture(scope="module")
def prediction_cohort():
    recs = simulate_cohort(CohortSpec(80, atlas="schaefer100", n_trs=1200, sites=3, seed=0, units="percent"),
                           jobs=2)
    fcs = np.array([np.corrcoef(detrend(r.timeseries.astype(np.float64), axis=0), rowvar=False)
                    for r in recs])
    table = pd.DataFrame([{**r.phenotypes, "site": r.site, "tr": r.tr} for r in recs])
    return recs, fcs, table


def test_fc_ridge_recovers_age_trait_and_group(prediction_cohort):
    _, fcs, table = prediction_cohort
    x = np.arctanh(np.clip(np.array([upper(f) for f in fcs]), -0.999, 0.999))
    alphas = np.logspace(-1, 5, 25)
    folds = KFold(5, shuffle=True, random_state=0)
    scores = {}
    for name in ("age", "trait", "null_score"):
        y = table[name].to_numpy()
        scores[name] = pearsonr(cross_val_predict(RidgeCV(alphas=alphas), x, y, cv=folds), y)[0]
    group = table["group"].to_numpy()
    decision = cross_val_predict(RidgeClassifierCV(alphas=alphas), x, group,
                                 cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                 method="decision_function")
    assert scores["age"] > 0.65 and scores["trait"] > 0.5
    assert roc_auc_score(group, decision) > 0.8 and np.mean((decision > 0) == group) > 0.7
    assert scores["null_score"] < 0.25  # the negative control carries no signal


def test_effects_act_where_documented(prediction_cohort):
    recs, fcs, table = prediction_cohort
    atlas = recs[0].atlas
    trait_mask, group_mask = effect_masks(atlas)
    z = np.arctanh(np.clip(fcs, -0.999, 0.999))
    mean_fc = z[:, ~np.eye(atlas.n_parcels, dtype=bool)].mean(axis=1)
    within_default = z[:, trait_mask].mean(axis=1) - mean_fc
    limbic = z[:, group_mask].mean(axis=1) - mean_fc
    age, trait, group = table["age"], table["trait"], table["group"].to_numpy()
    # Sites differ in noise and so in FC strength: compare subjects within their site.
    sites = pd.get_dummies(table["site"]).to_numpy(float)
    within_site = mean_fc - sites @ np.linalg.lstsq(sites, mean_fc, rcond=None)[0]
    assert pearsonr(age, within_site)[0] < -0.3                     # age: weaker global coupling
    assert pearsonr(trait, within_default)[0] > 0.4                 # trait: Default network
    effect = (limbic[group == 1].mean() - limbic[group == 0].mean()) / limbic.std()
    assert effect > 0.5                                             # group: limbic coupling
    # Site: the noisiest site (B) has the least autocorrelated signal, the quietest (C) the most.
    ac1 = pd.Series([bold_stats(r.timeseries, r.tr)[0] for r in recs])
    ac1 = ac1.groupby(table["site"]).median()
    assert ac1["C"] > ac1["A"] > ac1["B"]
