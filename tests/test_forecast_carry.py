"""The forecasting carry path (``FinetuneSettings.carry``, ``BrainLMConfig.forecast_carry``).

Runs on the embedded real HCP data with the shipped ``hcp-small`` checkpoint, split so that the
test subject is the one ``hcp-small`` never trained on (377451), as in the benchmark
(benchmarks/bench_forecast.py --carry).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import HCP7_TR
from brainlm.model import BrainLM, MaskSpec, preset
from brainlm.checkpoints.folder import load_pretrained
from brainlm.model.config import BrainLMConfig
from brainlm.checkpoints.shipped import resolve_checkpoint
from brainlm.tasks.forecasting import (BrainLMForecaster, FinetuneSettings, evaluate,
                                       forecast_windows, load_forecaster, predict_future)
from brainlm.tasks.forecasting.api import with_window
from brainlm.tasks.forecasting.baselines import Persistence, RidgeVAR
from brainlm.tasks.forecasting.carry import resolve_carry, with_carry
from brainlm.tasks.forecasting.windows import split_recordings
from brainlm.tasks.model_input import model_scaler

C, H = 180, 20
TEST_SUBJECT, VAL_SUBJECT = "377451", "101309"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def held_out(hcp, tmp_path_factory):
    """The demo's preparation of the HCP data; the test subject is the one hcp-small never
    trained on."""
    splits = {f"{r.site}/{r.subject}": "test" if r.subject == TEST_SUBJECT else
              "val" if r.subject == VAL_SUBJECT else "train" for r in hcp}
    return prepare_corpus(hcp, tmp_path_factory.mktemp("carry") / "corpus",
                          PrepareSettings.of(atlas=load_atlas("aal2"),
                                             contract=PreprocessingContract(target_tr=HCP7_TR, percent_signal_change=True),
                                             min_trs=200, split_assignments=splits, jobs=1))


@pytest.fixture(scope="module")
def small(held_out):
    """hcp-small at window 200, the scaler it reads the corpus with, the training recordings and
    the test windows (model input units)."""
    model = with_window(load_pretrained(resolve_checkpoint("hcp-small")), C + H).eval()
    scaler = model_scaler(model, held_out)
    train = split_recordings(held_out, "train", scaler=scaler)
    test = forecast_windows(held_out, C, H, split="test", stride=H, scaler=scaler)
    return model, train, test


def test_old_checkpoints_load_unchanged(small):
    shipped = resolve_checkpoint("hcp-small")
    saved = json.loads((shipped / "config.json").read_text())["model"]
    assert "forecast_carry" not in saved  # written before the carry path existed
    model = load_pretrained(shipped)
    assert model.config.forecast_carry == "none"
    assert model.config == BrainLMConfig.from_dict(saved)
    assert not [k for k in model.state_dict() if "carry" in k]
    # Its forecast is the decoder's alone, exactly as before: forward without a carry estimate.
    m, _, test = small
    x = torch.from_numpy(np.concatenate([test.context[:2], np.zeros((2, H, 94), np.float32)], axis=1))
    xyz = torch.from_numpy(np.array(m.atlas.xyz, dtype=np.float32)).expand(2, -1, -1)
    mask = m.sample_mask(MaskSpec("future", future_trs=H), 2, 94)
    with torch.no_grad():
        _, pred = m(x, xyz, mask)
        alone = m.forward_decoder(m.forward_encoder(x, xyz, mask), xyz, 94)
    torch.testing.assert_close(pred, alone, rtol=0, atol=0)


def test_config_fields_are_checked():
    with pytest.raises(BrainLMInputError, match="'forecast_carry'.*expected one of"):
        preset("tiny", forecast_carry="lstm")
    with pytest.raises(BrainLMInputError, match="'carry_lags'.*positive integer"):
        preset("tiny", forecast_carry="var", carry_parcels=94)
    with pytest.raises(BrainLMInputError, match="'carry_steps'.*expected 0"):
        preset("tiny", forecast_carry="var", carry_lags=2, carry_parcels=94, carry_steps=20)
    with pytest.raises(BrainLMInputError, match="carry is 'ar'"):
        resolve_carry("ar", None)
    hybrid = BrainLM(preset("tiny", spatial_prior_parcels=94))
    assert resolve_carry("auto", hybrid) == "var" and resolve_carry("auto", BrainLM(preset("tiny"))) == "var"


def test_a_hybrid_gets_a_carry_path_that_owns_the_future_and_leaves_the_prior_elsewhere(small):
    model, train, test = small
    frames = np.concatenate(train)
    hybrid = BrainLM(replace(model.config, spatial_prior_parcels=94), contract=model.contract, atlas=model.atlas)
    hybrid.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        hybrid.prior_mean.copy_(torch.from_numpy(frames.mean(0)))
        hybrid.prior_covariance.copy_(torch.from_numpy(np.cov(frames, rowvar=False).astype(np.float32)))
    var = with_carry(hybrid, "var", 2, H, train).eval()
    torch.testing.assert_close(var.prior_covariance, hybrid.prior_covariance, rtol=0, atol=0)
    # At its start the future is the VAR's forecast exactly, as for a model without the prior.
    np.testing.assert_array_equal(predict_future(var, test.context, model.atlas.xyz, H, step_trs=H),
                                  RidgeVAR(H, order=2).fit(train).predict(test.context))
    # Tokens hidden before the future get the spatial estimate, not the carry's zeros.
    x = torch.from_numpy(np.concatenate([test.context[:3], test.target[:3]], axis=1))
    xyz = torch.from_numpy(np.array(model.atlas.xyz, dtype=np.float32)).expand(3, -1, -1)
    mask = var.sample_mask(MaskSpec("future", future_trs=H), 3, 94)
    mask[:, :47, 0] = True  # half the parcels of the first patch, in every window
    with torch.no_grad():
        _, pred = var(x, xyz, mask)
        prior = var.spatial_estimate(x, mask)
        carry = var.carry_estimate(x, mask)
    future = var.future_patches(mask)
    assert future.sum() * model.config.patch_trs == H and not future[0]
    torch.testing.assert_close(pred[:, :, ~future], prior[:, :, ~future], rtol=0, atol=0)
    torch.testing.assert_close(pred[:, :, future], carry[:, :, future], rtol=0, atol=0)
    assert not torch.equal(prior[:, :47, 0], carry[:, :47, 0])


def test_at_initialisation_the_carry_path_is_its_linear_forecast_exactly(small):
    model, train, test = small
    xyz = model.atlas.xyz
    linear = with_carry(model, "linear", 20, H)
    np.testing.assert_array_equal(predict_future(linear, test.context, xyz, H, step_trs=H),
                                  Persistence(H).predict(test.context))
    var = with_carry(model, "var", 2, H, train)
    np.testing.assert_array_equal(predict_future(var, test.context, xyz, H, step_trs=H),
                                  RidgeVAR(H, order=2).fit(train).predict(test.context))
    # The weights of the pretrained model are all kept.
    state = var.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("decoder_pred"):
            torch.testing.assert_close(state[k], v, rtol=0, atol=0)


def test_the_carry_path_reads_only_visible_trs(small):
    model, train, test = small
    var = with_carry(model, "var", 2, H, train).eval()
    with torch.no_grad():  # a decoder that corrects something, so the check covers it too
        var.decoder_pred.weight.normal_(0, 0.1)
        var.decoder_carry_embed.weight.normal_(0, 0.1)
    xyz = torch.from_numpy(np.array(var.atlas.xyz, dtype=np.float32)).expand(4, -1, -1)
    tiles = torch.from_numpy(np.concatenate([test.context[:4], test.target[:4]], axis=1))
    mask = var.sample_mask(MaskSpec("future", future_trs=H), 4, 94)

    def future(x, m=mask):
        with torch.no_grad():
            return var.unpatchify(var(x, xyz, m)[1])[:, C:]

    changed = tiles.clone()
    changed[:, C:] = torch.randn(4, H, 94) * 5
    torch.testing.assert_close(future(changed), future(tiles), rtol=0, atol=0)
    last = tiles.clone()
    last[:, C - 1] += 1.0
    assert not torch.allclose(future(last), future(tiles))
    # Under a random mask there is no common future: hidden values are never read either.
    rand = var.sample_mask(MaskSpec("random", 0.5), 4, 94, torch.Generator().manual_seed(0))
    estimate = var.carry_estimate(tiles, rand)
    assert float(estimate[rand].abs().max()) == 0.0
    torch.testing.assert_close(estimate[~rand], var.patchify(tiles)[~rand], rtol=0, atol=0)
    # A linear carry cannot predict past the steps it was built for.
    short = with_carry(model, "linear", 20, 20)
    with pytest.raises(BrainLMInputError, match="at most 20 TRs"):
        short.carry_estimate(tiles, short.sample_mask(MaskSpec("future", future_trs=40), 4, 94))


@pytest.fixture(scope="module")
def runs(held_out, tmp_path_factory):
    """hcp-small fine-tuned with the var carry (through the CLI) and without one, same budget."""
    root = tmp_path_factory.mktemp("carry-runs")
    common = ["--context", "180", "--horizon", "20", "--epochs", "2", "--crops-per-recording", "8",
              "--no-scratch", "--quiet"]
    assert main(["forecast", "finetune", "hcp-small", held_out.path, "--out", str(root / "var"),
                 "--carry", "var", *common]) == 0
    assert main(["forecast", "finetune", "hcp-small", held_out.path, "--out", str(root / "none"),
                 "--carry", "none", *common]) == 0
    return root


def test_finetuned_carry_beats_the_old_model_at_step_1_on_the_held_out_subject(runs, small, held_out):
    _, _, test = small
    res = evaluate(held_out, context_trs=C, horizon_trs=H, baselines=("persistence", "var"),
                   models={"brainlm_finetuned:var": runs / "var" / "model",
                           "brainlm_finetuned:none": runs / "none" / "model"})
    m = res["methods"]
    assert res["n_windows"] == len(test.context) and res["n_test_recordings"] == 1
    assert m["brainlm_finetuned:var"]["label"] == "BrainLM fine-tuned + ridge VAR carry"
    assert m["brainlm_finetuned:none"]["label"] == "BrainLM fine-tuned"
    assert m["brainlm_finetuned:var"]["details"]["carry"] == "var"
    carry, old = m["brainlm_finetuned:var"]["mse"], m["brainlm_finetuned:none"]["mse"]
    assert carry[0] < old[0]  # today's model is far from the last frame (issue 26)
    assert carry[0] <= m["persistence"]["mse"][0]
    assert np.mean(carry) < np.mean(old)
    # Fine-tuned end to end: the decoder's correction moved away from zero.
    model = load_forecaster(runs / "var" / "model")
    assert float(model.decoder_pred.weight.detach().abs().max()) > 0


def test_the_setting_round_trips_through_finetune_json(runs, small):
    info = json.loads((runs / "var" / "finetune.json").read_text())
    settings = FinetuneSettings(**info["settings"])
    assert settings.carry == "var" and settings.carry_lags is None
    assert info["carry"] == {"path": "var", "lags": 2, "label": "ridge VAR carry"}
    assert json.loads((runs / "var" / "model" / "forecasting.json").read_text())["carry"]["path"] == "var"
    assert json.loads((runs / "none" / "finetune.json").read_text())["carry"]["path"] == "none"
    # The saved model holds its VAR: loaded, it is the same configuration and the same buffers.
    model = load_forecaster(runs / "var" / "model")
    assert (model.config.forecast_carry, model.config.carry_lags, model.config.carry_parcels) == ("var", 2, 94)
    _, train, _ = small
    fitted = with_carry(small[0], "var", 2, H, train)
    torch.testing.assert_close(model.carry_coef, fitted.carry_coef, rtol=0, atol=0)
    assert asdict(FinetuneSettings())["carry"] == "auto"
    # A forecaster wrapper runs it at another context with the same weights and buffers.
    f = BrainLMForecaster(runs / "var" / "model", H, context_trs=380)
    assert f.model.config.window_trs == 400 and f.model.config.forecast_carry == "var"
