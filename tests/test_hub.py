"""Hugging Face Hub ids, offline: a Hub cache with huggingface_hub's own on-disk layout
(``models--ORG--REPO/snapshots/COMMIT/...``, ``refs/main``), built from the upstream fixtures and a
brainlm checkpoint, read with ``HF_HUB_OFFLINE=1``.

The whole road is checked: the id resolves through ``snapshot_download``, the import is exact
(the same tensors and outputs as the local import of tests/test_upstream.py), it is converted once
per revision, and every failure is one line that says what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants

import brainlm
from brainlm.commands import main
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints import upstream_import
from brainlm.checkpoints.folder import load_pretrained
from brainlm.checkpoints.hub import parse_hub_id
from brainlm.checkpoints.shipped import resolve_checkpoint
from brainlm.model.upstream import UpstreamBrainLM
from brainlm.checkpoints.upstream_import import import_from_hub, load_upstream

FIXTURES = Path(__file__).parent / "fixtures" / "upstream_brainlm"
PAPER, VIT = FIXTURES / "paper_13m_small", FIXTURES / "vitmae_small"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
COMMIT2 = "fedcba9876543210fedcba9876543210fedcba98"
CARD = "---\nlicense: cc-by-nc-nd-4.0\ntags:\n- fMRI\n---\n# BrainLM\n"


def add_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, Path | str], ref: str | None = "main"):
    """Put files into ``cache`` as huggingface_hub lays a download out: the content in
    ``blobs/``, a link to it in ``snapshots/COMMIT/PATH``, the branch in ``refs/``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for rel, src in files.items():
        data = src.encode() if isinstance(src, str) else src.read_bytes()
        blob = repo / "blobs" / f"{abs(hash((rel, commit))):x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hub cache holding vandijklab/brainlm (old_13M, vitmae_111M from the fixtures;
    a second revision of old_13M under the tag v2) and a brainlm checkpoint repository."""
    home = tmp_path / "hf"
    cache = home / "hub"
    add_snapshot(cache, "vandijklab/brainlm", COMMIT, {
        "README.md": CARD,
        "old_13M/config.json": PAPER / "config.json", "old_13M/model.safetensors": PAPER / "model.safetensors",
        "vitmae_111M/config.json": VIT / "config.json", "vitmae_111M/model.safetensors": VIT / "model.safetensors"})
    add_snapshot(cache, "vandijklab/brainlm", COMMIT2, {
        "README.md": CARD,
        "old_13M/config.json": PAPER / "config.json", "old_13M/model.safetensors": PAPER / "model.safetensors"},
        ref="v2")
    ckpt = resolve_checkpoint("hcp-small")
    add_snapshot(cache, "someone/brainlm-hcp", COMMIT, {f"model/{f.name}": f for f in ckpt.iterdir() if f.is_file()})
    # huggingface_hub reads HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported: set both
    # the environment (for subprocesses) and its constants (for this one).
    for key, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BRAINLM_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def test_parse_hub_id():
    assert parse_hub_id("hf://vandijklab/brainlm/old_13M") == parse_hub_id("vandijklab/brainlm",
                                                                                           subfolder="old_13M")
    h = parse_hub_id("hf://vandijklab/brainlm@v2/old_13M")
    assert (h.repo_id, h.subfolder, h.revision) == ("vandijklab/brainlm", "old_13M", "v2")
    assert str(h) == "hf://vandijklab/brainlm@v2/old_13M"
    for bad in ("hf://brainlm", "hf://a/b@/c", "hf://a/../b"):
        with pytest.raises(BrainLMInputError, match="Hub id"):
            parse_hub_id(bad)
    with pytest.raises(BrainLMInputError, match="give one"):
        parse_hub_id("hf://a/b/c", subfolder="d")


def test_brainlm_checkpoint_by_hub_id(hub_cache):
    path = resolve_checkpoint("hf://someone/brainlm-hcp/model")
    assert path == hub_cache / "hub" / "models--someone--brainlm-hcp" / "snapshots" / COMMIT / "model"
    model = brainlm.load("hf://someone/brainlm-hcp/model")
    shipped = load_pretrained("hcp-small")
    for k, v in shipped.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    # every CLI CHECKPOINT argument: `brainlm info` through the same resolution
    assert brainlm.info("hf://someone/brainlm-hcp/model")["parameters"] == sum(
        p.numel() for p in shipped.parameters())


def test_upstream_by_hub_id_is_exact_and_converted_once(hub_cache, monkeypatch, capsys):
    done = import_from_hub("vandijklab/brainlm", subfolder="old_13M")
    assert done.converted and done.snapshot.commit == COMMIT
    assert done.path.is_relative_to(hub_cache / "brainlm")
    assert "CC BY-NC-ND 4.0" in done.licence_line
    # exact: the same tensors as the local import of the same folder, hence upstream's outputs
    # (tests/test_upstream.py checks those against the original code)
    ref, _ = load_upstream(PAPER)
    model = brainlm.load("hf://vandijklab/brainlm/old_13M")
    assert type(model) is UpstreamBrainLM
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    inp = np.load(PAPER / "inputs.npz")
    x = torch.from_numpy(inp["signal_vectors"]).transpose(1, 2)
    xyz = torch.from_numpy(inp["xyz_vectors"])
    with torch.no_grad():
        assert torch.equal(model.forward_encoder(x, xyz, None).latent, ref.forward_encoder(x, xyz, None).latent)
    record = json.loads((done.path / "upstream_import.json").read_text())
    assert record["licence"] == "cc-by-nc-nd-4.0"
    assert record["hub"] == {"id": "hf://vandijklab/brainlm/old_13M", "repo_id": "vandijklab/brainlm",
                             "subfolder": "old_13M", "revision": None, "commit": COMMIT}

    # cached once per revision: nothing reads the weights again ...
    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(upstream_import, "load_upstream", no_conversion)
    stamp = (done.path / "model.safetensors").stat().st_mtime_ns
    again = import_from_hub("hf://vandijklab/brainlm/old_13M")
    assert not again.converted and again.path == done.path
    assert brainlm.load("hf://vandijklab/brainlm/old_13M") is not None
    assert main(["import-upstream", "vandijklab/brainlm", "--subfolder", "old_13M"]) == 0
    out = capsys.readouterr().out
    assert "already converted" in out and "CC BY-NC-ND 4.0" in out
    assert (done.path / "model.safetensors").stat().st_mtime_ns == stamp
    # ... but another revision is another conversion
    monkeypatch.setattr(upstream_import, "load_upstream", load_upstream)
    v2 = import_from_hub("vandijklab/brainlm", subfolder="old_13M", revision="v2")
    assert v2.converted and v2.snapshot.commit == COMMIT2 and v2.path != done.path


def test_import_upstream_command_offline(hub_cache, tmp_path):
    """The "done when" of the issue, in a fresh process that only has the environment: the Hub
    cache, HF_HUB_OFFLINE=1, no network."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "brainlm.commands", "import-upstream", "vandijklab/brainlm", "--subfolder", "old_13M"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "licence of the weights (vandijklab/brainlm): CC BY-NC-ND 4.0" in run.stdout
    assert "use it as a checkpoint: hf://vandijklab/brainlm/old_13M" in run.stdout
    # the hf:// id of the converted model now works for a CHECKPOINT argument
    info = subprocess.run([sys.executable, "-m", "brainlm.commands", "info", "hf://vandijklab/brainlm/old_13M",
                           "--json"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["architecture"] == "upstream-brainlm" and summary["upstream"]["licence"] == "cc-by-nc-nd-4.0"
    # and --out writes a checkpoint with the same record
    assert main(["import-upstream", "hf://vandijklab/brainlm/vitmae_111M", "--out", str(tmp_path / "vit")]) == 0
    assert json.loads((tmp_path / "vit" / "upstream_import.json").read_text())["hub"]["commit"] == COMMIT


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_hub_failures_say_what_to_do(hub_cache, capsys):
    with pytest.raises(BrainLMInputError) as e:
        resolve_checkpoint("hf://nobody/nothing/model")
    assert "hf download nobody/nothing --include 'model/*'" in _one_line(e) and "HF_HUB_OFFLINE" in _one_line(e)
    with pytest.raises(BrainLMInputError) as e:
        import_from_hub("vandijklab/brainlm", subfolder="old_99M")
    assert "no checkpoint (config.json) in subfolder 'old_99M'" in _one_line(e)
    assert "old_13M, vitmae_111M" in _one_line(e) and "--subfolder" in _one_line(e)
    with pytest.raises(BrainLMInputError) as e:
        import_from_hub("vandijklab/brainlm", subfolder="old_13M", revision="v9")
    assert "--revision v9" in _one_line(e)
    # not converted yet: the CLI's CHECKPOINT argument says how
    with pytest.raises(BrainLMInputError) as e:
        resolve_checkpoint("hf://vandijklab/brainlm/vitmae_111M")
    assert "brainlm import-upstream vandijklab/brainlm --subfolder vitmae_111M" in _one_line(e)
    with pytest.raises(BrainLMInputError, match="nothing to import"):
        import_from_hub("hf://someone/brainlm-hcp/model")
    # the CLI prints it as one line with status 2
    assert main(["import-upstream", "vandijklab/brainlm", "--subfolder", "old_99M"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "old_99M" in err


def test_missing_repository_online_is_one_line(monkeypatch):
    """What huggingface_hub raises for an unknown repository becomes one line (no network
    needed: the error is raised by a stand-in for snapshot_download)."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    class Response:
        status_code, headers, url, request = 404, {}, "https://huggingface.co/api/models/x/y", None

    def missing(*a, **k):
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found", response=Response())

    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    with pytest.raises(BrainLMInputError) as e:
        resolve_checkpoint("hf://x/y")
    assert "no model repository 'x/y' on the Hub" in _one_line(e)
