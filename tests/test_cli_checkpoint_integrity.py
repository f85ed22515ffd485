"""Checkpoint integrity: a checkpoint records a digest of every file, and an edited, truncated,
foreign or malformed file (model folder or training state) is refused in one line naming it,
never unpickled and never half-loaded.

Every CLI case runs through :func:`brainlm.commands.main`, as a user's shell would (see
``cli_harness``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Before the import below: the harness's own checks (cli) then fail with the values, as a test's do.
pytest.register_assert_rewrite("cli_harness")

from brainlm.errors import BrainLMInputError
from cli_harness import TINY, cli, resumable_copy, tree

pytest_plugins = ["cli_harness"]


# --- The model folder: digests, edits, missing and non-finite files ---------------------------

def test_a_checkpoint_records_a_digest_of_every_file(checkpoint):
    from brainlm.checkpoints.folder import load_pretrained, sha256_file

    digests = json.loads((checkpoint / "digests.json").read_text())["sha256"]
    assert set(digests) == {"model.safetensors", "config.json", "contract.json", "atlas.json",
                            "spatial_baseline.safetensors"}
    assert all(sha256_file(checkpoint / name) == d for name, d in digests.items())
    assert load_pretrained(checkpoint).contract is not None


@pytest.mark.parametrize("edit", ["heads", "xyz_scale_mm", "median", "atlas"])
def test_an_edited_checkpoint_file_is_refused_naming_it(edit, checkpoint, corpora, tmp_path, capsys):
    name = {"heads": "config.json", "xyz_scale_mm": "config.json", "median": "contract.json",
            "atlas": "atlas.json"}[edit]
    content = json.loads((checkpoint / name).read_text())
    if edit in ("heads", "xyz_scale_mm"):
        content["model"][edit] = {"heads": 8, "xyz_scale_mm": 50.0}[edit]
    elif edit == "median":
        content["median"] = [m + 5 for m in content["median"]]
    else:
        content["xyz_mm"][0] = [0.0, 0.0, 0.0]
    (checkpoint / name).write_text(json.dumps(content))
    out = tmp_path / "e.parquet"
    code, err = cli(capsys, "embed", checkpoint, corpora[0], "--out", out)
    assert code == 2 and f"{checkpoint / name}: {name} was altered" in err
    assert not out.exists()


def test_a_checkpoint_without_contract_loads_only_as_a_bare_model(checkpoint):
    from brainlm import BrainLMInputError
    from brainlm.checkpoints.folder import load_pretrained

    (checkpoint / "contract.json").unlink()
    with pytest.raises(BrainLMInputError, match="lacks contract.json"):
        load_pretrained(checkpoint)
    assert load_pretrained(checkpoint, bare=True).contract is None


@pytest.mark.parametrize("edit", ["heads 4 -> 8", "contract medians + 5", "input gain 1 -> 5"])
def test_removing_the_digests_does_not_let_an_edited_checkpoint_load(edit, checkpoint, corpora, tmp_path, capsys):
    """Issue 25: deleting "digests" from config.json (and digests.json) made a checkpoint load as
    one from before digests, with only its weights checked: every edit then went through."""
    from brainlm.checkpoints.folder import load_pretrained

    cfg = json.loads((checkpoint / "config.json").read_text())
    if edit.startswith("heads"):
        cfg["model"]["heads"] = 8
    contract = json.loads((checkpoint / "contract.json").read_text())
    if edit.startswith("contract"):
        contract["median"] = [v + 5 for v in contract["median"]]
    if edit.startswith("input gain"):  # where an imported checkpoint keeps it
        contract["scaler_fit"] = {**(contract.get("scaler_fit") or {}), "input_gain": 5.0}
    del cfg["digests"]
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    (checkpoint / "contract.json").write_text(json.dumps(contract))
    for name in ("digests.json", "spatial_baseline.safetensors"):
        (checkpoint / name).unlink()
    before = tree(checkpoint)
    code, err = cli(capsys, "embed", checkpoint, corpora[0], "--out", tmp_path / "e.parquet")
    assert code == 2 and "names no digests.json" in err and "record_digests" in err
    assert not (tmp_path / "e.parquet").exists() and tree(checkpoint) == before
    with pytest.raises(BrainLMInputError, match="names no digests.json"):
        load_pretrained(checkpoint)


def test_an_old_checkpoint_loads_once_its_files_are_vouched_for(checkpoint):
    from brainlm.checkpoints.folder import load_pretrained, record_digests

    cfg = json.loads((checkpoint / "config.json").read_text())
    del cfg["digests"]
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    (checkpoint / "digests.json").unlink()
    (checkpoint / "spatial_baseline.safetensors").unlink()  # written by later versions only
    with pytest.raises(BrainLMInputError, match="names no digests.json"):
        load_pretrained(checkpoint)
    record_digests(checkpoint)
    assert load_pretrained(checkpoint).contract is not None
    with pytest.raises(BrainLMInputError, match="already has digests.json"):
        record_digests(checkpoint)


def test_non_finite_weights_are_refused_at_load(checkpoint):
    """Issue 25: NaN weights with re-computed digests loaded and gave all-NaN embeddings."""
    from safetensors.torch import load_file, save_file

    from brainlm.checkpoints.folder import load_pretrained, record_digests

    weights = load_file(checkpoint / "model.safetensors")
    weights["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["sha256"] = __import__("brainlm.checkpoints.folder", fromlist=["sha256_file"]).sha256_file(
        checkpoint / "model.safetensors")
    del cfg["digests"]
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    (checkpoint / "digests.json").unlink()
    record_digests(checkpoint)  # every digest is right: only the values are wrong
    with pytest.raises(BrainLMInputError, match=r"NaN or infinite values \(blocks.0.attn.qkv.weight"):
        load_pretrained(checkpoint)


@pytest.mark.parametrize("config, message", [
    ([], "config.json holds a list"),
    ({"format": "brainlm-checkpoint", "model": None}, "no model settings"),
    ("heads: many", "cannot build a model"),
])
def test_a_malformed_config_json_is_one_line_naming_the_checkpoint(config, message, checkpoint, corpora, tmp_path, capsys):
    if config == "heads: many":  # an old checkpoint (digests vouched for) with a broken setting
        from brainlm.checkpoints.folder import record_digests

        config = json.loads((checkpoint / "config.json").read_text())
        config["model"]["heads"] = "many"
        del config["digests"]
        (checkpoint / "digests.json").unlink()
        (checkpoint / "config.json").write_text(json.dumps(config))
        record_digests(checkpoint)
    else:
        (checkpoint / "config.json").write_text(json.dumps(config))
    code, err = cli(capsys, "embed", checkpoint, corpora[0], "--out", tmp_path / "e.parquet")
    assert code == 2 and message in err and str(checkpoint) in err


# --- The training state (RUN/checkpoints/last.ckpt) read by --resume --------------------------

@pytest.mark.parametrize("damage", ["truncated", "foreign", "empty"])
def test_resume_from_a_damaged_last_checkpoint_names_the_file(damage, corpora, started_run, tmp_path, capsys):
    import torch

    run = resumable_copy(started_run, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "foreign":
        torch.save({"state_dict": {"weight": torch.zeros(3)}, "loops": {}}, last)
    else:
        last.write_bytes(b"")
    code, err = cli(capsys, "pretrain", corpora[0], "--out", run, "--epochs", "2", "--resume", *TINY)
    assert code == 2 and str(last) in err
    assert ("damaged or truncated" in err) if damage != "foreign" else ("not a training state" in err)


class _Payload:
    """A pickle that runs a command when it is loaded: what a planted checkpoint would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("form", ["torch-zip", "raw-pickle"])
def test_a_planted_pickle_in_the_training_state_is_never_unpickled(form, corpora, started_run, tmp_path, capsys):
    import pickle

    import torch

    run = resumable_copy(started_run, tmp_path)
    last, marker = run / "checkpoints" / "last.ckpt", tmp_path / "payload-ran"
    state = {"state_dict": {}, "loops": {}, "payload": _Payload(marker)}
    if form == "torch-zip":
        torch.save(state, last)
    else:
        last.write_bytes(pickle.dumps(state))
    code, err = cli(capsys, "pretrain", corpora[0], "--out", run, "--epochs", "2", "--resume", *TINY)
    assert code == 2 and str(last) in err and "will not load" in err
    assert not marker.exists()
