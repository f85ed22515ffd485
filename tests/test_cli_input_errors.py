"""Input errors through the CLI: a bad option, file or value is refused before any work in one
line that names the file, field or option and what was expected (and the fix, when there is
one); input that would give a wrong result is refused or reported, never silently kept.

Every case runs through :func:`brainlm.commands.main`, as a user's shell would (see
``cli_harness``).
"""

from __future__ import annotations

import pytest

# Before the import below: the harness's own checks (cli) then fail with the values, as a test's do.
pytest.register_assert_rewrite("cli_harness")

from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import load_schaefer100_rest
from cli_harness import NPY, PREPARE, TINY, cli, npy_folder, user_folder
from test_fresh_cohort import demean, make_checkpoint, write_files

pytest_plugins = ["cli_harness"]


# --- Options out of range, checked before any work --------------------------------------------

@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--batch-size", "0"), ("--lr", "-1"),
                                           ("--accumulate", "0"), ("--crops-per-recording", "0"),
                                           ("--mask-ratio", "1"), ("--warmup", "1.5"), ("--workers", "-1")])
def test_pretrain_refuses_an_option_out_of_range_before_writing_anything(option, value, corpora, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = cli(capsys, "pretrain", corpora[0], "--out", run, *TINY, option, value)
    assert code == 2 and f"{option} {float(value) if option in ('--lr', '--mask-ratio', '--warmup') else int(value)}" in err
    assert not run.exists()


@pytest.mark.parametrize("case", ["missing folder", "onto a folder", "batch 0", "cuda:7", "bad device"])
def test_embed_options_are_checked_before_any_work(case, started_run, corpora, tmp_path, capsys):
    out = {"missing folder": tmp_path / "nope" / "e.parquet"}.get(case, tmp_path / "e.parquet")
    if case == "onto a folder":  # a .parquet name that is a folder (other names are dataset folders)
        out.mkdir()
    extra = {"batch 0": ["--batch-size", "0"], "cuda:7": ["--device", "cuda:7"],
             "bad device": ["--device", "gpu-please"]}.get(case, [])
    before = sorted(tmp_path.rglob("*"))
    code, err = cli(capsys, "embed", started_run / "model", corpora[0], "--out", out, *extra)
    expected = {"missing folder": "does not exist; create it first", "onto a folder": "--out is a folder",
                "batch 0": "--batch-size 0", "cuda:7": "--device 'cuda:7'", "bad device": "is not a device"}[case]
    assert code == 2 and expected in err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("args, message", [
    (["evaluate", "recon", "{ckpt}", "{corpus}", "--out", "{out}", "--batch-size", "0"], "--batch-size 0"),
    (["evaluate", "recon", "{ckpt}", "{corpus}", "--out", "{out}", "--device", "cuda:7"], "--device 'cuda:7'"),
    (["evaluate", "recon", "{ckpt}", "{corpus}", "--out", "{out}", "--max-recordings", "0"], "--max-recordings 0"),
    (["forecast", "finetune", "{ckpt}", "{corpus}", "--out", "{out}", "--epochs", "0"], "--epochs 0"),
    (["networks", "{ckpt}", "{corpus}", "--out", "{out}", "--batch-size", "0"], "--batch-size 0"),
    (["attention", "{ckpt}", "{corpus}", "--group-by", "sex", "--out", "{out}", "--permutations", "0"],
     "--permutations 0"),
])
def test_task_options_are_checked_before_any_work(args, message, started_run, corpora, tmp_path, capsys):
    fill = {"{ckpt}": started_run / "model", "{corpus}": corpora[0], "{out}": tmp_path / "out"}
    code, err = cli(capsys, *[fill.get(a, a) for a in args])
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_jobs_0_and_leaves_nothing(src, tmp_path, capsys):
    code, err = cli(capsys, "prepare", src, "--out", tmp_path / "corpus", "--jobs", "0", *PREPARE)
    assert code == 2 and "--jobs" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bids"]


# --- Output paths that cannot be written ------------------------------------------------------

def test_prepare_refuses_an_out_under_a_regular_file_and_keeps_the_file(src, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = cli(capsys, "prepare", src, "--out", tmp_path / "file" / "corpus", *PREPARE)
    assert code == 2 and "is a file, not a folder" in err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root may write anywhere")
def test_prepare_names_a_folder_without_write_permission(src, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        code, err = cli(capsys, "prepare", src, "--out", locked / "corpus", *PREPARE)
        assert code == 2 and "no permission to write" in err
    finally:
        locked.chmod(0o755)


# --- The fix an error message suggests works when followed ------------------------------------

def test_following_the_bad_parcels_hint_works(hcp, tmp_path, capsys):
    import re

    import numpy as np

    root = tmp_path / "in"
    root.mkdir()
    for i, rec in enumerate(hcp[:3]):
        x = rec.timeseries[:300].copy()
        if i == 1:
            x[:, 3] = np.nan
        np.save(root / f"sub-{rec.subject}_bold.npy", x)
    args = ["prepare", root, "--out", tmp_path / "corpus", "--atlas", "aal2", "--tr", "0.72",
            "--min-trs", "50", "--splits", "1,0,0", "--quiet"]
    code, err = cli(capsys, *args)
    assert code == 2 and "--bad-parcels zero" in err and "--restart" in err
    suggested = re.findall(r"--[a-z-]+(?: zero)?", err.split(":", 2)[-1])
    assert "--bad-parcels zero" in suggested and "--restart" in suggested
    code, err = cli(capsys, *args, "--bad-parcels", "zero", "--restart")  # exactly what it said
    assert code == 0, err
    assert Corpus(tmp_path / "corpus").summary()["recordings_with_missing_parcels"] == 1


# --- Input that would give a wrong result is refused or reported ------------------------------

def test_too_few_subjects_for_the_splits_is_a_recorded_warning(hcp, tmp_path, capsys):
    from brainlm.data.prepare import EmptySplitWarning

    root = npy_folder(tmp_path / "in", hcp, n=2)
    with pytest.warns(EmptySplitWarning, match="split 'test' is empty"):
        code, _ = cli(capsys, "prepare", root, "--out", tmp_path / "corpus", *NPY)
    assert code == 0
    assert any("'test' is empty" in w for w in Corpus(tmp_path / "corpus").info["warnings"])


def test_an_implausible_tr_is_refused(hcp, tmp_path, capsys):
    root = npy_folder(tmp_path / "in", hcp)
    args = [a if a != "0.72" else "1e-9" for a in NPY]
    code, err = cli(capsys, "prepare", root, "--out", tmp_path / "corpus", *args)
    assert code == 2 and "TR 1e-09 s is outside 0.01-100 s" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.partial", "in"]  # resumable, no corpus


@pytest.mark.parametrize("how", ["all NaN", "all constant"])
def test_a_recording_without_any_usable_parcel_is_not_kept(how, hcp, tmp_path, capsys):
    import numpy as np

    def ruin(i, x):
        if i == 1:
            x[:] = np.nan if how == "all NaN" else 3.0
        return x

    root = npy_folder(tmp_path / "in", hcp, edit=ruin)
    out = tmp_path / "corpus"
    code, err = cli(capsys, "prepare", root, "--out", out, "--bad-parcels", "zero", *NPY)
    assert code == 2 and "all 94 parcels are NaN/Inf or constant" in err and hcp[1].subject in err
    assert not out.exists()
    code, err = cli(capsys, "prepare", root, "--out", out, "--bad-parcels", "zero", "--on-error", "skip",
                    "--restart", *NPY)
    assert code == 0
    corpus = Corpus(out)
    assert hcp[1].subject not in set(corpus.manifest["subject"]) and len(corpus) == 2
    import pandas as pd

    skipped = pd.read_parquet(out / "skipped.parquet")
    assert "holds no signal" in skipped["reason"].iloc[0]


def test_values_beyond_float32_are_refused_not_stored_as_inf():
    from types import SimpleNamespace

    import numpy as np

    from brainlm import BrainLMInputError
    from brainlm.data.prepare import _check_cleaned

    data = np.ones((10, 4))
    data[3, 1] = 1e39  # finite in float64, infinite once stored as float32
    with pytest.raises(BrainLMInputError, match="exceed the float32 range"):
        _check_cleaned(SimpleNamespace(data=data, bad_parcels=[]), "rec.npy")
    data[3, 1] = np.inf  # a bad parcel that the policy zeroes is fine ...
    _check_cleaned(SimpleNamespace(data=data, bad_parcels=[1]), "rec.npy")
    with pytest.raises(BrainLMInputError, match="all 4 parcels"):  # ... unless all of them are
        _check_cleaned(SimpleNamespace(data=data, bad_parcels=[0, 1, 2, 3]), "rec.npy")


def test_broken_links_and_notes_in_a_source_folder_are_reported_not_read(hcp, tmp_path, capsys):
    from brainlm.data.sources import SkippedFilesWarning

    root = npy_folder(tmp_path / "in", hcp)
    (root / "NOTES.txt").write_text("scanned on the old Prisma; subject 3 moved a lot\n")
    (root / "sub-gone_bold.npy").symlink_to(tmp_path / "deleted.npy")
    with pytest.warns(SkippedFilesWarning) as seen:
        code, err = cli(capsys, "prepare", root, "--out", tmp_path / "corpus", *NPY)
    assert code == 0, err
    text = " ".join(str(w.message) for w in seen)
    assert "broken symbolic link(s): sub-gone_bold.npy" in text and "NOTES.txt" in text
    assert len(Corpus(tmp_path / "corpus")) == 3


@pytest.mark.parametrize("ruin", ["units 1e4 larger", "1e30 on 10 parcels"])
def test_a_recording_on_another_scale_is_reported_and_left_out_of_the_fit(ruin, hcp, tmp_path, capsys):
    import numpy as np
    import pandas as pd

    from brainlm.data.prepare import ScaleOutlierWarning

    def edit(i, x):
        if i == 2:
            if ruin == "units 1e4 larger":
                x = x * 1e4
            else:
                x[:, :10] *= 1e26
        return x

    args = [*NPY, "--splits", "1,0,0"]
    clean = npy_folder(tmp_path / "clean", hcp[:2] + hcp[3:5], n=4)
    assert cli(capsys, "prepare", clean, "--out", tmp_path / "reference", *args)[0] == 0
    root = npy_folder(tmp_path / "in", hcp, n=5, edit=edit)
    with pytest.warns(ScaleOutlierWarning, match=rf"1 training recording\(s\) on another scale.*{hcp[2].subject}"):
        assert cli(capsys, "prepare", root, "--out", tmp_path / "corpus", *args)[0] == 0
    corpus, reference = Corpus(tmp_path / "corpus"), Corpus(tmp_path / "reference")
    assert [o["recording_id"] for o in corpus.info["scale_outliers"]] == [f"sub-{hcp[2].subject}"]
    assert len(corpus) == 5  # kept, but the statistics are the cohort's without it
    assert corpus.contract.median == reference.contract.median and corpus.contract.iqr == reference.contract.iqr
    row = int(np.flatnonzero(corpus.manifest["subject"] == hcp[0].subject)[0])
    assert 0.3 < float(np.std(corpus.read(row), axis=0).min())  # nobody squeezed to ~1e-6
    with pytest.warns(ScaleOutlierWarning, match="dropped"):
        assert cli(capsys, "prepare", root, "--out", tmp_path / "dropped", *args, "--drop-scale-outliers")[0] == 0
    dropped = Corpus(tmp_path / "dropped")
    assert hcp[2].subject not in set(dropped.manifest["subject"]) and len(dropped) == 4
    assert "scale outlier" in pd.read_parquet(tmp_path / "dropped" / "skipped.parquet")["reason"].iloc[0]


# --- prepare --like: a checkpoint's cleaning for a new cohort, and unknown atlases ------------

@pytest.fixture(scope="module")
def psc_checkpoint(tmp_path_factory, hcp):
    """A tiny checkpoint (fresh weights) of an AAL2 corpus with percent signal change and pooled
    scaling, as ``brainlm prepare --psc`` and ``pretrain`` would leave it."""
    root = tmp_path_factory.mktemp("psc")
    cut = [type(r)(r.timeseries[:300], r.tr, r.atlas, subject=r.subject) for r in hcp[:2]]
    corpus = prepare_corpus(cut, root / "corpus",
                            PrepareSettings.of(atlas=cut[0].atlas, min_trs=50, fractions=(1, 0, 0),
                                               contract=PreprocessingContract(percent_signal_change=True, target_tr=0.72)))
    return make_checkpoint(root / "model", corpus.contract, corpus.atlas)


def test_like_refuses_a_folder_that_is_not_a_checkpoint(src, tmp_path, capsys):
    notes = user_folder(tmp_path / "notes", "readme.txt")
    code, err = cli(capsys, "prepare", src, "--like", notes, "--out", tmp_path / "c", "--min-trs", "50", "--quiet")
    assert code == 2 and str(notes) in err and "--like expects a checkpoint folder" in err
    code, err = cli(capsys, "prepare", src, "--like", tmp_path / "nowhere", "--out", tmp_path / "c", "--quiet")
    assert code == 2 and "nowhere" in err and "not the name of a shipped model" in err
    assert not (tmp_path / "c").exists()


def test_like_refuses_a_cohort_whose_parcels_cannot_be_matched(psc_checkpoint, tmp_path, capsys):
    """Schaefer-100 files prepared like an AAL2 checkpoint without --atlas: read on its 94 parcels."""
    files = write_files(tmp_path / "files", [load_schaefer100_rest()])
    code, err = cli(capsys, "prepare", files, "--like", psc_checkpoint, "--out", tmp_path / "c", "--quiet")
    assert code == 2 and "sub-rest01_task-rest_bold.npy" in err and "94" in err
    assert not (tmp_path / "c").exists()


def test_like_refuses_units_that_cannot_be_bridged_naming_the_fix(psc_checkpoint, hcp, tmp_path, capsys):
    """Demeaned files and a checkpoint with percent signal change and pooled scaling: one line that
    names the file and says what to do."""
    cut = [type(r)(r.timeseries[:300], r.tr, r.atlas, subject=r.subject) for r in hcp[2:4]]
    files = write_files(tmp_path / "files", cut, demean)
    code, err = cli(capsys, "prepare", files, "--like", psc_checkpoint, "--out", tmp_path / "c", "--min-trs", "50",
                    "--quiet")
    assert code == 2 and "_bold.npy" in err and "--scaling recording" in err and "demeaned" in err
    # The same files through a raw-file command: the same message.
    code, err = cli(capsys, "embed", psc_checkpoint, files, "--out", tmp_path / "e.parquet")
    assert code == 2 and "_bold.npy" in err and "--scaling recording" in err


def test_like_refuses_a_cleaning_flag_that_contradicts_the_checkpoint(psc_checkpoint, src, tmp_path, capsys):
    code, err = cli(capsys, "prepare", src, "--like", psc_checkpoint, "--target-tr", "2", "--out", tmp_path / "c",
                    "--quiet")
    assert code == 2 and str(psc_checkpoint) in err and "target_tr: 2.0 vs the checkpoint's 0.72" in err


@pytest.mark.parametrize("command", ["prepare", "embed", "networks"])
def test_an_unknown_atlas_is_one_line_naming_it(command, psc_checkpoint, src, tmp_path, capsys):
    args = {"prepare": ["prepare", src, "--out", tmp_path / "c", "--quiet"],
            "embed": ["embed", psc_checkpoint, src, "--out", tmp_path / "e.parquet"],
            "networks": ["networks", psc_checkpoint, src, "--out", tmp_path / "n", "--transfer-atlas"]}[command]
    code, err = cli(capsys, *args, "--atlas", "schaefer1000")
    assert code == 2 and "schaefer1000" in err and "unknown atlas" in err and "aal2" in err
    assert not any((tmp_path / name).exists() for name in ("c", "e.parquet", "n"))
