"""Typed task results: what a task returns is what its file reads back as, and a renamed or
missing field fails where it is read (naming the field and the file), not in a report."""

import json

import numpy as np
import pytest
import torch

from brainlm.checkpoints.folder import save_pretrained
from brainlm.errors import BrainLMInputError
from brainlm.model import BrainLM, preset
from brainlm.report.layout import RESULT_FILES, RunLayout
from brainlm.tasks.group_attention import GroupAttentionSettings
from brainlm.tasks.networks import NetworksResult, NetworksSettings
from brainlm.tasks.reconstruction import (MethodScores, ParcelTable, RatioScores, ReconstructionResult,
                                          ReconstructionSettings, evaluate_reconstruction)
from brainlm.tasks.results import TaskResult


@pytest.fixture(scope="module")
def result_folder(hcp_corpus, tmp_path_factory):
    """A reconstruction of one HCP recording at one mask ratio by a fresh ``tiny`` model, written
    where a run folder keeps it; returns (the run folder, the returned result)."""
    root = tmp_path_factory.mktemp("typed")
    torch.manual_seed(0)
    save_pretrained(BrainLM(preset("tiny"), contract=hcp_corpus.contract, atlas=hcp_corpus.atlas), root / "ckpt")
    run = root / "run"
    result = evaluate_reconstruction(root / "ckpt", hcp_corpus, ReconstructionSettings(ratios=(0.75,), max_recordings=1),
                                     out=RunLayout(run).reconstruction)
    return run, result


def _saved(run) -> dict:
    return json.loads((RunLayout(run).reconstruction / "reconstruction.json").read_text())


def test_the_result_reads_back_from_its_file_as_the_same_typed_object(result_folder):
    run, result = result_folder
    back = RunLayout(run).read_reconstruction()
    assert isinstance(back, ReconstructionResult)
    assert isinstance(back.parcels, ParcelTable) and isinstance(back.results[0], RatioScores)
    assert isinstance(back.at(0.75).methods["brainlm"], MethodScores)
    # JSON keeps Python floats exactly; the in-memory result holds the same numbers.
    for m in result.methods:
        assert back.at(0.75).methods[m].r2 == result.at(0.75).methods[m].r2
        assert back.at(0.75).methods[m].per_parcel == result.at(0.75).methods[m].per_parcel
    assert back.to_json() == ReconstructionResult.from_json(json.loads(result.dumps())).to_json()
    assert _saved(run)["schema"] == "reconstruction" and _saved(run)["schema_version"] == 1
    # The mapping view is the JSON form, for scripts written against the result dictionaries.
    assert result["methods"] == result.methods and result["results"][0]["mask_ratio"] == 0.75
    best = back.at(0.75).best_baseline()
    assert best != "brainlm" and back.at(0.75).methods[best].r2 == max(
        s.r2 for m, s in back.at(0.75).methods.items() if m != "brainlm" and s.r2 is not None)


def test_a_renamed_field_fails_naming_the_field_and_the_file(result_folder, tmp_path):
    run, _ = result_folder
    path = tmp_path / "reconstruction.json"
    data = _saved(run)
    data["n_windows"] = data.pop("windows")
    path.write_text(json.dumps(data))
    with pytest.raises(BrainLMInputError, match=r"lacks field\(s\) \['windows'\] and has unknown field\(s\) "
                                                r"\['n_windows'\]") as e:
        ReconstructionResult.read(path)
    assert str(path) in str(e.value)
    # Deep inside: a method's score renamed.
    data = _saved(run)
    data["results"][0]["methods"]["brainlm"]["R2"] = data["results"][0]["methods"]["brainlm"].pop("r2")
    path.write_text(json.dumps(data))
    with pytest.raises(BrainLMInputError, match=r"reconstruction\.results\[0\]\.methods\.brainlm lacks field\(s\) "
                                                r"\['r2'\]"):
        ReconstructionResult.read(path)


def test_another_schema_or_version_is_refused_and_an_older_file_without_one_reads(result_folder, tmp_path):
    run, _ = result_folder
    path = tmp_path / "reconstruction.json"
    data = _saved(run)
    path.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(BrainLMInputError, match="schema version 99; this brainlm reads version 1"):
        ReconstructionResult.read(path)
    with pytest.raises(BrainLMInputError, match="a 'reconstruction' result, expected 'networks'"):
        NetworksResult.from_json(data, str(path))
    # Files written before results were typed have the same fields and no schema key.
    older = {k: v for k, v in data.items() if k not in ("schema", "schema_version")}
    assert ReconstructionResult.from_json(older).to_json() == ReconstructionResult.from_json(data).to_json()


def test_the_run_layout_reads_what_is_there_and_names_a_damaged_file(result_folder, tmp_path):
    run, result = result_folder
    layout = RunLayout(run)
    assert layout.read_forecasting() is None and layout.read_attention() is None and layout.read_networks() == {}
    assert [type(r) for r in layout.read_all()] == [ReconstructionResult]
    damaged = RunLayout(tmp_path)
    damaged.reconstruction.mkdir(parents=True)
    (damaged.reconstruction / "reconstruction.json").write_text('{"task": "reconstruction", ')
    with pytest.raises(BrainLMInputError, match="not valid JSON") as e:
        damaged.read_reconstruction()
    assert "reconstruction.json" in str(e.value)
    # Every file a task writes into a results folder is read back as a typed result.
    assert all(issubclass(cls, TaskResult) and cls.KIND for cls in RESULT_FILES.values())
    assert len({cls.KIND for cls in RESULT_FILES.values()}) == len(RESULT_FILES)


def test_settings_are_one_object_or_keywords_never_both(result_folder, hcp_corpus):
    run, _ = result_folder
    ckpt = run.parent / "ckpt"
    with pytest.raises(BrainLMInputError, match="not both"):
        evaluate_reconstruction(ckpt, hcp_corpus, ReconstructionSettings(), seed=1)
    with pytest.raises(BrainLMInputError, match=r"unknown option\(s\) \['sed'\]"):
        evaluate_reconstruction(ckpt, hcp_corpus, sed=1)
    with pytest.raises(BrainLMInputError, match="expected distinct fractions"):
        ReconstructionSettings(ratios=(0.5, 0.5))
    with pytest.raises(BrainLMInputError, match="n_neighbors is 0"):
        NetworksSettings(n_neighbors=0)
    with pytest.raises(BrainLMInputError, match="unit is 'site'"):
        GroupAttentionSettings(unit="site")
    assert ReconstructionSettings(ratios=[0.2, 0.75]).ratios == (0.2, 0.75)
    # Keywords build the same settings as the object: the same masks, the same numbers.
    a = evaluate_reconstruction(ckpt, hcp_corpus, ratios=(0.5,), max_recordings=1, seed=3)
    b = evaluate_reconstruction(ckpt, hcp_corpus, ReconstructionSettings(ratios=(0.5,), max_recordings=1, seed=3))
    np.testing.assert_array_equal(a.at(0.5).methods["brainlm"].per_parcel["mse"],
                                  b.at(0.5).methods["brainlm"].per_parcel["mse"])
