"""The phases of ``prepare_corpus`` on their own, and the settings object that drives them.

Each phase is a function of plain inputs (specs, quartiles, a build folder), so it is tested
here without a whole build: the split of the embedded HCP subjects, the scale-outlier screen on
their real per-parcel quartiles, and the pooled scaler fit on a small chunked store.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract, ReferenceContract
from brainlm.data.prepare import resolve_settings, split_recordings
from brainlm.data.prepare_settings import (CleaningSettings, ExecutionSettings, PrepareSettings, ReadingSettings,
                                           SplitSettings, StoreLayout)
from brainlm.data.scale_outliers import ScaleOutlierWarning, screen_scale_outliers
from brainlm.data.scaler_fit import fit_pooled_statistics
from brainlm.data.scaling import QuartileRange, recording_extrema, recording_quartiles
from brainlm.data.sources import specs_from_recordings
from brainlm.data.splits import assign_splits
from brainlm.errors import BrainLMInputError


# -- split ---------------------------------------------------------------------------------
def test_split_keys_subjects_by_site_and_follows_the_seed(hcp):
    specs = specs_from_recordings(hcp)
    plan = split_recordings(specs, SplitSettings(split_seed=3), (0.6, 0.2, 0.2))
    # The 7 HCP subjects all carry site HCP: the split unit is SITE/SUBJECT.
    assert plan.groups == [f"HCP/{r.subject}" for r in hcp]
    assert plan.split_of == assign_splits(plan.groups, (0.6, 0.2, 0.2), seed=3)
    counts = pd.Series(list(plan.split_of.values())).value_counts().to_dict()
    assert sum(counts.values()) == 7 and counts["train"] >= 4 and counts.get("val", 0) >= 1
    assert plan.fractions == (0.6, 0.2, 0.2) and not plan.assigned
    by_id = plan.split_of_id(specs)
    assert list(by_id) == [s.recording_id for s in specs]
    assert [by_id[s.recording_id] for s in specs] == [plan.split_of[g] for g in plan.groups]
    other = split_recordings(specs, SplitSettings(split_seed=4), (0.6, 0.2, 0.2))
    # Another seed is another draw of the same sizes.
    assert sorted(other.split_of.values()) == sorted(plan.split_of.values())


def test_explicit_assignments_give_the_recorded_fractions(hcp):
    specs = specs_from_recordings(hcp)
    assigned = {f"HCP/{r.subject}": "train" if i < 4 else "val" if i == 4 else "test" for i, r in enumerate(hcp)}
    plan = split_recordings(specs, SplitSettings(split_assignments=assigned), (0.8, 0.1, 0.1))
    assert plan.split_of == assigned and plan.assigned
    assert plan.fractions == [4 / 7, 1 / 7, 2 / 7]
    with pytest.raises(BrainLMInputError, match="split assignments lack 1 subject"):
        split_recordings(specs, SplitSettings(split_assignments=dict(list(assigned.items())[1:])), (1, 0, 0))


# -- outliers ------------------------------------------------------------------------------
def _quartiles(hcp, factors: dict[int, float]) -> dict[str, np.ndarray]:
    """Per-parcel quartiles (3, P) of the first 400 TRs of each HCP recording, recording ``i``
    multiplied by ``factors[i]`` (another unit)."""
    out = {}
    for i, r in enumerate(hcp):
        x = np.asarray(r.timeseries[:400], dtype=np.float64) * factors.get(i, 1.0)
        out[f"rec{i}"] = recording_quartiles(x).astype(np.float32)
    return out


def test_a_training_recording_in_other_units_is_left_out_of_the_range(hcp):
    quartiles = _quartiles(hcp, {2: 1000.0})
    train = {k: quartiles[k] for k in ("rec0", "rec1", "rec2", "rec3", "rec4")}
    held = {k: quartiles[k] for k in ("rec5", "rec6")}
    records = [{"recording_id": k, "source": f"{k}.npy"} for k in quartiles]
    with pytest.warns(ScaleOutlierWarning, match="1 training recording"):
        screened = screen_scale_outliers(records, train, held, False, skip_held_out=False, fitted_here=True,
                                         pooled=True, split_of_id={k: "train" for k in quartiles})
    assert list(screened.outliers) == ["rec2"]
    # The ratio to the cohort's median IQR per parcel (rec2 included), at the median over parcels.
    iqr = np.stack([q[2] - q[0] for q in train.values()]).astype(np.float64)
    ratio = np.median(iqr[2] / np.median(iqr, axis=0))
    assert 100 < ratio < 1000
    assert screened.outliers["rec2"] == f"its IQRs are {ratio:.3g} times the cohort's (median over parcels)"
    assert screened.outlier_records == [{"recording_id": "rec2", "reason": screened.outliers["rec2"],
                                         "action": "excluded from the scaling fit"}]
    assert [r["recording_id"] for r in screened.records] == list(quartiles) and screened.dropped == []
    # The histogram range spans the other training recordings' quartiles only.
    kept = np.stack([train[k] for k in ("rec0", "rec1", "rec3", "rec4")]).astype(np.float64)
    np.testing.assert_array_equal(screened.train_range.lo, kept[:, 0].min(axis=0))
    np.testing.assert_array_equal(screened.train_range.hi, kept[:, 2].max(axis=0))


def test_a_test_recording_in_other_units_is_an_error_or_skipped(hcp):
    quartiles = _quartiles(hcp, {6: 0.001})
    train = {k: quartiles[k] for k in ("rec0", "rec1", "rec2", "rec3", "rec4")}
    held = {k: quartiles[k] for k in ("rec5", "rec6")}
    records = [{"recording_id": k, "source": f"{k}.npy"} for k in quartiles]
    split_of_id = {**{k: "train" for k in train}, "rec5": "val", "rec6": "test"}
    with pytest.raises(BrainLMInputError, match="rec6.npy: a test recording on another scale") as err:
        screen_scale_outliers(records, train, held, False, skip_held_out=False, fitted_here=True, pooled=True,
                              split_of_id=split_of_id)
    assert "--drop-scale-outliers" in str(err.value)
    with pytest.warns(ScaleOutlierWarning, match="validation/test recording"):
        screened = screen_scale_outliers(records, train, held, False, skip_held_out=True, fitted_here=True,
                                         pooled=True, split_of_id=split_of_id)
    assert screened.outliers == {}
    assert [r["recording_id"] for r in screened.dropped] == ["rec6"]
    assert screened.dropped[0]["reason"].endswith("(--on-error skip)")
    assert "rec6" not in [r["recording_id"] for r in screened.records]
    # Per-recording scaling does not depend on units: nothing to screen among held-out ones.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_recording = screen_scale_outliers(records, train, held, False, skip_held_out=False, fitted_here=True,
                                              pooled=False, split_of_id=split_of_id)
    assert per_recording.dropped == [] and len(per_recording.records) == 7


# -- scaler fit ----------------------------------------------------------------------------
@pytest.fixture
def small_build(tmp_path, hcp):
    """A build folder holding 3 HCP recordings (300 TRs each) in its chunked store."""
    import zarr

    group = zarr.open_group(tmp_path / "timeseries.zarr", mode="w")
    arrays = {}
    for i, r in enumerate(hcp[:3]):
        x = np.asarray(r.timeseries[300 * i:300 * (i + 1)], dtype=np.float32)
        group.create_array(f"rec{i}", shape=x.shape, dtype="float32", chunks=x.shape)[:] = x
        arrays[f"rec{i}"] = x
    train = pd.DataFrame({"recording_id": list(arrays), "n_trs": [300] * 3})
    return tmp_path, train, arrays


def test_pooled_robust_fit_matches_the_exact_quartiles(small_build):
    build, train, arrays = small_build
    bounds = QuartileRange()
    for x in arrays.values():
        bounds.add(recording_quartiles(x))
    fitted = fit_pooled_statistics(build, train, bounds, load_atlas("aal2"), PreprocessingContract(), 1)
    q25, med, q75 = np.quantile(np.concatenate(list(arrays.values())).astype(np.float64), [0.25, 0.5, 0.75], axis=0)
    # The histogram pins the pooled quartiles to within one of its 8192 bins.
    bin_width = (bounds.hi - bounds.lo) / 8192
    assert np.all(np.abs(np.asarray(fitted.median) - med) <= bin_width)
    assert np.all(np.abs(np.asarray(fitted.iqr) - (q75 - q25)) <= 2 * bin_width)
    assert fitted.scaler_fit["recordings"] == 3 and fitted.scaler_fit["timepoints"] == 900
    assert fitted.scaler_fit["degenerate_parcels"] == []


def test_pooled_minmax_fit_is_exact_from_extrema(small_build):
    build, train, arrays = small_build
    contract = PreprocessingContract(normalization="minmax")
    pooled = np.concatenate(list(arrays.values())).astype(np.float64)
    extrema = {k: recording_extrema(x) for k, x in arrays.items()}
    fitted = fit_pooled_statistics(build, train, QuartileRange(), load_atlas("aal2"), contract, 1, extrema)
    np.testing.assert_array_equal(fitted.median, pooled.min(axis=0))
    np.testing.assert_array_equal(fitted.iqr, pooled.max(axis=0) - pooled.min(axis=0))
    # Without the recorded extrema the recordings are read again from the store: same numbers.
    again = fit_pooled_statistics(build, train, QuartileRange(), load_atlas("aal2"), contract, 1, {})
    assert again.median == fitted.median and again.iqr == fitted.iqr


# -- settings ------------------------------------------------------------------------------
def test_of_routes_every_flat_keyword_to_its_part():
    atlas = load_atlas("aal2")
    s = PrepareSettings.of(atlas=atlas, tr=0.72, min_trs=100, too_short="error", fractions=(0.5, 0.25, 0.25),
                           split_seed=4, jobs=2, layout=StoreLayout(chunk_trs=64), progress=True)
    assert s.reading == ReadingSettings(atlas=atlas, tr=0.72)
    assert s.cleaning == CleaningSettings(min_trs=100, too_short="error")
    assert s.splits == SplitSettings(fractions=(0.5, 0.25, 0.25), split_seed=4)
    assert s.execution == ExecutionSettings(jobs=2, layout=StoreLayout(chunk_trs=64), progress=True)
    assert s.like is None and PrepareSettings.of(**s.flat()) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.reading.tr = 2.0


def test_of_rejects_an_unknown_keyword_naming_it():
    with pytest.raises(BrainLMInputError, match=r"unknown prepare setting\(s\) \['atlass'\] \(did you mean atlas"):
        PrepareSettings.of(atlass=None, jobs=2)


@pytest.mark.parametrize(("keywords", "message"), [
    ({"orientation": "sideways"}, "option 'orientation' is 'sideways'; expected one of"),
    ({"too_short": "drop"}, "option 'too_short' is 'drop'"),
    ({"on_error": "ignore"}, "option 'on_error' is 'ignore'"),
    ({"split_by": "session"}, "option 'split_by' is 'session'"),
    ({"layout": StoreLayout(compression="gzip")}, "option 'compression' is 'gzip'"),
    ({"min_trs": 0}, "min_trs and chunk_trs must be positive integers"),
    ({"layout": StoreLayout(chunk_trs=0)}, "min_trs and chunk_trs must be positive integers"),
    ({"jobs": 0}, r"jobs=0 \(--jobs\); expected a positive number of worker processes"),
    ({"jobs": True}, "jobs=True"),
    ({"read_volumes": 0}, "read_volumes is 0; expected a positive integer"),
])
def test_a_bad_field_fails_at_construction_naming_it(keywords, message):
    with pytest.raises(BrainLMInputError, match=message):
        PrepareSettings.of(**keywords)


def test_a_part_of_the_wrong_type_is_named():
    with pytest.raises(BrainLMInputError, match="field 'cleaning' of PrepareSettings is a dict; expected a "
                                                "CleaningSettings"):
        PrepareSettings(cleaning={"min_trs": 100})


def test_resolve_takes_contract_atlas_and_fractions_from_the_checkpoint(hcp_corpus):
    like = ReferenceContract(contract=hcp_corpus.contract, atlas=hcp_corpus.atlas, name="ref")
    resolved = resolve_settings(PrepareSettings(like=like))
    assert resolved.atlas is hcp_corpus.atlas and tuple(resolved.fractions) == (0.0, 0.0, 1.0)
    assert resolved.contract.cleaning() == hcp_corpus.contract.cleaning()
    plain = resolve_settings(PrepareSettings())
    assert plain.atlas is None and plain.fractions == (0.8, 0.1, 0.1)
    assert plain.contract.to_dict() == PreprocessingContract().to_dict()
    with pytest.raises(BrainLMInputError, match="the cleaning settings come from the checkpoint"):
        resolve_settings(PrepareSettings.of(like=like, contract=PreprocessingContract(detrend=False)))


def test_the_cli_builds_the_settings_in_one_place():
    from brainlm.commands import build_parser
    from brainlm.commands.prepare import settings_from_args

    args = build_parser().parse_args(["prepare", "data/", "--out", "c", "--atlas", "aal2", "--splits", "0.5,0.25,0.25",
                                      "--seed", "2", "--jobs", "2", "--chunk-trs", "128", "--compression", "zstd",
                                      "--min-trs", "150", "--psc", "--quiet", "--tr", "0.72"])
    s = settings_from_args(args)
    assert s.reading.atlas.name == "aal2" and s.reading.tr == 0.72
    assert s.cleaning.min_trs == 150 and s.cleaning.contract.percent_signal_change
    assert tuple(s.splits.fractions) == (0.5, 0.25, 0.25) and s.splits.split_seed == 2
    assert s.execution == ExecutionSettings(jobs=2, layout=StoreLayout(chunk_trs=128, compression="zstd"),
                                            progress=False)
    bad = build_parser().parse_args(["prepare", "data/", "--out", "c", "--atlas", "aal2", "--jobs", "0"])
    with pytest.raises(BrainLMInputError, match="jobs=0"):
        settings_from_args(bad)
