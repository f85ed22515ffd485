"""Bad or unusual input through the CLI, end to end (issue 18): for each case the exit status,
the one-line message and what is left on disk.

Every case runs through :func:`brainlm.commands.main`, as a user's shell would. The inputs are
tiny (a few HCP recordings, cut short) so the table stays in the fast tier.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from brainlm.commands import main
from brainlm.data.atomic import OUTPUT_MARKER
from brainlm.data.corpus import Corpus
from conftest import write_hcp_folder


def cli(capsys, *args) -> tuple[int, str]:
    """Exit status and stderr of ``brainlm ARGS``; stderr must be one line without a traceback."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
    return code, err


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (what must survive a refused command)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, hcp):
    """3 subjects x 2 runs of 300 TRs (BIDS names, sidecars, participants.tsv)."""
    root = tmp_path_factory.mktemp("src")
    cut = [type(r)(r.timeseries[:600], r.tr, r.atlas, subject=r.subject) for r in hcp[:3]]
    return write_hcp_folder(root / "bids", cut)


@pytest.fixture
def src(sources, tmp_path):
    """A private copy of :func:`sources` (a test may try to damage it)."""
    return Path(shutil.copytree(sources, tmp_path / "bids"))


def user_folder(path: Path, name: str, text: str = "years of work") -> Path:
    path.mkdir(parents=True)
    (path / name).write_text(text)
    return path


PREPARE = ("--atlas", "aal2", "--min-trs", "50", "--quiet")


# --- items 1-2: data loss --------------------------------------------------------------------

@pytest.mark.parametrize("command", ["networks", "attention"])
@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_attention_commands_never_replace_a_users_folder(command, flag, src, tmp_path, capsys):
    paper = user_folder(tmp_path / "paper", "paper.tex")
    ckpt = tmp_path / "ckpt"  # never read: the output folder is refused before any work
    args = [command, ckpt, src, "--out", paper, *flag]
    if command == "attention":
        args = [command, ckpt, src, "--group-by", "sex", "--out", paper, *flag]
    code, err = cli(capsys, *args)
    assert code == 2
    assert ("pass --overwrite to replace it" in err) if not flag else (OUTPUT_MARKER in err)
    assert tree(paper) == {"paper.tex": b"years of work"}


@pytest.mark.parametrize("command", ["networks", "attention"])
def test_attention_commands_never_write_over_their_inputs(command, src, tmp_path, capsys):
    ckpt = user_folder(tmp_path / "ckpt", "config.json", "{}")
    (ckpt / OUTPUT_MARKER).write_text("{}")  # a checkpoint brainlm wrote: still an input
    before = tree(ckpt)
    extra = ["--group-by", "sex"] if command == "attention" else []
    code, err = cli(capsys, command, ckpt, src, *extra, "--out", ckpt, "--overwrite")
    assert code == 2 and "the output folder is the input" in err
    assert tree(ckpt) == before


def test_prepare_overwrite_never_deletes_the_sources(src, capsys):
    before = tree(src)
    code, err = cli(capsys, "prepare", src, "--out", src, "--overwrite", *PREPARE)
    assert code == 2 and "the output folder is the input" in err
    assert tree(src) == before
    assert not src.with_name("bids.partial").exists()


def test_prepare_never_writes_inside_or_around_a_source(src, tmp_path, capsys):
    before = tree(src)
    code, err = cli(capsys, "prepare", src, "--out", src / "corpus", *PREPARE)
    assert code == 2 and "is inside the input" in err
    code, err = cli(capsys, "prepare", src / "sub-100307", "--out", src, "--overwrite", *PREPARE)
    assert code == 2 and "contains the input" in err
    assert tree(src) == before


def test_prepare_overwrite_never_deletes_an_unrelated_folder(src, tmp_path, capsys):
    results = user_folder(tmp_path / "results", "thesis.docx")
    code, err = cli(capsys, "prepare", src, "--out", results, *PREPARE)
    assert code == 2 and "pass --overwrite to replace it" in err
    code, err = cli(capsys, "prepare", src, "--out", results, "--overwrite", *PREPARE)
    assert code == 2 and OUTPUT_MARKER in err and "is kept" in err
    assert tree(results) == {"thesis.docx": b"years of work"}
    assert not (tmp_path / "results.partial").exists()


def test_prepare_overwrite_replaces_its_own_corpus(src, tmp_path, capsys):
    out = tmp_path / "corpus"
    assert cli(capsys, "prepare", src, "--out", out, *PREPARE)[0] == 0
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["written_by"] == "brainlm" and marker["what"] == "corpus"
    code, err = cli(capsys, "prepare", src, "--out", out, *PREPARE)
    assert code == 2 and "pass --overwrite to replace it" in err
    assert cli(capsys, "prepare", src, "--out", out, "--psc", "--overwrite", *PREPARE)[0] == 0
    assert Corpus(out).contract.percent_signal_change
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bids", "corpus"]


def test_prepare_restart_never_deletes_a_folder_in_the_way_of_its_build(src, tmp_path, capsys):
    other = user_folder(tmp_path / "corpus.partial", "notes.md")
    code, err = cli(capsys, "prepare", src, "--out", tmp_path / "corpus", "--restart", *PREPARE)
    assert code == 2 and "not an unfinished brainlm build" in err
    assert tree(other) == {"notes.md": b"years of work"}


def test_evaluate_and_forecast_refuse_a_users_folder_even_with_overwrite(src, tmp_path, capsys):
    paper = user_folder(tmp_path / "paper", "paper.tex")
    for args in (["evaluate", "recon", tmp_path / "ckpt", src, "--out", paper, "--overwrite"],
                 ["forecast", "finetune", tmp_path / "ckpt", src, "--out", paper, "--overwrite"]):
        code, err = cli(capsys, *args)
        assert code == 2 and OUTPUT_MARKER in err
    assert tree(paper) == {"paper.tex": b"years of work"}


def test_simulate_overwrite_replaces_only_its_own_cohort(tmp_path, capsys):
    paper = user_folder(tmp_path / "paper", "paper.tex")
    args = ["simulate", "--subjects", "2", "--n-trs", "20", "--quiet"]
    code, err = cli(capsys, *args, "--out", paper, "--overwrite")
    assert code == 2 and OUTPUT_MARKER in err
    assert tree(paper) == {"paper.tex": b"years of work"}
