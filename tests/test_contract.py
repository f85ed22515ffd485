import json

import numpy as np
import pandas as pd
import pytest

from brainlm import BrainLMInputError
from brainlm.data.contract import PreprocessingContract


def sines(tr, n, freqs, p=3, phase=0.3):
    t = np.arange(n) * tr
    return np.stack([sum(np.sin(2 * np.pi * f * t + phase * (j + 1)) for f in freqs) for j in range(p)], axis=1)


def test_robust_scaling_formula_is_x_minus_median_over_iqr():
    c = PreprocessingContract(median=[1.0, -2.0], iqr=[4.0, 0.5])
    x = np.array([[5.0, -2.0], [1.0, -1.0], [np.nan, 0.0]], dtype=np.float32)
    out = c.scale(x.copy())
    expected = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 4.0]])  # NaN (missing parcel) -> 0
    np.testing.assert_allclose(out, expected)
    # The upstream bug computed x - median / iqr; that would give 4.75 for the first value.
    assert out[0, 0] != pytest.approx(5.0 - 1.0 / 4.0)


def test_drop_detrend_and_lengths(hcp):
    rec = hcp[0]
    c = PreprocessingContract(drop_initial_trs=10)
    out = c.clean(rec.timeseries, rec.tr)
    assert out.data.shape == (1190, 94) and out.data.dtype == np.float32 and out.bad_parcels == []
    # Linear detrend: no mean and no slope left in any parcel.
    t = np.arange(1190)
    slope = np.polyfit(t, out.data.astype(np.float64), 1)[0]
    assert np.abs(out.data.mean(axis=0)).max() < 1e-2 * out.data.std()
    assert np.abs(slope).max() * 1190 < 1e-2 * out.data.std()
    assert c.output_length(1200, 0.72) == 1190


@pytest.mark.parametrize("tr_in,tr_out", [(0.735, 0.72), (2.0, 0.72), (0.72, 1.44)])
def test_resampling_keeps_slow_signal(tr_in, tr_out):
    n = 600
    x = sines(tr_in, n, [0.02, 0.05])
    c = PreprocessingContract(target_tr=tr_out, detrend=False)
    out = c.clean(x, tr_in)
    m = out.data.shape[0]
    assert m == c.output_length(n, tr_in)
    assert m == pytest.approx(n * tr_in / tr_out, abs=1)
    truth = sines(tr_out, m, [0.02, 0.05])
    core = slice(m // 10, -m // 10)  # away from the edges
    r = np.corrcoef(out.data[core, 0], truth[core, 0])[0, 1]
    assert r > 0.999 and out.tr == tr_out


def test_downsampling_removes_frequencies_above_the_new_nyquist():
    x = sines(0.72, 1000, [0.6])  # 0.6 Hz: fine at TR 0.72 (Nyquist 0.69), aliases at TR 1.44
    out = PreprocessingContract(target_tr=1.44, detrend=False).clean(x, 0.72)
    assert out.data[50:-50].std() < 0.05 * x.std()


def test_band_pass_and_confound_regression():
    rng = np.random.default_rng(1)
    slow = sines(0.72, 800, [0.03])
    fast = sines(0.72, 800, [0.3])
    conf = rng.standard_normal((800, 2))
    x = slow + fast + 3 * conf[:, [0]]
    c = PreprocessingContract(low_pass_hz=0.1, confounds=["motion"])
    out = c.clean(x, 0.72, confounds=pd.DataFrame({"motion": conf[:, 0]}))
    core = slice(100, -100)
    assert np.corrcoef(out.data[core, 0], slow[core, 0])[0, 1] > 0.97
    assert abs(np.corrcoef(out.data[core, 0], conf[core, 0])[0, 1]) < 0.1
    with pytest.raises(BrainLMInputError, match="missing"):
        c.clean(x, 0.72, confounds=pd.DataFrame({"other": conf[:, 0]}))
    with pytest.raises(BrainLMInputError, match="has none"):
        c.clean(x, 0.72)
    with pytest.raises(BrainLMInputError, match="Nyquist"):
        PreprocessingContract(low_pass_hz=0.3).clean(x, 2.0)


def test_bad_parcel_policies(hcp):
    x = hcp[0].timeseries.astype(np.float64).copy()
    names = hcp[0].atlas.parcel_names
    x[:, 5] = np.nan
    x[:, 9] = 3.0
    with pytest.raises(BrainLMInputError, match=rf"f.npy: NaN/Inf.*'{names[5]}'.*constant.*'{names[9]}'.*--bad-parcels zero"):
        PreprocessingContract().clean(x, 0.72, parcel_names=names, source="f.npy")
    out = PreprocessingContract(bad_parcels="zero", target_tr=1.0).clean(x, 0.72, parcel_names=names)
    assert out.bad_parcels == [5, 9]
    assert np.isnan(out.data[:, [5, 9]]).all() and np.isfinite(np.delete(out.data, [5, 9], axis=1)).all()
    scaled = PreprocessingContract(median=[0.0] * 94, iqr=[1.0] * 94).scale(out.data)
    assert (scaled[:, [5, 9]] == 0).all()


def test_percent_signal_change(hcp):
    x = hcp[1].timeseries
    out = PreprocessingContract(percent_signal_change=True, detrend=False).clean(x, 0.72)
    expected = 100 * (x / x.mean(axis=0) - 1)
    np.testing.assert_allclose(out.data, expected, atol=1e-3)
    with pytest.raises(BrainLMInputError, match="already demeaned"):
        PreprocessingContract(percent_signal_change=True).clean(x - x.mean(axis=0), 0.72, source="z.npy")


def test_contract_json_round_trip_and_validation(tmp_path):
    c = PreprocessingContract(target_tr=0.72, drop_initial_trs=5, high_pass_hz=0.01, median=[0.5, 1.0],
                              iqr=[2.0, 3.0], scaler_fit={"split": "train"})
    c.save(tmp_path / "contract.json")
    d = PreprocessingContract.load(tmp_path / "contract.json")
    assert d == c
    assert [p.name for p in tmp_path.iterdir()] == ["contract.json"]  # no temporary left behind
    with pytest.raises(BrainLMInputError, match="unknown field"):
        PreprocessingContract.from_dict({**c.to_dict(), "zscore": True})
    (tmp_path / "bad.json").write_text(json.dumps({**c.to_dict(), "version": 99}))
    with pytest.raises(BrainLMInputError, match="bad.json: contract version 99"):
        PreprocessingContract.load(tmp_path / "bad.json")
    for kw, msg in [({"target_tr": 0}, "target_tr"), ({"drop_initial_trs": -1}, "drop_initial_trs"),
                    ({"bad_parcels": "drop"}, "bad_parcels"),
                    ({"high_pass_hz": 0.1, "low_pass_hz": 0.05}, "empty")]:
        with pytest.raises(BrainLMInputError, match=msg):
            PreprocessingContract(**kw)
    with pytest.raises(BrainLMInputError, match="no scaling statistics"):
        PreprocessingContract().scale(np.zeros((3, 2)))
