"""``brainlm networks``: functional-network identification from attention, on the embedded real data
(HCP on AAL2, the Schaefer-100 run through parcel coordinates), with its baselines and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.atlas import Atlas, load_atlas
from brainlm.data.samples import load_schaefer100_rest
from brainlm.model import BrainLM, preset
from brainlm.tasks.model_input import ModelInput, load_model, model_inputs
from brainlm.tasks.networks import (evaluate_features, identify_networks, latent_connectivity, network_labels,
                                    time_shifted)


def test_networks_cli_on_real_hcp(trained, hcp_corpus, tmp_path, capsys):
    out = tmp_path / "networks"
    assert main(["networks", str(trained / "model"), hcp_corpus.path, "--out", str(out),
                 "--max-recordings", "3"]) == 0
    assert "network identification" in capsys.readouterr().out
    r = json.loads((out / "networks.json").read_text())
    assert r["atlas"] == "aal2" and r["recordings"] == 3 and r["windows"] == 18
    # AAL2's 14 subcortical/medial-temporal regions have no Yeo label and are left out.
    assert r["labelled_parcels"] == 80 and len(r["unlabelled_parcels"]) == 14
    assert sum(r["networks"].values()) == 80
    rows = {(m["model"], m["features"]): m for m in r["methods"]}
    assert set(rows) == {(model, f) for model in ("BrainLM", "BrainLM untrained", "BrainLM, time-shifted input")
                         for f in ("cls_attention", "parcel_attention", "token_embedding",
                                   "latent_connectivity")} | {
        ("baseline", f) for f in ("fc_profile", "raw_timeseries", "coordinates")}
    chance = r["chance"]
    assert chance["majority_network"] == "Default" and chance["majority_accuracy"] == pytest.approx(23 / 80)
    # Real signal: the FC baseline and the pretrained model's attention both find networks far
    # above the best chance rule (always "Default", 29%).
    assert rows[("baseline", "fc_profile")]["knn_accuracy"] > chance["majority_accuracy"] + 0.2
    assert rows[("BrainLM", "cls_attention")]["knn_accuracy"] > chance["majority_accuracy"] + 0.1
    assert rows[("BrainLM", "token_embedding")]["logreg_accuracy"] > chance["majority_accuracy"] + 0.2
    conf = np.array(r["confusion"]["BrainLM: cls_attention (kNN)"])
    assert conf.shape == (7, 7) and conf.sum() == 80
    assert np.trace(conf) / 80 == pytest.approx(rows[("BrainLM", "cls_attention")]["knn_accuracy"])
    table = pd.read_csv(out / "parcels.tsv", sep="\t", keep_default_na=False)
    assert len(table) == 94 and (table["knn[BrainLM: cls_attention]"] == "").sum() == 14
    # The task returns numbers only; the command drew the figures into --out from the saved files.
    assert "figures" not in r
    pngs = {"confusion_cls_attention.png", "confusion_fc_profile.png", "networks_true.png",
            "networks_predicted.png", "cls_attention_map.png", "cls_attention_networks.png"}
    assert {p.name for p in out.glob("*.png")} == pngs
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| BrainLM | cls_attention |" in (out / "networks.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_networks_on_schaefer100_through_coordinates(trained):
    """The real Schaefer-100 run (exact Yeo-7 labels) on the AAL2-pretrained model via coordinates."""
    model = load_model(trained / "model")
    rest = load_schaefer100_rest()
    with pytest.raises(BrainLMInputError, match="transfer"):
        identify_networks(model, [rest])
    r = identify_networks(model, [rest], transfer_atlas=True, target_tr=0.72, untrained_control=False,
                          shifted_control=False)
    assert r["atlas"] == "schaefer100" and r["labelled_parcels"] == 100 and r["windows"] == 2
    rows = {(m["model"], m["features"]): m for m in r["methods"]}
    assert r["chance"]["majority_accuracy"] == pytest.approx(0.24)
    assert rows[("baseline", "fc_profile")]["knn_accuracy"] > 0.4
    assert rows[("BrainLM", "token_embedding")]["knn_accuracy"] > r["chance"]["majority_accuracy"]
    # Scoring the feature sets in parallel processes changes the time, not the numbers.
    again = identify_networks(model, [rest], transfer_atlas=True, target_tr=0.72, untrained_control=False,
                              shifted_control=False, jobs=2)
    assert again["methods"] == r["methods"] and again["confusion"] == r["confusion"]


@pytest.mark.parametrize("jobs", [0, -2, 1.5, True])
def test_networks_jobs_must_be_a_count_of_processes(jobs):
    with pytest.raises(BrainLMInputError, match=r"jobs=.*expected a positive number of worker processes"):
        identify_networks("no-such-checkpoint", [], jobs=jobs)


def test_time_shifted_control_removes_co_fluctuation(trained, hcp):
    model = load_model(trained / "model")
    inputs = list(model_inputs(model, hcp[:2]))
    shifted = time_shifted(inputs, seed=0)
    for before, after in zip(inputs, shifted):
        assert after.windows.shape == before.windows.shape
        x, z = before.timeseries, after.timeseries
        for p in (0, 50, 93):  # every parcel keeps its own signal, rotated in time
            k = int(np.argmax([np.array_equal(np.roll(x[:, p], s), z[:, p]) for s in range(len(x))]))
            assert np.array_equal(np.roll(x[:, p], k), z[:, p]) and len(x) // 4 <= k <= 3 * len(x) // 4
        fc_x, fc_z = np.corrcoef(x, rowvar=False), np.corrcoef(z, rowvar=False)
        off = ~np.eye(94, dtype=bool)
        assert np.abs(fc_x[off]).mean() > 0.2 > 0.1 > np.abs(fc_z[off]).mean()
    assert all(np.array_equal(a.windows, b.windows) for a, b in zip(shifted, time_shifted(inputs, seed=0)))


def test_latent_connectivity_is_the_correlation_of_centred_token_vectors(hcp):
    import torch

    torch.manual_seed(0)
    model = BrainLM(preset("tiny", window_trs=100)).eval()
    atlas = load_atlas("aal2")
    x = hcp[0].timeseries[:400].astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    xyz = torch.tensor(np.asarray(atlas.xyz, dtype=np.float32))
    inputs = [ModelInput({"recording_id": "a"}, torch.from_numpy(x[:200]).reshape(2, 100, 94), xyz, atlas),
              ModelInput({"recording_id": "b"}, torch.from_numpy(x[200:]).reshape(2, 100, 94), xyz, atlas)]
    got = latent_connectivity(model, inputs, batch_size=3)
    with torch.no_grad():
        h = model.forward_encoder(torch.from_numpy(x).reshape(4, 100, 94), xyz.expand(4, -1, -1)).latent[:, 1:]
    h = h.double().reshape(4, 94, 5, -1).transpose(0, 1).reshape(94, -1, h.shape[-1]).numpy()  # [P, S, D]
    v = (h - h.mean(1, keepdims=True)).reshape(94, -1)
    r = (v @ v.T) / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    expected = np.arctanh(np.clip(r, -0.999999, 0.999999))
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(got, expected, atol=1e-8)
    # It lives on co-fluctuation: parcels shifted in time independently lose most of it.
    off = ~np.eye(94, dtype=bool)
    shifted = latent_connectivity(model, time_shifted(inputs, seed=0))
    assert np.abs(shifted[off]).mean() < 0.6 * np.abs(got[off]).mean()


def test_evaluate_features_scores_known_structure():
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["A", "B", "C", "D"]), 12)
    centres = rng.normal(size=(4, 30)) * 3
    clear = centres[np.searchsorted(["A", "B", "C", "D"], y)] + rng.normal(size=(48, 30))
    r = evaluate_features(clear, y)
    assert r["knn_accuracy"] == 1.0 and r["logreg_accuracy"] == 1.0 and r["kmeans_ari"] == 1.0
    noise = evaluate_features(rng.normal(size=(48, 30)), y)
    assert noise["knn_accuracy"] < 0.5 and noise["kmeans_ari"] < 0.2
    assert evaluate_features(clear, y) == r


def test_network_labels_from_table_and_bad_labels(tmp_path, capsys, trained, hcp_corpus):
    atlas = load_atlas("schaefer100")
    shuffled = atlas.to_frame().sample(frac=1.0, random_state=0)
    good = tmp_path / "labels.tsv"
    shuffled[["name", "network"]].to_csv(good, sep="\t", index=False)
    assert list(network_labels(atlas, good)) == list(atlas.networks)

    missing = tmp_path / "missing.tsv"
    shuffled.iloc[3:][["name", "network"]].to_csv(missing, sep="\t", index=False)
    with pytest.raises(BrainLMInputError, match=r"missing.tsv.*3 parcel\(s\) without a row"):
        network_labels(atlas, missing)
    renamed = shuffled.assign(name=shuffled["name"].str.replace("7Networks_", "", regex=False))
    renamed[["name", "network"]].to_csv(tmp_path / "renamed.tsv", sep="\t", index=False)
    with pytest.raises(BrainLMInputError, match="100 unknown name"):
        network_labels(atlas, tmp_path / "renamed.tsv")
    shuffled[["name", "x"]].to_csv(tmp_path / "nonet.tsv", sep="\t", index=False)
    with pytest.raises(BrainLMInputError, match="expected name, network"):
        network_labels(atlas, tmp_path / "nonet.tsv")
    with pytest.raises(BrainLMInputError, match="expected 100"):
        network_labels(atlas, ["Vis"] * 99)
    with pytest.raises(BrainLMInputError, match="at least two networks"):
        network_labels(atlas, ["Vis"] * 100)
    bare = Atlas("bare", atlas.parcel_names, atlas.xyz)
    with pytest.raises(BrainLMInputError, match="no network labels"):
        network_labels(bare)

    # The command checks the labels against the data's parcels before running the model.
    aal2_labels = tmp_path / "aal2.tsv"
    load_atlas("aal2").to_frame().iloc[:-1].to_csv(aal2_labels, sep="\t", index=False)
    code = main(["networks", str(trained / "model"), hcp_corpus.path, "--out", str(tmp_path / "o"),
                 "--labels", str(aal2_labels)])
    err = capsys.readouterr().err
    assert code == 2 and "aal2.tsv" in err and "1 parcel(s) without a row ['Temporal_Inf_R']" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
