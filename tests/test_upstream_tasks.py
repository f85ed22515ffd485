"""Every task on imported original BrainLM checkpoints (tests/fixtures/upstream_brainlm/).

The data are simulated A424 recordings; the fixture models are small and random-initialised,
so these tests check that each task runs end to end on an imported model, keeps its family
(controls, fine-tuned and saved models are the same architecture) and writes its numbers, not
that the numbers are good.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import load_pretrained, save_pretrained
from brainlm.model.masking import MaskSpec
from brainlm.model.upstream import UpstreamBrainLM
from brainlm.checkpoints.upstream_import import import_upstream, load_upstream
from brainlm.tasks.attention import extract_attention
from brainlm.tasks.calibration import apply_calibration, calibrate_input_gain
from brainlm.tasks.embed import embed
from brainlm.tasks.forecasting.evaluate import evaluate_run
from brainlm.tasks.forecasting.finetune import FinetuneSettings, finetune
from brainlm.tasks.group_attention import GroupAttentionResult, group_attention, welch_t
from brainlm.tasks.group_attention import read_parcels as read_group_parcels
from brainlm.tasks.inference import embed_windows, predict_masked
from brainlm.tasks.model_input import (
    input_gain,
    is_model,
    iter_model_input,
    load_model,
    model_scaler,
    model_windows,
    random_like,
)
from brainlm.tasks.networks import identify_networks
from brainlm.tasks.prediction.evaluate import PredictionSettings, evaluate_prediction
from brainlm.tasks.reconstruction import evaluate_reconstruction

FIXTURES = Path(__file__).parent / "fixtures" / "upstream_brainlm"
PAPER, VIT = FIXTURES / "paper_13m_small", FIXTURES / "vitmae_small"


def simulated_a424(n: int, trs: int, seed: int = 0) -> list[Recording]:
    """AR(1) noise per parcel plus a slow shared component, at UK Biobank's TR (0.735 s); each
    recording has an ``age`` and a ``group`` (a/b alternating)."""
    atlas = load_atlas("a424")
    rng = np.random.default_rng(seed)
    recs = []
    for s in range(n):
        e = rng.standard_normal((trs, 424)).astype(np.float32)
        x = np.zeros_like(e)
        for t in range(1, trs):
            x[t] = 0.7 * x[t - 1] + e[t]
        x += rng.standard_normal((trs, 1)).cumsum(0).astype(np.float32) * 0.1
        recs.append(Recording(x, 0.735, atlas, subject=f"sub-{s:02d}",
                              phenotypes={"age": float(20 + 3 * s), "group": "ab"[s % 2]}))
    return recs


def made_up_networks(path: Path) -> Path:
    """A424 has no network labels: four made-up 'networks' by hemisphere and anterior/posterior
    half (consistent, so a model with coordinates can learn them), as a name/network table."""
    atlas = load_atlas("a424")
    xyz = np.asarray(atlas.xyz, dtype=float)
    y_mid = np.median(xyz[:, 1])
    rows = [f"{n}\t{'L' if x < 0 else 'R'}{'ant' if y > y_mid else 'post'}"
            for n, (x, y, _) in zip(atlas.parcel_names, xyz)]
    path.write_text("name\tnetwork\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Eight 220-TR recordings (one 200-TR window each; 4/2/2 subjects in train/val/test; four
    per group, the fewest a permutation test at 0.05 can use) prepared with the imported
    checkpoint's cleaning, and the paper fixture imported."""
    root = tmp_path_factory.mktemp("upstream_tasks")
    contract = PreprocessingContract(target_tr=0.735, detrend=True)
    prepare_corpus(simulated_a424(8, 220), root / "corpus",
                   PrepareSettings.of(atlas=load_atlas("a424"), contract=contract, fractions=(0.5, 0.25, 0.25)))
    import_upstream(PAPER, root / "paper")
    return root, root / "corpus", root / "paper"


def test_any_family_is_a_model_and_random_like_keeps_it(setup):
    _, _, ckpt = setup
    model = load_model(ckpt)
    assert is_model(model) and load_model(model) is model and not is_model(str(ckpt))
    fresh = random_like(model, 3)
    assert type(fresh) is UpstreamBrainLM and fresh.config == model.config
    assert fresh.atlas is model.atlas
    assert torch.equal(random_like(model, 3).patch_embed.weight, fresh.patch_embed.weight)
    assert not torch.equal(fresh.patch_embed.weight, model.patch_embed.weight)


@pytest.mark.slow
def test_networks_on_an_imported_paper_model(setup):
    root, corpus, ckpt = setup
    labels = made_up_networks(root / "labels.tsv")
    out = root / "networks"
    result = identify_networks(ckpt, corpus, out, labels=labels, max_recordings=1, shifted_control=False)
    rows = {(r["model"], r["features"]) for r in result["methods"]}
    assert {m for m, _ in rows} >= {"BrainLM", "BrainLM untrained", "baseline"}, rows
    assert result["networks"] == {"Lant": 102, "Lpost": 107, "Rant": 107, "Rpost": 108}
    assert result["labelled_parcels"] == 424
    assert result["settings"]["model"]["conv_kernel"] == 65  # the paper model's own config
    # Each BrainLM feature set's kNN accuracy, recomputed here from its definition (k = 5, leave
    # one parcel out, features standardised over all parcels) with scikit-learn alone, on the same
    # features of the same recording. A random model's accuracy is not known in advance, so the
    # task is checked against the arithmetic it claims: a wrong score, a feature set scored under
    # another's name or labels out of parcel order all fail. See loo_knn_accuracy for the tolerance.
    from brainlm.tasks.model_input import model_inputs
    from brainlm.tasks.networks import parcel_features

    model = load_model(ckpt)
    features = parcel_features(model, [next(iter(model_inputs(model, corpus)))]).features
    y = np.array([line.split("\t")[1] for line in labels.read_text().splitlines()[1:]])
    scored = [r for r in result["methods"] if r["model"] == "BrainLM"]
    assert {r["features"] for r in scored} == {"cls_attention", "parcel_attention", "token_embedding",
                                               "latent_connectivity"}
    for r in scored:
        expected, ambiguous = loo_knn_accuracy(features[r["features"]], y, k=5)
        assert r["knn_accuracy"] == pytest.approx(expected, rel=0, abs=ambiguous / len(y) + 1e-12), r["features"]
    assert (out / "networks.json").is_file() and (out / "parcels.tsv").is_file()


def loo_knn_accuracy(x: np.ndarray, y: np.ndarray, k: int) -> tuple[float, int]:
    """Leave-one-out accuracy of a k-nearest-neighbour vote on ``x`` (n, F) standardised per
    feature over all n rows, and the number of rows whose vote rounding may decide.

    The task rotates the standardised features onto their principal axes before the kNN. That
    keeps Euclidean distances, but only up to float64 rounding, orders of magnitude below 1e-9 of
    a distance between standardised parcels. So only a row whose k-th and (k+1)-th nearest
    neighbours lie within 1e-9 (relative) of each other may get another neighbour set there; each
    such row may move the accuracy by 1/n, no other row can. On the fixture data no row comes
    that close (the nearest call, in latent connectivity, is a gap of 3.6e-8), so the comparison
    is exact (cls_attention 0.821, parcel_attention 0.908, token_embedding 0.939,
    latent_connectivity 0.656).
    """
    from scipy.spatial.distance import cdist
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(x)
    predicted = cross_val_predict(KNeighborsClassifier(n_neighbors=k), z, y, cv=LeaveOneOut())
    others = np.sort(cdist(z, z), axis=1)[:, 1:]  # distances to the other rows, nearest first
    ambiguous = int(np.sum(others[:, k] - others[:, k - 1] <= 1e-9 * others[:, k]))
    return float(np.mean(predicted == y)), ambiguous


@pytest.mark.slow
def test_group_attention_on_an_imported_paper_model(setup):
    root, corpus, ckpt = setup
    result = group_attention(ckpt, corpus, "group", root / "attention", n_permutations=20)
    assert result.group_by == "group" and result.parcels == 424
    assert GroupAttentionResult.read(root / "attention" / "group_attention.json").to_json() == \
        GroupAttentionResult.from_json(json.loads(result.dumps())).to_json()
    # The saved t map is the Welch t of the per-subject mean attention in recordings.parquet,
    # recomputed here from that table alone (parcels.tsv keeps 6 significant digits).
    per_recording = pd.read_parquet(root / "attention" / "recordings.parquet")
    by_subject = per_recording.groupby("subject", sort=True)
    x = by_subject[list(per_recording.columns[3:])].mean().to_numpy()
    in_b = (by_subject["group"].first() == result.groups["b"]).to_numpy()
    parcels = read_group_parcels(root / "attention" / "parcels.tsv")
    np.testing.assert_allclose(parcels["attention_t"], welch_t(x, in_b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parcels["attention_difference"], x[in_b].mean(0) - x[~in_b].mean(0),
                               rtol=1e-5, atol=1e-9)
    perm = result.permutations["attention"]
    assert perm.n == (math.comb(len(in_b), int(in_b.sum())) if perm.exact else 20)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["paper", "vit"])
def test_evaluate_predict_on_an_imported_model(setup, family):
    root, corpus, ckpt = setup
    if family == "vit":
        ckpt = vit_checkpoint(root)
    settings = PredictionSettings(n_folds=2, inner_folds=2, seeds=(0,), finetune_epochs=1, probe_epochs=2)
    result = evaluate_prediction(ckpt, corpus, "age", methods=["brainlm_cls_ridge", "random_brainlm_cls_ridge",
                                 "finetune_lora"], settings=settings, out=root / f"predict_{family}")
    names = {m["name"] for m in result["methods"]}
    assert {"brainlm_cls_ridge", "random_brainlm_cls_ridge", "finetune_lora"} <= names, names
    for name in ("brainlm_cls_ridge", "random_brainlm_cls_ridge", "finetune_lora"):
        assert np.isfinite(result["summary"][name]["mse"]["mean"]), name
    assert (root / f"predict_{family}" / "prediction.json").is_file()


@pytest.mark.slow
def test_forecast_finetune_and_evaluate_on_an_imported_paper_model(setup):
    root, corpus, ckpt = setup
    s = FinetuneSettings(epochs=1, batch_size=2, crops_per_recording=1, accelerator="cpu")
    summary = finetune(ckpt, corpus, root / "fc", s)
    for folder in ("model", "scratch"):
        model = load_pretrained(root / "fc" / folder)
        assert type(model) is UpstreamBrainLM and model.config.window_trs == 200
        assert model.atlas.name == "a424"
    assert summary["models"]["finetuned"]["initialisation"] == "pretrained"
    assert np.isfinite(summary["models"]["finetuned"]["best_val_mse"])
    results = evaluate_run(root / "fc", corpus, root / "fce", baselines=["persistence"])
    assert set(results["methods"]) == {"brainlm_finetuned", "brainlm_scratch", "brainlm_pretrained", "persistence"}
    assert (root / "fce" / "forecast.json").is_file()


# -- the image ViT-MAE in the tasks ----------------------------------------------------------------
@pytest.fixture(scope="module")
def vit():
    model, _ = load_upstream(VIT)
    return model


def test_image_tokens_that_hold_data_are_the_ones_pixel_mask_maps_to_values(vit):
    """A token holds window values exactly when masking it alone hides some value: 27 row bands
    (4 + 424 + 4 rows) x 13 column bands (TRs 116..315 of 432) = 351 of 729 tokens; the other
    378 are padding only."""
    content = vit.content_tokens()
    assert content.shape == (729,) and int(content.sum()) == 27 * 13
    grid = content.view(27, 27)
    assert grid.all(dim=1).sum() == 0 and grid.any(dim=0).sum() == 13 and grid[:, 7:20].all()
    values = vit.token_mask_to_values(torch.stack([~content, content])).numpy()
    assert not values[0].any() and values[1].all()  # padding hides nothing; the rest hides all


def test_image_model_predictions_and_masks_are_window_values(vit):
    x = torch.randn(2, 200, 424)
    mask = vit.sample_mask(MaskSpec("random", 0.5), 2, 424, torch.Generator().manual_seed(0))
    assert mask.shape == (2, 729)
    pred = predict_masked(vit, x, torch.zeros(424, 3), mask)
    values = vit.token_mask_to_values(mask).numpy()
    assert pred.shape == values.shape == (2, 200, 424)
    with torch.no_grad():
        _, direct = vit(x, None, mask)
    assert torch.equal(pred, direct)
    with pytest.raises(BrainLMInputError, match="random"):
        vit.sample_mask(MaskSpec("parcels", 0.5), 2, 424)


def test_image_model_mean_pooling_leaves_out_padding_only_tokens(vit):
    x = torch.randn(3, 200, 424)
    cls, mean = embed_windows(vit, x, torch.zeros(424, 3))
    with torch.no_grad():
        latent = vit.forward_encoder(x).latent
    assert torch.equal(cls, latent[:, 0])
    assert torch.allclose(mean, latent[:, 1:][:, vit.content_tokens()].mean(dim=1))
    assert not torch.allclose(mean, latent[:, 1:].mean(dim=1), atol=1e-4)


def test_image_tokens_belong_to_the_parcels_of_their_row_band(vit):
    member = vit.token_parcels()
    assert member.shape == (729, 424)
    assert (member.sum(dim=0) == 13).all()  # each parcel: its band, in the 13 column bands with TRs
    assert torch.equal(member.any(dim=1), vit.content_tokens())
    # Parcel ranks by y: rank i sits on image row 4 + i, i.e. in patch row (4 + i) // 16.
    rank = torch.empty(424, dtype=torch.long)
    rank[vit.parcel_order] = torch.arange(424)
    rows_of_token = torch.arange(729) // 27
    for p in (0, 1, 200, 423):
        assert set(rows_of_token[member[:, p]].tolist()) == {(4 + int(rank[p])) // 16}


def test_image_model_attention_is_mapped_back_to_parcels(vit):
    x = torch.randn(2, 200, 424)
    maps = extract_attention(vit, x, torch.zeros(424, 3), token_embeddings=True)
    assert maps.cls.shape == (2, 2, vit.config.heads, 424) and maps.parcel.shape == (2, vit.config.heads, 424, 424)
    assert maps.embeddings.shape == (2, 424, vit.config.dim)
    with torch.no_grad():
        enc = vit.forward_encoder(x, return_attention=True)
    member = vit.token_parcels()
    w = enc.attentions[1][0, 0, 0, 1:]  # layer 1, window 0, head 0: CLS -> tokens
    p = int(vit.parcel_order[100])
    assert maps.cls[0, 1, 0, p] == pytest.approx(float(w[member[:, p]].mean()), rel=1e-5)
    # Parcels of one band share their values.
    same_band = vit.parcel_order[92:108]  # ranks on image rows 96..111 (patch row 6), rank 100 among them
    assert np.allclose(maps.cls[0, 1, 0, same_band.numpy()], maps.cls[0, 1, 0, p])


@pytest.mark.slow
def test_embed_and_evaluate_recon_on_an_imported_image_model(setup):
    root, corpus, _ = setup
    ckpt = root / "vit"
    import_upstream(VIT, ckpt)
    df = embed(ckpt, [corpus])
    cols = [c for c in df.columns if c.startswith(("cls_", "mean_"))]
    assert len(df) == 8 and len(cols) == 2 * 64 and np.isfinite(df[cols].to_numpy()).all()
    result = evaluate_reconstruction(ckpt, corpus, ratios=[0.75], out=root / "recon_vit")
    entry = result["results"][0]["methods"]
    assert set(entry) == {"brainlm", "zero", "parcel_mean", "interpolation", "spatial"}
    assert np.isfinite(entry["brainlm"]["mse"]) and result["patch_trs"] is None
    with pytest.raises(BrainLMInputError, match="random"):
        evaluate_reconstruction(ckpt, corpus, ratios=[0.5], strategy="parcels")


# -- input gain ------------------------------------------------------------------------------------
def test_input_gain_is_folded_into_the_scaler_every_task_reads_with(setup):
    _, corpus, ckpt = setup
    model = load_model(ckpt)
    data = Corpus(corpus)
    assert input_gain(model) == (1.0, 0.0) and model_scaler(model, data) is data.contract
    plain = next(iter_model_input(data, [0], model_scaler(model, data)))
    model.contract.scaler_fit = {**model.contract.scaler_fit, "input_gain": 7.0, "input_offset": 0.5}
    gained = next(iter_model_input(data, [0], model_scaler(model, data)))
    np.testing.assert_allclose(gained, 7.0 * plain + 0.5, atol=1e-4)
    model.contract.scaler_fit["input_gain"] = 0.0
    with pytest.raises(BrainLMInputError, match="input_gain"):
        model_scaler(model, data)


def test_calibration_scores_every_gain_on_one_mask_and_is_stored(setup, tmp_path):
    root, corpus, _ = setup
    model, _ = load_upstream(VIT)
    result = calibrate_input_gain(model, corpus, gains=(0.5, 1.0, 2.0), recordings=1, refine=False)
    assert [r["gain"] for r in result["table"]] == [0.5, 1.0, 2.0] and result["windows"] == 1
    best = min(result["table"], key=lambda r: r["mse"])
    assert result["input_gain"] == best["gain"] and result["mse"] == best["mse"]
    # gain 1 by hand: the first training recording's window, the seeded mask, robust-scaled units
    data = Corpus(corpus)
    row = result["recordings"][0]
    wins, _ = model_windows(model, next(iter_model_input(data, [row], data.contract)))
    mask = model.sample_mask(MaskSpec("random", 0.75), 1, 424, torch.Generator().manual_seed(0))
    pred = predict_masked(model, wins, torch.zeros(424, 3), mask).numpy()
    m = model.token_mask_to_values(mask).numpy()
    assert result["gain_1_mse"] == pytest.approx(float(((pred[m] - wins.numpy()[m]) ** 2).mean()), rel=1e-6)
    assert result["zero_mse"] == pytest.approx(float((wins.numpy()[m].astype(np.float64) ** 2).mean()))
    save_pretrained(apply_calibration(model, result), tmp_path / "ck")
    loaded = load_pretrained(tmp_path / "ck")
    assert input_gain(loaded) == (result["input_gain"], 0.0)
    assert loaded.contract.scaler_fit["input_calibration"]["recordings"] == [row]
    with pytest.raises(BrainLMInputError, match="own scaling statistics"):
        calibrate_input_gain(_fitted(loaded), corpus, recordings=1)


def _fitted(model):
    """The model with scaling statistics of its own, as brainlm's checkpoints have."""
    model.contract.median, model.contract.iqr = [0.0] * 424, [1.0] * 424
    return model


def test_import_upstream_calibrate_command(setup, tmp_path, capsys):
    _, corpus, _ = setup
    assert main(["import-upstream", str(VIT), "--out", str(tmp_path / "ck"), "--calibrate", str(corpus),
                 "--calibrate-recordings", "1"]) == 0
    out = capsys.readouterr().out
    assert "input gain" in out and "calibrated on 1 windows of 1 recordings" in out
    fit = json.loads((tmp_path / "ck" / "contract.json").read_text())["scaler_fit"]
    assert fit["input_gain"] == fit["input_calibration"]["input_gain"] > 0
    assert main(["import-upstream", str(PAPER), "--out", str(tmp_path / "g7"), "--input-gain", "7"]) == 0
    assert input_gain(load_pretrained(tmp_path / "g7")) == (7.0, 0.0)


@pytest.mark.slow
def test_group_attention_and_networks_on_an_imported_image_model(setup):
    root, corpus, _ = setup
    ckpt = root / "vit_att"
    import_upstream(VIT, ckpt)
    result = group_attention(ckpt, corpus, "group", root / "attention_vit", n_permutations=20)
    assert result["parcels"] == 424 and (root / "attention_vit" / "parcels.tsv").is_file()
    labels = made_up_networks(root / "labels_vit.tsv")
    nets = identify_networks(ckpt, corpus, labels=labels, max_recordings=1, untrained_control=False,
                             shifted_control=False)
    assert {r["features"] for r in nets["methods"] if r["model"] == "BrainLM"} == {
        "cls_attention", "parcel_attention", "token_embedding"}


def test_forecasting_refuses_the_image_model_in_one_line(setup, capsys):
    root, corpus, _ = setup
    assert main(["forecast", "finetune", str(vit_checkpoint(root)), str(corpus), "--out", str(root / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image-patch tokens" in err and not (root / "x").exists()


def vit_checkpoint(root: Path) -> Path:
    """The ViT fixture imported once into ``root``."""
    if not (root / "vit_ck").is_dir():
        import_upstream(VIT, root / "vit_ck")
    return root / "vit_ck"


def test_raw_files_on_an_imported_checkpoint_ask_for_a_corpus(setup, tmp_path, capsys):
    _, _, ckpt = setup
    np.save(tmp_path / "sub-01.npy", np.zeros((300, 424), dtype=np.float32))
    assert main(["embed", str(ckpt), str(tmp_path / "sub-01.npy"), "--tr", "0.735",
                 "--out", str(tmp_path / "e.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no scaling statistics" in err and "corpus" in err
