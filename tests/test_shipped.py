"""The pretrained checkpoint shipped in the package: listed, loadable by name, usable by tasks."""

import dataclasses
import json
import re

import numpy as np
import pytest

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.samples import HCP7_TR, load_schaefer100_rest
from brainlm.checkpoints.folder import load_pretrained
from brainlm.checkpoints.shipped import resolve_checkpoint, shipped_models
from brainlm.data.atlas import Atlas
from brainlm.data.corpus import Corpus
from brainlm.tasks.inference import encode
from brainlm.tasks.model_input import iter_model_input, load_model, model_scaler
from brainlm.tasks.networks import identify_networks


def test_brainlm_models_lists_hcp_small_with_its_card(capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    entry = next(m for m in listed if m["name"] == "hcp-small")
    path = resolve_checkpoint("hcp-small")
    assert entry["path"] == str(path) and (path / "config.json").is_file()
    for field in ("summary", "architecture", "trained_on", "training", "scores", "limits"):
        assert entry[field], field
    assert any("never score it on the embedded HCP recordings" in t for t in entry["limits"])
    size = sum(f.stat().st_size for f in path.parent.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    log = (path.parent / "training_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,val/masked_mse") and len(log) == entry["training"]["epochs"] + 1
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and "MODEL_CARD.md" in out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("hcp-")] == ["hcp-fresh", "hcp-small"]


def test_shipped_model_loads_by_name_and_runs_on_unseen_data():
    model = load_model("hcp-small")
    assert model.atlas.name == "aal2" and model.contract.percent_signal_change
    assert [m.name for m in shipped_models()] == ["hcp-fresh", "hcp-small"]
    assert model.config.decoder_attention == "axial"
    # Networks on a run and an atlas it never saw: the model reads the signal (an untrained
    # model of the same architecture is scored beside it).
    res = identify_networks("hcp-small", [load_schaefer100_rest()], transfer_atlas=True, target_tr=HCP7_TR)
    acc = {(m["model"], m["features"]): m["knn_accuracy"] for m in res["methods"]}
    assert res["checkpoint"] == "hcp-small"
    # The card's scores reproduce (within 3 parcels of 100: attention sums depend on the thread
    # count), and the model reads co-fluctuation: its latent connectivity beats the untrained
    # model's and collapses on time-shifted input.
    card = json.loads((resolve_checkpoint("hcp-small").parent / "card.json").read_text())
    claimed = next(v for k, v in card["scores"].items() if k.startswith("Schaefer-100 run"))
    found = re.findall(r"(\w+) ([0-9.]+) \(untrained ([0-9.]+)\)", claimed)
    assert {f for f, _, _ in found} == {"cls_attention", "parcel_attention", "token_embedding", "latent_connectivity"}
    for feature, score, untrained in found:
        assert acc[("BrainLM", feature)] == pytest.approx(float(score), abs=0.03), feature
        assert acc[("BrainLM untrained", feature)] == pytest.approx(float(untrained), abs=0.03), feature
    assert acc[("BrainLM", "latent_connectivity")] > acc[("BrainLM untrained", "latent_connectivity")] + 0.05
    assert acc[("BrainLM, time-shifted input", "latent_connectivity")] < res["chance"]["majority_accuracy"]
    (emb,) = encode("hcp-small", load_schaefer100_rest(), transfer_atlas=True, target_tr=HCP7_TR)
    assert np.isfinite(emb["cls"]).all() and emb["cls"].shape == (model.config.dim,)


def test_info_describes_the_shipped_model_by_name(capsys):
    assert main(["info", "hcp-small"]) == 0
    out = capsys.readouterr().out
    assert "brainlm, 451,892 parameters" in out and "atlas: aal2 (94 parcels)" in out
    assert "percent signal change True" in out and "statistics pooled over 6 pretraining recordings" in out
    assert "zero-shot spatial baseline stored: yes" in out
    assert "brainlm prepare DATA --atlas aal2 --like hcp-small --out CORPUS" in out
    assert "hybrid" not in out
    assert main(["info", "hcp-fresh"]) == 0
    out = capsys.readouterr().out
    assert "statistics each recording's own (those pooled over 6 pretraining recordings kept for reference)" in out
    assert "hybrid: the decoder corrects the spatial estimate of its 94 pretraining parcels (prior dropout 0.5" in out


def test_a_local_folder_wins_and_unknown_names_list_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hcp-small").mkdir()
    with pytest.raises(BrainLMInputError, match="checkpoint lacks config.json"):
        load_pretrained("hcp-small")  # an explicit path is never reinterpreted as a name
    with pytest.raises(BrainLMInputError, match=r"not the name of a shipped model \(shipped: hcp-fresh, hcp-small"):
        load_pretrained("hcp-large")


def test_preprocess_takes_a_shipped_models_name(hcp):
    import brainlm

    by_name = brainlm.preprocess("hcp-small", hcp[0])
    np.testing.assert_array_equal(by_name, brainlm.preprocess(load_model("hcp-small"), hcp[0]))
    assert by_name.shape == (1200, 94) and by_name.dtype == np.float32
    with pytest.raises(BrainLMInputError, match="no-such-model"):
        brainlm.preprocess("no-such-model", hcp[0])
    # A pooled checkpoint has no statistics for another atlas's parcels: it says so, and what to do.
    with pytest.raises(BrainLMInputError, match="rest01.*'aal2' \\(94\\).*'schaefer100' \\(100 parcels\\).*as a corpus.*hcp-fresh"):
        brainlm.preprocess("hcp-small", load_schaefer100_rest(), transfer_atlas=True)
    # The same count in another order is not AAL2 either: scaling by position would be silently wrong.
    aal2 = hcp[0].atlas
    flipped = Atlas.from_frame(aal2.to_frame().iloc[::-1].reset_index(drop=True), "aal2-reversed")
    rec = dataclasses.replace(hcp[0], timeseries=np.asarray(hcp[0].timeseries)[:, ::-1], atlas=flipped,
                              source="reversed.npy")
    with pytest.raises(BrainLMInputError, match="reversed.npy.*'aal2-reversed' \\(94 parcels\\)"):
        brainlm.preprocess("hcp-small", rec, transfer_atlas=True)
    # A checkpoint scaled per recording needs no stored statistics: it takes it.
    assert brainlm.preprocess("hcp-fresh", rec, transfer_atlas=True).shape == (1200, 94)


def test_hcp_fresh_is_the_fresh_cohort_recipe_and_takes_demeaned_and_zscored_files(hcp, tmp_path, capsys):
    model = load_model("hcp-fresh")
    assert model.contract.per_recording and model.atlas.name == "aal2"
    assert model.config.spatial_prior_parcels == 94 and model.config.prior_dropout == 0.5
    card = json.loads((resolve_checkpoint("hcp-fresh").parent / "card.json").read_text())
    assert card["training"]["epochs"] == 50 and "hybrid" in card["summary"]
    assert any("never score it on the embedded HCP recordings" in t for t in card["limits"])
    # Raw, demeaned and z-scored files of one recording reach it as the same input (prepare
    # --like), where hcp-small refuses the demeaned ones.
    rec = hcp[0]
    raw = np.asarray(rec.timeseries, dtype=np.float64)
    centred = raw - raw.mean(axis=0)
    for name, data in (("raw", raw), ("demeaned", centred), ("zscored", centred / centred.std(axis=0))):
        d = tmp_path / name / "sub-01" / "func"
        d.mkdir(parents=True)
        np.save(d / "sub-01_task-rest_bold.npy", data)
        (d / "sub-01_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": rec.tr}))
    inputs = {}
    for name in ("raw", "demeaned", "zscored"):
        assert main(["prepare", str(tmp_path / name), "--atlas", "aal2", "--like", "hcp-fresh",
                     "--out", str(tmp_path / f"corpus-{name}"), "--quiet"]) == 0
        corpus = Corpus(tmp_path / f"corpus-{name}")
        inputs[name] = next(iter_model_input(corpus, [0], model_scaler(model, corpus)))
    np.testing.assert_allclose(inputs["demeaned"], inputs["raw"], atol=2e-4)
    np.testing.assert_allclose(inputs["zscored"], inputs["raw"], atol=2e-4)
    assert main(["prepare", str(tmp_path / "demeaned"), "--atlas", "aal2", "--like", "hcp-small",
                 "--out", str(tmp_path / "refused"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "already demeaned or z-scored" in err and "the shipped hcp-fresh" in err
    # On another atlas it runs without its spatial estimate (prior dropout), from its own statistics.
    (emb,) = encode("hcp-fresh", load_schaefer100_rest(), transfer_atlas=True, target_tr=HCP7_TR)
    assert np.isfinite(emb["cls"]).all() and emb["cls"].shape == (model.config.dim,)


def test_hcp_fresh_embeds_raw_and_demeaned_arrays_on_another_atlas_alike():
    from brainlm.data.atlas import load_atlas
    from brainlm.sklearn import BrainLMEmbedding

    rest = load_schaefer100_rest()
    raw = np.asarray(rest.timeseries, dtype=np.float64)
    est = BrainLMEmbedding("hcp-fresh", transfer_atlas=True, tr=rest.tr, atlas=load_atlas("schaefer100")).fit([raw])
    a, b = est.transform([raw]), est.transform([raw - raw.mean(axis=0)])
    assert a.shape == (1, 96) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-3)
    # hcp-small has statistics for AAL2 only: the same call is refused with what to do.
    with pytest.raises(BrainLMInputError, match="hcp-fresh"):
        BrainLMEmbedding("hcp-small", transfer_atlas=True, tr=rest.tr, atlas=load_atlas("schaefer100")).fit([raw])
