"""The user chooses which of upstream BrainLM's input normalizations an imported checkpoint
assumes (``brainlm import-upstream --normalization``).

Every variant of upstream's data-conversion script (``convert_ukbiobank_to_arrow.py``) is checked
against its formula computed here with numpy on the corpus' cleaned recordings: raw, positive
intensities around 1000 (as upstream's parcellated UK Biobank values are), so min-max scaling
means something. Pooled statistics come from the training split only: the held-out recordings
are made more extreme, so statistics over all recordings would differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract, ReferenceContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.recording import Recording
from brainlm.data.scaling import recording_statistics
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import load_pretrained
from brainlm.checkpoints.upstream_import import (NORMALIZATIONS, UPSTREAM_GLOBAL_99TH, UPSTREAM_GLOBAL_STD,
                                           import_upstream, load_upstream)
from brainlm.tasks.calibration import calibrate_input_gain
from brainlm.tasks.embed import embed
from brainlm.tasks.model_input import input_gain, model_scaler, model_windows, preprocess

pytestmark = pytest.mark.usefixtures("one_thread")

PAPER = Path(__file__).parent / "fixtures" / "upstream_brainlm" / "paper_13m_small"


def raw_a424(n: int, trs: int, seed: int = 0) -> list[Recording]:
    """Raw-intensity A424 recordings at UK Biobank's TR (0.735 s): a baseline of 500-1500 per
    parcel, AR(1) fluctuations of a few percent and a slow drift. Subjects 4-7 (val and test
    with the split used here) are scaled up 1.5x, so pooled statistics over every recording
    would not be the training split's."""
    atlas = load_atlas("a424")
    rng = np.random.default_rng(seed)
    base = rng.uniform(500.0, 1500.0, 424)
    recs = []
    for s in range(n):
        e = rng.standard_normal((trs, 424))
        x = np.zeros_like(e)
        for t in range(1, trs):
            x[t] = 0.7 * x[t - 1] + e[t]
        x = base * (1.0 + 0.02 * x) + rng.standard_normal((trs, 1)).cumsum(0) * 2.0
        if s >= 4:
            x *= 1.5
        recs.append(Recording(x.astype(np.float32), 0.735, atlas, subject=f"sub-{s:02d}"))
    return recs


def upstream_formula(name: str, x: np.ndarray, train: list[np.ndarray]) -> np.ndarray:
    """Upstream's column ``name`` of one recording ``x`` (T, P), with min-max statistics over
    the training recordings ``train``, computed directly (float64)."""
    x = x.astype(np.float64)
    pooled = np.concatenate(train).astype(np.float64) if NORMALIZATIONS[name].scaling == "pooled" else None
    if name == "voxelwise-robust":
        q25, med, q75 = np.percentile(pooled, [25, 50, 75], axis=0)
        return (x - med) / (q75 - q25)
    if name == "all-patient-all-voxel":
        return (x - pooled.min()) / (pooled.max() - pooled.min())
    if name == "per-voxel-all-patient":
        return (x - pooled.min(0)) / (pooled.max(0) - pooled.min(0))
    if name == "per-patient-all-voxel":
        return (x - x.min()) / (x.max() - x.min())
    if name == "per-patient-per-voxel":
        return (x - x.min(0)) / (x.max(0) - x.min(0))
    demeaned = x - x.mean(0)
    return {"subtract-mean": demeaned, "subtract-mean-global-std": demeaned / 41.44047,
            "subtract-mean-global-99th": demeaned / 111.13143061224855}[name]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """One corpus per distinct contract among the variants, prepared like the variant's imported
    checkpoint (``prepare --like``), with a training split (subjects 0-3) and val/test (4-7)."""
    root = tmp_path_factory.mktemp("upstream_norm")
    recs = raw_a424(8, 220)
    assignments = {f"{s:02d}": "train" if s < 4 else ("val" if s < 6 else "test") for s in range(8)}
    out, made = {}, {}
    for name in NORMALIZATIONS:
        model, _ = load_upstream(PAPER, normalization=name)
        key = json.dumps({**model.contract.cleaning(), **model.contract.scaling_settings()}, sort_keys=True)
        if key not in made:
            like = ReferenceContract(model.contract, model.atlas, f"paper-{name}")
            made[key] = prepare_corpus(recs, root / f"corpus-{len(made)}",
                                       PrepareSettings.of(like=like, split_assignments=assignments))
        out[name] = (model, made[key])
    return out


def tolerance(name: str, ref: np.ndarray) -> dict:
    """1e-5 relative (of the values' spread) for the exact statistics; robust scaling's pooled
    quartiles come from a histogram (about one bin of 8192, see brainlm.data.scaling)."""
    scale = float(np.abs(ref).max())
    if name == "voxelwise-robust":
        return {"rtol": 0, "atol": 2e-3 * scale}
    return {"rtol": 1e-5, "atol": 1e-5 * scale}


@pytest.mark.parametrize("name", list(NORMALIZATIONS))
def test_every_variant_reads_as_upstreams_formula(corpora, name):
    model, corpus = corpora[name]
    variant = NORMALIZATIONS[name]
    c = corpus.contract
    assert (c.normalization, c.scaling) == (variant.normalization, variant.scaling)  # copied by --like
    assert c.detrend is (name == "voxelwise-robust")
    assert model.contract.scaler_fit["upstream_normalization"] == variant.column
    train = [corpus.read(int(i), scaled=False) for i in corpus.split_indices("train")]
    scaler = model_scaler(model, corpus)
    raw = raw_a424(8, 220)
    for i in range(len(corpus)):
        cleaned = corpus.read(i, scaled=False)
        if name != "voxelwise-robust":
            # Upstream normalized raw intensities: no cleaning but the (here: no-op) resampling.
            subject = int(str(corpus.manifest["subject"].iat[i])[-2:])
            np.testing.assert_array_equal(cleaned, raw[subject].timeseries)
        ref = upstream_formula(name, cleaned, train)
        got = corpus.read(i, scaler=scaler)
        np.testing.assert_allclose(got, ref, **tolerance(name, ref))
        # A window reads as the same numbers as in the whole recording (whole-recording statistics).
        np.testing.assert_allclose(corpus.read(i, 17, 61, scaler=scaler), got[17:61], rtol=1e-6, atol=1e-6)
        windows, _ = model_windows(model, got)
        np.testing.assert_array_equal(windows[0].numpy(), got[:200])
    if variant.scaling == "pooled" and name != "voxelwise-robust":
        # Statistics over all recordings would not be the training split's.
        every = [corpus.read(i, scaled=False) for i in range(len(corpus))]
        assert not np.allclose(upstream_formula(name, train[0], every), upstream_formula(name, train[0], train))


def test_per_recording_statistics_follow_the_normalization_and_are_cached(corpora):
    _, corpus = corpora["per-patient-per-voxel"]
    x = corpus.read(0, scaled=False)
    for norm in ("robust", "minmax", "minmax-global", "demean"):
        stored = corpus.recording_statistics(0, norm)
        computed = recording_statistics(x, norm)
        for a, b in zip(stored, computed):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        assert corpus.recording_statistics(0, norm) is stored  # cached by (index, normalization)
    lo, span = corpus.recording_statistics(0)  # the corpus' own: minmax
    np.testing.assert_allclose(lo, x.min(0))
    np.testing.assert_allclose(span, np.ptp(x, axis=0), rtol=1e-6)
    glo, gspan = corpus.recording_statistics(0, "minmax-global")
    assert np.all(glo == x.min()) and np.allclose(gspan, np.ptp(x), rtol=1e-6)


@pytest.mark.parametrize("name", ["per-patient-per-voxel", "subtract-mean-global-std"])
def test_input_gain_and_offset_apply_to_per_recording_variants(corpora, name):
    model, corpus = corpora[name]
    variant = NORMALIZATIONS[name]
    assert input_gain(model) == (pytest.approx(variant.gain), 0.0)
    plain = corpus.read(1, scaler=model_scaler(model, corpus))
    base = upstream_formula(name, corpus.read(1, scaled=False), [])
    model.contract.scaler_fit = {**model.contract.scaler_fit, "input_gain": 7.0 * variant.gain, "input_offset": 0.5}
    try:
        scaler = model_scaler(model, corpus)
        assert scaler.per_recording and (scaler.gain, scaler.offset) == (7.0 * variant.gain, 0.5)
        gained = corpus.read(1, scaler=scaler)
        np.testing.assert_allclose(gained, 7.0 * plain + 0.5, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gained, 7.0 * base + 0.5, rtol=1e-5, atol=1e-4)
        # The same input from a raw recording (preprocess: the checkpoint's own contract).
        rec = raw_a424(8, 220)[1]
        np.testing.assert_allclose(preprocess(model, rec), 7.0 * upstream_formula(name, rec.timeseries, []) + 0.5,
                                   rtol=1e-5, atol=1e-4)
    finally:
        model.contract.scaler_fit = {**model.contract.scaler_fit, "input_gain": variant.gain, "input_offset": 0.0}


def test_calibration_grid_is_relative_to_the_variant_gain(corpora):
    model, corpus = corpora["subtract-mean-global-std"]
    result = calibrate_input_gain(model, corpus, gains=(0.5, 1.0, 2.0), recordings=1, refine=False)
    assert result["variant_gain"] == pytest.approx(1 / UPSTREAM_GLOBAL_STD)
    assert result["input_gain"] == pytest.approx(result["variant_gain"] * result["calibrated_gain"])
    assert result["calibrated_gain"] in (0.5, 1.0, 2.0) and result["scaling"] == "recording"
    # Errors are in the variant's units: predicting 0 scores about the mean square of upstream's
    # column (over the masked three quarters of the window).
    row = result["recordings"][0]
    ref = upstream_formula("subtract-mean-global-std", corpus.read(row, scaled=False), [])[:200]
    assert 0.8 < result["zero_mse"] / float((ref ** 2).mean()) < 1.25 and np.isfinite(result["gain_1_mse"])


def test_a_corpus_with_another_normalization_is_refused_in_one_line(corpora):
    model, _ = corpora["per-patient-per-voxel"]
    _, other = corpora["per-patient-all-voxel"]  # the same cleaning, one min-max over all parcels
    with pytest.raises(BrainLMInputError) as e:
        model_scaler(model, other)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and other.path in msg
    assert "'normalization'" in msg and "'minmax-global'" in msg and "'minmax'" in msg and "--like CKPT" in msg
    # Another cleaning is named first (the robust corpus is detrended, the variant's is not).
    _, robust = corpora["voxelwise-robust"]
    with pytest.raises(BrainLMInputError, match="detrend"):
        model_scaler(model, robust)


@pytest.mark.parametrize("name", ["all-patient-all-voxel", "per-voxel-all-patient"])
def test_pooled_min_max_refitted_from_the_stored_recordings_matches(corpora, name):
    # A build resumed from before each recording recorded its extrema reads the training
    # recordings again: the statistics must be the ones fitted from the recorded extrema.
    from brainlm.data.scaler_fit import fit_pooled_statistics

    _, corpus = corpora[name]
    train = corpus.manifest.iloc[corpus.split_indices("train")]
    refit = fit_pooled_statistics(Path(corpus.path), train, None, corpus.atlas, corpus.contract, 1, train_extrema={})
    np.testing.assert_allclose(refit.median, corpus.contract.median, rtol=1e-6)
    np.testing.assert_allclose(refit.iqr, corpus.contract.iqr, rtol=1e-6)
    assert refit.scaler_fit["recordings"] == 4


def test_pooled_demeaning_and_unknown_names_are_refused():
    with pytest.raises(BrainLMInputError, match="needs scaling 'recording'"):
        PreprocessingContract(normalization="demean")
    with pytest.raises(BrainLMInputError, match="expected one of"):
        PreprocessingContract(normalization="zscore")
    with pytest.raises(BrainLMInputError, match="subtract-mean-global-std"):
        load_upstream(PAPER, normalization="per-patient")
    old = PreprocessingContract(target_tr=0.735).to_dict()
    for k in ("normalization", "gain", "offset"):
        old.pop(k)
    assert PreprocessingContract.from_dict(old).normalization == "robust"  # stored contracts load


def test_constant_parcels_are_left_unscaled():
    x = np.random.default_rng(0).uniform(900, 1100, (50, 3)).astype(np.float32)
    x[:, 1] = 1000.0
    lo, span = recording_statistics(x, "minmax")
    assert span[1] == 1.0 and lo[1] == 1000.0 and span[0] == pytest.approx(np.ptp(x[:, 0]))
    out = PreprocessingContract(scaling="recording", normalization="minmax").scale(x)
    assert np.all(out[:, 1] == 0.0) and out[:, 0].min() == 0.0 and out[:, 0].max() == pytest.approx(1.0)


def test_import_command_writes_the_variant_and_prints_it(tmp_path, capsys):
    assert main(["import-upstream", str(PAPER), "--out", str(tmp_path / "std"),
                 "--normalization", "subtract-mean-global-std", "--input-gain", "2"]) == 0
    out = capsys.readouterr().out
    assert "normalization subtract-mean-global-std" in out
    assert "Subtract_Mean_Divide_Global_STD_Normalized_Recording" in out and "no detrend" in out
    c = json.loads((tmp_path / "std" / "contract.json").read_text())
    assert (c["normalization"], c["scaling"], c["detrend"], c["target_tr"]) == ("demean", "recording", False, 0.735)
    fit = c["scaler_fit"]
    assert fit["upstream_normalization"] == "Subtract_Mean_Divide_Global_STD_Normalized_Recording"
    assert fit["input_gain"] == pytest.approx(2.0 / UPSTREAM_GLOBAL_STD)
    assert fit["variant_gain"] == pytest.approx(1.0 / UPSTREAM_GLOBAL_STD)
    assert json.loads((tmp_path / "std" / "upstream_import.json").read_text())["normalization"] == \
        "subtract-mean-global-std"
    # The default keeps the contract brainlm wrote before the choice existed.
    assert main(["import-upstream", str(PAPER), "--out", str(tmp_path / "default")]) == 0
    assert "normalization voxelwise-robust" in capsys.readouterr().out
    d = load_pretrained(tmp_path / "default").contract
    assert (d.normalization, d.scaling, d.detrend, d.target_tr, d.median) == ("robust", "pooled", True, 0.735, None)
    assert d.scaler_fit["input_gain"] == 1.0 and d.scaler_fit["applied"] == (
        "the corpus' own per-parcel robust scaling (training split)")
    assert NORMALIZATIONS["subtract-mean-global-99th"].gain == pytest.approx(1 / UPSTREAM_GLOBAL_99TH)


def test_embed_runs_end_to_end_on_a_per_recording_variant(corpora, tmp_path):
    _, corpus = corpora["per-patient-per-voxel"]
    ckpt = tmp_path / "ppv"
    import_upstream(PAPER, ckpt, normalization="per-patient-per-voxel")
    df = embed(ckpt, [corpus.path])
    cols = [c for c in df.columns if c.startswith(("cls_", "mean_"))]
    assert len(df) == 8 and np.isfinite(df[cols].to_numpy()).all() and df[cols].to_numpy().std() > 0
    again = embed(ckpt, [corpus.path])
    assert np.array_equal(df[cols].to_numpy(), again[cols].to_numpy())
