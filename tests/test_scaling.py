import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from brainlm.data.contract import PreprocessingContract
from brainlm.data.scaling import QuartileHistogram, pooled_scaling, recording_quartiles


def pooled(recs):
    q = np.stack([recording_quartiles(r) for r in recs])
    h = QuartileHistogram.from_quartiles(q)
    for r in recs:
        h.add(r)
    return h


def test_pooled_quartiles_match_exact_on_real_data(hcp):
    c = PreprocessingContract(percent_signal_change=True)
    recs = [c.clean(r.timeseries, r.tr).data for r in hcp]
    est = pooled(recs).quantiles()
    exact = np.quantile(np.concatenate(recs).astype(np.float64), [0.25, 0.5, 0.75], axis=0)
    iqr = exact[2] - exact[0]
    assert np.abs(est - exact).max() < 1e-3 * iqr.min()


def test_histograms_merge_in_any_order():
    rng = np.random.default_rng(3)
    recs = [rng.standard_normal((300, 8)) * rng.uniform(0.5, 2) for _ in range(6)]
    whole = pooled(recs)
    q = np.stack([recording_quartiles(r) for r in recs])
    a = QuartileHistogram.from_quartiles(q)
    b = QuartileHistogram.from_quartiles(q)
    for r in recs[::-1][:3]:
        a.add(r)
    for r in recs[::-1][3:]:
        b.add(r)
    a.merge(b)
    np.testing.assert_array_equal(a.counts, whole.counts)


def test_missing_parcels_are_ignored():
    rng = np.random.default_rng(4)
    recs = [rng.standard_normal((200, 3)) for _ in range(4)]
    recs[0][:, 1] = np.nan
    est = pooled(recs).quantiles()
    exact = np.nanquantile(np.concatenate(recs), [0.25, 0.5, 0.75], axis=0)
    np.testing.assert_allclose(est, exact, atol=0.02)
    all_missing = pooled([np.full((10, 2), np.nan), np.full((10, 2), np.nan)]).quantiles()
    assert np.isnan(all_missing).all()


@settings(max_examples=40, deadline=None)
@given(n_recs=st.integers(1, 5), n=st.integers(5, 200), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10**6))
def test_pooled_quartiles_property(n_recs, n, scale, seed):
    rng = np.random.default_rng(seed)
    recs = [rng.standard_normal((n, 2)) * scale * rng.uniform(0.2, 5) + rng.normal() * scale
            for _ in range(n_recs)]
    est = pooled(recs).quantiles()
    allx = np.sort(np.concatenate(recs), axis=0)
    exact = np.quantile(allx, [0.25, 0.5, 0.75], axis=0)
    # Never further than the gap between the neighbouring sorted values (plus one bin).
    N = allx.shape[0]
    for k, prob in enumerate([0.25, 0.5, 0.75]):
        lo_i, hi_i = int(np.floor(prob * (N - 1))), int(np.ceil(prob * (N - 1)))
        gap = allx[min(hi_i + 1, N - 1)] - allx[max(lo_i - 1, 0)]
        h = pooled(recs)
        assert np.all(np.abs(est[k] - exact[k]) <= gap + 2 * h.width + 1e-9)


def test_in_memory_pooled_scaling_matches_the_streaming_fit_and_handles_degenerate_parcels(hcp):
    import warnings

    c = PreprocessingContract(percent_signal_change=True)
    recs = [c.clean(r.timeseries, r.tr).data.astype(np.float64) for r in hcp]
    q25, q50, q75 = pooled(recs).quantiles()
    med, iqr, degenerate = pooled_scaling(recs)
    assert not degenerate.any()
    assert np.abs(med - q50).max() < 1e-3 * iqr.min() and np.abs(iqr - (q75 - q25)).max() < 2e-3 * iqr.min()
    # A flat parcel and a parcel missing everywhere are kept centred, never divided by 0.
    for r in recs:
        r[:, 0] = 3.0
        r[:, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy: all-NaN slice
        med, iqr, degenerate = pooled_scaling(recs)
    assert degenerate[:2].all() and not degenerate[2:].any()
    assert (med[0], iqr[0], med[1], iqr[1]) == (3.0, 1.0, 0.0, 1.0)
