"""`brainlm prepare` and `brainlm info` end to end on real HCP data written as BIDS-like files."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import load_schaefer100_rest
from conftest import write_hcp_folder


def run_cli(*args):
    return main([str(a) for a in args])


def test_prepare_and_info_on_a_bids_folder(hcp_folder, tmp_path, capsys, hcp):
    out = tmp_path / "corpus"
    assert run_cli("prepare", hcp_folder, "--out", out, "--atlas", "aal2", "--psc", "--quiet") == 0
    corpus = Corpus(out)
    m = corpus.manifest
    assert len(m) == 14 and m["subject"].nunique() == 7
    assert set(m["n_trs"]) == {600} and set(m["tr"]) == {0.72}
    # Subject-level splits: every subject's runs are in one split.
    assert (m.groupby("subject")["split"].nunique() == 1).all()
    assert m.drop_duplicates("subject")["split"].value_counts().to_dict() == {"train": 5, "val": 1, "test": 1}
    # Phenotypes joined from participants.tsv; 'n/a' is missing.
    parts = pd.read_csv(hcp_folder / "participants.tsv", sep="\t")
    ages = dict(zip(parts["participant_id"].str[4:], parts["age"]))
    assert all(m["age"] == m["subject"].map(ages))
    assert m["score"].isna().sum() == 2 and set(m["sex"]) == {"F", "M"}
    assert corpus.phenotype_columns == ["age", "sex", "score"]
    # No half-written leftovers.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bids", "corpus"]

    # Scaling statistics are the pooled quartiles of the training split only.
    train = m[m["split"] == "train"]
    data = np.concatenate([corpus.read(i, scaled=False) for i in train.index]).astype(np.float64)
    q25, med, q75 = np.quantile(data, [0.25, 0.5, 0.75], axis=0)
    np.testing.assert_allclose(corpus.contract.median, med, atol=2e-3 * (q75 - q25).min())
    np.testing.assert_allclose(corpus.contract.iqr, q75 - q25, rtol=2e-3)
    scaled = np.concatenate([corpus.read(i) for i in train.index])
    assert np.abs(np.median(scaled, axis=0)).max() < 0.01
    assert corpus.contract.scaler_fit["recordings"] == 10

    # The corpus is exactly what the contract does to a raw recording (model.preprocess later).
    row = m.index[(m["subject"] == hcp[0].subject) & (m["run"] == "1")][0]
    first_half = hcp[0].timeseries[:600]
    expected = corpus.contract.scale(corpus.contract.clean(first_half, 0.72).data)
    np.testing.assert_allclose(corpus.read(row), expected, atol=1e-4)

    capsys.readouterr()
    assert run_cli("info", out) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert "14 recordings, 7 subjects" in text and "train" in text and "age" in text
    assert run_cli("info", out, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["train"] == {"recordings": 10, "subjects": 5, "hours": 1.2}


def test_parallel_equals_serial(hcp_folder, tmp_path):
    a = prepare_corpus([hcp_folder], tmp_path / "a", PrepareSettings.of(atlas=load_atlas("aal2"), jobs=1))
    b = prepare_corpus([hcp_folder], tmp_path / "b", PrepareSettings.of(atlas=load_atlas("aal2"), jobs=2))
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    assert a.contract == b.contract
    for i in range(len(a)):
        np.testing.assert_array_equal(a.read(i), b.read(i))


def test_resume_after_failure_is_atomic(hcp_folder, tmp_path, capsys):
    out = tmp_path / "corpus"
    bad = hcp_folder / "sub-zzz" / "func" / "sub-zzz_task-rest_run-1_bold.npy"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x93NUMPY garbage")
    (bad.with_suffix(".json")).write_text(json.dumps({"RepetitionTime": 0.72}))
    args = ["prepare", hcp_folder, "--out", out, "--atlas", "aal2", "--allow-missing-phenotypes", "--quiet"]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "sub-zzz_task-rest_run-1_bold.npy" in err and "Traceback" not in err
    assert not out.exists()  # nothing that looks like a corpus
    partial = tmp_path / "corpus.partial"
    with pytest.raises(BrainLMInputError, match="corpus.partial is an unfinished `brainlm prepare`: re-run it to resume"):
        Corpus(out)
    done_before = {p.name: p.stat().st_mtime_ns for p in (partial / "done").iterdir()}
    assert done_before  # work finished before the failure is kept

    # Different settings cannot silently mix with the unfinished build.
    assert run_cli(*args, "--psc") == 2
    assert "different settings" in capsys.readouterr().err

    bad.unlink()
    assert run_cli(*args) == 0
    assert not partial.exists()
    assert len(Corpus(out)) == 14
    assert run_cli(*args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(*args, "--overwrite", "--psc") == 0
    assert Corpus(out).contract.percent_signal_change


def test_skipping_bad_and_short_recordings(hcp, tmp_path):
    root = write_hcp_folder(tmp_path / "bids", hcp[:4])
    short = root / "sub-short" / "func"
    short.mkdir(parents=True)
    np.save(short / "sub-short_task-rest_bold.npy", hcp[4].timeseries[:150])
    np.save(short / "sub-short_task-rest_run-9_bold.npy", np.ones((10, 7)))  # wrong parcel count
    c = prepare_corpus([root], tmp_path / "c",
                       PrepareSettings.of(atlas=load_atlas("aal2"), tr=0.72, on_error="skip",
                                          allow_missing_phenotypes=True))
    assert len(c) == 8
    reasons = dict(zip(c.skipped["recording_id"], c.skipped["reason"]))
    assert "too short: 150 TRs" in reasons["sub-short_task-rest"]
    assert "94" in reasons["sub-short_task-rest_run-9"]
    assert c.summary()["skipped"] == 2
    with pytest.raises(BrainLMInputError, match="too short"):
        prepare_corpus([root], tmp_path / "d",
                       PrepareSettings.of(atlas=load_atlas("aal2"), tr=0.72, on_error="skip",
                                          allow_missing_phenotypes=True, too_short="error", restart=True))


def test_bad_parcels_zero_policy(hcp, tmp_path):
    x = hcp[0].timeseries.copy()
    x[:, 3] = np.nan
    x[:, 4] = 1.0
    root = tmp_path / "in"
    root.mkdir()
    for i, rec in enumerate(hcp[:3]):
        np.save(root / f"sub-{rec.subject}_bold.npy", x if i == 0 else rec.timeseries)
    with pytest.raises(BrainLMInputError, match=rf"sub-{hcp[0].subject}_bold.npy: NaN/Inf"):
        prepare_corpus([root], tmp_path / "c", PrepareSettings.of(atlas=load_atlas("aal2"), tr=0.72))
    c = prepare_corpus([root], tmp_path / "c",
                       PrepareSettings.of(atlas=load_atlas("aal2"), tr=0.72, restart=True,
                                          contract=PreprocessingContract(bad_parcels="zero"), fractions=(1, 0, 0)))
    row = c.manifest.index[c.manifest["subject"] == hcp[0].subject][0]
    assert list(c.manifest.at[row, "bad_parcels"]) == [3, 4]
    w = c.read(row, 0, 200)
    assert (w[:, [3, 4]] == 0).all() and np.isnan(c.read(row, scaled=False)[:, 3]).all()
    assert c.summary()["recordings_with_missing_parcels"] == 1
    # Missing parcels do not enter the scaling statistics.
    others = np.concatenate([c.read(i, scaled=False) for i in c.manifest.index if i != row])
    assert c.contract.median[3] == pytest.approx(np.median(others[:, 3]), abs=0.05 * c.contract.iqr[3])


def test_mixed_trs_need_a_target_tr(hcp, tmp_path):
    rest = load_schaefer100_rest()
    rec2 = type(rest)(timeseries=rest.timeseries[::-1].copy(), tr=1.5, atlas=rest.atlas, subject="other")
    with pytest.raises(BrainLMInputError, match="different TRs.*--target-tr"):
        prepare_corpus([rest, rec2], tmp_path / "c", PrepareSettings.of(atlas=rest.atlas, min_trs=50))
    contract = PreprocessingContract(target_tr=0.72)
    c = prepare_corpus([rest, rec2], tmp_path / "c",
                       PrepareSettings.of(atlas=rest.atlas, min_trs=50, contract=contract,
                                          fractions=(0.5, 0.5, 0.0), restart=True))
    lengths = dict(zip(c.manifest["subject"], c.manifest["n_trs"]))
    assert lengths == {"rest01": contract.output_length(145, 2.0), "other": contract.output_length(145, 1.5)}
    assert lengths["rest01"] == 403 and set(c.manifest["tr_source"]) == {2.0, 1.5}


def test_site_splits_and_site_column(hcp, tmp_path):
    root = write_hcp_folder(tmp_path / "bids", hcp, runs=1)
    parts = pd.read_csv(root / "participants.tsv", sep="\t")
    parts["site"] = ["A", "A", "B", "B", "C", "C", "C"]
    parts.to_csv(root / "participants.tsv", sep="\t", index=False)
    c = prepare_corpus([root], tmp_path / "c",
                       PrepareSettings.of(atlas=load_atlas("aal2"), split_by="site", fractions=(0.34, 0.33, 0.33)))
    m = c.manifest
    assert (m.groupby("site")["split"].nunique() == 1).all() and m["split"].nunique() == 3
    assert "site" not in c.phenotype_columns


def test_explicit_split_assignments_make_a_leave_one_subject_out_fold(hcp, tmp_path):
    keys = sorted(f"{r.site}/{r.subject}" for r in hcp)
    fold = {k: "train" for k in keys} | {keys[2]: "test", keys[4]: "val"}
    c = prepare_corpus(hcp[:7], tmp_path / "c",
                       PrepareSettings.of(atlas=load_atlas("aal2"), split_assignments=fold))
    m = c.manifest
    assert m.set_index("subject")["split"].to_dict() == {k.split("/")[1]: v for k, v in fold.items()}
    assert c.info["split_assignments"] == fold and c.info["fractions"] == [5 / 7, 1 / 7, 1 / 7]
    # Scaling is fitted on the assigned training subjects only.
    again = prepare_corpus(hcp[:7], tmp_path / "d",
                           PrepareSettings.of(atlas=load_atlas("aal2"),
                                              split_assignments=fold | {keys[0]: "test"}))
    assert not np.allclose(again.contract.median, c.contract.median)
    with pytest.raises(BrainLMInputError, match="lack 1 subject"):
        prepare_corpus(hcp[:7], tmp_path / "e",
                       PrepareSettings.of(atlas=load_atlas("aal2"),
                                          split_assignments={k: v for k, v in fold.items() if k != keys[0]}))


@pytest.mark.parametrize("case,expected", [
    ("missing_file", r"nope\.npy: file not found"),
    ("no_tr", r"repetition time unknown"),
    ("tr_conflict", r"TR conflict"),
    ("parcel_count", r"94"),
    ("ambiguous", r"ambiguous"),
    ("duplicates", r"duplicate recording id"),
    ("missing_subject", r"participants.tsv.*missing"),
    ("no_id_column", r"participants.tsv.*participant_id"),
    ("unknown_atlas", r"unknown atlas"),
])
def test_bad_input_gives_one_clear_line(case, expected, hcp, tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    x = hcp[0].timeseries
    args = ["--tr", "0.72"]
    atlas = "aal2"
    if case == "missing_file":
        sources = [root / "nope.npy"]
    else:
        np.save(root / "sub-01_bold.npy", x)
        sources = [root]
    if case == "no_tr":
        args = []
    elif case == "tr_conflict":
        (root / "sub-01_bold.json").write_text('{"RepetitionTime": 2.0}')
    elif case == "parcel_count":
        np.save(root / "sub-01_bold.npy", x[:, :90])
    elif case == "ambiguous":
        np.save(root / "sub-01_bold.npy", x[:94])
    elif case == "duplicates":
        (root / "a").mkdir()
        np.save(root / "a" / "sub-01_bold.npy", x)
    elif case == "missing_subject":
        (root / "participants.tsv").write_text("participant_id\tage\nsub-02\t30\n")
    elif case == "no_id_column":
        (root / "participants.tsv").write_text("name\tage\nsub-01\t30\n")
    elif case == "unknown_atlas":
        atlas = "harvard"
    out = tmp_path / "corpus"
    code = run_cli("prepare", *sources, "--out", out, "--atlas", atlas, "--quiet", *args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert __import__("re").search(expected, err), err
    assert not out.exists()


def test_corpus_reads_through_fsspec(hcp_folder, tmp_path):
    import fsspec

    c = prepare_corpus([hcp_folder], tmp_path / "c", PrepareSettings.of(atlas=load_atlas("aal2")))
    fs = fsspec.filesystem("memory")
    for dirpath, _, files in os.walk(tmp_path / "c"):
        for f in files:
            local = os.path.join(dirpath, f)
            fs.pipe(f"/remote/{os.path.relpath(local, tmp_path / 'c')}", open(local, "rb").read())
    remote = Corpus("memory://remote")
    assert len(remote) == len(c) and remote.atlas.matches(c.atlas)
    np.testing.assert_array_equal(remote.read(3, 100, 300), c.read(3, 100, 300))
    fs.rm("/remote", recursive=True)
