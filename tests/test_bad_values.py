"""Silently wrong numbers and the last tracebacks (issue 25, items 4 and 5), end to end through
:func:`brainlm.commands.main` where a user would meet them: each case is the exit status, the
one-line message and what is (not) left on disk.

* a validation or test recording on another scale than the training recordings (values x1e26,
  or near the float32 maximum) is refused, naming the file; ``--drop-scale-outliers`` leaves it
  out; per-recording scaling, which does not depend on units, takes it;
* a near-constant parcel (constant in 90% of TRs, with spikes), whose robust scaling divides by an
  IQR near 0, follows ``--bad-parcels``, under pooled and per-recording scaling; real data never
  come near the bound;
* a target TR outside 0.01-100 s is refused, like a source TR;
* ``embed --plot COLUMN`` with too few recordings holding a value, ``info`` on an overwritten
  manifest and ``info`` on a corpus whose build is unfinished are one-line errors.

Inputs are tiny (HCP recordings cut to 300 TRs), so the file stays in the fast tier.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainlm.data.atlas import load_atlas
from brainlm.data.contract import TR_RANGE_S, PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import load_schaefer100_rest
from brainlm.data.scaling import MAX_ROBUST_DEVIATION, robust_deviation
from brainlm.data.splits import assign_splits
from brainlm.errors import BrainLMInputError
from cli_harness import NPY, cli, npy_folder as _npy_folder

SPLITS = ("--splits", "0.6,0.2,0.2")


def held_out_and_training(hcp, n: int = 5) -> tuple[int, int]:
    """Indices (into ``hcp``) of a validation/test subject and of a training subject under
    :data:`SPLITS` with seed 0, as ``prepare`` assigns them."""
    split = assign_splits([r.subject for r in hcp[:n]], (0.6, 0.2, 0.2), seed=0)
    held_out = next(i for i, r in enumerate(hcp[:n]) if split[r.subject] != "train")
    train = next(i for i, r in enumerate(hcp[:n]) if split[r.subject] == "train")
    return held_out, train


def near_constant(x: np.ndarray, parcel: int = 0, seed: int = 0) -> np.ndarray:
    """``x`` with ``parcel`` at its mean in 90% of the TRs and 2-10% above it in the others."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    base = x[:, parcel].mean()
    col = np.full(len(x), base)
    spikes = rng.choice(len(x), len(x) // 10, replace=False)
    col[spikes] = base * (1 + rng.uniform(0.02, 0.1, spikes.size))
    x[:, parcel] = col
    return x


# --- item 4: a validation or test recording on another scale -------------------------------------

@pytest.mark.filterwarnings("ignore::brainlm.data.prepare.EmptySplitWarning")  # the dropped one's split
@pytest.mark.parametrize("ruin", ["x1e26", "near 3e38"])
def test_a_held_out_recording_on_another_scale_is_refused_naming_it(ruin, hcp, tmp_path, capsys):
    held_out, _ = held_out_and_training(hcp)

    def edit(i, x):
        if i != held_out:
            return x
        return x * 1e26 if ruin == "x1e26" else x * (3e38 / np.abs(x).max())

    root = _npy_folder(tmp_path / "in", hcp, n=5, edit=edit)
    out = tmp_path / "corpus"
    code, err = cli(capsys, "prepare", root, "--out", out, *NPY, *SPLITS)
    assert code == 2, err
    assert f"sub-{hcp[held_out].subject}_bold.npy" in err and "another scale than the training" in err
    assert "--drop-scale-outliers" in err and not out.exists()
    # The unfinished build resumes with --drop-scale-outliers (no setting of the cleaning changed).
    with pytest.warns(UserWarning, match="another scale than the training recordings.*dropped"):
        code, err = cli(capsys, "prepare", root, "--out", out, *NPY, *SPLITS, "--drop-scale-outliers")
    assert code == 0, err
    corpus = Corpus(out)
    assert hcp[held_out].subject not in set(corpus.manifest["subject"]) and len(corpus) == 4
    assert "scale outlier" in corpus.skipped["reason"].iloc[0]
    assert [o["action"] for o in corpus.info["scale_outliers"]] == ["dropped"]
    assert max(float(np.abs(corpus.read(i)).max()) for i in range(len(corpus))) < MAX_ROBUST_DEVIATION
    # --on-error skip skips it, as any recording that fails validation.
    with pytest.warns(UserWarning, match="another scale than the training recordings"):
        code, err = cli(capsys, "prepare", root, "--out", tmp_path / "skipped", *NPY, *SPLITS, "--on-error", "skip")
    assert code == 0 and len(Corpus(tmp_path / "skipped")) == 4, err
    assert "(--on-error skip)" in Corpus(tmp_path / "skipped").skipped["reason"].iloc[0]


def test_per_recording_scaling_takes_a_held_out_recording_in_other_units(hcp, tmp_path, capsys):
    held_out, _ = held_out_and_training(hcp)
    root = _npy_folder(tmp_path / "in", hcp, n=5, edit=lambda i, x: x * 1e6 if i == held_out else x)
    code, err = cli(capsys, "prepare", root, "--out", tmp_path / "corpus", *NPY, *SPLITS, "--scaling", "recording")
    assert code == 0, err
    corpus = Corpus(tmp_path / "corpus")
    row = int(np.flatnonzero(corpus.manifest["subject"] == hcp[held_out].subject)[0])
    # Unit-free: the recording in other units reads as it would in its own.
    expected = PreprocessingContract(scaling="recording").transform(
        type(hcp[held_out])(hcp[held_out].timeseries[:300], 0.72, hcp[held_out].atlas, subject="x"))
    np.testing.assert_allclose(corpus.read(row), expected, atol=1e-3)


def test_a_sentinel_value_near_the_float32_maximum_is_a_bad_parcel(hcp, tmp_path, capsys):
    held_out, _ = held_out_and_training(hcp)

    def edit(i, x):
        if i == held_out:
            x[100, 7] = 3e38  # a "missing value" marker that some exports write
        return x

    root = _npy_folder(tmp_path / "in", hcp, n=5, edit=edit)
    code, err = cli(capsys, "prepare", root, "--out", tmp_path / "corpus", *NPY, *SPLITS)
    parcel = hcp[0].atlas.parcel_names[7]
    assert code == 2 and f"sub-{hcp[held_out].subject}_bold.npy" in err and repr(parcel) in err, err
    assert f"expected at most {MAX_ROBUST_DEVIATION:g}" in err and "--bad-parcels zero" in err


# --- item 4: a near-constant parcel ---------------------------------------------------------------

@pytest.mark.parametrize("scaling", ["pooled", "recording"])
def test_a_near_constant_parcel_follows_the_bad_parcel_policy(scaling, hcp, tmp_path, capsys):
    _, train = held_out_and_training(hcp)
    root = _npy_folder(tmp_path / "in", hcp, n=5, edit=lambda i, x: near_constant(x) if i == train else x)
    args = [*NPY, *SPLITS, "--scaling", scaling]
    code, err = cli(capsys, "prepare", root, "--out", tmp_path / "refused", *args)
    name = hcp[0].atlas.parcel_names[0]
    assert code == 2 and f"sub-{hcp[train].subject}_bold.npy" in err and repr(name) in err, err
    assert "near-constant" in err and "--bad-parcels zero" in err

    code, err = cli(capsys, "prepare", root, "--out", tmp_path / "corpus", *args, "--bad-parcels", "zero")
    assert code == 0, err
    corpus = Corpus(tmp_path / "corpus")
    m = corpus.manifest
    row = int(np.flatnonzero(m["subject"] == hcp[train].subject)[0])
    assert [list(map(int, b)) for b in m["bad_parcels"]] == [[0] if i == row else [] for i in range(len(m))]
    assert not corpus.read(row)[:, 0].any()  # missing: reads as 0
    assert max(float(np.abs(corpus.read(i)).max()) for i in range(len(corpus))) < MAX_ROBUST_DEVIATION


def test_the_near_constant_check_in_python(hcp):
    x = near_constant(np.asarray(hcp[0].timeseries, dtype=np.float64))
    names = hcp[0].atlas.parcel_names
    with pytest.raises(BrainLMInputError, match=rf"near-constant parcel\(s\) \['{names[0]}'\]"):
        PreprocessingContract().clean(x, 0.72, parcel_names=names, source="sub-x.npy")
    before = x.copy()
    cleaned = PreprocessingContract(bad_parcels="zero", percent_signal_change=True).clean(x, 0.72, parcel_names=names)
    assert cleaned.bad_parcels == [0] and np.isnan(cleaned.data[:, 0]).all()
    np.testing.assert_array_equal(x, before)  # the caller's float64 array is left alone
    # The constant TRs are exactly equal: an IQR of 0 with spikes is infinitely far.
    assert np.isinf(robust_deviation(x[:, :1]))[0]
    assert 0 < float(robust_deviation(x[:, 1:]).max()) < MAX_ROBUST_DEVIATION / 5


#: Contracts under which the real data are checked: every cleaning step, both directions of
#: resampling.
REAL_DATA_CONTRACTS = [
    PreprocessingContract(),
    PreprocessingContract(percent_signal_change=True),
    PreprocessingContract(detrend=False),
    PreprocessingContract(percent_signal_change=True, high_pass_hz=0.01, low_pass_hz=0.1),
    PreprocessingContract(percent_signal_change=True, target_tr=2.0),
    PreprocessingContract(percent_signal_change=True, target_tr=0.72),
]


@pytest.mark.parametrize("contract", REAL_DATA_CONTRACTS, ids=lambda c: str(c.cleaning()))
def test_real_data_stay_far_inside_the_bound(contract, hcp):
    """The embedded HCP (7 x 1200 TRs) and Schaefer data reach at most 6.4 IQRs from their
    medians under every cleaning (the bound is 50): none of their parcels is flagged."""
    for rec in [*hcp, load_schaefer100_rest()]:
        cleaned = contract.clean(rec.timeseries, rec.tr, parcel_names=rec.atlas.parcel_names)
        assert cleaned.bad_parcels == []
        assert float(robust_deviation(cleaned.data).max()) < MAX_ROBUST_DEVIATION / 5


def test_a_real_corpus_scales_far_inside_the_bound(hcp_corpus):
    """Pooled (the corpus' own) and per-recording scaling of the embedded HCP corpus."""
    per_recording = PreprocessingContract(scaling="recording")
    for i in range(len(hcp_corpus)):
        assert float(np.abs(hcp_corpus.read(i)).max()) < MAX_ROBUST_DEVIATION / 5
        assert float(np.abs(hcp_corpus.read(i, scaler=per_recording)).max()) < MAX_ROBUST_DEVIATION / 5
    assert all(len(b) == 0 for b in hcp_corpus.manifest["bad_parcels"])


# --- item 4: the target TR ------------------------------------------------------------------------

def test_a_target_tr_outside_the_source_tr_range_is_refused(hcp, tmp_path, capsys):
    root = _npy_folder(tmp_path / "in", hcp, n=3)
    out = tmp_path / "corpus"
    code, err = cli(capsys, "prepare", root, "--out", out, *NPY, "--target-tr", "0.001")
    assert code == 2 and "target_tr" in err and "0.001" in err and "0.01-100 s" in err, err
    assert not out.exists() and not out.with_name("corpus.partial").exists()
    lo, hi = TR_RANGE_S
    for bad in (0.001, lo / 2, hi * 1.5, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(BrainLMInputError, match="target_tr"):
            PreprocessingContract(target_tr=bad)
    assert PreprocessingContract(target_tr=lo).target_tr == lo
    assert PreprocessingContract(target_tr=hi).target_tr == hi


# --- item 5: embed --plot with a mostly missing column ---------------------------------------------

@pytest.fixture(scope="module")
def plot_inputs(tmp_path_factory, hcp):
    """A corpus of 5 HCP subjects (300 TRs) whose column ``group`` has 3 values for 3 subjects,
    and a ``tiny`` checkpoint with fresh weights on its contract."""
    import torch

    from brainlm.model.brainlm import BrainLM
    from brainlm.checkpoints.folder import save_pretrained
    from brainlm.model.config import preset

    root = tmp_path_factory.mktemp("plot")
    src = _npy_folder(root / "in", hcp, n=5)
    groups = ["A", "B", "C", None, None]
    pd.DataFrame({"participant_id": [f"sub-{r.subject}" for r in hcp[:5]], "group": groups}).to_csv(
        src / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    corpus = prepare_corpus([src], root / "corpus",
                            PrepareSettings.of(atlas=load_atlas("aal2"), tr=0.72, min_trs=50, fractions=(1, 0, 0)))
    torch.manual_seed(0)
    save_pretrained(BrainLM(preset("tiny"), contract=corpus.contract, atlas=corpus.atlas), root / "model")
    return corpus, root / "model"


def test_plot_of_a_mostly_missing_column_is_one_line_naming_the_counts(plot_inputs, tmp_path, capsys):
    corpus, checkpoint = plot_inputs
    out = tmp_path / "emb.parquet"
    code, err = cli(capsys, "embed", checkpoint, corpus.path, "--out", out, "--plot", "group")
    assert code == 2, err
    assert "column 'group'" in err and "3 of 5 recordings" in err and "at least 4" in err
    assert list(tmp_path.iterdir()) == []


def test_plot_scores_only_the_recordings_with_a_value_when_enough_have_one():
    rng = np.random.default_rng(0)
    n = 8
    table = pd.DataFrame({"recording_id": [f"r{i}" for i in range(n)], "subject": [f"s{i}" for i in range(n)],
                          "group": ["A", "A", "B", "B", "C", None, None, None],
                          **{f"cls_{k}": rng.normal(size=n) for k in range(4)}})
    from brainlm.tasks.latent import latent_space

    result = latent_space(table, "group", fc=rng.normal(size=(n, 6)), n_permutations=5)
    assert (result["n_recordings"], result["n_missing"]) == (5, 3) and result["levels"] == ["A", "B", "C"]
    with pytest.raises(BrainLMInputError, match=r"column 'group' has a value for 3 of 8 recordings.*at least 4"):
        latent_space(table.assign(group=["A", "B", "C", None, None, None, None, None]), "group",
                     fc=rng.normal(size=(n, 6)), n_permutations=5)


# --- item 5: info on a broken or unfinished corpus -------------------------------------------------

@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, hcp):
    root = tmp_path_factory.mktemp("info")
    return prepare_corpus([_npy_folder(root / "in", hcp, n=3)], root / "corpus",
                          PrepareSettings.of(atlas=load_atlas("aal2"), tr=0.72, min_trs=50,
                                             allow_missing_phenotypes=True))


@pytest.mark.parametrize("manifest", ["another table", "not parquet"])
def test_info_on_an_overwritten_manifest_names_the_file_and_columns(manifest, small_corpus, tmp_path, capsys):
    corpus = Path(shutil.copytree(small_corpus.path, tmp_path / "corpus"))
    path = corpus / "manifest.parquet"
    if manifest == "another table":
        pd.DataFrame({"recording_id": ["a"], "subject": ["a"], "cls_0": [0.5]}).to_parquet(path)
    else:
        path.write_text("<html>a report</html>")
    code, err = cli(capsys, "info", corpus)
    assert code == 2 and str(path) in err, err
    if manifest == "another table":
        assert "missing column(s)" in err and "'n_trs'" in err and "'split'" in err
    else:
        assert "not a Parquet table" in err


def test_info_on_an_unfinished_build_says_how_to_resume(hcp, tmp_path, capsys):
    root = _npy_folder(tmp_path / "in", hcp, n=3, edit=lambda i, x: np.where(np.arange(94) == 5, np.nan, x)
                       if i == 1 else x)
    out = tmp_path / "corpus"
    code, err = cli(capsys, "prepare", root, "--out", out, *NPY)
    assert code == 2 and out.with_name("corpus.partial").is_dir() and not out.exists(), err
    code, err = cli(capsys, "info", out)
    assert code == 2 and "not found" not in err, err
    assert "corpus.partial is an unfinished `brainlm prepare`: re-run it to resume (the same command" in err
    assert "1 recording(s) are done" in err
    # The same words from the Python API.
    with pytest.raises(BrainLMInputError, match="corpus.partial is an unfinished .*re-run it to resume"):
        Corpus(out)
    # A folder that merely ends in .partial is not a build.
    (tmp_path / "mine.partial").mkdir()
    code, err = cli(capsys, "info", tmp_path / "mine")
    assert code == 2 and "not found" in err and "unfinished `brainlm prepare`" not in err
