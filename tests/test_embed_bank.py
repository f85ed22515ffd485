"""``brainlm embed --out FOLDER``: embeddings of a corpus as a sharded, resumable Parquet dataset
(brainlm.tasks.embed_bank), split across processes, and the output-safety rules of ``embed``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import OUTPUT_MARKER
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.model import BrainLM
from brainlm.checkpoints.folder import save_pretrained
from brainlm.model.config import preset
from brainlm.tasks.embed import DATASET_MANIFEST, read_embeddings
from brainlm.tasks.embed_bank import DatasetSettings, embed_dataset, parse_shard

# The tests share 2 cores with other jobs: one BLAS/torch thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

#: Recordings per shard in these tests: 13 embeddable recordings -> 5 shards (the last of 1).
SHARD = "3"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, hcp):
    """14 pieces of the 7 HCP recordings (AAL2): 13 of 300-680 TRs and one of 80 TRs, shorter
    than a window of the test model (left out). ``age`` is missing for some, ``sex`` given for the odd subjects only,
    so that some shards hold a column with only missing values."""
    pieces = []
    for i, rec in enumerate(hcp):
        cuts = [(0, 520), (520, 1200)] if i else [(0, 80), (80, 380)]
        for k, (a, b) in enumerate(cuts):
            phenotypes = {"age": 20.0 + i + k} if (i + k) % 3 else {}
            if i % 2:
                phenotypes["sex"] = "F" if k else "M"
            pieces.append(Recording(rec.timeseries[a:b], rec.tr, rec.atlas, subject=rec.subject,
                                    run=str(k + 1), phenotypes=phenotypes))
    return prepare_corpus(pieces, tmp_path_factory.mktemp("bank") / "corpus",
                          PrepareSettings.of(atlas=load_atlas("aal2"),
                                             contract=PreprocessingContract(percent_signal_change=True),
                                             min_trs=50))


def tiny_checkpoint(folder: Path, corpus, seed: int) -> Path:
    """An untrained ``tiny`` model (windows of 100 TRs, so that tests run fast) with the
    corpus' contract and atlas."""
    torch.manual_seed(seed)
    save_pretrained(BrainLM(preset("tiny", window_trs=100), contract=corpus.contract, atlas=corpus.atlas),
                    folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("bank_model") / "model", corpus, 0)


@pytest.fixture(scope="module")
def one_file(checkpoint, corpus, tmp_path_factory):
    """The one-file embeddings of the corpus (the reference every dataset must equal)."""
    out = tmp_path_factory.mktemp("bank_ref") / "embeddings.parquet"
    assert main(["embed", str(checkpoint), corpus.path, "--out", str(out)]) == 0
    return pd.read_parquet(out)


def embed_cli(checkpoint, corpus, out, *extra) -> int:
    return main(["embed", str(checkpoint), corpus.path, "--out", str(out), "--shard-size", SHARD, *map(str, extra)])


def shard_stats(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of every shard file: a kept shard keeps both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("part-*.parquet"))}


def manifest(folder: Path) -> dict:
    return json.loads((folder / DATASET_MANIFEST).read_text())


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- the dataset equals the one file -------------------------------------------------------------

def test_a_sharded_dataset_holds_the_rows_of_the_one_file_form(checkpoint, corpus, one_file, tmp_path, capsys):
    out = tmp_path / "embeddings"
    assert embed_cli(checkpoint, corpus, out) == 0
    printed = capsys.readouterr().out
    # Off a terminal: progress lines with the rate and the time left, then the summary.
    assert "windows/s" in printed and "min left" in printed and "is complete" in printed
    assert len(one_file) == 13 and len(corpus.manifest) == 14   # the 80-TR recording is left out
    got = read_embeddings(out)
    pd.testing.assert_frame_equal(got, one_file, check_exact=True)
    # Any Parquet reader sees the folder as the same table (manifest and marker are skipped).
    pd.testing.assert_frame_equal(pd.read_parquet(out), one_file, check_exact=True)
    # Shards are fixed groups of 3 recordings in manifest order.
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-{i:05d}.parquet" for i in range(5)]
    first = pd.read_parquet(out / "part-00000.parquet")
    assert first["recording_id"].tolist() == one_file["recording_id"].tolist()[:3]
    # The last shard (one recording of an even subject) has no sex at all, yet every shard has
    # the one-file column types.
    assert pd.read_parquet(out / "part-00004.parquet")["sex"].isna().all()
    assert one_file["sex"].notna().sum() == 6
    for f in out.glob("part-*.parquet"):
        assert dict(pd.read_parquet(f).dtypes) == dict(one_file.dtypes)
    m = manifest(out)
    assert m["complete"] and m["rows"] == 13
    assert m["layout"] == {"shard_size": 3, "shards": 5, "recordings": 13, "window_trs": 100, "too_short": 1,
                           "order": "corpus manifest order", "files": "part-NNNNN.parquet"}
    assert m["settings"] == {"per_window": False, "transfer_atlas": False, "batch_size": 32, "precision": "32-true"}
    assert m["corpus"]["identity"] == corpus.identity() and len(m["checkpoint"]["sha256"]) == 64
    assert [s["rows"] for s in m["shards_done"]] == [3, 3, 3, 3, 1]
    assert m["shards_done"][0]["first_recording"] == one_file["recording_id"].iloc[0]
    assert json.loads((out / OUTPUT_MARKER).read_text())["what"] == "embeddings"


def test_per_window_rows_too(checkpoint, corpus, tmp_path):
    file, folder = tmp_path / "w.parquet", tmp_path / "w"
    assert main(["embed", str(checkpoint), corpus.path, "--out", str(file), "--per-window"]) == 0
    assert embed_cli(checkpoint, corpus, folder, "--per-window", "--quiet") == 0
    expected = pd.read_parquet(file)
    assert len(expected) > 13 and "start_tr" in expected
    pd.testing.assert_frame_equal(read_embeddings(folder), expected, check_exact=True)


# --- split across processes ----------------------------------------------------------------------

def test_two_shard_processes_give_the_one_file_result(checkpoint, corpus, one_file, tmp_path, capsys):
    out = tmp_path / "split"
    assert embed_cli(checkpoint, corpus, out, "--shard", "0/2", "--quiet") == 0
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00002.parquet",
                                                                 "part-00004.parquet"]
    assert not manifest(out)["complete"] and "still missing" in capsys.readouterr().out
    with pytest.raises(BrainLMInputError, match=r"unfinished embeddings dataset \(3 of 5 shards written\); run the "
                                                "same `brainlm embed` command again without --shard"):
        read_embeddings(out)
    kept = shard_stats(out)
    # The other process: its shards only, then, finding all five, it completes the dataset.
    assert embed_cli(checkpoint, corpus, out, "--shard", "1/2", "--quiet") == 0
    assert "is complete" in capsys.readouterr().out
    assert {k: v for k, v in shard_stats(out).items() if k in kept} == kept
    pd.testing.assert_frame_equal(read_embeddings(out), one_file, check_exact=True)


def test_a_run_without_shard_finishes_what_shard_processes_left(checkpoint, corpus, one_file, tmp_path, capsys):
    out = tmp_path / "three"
    assert embed_cli(checkpoint, corpus, out, "--shard", "0/3", "--quiet") == 0
    assert embed_cli(checkpoint, corpus, out, "--shard", "2/3", "--quiet") == 0
    kept = shard_stats(out)
    assert sorted(kept) == ["part-00000.parquet", "part-00002.parquet", "part-00003.parquet"]
    capsys.readouterr()
    assert embed_cli(checkpoint, corpus, out, "--quiet") == 0   # shard 1/3 never ran
    assert "2 shards computed, 3 found done" in capsys.readouterr().out
    assert {k: v for k, v in shard_stats(out).items() if k in kept} == kept
    pd.testing.assert_frame_equal(read_embeddings(out), one_file, check_exact=True)


def test_two_jobs_give_the_result_of_one(checkpoint, corpus, one_file, tmp_path):
    out = tmp_path / "jobs"
    assert embed_cli(checkpoint, corpus, out, "--jobs", "2", "--quiet") == 0
    pd.testing.assert_frame_equal(read_embeddings(out), one_file, check_exact=True)


# --- resuming --------------------------------------------------------------------------------------

def test_a_rerun_keeps_the_finished_shards_and_computes_the_rest(checkpoint, corpus, one_file, tmp_path, capsys):
    """A crash simulated on a finished dataset: one shard gone, the completion record not
    written, a temporary file left behind."""
    out = tmp_path / "crashed"
    assert embed_cli(checkpoint, corpus, out, "--quiet") == 0
    unfinished = {k: v for k, v in manifest(out).items() if k not in ("rows", "shards_done")}
    (out / DATASET_MANIFEST).write_text(json.dumps({**unfinished, "complete": False}))
    (out / "part-00003.parquet").unlink()
    (out / ".part-00003.parquet.x1y2.tmp").write_bytes(b"half a shard")
    kept = shard_stats(out)
    capsys.readouterr()
    assert embed_cli(checkpoint, corpus, out, "--quiet") == 0
    assert "1 shards computed, 4 found done" in capsys.readouterr().out
    assert {k: v for k, v in shard_stats(out).items() if k in kept} == kept
    assert not list(out.glob(".part-*"))
    pd.testing.assert_frame_equal(read_embeddings(out), one_file, check_exact=True)


def test_a_run_killed_with_sigkill_resumes(checkpoint, corpus, one_file, tmp_path):
    """A real ``brainlm embed`` process killed with SIGKILL while it embeds shard 2: the rerun
    keeps shards 0 and 1 untouched. One recording's stored chunk is a named pipe that blocks
    the killed process' read, so the kill always lands in the middle of the run."""
    data = Path(shutil.copytree(corpus.path, tmp_path / "corpus"))
    rid = corpus.manifest["recording_id"][corpus.manifest["n_trs"] >= 100].iloc[6]   # shard 2's first
    chunk = sorted(p for p in (data / "timeseries.zarr" / rid / "c").rglob("*") if p.is_file())[0]
    saved = chunk.read_bytes()
    chunk.unlink()
    os.mkfifo(chunk)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "brainlm.commands", "embed", str(checkpoint), str(data),
                             "--out", str(out), "--shard-size", SHARD, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "part-00001.parquet").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard written in 120 s"
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None   # blocked on the pipe, inside shard 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    chunk.unlink()
    chunk.write_bytes(saved)
    assert sorted(shard_stats(out)) == ["part-00000.parquet", "part-00001.parquet"]
    assert not manifest(out)["complete"]
    kept = shard_stats(out)
    assert main(["embed", str(checkpoint), str(data), "--out", str(out), "--shard-size", SHARD, "--quiet"]) == 0
    assert {k: v for k, v in shard_stats(out).items() if k in kept} == kept
    pd.testing.assert_frame_equal(read_embeddings(out), one_file, check_exact=True)


@pytest.mark.parametrize("change, message", [
    (["--per-window"], "per_window: False -> True"),
    (["--batch-size", "8"], "batch_size: 32 -> 8"),
    (["--shard-size", "4"], "shard_size: 3 -> 4"),
    ("checkpoint", "the checkpoint (sha256 "),
    ("corpus", "the corpus (identity "),
])
def test_a_resume_with_another_setting_is_refused_naming_it(change, message, checkpoint, corpus, tmp_path,
                                                           capsys):
    out = tmp_path / "partial"
    assert embed_cli(checkpoint, corpus, out, "--shard", "0/2", "--quiet") == 0
    before = shard_stats(out), (out / DATASET_MANIFEST).read_bytes()
    capsys.readouterr()
    if change == "checkpoint":
        code = embed_cli(tiny_checkpoint(tmp_path / "other", corpus, 1), corpus, out)
    elif change == "corpus":
        other = Path(shutil.copytree(corpus.path, tmp_path / "other_corpus"))
        m = pd.read_parquet(other / "manifest.parquet")
        m.loc[0, "split"] = "test" if m.loc[0, "split"] != "test" else "train"
        m.to_parquet(other / "manifest.parquet", index=False)
        code = main(["embed", str(checkpoint), str(other), "--out", str(out), "--shard-size", SHARD])
    else:
        code = main(["embed", str(checkpoint), corpus.path, "--out", str(out), "--shard-size", SHARD, *change])
    err = one_line_error(capsys)
    assert code == 2 and "cannot resume the embeddings dataset here" in err and message in err
    assert "--overwrite" in err
    assert (shard_stats(out), (out / DATASET_MANIFEST).read_bytes()) == before


# --- output safety ----------------------------------------------------------------------------------

def test_an_existing_file_needs_overwrite_and_only_embeddings_are_replaced(checkpoint, corpus, one_file, tmp_path,
                                                                         capsys):
    out = tmp_path / "e.parquet"
    assert main(["embed", str(checkpoint), corpus.path, "--out", str(out)]) == 0
    before = out.stat().st_ino, out.stat().st_mtime_ns
    assert main(["embed", str(checkpoint), corpus.path, "--out", str(out)]) == 2
    assert "--out file exists; pass --overwrite to replace it" in one_line_error(capsys)
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == before
    assert main(["embed", str(checkpoint), corpus.path, "--out", str(out), "--overwrite"]) == 0
    assert (out.stat().st_ino, out.stat().st_mtime_ns) != before
    pd.testing.assert_frame_equal(pd.read_parquet(out), one_file, check_exact=True)
    # A table that is not embeddings, and a file that is not Parquet, are never replaced.
    for name, write in (("results.parquet", lambda p: pd.DataFrame({"a": [1]}).to_parquet(p)),
                        ("notes.parquet", lambda p: p.write_text("my notes"))):
        theirs = tmp_path / name
        write(theirs)
        content = theirs.read_bytes()
        assert main(["embed", str(checkpoint), corpus.path, "--out", str(theirs), "--overwrite"]) == 2
        assert "--overwrite replaces only a file that brainlm wrote" in one_line_error(capsys)
        assert theirs.read_bytes() == content


@pytest.mark.parametrize("where, message", [
    ("corpus/e.parquet", "the --out file is inside the input"),
    ("corpus/embeddings", "the output folder is inside the input"),
    ("corpus", "the output folder is the input"),
    (".", "the output folder contains the input"),
    ("model/e.parquet", "the --out file is inside the input"),
    ("model", "the output folder is the input"),
])
def test_an_output_that_is_in_or_around_an_input_is_refused(where, message, corpus, checkpoint, tmp_path, capsys):
    data = Path(shutil.copytree(corpus.path, tmp_path / "corpus"))
    model = Path(shutil.copytree(checkpoint, tmp_path / "model"))
    before = sorted(tmp_path.rglob("*"))
    code = main(["embed", str(model), str(data), "--out", str(tmp_path / where), "--overwrite"])
    err = one_line_error(capsys)
    assert code == 2 and message in err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_complete_dataset_is_replaced_only_with_overwrite(checkpoint, corpus, one_file, tmp_path, capsys):
    out = tmp_path / "done"
    assert embed_cli(checkpoint, corpus, out, "--quiet") == 0
    kept = shard_stats(out)
    assert embed_cli(checkpoint, corpus, out, "--quiet") == 2
    assert "the embeddings dataset here is complete; pass --overwrite" in one_line_error(capsys)
    assert shard_stats(out) == kept
    assert embed_cli(checkpoint, corpus, out, "--quiet", "--overwrite") == 0
    assert all(shard_stats(out)[k] != v for k, v in kept.items())   # written anew
    pd.testing.assert_frame_equal(read_embeddings(out), one_file, check_exact=True)


def test_overwrite_never_deletes_a_folder_brainlm_did_not_write_as_embeddings(checkpoint, corpus, tmp_path, capsys):
    users = tmp_path / "thesis"
    users.mkdir()
    (users / "chapter1.tex").write_text("years of work")
    results = tmp_path / "results"    # a folder brainlm wrote, but not embeddings
    results.mkdir()
    (results / OUTPUT_MARKER).write_text(json.dumps({"written_by": "brainlm", "what": "corpus"}))
    (results / "corpus.json").write_text("{}")
    for folder in (users, results):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert embed_cli(checkpoint, corpus, folder) == 2
        assert "--out is a folder that holds no embeddings dataset" in one_line_error(capsys)
        assert embed_cli(checkpoint, corpus, folder, "--overwrite") == 2
        assert "--overwrite replaces only embeddings that brainlm wrote" in one_line_error(capsys)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_empty_folder_is_used_and_a_file_is_not_a_folder(checkpoint, corpus, one_file, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert embed_cli(checkpoint, corpus, empty, "--quiet") == 0
    pd.testing.assert_frame_equal(read_embeddings(empty), one_file, check_exact=True)
    a_file = tmp_path / "embeddings"
    a_file.write_text("not a folder")
    assert embed_cli(checkpoint, corpus, a_file) == 2
    assert "--out exists and is not a folder" in one_line_error(capsys)
    assert a_file.read_text() == "not a folder"


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/e.parquet", "--shard", "0/2"], "--shard is for a dataset folder"),
    (["--out", "{tmp}/e.parquet", "--jobs", "2"], "--jobs is for a dataset folder"),
    (["--out", "{tmp}/ds", "--shard", "2/2"], "--shard '2/2'; expected K/N with 0 <= K < N"),
    (["--out", "{tmp}/ds", "--shard", "1/2", "--overwrite"], "--overwrite with --shard"),
    (["--out", "{tmp}/ds", "--jobs", "0"], "--jobs 0"),
    (["--out", "{tmp}/ds", "--shard-size", "0"], "--shard-size 0"),
    (["--out", "{tmp}/ds", "--plot", "site"], "--plot needs the embeddings in one file"),
])
def test_dataset_options_are_checked_before_any_work(args, message, checkpoint, corpus, tmp_path, capsys):
    code = main(["embed", str(checkpoint), corpus.path, *(a.format(tmp=tmp_path) for a in args)])
    assert code == 2 and message in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_folder_needs_a_corpus(checkpoint, hcp, tmp_path, capsys):
    np.save(tmp_path / "sub-01_bold.npy", hcp[0].timeseries)
    code = main(["embed", str(checkpoint), str(tmp_path / "sub-01_bold.npy"), "--tr", "0.72",
                 "--out", str(tmp_path / "ds")])
    assert code == 2 and "is made from one prepared corpus" in one_line_error(capsys)
    assert not (tmp_path / "ds").exists()


def test_the_python_api_and_shard_parsing(checkpoint, corpus, one_file, tmp_path):
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(BrainLMInputError, match="expected K/N"):
            parse_shard(bad)
    run = embed_dataset(checkpoint, corpus.path, tmp_path / "api", settings=DatasetSettings(shard_size=5))
    assert (run.shards, run.computed, run.found, run.complete, run.rows) == (3, 3, 0, True, 13)
    assert run.recordings == 13 and run.windows == one_file["n_windows"].sum() and run.missing == []
    pd.testing.assert_frame_equal(read_embeddings(tmp_path / "api"), one_file, check_exact=True)
    with pytest.raises(BrainLMInputError, match="no embeddings here"):
        read_embeddings(tmp_path / "nothing")
    with pytest.raises(BrainLMInputError, match="not a brainlm embeddings dataset folder"):
        read_embeddings(tmp_path)
