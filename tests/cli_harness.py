"""What the bad-input tests share: ``brainlm`` run as a user's shell would run it, a snapshot of a
folder's files, and small real inputs (a BIDS folder, two corpora, a one-epoch run).

The test modules that use the fixtures load this module as a plugin
(``pytest_plugins = ["cli_harness"]``). The fixtures that build something are session-scoped, so
the corpora and the run are built once however many of those modules run; every test that may
damage an input works on a private copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from brainlm.commands import main
from conftest import write_hcp_folder

#: ``prepare`` options for the BIDS folder of :func:`sources`.
PREPARE = ("--atlas", "aal2", "--min-trs", "50", "--quiet")

#: ``pretrain`` options for a model small enough to train an epoch in seconds on a CPU.
TINY = ("--window-trs", "40", "--patch-trs", "20", "--batch-size", "4", "--crops-per-recording", "4",
        "--quiet")

#: ``prepare`` options for a folder of :func:`npy_folder` files (no sidecars, no participants.tsv).
NPY = ("--atlas", "aal2", "--tr", "0.72", "--min-trs", "50", "--quiet", "--allow-missing-phenotypes")


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


def user_folder(path: Path, name: str, text: str = "years of work") -> Path:
    """A folder of the user's holding one file ``name`` (what brainlm must never delete)."""
    path.mkdir(parents=True)
    (path / name).write_text(text)
    return path


def npy_folder(root: Path, hcp, n: int = 3, trs: int = 300, edit=None) -> Path:
    """``n`` HCP recordings (``trs`` TRs) as ``sub-*_bold.npy``; ``edit(i, x)`` may change one."""
    import numpy as np

    root.mkdir()
    for i, rec in enumerate(hcp[:n]):
        x = rec.timeseries[:trs].astype(np.float64)
        np.save(root / f"sub-{rec.subject}_bold.npy", edit(i, x) if edit else x)
    return root


def resumable_copy(run: Path, tmp_path: Path) -> Path:
    """A private copy of a run folder, to resume (or damage) without touching the original."""
    return Path(shutil.copytree(run, tmp_path / "run"))


@pytest.fixture(scope="session")
def sources(tmp_path_factory, hcp):
    """3 subjects x 2 runs of 300 TRs (BIDS names, sidecars, participants.tsv)."""
    root = tmp_path_factory.mktemp("src")
    cut = [type(r)(r.timeseries[:600], r.tr, r.atlas, subject=r.subject) for r in hcp[:3]]
    return write_hcp_folder(root / "bids", cut)


@pytest.fixture
def src(sources, tmp_path):
    """A private copy of :func:`sources` (a test may try to damage it)."""
    return Path(shutil.copytree(sources, tmp_path / "bids"))


@pytest.fixture(scope="session")
def corpora(tmp_path_factory, hcp):
    """Two small corpora of the same 4 recordings (200 TRs), cleaned differently."""
    root = tmp_path_factory.mktemp("corpora")
    cut = [type(r)(r.timeseries[:200], r.tr, r.atlas, subject=r.subject) for r in hcp[:4]]
    src = write_hcp_folder(root / "bids", cut, runs=1)
    for name, extra in (("a", []), ("b", ["--psc"])):
        assert main([str(x) for x in ("prepare", src, "--out", root / name, "--atlas", "aal2",
                                      "--min-trs", "40", "--splits", "0.5,0.25,0.25", "--quiet", *extra)]) == 0
    return root / "a", root / "b"


@pytest.fixture(scope="session")
def started_run(corpora, tmp_path_factory):
    """A one-epoch run on corpus a (its folder: run_config.json, checkpoints/last.ckpt)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main([str(x) for x in ("pretrain", corpora[0], "--out", run, "--epochs", "1", *TINY)]) == 0
    return run


@pytest.fixture
def checkpoint(started_run, tmp_path):
    """A private copy of a real checkpoint (RUN/model of the one-epoch run)."""
    return Path(shutil.copytree(started_run / "model", tmp_path / "ckpt"))
