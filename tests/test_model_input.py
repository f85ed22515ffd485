"""The one road from data to model input (tasks/model_input.py) and the high-level API on it."""

import dataclasses

import numpy as np
import pytest
import torch

import brainlm
from brainlm import BrainLMInputError
from brainlm.data.windows import tile
from brainlm.model import MaskSpec
from brainlm.checkpoints.folder import load_pretrained
from brainlm.tasks.inference import embed_windows, predict_masked
from brainlm.tasks.model_input import model_inputs, parcel_xyz, recording_windows

pytestmark = pytest.mark.slow  # every test here needs the pretrained `trained` fixture


@pytest.fixture(scope="module")
def model(trained):
    return load_pretrained(trained / "model")


def test_a_recording_and_its_corpus_row_reach_the_model_as_the_same_windows(model, hcp, hcp_corpus):
    """Raw recording -> contract -> tiles, and corpus -> checkpoint scaler -> tiles, agree."""
    subject = hcp[2].subject
    from_corpus = {ids["subject"]: w for ids, w, _, _ in recording_windows(model, [hcp_corpus.path])}
    from_recording = next(model_inputs(model, [hcp[2]]))
    assert from_recording.windows.shape == (6, 200, 94)
    np.testing.assert_allclose(from_recording.windows.numpy(), from_corpus[subject].numpy(), atol=1e-4)
    np.testing.assert_array_equal(from_recording.xyz.numpy(), np.asarray(hcp[2].atlas.xyz, dtype=np.float32))


def test_encode_is_deterministic_and_equals_the_window_embeddings(model, hcp):
    first = brainlm.encode(model, hcp[:2])
    second = brainlm.encode(model, hcp[:2])
    assert [e["ids"]["subject"] for e in first] == [hcp[0].subject, hcp[1].subject]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["windows_cls"], b["windows_cls"])
        assert a["windows_cls"].shape == a["windows_mean"].shape == (6, model.config.dim)
        np.testing.assert_allclose(a["cls"], a["windows_cls"].mean(0), rtol=1e-6)
    item = next(model_inputs(model, [hcp[0]]))
    cls, mean = embed_windows(model, item.windows, item.xyz, batch_size=4)  # batch size changes nothing
    np.testing.assert_allclose(cls.numpy(), first[0]["windows_cls"], atol=1e-5)
    np.testing.assert_allclose(mean.numpy(), first[0]["windows_mean"], atol=1e-5)


def test_reconstruct_scores_only_what_was_hidden_and_repeats_exactly(trained, model, hcp):
    rec = brainlm.reconstruct(trained / "model", hcp[2], MaskSpec(ratio=0.75), seed=3)
    assert rec["prediction"].shape == rec["target"].shape == rec["mask"].shape == (6, 200, 94)
    assert rec["starts"].tolist() == [0, 200, 400, 600, 800, 1000]
    m = rec["mask"]
    assert m.mean() == pytest.approx(0.75, abs=0.01)
    # Whole patches are hidden: a value is masked exactly when its 20-TR patch is.
    assert (m.reshape(6, 10, 20, 94).all(axis=2) == m.reshape(6, 10, 20, 94).any(axis=2)).all()
    err = ((rec["prediction"] - rec["target"]) ** 2)[m].mean()
    assert err < (rec["target"][m] ** 2).mean()  # beats predicting zero (the scaled median)
    again = brainlm.reconstruct(model, hcp[2], MaskSpec(ratio=0.75), seed=3)
    np.testing.assert_array_equal(again["prediction"], rec["prediction"])
    other = brainlm.reconstruct(model, hcp[2], MaskSpec(ratio=0.75), seed=4)
    assert (other["mask"] != m).any()


def test_predict_masked_is_the_model_forward_pass(model, hcp):
    data = brainlm.preprocess(model, hcp[0])
    wins = torch.from_numpy(tile(data, 200)[0][:3])
    mask = model.sample_mask(MaskSpec(ratio=0.5), 3, 94, torch.Generator().manual_seed(0))
    pred = predict_masked(model, wins, parcel_xyz(hcp[0].atlas), mask, batch_size=2)
    with torch.inference_mode():
        _, direct = model(wins, parcel_xyz(hcp[0].atlas).expand(3, -1, -1), mask)
    np.testing.assert_allclose(pred.numpy(), model.unpatchify(direct).numpy(), atol=1e-5)
    values = model.token_mask_to_values(mask).numpy()
    assert values.shape == (3, 200, 94) and values.mean() == pytest.approx(mask.float().mean().item())


def test_bad_input_names_the_recording(model, hcp):
    short = dataclasses.replace(hcp[0], timeseries=hcp[0].timeseries[:150], source="short.npy")
    with pytest.raises(BrainLMInputError, match="short.npy.*needs windows of 200"):
        brainlm.encode(model, [short])
    with pytest.raises(BrainLMInputError, match="no data given"):
        next(model_inputs(model, []))
