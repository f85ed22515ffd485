"""Resume through the CLI: ``pretrain --resume`` continues the same run on the same corpus, bit
for bit, and a folder becomes resumable only once training has started.

Every case runs through :func:`brainlm.commands.main`, as a user's shell would (see
``cli_harness``).
"""

from __future__ import annotations

import json

import pytest

# Before the import below: the harness's own checks (cli) then fail with the values, as a test's do.
pytest.register_assert_rewrite("cli_harness")

from brainlm.commands import main
from cli_harness import TINY, cli, resumable_copy

pytest_plugins = ["cli_harness"]


def test_resume_on_another_corpus_is_refused_naming_it(corpora, started_run, tmp_path, capsys):
    run = resumable_copy(started_run, tmp_path)
    config = json.loads((run / "run_config.json").read_text())
    assert len(config["corpus_sha256"]) == 64
    code, err = cli(capsys, "pretrain", corpora[1], "--out", run, "--epochs", "2", "--resume", *TINY)
    assert code == 2 and f"cannot resume on corpus {corpora[1]}" in err and "not the corpus this run" in err
    assert json.loads((run / "run_config.json").read_text()) == config


def test_a_run_from_before_the_corpus_identity_still_resumes(corpora, started_run, tmp_path, capsys):
    run = resumable_copy(started_run, tmp_path)
    config = json.loads((run / "run_config.json").read_text())
    del config["corpus_sha256"]
    (run / "run_config.json").write_text(json.dumps(config))
    assert cli(capsys, "pretrain", corpora[0], "--out", run, "--epochs", "2", "--resume", *TINY)[0] == 0


def test_a_run_becomes_resumable_only_once_training_started(corpora, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", corpora[0], "--out", run, "--epochs", "1", *TINY]
    for _ in range(2):  # the same command fails the same way: no "pass --resume"
        code, err = cli(capsys, *args, "--precision", "bogus")
        assert code == 2 and "--precision" in err and "bogus" in err and "--resume" not in err
        assert not (run / "run_config.json").exists()
    code, err = cli(capsys, *args, "--resume")
    assert code == 2 and "no run has started here" in err


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_weights(corpora, tmp_path):
    """A real subprocess is killed (SIGKILL) after its first epoch; ``--resume`` then finishes
    with weights bit-identical to a run that was never interrupted (CPU)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    args = ["pretrain", str(corpora[0]), "--epochs", "3", *TINY]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    cmd = [sys.executable, "-c", "import sys; from brainlm.commands import main; sys.exit(main(sys.argv[1:]))"]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*cmd, *args, "--out", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = cut / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and last.exists()
    assert torch.load(last, weights_only=True)["epoch"] < 2  # killed before the end
    assert not (cut / "model").exists()
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    full, resumed = load_file(tmp_path / "full/model/model.safetensors"), load_file(cut / "model/model.safetensors")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    a = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2  # last.ckpt after every epoch
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
